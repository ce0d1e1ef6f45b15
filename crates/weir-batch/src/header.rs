//! The fixed header of a record batch v2 and its validation.
//!
//! All integers are big-endian. Byte positions:
//!
//! | pos | size | field                  | notes                                        |
//! |----:|-----:|------------------------|----------------------------------------------|
//! |   0 |    8 | base offset            | written by the log; outside the CRC           |
//! |   8 |    4 | batch length           | bytes after this field (total = 12 + length) |
//! |  12 |    4 | partition leader epoch | outside the CRC                               |
//! |  16 |    1 | magic                  | always 2                                      |
//! |  17 |    4 | CRC32C                 | Castagnoli, over bytes 21..end                |
//! |  21 |    2 | attributes             | bits 0-2 compression, 3 timestamp type, 4 transactional, 5 control |
//! |  23 |    4 | last offset delta      |                                               |
//! |  27 |    8 | base timestamp         | ms since the epoch                            |
//! |  35 |    8 | max timestamp          |                                               |
//! |  43 |    8 | producer id            |                                               |
//! |  51 |    2 | producer epoch         |                                               |
//! |  53 |    4 | base sequence          |                                               |
//! |  57 |    4 | record count           |                                               |
//! |  61 |    … | records                | possibly compressed                           |

use thiserror::Error;

/// Size of the fixed batch header.
pub const HEADER_LEN: usize = 61;
/// The only batch format weir accepts.
pub const MAGIC_V2: u8 = 2;
/// Bytes before the batch-length field is counted (base offset + batch length).
pub const LOG_OVERHEAD: usize = 12;

pub(crate) const BASE_OFFSET: usize = 0;
pub(crate) const BATCH_LENGTH: usize = 8;
pub(crate) const LEADER_EPOCH: usize = 12;
pub(crate) const MAGIC: usize = 16;
pub(crate) const CRC: usize = 17;
pub(crate) const ATTRIBUTES: usize = 21;
pub(crate) const LAST_OFFSET_DELTA: usize = 23;
pub(crate) const BASE_TIMESTAMP: usize = 27;
pub(crate) const MAX_TIMESTAMP: usize = 35;
pub(crate) const PRODUCER_ID: usize = 43;
pub(crate) const PRODUCER_EPOCH: usize = 51;
pub(crate) const BASE_SEQUENCE: usize = 53;
pub(crate) const RECORD_COUNT: usize = 57;

/// What is wrong with a batch. Each variant names one fault.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BatchError {
    /// Fewer bytes than the batch needs (the fixed header, or the declared length).
    #[error("record batch truncated: needs {needed} bytes, {available} available")]
    Truncated { needed: usize, available: usize },
    /// The batch-length field is impossible (smaller than a header, or negative).
    #[error("record batch length field {0} is invalid (must be at least 49)")]
    BadLength(i32),
    /// The declared length does not match the bytes given for exactly one batch.
    #[error("record batch declares {declared} bytes but {actual} were given")]
    LengthMismatch { declared: usize, actual: usize },
    /// Not a v2 batch.
    #[error("record batch magic is {0}, only magic 2 is supported")]
    BadMagic(i8),
    /// The CRC32C over attributes..end does not match the stored one.
    #[error("record batch CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    /// Compression codec bits name no known codec.
    #[error("record batch compression codec {0} is unknown")]
    BadCompression(u8),
    /// Record count and last offset delta disagree or are negative.
    #[error("record batch has record count {count} but last offset delta {last_offset_delta}")]
    BadRecordCount { count: i32, last_offset_delta: i32 },
    /// A record inside the batch is malformed.
    #[error("record {index} in batch is malformed: {reason}")]
    BadRecord { index: usize, reason: &'static str },
    /// The batch is compressed and this operation needs its records decoded.
    #[error(
        "record batch is compressed with {0:?}; records cannot be decoded without decompression"
    )]
    Compressed(Compression),
    /// A compressed batch's records could not be decompressed.
    #[error("record batch {codec:?} decompression failed: {reason}")]
    Decompress { codec: Compression, reason: String },
    /// Compressing a batch's records failed.
    #[error("record batch {codec:?} compression failed: {reason}")]
    Compress { codec: Compression, reason: String },
    /// A compressed batch decompresses to more than weir accepts.
    #[error("record batch decompresses ({codec:?}) to more than {limit} bytes")]
    DecompressedTooLarge { codec: Compression, limit: usize },
}

/// Compression codec named by attribute bits 0-2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    /// The codec's value in attribute bits 0-2.
    pub fn bits(self) -> u8 {
        match self {
            Self::None => 0,
            Self::Gzip => 1,
            Self::Snappy => 2,
            Self::Lz4 => 3,
            Self::Zstd => 4,
        }
    }

    fn from_bits(bits: u8) -> Result<Self, BatchError> {
        Ok(match bits {
            0 => Self::None,
            1 => Self::Gzip,
            2 => Self::Snappy,
            3 => Self::Lz4,
            4 => Self::Zstd,
            other => return Err(BatchError::BadCompression(other)),
        })
    }
}

