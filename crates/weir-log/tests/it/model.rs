//! Property tests: random sequences of appends, reads, restarts, crashes, front truncations
//! and retention, checked against an in-memory model; crashes and I/O errors injected at random
//! points through the storage trait.

use crate::common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use proptest::prelude::*;
use weir_log::{CrashMode, Durability, FaultKind, Log, LogConfig, LogError, MemStorage};

fn config(durability: Durability) -> LogConfig {
    LogConfig {
        segment_bytes: 4 * 1024,
        index_interval_bytes: 256,
        max_batch_bytes: 4 * 1024,
        durability,
        hot_tail_bytes: 1024,
        checkpoint_interval_bytes: 2 * 1024,
        retention_age: None,
        retention_bytes: Some(12 * 1024),
        ..LogConfig::default()
    }
}

#[derive(Debug, Clone)]
enum Op {
    Append {
        n: usize,
        len: usize,
    },
    Read {
        at: f64,
        max: usize,
    },
    Restart,
    Crash {
        torn: bool,
        seed: u64,
    },
    /// kill -9, reopen, then a power loss.
    KillThenPowerLoss,
    DeleteBefore {
        at: f64,
    },
    Retention,
    Flush,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => (1usize..8, 1usize..200).prop_map(|(n, len)| Op::Append { n, len }),
        4 => (0.0f64..1.0, 1usize..3000).prop_map(|(at, max)| Op::Read { at, max }),
        1 => Just(Op::Restart),
        2 => (any::<bool>(), any::<u64>()).prop_map(|(torn, seed)| Op::Crash { torn, seed }),
        1 => Just(Op::KillThenPowerLoss),
        1 => (0.0f64..1.0).prop_map(|at| Op::DeleteBefore { at }),
        1 => Just(Op::Retention),
        1 => Just(Op::Flush),
    ]
}

/// The model: every record ever acknowledged, by offset, and the log start.
#[derive(Debug, Default)]
struct Model {
    records: Vec<Vec<u8>>,
    log_start: u64,
}

impl Model {
    fn next(&self) -> u64 {
        self.records.len() as u64
    }
}

fn check_equal(log: &Log, model: &Model) -> Result<(), TestCaseError> {
    prop_assert_eq!(log.high_watermark(), model.next());
    prop_assert_eq!(log.log_start_offset(), model.log_start);
    let actual = read_all(log, model.log_start);
    prop_assert_eq!(actual.len() as u64, model.next() - model.log_start);
    for (offset, value) in actual {
        prop_assert!(
            model.records[offset as usize] == value,
            "offset {} differs",
            offset
        );
    }
    Ok(())
}

