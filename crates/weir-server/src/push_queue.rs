//! The per-subscription queue of the `DROP_OLDEST` and `DISCONNECT` push policies.
//!
//! One task fills it from the log as records arrive (never waiting for the socket), another
//! drains it into the connection's writer; so a subscriber that does not read costs its own
//! queue, never the broker, the producers or other connections.
//!
//! `weir_flow::queue::BoundedQueue` bounds items and bytes; this queue must bound records
//! (a batch holds many) and must turn the evicted batches into one offset range to announce
//! before the next batch it hands out, so it is written here: a mutex-guarded `VecDeque` and a
//! `Notify` (one filler, one drainer). Nothing leaves it unaccounted: every batch is either
//! handed out, announced as dropped, or discarded with the error that ends the subscription.

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::Notify;
use weir_wire::ErrorCode;

/// What a subscriber that falls behind gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QueuePolicy {
    /// Evict the oldest batches and announce them.
    DropOldest,
    /// End the subscription with `SLOW_CONSUMER`.
    Disconnect,
}

impl QueuePolicy {
    /// The metric label.
    pub fn label(self) -> &'static str {
        self.counted_as().name()
    }

    /// The policy in the broker's activity counters (which the console reads).
    pub fn counted_as(self) -> weir_broker::activity::PushPolicy {
        match self {
            QueuePolicy::DropOldest => weir_broker::activity::PushPolicy::DropOldest,
            QueuePolicy::Disconnect => weir_broker::activity::PushPolicy::Disconnect,
        }
    }
}

/// One stored batch with its offsets.
#[derive(Debug)]
pub(crate) struct QueuedBatch {
    pub bytes: Bytes,
    pub base: u64,
    /// The offset after the batch.
    pub next: u64,
    pub records: u64,
    pub high_watermark: u64,
}

/// What the drainer gets, in order.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Popped {
    /// `records` records, offsets `from..to`, were dropped; comes before anything after them.
    Dropped { records: u64, from: u64, to: u64 },
    /// Consecutive batches.
    Data {
        batches: Vec<Bytes>,
        high_watermark: u64,
    },
    /// The subscription ended; nothing follows.
    End(ErrorCode, String),
}

/// The result of [`PushQueue::push`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Offered {
    /// Queued; `dropped` records were evicted to make room (`DropOldest`).
    Queued { dropped: u64 },
    /// `DISCONNECT` overflow: the queue was emptied of `discarded` records and ended with
    /// `SLOW_CONSUMER`; stop filling.
    Overflowed { discarded: u64 },
    /// Already ended; stop filling.
    Ended,
}

#[derive(Debug, Default)]
struct State {
    items: VecDeque<QueuedBatch>,
    records: u64,
    bytes: u64,
    /// Evicted and not yet announced: (records, from, to).
    dropped: Option<(u64, u64, u64)>,
    end: Option<(ErrorCode, String)>,
    ended: bool,
}

#[derive(Debug)]
pub(crate) struct PushQueue {
    policy: QueuePolicy,
    max_records: u64,
    max_bytes: u64,
    state: Mutex<State>,
    notify: Notify,
}

impl PushQueue {
    pub fn new(policy: QueuePolicy, max_records: u64, max_bytes: u64) -> Self {
        Self {
            policy,
            max_records: max_records.max(1),
            max_bytes: max_bytes.max(1),
            state: Mutex::new(State::default()),
            notify: Notify::new(),
        }
    }

    pub fn policy(&self) -> QueuePolicy {
        self.policy
    }

