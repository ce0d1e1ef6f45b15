//! The log's API on the real file system and in memory.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use weir_batch::BatchError;
use weir_log::{CrashMode, Durability, Log, LogConfig, LogError, MemStorage};

#[test]
fn append_assigns_contiguous_offsets_and_reads_return_whole_batches() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    assert_eq!(log.high_watermark(), 0);
    let a = log.append(batch(1, 3, 10, 1000)).unwrap();
    let b = log.append(batch(2, 5, 10, 2000)).unwrap();
    assert_eq!((a.base_offset, a.last_offset), (0, 2));
    assert_eq!((b.base_offset, b.last_offset), (3, 7));
    assert_eq!(log.high_watermark(), 8);

    // An offset inside a batch returns that whole batch.
    let r = log.read(4, 1).unwrap();
    let recs = records(&r);
    assert_eq!(recs.len(), 5, "one whole batch even though max_bytes is 1");
    assert_eq!(recs[0].0, 3);
    assert_eq!(recs[0].1, value(2, 0, 10));
    // Reading at the high watermark returns nothing; past it is an error.
    assert!(log.read(8, 1000).unwrap().is_empty());
    assert!(matches!(
        log.read(9, 1000),
        Err(LogError::OffsetOutOfRange {
            offset: 9,
            log_start: 0,
            high_watermark: 8
        })
    ));
    let all = read_all(&log, 0);
    assert_eq!(all.len(), 8);
    assert!(all.iter().enumerate().all(|(i, (o, _))| *o == i as u64));
}

#[test]
fn tailing_reads_come_from_memory_and_old_reads_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        hot_tail_bytes: 4096,
        ..LogConfig::default()
    };
    let log = Log::open(dir.path(), config).unwrap();
    for i in 0..20 {
        log.append(batch(i, 4, 100, 1000)).unwrap();
    }
    let newest = log.read(79, 100_000).unwrap();
    assert!(newest.from_memory);
    let oldest = log.read(0, 100_000).unwrap();
    assert!(!oldest.from_memory);
    assert_eq!(records(&oldest).len(), 80);
    assert_eq!(records(&newest).len(), 4);
}

#[test]
fn malformed_batches_are_rejected_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    log.append(batch(0, 2, 8, 0)).unwrap();
    let size = log.size_bytes();

    let mut bad_crc = batch(1, 2, 8, 0);
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 1;
    assert!(matches!(
        log.append(bad_crc),
        Err(LogError::InvalidBatch(BatchError::CrcMismatch { .. }))
    ));
    let mut bad_magic = batch(1, 2, 8, 0);
    bad_magic[16] = 1;
    assert!(matches!(
        log.append(bad_magic),
        Err(LogError::InvalidBatch(BatchError::BadMagic(1)))
    ));
    let short = batch(1, 2, 8, 0)[..40].to_vec();
    assert!(matches!(
        log.append(short),
        Err(LogError::InvalidBatch(BatchError::Truncated { .. }))
    ));
    let mut two = batch(1, 1, 8, 0);
    two.extend_from_slice(&batch(2, 1, 8, 0));
    assert!(matches!(
        log.append(two),
        Err(LogError::InvalidBatch(BatchError::LengthMismatch { .. }))
    ));
    let small = Log::open(
        dir.path().join("small"),
        LogConfig {
            max_batch_bytes: 100,
            ..LogConfig::default()
        },
    )
    .unwrap();
    assert!(matches!(
        small.append(batch(1, 10, 50, 0)),
        Err(LogError::BatchTooLarge { max: 100, .. })
    ));

    assert_eq!(log.size_bytes(), size);
    assert_eq!(log.high_watermark(), 2);
    log.close().unwrap();
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    assert_eq!(log.high_watermark(), 2);
}

