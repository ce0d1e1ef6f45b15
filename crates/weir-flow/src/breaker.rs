//! Circuit breaker: stops calling a dependency that keeps failing or slowing down, and lets
//! a few probes through after a pause to see whether it recovered.
//!
//! States: `Closed` (calls pass, outcomes recorded in a sliding window) → `Open` when, with
//! at least `minimum_calls` in the window, the failure rate or the slow-call rate reaches
//! its threshold → after `open_duration`, `HalfOpen`: `half_open_probes` calls pass (a
//! semaphore hands out the probe permits), and when all have reported, the breaker closes
//! if their rates are under the thresholds and opens again otherwise. `ForcedOpen` refuses
//! everything and `Disabled` lets everything through without recording, until `reset`.
//!
//! The windows are either the last N calls ([`Window::Count`]) or the calls of the last
//! `size` of time in `buckets` buckets ([`Window::Time`]). Every transition is published on
//! a broadcast channel ([`CircuitBreaker::subscribe`]) and counted.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast};

use crate::clock::{Clock, MonotonicClock, Nanos, nanos};
use crate::metrics::Metrics;

/// Metric: calls let through (including probes).
pub const METRIC_CALLS: &str = "weir_flow_breaker_calls_total";
/// Metric: calls refused because the breaker was open.
pub const METRIC_REJECTED: &str = "weir_flow_breaker_rejected_total";
/// Metric: calls that reported a failure.
pub const METRIC_FAILURES: &str = "weir_flow_breaker_failures_total";
/// Metric: calls slower than the slow-call duration.
pub const METRIC_SLOW: &str = "weir_flow_breaker_slow_calls_total";
/// Metric: state transitions.
pub const METRIC_TRANSITIONS: &str = "weir_flow_breaker_transitions_total";
/// Metric (gauge): the state, as [`State::code`].
pub const METRIC_STATE: &str = "weir_flow_breaker_state";

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Calls pass and are recorded.
    Closed,
    /// Calls are refused until the open duration has passed.
    Open,
    /// A limited number of probe calls pass.
    HalfOpen,
    /// Forced open: calls are refused until [`CircuitBreaker::reset`].
    ForcedOpen,
    /// Disabled: calls pass and nothing is recorded until [`CircuitBreaker::reset`].
    Disabled,
}

impl State {
    /// A stable number for the state gauge: 0 closed, 1 open, 2 half-open, 3 forced open,
    /// 4 disabled.
    pub fn code(self) -> u8 {
        match self {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
            State::ForcedOpen => 3,
            State::Disabled => 4,
        }
    }
}

/// A transition, as published to subscribers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateChange {
    /// State before.
    pub from: State,
    /// State after.
    pub to: State,
}

/// The sliding window outcomes are counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// The last N calls.
    Count(u32),
    /// The calls of the last `size`, kept in `buckets` buckets (the window slides by
    /// `size / buckets`).
    Time {
        /// Window length.
        size: Duration,
        /// Buckets the window is cut into (at least 1).
        buckets: u32,
    },
}

/// Configuration of a [`CircuitBreaker`].
#[derive(Debug, Clone)]
pub struct BreakerConfig {
    /// Default: the last 100 calls.
    pub window: Window,
    /// Open when failures / calls reaches this (0..=1). Default 0.5.
    pub failure_rate: f64,
    /// Open when slow calls / calls reaches this (0..=1). Default 1.0 (every call slow).
    pub slow_call_rate: f64,
    /// A call taking at least this long is slow. Default 60 s.
    pub slow_call_duration: Duration,
    /// No decision before the window holds this many calls. Default 10.
    pub minimum_calls: u32,
    /// How long to stay open before probing. Default 30 s.
    pub open_duration: Duration,
    /// Probe calls let through when half-open. Default 3.
    pub half_open_probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            window: Window::Count(100),
            failure_rate: 0.5,
            slow_call_rate: 1.0,
            slow_call_duration: Duration::from_secs(60),
            minimum_calls: 10,
            open_duration: Duration::from_secs(30),
            half_open_probes: 3,
        }
    }
}

