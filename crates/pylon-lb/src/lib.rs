//! Balancing decisions: which endpoint of a cluster takes the next request (with slow
//! start, [`SlowStart`]), and whether a request or a retry may start at all
//! ([`RetryBudget`]).
//!
//! Pure logic over endpoint indices and their live state ([`Endpoints`]), no sockets, so
//! it is tested exhaustively here and shared by L7 routes and (later) L4 listeners.

pub mod clock;
mod hash;
mod least;
mod retry_budget;
mod round_robin;
mod slow_start;
mod state;

pub use hash::{Maglev, RingHash, hash_key};
pub use least::{LeastConnections, LeastRequest, Random};

/// A fast per-thread pseudo-random number (not for cryptography): for jitter and sampling.
pub fn random_u64() -> u64 {
    least::random()
}
pub use retry_budget::{RequestGuard, RetryBudget, RetryBudgetPolicy, RetryGuard, RetryShare};
pub use round_robin::RoundRobin;
pub use slow_start::{SlowStart, admit, ramp_factor};
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

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Algorithm; 6] = [
        Algorithm::RoundRobin,
        Algorithm::LeastConnections,
        Algorithm::LeastRequest,
        Algorithm::Random,
        Algorithm::RingHash,
        Algorithm::Maglev,
    ];

    #[test]
    fn an_empty_set_picks_nothing() {
        // A cluster whose DNS names have not resolved yet has no endpoints.
        let eps = Endpoints::new(&[]);
        for a in ALL {
            assert_eq!(a.build(&[], &[]).pick(&eps, Some(7)), None, "{a:?}");
            assert_eq!(a.build(&[], &[]).pick(&eps, None), None, "{a:?}");
        }
    }

    #[test]
    fn shared_states_carry_health_into_a_new_set() {
        let old = Endpoints::new(&[1, 1]);
        old.set_available(1, false);
        let moved = std::sync::Arc::clone(old.state(1).unwrap());
        let new = Endpoints::from_states(vec![moved, std::sync::Arc::new(EndpointState::new(1))]);
        assert!(!new.is_available(0), "still out of rotation");
        assert!(new.is_available(1));
        new.begin(0);
        assert_eq!(old.in_flight(1), 1, "one state, seen from both sets");
    }
}
