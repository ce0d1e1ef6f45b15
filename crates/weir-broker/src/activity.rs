//! What each front door moves, counted as it happens, for the web console: connections open,
//! records and bytes produced through the door, bytes it delivered (fetch answers and
//! pushes). Each count is one relaxed atomic add on a path that already does far more; the
//! console reads them once a second and turns them into rates.
//!
//! Prometheus has the same story in `/metrics`, but the console is not a scraper: it reads
//! these directly, so its cost does not grow with the number of metric series.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Instant, SystemTime};

/// A front door.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    Native,
    Kafka,
    Http,
}

impl Door {
    pub const ALL: [Door; 3] = [Door::Native, Door::Kafka, Door::Http];

    pub fn name(self) -> &'static str {
        match self {
            Door::Native => "native",
            Door::Kafka => "kafka",
            Door::Http => "http",
        }
    }

    /// The door of a name [`Door::name`] gives.
    pub fn from_name(name: &str) -> Option<Door> {
        Door::ALL.into_iter().find(|d| d.name() == name)
    }
}

/// One door's counters.
#[derive(Debug, Default)]
pub struct DoorCounters {
    opened: AtomicU64,
    closed: AtomicU64,
    records_in: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

/// A reading of [`DoorCounters`]; totals since the server started, but `connections`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct DoorReading {
    pub connections: u64,
    pub records_in: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

impl DoorCounters {
    pub fn opened(&self) {
        self.opened.fetch_add(1, Relaxed);
    }

    pub fn closed(&self) {
        self.closed.fetch_add(1, Relaxed);
    }

    /// A produce written: `records` records in `bytes` bytes of batches.
    pub fn produced(&self, records: u64, bytes: u64) {
        self.records_in.fetch_add(records, Relaxed);
        self.bytes_in.fetch_add(bytes, Relaxed);
    }

    /// Record bytes sent to a client (a fetch answer, a push).
    pub fn delivered(&self, bytes: u64) {
        self.bytes_out.fetch_add(bytes, Relaxed);
    }

    pub fn read(&self) -> DoorReading {
        // Closed first: a connection counted closed is always counted opened too.
        let closed = self.closed.load(Relaxed);
        DoorReading {
            connections: self.opened.load(Relaxed).saturating_sub(closed),
            records_in: self.records_in.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
        }
    }
}

/// What a native push subscriber that falls behind gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushPolicy {
    /// Nothing is sent past the credit the subscriber granted: nothing is dropped.
    Credit,
    /// A bounded queue; the oldest records go, and the subscriber is told which.
    DropOldest,
    /// A bounded queue; the subscription ends when it overflows.
    Disconnect,
}

impl PushPolicy {
    pub const ALL: [PushPolicy; 3] = [
        PushPolicy::Credit,
        PushPolicy::DropOldest,
        PushPolicy::Disconnect,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PushPolicy::Credit => "credit",
            PushPolicy::DropOldest => "drop_oldest",
            PushPolicy::Disconnect => "disconnect",
        }
    }
}

/// The native door's push subscriptions, by policy.
#[derive(Debug, Default)]
pub struct PushCounters {
    opened: [AtomicU64; 3],
    closed: [AtomicU64; 3],
    dropped: [AtomicU64; 3],
    slow_ends: AtomicU64,
}

/// One policy's figures in a [`PushReading`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PushPolicyReading {
    pub policy: &'static str,
    /// Open now.
    pub open: u64,
    /// Records dropped since the server started.
    pub dropped: u64,
}

/// A reading of [`PushCounters`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PushReading {
    pub policies: Vec<PushPolicyReading>,
    /// Subscriptions ended because their queue overflowed (policy `disconnect`).
    pub slow_ends: u64,
}

/// An open subscription, counted until dropped.
#[derive(Debug)]
pub struct PushOpen {
    counters: Arc<PushCounters>,
    policy: PushPolicy,
}

impl Drop for PushOpen {
    fn drop(&mut self) {
        self.counters.closed[self.policy as usize].fetch_add(1, Relaxed);
    }
}