/// A call's result, as the breaker counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The call worked.
    Success,
    /// The call failed.
    Failure,
}

/// A call refused by the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker {state:?}: call refused")]
pub struct Refused {
    /// The state that refused.
    pub state: State,
    /// When open, how long until probing starts.
    pub retry_after: Option<Duration>,
}

/// What [`CircuitBreaker::call`] returns on error.
#[derive(Debug, thiserror::Error)]
pub enum CallError<E> {
    /// The breaker refused the call.
    #[error(transparent)]
    Refused(Refused),
    /// The call ran and failed.
    #[error("call failed: {0}")]
    Failed(E),
}

#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    calls: u32,
    failures: u32,
    slow: u32,
}

impl Tally {
    fn add(&mut self, failed: bool, slow: bool) {
        self.calls += 1;
        self.failures += u32::from(failed);
        self.slow += u32::from(slow);
    }
}

#[derive(Debug)]
enum Outcomes {
    /// Each entry: bit 0 failure, bit 1 slow.
    Count {
        ring: VecDeque<u8>,
        size: usize,
        tally: Tally,
    },
    Time {
        /// (bucket number, tally)
        buckets: Vec<(u64, Tally)>,
        bucket_len: Nanos,
    },
}

impl Outcomes {
    fn new(w: Window) -> Self {
        match w {
            Window::Count(n) => Outcomes::Count {
                ring: VecDeque::with_capacity(n as usize),
                size: n.max(1) as usize,
                tally: Tally::default(),
            },
            Window::Time { size, buckets } => {
                let buckets = buckets.max(1);
                Outcomes::Time {
                    buckets: vec![(u64::MAX, Tally::default()); buckets as usize],
                    bucket_len: (nanos(size) / u64::from(buckets)).max(1),
                }
            }
        }
    }

    fn record(&mut self, now: Nanos, failed: bool, slow: bool) {
        match self {
            Outcomes::Count { ring, size, tally } => {
                if let Some(old) = (ring.len() == *size).then(|| ring.pop_front()).flatten() {
                    tally.calls -= 1;
                    tally.failures -= u32::from(old & 1);
                    tally.slow -= u32::from(old >> 1);
                }
                ring.push_back(u8::from(failed) | (u8::from(slow) << 1));
                tally.add(failed, slow);
            }
            Outcomes::Time {
                buckets,
                bucket_len,
            } => {
                let n = now / *bucket_len;
                let len = buckets.len();
                let b = &mut buckets[(n % len as u64) as usize];
                if b.0 != n {
                    *b = (n, Tally::default());
                }
                b.1.add(failed, slow);
            }
        }
    }

    fn tally(&self, now: Nanos) -> Tally {
        match self {
            Outcomes::Count { tally, .. } => *tally,
            Outcomes::Time {
                buckets,
                bucket_len,
            } => {
                let n = now / *bucket_len;
                let oldest = n.saturating_sub(buckets.len() as u64 - 1);
                let mut t = Tally::default();
                for (k, b) in buckets {
                    if *k != u64::MAX && *k >= oldest && *k <= n {
                        t.calls += b.calls;
                        t.failures += b.failures;
                        t.slow += b.slow;
                    }
                }
                t
            }
        }
    }
}

#[derive(Debug)]
struct Inner {
    state: State,
    /// Bumped on every transition; a permit from an older generation reports nothing.
    generation: u64,
    outcomes: Outcomes,
    opened_at: Nanos,
    probes: Arc<Semaphore>,
    probe_tally: Tally,
}

/// A circuit breaker. Share it behind an `Arc`.
pub struct CircuitBreaker<C: Clock = MonotonicClock> {
    cfg: BreakerConfig,
    clock: C,
    inner: Mutex<Inner>,
    events: broadcast::Sender<StateChange>,
    metrics: Option<Metrics>,
}

