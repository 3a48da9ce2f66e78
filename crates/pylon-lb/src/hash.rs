//! Consistent hashing: a ketama ring and Maglev. An endpoint's place depends only on its
//! identity (its address), so when one leaves or joins only about 1/N of the keys move.

use crate::{Balancer, Endpoints};

/// Ring points per unit of weight (ketama uses 160).
const POINTS_PER_WEIGHT: usize = 160;
/// Upper bound on ring size.
const MAX_POINTS: usize = 160_000;
/// Maglev lookup table size: a prime well above the endpoint count.
const MAGLEV_SIZE: usize = 65_537;

/// Hashes a request key (client IP, header value, ...): FNV-1a, then a
/// splitmix64 finalizer for good bit spread. Stable across runs and machines.
pub fn hash_key(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    mix(h)
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Ketama: each endpoint owns points on a ring; a key goes to the first point at or
/// after its hash, skipping unavailable endpoints.
#[derive(Debug)]
pub struct RingHash {
    ring: Vec<(u64, u32)>,
}

impl RingHash {
    pub fn new(weights: &[u32], ids: &[String]) -> RingHash {
        let total: usize = weights.iter().map(|&w| w.max(1) as usize).sum();
        let per_weight = (MAX_POINTS / total.max(1)).clamp(1, POINTS_PER_WEIGHT);
        let mut ring = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let points = per_weight * weights.get(i).copied().unwrap_or(1).max(1) as usize;
            for n in 0..points {
                ring.push((hash_key(format!("{id}-{n}").as_bytes()), i as u32));
            }
        }
        ring.sort_unstable();
        RingHash { ring }
    }
}

impl Balancer for RingHash {
    fn pick(&self, eps: &Endpoints, key: Option<u64>) -> Option<usize> {
        if self.ring.is_empty() {
            return None;
        }
        let key = key.unwrap_or_else(crate::least::random);
        let start = self.ring.partition_point(|&(h, _)| h < key);
        (0..self.ring.len())
            .map(|k| self.ring[(start + k) % self.ring.len()].1 as usize)
            .find(|&i| eps.is_available(i))
    }
}

/// Maglev (Google, NSDI 2016): a lookup table filled from per-endpoint permutations,
/// weighted; unavailable endpoints are skipped by probing the next table entries.
#[derive(Debug)]
pub struct Maglev {
    table: Vec<u32>,
}

impl Maglev {
    pub fn new(weights: &[u32], ids: &[String]) -> Maglev {
        let n = ids.len();
        if n == 0 {
            return Maglev { table: Vec::new() };
        }
        let m = MAGLEV_SIZE as u64;
        let perms: Vec<(u64, u64)> = ids
            .iter()
            .map(|id| {
                let offset = hash_key(format!("offset-{id}").as_bytes()) % m;
                let skip = hash_key(format!("skip-{id}").as_bytes()) % (m - 1) + 1;
                (offset, skip)
            })
            .collect();
        let max_w = weights.iter().copied().max().unwrap_or(1).max(1);
        let mut next = vec![0u64; n];
        let mut table = vec![u32::MAX; MAGLEV_SIZE];
        let mut filled = 0;
        // Weighted: in round r, endpoint i places an entry when its weight allows
        // (weight / max weight of the rounds), so shares follow the weights.
        let mut round: u64 = 0;
        while filled < MAGLEV_SIZE {
            for i in 0..n {
                let w = u64::from(weights.get(i).copied().unwrap_or(1).max(1));
                if (round * w) / u64::from(max_w) == ((round + 1) * w) / u64::from(max_w) {
                    continue;
                }
                let (offset, skip) = perms[i];
                loop {
                    let slot = ((offset + next[i] * skip) % m) as usize;
                    next[i] += 1;
                    if table[slot] == u32::MAX {
                        table[slot] = i as u32;
                        filled += 1;
                        break;
                    }
                }
                if filled == MAGLEV_SIZE {
                    break;
                }
            }
            round += 1;
        }
        Maglev { table }
    }
}

