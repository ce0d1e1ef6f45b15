//! One subscription's bounded outgoing queue and its overflow policy. No I/O, no locking: the
//! connection keeps these behind its own lock.
//!
//! The queue is bounded by messages and by bytes. When a record would exceed either bound:
//! - `drop_oldest` drops the oldest queued records until it fits;
//! - `conflate` first removes every queued record with the same key (the new one supersedes
//!   them), then drops the oldest records if it still does not fit;
//! - `disconnect` refuses the record: the connection is closed with a reason.
//!
//! Notices (gaps, errors) are queued in order with the records and are never dropped; they
//! count against neither bound.

use std::collections::VecDeque;
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use serde::Deserialize;

/// What a subscription does when its client falls behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    DropOldest,
    /// Keep only the latest value per key (the default).
    #[default]
    Conflate,
    Disconnect,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::DropOldest => "drop_oldest",
            Policy::Conflate => "conflate",
            Policy::Disconnect => "disconnect",
        }
    }
}

/// One record, serialized once and shared by every subscriber it goes to.
#[derive(Debug)]
pub struct Item {
    pub offset: u64,
    pub key: Option<Bytes>,
    /// The whole frame, ready to send.
    pub frame: Utf8Bytes,
}

impl Item {
    pub fn size(&self) -> usize {
        self.frame.len()
    }
}

/// A queued message.
#[derive(Debug, Clone)]
pub enum Entry {
    Record(Arc<Item>),
    Notice(Utf8Bytes),
}

/// What [`OutQueue::push`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued; this many older records were dropped (`drop_oldest`, or `conflate` when the
    /// queue held too many distinct keys) and this many superseded by a newer value.
    Queued { dropped: u64, conflated: u64 },
    /// Not queued: the policy is `disconnect` and the queue is full.
    Overflow,
}

#[derive(Debug)]
pub struct OutQueue {
    entries: VecDeque<Entry>,
    records: usize,
    bytes: usize,
    max_messages: usize,
    max_bytes: usize,
    pub policy: Policy,
    /// Records lost to the policy since the client was last told.
    unreported: u64,
}

