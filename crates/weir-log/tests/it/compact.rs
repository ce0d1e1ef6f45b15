//! Compaction against a model: what a log reads after passes (and crashes in the middle of
//! them) is always a subsequence of what was appended that keeps the latest record of every
//! key and everything from the clean point on.

use crate::common::DIR;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;
use weir_batch::{BatchBuilder, Batches, RecordSpec, Records};
use weir_log::{CompactOptions, CrashMode, Durability, FaultKind, Log, LogConfig, MemStorage};

/// One record as appended: key (if any) and value (`None`: a tombstone).
type Rec = (Option<Vec<u8>>, Option<Vec<u8>>);

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 2 * 1024,
        index_interval_bytes: 128,
        max_batch_bytes: 2 * 1024,
        durability: Durability::Always,
        hot_tail_bytes: 512,
        checkpoint_interval_bytes: 1024,
        retention_age: None,
        ..LogConfig::default()
    }
}

fn opts(now_ms: i64, key_map_bytes: usize) -> CompactOptions {
    CompactOptions {
        now_ms,
        delete_retention_ms: 1_000,
        min_lag_ms: 0,
        key_map_bytes,
    }
}

fn open(storage: &MemStorage) -> Log {
    Log::open_with(Arc::new(storage.clone()), Path::new(DIR), config()).expect("open")
}

fn append(log: &Log, recs: &[Rec], ts: i64) {
    let mut b = BatchBuilder::new(ts);
    for (k, v) in recs {
        b.push(RecordSpec {
            key: k.as_deref(),
            value: v.as_deref(),
            ..RecordSpec::default()
        });
    }
    log.append(b.build()).expect("append");
}

/// Every record the log reads, by offset, moving on by each batch's end (as Kafka clients do
/// on compacted topics, where a batch's last records may be gone).
fn read_all(log: &Log) -> Vec<(u64, Rec)> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    while offset < log.high_watermark() {
        let r = log.read(offset, 16 * 1024).expect("read");
        assert!(
            !r.is_empty(),
            "nothing read at {offset} below the high watermark"
        );
        for chunk in &r.chunks {
            for b in Batches::new(chunk) {
                let (h, bytes) = b.expect("the log served a damaged batch");
                let (h2, section) = weir_batch::payload(bytes).unwrap();
                for rec in Records::with_payload(h2, &section) {
                    let rec = rec.unwrap();
                    if rec.offset as u64 >= offset {
                        out.push((
                            rec.offset as u64,
                            (rec.key.map(<[u8]>::to_vec), rec.value.map(<[u8]>::to_vec)),
                        ));
                    }
                }
                offset = offset.max(h.next_offset() as u64);
            }
        }
    }
    out
}

/// What must hold of `got` (a log's content) given everything appended (`all`, by offset):
/// each record read is the one appended at its offset; the last record of every key is there
/// unless it is a tombstone; keyless records and everything from `kept_from` on are there.
fn check(got: &[(u64, Rec)], all: &[Rec], kept_from: u64) -> Result<(), TestCaseError> {
    let mut last: HashMap<&[u8], u64> = HashMap::new();
    for (o, (k, _)) in all.iter().enumerate() {
        if let Some(k) = k {
            last.insert(k, o as u64);
        }
    }
    let present: HashSet<u64> = got.iter().map(|(o, _)| *o).collect();
    let mut prev = None;
    for (o, r) in got {
        prop_assert!(prev < Some(*o), "offsets go up");
        prev = Some(*o);
        prop_assert_eq!(&all[*o as usize], r, "offset {} changed", o);
    }
    for (o, (k, v)) in all.iter().enumerate() {
        let o = o as u64;
        let must = match k {
            None => true,
            Some(k) => o >= kept_from || (last[k.as_slice()] == o && v.is_some()),
        };
        prop_assert!(!must || present.contains(&o), "offset {} is gone", o);
    }
    Ok(())
}