/// The decoded fixed header of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

impl BatchHeader {
    /// Total bytes of the batch, header included.
    pub fn total_len(&self) -> usize {
        LOG_OVERHEAD + self.batch_length as usize
    }

    /// Offset of the last record (base offset + last offset delta).
    /// Saturates rather than overflow on hostile input.
    pub fn last_offset(&self) -> i64 {
        self.base_offset
            .saturating_add(i64::from(self.last_offset_delta))
    }

    /// Offset after the last record. Saturates rather than overflow on hostile input.
    pub fn next_offset(&self) -> i64 {
        self.last_offset().saturating_add(1)
    }

    /// Compression codec of the records section.
    pub fn compression(&self) -> Compression {
        // Cannot fail: `peek` rejected unknown codecs.
        Compression::from_bits((self.attributes & 0x7) as u8).unwrap_or(Compression::None)
    }

    /// Whether timestamps are LogAppendTime (attribute bit 3) rather than CreateTime.
    pub fn is_log_append_time(&self) -> bool {
        self.attributes & 0x8 != 0
    }

    /// Whether the batch belongs to a transaction (attribute bit 4).
    pub fn is_transactional(&self) -> bool {
        self.attributes & 0x10 != 0
    }

    /// Whether this is a control batch (attribute bit 5).
    pub fn is_control(&self) -> bool {
        self.attributes & 0x20 != 0
    }

    /// Checks what a log requires of a batch a producer sends: at least one record and one
    /// offset per record (`record_count == last_offset_delta + 1`), so that the log can hand out
    /// offsets without gaps.
    pub fn check_producer_batch(&self) -> Result<(), BatchError> {
        if self.record_count < 1
            || self.last_offset_delta < 0
            || i64::from(self.record_count) != i64::from(self.last_offset_delta) + 1
        {
            return Err(BatchError::BadRecordCount {
                count: self.record_count,
                last_offset_delta: self.last_offset_delta,
            });
        }
        Ok(())
    }
}

fn be_i64(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}

/// Decodes the fixed header at the start of `buf` without checking the CRC or whether the whole
/// batch is present. Checks the length field, the magic byte and the codec bits, so that a scan
/// can hop from batch to batch by `total_len()`.
pub fn peek(buf: &[u8]) -> Result<BatchHeader, BatchError> {
    if buf.len() < HEADER_LEN {
        return Err(BatchError::Truncated {
            needed: HEADER_LEN,
            available: buf.len(),
        });
    }
    let batch_length = be_i32(buf, BATCH_LENGTH);
    if batch_length < (HEADER_LEN - LOG_OVERHEAD) as i32 {
        return Err(BatchError::BadLength(batch_length));
    }
    let magic = buf[MAGIC] as i8;
    if magic != MAGIC_V2 as i8 {
        return Err(BatchError::BadMagic(magic));
    }
    let attributes = be_i16(buf, ATTRIBUTES);
    Compression::from_bits((attributes & 0x7) as u8)?;
    Ok(BatchHeader {
        base_offset: be_i64(buf, BASE_OFFSET),
        batch_length,
        partition_leader_epoch: be_i32(buf, LEADER_EPOCH),
        magic,
        crc: be_u32(buf, CRC),
        attributes,
        last_offset_delta: be_i32(buf, LAST_OFFSET_DELTA),
        base_timestamp: be_i64(buf, BASE_TIMESTAMP),
        max_timestamp: be_i64(buf, MAX_TIMESTAMP),
        producer_id: be_i64(buf, PRODUCER_ID),
        producer_epoch: be_i16(buf, PRODUCER_EPOCH),
        base_sequence: be_i32(buf, BASE_SEQUENCE),
        record_count: be_i32(buf, RECORD_COUNT),
    })
}

/// Validates that `buf` is exactly one well-formed batch: header, declared length equal to
/// `buf.len()`, magic 2, known codec and a matching CRC32C.
pub fn validate(buf: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = peek(buf)?;
    let declared = header.total_len();
    if declared != buf.len() {
        if declared > buf.len() {
            return Err(BatchError::Truncated {
                needed: declared,
                available: buf.len(),
            });
        }
        return Err(BatchError::LengthMismatch {
            declared,
            actual: buf.len(),
        });
    }
    let computed = crc_fast::crc32_iscsi(&buf[ATTRIBUTES..]);
    if computed != header.crc {
        return Err(BatchError::CrcMismatch {
            stored: header.crc,
            computed,
        });
    }
    Ok(header)
}

/// Writes `offset` into the base-offset field. The field lies outside the CRC, so the batch
/// stays valid. Panics if `buf` is shorter than 8 bytes (callers pass validated batches).
pub fn set_base_offset(buf: &mut [u8], offset: i64) {
    buf[BASE_OFFSET..BASE_OFFSET + 8].copy_from_slice(&offset.to_be_bytes());
}

