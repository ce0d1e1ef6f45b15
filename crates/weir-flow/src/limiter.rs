//! Local rate limiters: the [`RateLimiter`] trait, the [`Limiter`] that runs any
//! [`Algorithm`] on a [`Clock`], and the algorithms: [`TokenBucket`], [`LeakyBucket`],
//! [`Gcra`], [`FixedWindow`], [`SlidingWindowCounter`], [`SlidingWindowLog`] and
//! [`WarmUpBucket`].
//!
//! An algorithm holds the configuration and knows how to check one state; the state is a
//! separate type so that [`crate::keyed::KeyedLimiter`] keeps one small state per key and
//! shares the configuration and the clock.
//!
//! `governor` implements GCRA well, but only GCRA, on its own clock and state-store traits;
//! the other algorithms, the shared keyed store with a hard key cap and the leaky-bucket
//! pacer are not in any crate we found, so they are written here, on one clock.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use crate::clock::{Clock, MonotonicClock, Nanos, nanos};
use crate::metrics::Metrics;

/// Metric: permits admitted by a limiter.
pub const METRIC_ADMITTED: &str = "weir_flow_limiter_admitted_total";
/// Metric: checks refused by a limiter.
pub const METRIC_REFUSED: &str = "weir_flow_limiter_refused_total";

/// A refused check: the permits cannot be had before `wait` has passed. `wait` is
/// `Duration::MAX` when they can never be had (more permits than the limiter's capacity).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("rate limited: retry in {wait:?}")]
pub struct NotUntil {
    /// How long until the same request could succeed (if nothing else takes permits first).
    pub wait: Duration,
}

impl NotUntil {
    pub(crate) fn nanos(wait: Nanos) -> Self {
        Self {
            wait: Duration::from_nanos(wait.max(1)),
        }
    }

    pub(crate) const NEVER: Self = Self {
        wait: Duration::MAX,
    };
}

/// Why [`RateLimiter::acquire`] gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AcquireError {
    /// More permits were asked for at once than the limiter ever holds.
    #[error("{requested} permits exceed the limiter's capacity of {capacity}")]
    ExceedsCapacity {
        /// Permits asked for.
        requested: u32,
        /// The most permits one call can get.
        capacity: u32,
    },
    /// A pacing limiter's queue is full: the slot would start later than its maximum wait.
    #[error("pacing queue full: the slot would start in {wait:?}")]
    QueueFull {
        /// When the slot would have started.
        wait: Duration,
    },
}

/// A rate limiter.
pub trait RateLimiter: Send + Sync {
    /// Takes `n` permits now, or says how long until they could be had.
    fn try_acquire(&self, n: u32) -> Result<(), NotUntil>;

    /// Waits until `n` permits are taken.
    fn acquire(&self, n: u32) -> impl Future<Output = Result<(), AcquireError>> + Send;

    /// How long until `n` permits could be taken (zero: now), without taking them.
    fn time_until_ready(&self, n: u32) -> Duration;
}

/// A rate-limiting algorithm: configuration plus the rules for one state.
pub trait Algorithm: Send + Sync + 'static {
    /// Per-limiter (or per-key) state.
    type State: Send + Sync;

    /// A fresh state at time `now`.
    fn new_state(&self, now: Nanos) -> Self::State;

    /// Takes `n` permits at `now` or refuses.
    fn check(&self, state: &Self::State, now: Nanos, n: u32) -> Result<(), NotUntil>;

    /// Nanoseconds until `n` permits could be taken; does not take them.
    fn wait_nanos(&self, state: &Self::State, now: Nanos, n: u32) -> Option<Nanos>;

    /// The most permits one call can take.
    fn capacity(&self) -> u32;

    /// Pacing algorithms reserve a future slot: `Some(Ok(wait))` means the permits are
    /// taken and the caller must wait `wait` before using them. Others return `None` and
    /// are retried after each refusal's wait.
    fn reserve(
        &self,
        state: &Self::State,
        now: Nanos,
        n: u32,
    ) -> Option<Result<Nanos, AcquireError>> {
        let _ = (state, now, n);
        None
    }
}

/// How many permits per how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Permits per `per`. Must be at least 1.
    pub permits: u64,
    /// The period. Must be at least 1 ns.
    pub per: Duration,
}