/// Below the clean point each key appears at most once.
fn check_compacted(got: &[(u64, Rec)], clean_to: u64) -> Result<(), TestCaseError> {
    let mut seen = HashSet::new();
    for (o, (k, _)) in got {
        if *o < clean_to
            && let Some(k) = k
        {
            prop_assert!(
                seen.insert(k.clone()),
                "key {:?} twice below {}",
                k,
                clean_to
            );
        }
    }
    Ok(())
}

fn batches() -> impl Strategy<Value = Vec<Vec<Rec>>> {
    let rec = (
        prop::option::weighted(0.95, 0u8..12),
        prop::option::weighted(0.85, prop::collection::vec(any::<u8>(), 0..60)),
    )
        .prop_map(|(k, v)| (k.map(|k| vec![b'k', k]), v));
    prop::collection::vec(prop::collection::vec(rec, 1..8), 10..60)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Passes between appends, some with a small key map, keep the model's properties, and
    /// survive restarts.
    #[test]
    fn passes_keep_the_latest_of_each_key(
        input in batches(),
        every in 3usize..12,
        small_map in any::<bool>(),
    ) {
        let storage = MemStorage::new();
        let mut log = open(&storage);
        let mut all: Vec<Rec> = Vec::new();
        let mut kept_from = 0;
        for (i, b) in input.iter().enumerate() {
            let ts = i as i64 * 100;
            append(&log, b, ts);
            all.extend(b.iter().cloned());
            if i % every == every - 1 {
                let map = if small_map && i % 2 == 0 { 5 * 32 } else { 1 << 20 };
                let r = log.compact(&opts(ts, map), &mut |_| {}).unwrap();
                kept_from = kept_from.max(r.clean_to);
                let got = read_all(&log);
                check(&got, &all, kept_from)?;
                if !small_map {
                    check_compacted(&got, r.clean_to)?;
                }
            }
            if i % 17 == 16 {
                log.close().unwrap();
                log = open(&storage);
                check(&read_all(&log), &all, kept_from)?;
            }
        }
    }
}

/// A log of `n` batches over a few keys, with a tombstone, rolled over several segments.
fn populated(storage: &MemStorage) -> (Log, Vec<Rec>) {
    let log = open(storage);
    let mut all = Vec::new();
    for i in 0..60u32 {
        let mut b: Vec<Rec> = (0..3u32)
            .map(|j| {
                let k = vec![b'k', ((i * 3 + j) % 7) as u8];
                (Some(k), Some(vec![i as u8; 40]))
            })
            .collect();
        if i == 20 {
            b.push((Some(vec![b'k', 3]), None));
        }
        if i == 30 {
            b.push((None, Some(b"keyless".to_vec())));
        }
        append(&log, &b, i64::from(i) * 10);
        all.extend(b);
    }
    (log, all)
}

