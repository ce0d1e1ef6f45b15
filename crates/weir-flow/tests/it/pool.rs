//! The worker pool, in real time with short timeouts: scaling between min and max across
//! the watermarks, panics and timeouts that cost no worker, cancellation, priority lanes,
//! and a drain that finishes every accepted task.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Semaphore;
use weir_flow::MemoryMetrics;
use weir_flow::pool::{Pool, PoolConfig, Priority, SubmitError, TaskError};

fn config(min: usize, max: usize, capacity: usize) -> PoolConfig {
    PoolConfig {
        min_workers: min,
        max_workers: max,
        queue_capacity: capacity,
        idle_timeout: Duration::from_millis(100),
        ..PoolConfig::default()
    }
}

async fn eventually(what: &str, f: impl Fn() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(5), "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grows_above_the_high_watermark_and_shrinks_back_to_min() {
    let m = MemoryMetrics::new();
    let pool = Pool::with_metrics(config(1, 4, 40), m.clone());
    assert_eq!(pool.workers(), 1);
    let gate = Arc::new(Semaphore::new(0));
    let mut handles = vec![];
    let submit = |handles: &mut Vec<_>| {
        let gate = Arc::clone(&gate);
        handles.push(
            pool.submit(Priority::Normal, async move {
                gate.acquire().await.unwrap().forget();
            })
            .unwrap(),
        );
    };
    // Up to the high watermark (32 of 40 queued): still one worker.
    submit(&mut handles);
    eventually("one task running", || pool.queued() == 0).await;
    for _ in 0..32 {
        submit(&mut handles);
    }
    assert_eq!(pool.queued(), 32);
    assert_eq!(pool.workers(), 1);
    // Above it: one more worker per submit, never more than max.
    for _ in 0..7 {
        submit(&mut handles);
        assert!(pool.workers() <= 4);
    }
    assert_eq!(pool.workers(), 4);
    assert_eq!(m.gauge_value("weir_flow_pool_workers"), Some(4.0));
    // Let everything finish: the queue empties, the extra workers go idle and stop.
    gate.add_permits(1000);
    for h in handles {
        h.await.unwrap();
    }
    eventually("shrunk to min", || pool.workers() == 1).await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(pool.workers(), 1, "went below min");
    pool.drain().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_zero_starts_a_worker_on_demand() {
    let pool = Pool::new(config(0, 2, 10));
    assert_eq!(pool.workers(), 0);
    assert_eq!(
        pool.submit(Priority::Low, async { 5 }).unwrap().await,
        Ok(5)
    );
    eventually("idle worker gone", || pool.workers() == 0).await;
    assert_eq!(
        pool.submit(Priority::Low, async { 6 }).unwrap().await,
        Ok(6)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_are_isolated_and_counted() {
    let m = MemoryMetrics::new();
    let pool = Pool::with_metrics(config(2, 2, 100), m.clone());
    let mut bad = vec![];
    let mut good = vec![];
    for i in 0..10 {
        bad.push(
            pool.submit(Priority::Normal, async move {
                if i < 100 {
                    panic!("boom {i}");
                }
            })
            .unwrap(),
        );
        good.push(pool.submit(Priority::Normal, async move { i }).unwrap());
    }
    for (i, h) in bad.into_iter().enumerate() {
        assert_eq!(h.await, Err(TaskError::Panicked(format!("boom {i}"))));
    }
    for (i, h) in good.into_iter().enumerate() {
        assert_eq!(h.await, Ok(i));
    }
    assert_eq!(pool.workers(), 2);
    assert_eq!(pool.panics(), 10);
    assert_eq!(m.counter_value("weir_flow_pool_panics_total"), 10);
    assert_eq!(m.counter_value("weir_flow_pool_completed_total"), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_stop_the_task_not_the_worker() {
    let m = MemoryMetrics::new();
    let pool = Pool::with_metrics(
        PoolConfig {
            task_timeout: Some(Duration::from_millis(30)),
            ..config(1, 1, 10)
        },
        m.clone(),
    );
    let start = Instant::now();
    let slow = pool.submit(
        Priority::Normal,
        tokio::time::sleep(Duration::from_secs(30)),
    );
    assert_eq!(slow.unwrap().await, Err(TaskError::TimedOut));
    assert!(start.elapsed() < Duration::from_secs(5));
    // A per-task timeout overrides the default.
    let longer = pool.submit_with_timeout(Priority::Normal, None, async {
        tokio::time::sleep(Duration::from_millis(60)).await;
        1
    });
    assert_eq!(longer.unwrap().await, Ok(1));
    assert_eq!(pool.workers(), 1);
    assert_eq!(m.counter_value("weir_flow_pool_timeouts_total"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_before_and_during_the_run() {
    let pool = Pool::new(config(1, 1, 10));
    let gate = Arc::new(Semaphore::new(0));
    let ran = Arc::new(AtomicUsize::new(0));
    let g = Arc::clone(&gate);
    let running = pool
        .submit(Priority::Normal, async move {
            g.acquire().await.unwrap().forget();
        })
        .unwrap();
    let r = Arc::clone(&ran);
    let queued = pool
        .submit(Priority::Normal, async move {
            r.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
    queued.cancel();
    running.cancel();
    assert_eq!(running.await, Err(TaskError::Cancelled));
    assert_eq!(queued.await, Err(TaskError::Cancelled));
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    assert_eq!(
        pool.submit(Priority::High, async { 3 }).unwrap().await,
        Ok(3)
    );
    assert_eq!(pool.workers(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lanes_are_served_by_priority() {
    let pool = Pool::new(config(1, 1, 100));
    let gate = Arc::new(Semaphore::new(0));
    let g = Arc::clone(&gate);
    let blocker = pool
        .submit(Priority::Normal, async move {
            g.acquire().await.unwrap().forget();
        })
        .unwrap();
    eventually("blocker running", || pool.queued() == 0).await;
    let order = Arc::new(Mutex::new(vec![]));
    let mut handles = vec![];
    for (i, p) in [Priority::Low, Priority::Normal, Priority::High]
        .into_iter()
        .cycle()
        .take(9)
        .enumerate()
    {
        let order = Arc::clone(&order);
        handles.push(
            pool.submit(p, async move { order.lock().push((p, i)) })
                .unwrap(),
        );
    }
    gate.add_permits(1);
    blocker.await.unwrap();
    for h in handles {
        h.await.unwrap();
    }
    let order = order.lock().clone();
    let lanes: Vec<_> = order.iter().map(|(p, _)| *p).collect();
    assert_eq!(
        lanes,
        [
            [Priority::High; 3],
            [Priority::Normal; 3],
            [Priority::Low; 3]
        ]
        .concat()
    );
    // FIFO within a lane.
    assert_eq!(order[0].1, 2);
    assert_eq!(order[1].1, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_finishes_every_accepted_task_and_refuses_new_ones() {
    let pool = Pool::new(config(1, 4, 1000));
    let done = Arc::new(AtomicUsize::new(0));
    let mut handles = vec![];
    for i in 0..300u64 {
        let done = Arc::clone(&done);
        handles.push(
            pool.submit(Priority::Normal, async move {
                tokio::time::sleep(Duration::from_micros(200 * (i % 7))).await;
                done.fetch_add(1, Ordering::SeqCst);
            })
            .unwrap(),
        );
    }
    let p = pool.clone();
    let drain = tokio::spawn(async move { p.drain().await });
    // Draining: new work is refused.
    eventually("draining", || {
        matches!(
            pool.submit(Priority::High, async {}),
            Err(SubmitError::Draining)
        )
    })
    .await;
    drain.await.unwrap();
    assert_eq!(done.load(Ordering::SeqCst), 300);
    assert_eq!(pool.workers(), 0);
    for h in handles {
        assert_eq!(h.await, Ok(()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_submits() {
    let pool = Pool::new(config(1, 1, 2));
    let gate = Arc::new(Semaphore::new(0));
    let mut accepted = 0;
    let mut refused = 0;
    for _ in 0..10 {
        let g = Arc::clone(&gate);
        match pool.submit(Priority::Normal, async move {
            g.acquire().await.unwrap().forget();
        }) {
            Ok(_) => accepted += 1,
            Err(SubmitError::Full) => refused += 1,
            Err(e) => panic!("{e}"),
        }
    }
    // One running plus two queued at most.
    assert!((2..=3).contains(&accepted), "{accepted}");
    assert_eq!(accepted + refused, 10);
    gate.add_permits(10);
    pool.drain().await;
}