#[test]
fn segments_roll_by_size_and_survive_clean_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(Durability::Always);
    let log = Log::open(dir.path(), config.clone()).unwrap();
    let mut expected = Vec::new();
    for tag in 0..60u64 {
        let info = log.append(batch(tag, 5, 200, 1_000 + tag as i64)).unwrap();
        for i in 0..5 {
            expected.push((info.base_offset + i as u64, value(tag, i, 200)));
        }
    }
    assert!(
        log.segment_count() > 3,
        "small segments roll: {}",
        log.segment_count()
    );
    assert_eq!(read_all(&log, 0), expected);
    log.close().unwrap();
    assert!(matches!(
        log.append(batch(0, 1, 1, 0)),
        Err(LogError::Closed)
    ));

    let log = Log::open(dir.path(), config).unwrap();
    assert!(log.recovery_report().clean_shutdown);
    assert_eq!(
        log.recovery_report().scanned_bytes,
        0,
        "a clean log is not rescanned"
    );
    assert_eq!(log.high_watermark(), 300);
    assert_eq!(read_all(&log, 0), expected);
    // Every offset reads back the batch that holds it.
    for offset in (0..300).step_by(7) {
        let r = log.read(offset, 1).unwrap();
        let recs = records(&r);
        assert!(recs.iter().any(|(o, _)| *o == offset));
    }
    let next = log.append(batch(99, 1, 10, 0)).unwrap();
    assert_eq!(next.base_offset, 300);
}

#[test]
fn segments_roll_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_age: Duration::from_millis(30),
        ..LogConfig::default()
    };
    let log = Log::open(dir.path(), config).unwrap();
    log.append(batch(0, 1, 10, 0)).unwrap();
    std::thread::sleep(Duration::from_millis(40));
    log.append(batch(1, 1, 10, 0)).unwrap();
    assert_eq!(log.segment_count(), 2);
}

#[test]
fn offset_for_timestamp_finds_the_first_record_at_or_after() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_config(Durability::Never)).unwrap();
    // Batch k holds 4 records with timestamps 10_000 + 100k + i.
    for k in 0..80u64 {
        log.append(batch(k, 4, 150, 10_000 + 100 * k as i64))
            .unwrap();
    }
    assert!(log.segment_count() > 2);
    assert_eq!(log.offset_for_timestamp(0).unwrap(), Some(0));
    assert_eq!(log.offset_for_timestamp(10_000).unwrap(), Some(0));
    assert_eq!(log.offset_for_timestamp(10_002).unwrap(), Some(2));
    // 10_000 + 100 * 50 + 3 is record 3 of batch 50 → offset 203.
    assert_eq!(log.offset_for_timestamp(15_003).unwrap(), Some(203));
    assert_eq!(log.offset_for_timestamp(15_004).unwrap(), Some(204));
    assert_eq!(
        log.offset_for_timestamp(10_000 + 100 * 79 + 3).unwrap(),
        Some(319)
    );
    assert_eq!(
        log.offset_for_timestamp(10_000 + 100 * 79 + 4).unwrap(),
        None
    );
    log.close().unwrap();
    let log = Log::open(dir.path(), small_config(Durability::Never)).unwrap();
    assert_eq!(log.offset_for_timestamp(15_003).unwrap(), Some(203));
    // Deleted records are not found, with their timestamps or anyone's: the search starts at
    // the log start, mid-batch too (offset 6 is record 2 of batch 1, stamped 10_102).
    log.delete_records_before(6).unwrap();
    for (ts, want) in [
        (0, Some((6, 10_102))),
        (10_001, Some((6, 10_102))),
        (10_102, Some((6, 10_102))),
        (10_103, Some((7, 10_103))),
        (15_003, Some((203, 15_003))),
    ] {
        assert_eq!(log.record_at_or_after(ts).unwrap(), want, "{ts}");
    }
    assert_eq!(log.max_timestamp().unwrap(), Some(10_000 + 100 * 79 + 3));
}