impl<C: Clock> fmt::Debug for CircuitBreaker<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("state", &self.inner.lock().state)
            .field("config", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// Permission to make one call; report its outcome with [`CallPermit::success`],
/// [`CallPermit::failure`] or [`CallPermit::record`]. Dropped without a report, the call is
/// not counted (and a half-open probe slot is handed back).
#[derive(Debug)]
#[must_use = "report the call's outcome"]
pub struct CallPermit<'a, C: Clock> {
    breaker: &'a CircuitBreaker<C>,
    generation: u64,
    started: Nanos,
    probe: Option<OwnedSemaphorePermit>,
}

impl<C: Clock> CallPermit<'_, C> {
    /// The call succeeded; its duration is measured on the breaker's clock.
    pub fn success(self) {
        let d = self.elapsed();
        self.record(Outcome::Success, d);
    }

    /// The call failed; its duration is measured on the breaker's clock.
    pub fn failure(self) {
        let d = self.elapsed();
        self.record(Outcome::Failure, d);
    }

    /// Reports an outcome with an explicit duration.
    pub fn record(mut self, outcome: Outcome, duration: Duration) {
        if let Some(p) = self.probe.take() {
            // A probe that reported is used up: half-open admits exactly N probes.
            p.forget();
        }
        self.breaker.on_result(self.generation, outcome, duration);
    }

    fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.breaker.clock.now().saturating_sub(self.started))
    }
}

impl CircuitBreaker<MonotonicClock> {
    /// A breaker on the real clock.
    pub fn new(cfg: BreakerConfig) -> Self {
        Self::with_clock(cfg, MonotonicClock::new())
    }
}

impl<C: Clock> CircuitBreaker<C> {
    /// A breaker on `clock`.
    pub fn with_clock(cfg: BreakerConfig, clock: C) -> Self {
        let (events, _) = broadcast::channel(64);
        Self {
            inner: Mutex::new(Inner {
                state: State::Closed,
                generation: 0,
                outcomes: Outcomes::new(cfg.window),
                opened_at: 0,
                probes: Arc::new(Semaphore::new(0)),
                probe_tally: Tally::default(),
            }),
            cfg,
            clock,
            events,
            metrics: None,
        }
    }