    pub fn max_records(&self) -> u64 {
        self.max_records
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a batch under the policy. A batch larger than the bounds is still queued when
    /// the queue is empty (alone), so a subscription never stalls on one large batch.
    pub fn push(&self, b: QueuedBatch) -> Offered {
        let mut s = self.lock();
        if s.ended {
            return Offered::Ended;
        }
        let len = b.bytes.len() as u64;
        let fits = |s: &State| {
            s.items.is_empty()
                || (s.records + b.records <= self.max_records && s.bytes + len <= self.max_bytes)
        };
        let mut dropped = 0;
        if !fits(&s) {
            match self.policy {
                QueuePolicy::Disconnect => {
                    let discarded = s.records;
                    s.items.clear();
                    s.records = 0;
                    s.bytes = 0;
                    s.ended = true;
                    s.end = Some((
                        ErrorCode::SlowConsumer,
                        format!(
                            "slow consumer: the subscription's queue ({} records, {} bytes) \
                             overflowed at offset {}",
                            self.max_records, self.max_bytes, b.base
                        ),
                    ));
                    drop(s);
                    self.notify.notify_one();
                    return Offered::Overflowed { discarded };
                }
                QueuePolicy::DropOldest => {
                    while !fits(&s) {
                        let Some(old) = s.items.pop_front() else {
                            break;
                        };
                        s.records -= old.records;
                        s.bytes -= old.bytes.len() as u64;
                        dropped += old.records;
                        s.dropped = Some(match s.dropped {
                            // Evictions between two pops are contiguous: both come off the
                            // front, and a pop announces the range before handing out more.
                            Some((n, from, _)) => (n + old.records, from, old.next),
                            None => (old.records, old.base, old.next),
                        });
                    }
                }
            }
        }
        s.records += b.records;
        s.bytes += len;
        s.items.push_back(b);
        drop(s);
        self.notify.notify_one();
        Offered::Queued { dropped }
    }

    /// Ends the subscription after what is queued (an error from the log, shutdown).
    pub fn end(&self, code: ErrorCode, message: String) {
        let mut s = self.lock();
        if !s.ended {
            s.ended = true;
            s.end = Some((code, message));
        }
        drop(s);
        self.notify.notify_one();
    }

    /// Non-blocking pop: a drop notice first, then batches up to `max_bytes` (at least one),
    /// then the end.
    pub fn try_pop(&self, max_bytes: u64) -> Option<Popped> {
        let mut s = self.lock();
        if let Some((records, from, to)) = s.dropped.take() {
            return Some(Popped::Dropped { records, from, to });
        }
        if let Some(first) = s.items.pop_front() {
            let mut size = first.bytes.len() as u64;
            let mut records = first.records;
            let mut high_watermark = first.high_watermark;
            let mut batches = vec![first.bytes];
            while let Some(b) = s.items.front() {
                let len = b.bytes.len() as u64;
                if size + len > max_bytes {
                    break;
                }
                let Some(b) = s.items.pop_front() else { break };
                size += len;
                records += b.records;
                high_watermark = b.high_watermark;
                batches.push(b.bytes);
            }
            s.records -= records;
            s.bytes -= size;
            return Some(Popped::Data {
                batches,
                high_watermark,
            });
        }
        s.end.take().map(|(c, m)| Popped::End(c, m))
    }

    /// Waits for [`PushQueue::try_pop`] to have something. One drainer only.
    pub async fn pop(&self, max_bytes: u64) -> Popped {
        loop {
            if let Some(p) = self.try_pop(max_bytes) {
                return p;
            }
            // `notify_one` keeps a permit when nobody waits, so no wake-up is lost between
            // the look above and this wait.
            self.notify.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(base: u64, records: u64, bytes: usize) -> QueuedBatch {
        QueuedBatch {
            bytes: Bytes::from(vec![0u8; bytes]),
            base,
            next: base + records,
            records,
            high_watermark: base + records,
        }
    }

    #[test]
    fn drop_oldest_announces_one_contiguous_range_before_newer_data() {
        let q = PushQueue::new(QueuePolicy::DropOldest, 20, 1 << 20);
        for i in 0..2 {
            assert_eq!(
                q.push(batch(i * 10, 10, 100)),
                Offered::Queued { dropped: 0 }
            );
        }
        // Two more evict the first two, one at a time.
        assert_eq!(q.push(batch(20, 10, 100)), Offered::Queued { dropped: 10 });
        assert_eq!(q.push(batch(30, 10, 100)), Offered::Queued { dropped: 10 });
        assert_eq!(
            q.try_pop(1 << 20),
            Some(Popped::Dropped {
                records: 20,
                from: 0,
                to: 20
            })
        );
        let Some(Popped::Data { batches, .. }) = q.try_pop(1 << 20) else {
            panic!("data expected");
        };
        assert_eq!(batches.len(), 2);
        assert_eq!(q.try_pop(1 << 20), None);
    }

    #[test]
    fn bytes_bound_and_oversized_batch_alone() {
        let q = PushQueue::new(QueuePolicy::DropOldest, 1000, 250);
        assert_eq!(q.push(batch(0, 1, 100)), Offered::Queued { dropped: 0 });
        assert_eq!(q.push(batch(1, 1, 100)), Offered::Queued { dropped: 0 });
        assert_eq!(q.push(batch(2, 1, 100)), Offered::Queued { dropped: 1 });
        // Larger than the bound: everything else goes, it stays alone.
        assert_eq!(q.push(batch(3, 5, 400)), Offered::Queued { dropped: 2 });
        assert_eq!(
            q.try_pop(100),
            Some(Popped::Dropped {
                records: 3,
                from: 0,
                to: 3
            })
        );
        assert!(matches!(q.try_pop(100), Some(Popped::Data { batches, .. }) if batches.len() == 1));
    }

    #[test]
    fn disconnect_overflow_ends_with_slow_consumer() {
        let q = PushQueue::new(QueuePolicy::Disconnect, 10, 1 << 20);
        assert_eq!(q.push(batch(0, 10, 10)), Offered::Queued { dropped: 0 });
        assert_eq!(
            q.push(batch(10, 1, 10)),
            Offered::Overflowed { discarded: 10 }
        );
        assert_eq!(q.push(batch(11, 1, 10)), Offered::Ended);
        assert!(matches!(
            q.try_pop(100),
            Some(Popped::End(ErrorCode::SlowConsumer, _))
        ));
        assert_eq!(q.try_pop(100), None);
    }

    #[tokio::test]
    async fn pop_waits_for_a_push() {
        let q = std::sync::Arc::new(PushQueue::new(QueuePolicy::DropOldest, 10, 100));
        let q2 = q.clone();
        let t = tokio::spawn(async move { q2.pop(100).await });
        tokio::task::yield_now().await;
        let _ = q.push(batch(0, 1, 1));
        assert!(matches!(t.await.unwrap(), Popped::Data { .. }));
    }
}