#[test]
fn delete_records_before_moves_log_start_and_removes_whole_segments() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(Durability::Always);
    let log = Log::open(dir.path(), config.clone()).unwrap();
    for k in 0..60u64 {
        log.append(batch(k, 5, 200, 0)).unwrap();
    }
    let segments = log.segment_count();
    assert!(matches!(
        log.delete_records_before(301),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    assert_eq!(log.delete_records_before(150).unwrap(), 150);
    assert_eq!(log.log_start_offset(), 150);
    assert!(log.segment_count() < segments);
    assert!(matches!(
        log.read(149, 100),
        Err(LogError::OffsetOutOfRange { log_start: 150, .. })
    ));
    let rest = read_all(&log, 150);
    assert_eq!(rest.first().unwrap().0, 150);
    assert_eq!(rest.len(), 150);
    // Lower values are a no-op.
    assert_eq!(log.delete_records_before(10).unwrap(), 150);
    drop(log); // not closed: the log start must survive a crash too
    let log = Log::open(dir.path(), config).unwrap();
    assert_eq!(log.log_start_offset(), 150);
    assert_eq!(read_all(&log, 150).len(), 150);
}

#[test]
fn retention_by_size_and_by_time_deletes_whole_sealed_segments() {
    let storage = MemStorage::new();
    let mut config = small_config(Durability::Never);
    config.retention_bytes = Some(40 * 1024);
    config.retention_age = None;
    let log = mem_log(&storage, config.clone());
    for k in 0..200u64 {
        log.append(batch(k, 5, 60, 1_000 * k as i64)).unwrap();
    }
    let before = log.size_bytes();
    let report = log.apply_retention(0).unwrap();
    assert!(report.deleted_segments > 0);
    assert!(
        log.size_bytes() <= 40 * 1024 + 16 * 1024,
        "within one segment of the cap"
    );
    assert_eq!(log.size_bytes(), before - report.deleted_bytes);
    assert_eq!(log.log_start_offset(), report.log_start_offset);
    assert_eq!(
        read_all(&log, log.log_start_offset()).last().unwrap().0,
        999
    );
    drop(log);

    let mut by_time = config;
    by_time.retention_bytes = None;
    by_time.retention_age = Some(Duration::from_secs(50));
    let log = mem_log(&storage, by_time);
    let segments = log.segment_count();
    assert!(segments >= 2);
    // At now = 230 s, records older than 180 s expire. Batch k has timestamps 1000k..1000k+4 ms.
    let report = log.apply_retention(230_000).unwrap();
    assert!(
        report.deleted_segments >= 1 && report.deleted_segments < segments,
        "{report:?}"
    );
    let start = log.log_start_offset();
    let last_deleted_batch = start / 5 - 1;
    assert!(
        last_deleted_batch * 1000 + 4 < 180_000,
        "deleted an unexpired record"
    );
    // The first remaining segment still holds an unexpired record.
    let remaining = read_all(&log, start);
    assert!(remaining.iter().any(|(o, _)| o / 5 * 1000 >= 180_000));
    // The active segment is never deleted, whatever its age.
    log.apply_retention(i64::MAX).unwrap();
    assert_eq!(log.segment_count(), 1);
    assert_eq!(log.high_watermark(), 1000);
    assert_eq!(
        read_all(&log, log.log_start_offset()).last().unwrap().0,
        999
    );
}

#[test]
fn concurrent_appenders_share_syncs_and_get_distinct_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(Log::open(dir.path(), LogConfig::default()).unwrap());
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                (0..50u64)
                    .map(|i| {
                        (
                            t * 1000 + i,
                            log.append(batch(t * 1000 + i, 3, 20, 0)).unwrap(),
                        )
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut acks: Vec<_> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    acks.sort_by_key(|(_, info)| info.base_offset);
    for (i, (_, info)) in acks.iter().enumerate() {
        assert_eq!(info.base_offset, 3 * i as u64);
    }
    let all = read_all(&log, 0);
    assert_eq!(all.len(), 600);
    for (tag, info) in &acks {
        assert_eq!(all[info.base_offset as usize].1, value(*tag, 0, 20));
    }
}

#[test]
fn invalid_configuration_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let bad = LogConfig {
        segment_bytes: 10,
        ..LogConfig::default()
    };
    let err = Log::open(dir.path(), bad).unwrap_err();
    assert!(err.to_string().contains("segment_bytes"), "{err}");
}

#[test]
fn interval_durability_syncs_once_the_interval_has_passed() {
    use weir_log::CrashMode;
    let storage = MemStorage::new();
    let config = LogConfig {
        durability: Durability::Interval(Duration::from_millis(40)),
        ..small_config(Durability::Never)
    };
    let log = mem_log(&storage, config.clone());
    // The first append after open finds the interval elapsed only if 40 ms passed; right
    // after open it has not, so the append is visible but not yet synced.
    log.append(batch(1, 2, 30, 0)).unwrap();
    assert_eq!(
        log.high_watermark(),
        2,
        "acknowledged and visible before any sync"
    );
    let crashed = storage.crash_image(CrashMode::SyncedOnly);
    assert_eq!(
        mem_log(&crashed, config.clone()).high_watermark(),
        0,
        "not yet durable"
    );
    std::thread::sleep(Duration::from_millis(50));
    // `tick` syncs once the interval has passed, even with no further appends.
    log.tick().unwrap();
    let crashed = storage.crash_image(CrashMode::SyncedOnly);
    assert_eq!(mem_log(&crashed, config.clone()).high_watermark(), 2);
    // An append after the interval syncs by itself.
    std::thread::sleep(Duration::from_millis(50));
    log.append(batch(2, 3, 30, 0)).unwrap();
    let crashed = storage.crash_image(CrashMode::SyncedOnly);
    assert_eq!(mem_log(&crashed, config).high_watermark(), 5);
}

/// Open file descriptors of this process that point into `dir`.
fn fds_into(dir: &std::path::Path) -> usize {
    let dir = dir.canonicalize().unwrap();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.starts_with(&dir))
        .count()
}

