//! Observation: the access log, the counters every answer increments, labelled stats
//! per listener, route and cluster, their OpenMetrics exposition, and each request's
//! timing breakdown.

pub mod access_log;
pub mod exposition;
pub mod metrics;
pub mod recent;
pub mod shard;
pub mod stats;
pub mod timing;
pub mod trace;

pub use access_log::{AccessLogger, AccessRecord};
pub use metrics::Metrics;
pub use stats::StatsRegistry;
