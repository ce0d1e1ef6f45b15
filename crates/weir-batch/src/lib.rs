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
//!
//! Every decoder here treats its input as hostile: lengths are checked before they are used,
//! nothing is allocated from a length read off the input, and malformed input yields a
//! [`BatchError`] naming the fault, never a panic.

pub mod builder;
pub mod compression;
pub mod header;
pub mod records;

pub use builder::{BatchBuilder, RecordSpec};
pub use header::{
    BatchError, BatchHeader, Compression, HEADER_LEN, MAGIC_V2, peek, set_base_offset,
    set_log_append_time, validate,
};
pub use records::{
    Record, RecordHeader, Records, check_records, check_records_with_first, payload, section,
};

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