impl OutQueue {
    pub fn new(policy: Policy, max_messages: usize, max_bytes: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            records: 0,
            bytes: 0,
            max_messages: max_messages.max(1),
            max_bytes: max_bytes.max(1),
            policy,
            unreported: 0,
        }
    }

    /// Records queued.
    pub fn records(&self) -> usize {
        self.records
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Room for at least half the bounds (for paced replays, which wait rather than drop).
    pub fn has_room(&self) -> bool {
        self.records * 2 < self.max_messages && self.bytes * 2 < self.max_bytes
    }

    fn fits(&self, size: usize) -> bool {
        self.records < self.max_messages && self.bytes + size <= self.max_bytes
    }

    pub fn notice(&mut self, text: Utf8Bytes) {
        self.entries.push_back(Entry::Notice(text));
    }

    fn remove_at(&mut self, i: usize) {
        if let Some(Entry::Record(item)) = self.entries.remove(i) {
            self.records -= 1;
            self.bytes -= item.size();
        }
    }

    fn drop_oldest_record(&mut self) -> bool {
        match self
            .entries
            .iter()
            .position(|e| matches!(e, Entry::Record(_)))
        {
            Some(i) => {
                self.remove_at(i);
                true
            }
            None => false,
        }
    }

    pub fn push(&mut self, item: Arc<Item>) -> Pushed {
        let size = item.size();
        let (mut dropped, mut conflated) = (0, 0);
        if !self.fits(size) {
            match self.policy {
                Policy::Disconnect => return Pushed::Overflow,
                Policy::Conflate => {
                    if let Some(key) = &item.key {
                        let before = self.records;
                        let mut i = 0;
                        while i < self.entries.len() {
                            match &self.entries[i] {
                                Entry::Record(old) if old.key.as_ref() == Some(key) => {
                                    self.remove_at(i)
                                }
                                _ => i += 1,
                            }
                        }
                        conflated = (before - self.records) as u64;
                    }
                }
                Policy::DropOldest => {}
            }
            while !self.fits(size) && self.drop_oldest_record() {
                dropped += 1;
            }
        }
        self.records += 1;
        self.bytes += size;
        self.entries.push_back(Entry::Record(item));
        self.unreported += dropped + conflated;
        Pushed::Queued { dropped, conflated }
    }

    /// The next entry, preceded by a count of the records lost since the last report.
    pub fn pop(&mut self) -> Option<(u64, Entry)> {
        let e = self.entries.pop_front()?;
        if let Entry::Record(item) = &e {
            self.records -= 1;
            self.bytes -= item.size();
        }
        Some((std::mem::take(&mut self.unreported), e))
    }

    /// Empties the queue (the connection is closing).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.records = 0;
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(offset: u64, key: &str, size: usize) -> Arc<Item> {
        let text = format!("{key}:{offset}:{}", "x".repeat(size.saturating_sub(8)));
        Arc::new(Item {
            offset,
            key: Some(Bytes::copy_from_slice(key.as_bytes())),
            frame: Utf8Bytes::from(text),
        })
    }

    fn drain(q: &mut OutQueue) -> (u64, Vec<u64>) {
        let mut lost = 0;
        let mut offsets = Vec::new();
        while let Some((n, e)) = q.pop() {
            lost += n;
            if let Entry::Record(i) = e {
                offsets.push(i.offset);
            }
        }
        (lost, offsets)
    }

    #[test]
    fn drop_oldest_keeps_the_newest_and_counts() {
        let mut q = OutQueue::new(Policy::DropOldest, 3, 1 << 20);
        for o in 0..10 {
            q.push(item(o, "k", 10));
        }
        assert_eq!(drain(&mut q), (7, vec![7, 8, 9]));
    }

    #[test]
    fn conflate_keeps_the_latest_value_per_key() {
        let mut q = OutQueue::new(Policy::Conflate, 4, 1 << 20);
        for o in 0..100 {
            let key = ["a", "b", "c"][o as usize % 3];
            q.push(item(o, key, 10));
        }
        let (lost, offsets) = drain(&mut q);
        // Under pressure each new value supersedes the queued ones of its key.
        assert_eq!(lost, 100 - offsets.len() as u64);
        assert!(offsets.ends_with(&[97, 98, 99]), "{offsets:?}");
        // Nothing is conflated while there is room.
        let mut q = OutQueue::new(Policy::Conflate, 100, 1 << 20);
        for o in 0..10 {
            q.push(item(o, "a", 10));
        }
        assert_eq!(drain(&mut q), (0, (0..10).collect()));
    }

    #[test]
    fn conflate_with_distinct_keys_still_bounds_the_queue() {
        let mut q = OutQueue::new(Policy::Conflate, 2, 1 << 20);
        for o in 0..5 {
            q.push(item(o, &o.to_string(), 10));
        }
        assert_eq!(drain(&mut q), (3, vec![3, 4]));
    }

    #[test]
    fn byte_bound_and_disconnect() {
        let mut q = OutQueue::new(Policy::Disconnect, 100, 50);
        assert!(matches!(q.push(item(0, "k", 30)), Pushed::Queued { .. }));
        assert_eq!(q.push(item(1, "k", 30)), Pushed::Overflow);
        let mut q = OutQueue::new(Policy::DropOldest, 100, 50);
        q.push(item(0, "k", 30));
        q.push(item(1, "k", 30));
        assert_eq!(drain(&mut q), (1, vec![1]));
    }

    #[test]
    fn notices_keep_their_place_and_are_never_dropped() {
        let mut q = OutQueue::new(Policy::DropOldest, 1, 1 << 20);
        q.notice(Utf8Bytes::from_static("gap"));
        q.push(item(5, "k", 10));
        q.push(item(6, "k", 10));
        // The loss is reported with the next entry out, whatever it is.
        assert!(matches!(q.pop(), Some((1, Entry::Notice(_)))));
        assert!(matches!(q.pop(), Some((0, Entry::Record(i))) if i.offset == 6));
        assert!(q.pop().is_none());
    }
}
