//! Flow control for weir, usable on its own (no dependency on any other weir crate).
//!
//! Layout:
//!
//! - [`clock`]: the [`Clock`] trait; [`MonotonicClock`] (real) and [`ManualClock`] (tests).
//! - [`limiter`]: the [`RateLimiter`] trait and the local algorithms: token bucket, leaky
//!   bucket (pacer), GCRA, fixed window, sliding window counter and log, warm-up.
//! - [`keyed`]: a limiter per key in a sharded map with a hard key cap and idle eviction.
//! - [`redis`]: a distributed limiter on Redis (Lua scripts: GCRA, sliding window) with a
//!   fail-open, fail-closed or local fallback when Redis is down.
//! - [`breaker`]: a circuit breaker (count or time windows, failure and slow-call rates,
//!   half-open probes, forced states, state-change events).
//! - [`adaptive`]: an adaptive concurrency limiter (AIMD, Gradient2, Vegas) on a resizable
//!   semaphore.
//! - [`queue`]: a queue bounded by count and bytes with overflow policies.
//! - [`pool`]: a dynamic worker pool with priority lanes, timeouts, panic isolation and
//!   graceful drain.
//! - [`metrics`]: the one metrics hook, [`FlowMetrics`]; names follow
//!   `weir_flow_<primitive>_<name>[_total]`.
//!
//! ```
//! use std::time::Duration;
//! use weir_flow::{Gcra, Limiter, ManualClock, Rate, RateLimiter};
//!
//! // 10 per second, bursts of 2, on a clock the example moves by hand.
//! let limiter = Limiter::with_clock(Gcra::new(Rate::per_second(10), 2), ManualClock::new());
//! assert!(limiter.try_acquire(2).is_ok());
//! let refused = limiter.try_acquire(1).unwrap_err();
//! assert_eq!(refused.wait, Duration::from_millis(100));
//! limiter.clock().advance(refused.wait);
//! assert!(limiter.try_acquire(1).is_ok());
//! ```

pub mod adaptive;
pub mod breaker;
pub mod clock;
pub mod keyed;
pub mod limiter;
pub mod metrics;
pub mod pool;
pub mod queue;
#[cfg(feature = "redis")]
pub mod redis;

pub use clock::{Clock, ManualClock, MonotonicClock, Nanos};
pub use keyed::{KeyedConfig, KeyedError, KeyedLimiter, WhenFull};
pub use limiter::{
    AcquireError, Algorithm, FixedWindow, Gcra, LeakyBucket, Limiter, NotUntil, Rate, RateLimiter,
    SlidingWindowCounter, SlidingWindowLog, TokenBucket, WarmUpBucket,
};
pub use metrics::{FlowMetrics, MemoryMetrics, Metrics, NoopMetrics};
