//! Rate tests for every local limiter: exact on a manual clock over a simulated 10 s, plus
//! real-time checks with a generous tolerance.

use std::time::{Duration, Instant};

use weir_flow::limiter::SlidingWindowLog;
use weir_flow::{
    AcquireError, Algorithm, Clock, FixedWindow, Gcra, LeakyBucket, Limiter, ManualClock,
    MemoryMetrics, NotUntil, Rate, RateLimiter, SlidingWindowCounter, TokenBucket, WarmUpBucket,
};

const STEP: Duration = Duration::from_micros(250);

/// Offers requests of `n` permits as fast as the limiter takes them, at every `STEP` of the
/// manual clock, for `dur`; returns permits admitted.
fn admitted<A: Algorithm>(l: &Limiter<A, ManualClock>, dur: Duration, n: u32) -> u64 {
    let end = l.clock().now() + dur.as_nanos() as u64;
    let mut total = 0;
    while l.clock().now() < end {
        while l.try_acquire(n).is_ok() {
            total += u64::from(n);
        }
        l.clock().advance(STEP);
    }
    total
}

fn within(actual: u64, expected: f64, tolerance: f64) -> bool {
    (actual as f64 - expected).abs() <= expected * tolerance
}

fn check_rate<A: Algorithm>(name: &str, alg: A, expected_per_s: f64) {
    let l = Limiter::with_clock(alg, ManualClock::new());
    let got = admitted(&l, Duration::from_secs(10), 1);
    let expected = expected_per_s * 10.0;
    assert!(
        within(got, expected, 0.05),
        "{name}: admitted {got} in 10 s, expected {expected} ±5%"
    );
}

#[test]
fn every_limiter_admits_its_rate_over_ten_seconds() {
    check_rate("gcra", Gcra::new(Rate::per_second(100), 10), 100.0);
    check_rate(
        "token bucket",
        TokenBucket::new(Rate::per_second(100), 10),
        100.0,
    );
    check_rate(
        "leaky bucket",
        LeakyBucket::new(Rate::per_second(100), Duration::from_secs(1)),
        100.0,
    );
    check_rate(
        "fixed window",
        FixedWindow::new(100, Duration::from_secs(1)),
        100.0,
    );
    check_rate(
        "sliding counter",
        SlidingWindowCounter::new(100, Duration::from_secs(1)),
        100.0,
    );
    check_rate(
        "sliding log",
        SlidingWindowLog::new(100, Duration::from_secs(1), 1000),
        100.0,
    );
    check_rate(
        "sliding log (bounded to 10 entries)",
        SlidingWindowLog::new(100, Duration::from_secs(1), 10),
        100.0,
    );
    // Warm-up that finished before the window: the full rate.
    check_rate(
        "warm-up (already warm)",
        WarmUpBucket::new(Rate::per_second(100), 10, 3.0, Duration::from_millis(1)),
        100.0,
    );
    // Odd rates and periods.
    check_rate("gcra 7/s", Gcra::new(Rate::per_second(7), 1), 7.0);
    check_rate(
        "token bucket 1000/250ms",
        TokenBucket::new(Rate::new(1000, Duration::from_millis(250)), 50),
        4000.0,
    );
    check_rate(
        "sliding counter 5000/s",
        SlidingWindowCounter::new(5000, Duration::from_secs(1)),
        5000.0,
    );
}

#[test]
fn multi_permit_requests_keep_the_rate() {
    let l = Limiter::with_clock(Gcra::new(Rate::per_second(1000), 100), ManualClock::new());
    let got = admitted(&l, Duration::from_secs(10), 7);
    assert!(within(got, 10_000.0, 0.05), "{got}");
    let l = Limiter::with_clock(
        TokenBucket::new(Rate::per_second(1000), 100),
        ManualClock::new(),
    );
    let got = admitted(&l, Duration::from_secs(10), 7);
    assert!(within(got, 10_000.0, 0.05), "{got}");
}

fn burst_of<A: Algorithm>(alg: A) -> u32 {
    let l = Limiter::with_clock(alg, ManualClock::new());
    // Idle first, so any bucket is full.
    l.clock().advance(Duration::from_secs(5));
    let mut n = 0;
    while l.try_acquire(1).is_ok() {
        n += 1;
        assert!(n < 1_000_000, "no limit");
    }
    n
}

