//! Criterion benches of the log's hot paths: batch validation, append to the page cache,
//! reads from the hot tail and from a warm file.

use std::hint::black_box;

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
    g.finish();

    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        durability: Durability::Never,
        segment_bytes: 256 << 20,
        hot_tail_bytes: 64 << 20,
        retention_bytes: Some(512 << 20),
        ..LogConfig::default()
    };
    let log = Log::open(dir.path(), config).unwrap();
    let mut g = c.benchmark_group("append_never");
    g.throughput(Throughput::Bytes(big.len() as u64));
    g.bench_function("1000x1KiB", |b| {
        b.iter_batched(
            || big.clone(),
            |v| log.append(v).unwrap(),
            criterion::BatchSize::LargeInput,
        )
    });
    let small = batch(1, 100);
    g.throughput(Throughput::Bytes(small.len() as u64));
    g.bench_function("1x100B", |b| {
        b.iter_batched(
            || small.clone(),
            |v| log.append(v).unwrap(),
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();
    log.apply_retention(i64::MAX).unwrap();

    let hwm = log.high_watermark();
    let mut g = c.benchmark_group("read");
    g.throughput(Throughput::Bytes(1 << 20));
    g.bench_function("hot_tail_1MiB", |b| {
        b.iter(|| {
            let r = log.read(black_box(hwm - 5000), 1 << 20).unwrap();
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
}

criterion_group!(log_benches, benches);
criterion_main!(log_benches);
