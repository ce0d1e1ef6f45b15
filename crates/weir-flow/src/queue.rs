//! A queue bounded by item count and by bytes, with an overflow policy, async pop and close.
//!
//! Every item pushed is accounted for exactly once: delivered by a pop, still queued, or
//! handed back to the pusher in the [`Pushed`] result (dropped, rejected, timed out, closed).
//! A drop is never reported as delivered. `tokio::sync::mpsc` bounds only the count and
//! only blocks, so the byte bound and the policies are written here on a mutex-guarded
//! `VecDeque` and two `Notify`s.

use std::collections::VecDeque;
use std::fmt;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::metrics::Metrics;

/// Metric: items accepted into the queue.
pub const METRIC_ACCEPTED: &str = "weir_flow_queue_accepted_total";
/// Metric: items taken out by a pop.
pub const METRIC_DELIVERED: &str = "weir_flow_queue_delivered_total";
/// Metric: items dropped (newest refused or oldest evicted) by the overflow policy.
pub const METRIC_DROPPED: &str = "weir_flow_queue_dropped_total";
/// Metric: items rejected (policy `Reject`, item larger than the byte bound, or closed).
pub const METRIC_REJECTED: &str = "weir_flow_queue_rejected_total";
/// Metric: pushes that gave up after `BlockTimeout`.
pub const METRIC_TIMED_OUT: &str = "weir_flow_queue_timed_out_total";

/// What to do with a push when the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Wait for room (or for the queue to close).
    Block,
    /// Wait for room at most this long, then hand the item back as [`Pushed::TimedOut`].
    BlockTimeout(Duration),
    /// Hand the new item back as [`Pushed::Dropped`].
    DropNewest,
    /// Evict the oldest items until the new one fits; they come back as
    /// [`Pushed::DroppedOldest`].
    DropOldest,
    /// Hand the new item back as [`Pushed::Rejected`].
    Reject,
}

/// Bounds and policy of a [`BoundedQueue`].
#[derive(Debug, Clone, Copy)]
pub struct QueueConfig {
    /// Most items held. Default 1024.
    pub max_items: usize,
    /// Most bytes held (as the sizer counts them). Default 64 MiB.
    pub max_bytes: usize,
    /// Default [`Overflow::Block`].
    pub overflow: Overflow,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            max_items: 1024,
            max_bytes: 64 << 20,
            overflow: Overflow::Block,
        }
    }
}

/// The result of a push. Only `Pushed` and `DroppedOldest` mean the new item was queued.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a push can hand the item back"]
pub enum Pushed<T> {
    /// Queued.
    Pushed,
    /// Not queued: the queue was full ([`Overflow::DropNewest`]).
    Dropped(T),
    /// Queued, after evicting these oldest items ([`Overflow::DropOldest`]).
    DroppedOldest(Vec<T>),
    /// Not queued: full under [`Overflow::Reject`], larger than the byte bound, or a
    /// blocking policy on [`BoundedQueue::try_push`].
    Rejected(T),
    /// Not queued: no room within the [`Overflow::BlockTimeout`] wait.
    TimedOut(T),
    /// Not queued: the queue is closed.
    Closed(T),
}

impl<T> Pushed<T> {
    /// True when the pushed item is in the queue.
    pub fn is_queued(&self) -> bool {
        matches!(self, Pushed::Pushed | Pushed::DroppedOldest(_))
    }
}

/// Counters of a queue since it was made. `accepted = delivered + evicted + len` and every
/// push is exactly one of accepted, dropped-newest, rejected, timed out or closed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct QueueStats {
    /// Pushes attempted.
    pub pushes: u64,
    /// Items queued.
    pub accepted: u64,
    /// Items popped.
    pub delivered: u64,
    /// New items dropped (`DropNewest`) plus old items evicted (`DropOldest`).
    pub dropped: u64,
    /// Old items evicted (`DropOldest`), also counted in `dropped`.
    pub evicted: u64,
    /// Pushes rejected (policy, oversize, or closed).
    pub rejected: u64,
    /// Pushes timed out.
    pub timed_out: u64,
}

#[derive(Default)]
struct Counters {
    pushes: AtomicU64,
    accepted: AtomicU64,
    delivered: AtomicU64,
    dropped: AtomicU64,
    evicted: AtomicU64,
    rejected: AtomicU64,
    timed_out: AtomicU64,
}