impl Rate {
    /// `permits` per second.
    pub fn per_second(permits: u64) -> Self {
        Self {
            permits,
            per: Duration::from_secs(1),
        }
    }

    /// `permits` per `per`.
    pub fn new(permits: u64, per: Duration) -> Self {
        assert!(permits > 0, "a rate needs at least one permit");
        assert!(!per.is_zero(), "a rate needs a non-zero period");
        Self { permits, per }
    }

    /// Nanoseconds that `n` permits are worth (rounded up), without cumulative rounding.
    fn nanos_for(&self, n: u64) -> Nanos {
        let v = (u128::from(n) * self.per.as_nanos()).div_ceil(u128::from(self.permits));
        u64::try_from(v).unwrap_or(u64::MAX)
    }
}

/// Runs an [`Algorithm`] on a [`Clock`]: the [`RateLimiter`] for one client.
#[derive(Debug)]
pub struct Limiter<A: Algorithm, C: Clock = MonotonicClock> {
    alg: A,
    state: A::State,
    clock: C,
    metrics: Option<Metrics>,
}

impl<A: Algorithm> Limiter<A, MonotonicClock> {
    /// A limiter on the real clock.
    pub fn new(alg: A) -> Self {
        Self::with_clock(alg, MonotonicClock::new())
    }
}

impl<A: Algorithm, C: Clock> Limiter<A, C> {
    /// A limiter on `clock`.
    pub fn with_clock(alg: A, clock: C) -> Self {
        let state = alg.new_state(clock.now());
        Self {
            alg,
            state,
            clock,
            metrics: None,
        }
    }

    /// Reports admitted permits and refusals to `metrics`
    /// (`weir_flow_limiter_admitted_total`, `weir_flow_limiter_refused_total`).
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The algorithm and its configuration.
    pub fn algorithm(&self) -> &A {
        &self.alg
    }

    /// The clock.
    pub fn clock(&self) -> &C {
        &self.clock
    }

    fn record(&self, r: &Result<(), NotUntil>, n: u32) {
        if let Some(m) = &self.metrics {
            match r {
                Ok(()) => m.counter(METRIC_ADMITTED, u64::from(n)),
                Err(_) => m.counter(METRIC_REFUSED, 1),
            }
        }
    }
}

impl<A: Algorithm, C: Clock> RateLimiter for Limiter<A, C> {
    #[inline]
    fn try_acquire(&self, n: u32) -> Result<(), NotUntil> {
        let r = self.alg.check(&self.state, self.clock.now(), n);
        self.record(&r, n);
        r
    }

    async fn acquire(&self, n: u32) -> Result<(), AcquireError> {
        let capacity = self.alg.capacity();
        if n > capacity {
            return Err(AcquireError::ExceedsCapacity {
                requested: n,
                capacity,
            });
        }
        if let Some(r) = self.alg.reserve(&self.state, self.clock.now(), n) {
            let wait = r?;
            if let Some(m) = &self.metrics {
                m.counter(METRIC_ADMITTED, u64::from(n));
            }
            if wait > 0 {
                self.clock.sleep(Duration::from_nanos(wait)).await;
            }
            return Ok(());
        }
        loop {
            match self.try_acquire(n) {
                Ok(()) => return Ok(()),
                Err(e) => self.clock.sleep(e.wait).await,
            }
        }
    }

    fn time_until_ready(&self, n: u32) -> Duration {
        match self.alg.wait_nanos(&self.state, self.clock.now(), n) {
            Some(w) => Duration::from_nanos(w),
            None => Duration::MAX,
        }
    }
}

// ---------------------------------------------------------------------------------------
// GCRA

/// Generic cell rate algorithm: one atomic "theoretical arrival time" per state, lock-free.
/// Admits `rate` on average and up to `burst` permits at once.
#[derive(Debug, Clone)]
pub struct Gcra {
    rate: Rate,
    burst: u32,
    /// The emission interval of one permit, precomputed: the common `n = 1` check then
    /// needs no 128-bit division.
    one: Nanos,
    /// How far ahead of now the arrival time may run: `burst` emission intervals.
    tolerance: Nanos,
}

impl Gcra {
    /// `rate` with bursts of up to `burst` permits (at least 1).
    pub fn new(rate: Rate, burst: u32) -> Self {
        let burst = burst.max(1);
        Self {
            rate,
            burst,
            one: rate.nanos_for(1),
            tolerance: rate.nanos_for(u64::from(burst)),
        }
    }

