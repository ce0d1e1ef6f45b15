//! Damaged files on the real file system: each gives exactly the valid prefix, and a clear
//! error where stored data is really damaged.

use crate::common;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use common::*;
use weir_log::{Durability, Log, LogConfig, LogError};

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 16 * 1024,
        index_interval_bytes: 512,
        max_batch_bytes: 8 * 1024,
        hot_tail_bytes: 0,
        ..LogConfig::default()
    }
}

/// Writes 40 batches of 4 records (about 4 segments) and closes the log cleanly.
fn populated(dir: &Path) -> Vec<(u64, Vec<u8>)> {
    let log = Log::open(dir, config()).unwrap();
    for tag in 0..40u64 {
        log.append(batch(tag, 4, 300, 1000 + tag as i64)).unwrap();
    }
    let all = read_all(&log, 0);
    assert_eq!(all.len(), 160);
    assert!(log.segment_count() >= 3);
    log.close().unwrap();
    all
}

fn segment_files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}

#[test]
fn garbage_after_the_last_batch_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let all = populated(dir.path());
    let last = segment_files(dir.path(), "log").pop().unwrap();
    let before = fs::metadata(&last).unwrap().len();
    OpenOptions::new()
        .append(true)
        .open(&last)
        .unwrap()
        .write_all(&[0xAB; 777])
        .unwrap();

    let log = Log::open(dir.path(), config()).unwrap();
    let report = log.recovery_report();
    assert_eq!(report.truncated_bytes, 777);
    assert!(
        report
            .truncation_reason
            .as_deref()
            .unwrap()
            .contains("length field"),
        "{report:?}"
    );
    assert_eq!(fs::metadata(&last).unwrap().len(), before);
    assert_eq!(read_all(&log, 0), all);
    // Appends continue right after the valid prefix.
    assert_eq!(log.append(batch(100, 1, 10, 0)).unwrap().base_offset, 160);
}

#[test]
fn a_batch_cut_midway_is_dropped_and_the_rest_kept() {
    let dir = tempfile::tempdir().unwrap();
    let all = populated(dir.path());
    let last = segment_files(dir.path(), "log").pop().unwrap();
    let len = fs::metadata(&last).unwrap().len();
    // Each batch is a bit over 1.2 KB: cutting 500 bytes tears the last one.
    OpenOptions::new()
        .write(true)
        .open(&last)
        .unwrap()
        .set_len(len - 500)
        .unwrap();

    let log = Log::open(dir.path(), config()).unwrap();
    assert_eq!(log.high_watermark(), 156, "exactly the last batch is gone");
    assert_eq!(read_all(&log, 0), all[..156].to_vec());
    assert!(log.recovery_report().truncated_bytes > 0);
    assert!(
        log.recovery_report()
            .truncation_reason
            .as_deref()
            .unwrap()
            .contains("cut short")
    );
}

#[test]
fn a_flipped_bit_in_an_older_segment_is_reported_where_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let all = populated(dir.path());
    let first = segment_files(dir.path(), "log").remove(0);
    let mut bytes = fs::read(&first).unwrap();
    // Flip a bit inside the value of a record of the third batch (each batch ~1.27 KB).
    let batch_len = weir_batch::peek(&bytes).unwrap().total_len();
    let target = 2 * batch_len + 200;
    bytes[target] ^= 0x04;
    fs::write(&first, &bytes).unwrap();

    let log = Log::open(dir.path(), config()).unwrap();
    assert_eq!(
        log.high_watermark(),
        160,
        "older segments are not truncated"
    );
    // The batches before the damage read fine.
    let before = log.read(0, 2 * batch_len).unwrap();
    assert_eq!(records(&before), all[..8].to_vec());
    // A read that reaches the damaged batch stops before it ...
    let up_to = log.read(4, 100_000).unwrap();
    assert_eq!(records(&up_to), all[4..8].to_vec());
    // ... and a read at it names the segment and the position.
    match log.read(9, 100) {
        Err(LogError::Corrupt {
            segment: 0,
            position,
            reason,
        }) => {
            assert_eq!(position, 2 * batch_len as u64);
            assert!(reason.contains("CRC"), "{reason}");
        }
        other => panic!("expected a corruption error, got {other:?}"),
    }
    // Later batches are still served.
    let after = log.read(12, 1).unwrap();
    assert_eq!(records(&after), all[12..16].to_vec());
    assert_eq!(read_all(&log, 12), all[12..].to_vec());
}