#[test]
fn segments_hold_one_file_descriptor_each() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        checkpoint_interval_bytes: 4096,
        ..small_config(Durability::Never)
    };
    let log = Log::open(dir.path(), config.clone()).unwrap();
    assert_eq!(
        fds_into(dir.path()),
        1,
        "a new log holds its one segment open"
    );
    for k in 0..80u64 {
        log.append(batch(k, 5, 200, 0)).unwrap();
    }
    let segments = log.segment_count();
    assert!(segments >= 5);
    // One .log per segment: index files are open only while a checkpoint or roll writes them,
    // and checkpoints were written (every 4 KiB) in the active segment too.
    assert_eq!(fds_into(dir.path()), segments);
    log.close().unwrap();
    drop(log);
    let log = Log::open(dir.path(), config.clone()).unwrap();
    assert_eq!(fds_into(dir.path()), segments, "the same after recovery");
    // And after a recovery from an unclean stop (dropped without a close, as a kill leaves
    // it), which loads index files to check them and then writes no checkpoint.
    log.append(batch(80, 5, 200, 0)).unwrap();
    drop(log);
    let log = Log::open(dir.path(), config.clone()).unwrap();
    assert!(!log.recovery_report().clean_shutdown);
    assert_eq!(
        fds_into(dir.path()),
        log.segment_count(),
        "the same after an unclean stop"
    );
    // Sealed segments still serve reads and timestamp lookups from their in-memory indexes.
    assert_eq!(read_all(&log, 0).len(), 405);
}

/// The segment files (`.log`) in `dir`, oldest first, with their length and the bytes the
/// file system has allocated to them.
fn segment_files(dir: &std::path::Path) -> Vec<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| {
            let m = std::fs::metadata(p).unwrap();
            (m.len(), m.blocks() * 512)
        })
        .collect()
}