    #[inline]
    fn next_tat(&self, tat: Nanos, now: Nanos, n: u32) -> Result<Nanos, NotUntil> {
        if n > self.burst {
            return Err(NotUntil::NEVER);
        }
        let inc = if n == 1 {
            self.one
        } else {
            self.rate.nanos_for(u64::from(n))
        };
        let new_tat = tat.max(now) + inc;
        let limit = now.saturating_add(self.tolerance);
        if new_tat > limit {
            Err(NotUntil::nanos(new_tat - limit))
        } else {
            Ok(new_tat)
        }
    }
}

impl Gcra {
    /// Records `n` permits as used whatever the limit (a quota learns of usage after the
    /// fact: the bytes already arrived), and returns how long the user must now stay away
    /// to be back within the rate and burst: zero when still within them.
    pub fn charge(&self, state: &AtomicU64, now: Nanos, n: u64) -> Nanos {
        let inc = if n == 1 {
            self.one
        } else {
            self.rate.nanos_for(n)
        };
        let mut tat = state.load(Ordering::Acquire);
        loop {
            let new_tat = tat.max(now).saturating_add(inc);
            match state.compare_exchange_weak(tat, new_tat, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return new_tat.saturating_sub(now.saturating_add(self.tolerance)),
                Err(actual) => tat = actual,
            }
        }
    }
}

impl<C: Clock> Limiter<Gcra, C> {
    /// [`Gcra::charge`] on this limiter's state and clock: records `n` permits as used and
    /// returns how long the user should wait before the next use (zero: no wait).
    pub fn charge(&self, n: u64) -> Duration {
        Duration::from_nanos(self.alg.charge(&self.state, self.clock.now(), n))
    }
}

impl Algorithm for Gcra {
    type State = AtomicU64;

    fn new_state(&self, _now: Nanos) -> AtomicU64 {
        AtomicU64::new(0)
    }

    #[inline]
    fn check(&self, state: &AtomicU64, now: Nanos, n: u32) -> Result<(), NotUntil> {
        let mut tat = state.load(Ordering::Acquire);
        loop {
            let new_tat = self.next_tat(tat, now, n)?;
            match state.compare_exchange_weak(tat, new_tat, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(()),
                Err(actual) => tat = actual,
            }
        }
    }

    fn wait_nanos(&self, state: &AtomicU64, now: Nanos, n: u32) -> Option<Nanos> {
        match self.next_tat(state.load(Ordering::Acquire), now, n) {
            Ok(_) => Some(0),
            Err(e) if e == NotUntil::NEVER => None,
            Err(e) => Some(nanos(e.wait)),
        }
    }

    fn capacity(&self) -> u32 {
        self.burst
    }
}

// ---------------------------------------------------------------------------------------
// Token bucket

/// Token bucket: holds up to `capacity` tokens, refilled continuously at `rate`; starts
/// full. Integer arithmetic (a token is `rate.per` nanoseconds' worth of "units"), so a
/// wait it announces is always enough.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: Rate,
    capacity: u32,
    /// Units per token (`rate.per` in ns); `permits` units are added per nanosecond.
    unit: u128,
}

/// State of a [`TokenBucket`].
#[derive(Debug)]
pub struct TokenBucketState {
    inner: Mutex<(u128, Nanos)>,
}

impl TokenBucket {
    /// A bucket of `capacity` tokens (at least 1) refilled at `rate`.
    pub fn new(rate: Rate, capacity: u32) -> Self {
        Self {
            rate,
            capacity: capacity.max(1),
            unit: rate.per.as_nanos(),
        }
    }

    fn refill(&self, units: &mut u128, last: &mut Nanos, now: Nanos) {
        if now > *last {
            let max = u128::from(self.capacity) * self.unit;
            let add = u128::from(now - *last) * u128::from(self.rate.permits);
            *units = (*units + add).min(max);
            *last = now;
        }
    }

    fn deficit_nanos(&self, units: u128, n: u32) -> Nanos {
        let need = u128::from(n) * self.unit - units;
        u64::try_from(need.div_ceil(u128::from(self.rate.permits))).unwrap_or(u64::MAX)
    }
}

