//! Keyed rate limiting: one small limiter state per key (client id, IP, tenant) in a sharded
//! map with a hard cap on keys and idle-key eviction, so memory stays bounded however many
//! distinct keys arrive.
//!
//! Written here rather than on a cache crate: caches with time-to-idle (moka, quick_cache)
//! enforce their capacity eventually or by weight, while this map must never hold more than
//! `max_keys`, and its hot path must be one read lock, one hash and the limiter's own atomic
//! update. `hashbrown`'s `HashTable` lets us hash a key once for both the shard and the slot.

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hash};
use std::mem::size_of;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use hashbrown::HashTable;
use parking_lot::RwLock;

use crate::clock::{Clock, MonotonicClock, Nanos, nanos};
use crate::limiter::{Algorithm, NotUntil};
use crate::metrics::Metrics;

/// Metric: keys evicted because they were idle.
pub const METRIC_EVICTED_IDLE: &str = "weir_flow_keyed_evicted_idle_total";
/// Metric: keys evicted to make room for a new key (the map was full).
pub const METRIC_EVICTED_FULL: &str = "weir_flow_keyed_evicted_full_total";
/// Metric: new keys refused because the map was full ([`WhenFull::RejectNew`]).
pub const METRIC_REJECTED: &str = "weir_flow_keyed_rejected_keys_total";

/// What happens to a new key when the map holds `max_keys` keys and none of the new key's
/// shard is idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// Evict the least recently used of the [`EVICTION_SAMPLE`] longest-held keys of the
    /// shard (the others go to the back of the line: a second chance, like the CLOCK
    /// algorithm; approximate LRU in constant time), and admit the new key. The default: a flood of new
    /// keys cannot lock out every newcomer, though it can reset an active key's state.
    EvictLeastRecent,
    /// Refuse the new key with [`KeyedError::TooManyKeys`]; existing keys keep their state.
    RejectNew,
}

/// Keys looked at to choose one to evict.
pub const EVICTION_SAMPLE: usize = 5;

/// Configuration of a [`KeyedLimiter`].
#[derive(Debug, Clone)]
pub struct KeyedConfig {
    /// Hard cap on keys held. Default 100,000.
    pub max_keys: usize,
    /// Number of shards, rounded up to a power of two. Default 64.
    pub shards: usize,
    /// A key unused this long may be evicted. Default 60 s.
    pub idle_timeout: Duration,
    /// Policy when full. Default [`WhenFull::EvictLeastRecent`].
    pub when_full: WhenFull,
}

impl Default for KeyedConfig {
    fn default() -> Self {
        Self {
            max_keys: 100_000,
            shards: 64,
            idle_timeout: Duration::from_secs(60),
            when_full: WhenFull::EvictLeastRecent,
        }
    }
}

/// A refused keyed check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyedError {
    /// The key is over its rate.
    #[error(transparent)]
    NotUntil(#[from] NotUntil),
    /// The key is new and the map is full ([`WhenFull::RejectNew`]).
    #[error("too many keys: the limiter is full")]
    TooManyKeys,
}

struct Slot<K, S> {
    key: K,
    state: S,
    last_seen: AtomicU64,
}

type Shards<K, S> = Box<[RwLock<Shard<K, S>>]>;

struct Shard<K, S> {
    table: HashTable<Slot<K, S>>,
    /// The hashes of the keys in the table, oldest first: the eviction line.
    line: VecDeque<u64>,
    last_sweep: Nanos,
}

/// A rate limiter per key, all keys sharing one [`Algorithm`] configuration and one clock.
pub struct KeyedLimiter<K, A: Algorithm, C: Clock = MonotonicClock> {
    alg: A,
    clock: C,
    shards: Shards<K, A::State>,
    shard_shift: u32,
    shard_cap: usize,
    idle: Nanos,
    when_full: WhenFull,
    hasher: foldhash::fast::RandomState,
    /// Keys held, kept beside the shards so `len` is one load.
    len: AtomicUsize,
    metrics: Option<Metrics>,
}

