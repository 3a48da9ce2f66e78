//! Balancing decisions: which endpoint of a cluster takes the next request.
//!
//! Pure logic over endpoint indices, no sockets, so it is tested exhaustively here and
//! shared by L7 routes and (later) L4 listeners.

mod round_robin;

pub use round_robin::RoundRobin;

/// Picks an endpoint index in `0..len` for each request.
pub trait Balancer: Send + Sync {
    /// Index of the endpoint for the next request; `None` when the cluster is empty.
    fn pick(&self) -> Option<usize>;
}