#[test]
fn missing_or_garbage_indexes_are_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let all = populated(dir.path());
    let indexes = segment_files(dir.path(), "index");
    fs::remove_file(&indexes[0]).unwrap();
    fs::write(&indexes[1], b"not an index at all").unwrap();
    let times = segment_files(dir.path(), "timeindex");
    fs::write(&times[1], [0xFFu8; 24]).unwrap();

    let log = Log::open(dir.path(), config()).unwrap();
    assert_eq!(log.recovery_report().rebuilt_indexes, 2);
    assert_eq!(read_all(&log, 0), all);
    for offset in [0, 37, 77, 121, 159] {
        assert!(
            records(&log.read(offset, 1).unwrap())
                .iter()
                .any(|(o, _)| *o == offset)
        );
    }
    // Batch 17 holds timestamps 1017..=1020; its last record (offset 71) is the first at 1020.
    assert_eq!(log.offset_for_timestamp(1000 + 20).unwrap(), Some(71));
    drop(log);
    // The rebuilt files are good for the next open.
    let log = Log::open(dir.path(), config()).unwrap();
    assert_eq!(log.recovery_report().rebuilt_indexes, 0);
    assert!(fs::metadata(&indexes[0]).unwrap().len() > 0);
}

#[test]
fn a_damaged_checkpoint_means_verifying_everything_not_losing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let all = populated(dir.path());
    fs::write(dir.path().join("checkpoint"), b"garbage").unwrap();
    let log = Log::open(dir.path(), config()).unwrap();
    let report = log.recovery_report();
    assert!(!report.clean_shutdown);
    let total: u64 = segment_files(dir.path(), "log")
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .sum();
    assert_eq!(report.scanned_bytes, total, "every byte verified");
    assert_eq!(read_all(&log, 0), all);
}

/// A checkpoint file too large to be one is not rewritten in place forever (it would be
/// ignored at every open): it goes, and the next checkpoint starts a new file.
#[test]
fn an_oversized_checkpoint_is_replaced_not_ignored_forever() {
    let dir = tempfile::tempdir().unwrap();
    let all = populated(dir.path());
    let path = dir.path().join("checkpoint");
    fs::write(&path, vec![7u8; 20_000]).unwrap();
    let log = Log::open(dir.path(), config()).unwrap();
    assert!(!log.recovery_report().clean_shutdown);
    assert_eq!(read_all(&log, 0), all);
    log.close().unwrap();
    drop(log);
    assert!(fs::metadata(&path).unwrap().len() <= 8192);
    let log = Log::open(dir.path(), config()).unwrap();
    assert!(log.recovery_report().clean_shutdown);
    assert_eq!(log.recovery_report().scanned_bytes, 0);
    assert_eq!(read_all(&log, 0), all);
}

#[test]
fn a_stray_segment_that_does_not_continue_the_log_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let all = populated(dir.path());
    let stray = dir.path().join(format!("{:020}.log", 10_000));
    fs::write(&stray, batch(1, 1, 10, 0)).unwrap();
    let log = Log::open(dir.path(), config()).unwrap();
    assert_eq!(log.recovery_report().removed_segments, 1);
    assert!(!stray.exists());
    assert_eq!(read_all(&log, 0), all);
    assert_eq!(log.append(batch(2, 1, 10, 0)).unwrap().base_offset, 160);
}

#[test]
fn an_empty_segment_left_by_an_interrupted_roll_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let all = populated(dir.path());
    // Offsets 3.. live in the first segment; a stray empty segment claiming them must not
    // hide them.
    let stray = dir.path().join(format!("{:020}.log", 3));
    fs::write(&stray, b"").unwrap();
    let log = Log::open(dir.path(), config()).unwrap();
    assert_eq!(log.recovery_report().removed_segments, 1);
    assert!(!stray.exists());
    assert_eq!(read_all(&log, 0), all);
}

#[test]
fn unknown_files_are_left_alone_and_a_missing_directory_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("a/b/partition-3");
    let log = Log::open(
        &nested,
        LogConfig {
            durability: Durability::Never,
            ..config()
        },
    )
    .unwrap();
    log.append(batch(1, 1, 10, 0)).unwrap();
    log.close().unwrap();
    fs::write(nested.join("README"), b"operator notes").unwrap();
    let backup = nested.join(format!("{:020}.log.bak", 0));
    fs::write(&backup, b"an operator's copy").unwrap();
    let log = Log::open(&nested, config()).unwrap();
    assert_eq!(log.high_watermark(), 1);
    assert!(nested.join("README").exists());
    assert!(backup.exists());
}