fn reopen(storage: &MemStorage, c: &LogConfig) -> Log {
    Log::open_with(Arc::new(storage.clone()), Path::new(DIR), c.clone()).expect("reopen")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Under `Always`, every acknowledged record survives restarts and crashes (synced bytes
    /// only, or with a torn unsynced tail), and the log always equals the model.
    #[test]
    fn always_log_equals_model(ops in proptest::collection::vec(op(), 1..60)) {
        let c = config(Durability::Always);
        let mut storage = MemStorage::new();
        let mut log = reopen(&storage, &c);
        let mut model = Model::default();
        let mut tag = 0u64;
        for op in ops {
            match op {
                Op::Append { n, len } => {
                    tag += 1;
                    let info = log.append(batch(tag, n, len, tag as i64)).unwrap();
                    prop_assert_eq!(info.base_offset, model.next());
                    for i in 0..n { model.records.push(value(tag, i, len)); }
                }
                Op::Read { at, max } => {
                    let span = model.next() - model.log_start;
                    let offset = model.log_start + (span as f64 * at) as u64;
                    let r = log.read(offset, max).unwrap();
                    let recs = records(&r);
                    if offset < model.next() {
                        prop_assert!(recs.first().unwrap().0 <= offset);
                        prop_assert!(recs.iter().any(|(o, _)| *o == offset));
                    } else {
                        prop_assert!(recs.is_empty());
                    }
                    for (o, v) in recs {
                        prop_assert!(model.records[o as usize] == v);
                    }
                }
                Op::Restart => {
                    log.close().unwrap();
                    log = reopen(&storage, &c);
                    prop_assert!(log.recovery_report().clean_shutdown);
                    prop_assert_eq!(log.recovery_report().scanned_bytes, 0);
                }
                Op::Crash { torn, seed } => {
                    drop(log);
                    let mode = if torn { CrashMode::TornTail(seed) } else { CrashMode::SyncedOnly };
                    storage = storage.crash_image(mode);
                    log = reopen(&storage, &c);
                }
                Op::KillThenPowerLoss => {
                    drop(log);
                    storage = storage.crash_image(CrashMode::ProcessOnly);
                    log = reopen(&storage, &c);
                    check_equal(&log, &model)?;
                    drop(log);
                    storage = storage.crash_image(CrashMode::SyncedOnly);
                    log = reopen(&storage, &c);
                }
                Op::DeleteBefore { at } => {
                    let span = model.next() - model.log_start;
                    let offset = model.log_start + (span as f64 * at) as u64;
                    log.delete_records_before(offset).unwrap();
                    model.log_start = offset;
                }
                Op::Retention => {
                    let report = log.apply_retention(0).unwrap();
                    model.log_start = report.log_start_offset;
                }
                Op::Flush => log.flush().unwrap(),
            }
            check_equal(&log, &model)?;
        }
    }

    /// Under `Never`, a crash keeps a prefix of what was appended: at least everything before
    /// the last flush, never a corrupt or reordered record.
    #[test]
    fn never_crash_keeps_a_prefix_at_least_up_to_the_last_flush(ops in proptest::collection::vec(op(), 1..60)) {
        let c = LogConfig { retention_bytes: None, ..config(Durability::Never) };
        let mut storage = MemStorage::new();
        let mut log = reopen(&storage, &c);
        let mut model = Model::default();
        let mut flushed = 0u64;
        let mut tag = 0u64;
        for op in ops {
            match op {
                Op::Append { n, len } => {
                    tag += 1;
                    log.append(batch(tag, n, len, 0)).unwrap();
                    for i in 0..n { model.records.push(value(tag, i, len)); }
                }
                Op::Flush | Op::Restart => {
                    if matches!(op, Op::Flush) {
                        log.flush().unwrap();
                    } else {
                        log.close().unwrap();
                        log = reopen(&storage, &c);
                    }
                    flushed = model.next();
                }
                Op::Crash { torn, seed } => {
                    drop(log);
                    let mode = if torn { CrashMode::TornTail(seed) } else { CrashMode::SyncedOnly };
                    storage = storage.crash_image(mode);
                    log = reopen(&storage, &c);
                    let kept = log.high_watermark();
                    prop_assert!(kept >= flushed, "lost flushed records: kept {} < {}", kept, flushed);
                    prop_assert!(kept <= model.next());
                    model.records.truncate(kept as usize);
                    model.log_start = model.log_start.min(kept);
                    flushed = kept;
                }
                Op::KillThenPowerLoss => {
                    // After kill -9 the page cache still has every append, and recovery
                    // publishes them all: from then on they must survive a power loss.
                    drop(log);
                    storage = storage.crash_image(CrashMode::ProcessOnly);
                    log = reopen(&storage, &c);
                    prop_assert_eq!(log.high_watermark(), model.next());
                    check_equal(&log, &model)?;
                    drop(log);
                    storage = storage.crash_image(CrashMode::SyncedOnly);
                    log = reopen(&storage, &c);
                    prop_assert_eq!(log.high_watermark(), model.next(), "recovery vouched for unsynced data");
                    flushed = model.next();
                }
                Op::Read { .. } | Op::DeleteBefore { .. } | Op::Retention => {}
            }
            check_equal(&log, &model)?;
        }
    }

    /// The storage dies at a random operation (every later call fails) and the machine
    /// crashes. Whatever was acknowledged is there after reopening, in order; at most the one
    /// append in flight may also be there, whole.
    #[test]
    fn crash_at_a_random_io_keeps_every_acknowledged_record(
        die_at in 0u64..400,
        torn in any::<bool>(),
        seed in any::<u64>(),
        sizes in proptest::collection::vec((1usize..6, 1usize..300), 1..80),
    ) {
        let c = config(Durability::Always);
        let storage = MemStorage::new();
        let log = reopen(&storage, &c);
        storage.inject_faults(storage.op_count() + die_at, u64::MAX, FaultKind::Dead);
        let mut acked = Model::default();
        let mut in_flight = None;
        for (tag, (n, len)) in sizes.into_iter().enumerate() {
            let tag = tag as u64 + 1;
            match log.append(batch(tag, n, len, 0)) {
                Ok(_) => for i in 0..n { acked.records.push(value(tag, i, len)); },
                Err(_) => { in_flight = Some((tag, n, len)); break; }
            }
        }
        drop(log);
        let mode = if torn { CrashMode::TornTail(seed) } else { CrashMode::SyncedOnly };
        let image = storage.crash_image(mode);
        let log = reopen(&image, &c);
        let actual = read_all(&log, 0);
        prop_assert!(actual.len() >= acked.records.len(), "lost acknowledged records");
        for (offset, value) in &actual[..acked.records.len()] {
            prop_assert!(&acked.records[*offset as usize] == value);
        }
        let extra = &actual[acked.records.len()..];
        if !extra.is_empty() {
            let (tag, n, len) = in_flight.expect("extra records without an append in flight");
            prop_assert_eq!(extra.len(), n);
            for (i, (_, v)) in extra.iter().enumerate() {
                prop_assert!(v == &value(tag, i, len));
            }
        }
        // And the recovered log takes appends again.
        let info = log.append(batch(9999, 1, 10, 0)).unwrap();
        prop_assert_eq!(info.base_offset, actual.len() as u64);
    }

    /// A full disk for a while: appends that hit it fail with a storage-full error, none of
    /// their bytes become visible, and once space is back appends work again. After a restart
    /// the log holds exactly the successful appends.
    #[test]
    fn disk_full_fails_cleanly_and_recovers(
        fail_at in 0u64..300,
        fail_for in prop_oneof![1u64..40, Just(u64::MAX)],
        durability in prop_oneof![Just(Durability::Always), Just(Durability::Never)],
        sizes in proptest::collection::vec((1usize..6, 1usize..300), 1..80),
    ) {
        let c = LogConfig { retention_bytes: None, ..config(durability) };
        let storage = MemStorage::new();
        let mut log = reopen(&storage, &c);
        storage.inject_faults(storage.op_count() + fail_at, fail_for, FaultKind::DiskFull);
        let mut model = Model::default();
        let mut failures = 0;
        for (tag, (n, len)) in sizes.into_iter().enumerate() {
            let tag = tag as u64 + 1;
            match log.append(batch(tag, n, len, 0)) {
                Ok(info) => {
                    prop_assert_eq!(info.base_offset, model.next(), "offsets stay contiguous");
                    for i in 0..n { model.records.push(value(tag, i, len)); }
                }
                Err(e) => {
                    prop_assert!(e.is_storage_full(), "unexpected error {}", e);
                    failures += 1;
                }
            }
            check_equal(&log, &model)?;
        }
        storage.heal();
        // Appends work once space is back.
        let tag = 10_000;
        let info = log.append(batch(tag, 2, 20, 0)).unwrap();
        prop_assert_eq!(info.base_offset, model.next());
        for i in 0..2 { model.records.push(value(tag, i, 20)); }
        check_equal(&log, &model)?;
        log.close().unwrap();
        log = reopen(&storage, &c);
        check_equal(&log, &model)?;
        let _ = failures;
    }
}

/// Readers running beside the writer only ever see whole, valid, contiguous batches.
#[test]
fn concurrent_readers_see_only_committed_valid_data() {
    let storage = MemStorage::new();
    let log = Arc::new(reopen(&storage, &config(Durability::Always)));
    let writer = {
        let log = log.clone();
        std::thread::spawn(move || {
            for tag in 0..400u64 {
                log.append(batch(tag, 3, 40, 0)).unwrap();
            }
        })
    };
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut offset = 0u64;
                while offset < 1200 {
                    let start = log.log_start_offset();
                    match log.read(offset.max(start), 700) {
                        Ok(r) => {
                            let recs = records(&r);
                            if let Some(last) = recs.last() {
                                for w in recs.windows(2) {
                                    assert_eq!(w[0].0 + 1, w[1].0, "contiguous offsets");
                                }
                                for (o, v) in &recs {
                                    let tag = o / 3;
                                    assert_eq!(v, &value(tag, (o % 3) as usize, 40));
                                }
                                offset = last.0 + 1;
                            }
                        }
                        Err(LogError::OffsetOutOfRange { .. }) => offset = log.log_start_offset(),
                        Err(e) => panic!("{e}"),
                    }
                }
            })
        })
        .collect();
    // Retention runs meanwhile, deleting segments under the readers' feet.
    for _ in 0..20 {
        log.apply_retention(0).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    writer.join().unwrap();
    for r in readers {
        r.join().unwrap();
    }
}