impl Algorithm for TokenBucket {
    type State = TokenBucketState;

    fn new_state(&self, now: Nanos) -> TokenBucketState {
        TokenBucketState {
            inner: Mutex::new((u128::from(self.capacity) * self.unit, now)),
        }
    }

    fn check(&self, state: &TokenBucketState, now: Nanos, n: u32) -> Result<(), NotUntil> {
        if n > self.capacity {
            return Err(NotUntil::NEVER);
        }
        let mut g = state.inner.lock();
        let (units, last) = &mut *g;
        self.refill(units, last, now);
        let need = u128::from(n) * self.unit;
        if *units >= need {
            *units -= need;
            Ok(())
        } else {
            Err(NotUntil::nanos(self.deficit_nanos(*units, n)))
        }
    }

    fn wait_nanos(&self, state: &TokenBucketState, now: Nanos, n: u32) -> Option<Nanos> {
        if n > self.capacity {
            return None;
        }
        let mut g = state.inner.lock();
        let (mut units, mut last) = *g;
        self.refill(&mut units, &mut last, now);
        *g = (units, last);
        Some(if units >= u128::from(n) * self.unit {
            0
        } else {
            self.deficit_nanos(units, n)
        })
    }

    fn capacity(&self) -> u32 {
        self.capacity
    }
}

// ---------------------------------------------------------------------------------------
// Warm-up

/// A token bucket that warms up: cold, it refills at `rate / cold_factor`, and the refill
/// rate climbs linearly to `rate` over `warm_up`. It starts cold and empty, and goes cold
/// (and empty) again after `warm_up` without any request, like a cache that needs warming
/// after a pause.
#[derive(Debug, Clone)]
pub struct WarmUpBucket {
    rate_per_ns: f64,
    cold_factor: f64,
    warm_up: Nanos,
    capacity: u32,
}

/// State of a [`WarmUpBucket`].
#[derive(Debug)]
pub struct WarmUpState {
    inner: Mutex<WarmUpInner>,
}

#[derive(Debug)]
struct WarmUpInner {
    tokens: f64,
    last: Nanos,
    /// When the current warm-up began.
    since: Nanos,
    /// The last request.
    seen: Nanos,
}

impl WarmUpBucket {
    /// `rate` when warm, `rate / cold_factor` when cold (`cold_factor` ≥ 1), ramping over
    /// `warm_up`; at most `capacity` tokens stored.
    pub fn new(rate: Rate, capacity: u32, cold_factor: f64, warm_up: Duration) -> Self {
        assert!(cold_factor >= 1.0, "cold_factor must be at least 1");
        Self {
            rate_per_ns: rate.permits as f64 / rate.per.as_nanos() as f64,
            cold_factor,
            warm_up: nanos(warm_up).max(1),
            capacity: capacity.max(1),
        }
    }

    fn rate_at(&self, since: Nanos, t: Nanos) -> f64 {
        let cold = self.rate_per_ns / self.cold_factor;
        let p = ((t.saturating_sub(since)) as f64 / self.warm_up as f64).min(1.0);
        cold + (self.rate_per_ns - cold) * p
    }

    fn advance(&self, s: &mut WarmUpInner, now: Nanos) {
        if now.saturating_sub(s.seen) >= self.warm_up {
            // Idle for a whole warm-up period: cold again.
            *s = WarmUpInner {
                tokens: 0.0,
                last: now,
                since: now,
                seen: now,
            };
            return;
        }
        if now > s.last {
            // Integral of the piecewise-linear rate from `last` to `now` (trapezoids on each
            // side of the end of the ramp).
            let ramp_end = s.since.saturating_add(self.warm_up);
            let mut added = 0.0;
            let mid = now.min(ramp_end).max(s.last);
            if mid > s.last {
                added += (self.rate_at(s.since, s.last) + self.rate_at(s.since, mid)) / 2.0
                    * (mid - s.last) as f64;
            }
            if now > mid {
                added += self.rate_per_ns * (now - mid) as f64;
            }
            s.tokens = (s.tokens + added).min(f64::from(self.capacity));
            s.last = now;
        }
    }

    fn wait(&self, s: &WarmUpInner, n: u32) -> Nanos {
        let rate = self.rate_at(s.since, s.last);
        ((f64::from(n) - s.tokens) / rate).ceil().max(1.0) as Nanos
    }
}