#[test]
fn disk_space_is_reserved_ahead_of_writes_and_given_back_when_a_segment_rolls() {
    let config = |preallocate_bytes| LogConfig {
        segment_bytes: 4 << 20,
        max_batch_bytes: 1 << 20,
        preallocate_bytes,
        durability: Durability::Never,
        ..LogConfig::default()
    };
    // Slack for block rounding. (A roll leaves about 50 KB of the reservation unused: the
    // last batch that fits ends that far short of the 4 MiB mark.)
    let slack = 8 << 10;

    // Without preallocation a segment holds about what it has written.
    let plain = tempfile::tempdir().unwrap();
    let log = Log::open(plain.path(), config(0)).unwrap();
    log.append(batch(0, 100, 1000, 0)).unwrap();
    let [(len, allocated)] = segment_files(plain.path())[..] else {
        panic!("one segment")
    };
    assert!(
        allocated < len + slack,
        "{allocated} allocated for {len} bytes"
    );

    // With it, nothing is reserved in a segment's first 64 KiB (a partition written rarely
    // appends without a trip to the file system's allocator)...
    let small = tempfile::tempdir().unwrap();
    let log = Log::open(small.path(), config(1 << 20)).unwrap();
    log.append(batch(0, 10, 1000, 0)).unwrap();
    let [(len, allocated)] = segment_files(small.path())[..] else {
        panic!("one segment")
    };
    assert!(
        len > 10_000 && allocated < len + slack,
        "{allocated} allocated for {len} bytes"
    );

    // ...and past that the first write reserves as much again as the segment holds; the
    // length stays that of the data.
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config(1 << 20)).unwrap();
    let mut expected = Vec::new();
    let mut append = |tag: u64| {
        let info = log.append(batch(tag, 100, 1000, 0)).unwrap();
        expected.extend((0..100).map(|i| (info.base_offset + i as u64, value(tag, i, 1000))));
    };
    append(0);
    let [(len, allocated)] = segment_files(dir.path())[..] else {
        panic!("one segment")
    };
    assert!(len > 100_000 && len < 110_000, "length {len}");
    assert!(
        allocated >= 2 * len - 4096,
        "{allocated} allocated for {len} bytes"
    );

    // Past 1 MiB the reservation stays at most 1 MiB ahead.
    for tag in 1..30 {
        append(tag);
        let (len, allocated) = *segment_files(dir.path()).last().unwrap();
        assert!(allocated >= len, "{allocated} allocated for {len} bytes");
        assert!(
            allocated < len + (1 << 20) + slack,
            "{allocated} allocated for {len} bytes"
        );
    }
    // Rolling gives the old segment's unused reservation back; so does closing.
    let mut tag = 30;
    while log.segment_count() < 2 {
        append(tag);
        tag += 1;
    }
    let files = segment_files(dir.path());
    let (old_len, old_allocated) = files[0];
    assert!(
        old_allocated < old_len + slack,
        "sealed: {old_allocated} allocated for {old_len} bytes"
    );
    let (len, allocated) = files[1];
    assert!(
        allocated > len + 50_000,
        "active: {allocated} allocated for {len} bytes"
    );
    log.close().unwrap();
    let (len, allocated) = segment_files(dir.path())[1];
    assert!(
        allocated < len + slack,
        "closed: {allocated} allocated for {len} bytes"
    );

    // The reserved space never shows up as data.
    drop(log);
    let log = Log::open(dir.path(), config(1 << 20)).unwrap();
    assert_eq!(read_all(&log, 0), expected);

    // A log that stops without closing (as after a crash) gets its reservation back when it
    // is opened again.
    for tag in 100..102 {
        let info = log.append(batch(tag, 100, 1000, 0)).unwrap();
        expected.extend((0..100).map(|i| (info.base_offset + i as u64, value(tag, i, 1000))));
    }
    let (len, allocated) = *segment_files(dir.path()).last().unwrap();
    assert!(
        allocated > len + 50_000,
        "active: {allocated} allocated for {len} bytes"
    );
    drop(log);
    let log = Log::open(dir.path(), config(1 << 20)).unwrap();
    let (len, allocated) = *segment_files(dir.path()).last().unwrap();
    assert!(
        allocated < len + slack,
        "reopened: {allocated} allocated for {len} bytes"
    );
    assert_eq!(read_all(&log, 0), expected);
}