impl Balancer for Maglev {
    fn pick(&self, eps: &Endpoints, key: Option<u64>) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        let key = key.unwrap_or_else(crate::least::random);
        let start = (key % self.table.len() as u64) as usize;
        // Bounded probe: past one table's worth, nothing is available.
        (0..self.table.len())
            .map(|k| self.table[(start + k) % self.table.len()] as usize)
            .find(|&i| eps.is_available(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:80")).collect()
    }

    fn owners(b: &dyn Balancer, eps: &Endpoints, keys: &[u64], names: &[String]) -> Vec<String> {
        keys.iter()
            .map(|&k| names[b.pick(eps, Some(k)).unwrap()].clone())
            .collect()
    }

    fn moved_fraction(before: &[String], after: &[String], gone: Option<&str>) -> f64 {
        let considered: Vec<usize> = (0..before.len())
            .filter(|&i| Some(before[i].as_str()) != gone)
            .collect();
        let moved = considered
            .iter()
            .filter(|&&i| before[i] != after[i])
            .count();
        moved as f64 / considered.len().max(1) as f64
    }

    fn check_consistency(algo: crate::Algorithm, n: usize, tolerance: f64) {
        let keys: Vec<u64> = (0..4000u64).map(|k| hash_key(&k.to_le_bytes())).collect();
        let names = ids(n + 1);
        let w = vec![1; n + 1];
        // Leaving: endpoint 0 goes away; keys it did not own should stay.
        let full = algo.build(&w, &names);
        let less = algo.build(&w[1..], &names[1..]);
        let before = owners(full.as_ref(), &Endpoints::new(&w), &keys, &names);
        let after = owners(less.as_ref(), &Endpoints::new(&w[1..]), &keys, &names[1..]);
        let moved = moved_fraction(&before, &after, Some(&names[0]));
        assert!(
            moved <= tolerance,
            "{algo:?}: {moved} of keys moved when one endpoint left"
        );
        // Joining: about 1/(n+1) of the keys move, to the new endpoint.
        let moved_join = moved_fraction(&after, &before, None);
        let expected = 1.0 / (n + 1) as f64;
        assert!(
            moved_join < expected * 1.6 + tolerance,
            "{algo:?}: {moved_join} of keys moved when one joined (expected about {expected})"
        );
    }

    #[test]
    fn ring_hash_moves_only_the_leaving_endpoints_keys() {
        for n in [2, 5, 10] {
            check_consistency(crate::Algorithm::RingHash, n, 0.0);
        }
    }

    #[test]
    fn maglev_moves_few_other_keys() {
        for n in [2, 5, 10] {
            check_consistency(crate::Algorithm::Maglev, n, 0.05);
        }
    }

    #[test]
    fn same_key_same_endpoint_and_unavailable_skipped() {
        let names = ids(4);
        let eps = Endpoints::new(&[1; 4]);
        for algo in [crate::Algorithm::RingHash, crate::Algorithm::Maglev] {
            let b = algo.build(&[1; 4], &names);
            let k = hash_key(b"client-1");
            let first = b.pick(&eps, Some(k)).unwrap();
            assert!((0..20).all(|_| b.pick(&eps, Some(k)) == Some(first)));
            eps.set_available(first, false);
            let second = b.pick(&eps, Some(k)).unwrap();
            assert_ne!(second, first);
            eps.set_available(first, true);
            assert_eq!(
                b.pick(&eps, Some(k)),
                Some(first),
                "{algo:?}: back when it recovers"
            );
        }
    }

    proptest! {
        #[test]
        fn hash_shares_follow_weights(weights in proptest::collection::vec(1u32..5, 2..6)) {
            let names = ids(weights.len());
            let eps = Endpoints::new(&weights);
            let total: u32 = weights.iter().sum();
            for algo in [crate::Algorithm::RingHash, crate::Algorithm::Maglev] {
                let b = algo.build(&weights, &names);
                let mut counts = vec![0u32; weights.len()];
                let samples = 20_000u64;
                for k in 0..samples {
                    counts[b.pick(&eps, Some(hash_key(&k.to_le_bytes()))).unwrap()] += 1;
                }
                for (c, w) in counts.iter().zip(&weights) {
                    let share = f64::from(*c) / samples as f64;
                    let want = f64::from(*w) / f64::from(total);
                    prop_assert!((share - want).abs() < 0.35 * want + 0.02, "{:?} {:?} {:?}", algo, counts, weights);
                }
            }
        }
    }
}
