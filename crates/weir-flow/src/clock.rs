//! Time for the limiters and the breaker: a monotonic nanosecond count behind the [`Clock`]
//! trait, so tests run on a [`ManualClock`] and simulate ten seconds in microseconds.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Nanoseconds since the clock's origin.
pub type Nanos = u64;

/// Converts a duration to nanoseconds, saturating at `u64::MAX` (584 years).
pub(crate) fn nanos(d: Duration) -> Nanos {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A monotonic source of time and a way to wait for it.
pub trait Clock: Clone + Send + Sync + 'static {
    /// Nanoseconds since this clock's origin; never goes backwards.
    fn now(&self) -> Nanos;

    /// Waits `d` of this clock's time.
    fn sleep(&self, d: Duration) -> impl Future<Output = ()> + Send;
}

/// The real monotonic clock: `quanta` (the TSC where it is invariant, else
/// `CLOCK_MONOTONIC`), the clock `governor` uses too. Sleeps with `tokio::time::sleep`.
#[derive(Debug, Clone)]
pub struct MonotonicClock {
    clock: quanta::Clock,
    /// The raw counter at the origin; `now` is the scaled delta from it, which skips the
    /// round trip through `Duration` on the hot path.
    origin: u64,
}

impl MonotonicClock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        let clock = quanta::Clock::new();
        let origin = clock.raw();
        Self { clock, origin }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    #[inline]
    fn now(&self) -> Nanos {
        // 0 if the counter reads below the origin (TSCs of different cores can disagree by
        // a hair); every user of the clock tolerates a reading that does not advance.
        self.clock.delta_as_nanos(self.origin, self.clock.raw())
    }

    fn sleep(&self, d: Duration) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(d)
    }
}

/// A clock that moves only when told: [`ManualClock::advance`], [`ManualClock::set`], or a
/// [`Clock::sleep`], which jumps the clock to the sleep's deadline (like tokio's paused
/// time with auto-advance) and yields once. Clones share the same time.
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    now: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        self.now.fetch_add(nanos(d), Ordering::SeqCst);
    }

    /// Moves the clock to `t` nanoseconds; never backwards.
    pub fn set(&self, t: Nanos) {
        self.now.fetch_max(t, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    #[inline]
    fn now(&self) -> Nanos {
        self.now.load(Ordering::SeqCst)
    }

    fn sleep(&self, d: Duration) -> impl Future<Output = ()> + Send {
        let deadline = self.now().saturating_add(nanos(d));
        self.set(deadline);
        tokio::task::yield_now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_forward() {
        let c = ManualClock::new();
        c.advance(Duration::from_millis(5));
        c.set(1);
        assert_eq!(c.now(), 5_000_000);
        let d = c.clone();
        d.advance(Duration::from_nanos(1));
        assert_eq!(c.now(), 5_000_001);
    }

    #[tokio::test]
    async fn manual_sleep_jumps_to_deadline() {
        let c = ManualClock::new();
        c.sleep(Duration::from_secs(3)).await;
        assert_eq!(c.now(), 3_000_000_000);
    }

    #[test]
    fn monotonic_clock_advances() {
        let c = MonotonicClock::new();
        let a = c.now();
        std::thread::sleep(Duration::from_millis(2));
        let b = c.now();
        assert!(b >= a + 1_000_000, "{a} -> {b}");
    }
}
