//! The hot tail: the newest committed batches, kept in memory so that tailing readers are
//! served without a system call.

use std::collections::VecDeque;

use bytes::Bytes;

#[derive(Debug)]
struct HotBatch {
    base: u64,
    next: u64,
    bytes: Bytes,
}

/// Newest batches, bounded by total bytes.
#[derive(Debug)]
pub(crate) struct HotTail {
    batches: VecDeque<HotBatch>,
    bytes: usize,
    cap: usize,
}

impl HotTail {
    pub fn new(cap: usize) -> Self {
        Self {
            batches: VecDeque::new(),
            bytes: 0,
            cap,
        }
    }

    /// Adds the next batch (offsets `[base, next)`), evicting the oldest beyond the cap.
    pub fn push(&mut self, base: u64, next: u64, bytes: Bytes) {
        if self.cap == 0 {
            return;
        }
        // A gap (after a truncation the caller did not report) would serve wrong data: reset.
        if self.batches.back().is_some_and(|b| b.next != base) {
            self.clear();
        }
        self.bytes += bytes.len();
        self.batches.push_back(HotBatch { base, next, bytes });
        while self.bytes > self.cap {
            match self.batches.pop_front() {
                Some(b) => self.bytes -= b.bytes.len(),
                None => break,
            }
        }
    }

    /// Changes the cap, dropping the oldest batches beyond the new one at once.
    pub fn set_cap(&mut self, cap: usize) {
        self.cap = cap;
        while self.bytes > self.cap {
            match self.batches.pop_front() {
                Some(b) => self.bytes -= b.bytes.len(),
                None => break,
            }
        }
    }

    /// Bytes of batches held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Drops the batches that start before `offset` (a batch boundary): compaction rewrote
    /// them on disk, and readers should not be served the older versions from here.
    pub fn drop_before(&mut self, offset: u64) {
        while self.batches.front().is_some_and(|b| b.base < offset) {
            if let Some(b) = self.batches.pop_front() {
                self.bytes -= b.bytes.len();
            }
        }
    }

    pub fn clear(&mut self) {
        self.batches.clear();
        self.bytes = 0;
    }

    /// Whole batches from the one containing `offset`, up to `max_bytes` (at least one batch).
    /// `None` when `offset` is older than the hot tail.
    pub fn read(&self, offset: u64, max_bytes: usize) -> Option<Vec<Bytes>> {
        let first = self.batches.front()?;
        if offset < first.base {
            return None;
        }
        let start = self.batches.partition_point(|b| b.next <= offset);
        if start == self.batches.len() {
            return None;
        }
        let mut out = Vec::new();
        let mut total = 0;
        for b in self.batches.range(start..) {
            if !out.is_empty() && total + b.bytes.len() > max_bytes {
                break;
            }
            total += b.bytes.len();
            out.push(b.bytes.clone());
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_by_bytes_and_serves_whole_batches() {
        let mut hot = HotTail::new(30);
        for i in 0..5u64 {
            hot.push(i * 10, i * 10 + 10, Bytes::from(vec![i as u8; 10]));
        }
        assert!(hot.read(15, 100).is_none(), "evicted");
        let got = hot.read(25, 15).unwrap();
        assert_eq!(
            got.len(),
            1,
            "one whole batch even though max_bytes allows 1.5"
        );
        assert_eq!(got[0][0], 2);
        let got = hot.read(20, 1).unwrap();
        assert_eq!(got.len(), 1, "at least one batch");
        assert_eq!(hot.read(41, 1000).unwrap().len(), 1);
        assert!(hot.read(50, 1000).is_none());
        // A gap means something upstream truncated: the tail resets rather than serve it.
        hot.push(70, 80, Bytes::from(vec![7; 10]));
        assert!(hot.read(41, 1000).is_none());
        assert_eq!(hot.read(70, 1000).unwrap().len(), 1);
    }

    #[test]
    fn a_smaller_cap_drops_the_oldest_at_once_and_bounds_what_follows() {
        let mut hot = HotTail::new(100);
        for i in 0..10u64 {
            hot.push(i * 10, i * 10 + 10, Bytes::from(vec![i as u8; 10]));
        }
        assert_eq!(hot.bytes(), 100);
        hot.set_cap(25);
        assert_eq!(hot.bytes(), 20, "the two newest batches stay");
        assert!(hot.read(79, 1000).is_none());
        assert_eq!(hot.read(80, 1000).unwrap().len(), 2);
        hot.push(100, 110, Bytes::from(vec![10; 10]));
        assert_eq!(hot.bytes(), 20);
        hot.set_cap(0);
        assert_eq!(hot.bytes(), 0);
        assert!(hot.read(100, 1000).is_none());
    }
}