/// Recomputes and stores the CRC after a caller rewrote bytes inside the checked range
/// (for example LogAppendTime timestamps).
pub fn reseal(buf: &mut [u8]) {
    let crc = crc_fast::crc32_iscsi(&buf[ATTRIBUTES..]);
    buf[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
}

/// Stamps a batch with the broker's time (LogAppendTime): sets the timestamp-type attribute,
/// writes `now_ms` as the max timestamp (which readers then take as every record's timestamp)
/// and reseals the CRC. The caller validates the batch first: resealing would otherwise bless
/// a corrupt one. Panics if `buf` is shorter than the header.
pub fn set_log_append_time(buf: &mut [u8], now_ms: i64) {
    let attributes = be_i16(buf, ATTRIBUTES) | 0x8;
    buf[ATTRIBUTES..ATTRIBUTES + 2].copy_from_slice(&attributes.to_be_bytes());
    buf[MAX_TIMESTAMP..MAX_TIMESTAMP + 8].copy_from_slice(&now_ms.to_be_bytes());
    reseal(buf);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BatchBuilder, RecordSpec};

    fn sample() -> Vec<u8> {
        let mut b = BatchBuilder::new(1_700_000_000_000);
        b.push(RecordSpec::value(b"hello"));
        b.push(RecordSpec::keyed(b"k", b"world"));
        b.build()
    }

    #[test]
    fn valid_batch_round_trips_header_fields() {
        let buf = sample();
        let h = validate(&buf).unwrap();
        assert_eq!(h.magic, 2);
        assert_eq!(h.record_count, 2);
        assert_eq!(h.last_offset_delta, 1);
        assert_eq!(h.total_len(), buf.len());
        assert_eq!(h.base_timestamp, 1_700_000_000_000);
        assert_eq!(h.compression(), Compression::None);
        h.check_producer_batch().unwrap();
    }

    #[test]
    fn base_offset_rewrite_keeps_crc_valid() {
        let mut buf = sample();
        set_base_offset(&mut buf, 4242);
        let h = validate(&buf).unwrap();
        assert_eq!(h.base_offset, 4242);
        assert_eq!(h.last_offset(), 4243);
    }

    /// Each kind of damage is reported as that kind, never as another.
    #[test]
    fn each_fault_is_named() {
        let good = sample();
        let check = |buf: &[u8], expected: fn(&BatchError) -> bool| {
            let err = validate(buf).unwrap_err();
            assert!(expected(&err), "unexpected error {err:?}");
        };
        check(&good[..10], |e| matches!(e, BatchError::Truncated { .. }));
        check(&good[..good.len() - 1], |e| {
            matches!(e, BatchError::Truncated { .. })
        });
        let mut longer = good.clone();
        longer.push(0);
        check(&longer, |e| matches!(e, BatchError::LengthMismatch { .. }));
        let mut bad_magic = good.clone();
        bad_magic[MAGIC] = 1;
        check(&bad_magic, |e| matches!(e, BatchError::BadMagic(1)));
        let mut bad_len = good.clone();
        bad_len[BATCH_LENGTH..BATCH_LENGTH + 4].copy_from_slice(&(-5i32).to_be_bytes());
        check(&bad_len, |e| matches!(e, BatchError::BadLength(-5)));
        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x01;
        check(&flipped, |e| matches!(e, BatchError::CrcMismatch { .. }));
        let mut bad_codec = good.clone();
        bad_codec[ATTRIBUTES + 1] |= 0x7;
        check(&bad_codec, |e| matches!(e, BatchError::BadCompression(7)));
    }

    #[test]
    fn producer_batch_requires_dense_offsets() {
        let mut buf = sample();
        buf[LAST_OFFSET_DELTA..LAST_OFFSET_DELTA + 4].copy_from_slice(&5i32.to_be_bytes());
        reseal(&mut buf);
        let h = validate(&buf).unwrap();
        assert!(matches!(
            h.check_producer_batch(),
            Err(BatchError::BadRecordCount {
                count: 2,
                last_offset_delta: 5
            })
        ));
    }

    proptest::proptest! {
        /// Arbitrary bytes never panic the validator.
        #[test]
        fn validate_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = validate(&bytes);
            let _ = peek(&bytes);
        }

        /// Any single flipped bit after the base offset and leader epoch is detected.
        #[test]
        fn any_bit_flip_in_checked_range_is_caught(pos in 16usize..100, bit in 0u8..8) {
            let mut buf = sample();
            let pos = pos % buf.len();
            prop_assume!(pos >= 16);
            buf[pos] ^= 1 << bit;
            proptest::prop_assert!(validate(&buf).is_err());
        }
    }
    use proptest::prop_assume;
}
