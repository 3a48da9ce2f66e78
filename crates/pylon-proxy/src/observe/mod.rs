//! Observation: the access log and the counters every proxy-made answer increments.

pub mod access_log;
pub mod metrics;

pub use access_log::{AccessLogger, AccessRecord};
pub use metrics::Metrics;
