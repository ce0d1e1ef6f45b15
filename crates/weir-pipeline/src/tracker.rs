//! What a source may commit: the contiguous acknowledged watermark of one partition or file.
//!
//! A source registers each read, in order, with the position just after it. The watermark
//! moves past a read only once it and every read before it are acknowledged, so a commit
//! never passes an event still under way, however the events of later reads overtake it
//! (a fast sink, a filter that dropped them).

use std::collections::VecDeque;
use std::sync::Arc;

use crate::event::AckBatch;

/// A read whose events were dropped without acknowledgement: the source must not commit
/// past `position` (where that read began) and the pipeline reads it again after a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lost {
    pub position: u64,
}

/// The reads of one partition (or file) still under way.
#[derive(Debug, Default)]
pub struct Tracker {
    reads: VecDeque<(u64, Arc<AckBatch>)>,
    /// Position after the last read popped as acknowledged.
    acked: Option<u64>,
    /// Start of the oldest read still under way.
    start: u64,
}

impl Tracker {
    /// A tracker whose first read starts at `position`.
    pub fn new(position: u64) -> Self {
        Self {
            reads: VecDeque::new(),
            acked: None,
            start: position,
        }
    }

    /// Registers a read that ends just before `end` (the next position to read).
    pub fn push(&mut self, end: u64, batch: Arc<AckBatch>) {
        self.reads.push_back((end, batch));
    }

    /// Pops the acknowledged reads at the front and returns the position after the last one
    /// (the position to commit), if it moved.
    pub fn advance(&mut self) -> Result<Option<u64>, Lost> {
        let mut moved = None;
        while let Some((end, batch)) = self.reads.front() {
            if batch.is_failed() {
                return Err(Lost {
                    position: self.start,
                });
            }
            if !batch.is_done() {
                break;
            }
            let end = *end;
            self.reads.pop_front();
            self.start = end;
            self.acked = Some(end);
            moved = Some(end);
        }
        Ok(moved)
    }

    /// True when every registered read was acknowledged.
    pub fn is_idle(&self) -> bool {
        self.reads.is_empty()
    }

    /// Reads still under way.
    pub fn in_flight(&self) -> usize {
        self.reads.len()
    }

    /// The last watermark [`Tracker::advance`] returned.
    pub fn acked(&self) -> Option<u64> {
        self.acked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watermark_waits_for_the_oldest_read() {
        let mut t = Tracker::new(0);
        let (b1, b2, b3) = (AckBatch::new(), AckBatch::new(), AckBatch::new());
        let e1 = b1.share();
        let e2 = b2.share();
        let e3 = b3.share();
        t.push(10, b1);
        t.push(20, b2);
        t.push(30, b3);
        e3.ack();
        e2.ack();
        assert_eq!(t.advance(), Ok(None));
        e1.ack();
        assert_eq!(t.advance(), Ok(Some(30)));
        assert!(t.is_idle());
        assert_eq!(t.advance(), Ok(None));
    }

    #[test]
    fn a_lost_event_stops_the_watermark_where_its_read_began() {
        let mut t = Tracker::new(5);
        let (b1, b2) = (AckBatch::new(), AckBatch::new());
        let e1 = b1.share();
        let e2 = b2.share();
        t.push(10, b1);
        t.push(20, b2);
        e1.ack();
        drop(e2);
        assert_eq!(t.advance(), Err(Lost { position: 10 }));
    }

    proptest::proptest! {
        /// Whatever order the events are acknowledged in, the watermark is always the end of
        /// the longest fully acknowledged prefix of reads.
        #[test]
        fn the_watermark_is_the_longest_acknowledged_prefix(
            sizes in proptest::collection::vec(1usize..4, 1..20),
            order in proptest::collection::vec(0usize..1000, 0..80),
        ) {
            let mut t = Tracker::new(0);
            let mut shares = Vec::new();
            let mut ends = Vec::new();
            let mut end = 0u64;
            for (read, n) in sizes.iter().enumerate() {
                let b = AckBatch::new();
                for _ in 0..*n {
                    shares.push((read, Some(b.share())));
                }
                end += *n as u64;
                ends.push(end);
                t.push(end, b);
            }
            let mut acked = vec![0usize; sizes.len()];
            for i in order {
                let i = i % shares.len();
                if let Some(a) = shares[i].1.take() {
                    a.ack();
                    acked[shares[i].0] += 1;
                }
                let full = acked.iter().zip(&sizes).take_while(|(a, n)| *a == *n).count();
                let expect = if full == 0 { None } else { Some(ends[full - 1]) };
                t.advance().unwrap();
                proptest::prop_assert_eq!(t.acked(), expect);
            }
            for (_, a) in shares.iter_mut() {
                if let Some(a) = a.take() { a.ack(); }
            }
        }
    }
}
