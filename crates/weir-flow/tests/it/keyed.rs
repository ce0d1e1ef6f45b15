//! The keyed limiter: each key gets its rate, and memory stays bounded under a million
//! distinct keys.

use std::time::{Duration, Instant};

use weir_flow::keyed::{KeyedConfig, KeyedError, KeyedLimiter, WhenFull};
use weir_flow::{Clock, Gcra, ManualClock, MemoryMetrics, Rate, TokenBucket};

#[test]
fn each_key_gets_its_rate_over_ten_seconds() {
    let l = KeyedLimiter::with_clock(
        Gcra::new(Rate::per_second(100), 10),
        KeyedConfig::default(),
        ManualClock::new(),
    );
    let keys = ["alice", "bob", "carol"];
    let mut admitted = [0u64; 3];
    let end = l.clock().now() + 10_000_000_000;
    while l.clock().now() < end {
        for (i, k) in keys.iter().enumerate() {
            while l.try_acquire(k, 1).is_ok() {
                admitted[i] += 1;
            }
        }
        l.clock().advance(Duration::from_micros(250));
    }
    for (k, a) in keys.iter().zip(admitted) {
        assert!((950..=1050).contains(&a), "{k}: {a}");
    }
}

fn million_keys(when_full: WhenFull) {
    let m = MemoryMetrics::new();
    let cap = 100_000;
    let l = KeyedLimiter::with_clock(
        TokenBucket::new(Rate::per_second(10), 10),
        KeyedConfig {
            max_keys: cap,
            shards: 64,
            idle_timeout: Duration::from_secs(60),
            when_full,
        },
        ManualClock::new(),
    )
    .with_metrics(m.clone());
    let start = Instant::now();
    let mut refused_keys = 0u64;
    let mut peak_bytes = 0;
    for k in 0..1_000_000u64 {
        l.clock().advance(Duration::from_micros(1));
        match l.try_acquire(&k, 1) {
            Ok(()) => {}
            Err(KeyedError::TooManyKeys) => refused_keys += 1,
            Err(e) => panic!("{e}"),
        }
        assert!(l.len() <= cap, "{} keys after key {k}", l.len());
        if k % 1000 == 0 {
            peak_bytes = peak_bytes.max(l.approx_bytes());
        }
    }
    assert!(l.len() <= cap);
    assert!(
        l.len() >= cap * 9 / 10,
        "the cap should be nearly used: {}",
        l.len()
    );
    let bytes = l.approx_bytes();
    println!(
        "{when_full:?}: {} keys, about {} bytes ({} per key), peak {peak_bytes}, {:?}",
        l.len(),
        bytes,
        bytes / l.len(),
        start.elapsed()
    );
    // Each slot is key + state + last-seen, plus 8 bytes in the eviction line. Under churn
    // a table can double once (hashbrown grows instead of rehashing in place when deleted
    // slots run out and it is more than half full), so the bound is twice the packed size:
    // about 20 MiB for 100k keys of this limiter, whatever the number of distinct keys.
    assert!(peak_bytes < 20 << 20, "{peak_bytes} bytes");
    match when_full {
        WhenFull::EvictLeastRecent => {
            assert_eq!(refused_keys, 0);
            assert!(m.counter_value("weir_flow_keyed_evicted_full_total") >= 899_000);
        }
        WhenFull::RejectNew => {
            assert_eq!(refused_keys as usize + l.len(), 1_000_000);
            assert_eq!(
                m.counter_value("weir_flow_keyed_rejected_keys_total"),
                refused_keys
            );
        }
    }
    // Idle keys go away.
    l.clock().advance(Duration::from_secs(61));
    l.evict_idle();
    assert!(l.is_empty());
}

#[test]
fn a_million_keys_stay_under_the_cap_evicting() {
    million_keys(WhenFull::EvictLeastRecent);
}

#[test]
fn a_million_keys_stay_under_the_cap_rejecting() {
    million_keys(WhenFull::RejectNew);
}

#[test]
fn active_keys_survive_a_flood_of_new_ones() {
    let l = KeyedLimiter::with_clock(
        Gcra::new(Rate::per_second(1), 5),
        KeyedConfig {
            max_keys: 1024,
            shards: 16,
            idle_timeout: Duration::from_secs(60),
            when_full: WhenFull::EvictLeastRecent,
        },
        ManualClock::new(),
    );
    // A hot key spends its burst...
    for _ in 0..5 {
        l.try_acquire(&u64::MAX, 1).unwrap();
    }
    // ...then a flood of new keys arrives while the hot key keeps being used.
    for k in 0..100_000u64 {
        l.clock().advance(Duration::from_micros(1));
        let _ = l.try_acquire(&k, 1);
        if k % 16 == 0 {
            assert!(
                l.try_acquire(&u64::MAX, 1).is_err(),
                "hot key was reset at {k}"
            );
        }
    }
}

#[tokio::test]
async fn keyed_acquire_waits_and_time_until_ready_agrees() {
    let l = KeyedLimiter::with_clock(
        Gcra::new(Rate::per_second(10), 2),
        KeyedConfig::default(),
        ManualClock::new(),
    );
    assert_eq!(l.time_until_ready(&"new", 2), Duration::ZERO);
    l.acquire(&"a", 2).await.unwrap();
    assert_eq!(l.time_until_ready(&"a", 1), Duration::from_millis(100));
    let before = l.clock().now();
    l.acquire(&"a", 1).await.unwrap();
    assert_eq!(l.clock().now() - before, 100_000_000);
    assert!(matches!(
        l.acquire(&"a", 3).await,
        Err(KeyedError::NotUntil(e)) if e.wait == Duration::MAX
    ));
}
