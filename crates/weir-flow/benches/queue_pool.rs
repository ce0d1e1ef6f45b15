//! The bounded queue beside `tokio::sync::mpsc`, and the pool's per-task overhead beside a
//! bare `tokio::spawn`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use weir_flow::pool::{Pool, PoolConfig, Priority};
use weir_flow::queue::{BoundedQueue, Overflow, QueueConfig};

const BATCH: u64 = 1000;

fn queue(c: &mut Criterion) {
    let mut g = c.benchmark_group("queue");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    // One task: push a batch, pop it (no contention; the cost of the structure itself).
    let q = BoundedQueue::new(
        QueueConfig {
            max_items: 1024,
            max_bytes: usize::MAX,
            overflow: Overflow::Block,
        },
        |_: &u64| 8,
    );
    g.bench_function("weir-flow push+pop, 1 task", |b| {
        b.iter(|| {
            rt.block_on(async {
                for i in 0..BATCH {
                    let _ = black_box(q.push(i).await);
                }
                for _ in 0..BATCH {
                    black_box(q.pop().await);
                }
            })
        })
    });
    let (tx, mut rx) = tokio::sync::mpsc::channel::<u64>(1024);
    g.bench_function("tokio mpsc send+recv, 1 task", |b| {
        b.iter(|| {
            rt.block_on(async {
                for i in 0..BATCH {
                    tx.send(i).await.unwrap();
                }
                for _ in 0..BATCH {
                    black_box(rx.recv().await);
                }
            })
        })
    });
    // Producer and consumer on two worker threads, a small bound so both sides wait.
    let mt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    g.bench_function("weir-flow spsc 2 threads (per item)", |b| {
        b.iter_custom(|iters| {
            mt.block_on(async {
                let q = Arc::new(BoundedQueue::new(
                    QueueConfig {
                        max_items: 128,
                        max_bytes: usize::MAX,
                        overflow: Overflow::Block,
                    },
                    |_: &u64| 8,
                ));
                let start = Instant::now();
                let q2 = Arc::clone(&q);
                let consumer = tokio::spawn(async move {
                    for _ in 0..iters {
                        black_box(q2.pop().await);
                    }
                });
                for i in 0..iters {
                    let _ = q.push(i).await;
                }
                consumer.await.unwrap();
                start.elapsed()
            })
        })
    });
    g.bench_function("tokio mpsc spsc 2 threads (per item)", |b| {
        b.iter_custom(|iters| {
            mt.block_on(async {
                let (tx, mut rx) = tokio::sync::mpsc::channel::<u64>(128);
                let start = Instant::now();
                let consumer = tokio::spawn(async move {
                    for _ in 0..iters {
                        black_box(rx.recv().await);
                    }
                });
                for i in 0..iters {
                    tx.send(i).await.unwrap();
                }
                consumer.await.unwrap();
                start.elapsed()
            })
        })
    });
    g.finish();
}

fn pool(c: &mut Criterion) {
    let mut g = c.benchmark_group("pool");
    let mt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let pool = mt.block_on(async {
        Pool::new(PoolConfig {
            min_workers: 2,
            max_workers: 2,
            queue_capacity: 4096,
            idle_timeout: Duration::from_secs(60),
            ..PoolConfig::default()
        })
    });
    g.bench_function(
        "weir-flow pool submit+await (per task, 1000 at a time)",
        |b| {
            b.iter_custom(|iters| {
                mt.block_on(async {
                    let start = Instant::now();
                    let mut left = iters;
                    while left > 0 {
                        let n = left.min(BATCH);
                        let hs: Vec<_> = (0..n)
                            .map(|i| pool.submit(Priority::Normal, async move { i }).unwrap())
                            .collect();
                        for h in hs {
                            black_box(h.await.unwrap());
                        }
                        left -= n;
                    }
                    start.elapsed()
                })
            })
        },
    );
    g.bench_function("tokio::spawn+await (per task, 1000 at a time)", |b| {
        b.iter_custom(|iters| {
            mt.block_on(async {
                let start = Instant::now();
                let mut left = iters;
                while left > 0 {
                    let n = left.min(BATCH);
                    let hs: Vec<_> = (0..n).map(|i| tokio::spawn(async move { i })).collect();
                    for h in hs {
                        black_box(h.await.unwrap());
                    }
                    left -= n;
                }
                start.elapsed()
            })
        })
    });
    g.finish();
}

criterion_group!(benches, queue, pool);
criterion_main!(benches);
