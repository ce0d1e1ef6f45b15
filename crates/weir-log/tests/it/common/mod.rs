//! Helpers shared by the weir-log integration tests.

use std::path::Path;
use std::sync::Arc;

use weir_batch::{BatchBuilder, Batches, RecordSpec, Records};
use weir_log::{Durability, Log, LogConfig, MemStorage, ReadResult};

/// A batch of `n` records whose values encode `(tag, i)`, so a reader can tell exactly which
/// append produced them.
pub fn batch(tag: u64, n: usize, value_len: usize, timestamp: i64) -> Vec<u8> {
    let mut b = BatchBuilder::with_capacity(timestamp, n * (value_len + 24) + 64);
    for i in 0..n {
        let v = value(tag, i, value_len);
        b.push(RecordSpec {
            timestamp: Some(timestamp + i as i64),
            ..RecordSpec::value(&v)
        });
    }
    b.build()
}

pub fn value(tag: u64, i: usize, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len.max(16));
    v.extend_from_slice(&tag.to_be_bytes());
    v.extend_from_slice(&(i as u64).to_be_bytes());
    let mut x = tag.wrapping_mul(31).wrapping_add(i as u64);
    while v.len() < len {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        v.push((x >> 56) as u8);
    }
    v
}

/// Every record in a read, as `(offset, value)`, with each batch validated.
pub fn records(r: &ReadResult) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    for chunk in &r.chunks {
        for b in Batches::new(chunk) {
            let (_, bytes) = b.expect("log served a damaged batch");
            for rec in Records::new(bytes).unwrap() {
                let rec = rec.unwrap();
                out.push((rec.offset as u64, rec.value.unwrap().to_vec()));
            }
        }
    }
    out
}

/// Reads the whole log from `from` to the high watermark.
pub fn read_all(log: &Log, from: u64) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut offset = from;
    loop {
        let r = log.read(offset, 64 * 1024).expect("read");
        if r.is_empty() {
            break;
        }
        let recs = records(&r);
        let next = recs.last().unwrap().0 + 1;
        out.extend(recs.into_iter().filter(|(o, _)| *o >= offset));
        offset = next;
    }
    out
}

pub fn small_config(durability: Durability) -> LogConfig {
    LogConfig {
        segment_bytes: 16 * 1024,
        index_interval_bytes: 512,
        max_batch_bytes: 8 * 1024,
        durability,
        hot_tail_bytes: 4 * 1024,
        checkpoint_interval_bytes: 8 * 1024,
        ..LogConfig::default()
    }
}

pub fn mem_log(storage: &MemStorage, config: LogConfig) -> Log {
    Log::open_with(
        Arc::new(storage.clone()),
        Path::new("/data/topic-0"),
        config,
    )
    .expect("open")
}

pub const DIR: &str = "/data/topic-0";