struct State<T> {
    items: VecDeque<(T, usize)>,
    bytes: usize,
    closed: bool,
}

/// A multi-producer, multi-consumer queue bounded by count and bytes.
pub struct BoundedQueue<T> {
    cfg: QueueConfig,
    size_of: fn(&T) -> usize,
    state: Mutex<State<T>>,
    not_empty: Notify,
    not_full: Notify,
    /// Poppers and pushers waiting (registered before they look, so a notifier that sees
    /// zero after changing the queue knows nobody can miss the change).
    pop_waiters: AtomicUsize,
    push_waiters: AtomicUsize,
    counters: Counters,
    metrics: Option<Metrics>,
}

impl<T> fmt::Debug for BoundedQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.state.lock();
        f.debug_struct("BoundedQueue")
            .field("config", &self.cfg)
            .field("len", &s.items.len())
            .field("bytes", &s.bytes)
            .field("closed", &s.closed)
            .finish()
    }
}

/// Counts a waiter for as long as it lives (also when its future is dropped).
struct WaitGuard<'a>(&'a AtomicUsize);

impl<'a> WaitGuard<'a> {
    fn new(c: &'a AtomicUsize) -> Self {
        c.fetch_add(1, Ordering::SeqCst);
        Self(c)
    }
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

enum Attempt<T> {
    Done(Pushed<T>),
    Full(T),
}

impl<T> BoundedQueue<T> {
    /// A queue whose items weigh `size_of(item)` bytes.
    pub fn new(cfg: QueueConfig, size_of: fn(&T) -> usize) -> Self {
        Self {
            cfg,
            size_of,
            state: Mutex::new(State {
                items: VecDeque::new(),
                bytes: 0,
                closed: false,
            }),
            not_empty: Notify::new(),
            not_full: Notify::new(),
            pop_waiters: AtomicUsize::new(0),
            push_waiters: AtomicUsize::new(0),
            counters: Counters::default(),
            metrics: None,
        }
    }

    /// Reports accepted, delivered, dropped, rejected and timed-out items to `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    fn count(&self, c: &AtomicU64, name: &'static str, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
        if let Some(m) = &self.metrics {
            m.counter(name, n);
        }
    }

    /// One attempt under the lock; `Full` when a blocking policy must wait.
    fn attempt(&self, item: T, size: usize, blocking: bool) -> Attempt<T> {
        let mut s = self.state.lock();
        if s.closed {
            drop(s);
            self.count(&self.counters.rejected, METRIC_REJECTED, 1);
            return Attempt::Done(Pushed::Closed(item));
        }
        if size > self.cfg.max_bytes || self.cfg.max_items == 0 {
            drop(s);
            self.count(&self.counters.rejected, METRIC_REJECTED, 1);
            return Attempt::Done(Pushed::Rejected(item));
        }
        let fits = |s: &State<T>| {
            s.items.len() < self.cfg.max_items && s.bytes + size <= self.cfg.max_bytes
        };
        let mut evicted = Vec::new();
        if !fits(&s) {
            match self.cfg.overflow {
                Overflow::Block | Overflow::BlockTimeout(_) if blocking => {
                    return Attempt::Full(item);
                }
                Overflow::Block | Overflow::BlockTimeout(_) | Overflow::Reject => {
                    drop(s);
                    self.count(&self.counters.rejected, METRIC_REJECTED, 1);
                    return Attempt::Done(Pushed::Rejected(item));
                }
                Overflow::DropNewest => {
                    drop(s);
                    self.count(&self.counters.dropped, METRIC_DROPPED, 1);
                    return Attempt::Done(Pushed::Dropped(item));
                }
                Overflow::DropOldest => {
                    while !fits(&s) {
                        let Some((old, sz)) = s.items.pop_front() else {
                            break;
                        };
                        s.bytes -= sz;
                        evicted.push(old);
                    }
                }
            }
        }
        s.items.push_back((item, size));
        s.bytes += size;
        drop(s);
        self.count(&self.counters.accepted, METRIC_ACCEPTED, 1);
        if self.pop_waiters.load(Ordering::SeqCst) > 0 {
            self.not_empty.notify_one();
        }
        if evicted.is_empty() {
            Attempt::Done(Pushed::Pushed)
        } else {
            let n = evicted.len() as u64;
            self.counters.evicted.fetch_add(n, Ordering::Relaxed);
            self.count(&self.counters.dropped, METRIC_DROPPED, n);
            Attempt::Done(Pushed::DroppedOldest(evicted))
        }
    }

