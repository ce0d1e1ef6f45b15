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

pub mod adaptive;
pub mod breaker;
pub mod clock;
pub mod keyed;
pub mod limiter;
pub mod metrics;
pub mod pool;
pub mod queue;
pub mod redis;

pub use clock::{Clock, ManualClock, MonotonicClock, Nanos};
pub use keyed::{KeyedConfig, KeyedError, KeyedLimiter, WhenFull};
pub use limiter::{
    AcquireError, Algorithm, FixedWindow, Gcra, LeakyBucket, Limiter, NotUntil, Rate, RateLimiter,
    SlidingWindowCounter, SlidingWindowLog, TokenBucket, WarmUpBucket,
};
pub use metrics::{FlowMetrics, MemoryMetrics, Metrics, NoopMetrics};