/// A full disk under concurrent appenders (so a roll finds batches written but not yet
/// synced): every acknowledged batch stays readable at its offset, before and after the disk
/// recovers and after a restart, and no offset is handed out twice.
#[test]
fn disk_full_under_concurrent_appenders_keeps_every_acknowledged_batch() {
    for fail_at in (20..400).step_by(7) {
        let c = LogConfig {
            retention_bytes: None,
            ..config(Durability::Always)
        };
        let storage = MemStorage::new();
        let log = Arc::new(reopen(&storage, &c));
        storage.inject_faults(storage.op_count() + fail_at, u64::MAX, FaultKind::DiskFull);
        let run = |log: Arc<Log>, t: u64, count: u64| {
            std::thread::spawn(move || {
                let mut acks = Vec::new();
                for i in 0..count {
                    let tag = t * 1_000_000 + i;
                    if let Ok(info) = log.append(batch(tag, 2, 150, 0)) {
                        acks.push((info.base_offset, tag));
                    }
                }
                acks
            })
        };
        let mut acks: Vec<(u64, u64)> = (0..3)
            .map(|t| run(log.clone(), t, 30))
            .collect::<Vec<_>>()
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        storage.heal();
        acks.extend(
            (3..5)
                .map(|t| run(log.clone(), t, 10))
                .collect::<Vec<_>>()
                .into_iter()
                .flat_map(|h| h.join().unwrap()),
        );
        let check = |log: &Log| {
            let all = read_all(log, 0);
            let mut seen = std::collections::HashSet::new();
            for &(base, tag) in &acks {
                assert!(
                    seen.insert(base),
                    "fail_at {fail_at}: offset {base} handed out twice"
                );
                let got = all.get(base as usize).map(|(_, v)| v.clone());
                assert_eq!(
                    got,
                    Some(value(tag, 0, 150)),
                    "fail_at {fail_at}: acknowledged batch at {base} lost"
                );
            }
        };
        check(&log);
        log.close().unwrap();
        check(&reopen(&storage, &c));
    }
}

