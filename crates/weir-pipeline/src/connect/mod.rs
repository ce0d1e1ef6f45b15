//! Sources and sinks: weir topics through the broker, stdin/stdout, and HTTP ingest.

pub mod file;
pub mod http;
pub mod stdio;
pub mod topic;

/// Where a source is: when it last saved its position, and how far it has read in event
/// time. Kept by the source as it runs, read by [`crate::pipeline::Pipeline::components`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// When the position was last saved with everything acknowledged by then, ms since the
    /// epoch. Its age is how much a restart would read again, in time.
    pub checkpoint_ms: Option<u64>,
    /// The source's watermark: over the partitions with records left to read, the least of
    /// each one's newest record timestamp read; once every partition is caught up, the
    /// newest of all (an idle partition does not hold it back). Nothing older than it is
    /// still to come from a partition read in timestamp order.
    pub watermark_ms: Option<i64>,
}

/// A source's [`Progress`], updated as it runs (shared by its clones).
#[derive(Debug, Default)]
pub struct ProgressCell {
    checkpoint_ms: std::sync::atomic::AtomicU64,
    /// Per partition: the newest record timestamp read, and whether it is caught up.
    event_time: parking_lot::Mutex<std::collections::HashMap<u32, (i64, bool)>>,
}

impl ProgressCell {
    /// The position was saved now.
    pub fn checkpointed(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.checkpoint_ms
            .store(now.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// Partition `p` was read up to records stamped `newest` (`None`: no record in this
    /// read), and is caught up or not.
    pub fn read(&self, p: u32, newest: Option<i64>, caught_up: bool) {
        let mut m = self.event_time.lock();
        match (m.get_mut(&p), newest) {
            (Some(e), n) => {
                e.0 = e.0.max(n.unwrap_or(i64::MIN));
                e.1 = caught_up;
            }
            (None, Some(n)) => {
                m.insert(p, (n, caught_up));
            }
            (None, None) => {}
        }
    }

    /// Partition `p` is no longer read here.
    pub fn forget(&self, p: u32) {
        self.event_time.lock().remove(&p);
    }

    pub fn get(&self) -> Progress {
        let at = self
            .checkpoint_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        let m = self.event_time.lock();
        let behind = m
            .values()
            .filter(|(_, caught_up)| !caught_up)
            .map(|e| e.0)
            .min();
        Progress {
            checkpoint_ms: (at > 0).then_some(at),
            watermark_ms: behind.or_else(|| m.values().map(|e| e.0).max()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watermark_is_held_by_partitions_behind_not_by_idle_ones() {
        let p = ProgressCell::default();
        assert_eq!(p.get(), Progress::default());
        p.read(0, Some(100), false);
        p.read(1, Some(50), false);
        p.read(2, None, true);
        assert_eq!(p.get().watermark_ms, Some(50), "the least of those behind");
        p.read(1, Some(40), true);
        assert_eq!(
            p.get().watermark_ms,
            Some(100),
            "caught up: it holds nothing back, and an older record does not move it back"
        );
        p.read(0, None, true);
        assert_eq!(p.get().watermark_ms, Some(100), "all caught up: the newest");
        p.forget(0);
        assert_eq!(p.get().watermark_ms, Some(50));
        assert_eq!(p.get().checkpoint_ms, None);
        p.checkpointed();
        assert!(p.get().checkpoint_ms.is_some_and(|t| t > 1_700_000_000_000));
    }
}