impl PushCounters {
    /// A subscription opened; it counts as open while the guard lives.
    pub fn opened(self: &Arc<Self>, policy: PushPolicy) -> PushOpen {
        self.opened[policy as usize].fetch_add(1, Relaxed);
        PushOpen {
            counters: self.clone(),
            policy,
        }
    }

    /// `records` records dropped from a subscriber's queue.
    pub fn dropped(&self, policy: PushPolicy, records: u64) {
        self.dropped[policy as usize].fetch_add(records, Relaxed);
    }

    /// A subscription ended because its queue overflowed.
    pub fn slow_end(&self) {
        self.slow_ends.fetch_add(1, Relaxed);
    }

    pub fn read(&self) -> PushReading {
        let policies = PushPolicy::ALL
            .iter()
            .map(|&p| {
                let i = p as usize;
                let closed = self.closed[i].load(Relaxed);
                PushPolicyReading {
                    policy: p.name(),
                    open: self.opened[i].load(Relaxed).saturating_sub(closed),
                    dropped: self.dropped[i].load(Relaxed),
                }
            })
            .collect();
        PushReading {
            policies,
            slow_ends: self.slow_ends.load(Relaxed),
        }
    }
}

/// Every door's counters, and when the server started.
#[derive(Debug)]
pub struct Activity {
    doors: [Arc<DoorCounters>; 3],
    push: Arc<PushCounters>,
    started: Instant,
    started_at: SystemTime,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            doors: Default::default(),
            push: Default::default(),
            started: Instant::now(),
            started_at: SystemTime::now(),
        }
    }
}

impl Activity {
    pub fn door(&self, door: Door) -> &Arc<DoorCounters> {
        &self.doors[door as usize]
    }

    /// The native door's push subscriptions.
    pub fn push(&self) -> &Arc<PushCounters> {
        &self.push
    }

    /// Time since the broker opened.
    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// When the broker opened, by the wall clock.
    pub fn started_at(&self) -> SystemTime {
        self.started_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_door_counts_apart_and_connections_are_open_ones() {
        let a = Activity::default();
        let native = a.door(Door::Native);
        native.opened();
        native.opened();
        native.closed();
        native.produced(3, 300);
        native.delivered(50);
        a.door(Door::Kafka).produced(1, 10);
        assert_eq!(
            a.door(Door::Native).read(),
            DoorReading {
                connections: 1,
                records_in: 3,
                bytes_in: 300,
                bytes_out: 50
            }
        );
        assert_eq!(a.door(Door::Kafka).read().records_in, 1);
        assert_eq!(a.door(Door::Http).read(), DoorReading::default());
        for d in Door::ALL {
            assert_eq!(Door::from_name(d.name()), Some(d));
        }
        assert_eq!(Door::from_name("ws"), None);
    }

    #[test]
    fn push_subscriptions_count_as_open_while_their_guard_lives() {
        let a = Activity::default();
        let credit = a.push().opened(PushPolicy::Credit);
        let queued = a.push().opened(PushPolicy::DropOldest);
        let _other = a.push().opened(PushPolicy::DropOldest);
        a.push().dropped(PushPolicy::DropOldest, 7);
        a.push().slow_end();
        let open = |r: &PushReading, p: PushPolicy| r.policies[p as usize].open;
        let r = a.push().read();
        assert_eq!(
            (
                open(&r, PushPolicy::Credit),
                open(&r, PushPolicy::DropOldest)
            ),
            (1, 2)
        );
        assert_eq!(r.policies[PushPolicy::DropOldest as usize].dropped, 7);
        assert_eq!(
            r.policies[PushPolicy::DropOldest as usize].policy,
            "drop_oldest"
        );
        assert_eq!(r.slow_ends, 1);
        drop((credit, queued));
        let r = a.push().read();
        assert_eq!(
            (
                open(&r, PushPolicy::Credit),
                open(&r, PushPolicy::DropOldest)
            ),
            (0, 1)
        );
        assert_eq!(open(&r, PushPolicy::Disconnect), 0);
    }
}
