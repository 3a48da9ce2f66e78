//! Balancer pick cost, per algorithm and cluster size.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use pylon_lb::{Algorithm, Endpoints, hash_key};

fn picks(c: &mut Criterion) {
    let algorithms = [
        ("round_robin", Algorithm::RoundRobin),
        ("least_connections", Algorithm::LeastConnections),
        ("least_request", Algorithm::LeastRequest),
        ("random", Algorithm::Random),
        ("ring_hash", Algorithm::RingHash),
        ("maglev", Algorithm::Maglev),
    ];
    for n in [2usize, 16, 256] {
        let weights: Vec<u32> = (1..=n as u32).map(|w| w % 4 + 1).collect();
        let ids: Vec<String> = (0..n)
            .map(|i| format!("10.0.{}.{}:80", i / 250, i % 250))
            .collect();
        let eps = Endpoints::new(&weights);
        for (name, algo) in algorithms {
            let b = algo.build(&weights, &ids);
            let mut k = 0u64;
            c.bench_function(&format!("{name}/{n}"), |bench| {
                bench.iter(|| {
                    k = k.wrapping_add(1);
                    black_box(b.pick(&eps, Some(hash_key(&k.to_le_bytes()))))
                })
            });
        }
    }
}

criterion_group!(benches, picks);
criterion_main!(benches);
