//! Adaptive concurrency limiting: the limit on requests in flight follows the latency the
//! caller observes, rising while latency stays flat and falling when it climbs (a queue
//! is forming somewhere downstream) or requests are dropped.
//!
//! The algorithms are [`Aimd`], [`Gradient2`] and [`Vegas`], after the ideas of Netflix's
//! concurrency-limits library (re-derived here, not ported). They run over a
//! [`ResizableSemaphore`], a `tokio::sync::Semaphore` that can also shrink while every
//! permit is out: the shortfall becomes a debt, and released permits pay it off before any
//! new permit appears. No crate we found offers adaptive limits for tokio with an
//! injectable clock, so this is written here.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::clock::{Clock, MonotonicClock, Nanos};
use crate::metrics::Metrics;

/// Metric (gauge): the current limit.
pub const METRIC_LIMIT: &str = "weir_flow_adaptive_limit";
/// Metric (gauge): requests in flight.
pub const METRIC_IN_FLIGHT: &str = "weir_flow_adaptive_in_flight";
/// Metric: acquisitions refused by `try_acquire`.
pub const METRIC_REJECTED: &str = "weir_flow_adaptive_rejected_total";

// ---------------------------------------------------------------------------------------
// Resizable semaphore

#[derive(Debug)]
struct Size {
    limit: usize,
    /// Permits to swallow on release before any comes back.
    debt: usize,
}

/// A semaphore whose size can change at any time. Growing adds permits (after paying any
/// debt); shrinking removes idle permits and records the rest as debt, paid by permits as
/// they are released, so the permits out never exceed the limit for longer than it takes
/// the excess holders to finish.
#[derive(Debug, Clone)]
pub struct ResizableSemaphore {
    sem: Arc<Semaphore>,
    size: Arc<Mutex<Size>>,
}

/// A permit of a [`ResizableSemaphore`]; released (or used to pay the debt) on drop.
#[derive(Debug)]
pub struct ResizablePermit {
    permit: Option<OwnedSemaphorePermit>,
    size: Arc<Mutex<Size>>,
}

impl Drop for ResizablePermit {
    fn drop(&mut self) {
        let Some(p) = self.permit.take() else { return };
        let mut s = self.size.lock();
        if s.debt > 0 {
            s.debt -= 1;
            p.forget();
        } else {
            drop(s);
            drop(p);
        }
    }
}

impl ResizableSemaphore {
    /// A semaphore of `limit` permits.
    pub fn new(limit: usize) -> Self {
        Self {
            sem: Arc::new(Semaphore::new(limit)),
            size: Arc::new(Mutex::new(Size { limit, debt: 0 })),
        }
    }

    /// The current size.
    pub fn limit(&self) -> usize {
        self.size.lock().limit
    }

    /// Permits owed: held now beyond the current size.
    pub fn debt(&self) -> usize {
        self.size.lock().debt
    }

    /// Permits available now.
    pub fn available(&self) -> usize {
        self.sem.available_permits()
    }

    /// Changes the size.
    pub fn resize(&self, limit: usize) {
        let mut s = self.size.lock();
        if limit > s.limit {
            let grow = limit - s.limit;
            let pay = grow.min(s.debt);
            s.debt -= pay;
            self.sem.add_permits(grow - pay);
        } else {
            let shrink = s.limit - limit;
            let taken = self.sem.forget_permits(shrink);
            s.debt += shrink - taken;
        }
        s.limit = limit;
    }

    /// Waits for a permit.
    pub async fn acquire(&self) -> ResizablePermit {
        let p = Arc::clone(&self.sem)
            .acquire_owned()
            .await
            .unwrap_or_else(|_| unreachable!("the semaphore is never closed"));
        self.wrap(p)
    }

    /// A permit if one is free now.
    pub fn try_acquire(&self) -> Option<ResizablePermit> {
        Arc::clone(&self.sem)
            .try_acquire_owned()
            .ok()
            .map(|p| self.wrap(p))
    }