impl Algorithm for WarmUpBucket {
    type State = WarmUpState;

    fn new_state(&self, now: Nanos) -> WarmUpState {
        WarmUpState {
            inner: Mutex::new(WarmUpInner {
                tokens: 0.0,
                last: now,
                since: now,
                seen: now,
            }),
        }
    }

    fn check(&self, state: &WarmUpState, now: Nanos, n: u32) -> Result<(), NotUntil> {
        if n > self.capacity {
            return Err(NotUntil::NEVER);
        }
        let mut s = state.inner.lock();
        self.advance(&mut s, now);
        s.seen = now;
        // A hair of slack absorbs floating-point rounding of the integral.
        if s.tokens + 1e-9 >= f64::from(n) {
            s.tokens = (s.tokens - f64::from(n)).max(0.0);
            Ok(())
        } else {
            Err(NotUntil::nanos(self.wait(&s, n)))
        }
    }

    fn wait_nanos(&self, state: &WarmUpState, now: Nanos, n: u32) -> Option<Nanos> {
        if n > self.capacity {
            return None;
        }
        let mut s = state.inner.lock();
        self.advance(&mut s, now);
        Some(if s.tokens + 1e-9 >= f64::from(n) {
            0
        } else {
            self.wait(&s, n)
        })
    }

    fn capacity(&self) -> u32 {
        self.capacity
    }
}

// ---------------------------------------------------------------------------------------
// Leaky bucket (pacer)

/// Leaky bucket as a queue: requests leave at a steady `rate`, with no burst. `acquire`
/// reserves the next free slot at once and then waits for it, so waiters are served in
/// order and perfectly spaced; a slot further away than `max_wait` is refused
/// ([`AcquireError::QueueFull`]). `try_acquire` succeeds only when a slot is free now.
#[derive(Debug, Clone)]
pub struct LeakyBucket {
    rate: Rate,
    max_wait: Nanos,
    capacity: u32,
}

impl LeakyBucket {
    /// Paces at `rate`; `acquire` waits at most `max_wait` for its slot.
    pub fn new(rate: Rate, max_wait: Duration) -> Self {
        // The largest request is the one whose whole slot fits in the queue, and at least 1.
        let per_permit = rate.nanos_for(1).max(1);
        let capacity = u32::try_from((nanos(max_wait) / per_permit).max(1)).unwrap_or(u32::MAX);
        Self {
            rate,
            max_wait: nanos(max_wait),
            capacity,
        }
    }
}

impl Algorithm for LeakyBucket {
    /// The time the bucket is next empty (the next free slot).
    type State = AtomicU64;

    fn new_state(&self, _now: Nanos) -> AtomicU64 {
        AtomicU64::new(0)
    }

    fn check(&self, state: &AtomicU64, now: Nanos, n: u32) -> Result<(), NotUntil> {
        if n > self.capacity {
            return Err(NotUntil::NEVER);
        }
        let mut free = state.load(Ordering::Acquire);
        loop {
            if free > now {
                return Err(NotUntil::nanos(free - now));
            }
            let next = now + self.rate.nanos_for(u64::from(n));
            match state.compare_exchange_weak(free, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(()),
                Err(actual) => free = actual,
            }
        }
    }

    fn wait_nanos(&self, state: &AtomicU64, now: Nanos, n: u32) -> Option<Nanos> {
        (n <= self.capacity).then(|| state.load(Ordering::Acquire).saturating_sub(now))
    }

    fn capacity(&self) -> u32 {
        self.capacity
    }