#[test]
fn tail_headers_are_those_of_the_batches_reaching_into_the_last_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(Durability::Never);
    let log = Log::open(dir.path(), config.clone()).unwrap();
    // Batches of varied sizes over several segments: (base offset, end in the whole log).
    let mut batches = Vec::new();
    let mut end = 0u64;
    for tag in 0..70u64 {
        let b = batch(
            tag,
            1 + (tag as usize % 4),
            40 + (tag as usize * 37) % 700,
            1_000,
        );
        end += b.len() as u64;
        batches.push((log.append(b).unwrap().base_offset, end));
    }
    assert!(log.segment_count() > 3, "{} segments", log.segment_count());
    log.close().unwrap();
    // Read back from disk by a fresh process's log.
    let log = Log::open(dir.path(), config).unwrap();
    let tail = |log: &Log, max_bytes: u64| {
        let mut got = Vec::new();
        let cut = log
            .tail_headers(max_bytes, |h| got.push(h.base_offset as u64))
            .unwrap();
        (got, cut)
    };
    for max_bytes in [
        0,
        1,
        300,
        2_000,
        16 * 1024,
        20_000,
        45_000,
        end - 1,
        end,
        u64::MAX,
    ] {
        let from = end.saturating_sub(max_bytes.max(1));
        let expected: Vec<u64> = batches
            .iter()
            .filter(|(_, e)| *e > from)
            .map(|(b, _)| *b)
            .collect();
        assert_eq!(
            tail(&log, max_bytes),
            (expected, 0),
            "last {max_bytes} bytes"
        );
    }
    log.close().unwrap();

    // A damaged second batch in the first segment: that segment's walk ends there, the
    // later segments are still walked.
    let mut logs: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    logs.sort();
    let path = &logs[0];
    let mut bytes = std::fs::read(path).unwrap();
    let first_len = weir_batch::peek(&bytes).unwrap().total_len();
    bytes[first_len + 100] ^= 0x10;
    std::fs::write(path, &bytes).unwrap();
    let log = Log::open(dir.path(), small_config(Durability::Never)).unwrap();
    let first_segment = bytes.len() as u64;
    let expected: Vec<u64> = std::iter::once(batches[0].0)
        .chain(
            batches
                .iter()
                .filter(|(_, e)| *e > first_segment)
                .map(|(b, _)| *b),
        )
        .collect();
    assert_eq!(tail(&log, u64::MAX), (expected, 1));
    assert_eq!(tail(&log, 300).0.len(), 1);
}

/// After a kill -9 that tore nothing, the checkpoint on disk still holds: opening writes no
/// checkpoint and no index (the next checkpoint does), but syncs the data it read back, so
/// a power loss right after keeps every record it published.
#[test]
fn recovery_after_a_kill_keeps_the_checkpoint_and_syncs_what_it_publishes() {
    let storage = MemStorage::new();
    let config = small_config(Durability::Never);
    let checkpoint = std::path::Path::new(DIR).join("checkpoint");
    let log = mem_log(&storage, config.clone());
    // A roll and its checkpoint, then appends the checkpoint does not cover.
    let mut k = 0;
    while log.segment_count() < 2 {
        log.append(batch(k, 5, 200, 0)).unwrap();
        k += 1;
    }
    for _ in 0..3 {
        log.append(batch(k, 5, 200, 0)).unwrap();
        k += 1;
    }
    let written = log.high_watermark();
    let stored = storage
        .read_file(&checkpoint)
        .expect("a roll writes a checkpoint");
    drop(log);

    let killed = storage.crash_image(CrashMode::ProcessOnly);
    let log = mem_log(&killed, config.clone());
    assert_eq!(log.high_watermark(), written);
    assert!(log.recovery_report().scanned_bytes > 0);
    assert_eq!(
        killed.read_file(&checkpoint),
        Some(stored.clone()),
        "the checkpoint still holds; none was written"
    );
    // Appends go on; the next recovery verifies from the old checkpoint again.
    log.append(batch(k, 5, 200, 0)).unwrap();
    let written = log.high_watermark();
    drop(log);
    let power_loss = killed
        .crash_image(CrashMode::ProcessOnly)
        .crash_image(CrashMode::SyncedOnly);
    let log = mem_log(&power_loss, config.clone());
    assert!(
        log.high_watermark() >= written - 5,
        "what the first recovery published survives a power loss: {} of {written}",
        log.high_watermark()
    );
    assert_eq!(read_all(&log, 0).len() as u64, log.high_watermark());

    // A clean close writes the checkpoint (and indexes) and the next open trusts it.
    log.close().unwrap();
    drop(log);
    let log = mem_log(&power_loss, config);
    assert!(log.recovery_report().clean_shutdown);
    assert_eq!(log.recovery_report().scanned_bytes, 0);
    assert_ne!(power_loss.read_file(&checkpoint), Some(stored));
}

