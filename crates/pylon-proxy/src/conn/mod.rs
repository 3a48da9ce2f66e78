//! A client connection's concerns, one file each: its state and timers (`state.rs`:
//! activity, requests in flight, the idle, header-read and send timeouts), the socket
//! wrapper that feeds them (`io.rs`), and the HTTP/1.x framing scanner that watches the
//! bytes beside the parser (`framing_scan.rs`).

pub mod framing_scan;
mod io;
mod state;

pub use io::TrackedIo;
pub use state::{ConnState, InFlight, Verdict};
