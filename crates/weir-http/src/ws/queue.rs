//! One subscription's bounded outgoing queue and its overflow policy. No I/O, no locking: the
//! connection keeps these behind its own lock.
//!
//! The queue is bounded by messages and by bytes. When a record would exceed either bound:
//! - `drop_oldest` drops the oldest queued records until it fits;
//! - `conflate` first removes every queued record with the same key (the new one supersedes
//!   them), then records a newer queued one of their key supersedes, and only then the
//!   oldest records (when more distinct keys are queued than fit);
//! - `disconnect` refuses the record: the connection is closed with a reason.
//!
//! Notices (gaps, errors) are queued in order with the records and are never dropped; they
//! count against neither bound.

use std::collections::{HashMap, VecDeque};
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
    /// Under `conflate`: queued records per key, to find superseded ones.
    per_key: HashMap<Bytes, u32>,
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
            per_key: HashMap::new(),
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
            self.forget(&item);
        }
    }

    /// Accounts for a record leaving the queue.
    fn forget(&mut self, item: &Item) {
        self.records -= 1;
        self.bytes -= item.size();
        if self.policy == Policy::Conflate
            && let Some(key) = &item.key
            && let Some(n) = self.per_key.get_mut(key)
        {
            *n -= 1;
            if *n == 0 {
                self.per_key.remove(key);
            }
        }
    }

    /// Under `conflate`, removes the oldest record that a newer queued one of its key
    /// supersedes. False when every queued key is queued once.
    fn drop_superseded(&mut self) -> bool {
        let found = self.entries.iter().position(|e| match e {
            Entry::Record(item) => item
                .key
                .as_ref()
                .is_some_and(|k| self.per_key.get(k).is_some_and(|n| *n > 1)),
            Entry::Notice(_) => false,
        });
        match found {
            Some(i) => {
                self.remove_at(i);
                true
            }
            None => false,
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
        self.push_bounded(item, true)
    }

    /// [`OutQueue::push`]; with `bounded` false the record is queued whatever the bounds
    /// (the caller bounds what it pushes so: one fetch's records into a queue that was empty).
    pub fn push_bounded(&mut self, item: Arc<Item>, bounded: bool) -> Pushed {
        let size = item.size();
        let (mut dropped, mut conflated) = (0, 0);
        if bounded && !self.fits(size) {
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
                    // Then values that a newer one of their key supersedes, before any
                    // key's latest value.
                    while !self.fits(size) && self.drop_superseded() {
                        conflated += 1;
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
        if self.policy == Policy::Conflate
            && let Some(key) = &item.key
        {
            *self.per_key.entry(key.clone()).or_insert(0) += 1;
        }
        self.entries.push_back(Entry::Record(item));
        self.unreported += dropped + conflated;
        Pushed::Queued { dropped, conflated }
    }

    /// The next entry, preceded by a count of the records lost since the last report.
    pub fn pop(&mut self) -> Option<(u64, Entry)> {
        let e = self.entries.pop_front()?;
        if let Entry::Record(item) = &e {
            self.forget(item);
        }
        Some((std::mem::take(&mut self.unreported), e))
    }

    /// Empties the queue (the connection is closing).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.records = 0;
        self.bytes = 0;
        self.per_key.clear();
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

    proptest::proptest! {
        /// Against any sequence of pushes and pops: the bounds hold, order is kept, and every
        /// record pushed is either popped or counted as lost exactly once; under `conflate`
        /// the last value of every key is never lost.
        #[test]
        fn bounded_ordered_and_nothing_lost_silently(
            policy in proptest::sample::select(vec![Policy::DropOldest, Policy::Conflate]),
            max_messages in 1usize..8,
            max_bytes in 60usize..400,
            ops in proptest::collection::vec((0u8..4, 0usize..4, 10usize..40), 1..200),
        ) {
            let mut q = OutQueue::new(policy, max_messages, max_bytes);
            let (mut pushed, mut popped, mut lost) = (0u64, Vec::new(), 0u64);
            let mut last_of_key = std::collections::HashMap::new();
            for (i, (op, key, size)) in ops.into_iter().enumerate() {
                if op == 0 {
                    if let Some((n, Entry::Record(item))) = q.pop() {
                        lost += n;
                        popped.push(item.offset);
                    }
                } else {
                    q.push(item(i as u64, &key.to_string(), size));
                    pushed += 1;
                    last_of_key.insert(key.to_string(), i as u64);
                }
                proptest::prop_assert!(q.records() <= max_messages);
                proptest::prop_assert!(q.bytes <= max_bytes);
            }
            let (n, rest) = drain(&mut q);
            lost += n;
            popped.extend(rest);
            proptest::prop_assert!(popped.windows(2).all(|w| w[0] < w[1]));
            proptest::prop_assert_eq!(popped.len() as u64 + lost, pushed);
            // Frames are at most 48 bytes here.
            if policy == Policy::Conflate && max_messages >= 4 && max_bytes >= 4 * 48 {
                // With room for a value of every key (four here) no latest value is dropped.
                for o in last_of_key.values() {
                    proptest::prop_assert!(popped.contains(o), "latest {} lost", o);
                }
            }
        }
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
