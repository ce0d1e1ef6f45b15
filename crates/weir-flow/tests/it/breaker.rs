//! Table-driven tests of the circuit breaker's state machine, on a manual clock.

use std::time::Duration;

use weir_flow::breaker::{
    BreakerConfig, CallError, CircuitBreaker, Outcome, State, StateChange, Window,
};
use weir_flow::{ManualClock, MemoryMetrics};

#[derive(Debug, Clone, Copy)]
enum Step {
    /// n successful calls of 1 ms.
    Succeed(u32),
    /// n failed calls of 1 ms.
    Fail(u32),
    /// n successful calls of 2 s (slow: the tables use a 1 s slow-call duration).
    Slow(u32),
    /// The next call is refused.
    Refused,
    /// k probes can be held at once, and the next one is refused; then they are dropped
    /// without reporting.
    HoldProbes(u32),
    Advance(u64),
    Is(State),
    ForceOpen,
    Disable,
    Reset,
}
use Step::*;

fn config(window: Window, minimum_calls: u32) -> BreakerConfig {
    BreakerConfig {
        window,
        failure_rate: 0.5,
        slow_call_rate: 0.5,
        slow_call_duration: Duration::from_secs(1),
        minimum_calls,
        open_duration: Duration::from_secs(1),
        half_open_probes: 3,
    }
}

fn check(name: &str, cfg: BreakerConfig, steps: &[Step]) {
    let b = CircuitBreaker::with_clock(cfg, ManualClock::new());
    for (i, step) in steps.iter().enumerate() {
        let at = format!("{name}: step {i} ({step:?})");
        let call = |outcome, ms| {
            let p = b
                .try_acquire()
                .unwrap_or_else(|e| panic!("{at}: refused: {e}"));
            p.record(outcome, Duration::from_millis(ms));
        };
        match *step {
            Succeed(n) => (0..n).for_each(|_| call(Outcome::Success, 1)),
            Fail(n) => (0..n).for_each(|_| call(Outcome::Failure, 1)),
            Slow(n) => (0..n).for_each(|_| call(Outcome::Success, 2000)),
            Refused => assert!(b.try_acquire().is_err(), "{at}: not refused"),
            HoldProbes(k) => {
                let held: Vec<_> = (0..k)
                    .map(|_| b.try_acquire().unwrap_or_else(|e| panic!("{at}: {e}")))
                    .collect();
                assert!(b.try_acquire().is_err(), "{at}: more than {k} probes");
                drop(held);
            }
            Advance(ms) => b.clock().advance(Duration::from_millis(ms)),
            Is(s) => assert_eq!(b.state(), s, "{at}"),
            ForceOpen => b.force_open(),
            Disable => b.disable(),
            Reset => b.reset(),
        }
    }
}

#[test]
fn state_machine_table() {
    let count10 = || config(Window::Count(10), 5);
    let table: &[(&str, BreakerConfig, &[Step])] = &[
        (
            "failure rate opens after minimum calls",
            count10(),
            &[
                Fail(4),
                Is(State::Closed),
                Fail(1),
                Is(State::Open),
                Refused,
            ],
        ),
        (
            "below the failure rate stays closed",
            count10(),
            &[Succeed(6), Fail(4), Is(State::Closed)],
        ),
        (
            "minimum calls gate the decision",
            config(Window::Count(20), 10),
            &[Fail(9), Is(State::Closed), Fail(1), Is(State::Open)],
        ),
        (
            "count window forgets the oldest calls",
            config(Window::Count(4), 4),
            &[
                Succeed(3),
                Fail(1),
                Is(State::Closed),
                Succeed(4),
                Fail(1),
                Is(State::Closed),
                Fail(1),
                Is(State::Open),
            ],
        ),
        (
            "slow-call rate opens",
            config(Window::Count(10), 4),
            &[
                Succeed(2),
                Slow(1),
                Is(State::Closed),
                Slow(1),
                Is(State::Open),
            ],
        ),
        (
            "open waits the open duration, then probes close it",
            count10(),
            &[
                Fail(5),
                Is(State::Open),
                Advance(999),
                Refused,
                Is(State::Open),
                Advance(1),
                Is(State::HalfOpen),
                Succeed(2),
                Is(State::HalfOpen),
                Succeed(1),
                Is(State::Closed),
                // A fresh window: four failures are not enough again.
                Fail(4),
                Is(State::Closed),
            ],
        ),
        (
            "failing probes open it again",
            count10(),
            &[
                Fail(5),
                Advance(1000),
                Fail(2),
                Succeed(1),
                Is(State::Open),
                Refused,
                Advance(1000),
                Is(State::HalfOpen),
                Succeed(3),
                Is(State::Closed),
            ],
        ),
        (
            "slow probes open it again",
            count10(),
            &[Fail(5), Advance(1000), Slow(2), Succeed(1), Is(State::Open)],
        ),
        (
            "half-open lets exactly N probes through at once",
            count10(),
            &[
                Fail(5),
                Advance(1000),
                HoldProbes(3),
                // Dropped without a report: the slots come back.
                HoldProbes(3),
                Succeed(3),
                Is(State::Closed),
            ],
        ),
        (
            "time window forgets calls older than its size",
            config(
                Window::Time {
                    size: Duration::from_secs(10),
                    buckets: 10,
                },
                4,
            ),
            &[
                Fail(3),
                Advance(11_000),
                Fail(1),
                Is(State::Closed),
                Advance(500),
                Fail(2),
                Is(State::Closed),
                Fail(1),
                Is(State::Open),
            ],
        ),
        (
            "time window: successes dilute failures within the window",
            config(
                Window::Time {
                    size: Duration::from_secs(10),
                    buckets: 10,
                },
                4,
            ),
            &[
                Succeed(5),
                Advance(3000),
                Fail(4),
                Is(State::Closed),
                Fail(1),
                Is(State::Open),
            ],
        ),
        (
            "forced open refuses until reset",
            count10(),
            &[
                ForceOpen,
                Is(State::ForcedOpen),
                Refused,
                Advance(60_000),
                Refused,
                Reset,
                Is(State::Closed),
                Succeed(1),
            ],
        ),
        (
            "disabled lets everything through and records nothing",
            count10(),
            &[
                Disable,
                Fail(100),
                Is(State::Disabled),
                Reset,
                Fail(4),
                Is(State::Closed),
            ],
        ),
        (
            "forcing open from open and half-open",
            count10(),
            &[
                Fail(5),
                ForceOpen,
                Advance(5000),
                Is(State::ForcedOpen),
                Reset,
                Fail(5),
                Advance(1000),
                Is(State::HalfOpen),
                ForceOpen,
                Refused,
            ],
        ),
    ];
    for (name, cfg, steps) in table {
        check(name, cfg.clone(), steps);
    }
}