    fn wrap(&self, p: OwnedSemaphorePermit) -> ResizablePermit {
        ResizablePermit {
            permit: Some(p),
            size: Arc::clone(&self.size),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Algorithms

/// One finished request, as a limit algorithm sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Round-trip time.
    pub rtt: Duration,
    /// Requests in flight when this one started (itself included).
    pub in_flight: usize,
    /// The request was dropped, rejected or timed out downstream (an overload signal).
    pub dropped: bool,
}

/// A limit algorithm: turns samples into a new limit.
pub trait LimitAlgorithm: Send + fmt::Debug {
    /// Folds one sample in; returns the new limit.
    fn update(&mut self, sample: Sample) -> usize;
    /// The current limit.
    fn limit(&self) -> usize;
}

fn clamp(v: f64, min: usize, max: usize) -> f64 {
    v.clamp(min as f64, max as f64)
}

/// Additive increase, multiplicative decrease, in the manner of TCP congestion avoidance:
/// each success within `rtt_threshold` adds `1 / limit` (one per window of requests, and
/// only while the limit is in use); a drop or a slower sample multiplies the limit by
/// `backoff`, at most once per window (the requests of a window share one congestion
/// event).
#[derive(Debug, Clone)]
pub struct Aimd {
    limit: f64,
    min: usize,
    max: usize,
    backoff: f64,
    rtt_threshold: Duration,
    /// Samples to ignore overload signals for, after a decrease.
    quiet: usize,
}

impl Aimd {
    /// Starts at `initial`, stays within `[min, max]`; backoff 0.9, RTT threshold 5 s.
    pub fn new(initial: usize, min: usize, max: usize) -> Self {
        Self {
            limit: initial as f64,
            min: min.max(1),
            max,
            backoff: 0.9,
            rtt_threshold: Duration::from_secs(5),
            quiet: 0,
        }
    }

    /// A sample slower than this counts as a drop.
    pub fn rtt_threshold(mut self, d: Duration) -> Self {
        self.rtt_threshold = d;
        self
    }

    /// The multiplier on overload (0..1).
    pub fn backoff(mut self, b: f64) -> Self {
        self.backoff = b;
        self
    }
}

impl LimitAlgorithm for Aimd {
    fn update(&mut self, s: Sample) -> usize {
        let overload = s.dropped || s.rtt > self.rtt_threshold;
        if overload && self.quiet == 0 {
            self.limit = clamp(self.limit * self.backoff, self.min, self.max);
            self.quiet = self.limit as usize;
        } else {
            self.quiet = self.quiet.saturating_sub(1);
            if !overload && s.in_flight * 2 >= self.limit as usize {
                // Only grow a limit that is being used.
                self.limit = clamp(self.limit + 1.0 / self.limit, self.min, self.max);
            }
        }
        self.limit()
    }

    fn limit(&self) -> usize {
        self.limit as usize
    }
}

/// Vegas: estimates the queue downstream as `limit × (1 − rtt_min / rtt)` and keeps it
/// between α = 3·log10(limit) and β = 6·log10(limit): grows when the queue is shorter,
/// shrinks when longer, by one step per window of `limit` requests. `rtt_min` is the
/// smallest RTT seen (no probing to reset it).
#[derive(Debug, Clone)]
pub struct Vegas {
    limit: f64,
    min: usize,
    max: usize,
    rtt_min: Option<Duration>,
    smoothing: f64,
}

impl Vegas {
    /// Starts at `initial`, stays within `[min, max]`.
    pub fn new(initial: usize, min: usize, max: usize) -> Self {
        Self {
            limit: initial as f64,
            min: min.max(1),
            max,
            rtt_min: None,
            smoothing: 1.0,
        }
    }
}

impl LimitAlgorithm for Vegas {
    fn update(&mut self, s: Sample) -> usize {
        let rtt_min = match self.rtt_min {
            Some(m) if m <= s.rtt => m,
            _ => {
                self.rtt_min = Some(s.rtt);
                return self.limit();
            }
        };
        let log = self.limit.log10().max(1.0);
        let new = if s.dropped {
            self.limit - log
        } else if (s.in_flight as f64) * 2.0 < self.limit {
            return self.limit(); // not using the limit: learn nothing
        } else {
            let queue = (self.limit * (1.0 - rtt_min.as_secs_f64() / s.rtt.as_secs_f64())).ceil();
            let (alpha, beta) = (3.0 * log, 6.0 * log);
            // The steps are per window of `limit` requests, as TCP Vegas adjusts once per
            // round trip; each sample takes its share.
            let per = 1.0 / self.limit.max(1.0);
            if queue <= log {
                self.limit + beta * per
            } else if queue < alpha {
                self.limit + log * per
            } else if queue > beta {
                self.limit - log * per
            } else {
                self.limit
            }
        };
        let new = clamp(new, self.min, self.max);
        self.limit = self.limit * (1.0 - self.smoothing) + new * self.smoothing;
        self.limit()
    }

    fn limit(&self) -> usize {
        self.limit as usize
    }
}

/// Gradient2: compares a slow moving average of the RTT (long, over `long_window`
/// samples) with the latest sample (short): `gradient = clamp(tolerance × long / short,
/// 0.5, 1)`, and the new limit is `limit × gradient + √limit` (room for a small queue),
/// smoothed (once per window of `limit` samples). Flat latency lets the limit climb; latency rising faster than the average
/// pulls it down, and a drop halves the gradient.
///
/// A pure moving average follows a steady overload up (it averages the overloaded
/// latencies), so the limit would creep up forever under constant saturation. Here the
/// average is anchored: it may not exceed `max_drift × the smallest RTT seen` (default 2),
/// which still lets it follow a service that became up to that much slower for good. When
/// latency falls well below the average (recovery), the average is pulled down faster.
#[derive(Debug, Clone)]
pub struct Gradient2 {
    limit: f64,
    min: usize,
    max: usize,
    long_rtt: Option<f64>,
    rtt_min: f64,
    long_window: f64,
    tolerance: f64,
    smoothing: f64,
    max_drift: f64,
}

impl Gradient2 {
    /// Starts at `initial`, stays within `[min, max]`; tolerance 1.5, long window 600
    /// samples, smoothing 0.2, maximum drift 2.
    pub fn new(initial: usize, min: usize, max: usize) -> Self {
        Self {
            limit: initial as f64,
            min: min.max(1),
            max,
            long_rtt: None,
            rtt_min: f64::MAX,
            long_window: 600.0,
            tolerance: 1.5,
            smoothing: 0.2,
            max_drift: 2.0,
        }
    }

    /// Samples in the long average's window.
    pub fn long_window(mut self, samples: usize) -> Self {
        self.long_window = samples.max(1) as f64;
        self
    }

    /// How far above the smallest RTT seen the long average may drift.
    pub fn max_drift(mut self, factor: f64) -> Self {
        self.max_drift = factor.max(1.0);
        self
    }
}

impl LimitAlgorithm for Gradient2 {
    fn update(&mut self, s: Sample) -> usize {
        let short = s.rtt.as_secs_f64().max(1e-9);
        self.rtt_min = self.rtt_min.min(short);
        let mut long = match self.long_rtt {
            None => short,
            Some(l) => l + (short - l) / self.long_window,
        };
        if long / short > 2.0 {
            long *= 0.95;
        }
        let long = long.min(self.max_drift * self.rtt_min);
        self.long_rtt = Some(long);
        if (s.in_flight as f64) * 2.0 < self.limit && !s.dropped {
            return self.limit(); // not using the limit: learn nothing
        }
        let gradient = if s.dropped {
            0.5
        } else {
            (self.tolerance * long / short).clamp(0.5, 1.0)
        };
        let new = self.limit * gradient + self.limit.sqrt();
        // Smoothing applies once per window of `limit` samples (each sample its share), so
        // a large limit does not move faster than a small one.
        let smoothing = self.smoothing / self.limit.max(1.0);
        let new = self.limit * (1.0 - smoothing) + new * smoothing;
        self.limit = clamp(new, self.min, self.max);
        self.limit()
    }

    fn limit(&self) -> usize {
        self.limit as usize
    }
}

// ---------------------------------------------------------------------------------------
// The limiter

/// Limits requests in flight to what a [`LimitAlgorithm`] allows.
pub struct AdaptiveLimiter<C: Clock = MonotonicClock> {
    sem: ResizableSemaphore,
    alg: Mutex<Box<dyn LimitAlgorithm>>,
    in_flight: AtomicUsize,
    clock: C,
    metrics: Option<Metrics>,
}

impl<C: Clock> fmt::Debug for AdaptiveLimiter<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveLimiter")
            .field("limit", &self.limit())
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

/// A request in flight: report how it went with [`Token::success`], [`Token::dropped`] or
/// [`Token::record`]; dropped without a report, it frees its slot and teaches nothing.
#[derive(Debug)]
pub struct Token<'a, C: Clock> {
    limiter: &'a AdaptiveLimiter<C>,
    _permit: ResizablePermit,
    started: Nanos,
    in_flight: usize,
}

impl<C: Clock> Token<'_, C> {
    /// The request succeeded; its RTT is measured on the limiter's clock.
    pub fn success(self) {
        let rtt = self.elapsed();
        self.record(rtt, false);
    }