    /// Reports calls, refusals and transitions to `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        metrics.gauge(METRIC_STATE, 0.0);
        self.metrics = Some(metrics);
        self
    }

    /// Receives every state change from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<StateChange> {
        self.events.subscribe()
    }

    /// The state now (an open breaker whose pause is over reads as `HalfOpen`).
    pub fn state(&self) -> State {
        let mut g = self.inner.lock();
        self.maybe_half_open(&mut g, self.clock.now());
        g.state
    }

    /// The clock.
    pub fn clock(&self) -> &C {
        &self.clock
    }

    /// Asks to make a call.
    pub fn try_acquire(&self) -> Result<CallPermit<'_, C>, Refused> {
        let now = self.clock.now();
        let mut g = self.inner.lock();
        self.maybe_half_open(&mut g, now);
        let probe = match g.state {
            State::Closed | State::Disabled => None,
            State::HalfOpen => match Arc::clone(&g.probes).try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => return Err(self.refuse(State::HalfOpen, None)),
            },
            State::Open => {
                let left = (g.opened_at + nanos(self.cfg.open_duration)).saturating_sub(now);
                return Err(self.refuse(State::Open, Some(Duration::from_nanos(left))));
            }
            State::ForcedOpen => return Err(self.refuse(State::ForcedOpen, None)),
        };
        self.count(METRIC_CALLS, 1);
        Ok(CallPermit {
            breaker: self,
            generation: g.generation,
            started: now,
            probe,
        })
    }

    /// Runs `f` under the breaker: every `Err` counts as a failure.
    pub async fn call<T, E, F>(&self, f: F) -> Result<T, CallError<E>>
    where
        F: Future<Output = Result<T, E>>,
    {
        let permit = self.try_acquire().map_err(CallError::Refused)?;
        match f.await {
            Ok(v) => {
                permit.success();
                Ok(v)
            }
            Err(e) => {
                permit.failure();
                Err(CallError::Failed(e))
            }
        }
    }

    /// Refuses every call until [`CircuitBreaker::reset`].
    pub fn force_open(&self) {
        let mut g = self.inner.lock();
        self.transition(&mut g, State::ForcedOpen, self.clock.now());
    }

    /// Lets every call through, recording nothing, until [`CircuitBreaker::reset`].
    pub fn disable(&self) {
        let mut g = self.inner.lock();
        self.transition(&mut g, State::Disabled, self.clock.now());
    }

    /// Back to `Closed` with an empty window.
    pub fn reset(&self) {
        let mut g = self.inner.lock();
        self.transition(&mut g, State::Closed, self.clock.now());
    }

    fn refuse(&self, state: State, retry_after: Option<Duration>) -> Refused {
        self.count(METRIC_REJECTED, 1);
        Refused { state, retry_after }
    }

    fn maybe_half_open(&self, g: &mut Inner, now: Nanos) {
        if g.state == State::Open && now >= g.opened_at + nanos(self.cfg.open_duration) {
            self.transition(g, State::HalfOpen, now);
        }
    }

    fn exceeds(&self, t: Tally) -> bool {
        let calls = f64::from(t.calls.max(1));
        f64::from(t.failures) / calls >= self.cfg.failure_rate
            || f64::from(t.slow) / calls >= self.cfg.slow_call_rate
    }

    fn on_result(&self, generation: u64, outcome: Outcome, duration: Duration) {
        let now = self.clock.now();
        let failed = outcome == Outcome::Failure;
        let slow = duration >= self.cfg.slow_call_duration;
        if failed {
            self.count(METRIC_FAILURES, 1);
        }
        if slow {
            self.count(METRIC_SLOW, 1);
        }
        let mut g = self.inner.lock();
        if g.generation != generation {
            return; // started before the last transition: it says nothing about now
        }
        match g.state {
            State::Closed => {
                g.outcomes.record(now, failed, slow);
                let t = g.outcomes.tally(now);
                if t.calls >= self.cfg.minimum_calls && self.exceeds(t) {
                    self.transition(&mut g, State::Open, now);
                }
            }
            State::HalfOpen => {
                g.probe_tally.add(failed, slow);
                let t = g.probe_tally;
                if t.calls >= self.cfg.half_open_probes {
                    let to = if self.exceeds(t) {
                        State::Open
                    } else {
                        State::Closed
                    };
                    self.transition(&mut g, to, now);
                }
            }
            State::Open | State::ForcedOpen | State::Disabled => {}
        }
    }

    fn transition(&self, g: &mut Inner, to: State, now: Nanos) {
        let from = g.state;
        g.state = to;
        g.generation += 1;
        match to {
            State::Closed => g.outcomes = Outcomes::new(self.cfg.window),
            State::Open => g.opened_at = now,
            State::HalfOpen => {
                g.probes = Arc::new(Semaphore::new(self.cfg.half_open_probes.max(1) as usize));
                g.probe_tally = Tally::default();
            }
            State::ForcedOpen | State::Disabled => {}
        }
        if from != to {
            tracing::debug!(?from, ?to, "circuit breaker transition");
            // No subscriber is fine.
            let _ = self.events.send(StateChange { from, to });
            if let Some(m) = &self.metrics {
                m.counter(METRIC_TRANSITIONS, 1);
                m.gauge(METRIC_STATE, f64::from(to.code()));
            }
        }
    }

    fn count(&self, name: &'static str, v: u64) {
        if let Some(m) = &self.metrics {
            m.counter(name, v);
        }
    }
}
