//! Balancer pick cost, per algorithm and cluster size.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use pylon_lb::{Balancer, RoundRobin};

fn picks(c: &mut Criterion) {
    for n in [2usize, 16, 256] {
        let equal = RoundRobin::new(&vec![1; n]);
        c.bench_function(&format!("round_robin/equal/{n}"), |b| {
            b.iter(|| black_box(equal.pick()))
        });
        let weights: Vec<u32> = (1..=n as u32).collect();
        let weighted = RoundRobin::new(&weights);
        c.bench_function(&format!("round_robin/weighted/{n}"), |b| {
            b.iter(|| black_box(weighted.pick()))
        });
    }
}

criterion_group!(benches, picks);
criterion_main!(benches);