/// At durability `always` the space ahead of the writes is zero-filled and synced (a record
/// written over it then changes no file-system metadata). The zeros are not records: reads
/// never see them, a crash leaves them for recovery to cut without calling it a truncation,
/// and a close gives them back.
#[test]
fn zeros_written_ahead_at_durability_always_are_never_records() {
    let storage = MemStorage::new();
    let config = LogConfig {
        segment_bytes: 8 << 20,
        max_batch_bytes: 1 << 20,
        preallocate_bytes: 1 << 20,
        ..small_config(Durability::Always)
    };
    let segment = std::path::Path::new(DIR).join("00000000000000000000.log");
    let log = mem_log(&storage, config.clone());
    let mut expected = Vec::new();
    let mut tag = 0;
    let append = |log: &Log, expected: &mut Vec<(u64, Vec<u8>)>, tag: &mut u64| {
        let info = log.append(batch(*tag, 10, 1000, 0)).unwrap();
        expected.extend((0..10).map(|i| (info.base_offset + i as u64, value(*tag, i, 1000))));
        *tag += 1;
    };
    for _ in 0..20 {
        append(&log, &mut expected, &mut tag);
    }
    let data = log.size_bytes();
    let file = storage.read_file(&segment).unwrap();
    assert!(
        file.len() as u64 > data + 50_000,
        "{} bytes for {data} of data",
        file.len()
    );
    assert!(file[data as usize..].iter().all(|&b| b == 0));
    assert_eq!(read_all(&log, 0), expected);
    drop(log);

    // A power loss right after: every acknowledged record is there, the zeros are cut, and
    // nothing counts as truncated.
    for mode in [CrashMode::ProcessOnly, CrashMode::SyncedOnly] {
        let image = storage.crash_image(mode);
        let log = mem_log(&image, config.clone());
        assert_eq!(read_all(&log, 0), expected, "{mode:?}");
        let r = log.recovery_report();
        assert_eq!(
            (r.truncated_bytes, r.removed_segments),
            (0, 0),
            "{mode:?}: {r:?}"
        );
        assert_eq!(
            image.read_file(&segment).unwrap().len() as u64,
            data,
            "{mode:?}"
        );
    }

    // After recovery the log writes on, over new zeros, and a close leaves none.
    let image = storage.crash_image(CrashMode::ProcessOnly);
    let log = mem_log(&image, config.clone());
    for _ in 0..20 {
        append(&log, &mut expected, &mut tag);
    }
    assert!(image.read_file(&segment).unwrap().len() as u64 > log.size_bytes());
    log.close().unwrap();
    assert_eq!(
        image.read_file(&segment).unwrap().len() as u64,
        log.size_bytes()
    );
    drop(log);
    let log = mem_log(&image, config);
    assert_eq!(read_all(&log, 0), expected);
    assert!(log.recovery_report().clean_shutdown);
}
