//! Adaptive concurrency: the resizable semaphore's debt, and convergence of AIMD, Gradient2
//! and Vegas on a simulated service whose latency rises above a concurrency knee.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use weir_flow::adaptive::{
    AdaptiveLimiter, Aimd, Gradient2, LimitAlgorithm, ResizableSemaphore, Vegas,
};
use weir_flow::{Clock, ManualClock, MemoryMetrics};

/// The simulated service: flat `base` latency up to `knee` requests in flight, then
/// latency proportional to the load (a queue forms).
fn latency(in_flight: usize, knee: usize, base: Duration) -> Duration {
    if in_flight <= knee {
        base
    } else {
        base.mul_f64(in_flight as f64 / knee as f64)
    }
}

/// A closed-loop client that always has work: it keeps as many requests in flight as the
/// limiter allows; each request takes the latency of the load it started under. Runs
/// `samples` completions (event by event on the manual clock) and returns the limit after
/// each.
fn run(l: &AdaptiveLimiter<ManualClock>, samples: usize, knee: usize) -> Vec<usize> {
    let base = Duration::from_millis(10);
    let mut in_flight = BinaryHeap::new();
    let mut limits = vec![];
    let mut seq = 0u64;
    let mut tokens = std::collections::HashMap::new();
    while limits.len() < samples {
        while let Some(t) = l.try_acquire() {
            let rtt = latency(l.in_flight(), knee, base);
            seq += 1;
            in_flight.push(Reverse((l.clock().now() + rtt.as_nanos() as u64, seq)));
            tokens.insert(seq, (t, rtt));
        }
        let Reverse((at, id)) = in_flight.pop().expect("something in flight");
        l.clock().set(at);
        let (t, rtt) = tokens.remove(&id).unwrap();
        t.record(rtt, false);
        limits.push(l.limit());
    }
    // Finish what is in flight, unrecorded.
    drop(tokens);
    assert_eq!(l.in_flight(), 0);
    limits
}

fn mean(v: &[usize]) -> f64 {
    v.iter().sum::<usize>() as f64 / v.len() as f64
}

/// `band`: where the mean limit must settle, as multiples of the knee.
fn converges(name: &str, alg: impl LimitAlgorithm + 'static, band: (f64, f64)) {
    let l = AdaptiveLimiter::with_clock(alg, ManualClock::new());
    let limits = run(&l, 40_000, 40);
    let settled = mean(&limits[20_000..]);
    println!(
        "{name}: settled at {settled:.1} for knee 40: {:?}",
        &limits[39_000..].iter().step_by(50).collect::<Vec<_>>()
    );
    assert!(
        (40.0 * band.0..=40.0 * band.1).contains(&settled),
        "{name}: settled at {settled} for a knee at 40"
    );
    // The service slows down: the knee moves to 10. The limit must come down.
    let limits = run(&l, 40_000, 10);
    let after = mean(&limits[20_000..]);
    println!(
        "{name}: settled at {after:.1} for knee 10: {:?}",
        &limits[39_000..].iter().step_by(50).collect::<Vec<_>>()
    );
    assert!(after < settled * 0.6, "{name}: {settled} -> {after}");
    assert!(
        (10.0 * band.0..=10.0 * band.1).contains(&after),
        "{name}: settled at {after} for a knee at 10"
    );
}

#[test]
fn aimd_converges_near_the_knee_and_backs_off() {
    converges(
        "aimd",
        Aimd::new(5, 1, 1000).rtt_threshold(Duration::from_millis(15)),
        (0.75, 2.0),
    );
}

#[test]
fn vegas_converges_near_the_knee_and_backs_off() {
    converges("vegas", Vegas::new(5, 1, 1000), (0.75, 2.0));
}

#[test]
fn gradient2_converges_near_the_knee_and_backs_off() {
    // Gradient2 tolerates latency up to tolerance × max drift (3×) of the best seen before
    // pulling the limit down, so it settles further above the knee.
    converges("gradient2", Gradient2::new(5, 1, 1000), (0.75, 4.0));
}

#[test]
fn drops_make_every_algorithm_back_off() {
    let algs: Vec<Box<dyn LimitAlgorithm>> = vec![
        Box::new(Aimd::new(100, 1, 1000)),
        Box::new(Vegas::new(100, 1, 1000)),
        Box::new(Gradient2::new(100, 1, 1000)),
    ];
    for mut a in algs {
        let mut last = a.limit();
        for _ in 0..5 {
            last = a.update(weir_flow::adaptive::Sample {
                rtt: Duration::from_millis(10),
                in_flight: 100,
                dropped: false,
            });
        }
        let before = last;
        for _ in 0..20 {
            let l = a.update(weir_flow::adaptive::Sample {
                rtt: Duration::from_millis(10),
                in_flight: 100,
                dropped: true,
            });
            assert!(l <= last, "{a:?}");
            last = l;
        }
        assert!(last < before, "{a:?}");
    }
}

#[test]
fn shrinking_while_saturated_creates_debt_paid_by_releases() {
    let s = ResizableSemaphore::new(4);
    let held: Vec<_> = (0..4).map(|_| s.try_acquire().unwrap()).collect();
    s.resize(2);
    assert_eq!((s.limit(), s.debt(), s.available()), (2, 2, 0));
    let mut held = held.into_iter();
    drop(held.next());
    assert_eq!(
        (s.debt(), s.available()),
        (1, 0),
        "first release pays the debt"
    );
    drop(held.next());
    assert_eq!(
        (s.debt(), s.available()),
        (0, 0),
        "second release pays the debt"
    );
    drop(held.next());
    assert_eq!(s.available(), 1, "now permits come back");
    // Growing pays the debt before adding permits.
    let a = s.try_acquire().unwrap();
    let rest: Vec<_> = held.collect();
    assert!(s.try_acquire().is_none());
    s.resize(0);
    assert_eq!(s.debt(), 2);
    s.resize(3);
    assert_eq!((s.debt(), s.available()), (0, 1));
    drop(a);
    drop(rest);
    assert_eq!(s.available(), 3);
    // Shrinking with idle permits takes them at once.
    s.resize(1);
    assert_eq!((s.debt(), s.available()), (0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limiter_never_lets_more_than_the_limit_start() {
    let m = MemoryMetrics::new();
    let l = std::sync::Arc::new(AdaptiveLimiter::new(Aimd::new(3, 1, 3)).with_metrics(m.clone()));
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks: Vec<_> = (0..30)
        .map(|_| {
            let l = l.clone();
            let peak = peak.clone();
            tokio::spawn(async move {
                let t = l.acquire().await;
                peak.fetch_max(l.in_flight(), std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
                t.success();
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert!(peak.load(std::sync::atomic::Ordering::SeqCst) <= 3);
    let held: Vec<_> = std::iter::from_fn(|| l.try_acquire()).collect();
    assert_eq!(held.len(), 3);
    assert_eq!(m.counter_value("weir_flow_adaptive_rejected_total"), 1);
    assert_eq!(m.gauge_value("weir_flow_adaptive_in_flight"), Some(3.0));
}