impl<K, A: Algorithm, C: Clock> std::fmt::Debug for KeyedLimiter<K, A, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedLimiter")
            .field("shards", &self.shards.len())
            .field("shard_cap", &self.shard_cap)
            .field("when_full", &self.when_full)
            .finish_non_exhaustive()
    }
}

impl<K: Hash + Eq + Clone, A: Algorithm> KeyedLimiter<K, A, MonotonicClock> {
    /// A keyed limiter on the real clock.
    pub fn new(alg: A, config: KeyedConfig) -> Self {
        Self::with_clock(alg, config, MonotonicClock::new())
    }
}

impl<K: Hash + Eq + Clone, A: Algorithm, C: Clock> KeyedLimiter<K, A, C> {
    /// A keyed limiter on `clock`. The cap is split evenly over the shards (each holds at
    /// most `max_keys / shards`), so the total never exceeds `max_keys`.
    pub fn with_clock(alg: A, config: KeyedConfig, clock: C) -> Self {
        let max_keys = config.max_keys.max(1);
        // Never more shards than keys, so every shard can hold at least one.
        let shards = config.shards.clamp(1, max_keys).next_power_of_two();
        let shards = if shards > max_keys {
            shards / 2
        } else {
            shards
        }
        .max(1);
        let now = clock.now();
        Self {
            alg,
            clock,
            shards: (0..shards)
                .map(|_| {
                    RwLock::new(Shard {
                        table: HashTable::new(),
                        line: VecDeque::new(),
                        last_sweep: now,
                    })
                })
                .collect(),
            shard_shift: shards.trailing_zeros(),
            shard_cap: max_keys / shards,
            idle: nanos(config.idle_timeout),
            when_full: config.when_full,
            hasher: foldhash::fast::RandomState::default(),
            len: AtomicUsize::new(0),
            metrics: None,
        }
    }

    /// Reports evictions and rejected keys to `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The clock.
    pub fn clock(&self) -> &C {
        &self.clock
    }

    #[inline]
    fn shard_of(&self, hash: u64) -> usize {
        // Bits 32.. : hashbrown uses the low bits for the bucket and the top 7 for its tags.
        if self.shard_shift == 0 {
            0
        } else {
            ((hash >> 32) & ((1 << self.shard_shift) - 1)) as usize
        }
    }

    /// Takes `n` permits for `key`.
    #[inline]
    pub fn try_acquire(&self, key: &K, n: u32) -> Result<(), KeyedError> {
        let hash = self.hasher.hash_one(key);
        let shard = &self.shards[self.shard_of(hash)];
        let now = self.clock.now();
        {
            let g = shard.read();
            if let Some(slot) = g.table.find(hash, |s| s.key == *key) {
                slot.last_seen.store(now, Ordering::Relaxed);
                return Ok(self.alg.check(&slot.state, now, n)?);
            }
        }
        self.insert_and_check(shard, hash, key, now, n)
    }

    /// How long until `key` could take `n` permits (zero for an unknown key that fits a
    /// fresh limiter).
    pub fn time_until_ready(&self, key: &K, n: u32) -> Duration {
        let hash = self.hasher.hash_one(key);
        let now = self.clock.now();
        let g = self.shards[self.shard_of(hash)].read();
        let w = match g.table.find(hash, |s| s.key == *key) {
            Some(slot) => self.alg.wait_nanos(&slot.state, now, n),
            None => self.alg.wait_nanos(&self.alg.new_state(now), now, n),
        };
        w.map_or(Duration::MAX, Duration::from_nanos)
    }

    /// Waits until `key` has `n` permits. Fails only when `n` exceeds the capacity or the key
    /// is refused for lack of room.
    pub async fn acquire(&self, key: &K, n: u32) -> Result<(), KeyedError> {
        if n > self.alg.capacity() {
            return Err(NotUntil::NEVER.into());
        }
        loop {
            match self.try_acquire(key, n) {
                Ok(()) => return Ok(()),
                Err(KeyedError::NotUntil(e)) => self.clock.sleep(e.wait).await,
                Err(e) => return Err(e),
            }
        }
    }

