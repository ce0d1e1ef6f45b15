//! Limiter checks beside `governor`, the reference GCRA crate: one thread, two threads,
//! and keyed with 1k and 100k keys. Every check runs on the real clock (both use quanta).

use std::hint::black_box;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use governor::{Quota, RateLimiter as Governor};
use weir_flow::keyed::{KeyedConfig, KeyedLimiter};
use weir_flow::limiter::SlidingWindowLog;
use weir_flow::{
    FixedWindow, Gcra, LeakyBucket, Limiter, Rate, RateLimiter, SlidingWindowCounter, TokenBucket,
};

/// High enough that checks mostly pass, as in a healthy service.
const PER_SECOND: u32 = 1_000_000_000;
const BURST: u32 = 1_000;

fn quota() -> Quota {
    Quota::per_second(NonZeroU32::new(PER_SECOND).unwrap())
        .allow_burst(NonZeroU32::new(BURST).unwrap())
}

fn gcra() -> Gcra {
    Gcra::new(Rate::per_second(u64::from(PER_SECOND)), BURST)
}

fn single_thread(c: &mut Criterion) {
    let mut g = c.benchmark_group("limiter/1 thread");
    let gov = Governor::direct(quota());
    g.bench_function("governor gcra", |b| {
        b.iter(|| black_box(gov.check().is_ok()))
    });
    let ours = Limiter::new(gcra());
    g.bench_function("weir-flow gcra", |b| {
        b.iter(|| black_box(ours.try_acquire(1).is_ok()))
    });
    let rate = Rate::per_second(u64::from(PER_SECOND));
    let tb = Limiter::new(TokenBucket::new(rate, BURST));
    g.bench_function("weir-flow token bucket", |b| {
        b.iter(|| black_box(tb.try_acquire(1).is_ok()))
    });
    let lb = Limiter::new(LeakyBucket::new(rate, Duration::from_secs(1)));
    g.bench_function("weir-flow leaky bucket", |b| {
        b.iter(|| black_box(lb.try_acquire(1).is_ok()))
    });
    let fw = Limiter::new(FixedWindow::new(u32::MAX, Duration::from_secs(1)));
    g.bench_function("weir-flow fixed window", |b| {
        b.iter(|| black_box(fw.try_acquire(1).is_ok()))
    });
    let sw = Limiter::new(SlidingWindowCounter::new(u32::MAX, Duration::from_secs(1)));
    g.bench_function("weir-flow sliding counter", |b| {
        b.iter(|| black_box(sw.try_acquire(1).is_ok()))
    });
    let sl = Limiter::new(SlidingWindowLog::new(
        u32::MAX,
        Duration::from_secs(1),
        1024,
    ));
    g.bench_function("weir-flow sliding log", |b| {
        b.iter(|| black_box(sl.try_acquire(1).is_ok()))
    });
    g.finish();
}

/// Two threads hammer one limiter; the figure is wall time per check per thread.
fn two_threads(c: &mut Criterion) {
    let mut g = c.benchmark_group("limiter/2 threads");
    fn run(iters: u64, f: &(dyn Fn() -> bool + Sync)) -> Duration {
        let start = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    for _ in 0..iters {
                        black_box(f());
                    }
                });
            }
        });
        start.elapsed()
    }
    let gov = Governor::direct(quota());
    g.bench_function("governor gcra", |b| {
        b.iter_custom(|iters| run(iters, &|| gov.check().is_ok()))
    });
    let ours = Limiter::new(gcra());
    g.bench_function("weir-flow gcra", |b| {
        b.iter_custom(|iters| run(iters, &|| ours.try_acquire(1).is_ok()))
    });
    g.finish();
}

fn keyed(c: &mut Criterion) {
    let mut g = c.benchmark_group("limiter/keyed");
    for keys in [1_000u64, 100_000] {
        let gov = Governor::keyed(quota());
        let ours = KeyedLimiter::new(
            gcra(),
            KeyedConfig {
                max_keys: 1_000_000,
                ..KeyedConfig::default()
            },
        );
        for k in 0..keys {
            let _ = gov.check_key(&k);
            let _ = ours.try_acquire(&k, 1);
        }
        let mut i = 0u64;
        g.bench_with_input(BenchmarkId::new("governor", keys), &keys, |b, &keys| {
            b.iter(|| {
                i = (i + 7919) % keys;
                black_box(gov.check_key(&i).is_ok())
            })
        });
        let mut i = 0u64;
        g.bench_with_input(BenchmarkId::new("weir-flow", keys), &keys, |b, &keys| {
            b.iter(|| {
                i = (i + 7919) % keys;
                black_box(ours.try_acquire(&i, 1).is_ok())
            })
        });
    }
    g.finish();
}

/// The clock read alone: most of a check's cost.
fn clock(c: &mut Criterion) {
    use weir_flow::{Clock, MonotonicClock};
    let mut g = c.benchmark_group("clock");
    let q = quanta::Clock::new();
    g.bench_function("quanta Clock::now", |b| b.iter(|| black_box(q.now())));
    let m = MonotonicClock::new();
    g.bench_function("weir-flow MonotonicClock::now", |b| {
        b.iter(|| black_box(m.now()))
    });
    g.bench_function("std Instant::now", |b| b.iter(|| black_box(Instant::now())));
    g.finish();
}

criterion_group!(benches, single_thread, two_threads, keyed, clock);
criterion_main!(benches);
