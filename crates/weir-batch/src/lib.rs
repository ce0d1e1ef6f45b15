//! Kafka's record batch v2 (magic 2), the unit weir stores and ships.
//!
//! weir keeps record batches byte for byte as a Kafka producer sends them: on disk, in memory
//! and on every wire. This crate is the only place that knows that layout. It does no I/O.
//!
//! Layout:
//! - [`header`]: the fixed 61-byte batch header, [`validate`] (length, magic, CRC32C) and
//!   [`peek`] (header only, for scanning a log without checksumming it),
//!   [`set_base_offset`] (the one field a log rewrites; it lies outside the CRC).
//! - [`builder`]: [`BatchBuilder`], which encodes batches, compressed on request.
//! - [`records`]: [`Records`], a bounds-checked decoder of the records inside a batch, and
//!   [`payload`], which hands it a compressed batch's records decompressed.
//! - [`compression`]: bounded decompression for gzip, snappy, LZ4 and zstd batches.
//! - [`cursor`]: a bounds-checked big-endian reader for other small formats read off the
//!   wire or the disk.
//! - [`ring`]: the consistent-hash ring that maps a record's key to a partition. Every client
//!   and every front door routes keys with it, so it is part of each protocol; it lives here,
//!   beside the records whose keys it routes, so that the broker needs no protocol crate.
//!
//! Every decoder here treats its input as hostile: lengths are checked before they are used,
//! nothing is allocated from a length read off the input, and malformed input yields a
//! [`BatchError`] naming the fault, never a panic.

pub mod builder;
pub mod compression;
pub mod cursor;
pub mod header;
pub mod records;
pub mod ring;

pub use builder::{BatchBuilder, RecordSpec};
pub use header::{
    BatchError, BatchHeader, Compression, HEADER_LEN, MAGIC_V2, peek, set_base_offset,
    set_log_append_time, validate,
};
pub use records::{
    Record, RecordHeader, Records, Retained, check_records, check_records_with,
    check_records_with_first, payload, retain, section,
};
pub use ring::Ring;

/// The offset after the last whole batch in `buf` (consecutive batches, as a log read returns
/// them), read from the headers alone: no CRC is checked. `None` if `buf` holds no whole batch.
pub fn end_offset(buf: &[u8]) -> Option<u64> {
    let mut rest = buf;
    let mut end = None;
    while let Ok(h) = peek(rest) {
        let len = h.total_len();
        if len > rest.len() {
            break;
        }
        end = Some(h.next_offset().max(0) as u64);
        rest = &rest[len..];
    }
    end
}

/// Iterates over consecutive batches in `buf` (as returned by a log read), checking each one
/// with [`validate`]. Stops at the end of `buf`; a trailing partial or damaged batch yields
/// one error and ends the iteration.
#[derive(Debug, Clone)]
pub struct Batches<'a> {
    buf: &'a [u8],
    failed: bool,
}

impl<'a> Batches<'a> {
    /// Iterates over the batches in `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, failed: false }
    }
}

impl<'a> Iterator for Batches<'a> {
    type Item = Result<(BatchHeader, &'a [u8]), BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() || self.failed {
            return None;
        }
        let result = peek(self.buf).and_then(|h| {
            let len = h.total_len();
            if len > self.buf.len() {
                return Err(BatchError::Truncated {
                    needed: len,
                    available: self.buf.len(),
                });
            }
            let bytes = &self.buf[..len];
            validate(bytes).map(|h| (h, bytes))
        });
        match result {
            Ok((h, bytes)) => {
                self.buf = &self.buf[bytes.len()..];
                Some(Ok((h, bytes)))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(base: u64, n: usize) -> Vec<u8> {
        let mut b = BatchBuilder::new(0);
        for _ in 0..n {
            b.push(RecordSpec::value(b"v"));
        }
        let mut bytes = b.build();
        set_base_offset(&mut bytes, base as i64);
        bytes
    }

    #[test]
    fn the_end_offset_is_after_the_last_whole_batch() {
        let mut buf = batch(10, 3);
        buf.extend(batch(13, 4));
        assert_eq!(end_offset(&buf), Some(17));
        // A cut-off batch at the end does not count; nothing whole, no offset.
        let whole = buf.len();
        buf.extend(&batch(17, 2)[..20]);
        assert_eq!(end_offset(&buf), Some(17));
        assert_eq!(end_offset(&buf[whole..]), None);
        assert_eq!(
            end_offset(b"not a batch at all, but long enough to hold a header........"),
            None
        );
        assert_eq!(end_offset(&[]), None);
    }
}