/// A batch that must follow an earlier one (an idempotent producer's next batch) is refused
/// once the log has dropped that earlier batch after a failed sync, instead of taking its
/// place; with no failure in between, it is written.
#[test]
fn a_conditional_append_is_refused_after_the_batch_it_follows_was_dropped() {
    let storage = MemStorage::new();
    let log = reopen(&storage, &config(Durability::Always));
    let first = log.append_start(batch(1, 2, 10, 0)).unwrap();
    let follows = log
        .append_start_unless_truncated(batch(2, 1, 10, 0), Some(first.truncations()))
        .expect("nothing was dropped: the next batch is written");
    log.append_wait(first).unwrap();
    log.append_wait(follows).unwrap();

    let failing = log.append_start(batch(3, 1, 10, 0)).unwrap();
    let since = failing.truncations();
    assert_eq!(log.truncations(), since);
    storage.inject_faults(storage.op_count(), 1, FaultKind::DiskFull);
    assert!(log.append_wait(failing).unwrap_err().is_storage_full());
    storage.heal();
    // Readers see the count move too (without the writer's lock).
    assert_eq!(log.truncations(), since + 1);
    let refused = log.append_start_unless_truncated(batch(4, 1, 10, 0), Some(since));
    assert!(
        matches!(refused, Err(LogError::TruncatedSince)),
        "{refused:?}"
    );
    // Resent from the dropped batch, both are written where it was.
    let again = log.append_start(batch(3, 1, 10, 0)).unwrap();
    assert_eq!(again.info().base_offset, 3);
    let next = log
        .append_start_unless_truncated(batch(4, 1, 10, 0), Some(again.truncations()))
        .unwrap();
    assert_eq!(next.info().base_offset, 4);
    log.append_wait(again).unwrap();
    log.append_wait(next).unwrap();
    assert_eq!(log.high_watermark(), 5);
}