    #[cold]
    fn insert_and_check(
        &self,
        shard: &RwLock<Shard<K, A::State>>,
        hash: u64,
        key: &K,
        now: Nanos,
        n: u32,
    ) -> Result<(), KeyedError> {
        let mut g = shard.write();
        if let Some(slot) = g.table.find(hash, |s| s.key == *key) {
            slot.last_seen.store(now, Ordering::Relaxed);
            return Ok(self.alg.check(&slot.state, now, n)?);
        }
        if g.table.len() >= self.shard_cap {
            // First drop idle keys, at most once per half idle timeout per shard.
            if now.saturating_sub(g.last_sweep) >= self.idle / 2 {
                let removed = self.sweep(&mut g, now);
                self.count(METRIC_EVICTED_IDLE, removed);
            }
            if g.table.len() >= self.shard_cap {
                match self.when_full {
                    WhenFull::RejectNew => {
                        self.count(METRIC_REJECTED, 1);
                        return Err(KeyedError::TooManyKeys);
                    }
                    WhenFull::EvictLeastRecent => {
                        self.evict_one(&mut g);
                        self.count(METRIC_EVICTED_FULL, 1);
                    }
                }
            }
        }
        let slot = Slot {
            key: key.clone(),
            state: self.alg.new_state(now),
            last_seen: AtomicU64::new(now),
        };
        let r = self.alg.check(&slot.state, now, n);
        let hasher = &self.hasher;
        g.table
            .insert_unique(hash, slot, |s| hasher.hash_one(&s.key));
        g.line.push_back(hash);
        self.len.fetch_add(1, Ordering::Relaxed);
        Ok(r?)
    }

    fn sweep(&self, g: &mut Shard<K, A::State>, now: Nanos) -> u64 {
        g.last_sweep = now;
        let before = g.table.len();
        let idle = self.idle;
        g.table
            .retain(|s| now.saturating_sub(s.last_seen.load(Ordering::Relaxed)) < idle);
        let removed = before - g.table.len();
        self.len.fetch_sub(removed, Ordering::Relaxed);
        if removed > 0 {
            let Shard { table, line, .. } = g;
            line.retain(|&h| {
                table
                    .find(h, |s| self.hasher.hash_one(&s.key) == h)
                    .is_some()
            });
        }
        removed as u64
    }