#[test]
fn results_from_before_a_transition_are_ignored() {
    let b = CircuitBreaker::with_clock(config(Window::Count(10), 5), ManualClock::new());
    let late = b.try_acquire().unwrap();
    for _ in 0..5 {
        b.try_acquire().unwrap().failure();
    }
    assert_eq!(b.state(), State::Open);
    b.clock().advance(Duration::from_secs(1));
    assert_eq!(b.state(), State::HalfOpen);
    // A call started while closed reports during half-open: it is not a probe.
    late.failure();
    for _ in 0..3 {
        b.try_acquire().unwrap().success();
    }
    assert_eq!(b.state(), State::Closed);
}

#[tokio::test]
async fn state_changes_are_published_and_counted() {
    let m = MemoryMetrics::new();
    let b = CircuitBreaker::with_clock(config(Window::Count(10), 5), ManualClock::new())
        .with_metrics(m.clone());
    let mut rx = b.subscribe();
    for _ in 0..5 {
        let r = b.call(async { Err::<(), _>("boom") }).await;
        assert!(matches!(r, Err(CallError::Failed("boom"))));
    }
    let r = b.call(async { Ok::<_, ()>(1) }).await;
    assert!(matches!(r, Err(CallError::Refused(_))));
    b.clock().advance(Duration::from_secs(1));
    for _ in 0..3 {
        assert_eq!(b.call(async { Ok::<_, ()>(7) }).await.unwrap(), 7);
    }
    let mut seen = vec![];
    while let Ok(c) = rx.try_recv() {
        seen.push(c);
    }
    assert_eq!(
        seen,
        vec![
            StateChange {
                from: State::Closed,
                to: State::Open
            },
            StateChange {
                from: State::Open,
                to: State::HalfOpen
            },
            StateChange {
                from: State::HalfOpen,
                to: State::Closed
            },
        ]
    );
    assert_eq!(m.counter_value("weir_flow_breaker_transitions_total"), 3);
    assert_eq!(m.counter_value("weir_flow_breaker_calls_total"), 8);
    assert_eq!(m.counter_value("weir_flow_breaker_failures_total"), 5);
    assert_eq!(m.counter_value("weir_flow_breaker_rejected_total"), 1);
    assert_eq!(m.gauge_value("weir_flow_breaker_state"), Some(0.0));
}

#[test]
fn real_clock_measures_slow_calls() {
    let b = CircuitBreaker::new(BreakerConfig {
        slow_call_duration: Duration::from_millis(20),
        slow_call_rate: 0.5,
        minimum_calls: 2,
        ..BreakerConfig::default()
    });
    for _ in 0..2 {
        let p = b.try_acquire().unwrap();
        std::thread::sleep(Duration::from_millis(25));
        p.success();
    }
    assert_eq!(b.state(), State::Open);
}