#[test]
fn a_pass_shrinks_the_log_and_a_second_one_drops_old_tombstones() {
    let storage = MemStorage::new();
    let (log, all) = populated(&storage);
    let before = log.size_bytes();
    let segments = log.segment_count();
    assert!(segments > 3, "{segments} segments");
    let due = log.compaction_state(1_000, 0).unwrap();
    assert!(due.dirty_bytes > 0 && due.dirty_ratio() == 1.0, "{due:?}");
    let r = log.compact(&opts(1_000, 1 << 20), &mut |_| {}).unwrap();
    assert!(r.segments_rewritten + r.segments_removed > 0, "{r:?}");
    let after = log.compaction_state(1_000, 0).unwrap();
    assert_eq!(
        (after.dirty_bytes, after.clean_to),
        (0, r.clean_to),
        "{after:?}"
    );
    assert!(
        r.records_removed > 0 && r.bytes_after < r.bytes_before,
        "{r:?}"
    );
    assert_eq!(log.size_bytes(), before - (r.bytes_before - r.bytes_after));
    let got = read_all(&log);
    check(&got, &all, r.clean_to).unwrap();
    check_compacted(&got, r.clean_to).unwrap();
    // The tombstone for k3 stays: it is in the part cleaned only now.
    let tombstone = all
        .iter()
        .position(|(k, v)| k.as_deref() == Some(b"k\x03") && v.is_none());
    let tombstone = tombstone.unwrap() as u64;
    let live = |got: &[(u64, Rec)], o: u64| got.iter().any(|(x, _)| *x == o);
    // (It is the last record of k3 only if no later k3 came; either way it is kept now.)
    let last_k3 = all
        .iter()
        .rposition(|(k, _)| k.as_deref() == Some(b"k\x03"))
        .unwrap() as u64;
    assert!(live(&got, last_k3));
    // Nothing new, a long time later: the second pass drops expired tombstones in the clean
    // part, and no longer finds anything else to drop.
    let r2 = log.compact(&opts(1_000_000, 1 << 20), &mut |_| {}).unwrap();
    let got2 = read_all(&log);
    check(&got2, &all, r.clean_to).unwrap();
    if last_k3 == tombstone && tombstone < r.clean_to {
        assert!(!live(&got2, tombstone), "the expired tombstone went");
        assert_eq!(r2.tombstones_removed, 1);
    }
    let r3 = log.compact(&opts(1_000_000, 1 << 20), &mut |_| {}).unwrap();
    assert_eq!(r3.segments_rewritten + r3.segments_removed, 0, "{r3:?}");
    // Keyless records are never compacted away.
    assert!(
        got2.iter()
            .any(|(_, (k, v))| k.is_none() && v.as_deref() == Some(&b"keyless"[..]))
    );
    // The clean point and the compacted segments survive a restart.
    log.close().unwrap();
    let log = open(&storage);
    assert_eq!(read_all(&log), got2);
    let r4 = log.compact(&opts(1_000_000, 1 << 20), &mut |_| {}).unwrap();
    assert_eq!((r4.bytes_read, r4.clean_to), (r4.bytes_read, r3.clean_to));
    assert_eq!(r4.segments_rewritten, 0);
    // Appends go on after compaction, at the next offset.
    append(
        &log,
        &[(Some(b"k\x01".to_vec()), Some(b"new".to_vec()))],
        2_000,
    );
    assert_eq!(log.high_watermark(), all.len() as u64 + 1);
}

#[test]
fn reads_at_offsets_inside_gaps_start_at_the_next_record() {
    let storage = MemStorage::new();
    let (log, all) = populated(&storage);
    let r = log.compact(&opts(1_000, 1 << 20), &mut |_| {}).unwrap();
    let got = read_all(&log);
    for o in log.log_start_offset()..r.clean_to {
        let first = log.read(o, 1).unwrap();
        let recs: Vec<u64> = first
            .chunks
            .iter()
            .flat_map(|c| Batches::new(c).map(|b| b.unwrap().0))
            .map(|h| h.next_offset() as u64)
            .collect();
        assert!(!recs.is_empty(), "offset {o}");
        assert!(recs[0] > o, "the batch read holds or follows offset {o}");
        let next_live = got.iter().find(|(x, _)| *x >= o).map(|(x, _)| *x);
        assert!(
            next_live.is_some_and(|n| n < recs[0]),
            "offset {o}: {next_live:?}"
        );
    }
    assert_eq!(all.len() as u64, log.high_watermark());
}

#[test]
fn emptied_first_segments_leave_the_log_start_where_it_was() {
    let storage = MemStorage::new();
    let log = open(&storage);
    // The first segments hold only keys written again later: compaction empties them.
    let mut all = Vec::new();
    for round in 0..2u8 {
        for i in 0..40u8 {
            let b: Vec<Rec> = vec![(Some(vec![b'k', i]), Some(vec![round; 40]))];
            append(&log, &b, i64::from(i));
            all.extend(b);
        }
    }
    assert!(log.segment_count() > 3);
    let r = log.compact(&opts(1_000, 1 << 20), &mut |_| {}).unwrap();
    assert!(r.records_removed > 0, "{r:?}");
    // Kafka's rule: compaction never moves the log start, so a consumer at offset 0 (or
    // anywhere in what went) reads on from the next record instead of being out of range.
    let first_base = |log: &Log| {
        let r = log.read(0, 1).expect("a read at the log start is served");
        let h = Batches::new(&r.chunks[0]).next().unwrap().unwrap().0;
        h.base_offset as u64
    };
    assert_eq!(log.log_start_offset(), 0);
    assert!(first_base(&log) > 0, "the first segment was emptied");
    let got = read_all(&log);
    check(&got, &all, r.clean_to).unwrap();
    log.close().unwrap();
    let log = open(&storage);
    assert_eq!(log.log_start_offset(), 0, "after a restart too");
    assert!(first_base(&log) > 0);
    assert_eq!(read_all(&log), got);
    // Time retention (compact,delete) does not take the empty segment for an expired one:
    // with nothing else old enough, the log start stays.
    let limits = weir_log::Limits {
        max_batch_bytes: 2 * 1024,
        retention_age: Some(std::time::Duration::from_millis(500)),
        retention_bytes: None,
    };
    log.set_limits(limits);
    let r = log.apply_retention(100).unwrap();
    assert_eq!(
        (r.deleted_segments, log.log_start_offset()),
        (0, 0),
        "{r:?}"
    );
    // When the records after it expire, it goes with them.
    let r = log.apply_retention(1_000_000).unwrap();
    assert!(
        r.deleted_segments > 1 && log.log_start_offset() > 0,
        "{r:?}"
    );
}

