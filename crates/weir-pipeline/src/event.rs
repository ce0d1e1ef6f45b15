//! Events and their acknowledgements.
//!
//! An [`Event`] is a record as a source read it (key, value, headers, timestamp, where it came
//! from) plus its structured value once decoded. Every event carries an [`Ack`]: a share in
//! the [`AckBatch`] of the source read it came from. A source commits a position only once
//! every event of every batch up to it was acknowledged.
//!
//! Acknowledging is explicit and dropping is not acknowledging: an event that a sink wrote, a
//! filter dropped by design or the dead-letter output took is [`Event::ack`]ed; an event
//! dropped any other way (a task that ended, a queue emptied at shutdown, a panic) marks its
//! batch failed, so the source never commits past it and the event is read again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::Bytes;
use vrl::value::Value;

/// Milliseconds since the epoch, now (0 before 1970).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Where a record came from: a topic partition and offset, or a file and byte position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The topic name or the file path.
    pub stream: Arc<str>,
    /// The partition (0 for a file).
    pub partition: u32,
    /// The offset in the partition, or the byte position of the line in the file.
    pub offset: u64,
}

/// A record as read: what a dead-letter output writes back, and what a sink writes with a
/// newly encoded value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Bytes)>,
    /// Milliseconds since the epoch.
    pub timestamp: i64,
    pub origin: Option<Origin>,
}

impl Record {
    /// Bytes this record holds, for queue bounds.
    pub fn size(&self) -> usize {
        self.key.as_ref().map_or(0, Bytes::len)
            + self.value.as_ref().map_or(0, Bytes::len)
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
            + 48
    }

    /// The value of header `name`, the last one if repeated.
    pub fn header(&self, name: &str) -> Option<&Bytes> {
        self.headers
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }
}

/// The acknowledgement state of one source read: how many event shares are outstanding and
/// whether any was lost.
#[derive(Debug, Default)]
pub struct AckBatch {
    pending: AtomicUsize,
    failed: AtomicBool,
    /// Woken when the last share is settled (for a caller that awaits its events, such as
    /// an HTTP ingest request).
    settled: tokio::sync::Notify,
}

impl AckBatch {
    /// A batch with no shares yet; [`AckBatch::share`] hands them out.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A share for one more event of this batch.
    pub fn share(self: &Arc<Self>) -> Ack {
        self.pending.fetch_add(1, Ordering::AcqRel);
        Ack {
            batch: Some(self.clone()),
        }
    }

    /// Every share was acknowledged (and none lost).
    pub fn is_done(&self) -> bool {
        self.pending.load(Ordering::Acquire) == 0 && !self.is_failed()
    }

    /// A share was dropped without acknowledgement.
    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Shares outstanding.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    /// Waits until no share is outstanding; true if every one was acknowledged.
    pub async fn settled(&self) -> bool {
        loop {
            let notified = self.settled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.pending() == 0 {
                return !self.is_failed();
            }
            notified.await;
        }
    }

    fn release(&self) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.settled.notify_waiters();
        }
    }
}

/// One event's share in its [`AckBatch`]. Dropped without [`Ack::ack`], it fails the batch.
#[derive(Debug, Default)]
pub struct Ack {
    batch: Option<Arc<AckBatch>>,
}

impl Ack {
    /// A share that acknowledges nothing (events made by a Rust caller or a test).
    pub fn none() -> Self {
        Self { batch: None }
    }

    /// Another share in the same batch, for a copy of the event that goes its own way.
    pub fn fork(&self) -> Ack {
        match &self.batch {
            Some(b) => b.share(),
            None => Ack::none(),
        }
    }

    /// Acknowledges: the event was delivered, or dropped by design.
    pub fn ack(mut self) {
        if let Some(b) = self.batch.take() {
            b.release();
        }
    }
}

thread_local! {
    /// Set while a transform runs under the runner's panic catch: a share dropped by that
    /// panic's unwinding is covered by the dead letter the runner sends in its place.
    static COVERED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` (which catches its own panics) with the shares its panics drop covered by a
/// dead letter the caller sends.
pub(crate) fn covered<R>(f: impl FnOnce() -> R) -> R {
    COVERED.with(|c| c.set(true));
    let r = f();
    COVERED.with(|c| c.set(false));
    r
}

impl Drop for Ack {
    fn drop(&mut self) {
        if let Some(b) = self.batch.take() {
            let covered = std::thread::panicking() && COVERED.with(|c| c.get());
            if !covered {
                b.failed.store(true, Ordering::Release);
            }
            b.release();
        }
    }
}

/// One event: a record and its structured value.
#[derive(Debug)]
pub struct Event {
    /// The record as the source read it (the value bytes stay the original ones; a sink
    /// encodes [`Event::value`]).
    pub record: Record,
    /// The decoded value, which transforms change.
    pub value: Value,
    /// The value already encoded for the one sink it goes to (done on the source's task
    /// when the transforms are chained there; `value` is then null).
    pub(crate) encoded: Option<bytes::Bytes>,
    ack: Ack,
}

impl Event {
    /// An event with its acknowledgement share.
    pub fn new(record: Record, value: Value, ack: Ack) -> Self {
        Self {
            record,
            value,
            encoded: None,
            ack,
        }
    }

    /// An event not tied to any source read (tests, Rust callers).
    pub fn detached(value: Value) -> Self {
        Self::new(Record::default(), value, Ack::none())
    }

    /// A copy that goes its own way, with its own share of the acknowledgement.
    pub fn fork(&self) -> Event {
        Event {
            record: self.record.clone(),
            value: self.value.clone(),
            encoded: self.encoded.clone(),
            ack: self.ack.fork(),
        }
    }

    /// Acknowledges the event: delivered, or dropped by design.
    pub fn ack(self) {
        self.ack.ack();
    }

    /// The event acknowledged now and carried on detached: for consumers that never hold
    /// back a commit (best-effort sinks).
    pub fn settled(mut self) -> Event {
        std::mem::take(&mut self.ack).ack();
        self
    }

    /// Another share in this event's acknowledgement, kept aside (for a dead letter should
    /// the event be lost in a panic).
    pub(crate) fn spare_ack(&self) -> Ack {
        self.ack.fork()
    }

    /// Takes the event apart; the share goes with it.
    pub fn into_parts(self) -> (Record, Value, Ack) {
        (self.record, self.value, self.ack)
    }

    /// Bytes this event holds, roughly, for queue bounds: its record plus an estimate of the
    /// decoded value (twice the record value's size).
    pub fn size(&self) -> usize {
        self.record.size()
            + 2 * self.record.value.as_ref().map_or(0, Bytes::len)
            + self.encoded.as_ref().map_or(0, Bytes::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_done_when_every_share_acked_and_failed_when_one_is_dropped() {
        let b = AckBatch::new();
        let a1 = b.share();
        let a2 = b.share();
        let a3 = a2.fork();
        assert_eq!(b.pending(), 3);
        a1.ack();
        a2.ack();
        assert!(!b.is_done());
        a3.ack();
        assert!(b.is_done());

        let b = AckBatch::new();
        let a = b.share();
        let kept = b.share();
        drop(a);
        kept.ack();
        assert_eq!(b.pending(), 0);
        assert!(b.is_failed());
        assert!(!b.is_done());
    }

    #[test]
    fn detached_events_ack_nothing() {
        let e = Event::detached(Value::from(1));
        let f = e.fork();
        drop(e);
        f.ack();
    }
}