    /// Pushes without waiting: the blocking policies behave like [`Overflow::Reject`].
    pub fn try_push(&self, item: T) -> Pushed<T> {
        self.counters.pushes.fetch_add(1, Ordering::Relaxed);
        let size = (self.size_of)(&item);
        match self.attempt(item, size, false) {
            Attempt::Done(p) => p,
            Attempt::Full(item) => Pushed::Rejected(item), // unreachable: not blocking
        }
    }

    /// Pushes under the queue's overflow policy.
    pub async fn push(&self, item: T) -> Pushed<T> {
        self.counters.pushes.fetch_add(1, Ordering::Relaxed);
        let size = (self.size_of)(&item);
        let deadline = match self.cfg.overflow {
            Overflow::BlockTimeout(d) => Some(tokio::time::Instant::now() + d),
            _ => None,
        };
        // Fast path: room now, no waiting bookkeeping.
        let mut item = match self.attempt(item, size, true) {
            Attempt::Done(p) => return p,
            Attempt::Full(back) => back,
        };
        let _waiting = WaitGuard::new(&self.push_waiters);
        loop {
            let mut notified = pin!(self.not_full.notified());
            notified.as_mut().enable();
            match self.attempt(item, size, true) {
                Attempt::Done(p) => return p,
                Attempt::Full(back) => item = back,
            }
            match deadline {
                None => notified.await,
                Some(at) => {
                    if tokio::time::timeout_at(at, notified).await.is_err() {
                        // One last look: room may have appeared at the deadline.
                        match self.attempt(item, size, true) {
                            Attempt::Done(p) => return p,
                            Attempt::Full(back) => {
                                self.count(&self.counters.timed_out, METRIC_TIMED_OUT, 1);
                                return Pushed::TimedOut(back);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Takes the oldest item, if any.
    pub fn try_pop(&self) -> Option<T> {
        let mut s = self.state.lock();
        let (item, size) = s.items.pop_front()?;
        s.bytes -= size;
        let more = !s.items.is_empty();
        drop(s);
        self.count(&self.counters.delivered, METRIC_DELIVERED, 1);
        if self.push_waiters.load(Ordering::SeqCst) > 0 {
            // Byte bounds: one pop can make room for several waiters, or for none.
            self.not_full.notify_waiters();
        }
        if more && self.pop_waiters.load(Ordering::SeqCst) > 0 {
            // Hand the wake-up on, in case this pop consumed another popper's notification.
            self.not_empty.notify_one();
        }
        Some(item)
    }

    /// Waits for the oldest item; `None` once the queue is closed and empty.
    pub async fn pop(&self) -> Option<T> {
        if let Some(item) = self.try_pop() {
            return Some(item);
        }
        let _waiting = WaitGuard::new(&self.pop_waiters);
        loop {
            let mut notified = pin!(self.not_empty.notified());
            notified.as_mut().enable();
            if let Some(item) = self.try_pop() {
                return Some(item);
            }
            if self.state.lock().closed {
                return None;
            }
            notified.await;
        }
    }

    /// Closes the queue: pushes are refused with [`Pushed::Closed`] (blocked pushers too);
    /// pops take what is left, then get `None`.
    pub fn close(&self) {
        self.state.lock().closed = true;
        self.not_full.notify_waiters();
        self.not_empty.notify_waiters();
    }

    /// True once closed.
    pub fn is_closed(&self) -> bool {
        self.state.lock().closed
    }

    /// Items queued.
    pub fn len(&self) -> usize {
        self.state.lock().items.len()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes queued.
    pub fn bytes(&self) -> usize {
        self.state.lock().bytes
    }

    /// The counters.
    pub fn stats(&self) -> QueueStats {
        let c = &self.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        QueueStats {
            pushes: l(&c.pushes),
            accepted: l(&c.accepted),
            delivered: l(&c.delivered),
            dropped: l(&c.dropped),
            evicted: l(&c.evicted),
            rejected: l(&c.rejected),
            timed_out: l(&c.timed_out),
        }
    }
}
