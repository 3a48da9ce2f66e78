//! The monotonic clock, precise or coarse: the one endpoint state keeps its times on
//! (`pylon_lb::clock`).

pub use pylon_lb::clock::{coarse_ns, precise_ns};
