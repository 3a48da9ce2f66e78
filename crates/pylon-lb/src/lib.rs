//! Balancing decisions: which endpoint of a cluster takes the next request.
//!
//! Pure logic over endpoint indices and their live state ([`Endpoints`]), no sockets, so
//! it is tested exhaustively here and shared by L7 routes and (later) L4 listeners.

mod hash;
mod least;
mod round_robin;
mod state;

pub use hash::{Maglev, RingHash, hash_key};
pub use least::{LeastConnections, LeastRequest, Random};

/// A fast per-thread pseudo-random number (not for cryptography): for jitter and sampling.
pub fn random_u64() -> u64 {
    least::random()
}
pub use round_robin::RoundRobin;
pub use state::{EndpointState, Endpoints, OutlierPolicy};

/// Picks an endpoint index for each request.
pub trait Balancer: Send + Sync {
    /// The endpoint for the next request among the available ones, `None` when none is.
    /// `key` is the request's hash key (hash balancers need one; others ignore it).
    fn pick(&self, endpoints: &Endpoints, key: Option<u64>) -> Option<usize>;
}

/// The balancing algorithms, by their configuration names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    RoundRobin,
    LeastConnections,
    LeastRequest,
    Random,
    RingHash,
    Maglev,
}

impl Algorithm {
    /// Builds the balancer for endpoints with these weights and stable identities (for
    /// consistent hashing: an endpoint keeps its place when others come and go).
    pub fn build(self, weights: &[u32], ids: &[String]) -> Box<dyn Balancer> {
        match self {
            Algorithm::RoundRobin => Box::new(RoundRobin::new(weights)),
            Algorithm::LeastConnections => Box::new(LeastConnections::default()),
            Algorithm::LeastRequest => Box::new(LeastRequest),
            Algorithm::Random => Box::new(Random::new(weights)),
            Algorithm::RingHash => Box::new(RingHash::new(weights, ids)),
            Algorithm::Maglev => Box::new(Maglev::new(weights, ids)),
        }
    }
}
