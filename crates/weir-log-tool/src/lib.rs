//! Shared pieces of `weir-log-tool`: the data the benchmarks append and the values the
//! kill -9 torture test writes and later checks.

use weir_batch::{BatchBuilder, RecordSpec};

/// A batch of `records` records of `record_bytes` each, values derived from `tag`.
pub fn make_batch(tag: u64, records: usize, record_bytes: usize) -> Vec<u8> {
    let mut b = BatchBuilder::with_capacity(1_700_000_000_000, records * (record_bytes + 16) + 64);
    let mut v = vec![0u8; record_bytes];
    for i in 0..records {
        let x = tag
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(i as u64);
        for (j, chunk) in v.chunks_mut(8).enumerate() {
            let word = x.wrapping_add(j as u64).to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
        b.push(RecordSpec::value(&v));
    }
    b.build()
}

/// The value of record `i` of the batch tagged `tag` in the torture test: 16 bytes of
/// identity, then filler, `len` bytes in all (at least 16).
pub fn torture_value(tag: u64, i: usize, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&tag.to_be_bytes());
    v.extend_from_slice(&(i as u64).to_be_bytes());
    let mut x = tag ^ (i as u64) << 17;
    while v.len() < len {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        v.push((x >> 59) as u8);
    }
    v
}