    /// The request was dropped or timed out downstream.
    pub fn dropped(self) {
        let rtt = self.elapsed();
        self.record(rtt, true);
    }

    /// Reports an explicit RTT.
    pub fn record(self, rtt: Duration, dropped: bool) {
        let sample = Sample {
            rtt,
            in_flight: self.in_flight,
            dropped,
        };
        let new = self.limiter.alg.lock().update(sample);
        if new != self.limiter.sem.limit() {
            self.limiter.sem.resize(new);
            if let Some(m) = &self.limiter.metrics {
                m.gauge(METRIC_LIMIT, new as f64);
            }
        }
    }

    fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.limiter.clock.now().saturating_sub(self.started))
    }
}

impl<C: Clock> Drop for Token<'_, C> {
    fn drop(&mut self) {
        self.limiter.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl AdaptiveLimiter<MonotonicClock> {
    /// A limiter on the real clock.
    pub fn new(alg: impl LimitAlgorithm + 'static) -> Self {
        Self::with_clock(alg, MonotonicClock::new())
    }
}

impl<C: Clock> AdaptiveLimiter<C> {
    /// A limiter on `clock`, starting at the algorithm's current limit.
    pub fn with_clock(alg: impl LimitAlgorithm + 'static, clock: C) -> Self {
        Self {
            sem: ResizableSemaphore::new(alg.limit()),
            alg: Mutex::new(Box::new(alg)),
            in_flight: AtomicUsize::new(0),
            clock,
            metrics: None,
        }
    }

    /// Reports the limit, requests in flight and refusals to `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        metrics.gauge(METRIC_LIMIT, self.limit() as f64);
        self.metrics = Some(metrics);
        self
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        self.sem.limit()
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Permits owed after a shrink (requests in flight above the limit).
    pub fn debt(&self) -> usize {
        self.sem.debt()
    }

    /// The clock.
    pub fn clock(&self) -> &C {
        &self.clock
    }

    /// Waits for a slot.
    pub async fn acquire(&self) -> Token<'_, C> {
        let p = self.sem.acquire().await;
        self.token(p)
    }

    /// A slot if one is free now.
    pub fn try_acquire(&self) -> Option<Token<'_, C>> {
        match self.sem.try_acquire() {
            Some(p) => Some(self.token(p)),
            None => {
                if let Some(m) = &self.metrics {
                    m.counter(METRIC_REJECTED, 1);
                }
                None
            }
        }
    }

    fn token(&self, permit: ResizablePermit) -> Token<'_, C> {
        let in_flight = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some(m) = &self.metrics {
            m.gauge(METRIC_IN_FLIGHT, in_flight as f64);
        }
        Token {
            limiter: self,
            _permit: permit,
            started: self.clock.now(),
            in_flight,
        }
    }
}
