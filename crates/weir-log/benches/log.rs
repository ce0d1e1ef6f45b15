//! Criterion benches of the log's hot paths, CPU only: batch validation, append to files on
//! tmpfs (`/dev/shm` when present: the page-cache write without a disk behind it), beside a
//! bare pwrite of the same bytes, the floor any append pays; reads from the hot tail and from a
//! file in the page cache. Disk-bound figures come from `scripts/bench-log`, beside fio.

use std::hint::black_box;
use std::os::unix::fs::FileExt;
use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use weir_batch::{BatchBuilder, RecordSpec};
use weir_log::{Durability, Log, LogConfig};

fn batch(records: usize, record_bytes: usize) -> Vec<u8> {
    let mut b = BatchBuilder::with_capacity(0, records * (record_bytes + 16) + 64);
    let v = vec![0x5au8; record_bytes];
    for _ in 0..records {
        b.push(RecordSpec::value(&v));
    }
    b.build()
}

fn benches(c: &mut Criterion) {
    let big = batch(1000, 1024);
    let mut g = c.benchmark_group("batch");
    g.throughput(Throughput::Bytes(big.len() as u64));
    g.bench_function("validate_1000x1KiB", |b| {
        b.iter(|| weir_batch::validate(black_box(&big)).unwrap())
    });
    // What the broker adds before an append: every record decoded (no CRC).
    g.bench_function("check_records_1000x1KiB", |b| {
        b.iter(|| weir_batch::check_records(black_box(&big)).unwrap())
    });
    g.finish();

    let config = LogConfig {
        durability: Durability::Never,
        segment_bytes: 64 << 20,
        hot_tail_bytes: 64 << 20,
        retention_bytes: Some(128 << 20),
        ..LogConfig::default()
    };
    let shm = Path::new("/dev/shm");
    let tmp = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .unwrap();
    let mem_log = Log::open(tmp.path(), config.clone()).unwrap();
    let mut g = c.benchmark_group("append_tmpfs");
    g.throughput(Throughput::Bytes(big.len() as u64));
    g.bench_function("1000x1KiB", |b| {
        let mut n = 0u64;
        b.iter_batched(
            || big.clone(),
            |v| {
                mem_log.append(v).unwrap();
                n += 1;
                if n % 64 == 0 {
                    mem_log.apply_retention(i64::MAX).unwrap();
                }
            },
            criterion::BatchSize::LargeInput,
        )
    });
    // The floor: the same bytes written with a bare pwrite at an advancing position of a
    // file on the same file system (restarted every 64 MiB, as retention frees segments).
    let raw = std::fs::File::create(tmp.path().join("raw")).unwrap();
    let mut pos = 0u64;
    g.bench_function("raw_pwrite_1000x1KiB", |b| {
        b.iter_batched(
            || big.clone(),
            |v| {
                if pos > 64 << 20 {
                    raw.set_len(0).unwrap();
                    pos = 0;
                }
                raw.write_all_at(black_box(&v), pos).unwrap();
                pos += v.len() as u64;
            },
            criterion::BatchSize::LargeInput,
        )
    });
    g.finish();

    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        hot_tail_bytes: 16 << 20,
        ..config
    };
    let log = Log::open(dir.path(), config).unwrap();
    for _ in 0..64 {
        log.append(big.clone()).unwrap();
    }

    // Reads, while the newest data is 1 MiB batches.
    let hwm = log.high_watermark();
    let mut g = c.benchmark_group("read");
    g.throughput(Throughput::Bytes(1 << 20));
    g.bench_function("hot_tail_1MiB", |b| {
        b.iter(|| {
            let r = log.read(black_box(hwm - 1500), 1 << 20).unwrap();
            assert!(r.from_memory);
            r
        })
    });
    let start = log.log_start_offset();
    g.bench_function("page_cache_1MiB", |b| {
        b.iter(|| {
            let r = log.read(black_box(start), 1 << 20).unwrap();
            assert!(!r.from_memory);
            r
        })
    });
    g.finish();

    let mut g = c.benchmark_group("append_tmpfs");
    let small = batch(1, 100);
    g.throughput(Throughput::Bytes(small.len() as u64));
    g.bench_function("1x100B", |b| {
        b.iter_batched(
            || small.clone(),
            |v| mem_log.append(v).unwrap(),
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(log_benches, benches);
criterion_main!(log_benches);