    fn evict_one(&self, g: &mut Shard<K, A::State>) {
        let Shard { table, line, .. } = g;
        // Slots are matched by full 64-bit hash: two keys sharing one can only make the
        // eviction pick the other, which is harmless.
        let same = |h: u64| move |s: &Slot<K, A::State>| self.hasher.hash_one(&s.key) == h;
        let mut sample = [(0u64, 0u64); EVICTION_SAMPLE];
        let mut n = 0;
        while n < EVICTION_SAMPLE {
            let Some(h) = line.pop_front() else { break };
            if let Some(s) = table.find(h, same(h)) {
                sample[n] = (h, s.last_seen.load(Ordering::Relaxed));
                n += 1;
            }
        }
        let Some(victim) = (0..n).min_by_key(|&i| sample[i].1) else {
            return;
        };
        if let Ok(entry) = table.find_entry(sample[victim].0, same(sample[victim].0)) {
            entry.remove();
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
        for (i, &(h, _)) in sample[..n].iter().enumerate() {
            if i != victim {
                line.push_back(h);
            }
        }
    }

    /// Removes every key idle for at least the idle timeout; returns how many. Call it
    /// periodically (a background task) to return memory between bursts of new keys.
    pub fn evict_idle(&self) -> u64 {
        let now = self.clock.now();
        let removed = self
            .shards
            .iter()
            .map(|s| self.sweep(&mut s.write(), now))
            .sum();
        self.count(METRIC_EVICTED_IDLE, removed);
        removed
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// True when no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most keys this limiter can hold (≤ the configured `max_keys`).
    pub fn max_keys(&self) -> usize {
        self.shard_cap * self.shards.len()
    }

    /// Approximate heap bytes of the map: every table's buckets (slot plus control byte),
    /// the eviction lines and the shard locks; not memory a key owns on the heap itself (a `String`'s bytes).
    pub fn approx_bytes(&self) -> usize {
        let slot = size_of::<Slot<K, A::State>>() + 1;
        let tables: usize = self
            .shards
            .iter()
            .map(|s| {
                let g = s.read();
                g.table.capacity() * slot + g.line.capacity() * size_of::<u64>()
            })
            .sum();
        tables + self.shards.len() * size_of::<RwLock<Shard<K, A::State>>>()
    }

    fn count(&self, name: &'static str, v: u64) {
        match &self.metrics {
            Some(m) if v > 0 => m.counter(name, v),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::limiter::{Gcra, Rate};

    fn limiter(max_keys: usize, when_full: WhenFull) -> KeyedLimiter<u64, Gcra, ManualClock> {
        KeyedLimiter::with_clock(
            Gcra::new(Rate::per_second(10), 2),
            KeyedConfig {
                max_keys,
                shards: 4,
                idle_timeout: Duration::from_secs(1),
                when_full,
            },
            ManualClock::new(),
        )
    }

    #[test]
    fn keys_are_independent() {
        let l = limiter(100, WhenFull::RejectNew);
        assert!(l.try_acquire(&1, 2).is_ok());
        assert!(matches!(l.try_acquire(&1, 1), Err(KeyedError::NotUntil(_))));
        assert!(l.try_acquire(&2, 2).is_ok());
        assert_eq!(l.len(), 2);
    }

    #[test]
    fn reject_new_when_full_keeps_old_keys() {
        let l = limiter(8, WhenFull::RejectNew);
        // Offer keys until every shard is full (the shard a key lands in depends on the
        // hasher's random seed, so a fixed number of keys may leave one short).
        let mut admitted = 0;
        let mut k = 0u64;
        while l.len() < 8 {
            assert!(k < 100_000, "the limiter never filled up");
            if l.try_acquire(&k, 1).is_ok() {
                admitted += 1;
            }
            k += 1;
        }
        assert_eq!(admitted, l.len());
        for new in 1_000_000..1_000_100u64 {
            assert!(matches!(
                l.try_acquire(&new, 1),
                Err(KeyedError::TooManyKeys)
            ));
        }
        assert_eq!(l.len(), 8, "the old keys are kept");
    }

    #[test]
    fn idle_keys_are_swept_to_make_room() {
        let l = limiter(8, WhenFull::RejectNew);
        // Until every shard is full: which shard a key lands in depends on the hasher's
        // random seed, so 64 keys have left one short now and then.
        let mut k = 0u64;
        while l.len() < 8 {
            assert!(k < 100_000, "the limiter never filled up");
            let _ = l.try_acquire(&k, 1);
            k += 1;
        }
        let full = l.len();
        assert_eq!(full, 8);
        l.clock().advance(Duration::from_secs(2));
        assert_eq!(l.evict_idle(), full as u64);
        assert!(l.is_empty());
        for k in 100..108u64 {
            let _ = l.try_acquire(&k, 1);
        }
        assert!(!l.is_empty());
    }

    fn count_in_shards(l: &KeyedLimiter<u64, Gcra, ManualClock>) -> usize {
        l.shards.iter().map(|s| s.read().table.len()).sum()
    }

    #[test]
    fn len_matches_the_shards() {
        for when_full in [WhenFull::EvictLeastRecent, WhenFull::RejectNew] {
            let l = limiter(64, when_full);
            for k in 0..5000u64 {
                l.clock().advance(Duration::from_millis(1));
                let _ = l.try_acquire(&k, 1);
                assert_eq!(l.len(), count_in_shards(&l));
            }
            l.clock().advance(Duration::from_secs(2));
            l.evict_idle();
            assert_eq!((l.len(), count_in_shards(&l)), (0, 0));
        }
    }

    #[test]
    fn evict_least_recent_admits_new_keys() {
        let l = limiter(8, WhenFull::EvictLeastRecent);
        for k in 0..1000u64 {
            l.clock().advance(Duration::from_millis(1));
            assert!(l.try_acquire(&k, 1).is_ok());
            assert!(l.len() <= 8);
        }
    }
}
