//! A compaction pass on a real disk, for `scripts/bench-compaction`: writes RECORDS records over
//! KEYS keys (values of VALUE_BYTES bytes, 100 records a batch, durability `never`) into a log
//! in DIR, closes it, opens it again and runs one pass with no rate limit. Prints one JSON line:
//! what was written, the pass's report, its time and MB/s (read plus written), the process's
//! peak RSS, and whether the page cache was dropped before the pass (`cold`: it is when the
//! process may write /proc/sys/vm/drop_caches; otherwise the pass reads from memory).
//!
//! Usage: compact_bench DIR RECORDS KEYS VALUE_BYTES

use std::time::Instant;

use weir_batch::{BatchBuilder, RecordSpec};
use weir_log::{CompactOptions, Durability, Log, LogConfig};

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, records, keys, value_bytes] = &args[..] else {
        eprintln!("usage: compact_bench DIR RECORDS KEYS VALUE_BYTES");
        std::process::exit(2);
    };
    let (records, keys, value_bytes): (u64, u64, usize) = (
        records.parse().unwrap(),
        keys.parse().unwrap(),
        value_bytes.parse().unwrap(),
    );
    let config = LogConfig {
        durability: Durability::Never,
        segment_bytes: 64 << 20,
        retention_age: None,
        ..LogConfig::default()
    };
    let log = Log::open(dir, config.clone()).unwrap();
    let started = Instant::now();
    let value = vec![b'v'; value_bytes];
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut i = 0;
    while i < records {
        let mut b = BatchBuilder::with_capacity(1_764_000_000_000, 100 * (value_bytes + 32));
        let keys_of_batch: Vec<String> = (0..100.min(records - i))
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                format!("key-{:08}", rng % keys)
            })
            .collect();
        for k in &keys_of_batch {
            b.push(RecordSpec::keyed(k.as_bytes(), &value));
        }
        i += keys_of_batch.len() as u64;
        log.append(b.build()).unwrap();
    }
    log.close().unwrap();
    let write_s = started.elapsed().as_secs_f64();
    drop(log);
    // Sync, then drop the page cache, so that the pass reads from the disk.
    let cold = std::process::Command::new("sync")
        .status()
        .is_ok_and(|s| s.success())
        && std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok();
    let log = Log::open(dir, config).unwrap();
    let before = log.size_bytes();
    let segments_before = log.segment_count();
    let opts = CompactOptions {
        now_ms: 1_764_000_000_000 + 86_400_000,
        delete_retention_ms: 86_400_000,
        min_lag_ms: 0,
        key_map_bytes: 64 << 20,
    };
    let started = Instant::now();
    let r = log.compact(&opts, &mut |_| {}).unwrap();
    let secs = started.elapsed().as_secs_f64();
    let after = log.size_bytes();
    log.close().unwrap();
    let mb = |b: u64| b as f64 / 1e6;
    println!(
        "{{\"records\":{records},\"keys\":{keys},\"value_bytes\":{value_bytes},\
         \"write_s\":{write_s:.2},\"log_bytes_before\":{before},\"log_bytes_after\":{after},\
         \"segments_before\":{segments_before},\"segments_rewritten\":{},\
         \"segments_removed\":{},\"records_removed\":{},\"bytes_read\":{},\
         \"bytes_written\":{},\"pass_s\":{secs:.3},\"pass_mb_per_s\":{:.1},\
         \"input_mb_per_s\":{:.1},\"peak_rss_kib\":{},\"cold\":{cold}}}",
        r.segments_rewritten,
        r.segments_removed,
        r.records_removed,
        r.bytes_read,
        r.bytes_written,
        mb(r.bytes_read + r.bytes_written) / secs,
        mb(before) / secs,
        peak_rss_kib(),
    );
}