/// An in-place append writes a batch only when that goes no further than the page cache: a
/// batch that would roll the segment, arrives when an interval sync is due, or goes past the
/// disk space reserved comes back unwritten, and appends normally afterwards.
#[test]
fn an_in_place_append_turns_back_what_would_block() {
    use weir_log::InPlace;
    let no_reserve = |durability| LogConfig {
        preallocate_bytes: 0,
        ..config(durability)
    };
    let storage = MemStorage::new();
    let log = reopen(&storage, &no_reserve(Durability::Never));
    let mut written = 0;
    let turned_back = loop {
        // 4 KiB segments: a few 600-byte batches fit, then one would roll.
        match log
            .append_start_in_place(bytes::Bytes::from(batch(written + 1, 1, 600, 0)), None)
            .unwrap()
        {
            InPlace::Appended(a) => {
                assert_eq!(a.info().base_offset, written);
                log.append_wait(a).unwrap();
                written += 1;
            }
            InPlace::WouldBlock(b) => break b,
        }
        assert!(written < 10, "the segment never filled");
    };
    assert!(written >= 2);
    assert_eq!(
        log.high_watermark(),
        written,
        "nothing written when turned back"
    );
    let a = log
        .append_start_unless_truncated(turned_back, None)
        .unwrap();
    assert_eq!(a.info().base_offset, written);
    log.append_wait(a).unwrap();

    let storage = MemStorage::new();
    let interval = reopen(
        &storage,
        &no_reserve(Durability::Interval(std::time::Duration::from_millis(1))),
    );
    std::thread::sleep(std::time::Duration::from_millis(5));
    let b = bytes::Bytes::from(batch(1, 1, 10, 0));
    assert!(matches!(
        interval.append_start_in_place(b, None).unwrap(),
        InPlace::WouldBlock(_)
    ));
    assert_eq!(interval.high_watermark(), 0);

    // Reserving disk space is a file-system metadata operation: the first write past the
    // segment's first 64 KiB, which needs one, comes back; once an append reserved (as much
    // again as the segment holds), a batch of the same size fits in place.
    let storage = MemStorage::new();
    let reserving = reopen(
        &storage,
        &LogConfig {
            preallocate_bytes: 1 << 20,
            segment_bytes: 1 << 20,
            retention_bytes: None,
            ..config(Durability::Never)
        },
    );
    let mut tag = 0;
    let b = loop {
        tag += 1;
        let b = bytes::Bytes::from(batch(tag, 1, 600, 0));
        let end = reserving.size_bytes() + b.len() as u64;
        match reserving.append_start_in_place(b, None).unwrap() {
            InPlace::Appended(a) => {
                assert!(end <= 64 << 10, "a write ending at {end} was made in place");
                reserving.append_wait(a).unwrap();
            }
            InPlace::WouldBlock(b) => {
                assert!(end > 64 << 10, "a write ending at {end} was turned back");
                break b;
            }
        }
    };
    let a = reserving.append_start_unless_truncated(b, None).unwrap();
    reserving.append_wait(a).unwrap();
    let b = bytes::Bytes::from(batch(tag + 1, 1, 600, 0));
    let InPlace::Appended(a) = reserving.append_start_in_place(b, None).unwrap() else {
        panic!("a write within the reservation was turned back");
    };
    reserving.append_wait(a).unwrap();
    assert_eq!(reserving.high_watermark(), tag + 1);
}
