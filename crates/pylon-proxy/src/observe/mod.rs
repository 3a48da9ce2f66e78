//! Observation: the access log, the counters every answer increments, labelled stats
//! per listener, route and cluster, and their OpenMetrics exposition.

pub mod access_log;
pub mod exposition;
pub mod metrics;
pub mod stats;

pub use access_log::{AccessLogger, AccessRecord};
pub use metrics::Metrics;
pub use stats::StatsRegistry;