/// Readers are not served the older versions of compacted batches from the in-memory tail:
/// the log reads the same before and after a restart.
#[test]
fn the_hot_tail_does_not_serve_what_compaction_dropped() {
    let storage = MemStorage::new();
    let big_tail = LogConfig {
        hot_tail_bytes: 1 << 20,
        ..config()
    };
    let log = Log::open_with(Arc::new(storage.clone()), Path::new(DIR), big_tail.clone()).unwrap();
    let mut all = Vec::new();
    for i in 0..60u8 {
        let b: Vec<Rec> = (0..3u8)
            .map(|j| (Some(vec![b'k', (i * 3 + j) % 5]), Some(vec![i; 30])))
            .collect();
        append(&log, &b, i64::from(i));
        all.extend(b);
    }
    log.compact(&opts(1_000, 1 << 20), &mut |_| {}).unwrap();
    let before = read_all(&log);
    check(&before, &all, u64::MAX).unwrap();
    log.close().unwrap();
    let log = Log::open_with(Arc::new(storage), Path::new(DIR), big_tail).unwrap();
    assert_eq!(read_all(&log), before);
}

/// A pass interrupted at every I/O step, then a power loss (or a kill -9): the log opens, reads
/// as a state between before and after the pass, and a pass then finishes the job.
#[test]
fn a_pass_interrupted_at_any_step_leaves_a_log_between_before_and_after() {
    let storage = MemStorage::new();
    let (log, all) = populated(&storage);
    let before = read_all(&log);
    let start = storage.op_count();
    let r = log.compact(&opts(1_000, 1 << 20), &mut |_| {}).unwrap();
    let steps = storage.op_count() - start;
    let after = read_all(&log);
    drop(log);
    assert!(steps > 20, "{steps} steps");
    for step in 0..steps {
        for mode in [CrashMode::SyncedOnly, CrashMode::ProcessOnly] {
            let storage = MemStorage::new();
            let (log, _) = populated(&storage);
            storage.inject_faults(storage.op_count() + step, u64::MAX, FaultKind::Dead);
            let result = log.compact(&opts(1_000, 1 << 20), &mut |_| {});
            let image = storage.crash_image(mode);
            drop(log);
            drop(result);
            let log = open(&image);
            let got = read_all(&log);
            // Every record of `after` is there, and nothing that was not in `before`.
            let got_offsets: HashSet<u64> = got.iter().map(|(o, _)| *o).collect();
            for (o, _) in &after {
                assert!(
                    got_offsets.contains(o),
                    "step {step} {mode:?}: offset {o} lost"
                );
            }
            for g in &got {
                assert!(
                    before.contains(g),
                    "step {step} {mode:?}: {g:?} was not there before"
                );
            }
            check(&got, &all, u64::MAX).unwrap();
            let again = log.compact(&opts(1_000, 1 << 20), &mut |_| {}).unwrap();
            assert_eq!(read_all(&log), after, "step {step} {mode:?}: {again:?}");
        }
    }
    assert!(r.clean_to > 0);
}