    fn reserve(
        &self,
        state: &AtomicU64,
        now: Nanos,
        n: u32,
    ) -> Option<Result<Nanos, AcquireError>> {
        let mut free = state.load(Ordering::Acquire);
        loop {
            let start = free.max(now);
            let wait = start - now;
            if wait > self.max_wait {
                return Some(Err(AcquireError::QueueFull {
                    wait: Duration::from_nanos(wait),
                }));
            }
            let next = start + self.rate.nanos_for(u64::from(n));
            match state.compare_exchange_weak(free, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Some(Ok(wait)),
                Err(actual) => free = actual,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Fixed window

/// Fixed window: at most `limit` permits per aligned window of `window`. Cheap, but allows
/// up to twice the limit across a window boundary.
#[derive(Debug, Clone)]
pub struct FixedWindow {
    limit: u32,
    window: Nanos,
}

impl FixedWindow {
    /// `limit` permits per `window`.
    pub fn new(limit: u32, window: Duration) -> Self {
        Self {
            limit: limit.max(1),
            window: nanos(window).max(1),
        }
    }

    fn eval(&self, s: &mut (u64, u32), now: Nanos, n: u32) -> Result<(), NotUntil> {
        let idx = now / self.window;
        if idx != s.0 {
            *s = (idx, 0);
        }
        if s.1 + n <= self.limit {
            Ok(())
        } else {
            Err(NotUntil::nanos((idx + 1) * self.window - now))
        }
    }
}

impl Algorithm for FixedWindow {
    /// (window index, permits taken in it).
    type State = Mutex<(u64, u32)>;

    fn new_state(&self, now: Nanos) -> Self::State {
        Mutex::new((now / self.window, 0))
    }

    fn check(&self, state: &Self::State, now: Nanos, n: u32) -> Result<(), NotUntil> {
        if n > self.limit {
            return Err(NotUntil::NEVER);
        }
        let mut s = state.lock();
        self.eval(&mut s, now, n)?;
        s.1 += n;
        Ok(())
    }

    fn wait_nanos(&self, state: &Self::State, now: Nanos, n: u32) -> Option<Nanos> {
        if n > self.limit {
            return None;
        }
        match self.eval(&mut state.lock(), now, n) {
            Ok(()) => Some(0),
            Err(e) => Some(nanos(e.wait)),
        }
    }

    fn capacity(&self) -> u32 {
        self.limit
    }
}

// ---------------------------------------------------------------------------------------
// Sliding window counter

/// Sliding window counter: the count of the previous window, weighted by how much of it
/// still overlaps the sliding window, plus the current window's count, must stay within
/// `limit`. Two counters per state; smooths the fixed window's boundary burst.
#[derive(Debug, Clone)]
pub struct SlidingWindowCounter {
    limit: u32,
    window: Nanos,
}

/// State of a [`SlidingWindowCounter`].
#[derive(Debug)]
pub struct SlidingCounterState {
    inner: Mutex<(u64, u32, u32)>,
}

impl SlidingWindowCounter {
    /// `limit` permits per sliding `window`.
    pub fn new(limit: u32, window: Duration) -> Self {
        Self {
            limit: limit.max(1),
            window: nanos(window).max(1),
        }
    }

    fn rotate(&self, s: &mut (u64, u32, u32), now: Nanos) {
        let idx = now / self.window;
        if idx == s.0 + 1 {
            *s = (idx, s.2, 0);
        } else if idx > s.0 + 1 {
            *s = (idx, 0, 0);
        }
    }

    /// Nanoseconds until `n` more permits fit, 0 if they fit now.
    fn wait(&self, s: &(u64, u32, u32), now: Nanos, n: u32) -> Nanos {
        let (idx, prev, cur) = *s;
        let w = self.window as f64;
        let into = (now - idx * self.window) as f64;
        let (limit, n) = (f64::from(self.limit), f64::from(n));
        let est = f64::from(prev) * (1.0 - into / w) + f64::from(cur);
        if est + n <= limit {
            return 0;
        }
        if f64::from(cur) + n <= limit {
            // Wait in this window until enough of the previous one has slid out.
            let frac = 1.0 - (limit - f64::from(cur) - n) / f64::from(prev);
            ((frac * w - into).ceil() as Nanos).max(1)
        } else {
            // Next window: this window's count becomes the weighted one.
            let frac = (1.0 - (limit - n) / f64::from(cur)).max(0.0);
            ((w - into) + (frac * w).ceil()) as Nanos
        }
    }
}

impl Algorithm for SlidingWindowCounter {
    type State = SlidingCounterState;

    fn new_state(&self, now: Nanos) -> SlidingCounterState {
        SlidingCounterState {
            inner: Mutex::new((now / self.window, 0, 0)),
        }
    }

    fn check(&self, state: &SlidingCounterState, now: Nanos, n: u32) -> Result<(), NotUntil> {
        if n > self.limit {
            return Err(NotUntil::NEVER);
        }
        let mut s = state.inner.lock();
        self.rotate(&mut s, now);
        match self.wait(&s, now, n) {
            0 => {
                s.2 += n;
                Ok(())
            }
            w => Err(NotUntil::nanos(w)),
        }
    }

    fn wait_nanos(&self, state: &SlidingCounterState, now: Nanos, n: u32) -> Option<Nanos> {
        if n > self.limit {
            return None;
        }
        let mut s = state.inner.lock();
        self.rotate(&mut s, now);
        Some(self.wait(&s, now, n))
    }

    fn capacity(&self) -> u32 {
        self.limit
    }
}

// ---------------------------------------------------------------------------------------
// Sliding window log

/// Sliding window log: remembers when permits were taken and admits while fewer than
/// `limit` were taken in the last `window`. An exact log grows with the limit, so this one
/// is bounded: grants less than `window / max_entries` after an entry's first grant join
/// that entry, which expires with its newest grant. At most `max_entries + 1` entries are
/// kept (a hard cap merges into the newest), and a permit is held at most
/// `window / max_entries` longer than an exact log would hold it: stricter, never more
/// lenient.
#[derive(Debug, Clone)]
pub struct SlidingWindowLog {
    limit: u32,
    window: Nanos,
    max_entries: usize,
    granularity: Nanos,
}

/// One log entry: first grant, newest grant, permits.
type LogEntry = (Nanos, Nanos, u32);

/// State of a [`SlidingWindowLog`].
#[derive(Debug)]
pub struct SlidingLogState {
    inner: Mutex<(VecDeque<LogEntry>, u64)>,
}

impl SlidingWindowLog {
    /// `limit` permits per sliding `window`, with a log of about `max_entries` (≥ 1).
    pub fn new(limit: u32, window: Duration, max_entries: usize) -> Self {
        let window = nanos(window).max(1);
        let max_entries = max_entries.max(1);
        Self {
            limit: limit.max(1),
            window,
            max_entries,
            granularity: window / max_entries as u64,
        }
    }

    fn expire(&self, log: &mut VecDeque<LogEntry>, total: &mut u64, now: Nanos) {
        while let Some(&(_, last, c)) = log.front() {
            if last + self.window > now {
                break;
            }
            log.pop_front();
            *total -= u64::from(c);
        }
    }

    fn wait(&self, log: &VecDeque<LogEntry>, total: u64, now: Nanos, n: u32) -> Nanos {
        let excess = (total + u64::from(n)).saturating_sub(u64::from(self.limit));
        if excess == 0 {
            return 0;
        }
        let mut freed = 0;
        let mut until = 0;
        for &(_, last, c) in log {
            freed += u64::from(c);
            // Entries expire in order of their newest grant, which is not quite their order.
            until = until.max(last + self.window);
            if freed >= excess {
                return (until - now).max(1);
            }
        }
        self.window
    }

    /// Entries in the log (for tests of the bound).
    pub fn log_len(&self, state: &SlidingLogState) -> usize {
        state.inner.lock().0.len()
    }
}

impl Algorithm for SlidingWindowLog {
    type State = SlidingLogState;

    fn new_state(&self, _now: Nanos) -> SlidingLogState {
        SlidingLogState {
            inner: Mutex::new((VecDeque::new(), 0)),
        }
    }

    fn check(&self, state: &SlidingLogState, now: Nanos, n: u32) -> Result<(), NotUntil> {
        if n > self.limit {
            return Err(NotUntil::NEVER);
        }
        let mut g = state.inner.lock();
        let (log, total) = &mut *g;
        self.expire(log, total, now);
        match self.wait(log, *total, now, n) {
            0 => {
                *total += u64::from(n);
                let full = log.len() > self.max_entries;
                match log.back_mut() {
                    Some(e) if now < e.0 + self.granularity || full => {
                        e.1 = now;
                        e.2 += n;
                    }
                    _ => log.push_back((now, now, n)),
                }
                Ok(())
            }
            w => Err(NotUntil::nanos(w)),
        }
    }

    fn wait_nanos(&self, state: &SlidingLogState, now: Nanos, n: u32) -> Option<Nanos> {
        if n > self.limit {
            return None;
        }
        let mut g = state.inner.lock();
        let (log, total) = &mut *g;
        self.expire(log, total, now);
        Some(self.wait(log, *total, now, n))
    }

    fn capacity(&self) -> u32 {
        self.limit
    }
}
