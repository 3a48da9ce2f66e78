//! A client connection's concerns, one file each: its state and timers (`state.rs`:
//! activity, requests in flight, the idle, header-read and send timeouts), the socket
//! wrapper that feeds them (`io.rs`), and the request body as the client sends it with
//! what the connection becomes after a protocol switch (`client.rs`), the lot
//! where idle keep-alive connections wait without a task (`parking.rs`), and the waker
//! that lets the connection task poll its timers only when they fire (`watchers.rs`).

mod client;
mod io;
pub mod parking;
mod response_timer;
mod state;
mod watchers;

pub use client::{
    ClientBody, ClientIo, ClientUpgrade, H1Body, OwnUpgrade, Upgraded, Wire, WireLock,
};
pub use io::TrackedIo;
pub use response_timer::ResponseTimer;
pub use state::{ChunkViolation, ConnState, InFlight, Verdict};
pub use watchers::Watchers;