#[test]
fn bursts_are_respected() {
    assert_eq!(burst_of(Gcra::new(Rate::per_second(100), 10)), 10);
    assert_eq!(burst_of(TokenBucket::new(Rate::per_second(100), 25)), 25);
    assert_eq!(
        burst_of(LeakyBucket::new(
            Rate::per_second(100),
            Duration::from_secs(1)
        )),
        1
    );
    assert_eq!(burst_of(FixedWindow::new(40, Duration::from_secs(1))), 40);
    assert_eq!(
        burst_of(SlidingWindowCounter::new(40, Duration::from_secs(1))),
        40
    );
    assert_eq!(
        burst_of(SlidingWindowLog::new(40, Duration::from_secs(1), 8)),
        40
    );
}

#[test]
fn refusals_say_how_long_to_wait_and_the_wait_is_enough() {
    fn check<A: Algorithm>(name: &str, alg: A) {
        let l = Limiter::with_clock(alg, ManualClock::new());
        let mut checked = 0;
        for _ in 0..500 {
            match l.try_acquire(3) {
                Ok(()) => {}
                Err(NotUntil { wait }) => {
                    assert!(
                        wait > Duration::ZERO && wait < Duration::from_secs(2),
                        "{name}"
                    );
                    assert_eq!(l.time_until_ready(3), wait, "{name}");
                    l.clock().advance(wait);
                    assert_eq!(l.time_until_ready(3), Duration::ZERO, "{name}");
                    assert!(
                        l.try_acquire(3).is_ok(),
                        "{name}: waited {wait:?}, still refused"
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked >= 10, "{name}: {checked}");
    }
    check("gcra", Gcra::new(Rate::per_second(100), 10));
    check("token bucket", TokenBucket::new(Rate::per_second(100), 10));
    check(
        "leaky",
        LeakyBucket::new(Rate::per_second(100), Duration::from_secs(1)),
    );
    check("fixed", FixedWindow::new(100, Duration::from_secs(1)));
    check(
        "sliding counter",
        SlidingWindowCounter::new(100, Duration::from_secs(1)),
    );
    check(
        "sliding log",
        SlidingWindowLog::new(100, Duration::from_secs(1), 16),
    );
}

#[test]
fn requests_above_capacity_never_pass() {
    let l = Limiter::with_clock(Gcra::new(Rate::per_second(10), 5), ManualClock::new());
    assert_eq!(
        l.try_acquire(6),
        Err(NotUntil {
            wait: Duration::MAX
        })
    );
    assert_eq!(l.time_until_ready(6), Duration::MAX);
    let r = futures::executor::block_on(l.acquire(6));
    assert_eq!(
        r,
        Err(AcquireError::ExceedsCapacity {
            requested: 6,
            capacity: 5
        })
    );
}

#[test]
fn fixed_window_allows_twice_the_limit_across_a_boundary_and_sliding_does_not() {
    let clock = ManualClock::new();
    clock.advance(Duration::from_millis(900));
    let fixed = Limiter::with_clock(FixedWindow::new(100, Duration::from_secs(1)), clock.clone());
    let sliding = Limiter::with_clock(
        SlidingWindowCounter::new(100, Duration::from_secs(1)),
        clock.clone(),
    );
    let log = Limiter::with_clock(
        SlidingWindowLog::new(100, Duration::from_secs(1), 64),
        clock.clone(),
    );
    let take = |l: &dyn Fn() -> bool| (0..1000).take_while(|_| l()).count();
    let mut f = take(&|| fixed.try_acquire(1).is_ok());
    let mut s = take(&|| sliding.try_acquire(1).is_ok());
    let mut g = take(&|| log.try_acquire(1).is_ok());
    clock.advance(Duration::from_millis(200));
    f += take(&|| fixed.try_acquire(1).is_ok());
    s += take(&|| sliding.try_acquire(1).is_ok());
    g += take(&|| log.try_acquire(1).is_ok());
    assert_eq!(f, 200);
    assert!(s <= 120, "sliding counter let {s} through in 200 ms");
    assert_eq!(g, 100);
}

#[test]
fn sliding_log_stays_bounded() {
    let alg = SlidingWindowLog::new(10_000, Duration::from_secs(1), 32);
    let clock = ManualClock::new();
    let state = alg.new_state(0);
    let mut admitted = 0u64;
    for i in 0..200_000u64 {
        clock.set(i * 50_000); // 20,000 requests/s offered for 10 s
        if alg.check(&state, clock.now(), 1).is_ok() {
            admitted += 1;
        }
        assert!(alg.log_len(&state) <= 33);
    }
    // Merging makes it stricter, never more lenient.
    assert!(admitted <= 100_000 + 10_000, "{admitted}");
    assert!(admitted >= 95_000, "{admitted}");
}

#[test]
fn warm_up_ramps_from_cold_rate_to_full_rate() {
    let l = Limiter::with_clock(
        WarmUpBucket::new(Rate::per_second(300), 10, 3.0, Duration::from_secs(2)),
        ManualClock::new(),
    );
    // First 0.5 s: close to the cold rate (100/s), far below 300/s.
    let first = admitted(&l, Duration::from_millis(500), 1);
    assert!((45..=75).contains(&first), "first half second: {first}");
    // The rest of the ramp: rate climbs linearly, the whole ramp admits (100+300)/2 * 2 s.
    let ramp = first + admitted(&l, Duration::from_millis(1500), 1);
    assert!(within(ramp, 400.0, 0.05), "ramp: {ramp}");
    // Warm: the full rate over 10 s.
    let warm = admitted(&l, Duration::from_secs(10), 1);
    assert!(within(warm, 3000.0, 0.05), "warm: {warm}");
    // Idle for a whole warm-up period: cold again.
    l.clock().advance(Duration::from_secs(3));
    let cold = admitted(&l, Duration::from_millis(500), 1);
    assert!((45..=75).contains(&cold), "cold again: {cold}");
}

#[tokio::test]
async fn acquire_waits_on_the_manual_clock() {
    let l = Limiter::with_clock(Gcra::new(Rate::per_second(50), 5), ManualClock::new());
    let start = l.clock().now();
    for _ in 0..505 {
        l.acquire(1).await.unwrap();
    }
    let took = Duration::from_nanos(l.clock().now() - start);
    // 5 at once, then 500 at 50/s.
    assert!(
        took >= Duration::from_millis(9_900) && took <= Duration::from_millis(10_100),
        "{took:?}"
    );
}

#[tokio::test]
async fn leaky_bucket_schedules_slots_in_order_and_refuses_a_full_queue() {
    let l = Limiter::with_clock(
        LeakyBucket::new(Rate::per_second(10), Duration::from_millis(500)),
        ManualClock::new(),
    );
    // Slots at 0, 100, ..., 500 ms fit within 500 ms of waiting; the seventh does not.
    let alg = l.algorithm();
    let state = alg.new_state(0);
    let mut waits = vec![];
    for _ in 0..6 {
        waits.push(alg.reserve(&state, 0, 1).unwrap().unwrap());
    }
    assert_eq!(waits, (0..6).map(|i| i * 100_000_000).collect::<Vec<_>>());
    assert!(matches!(
        alg.reserve(&state, 0, 1),
        Some(Err(AcquireError::QueueFull { .. }))
    ));
    // Through the limiter: each acquire returns exactly one interval after the previous.
    let mut last = l.clock().now();
    l.acquire(1).await.unwrap();
    for _ in 0..20 {
        l.acquire(1).await.unwrap();
        let now = l.clock().now();
        assert_eq!(now - last, 100_000_000);
        last = now;
    }
}

#[test]
fn limiter_metrics_count_admitted_and_refused() {
    let m = MemoryMetrics::new();
    let l = Limiter::with_clock(Gcra::new(Rate::per_second(10), 3), ManualClock::new())
        .with_metrics(m.clone());
    for _ in 0..5 {
        let _ = l.try_acquire(1);
    }
    assert_eq!(m.counter_value("weir_flow_limiter_admitted_total"), 3);
    assert_eq!(m.counter_value("weir_flow_limiter_refused_total"), 2);
}

/// Real time: 200/s for 500 ms, with a generous tolerance for a loaded machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_time_rate_is_close() {
    async fn run<A: Algorithm>(name: &str, alg: A) {
        let l = Limiter::new(alg);
        let start = Instant::now();
        let mut n = 0u32;
        while start.elapsed() < Duration::from_millis(500) {
            l.acquire(1).await.unwrap();
            n += 1;
        }
        // 1 burst + 100 in 500 ms; a loaded machine can only make it fewer.
        assert!((60..=115).contains(&n), "{name}: {n} in 500 ms at 200/s");
    }
    tokio::join!(
        run("gcra", Gcra::new(Rate::per_second(200), 1)),
        run("token", TokenBucket::new(Rate::per_second(200), 1)),
        run(
            "leaky",
            LeakyBucket::new(Rate::per_second(200), Duration::from_secs(1))
        ),
        run(
            "sliding counter",
            SlidingWindowCounter::new(20, Duration::from_millis(100))
        ),
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// (time, permits) of each grant.
    type Grants = Vec<(u64, u32)>;

    /// (advance in µs, permits asked)
    fn steps() -> impl Strategy<Value = Vec<(u64, u32)>> {
        prop::collection::vec((0u64..50_000, 1u32..=8), 1..400)
    }

    /// Runs the steps; returns (time, permits) of every grant.
    fn grants<A: Algorithm>(alg: A, steps: &[(u64, u32)]) -> Grants {
        let l = Limiter::with_clock(alg, ManualClock::new());
        let mut out = vec![];
        for &(dt, n) in steps {
            l.clock().advance(Duration::from_micros(dt));
            if l.try_acquire(n).is_ok() {
                out.push((l.clock().now(), n));
            }
        }
        out
    }

    /// Checks every span between two grants (prefix sums: O(n²)): permits granted from
    /// grant i to grant j must stay within `bound(span in ns)`.
    fn every_span(g: &Grants, bound: impl Fn(u64) -> u64) -> Result<(), String> {
        let mut cum = vec![0u64];
        for &(_, n) in g {
            cum.push(cum.last().unwrap() + u64::from(n));
        }
        for i in 0..g.len() {
            for j in i..g.len() {
                let (span, permits) = (g[j].0 - g[i].0, cum[j + 1] - cum[i]);
                if permits > bound(span) {
                    return Err(format!("{permits} permits in {span} ns"));
                }
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Bucket-like limiters: over any span, grants ≤ burst + rate × span.
        #[test]
        fn buckets_never_exceed_burst_plus_rate(steps in steps()) {
            // 100/s, burst 8: one permit per 10 ms.
            let bound = |span: u64| 8 + span / 10_000_000 + 1;
            let r = every_span(&grants(Gcra::new(Rate::per_second(100), 8), &steps), bound);
            prop_assert!(r.is_ok(), "gcra: {:?}", r);
            let r = every_span(&grants(TokenBucket::new(Rate::per_second(100), 8), &steps), bound);
            prop_assert!(r.is_ok(), "token bucket: {:?}", r);
            let leaky = LeakyBucket::new(Rate::per_second(100), Duration::from_millis(80));
            let r = every_span(&grants(leaky, &steps), bound);
            prop_assert!(r.is_ok(), "leaky bucket: {:?}", r);
        }

        /// Sliding windows: no window of the configured length holds more than the limit.
        #[test]
        fn sliding_windows_never_exceed_the_limit(steps in steps()) {
            let window = 200_000_000u64; // 200 ms
            let bound = |span: u64| if span < window { 20 } else { u64::MAX };
            for max_entries in [8, 1000] {
                let log = SlidingWindowLog::new(20, Duration::from_millis(200), max_entries);
                let r = every_span(&grants(log, &steps), bound);
                prop_assert!(r.is_ok(), "sliding log ({} entries): {:?}", max_entries, r);
            }
        }
    }
}

/// A quota learns of usage after the fact: `charge` records it beyond the limit and says how
/// long the user must stay away; over a long run that holds the user to the rate.
#[test]
fn gcra_charge_records_over_the_limit_and_returns_the_wait() {
    let l = Limiter::with_clock(
        Gcra::new(Rate::per_second(1_000_000), 100_000),
        ManualClock::new(),
    );
    // Within the burst: no wait.
    assert_eq!(l.charge(100_000), Duration::ZERO);
    // 400 KB more at once: 0.4 s of debt beyond the burst.
    assert_eq!(l.charge(400_000), Duration::from_millis(400));
    // A client that waits as told and sends 250 KB each time runs at 1 MB/s.
    let mut sent = 500_000u64;
    let mut elapsed = Duration::ZERO;
    let wait = Duration::from_millis(400);
    l.clock().advance(wait);
    elapsed += wait;
    while elapsed < Duration::from_secs(10) {
        let wait = l.charge(250_000);
        sent += 250_000;
        l.clock().advance(wait);
        elapsed += wait;
    }
    let rate = sent as f64 / elapsed.as_secs_f64();
    assert!((rate - 1_000_000.0).abs() / 1_000_000.0 < 0.05, "{rate}");
}
