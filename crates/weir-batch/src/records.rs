//! Decoding the records inside an uncompressed batch.
//!
//! Record layout (varints are zigzag-encoded, as in protobuf `sint32`/`sint64`):
//! `length: varint, attributes: i8, timestamp delta: varlong, offset delta: varint,
//! key length: varint (-1 = null), key, value length: varint (-1 = null), value,
//! header count: varint, then per header: key length: varint, key, value length: varint, value`.

use std::borrow::Cow;

use crate::compression::{MAX_DECOMPRESSED_BYTES, decompress};
use crate::header::{BatchError, BatchHeader, Compression, HEADER_LEN, validate};

/// Validates `batch` (one whole batch) and returns its header and its records section
/// ([`section`]). Decode the section with [`Records::with_payload`].
pub fn payload(batch: &[u8]) -> Result<(BatchHeader, Cow<'_, [u8]>), BatchError> {
    let header = validate(batch)?;
    Ok((header, section(&header, batch)?))
}

/// The records section of `batch`, whose header is `header` (a batch already validated, as
/// [`crate::Batches`] yields them, or one whose CRC the caller leaves to the log): borrowed
/// when uncompressed, decompressed (at most [`MAX_DECOMPRESSED_BYTES`]) otherwise.
pub fn section<'a>(header: &BatchHeader, batch: &'a [u8]) -> Result<Cow<'a, [u8]>, BatchError> {
    let records = batch
        .get(HEADER_LEN..header.total_len())
        .ok_or(BatchError::LengthMismatch {
            declared: header.total_len(),
            actual: batch.len(),
        })?;
    Ok(match header.compression() {
        Compression::None => Cow::Borrowed(records),
        codec => Cow::Owned(decompress(codec, records, MAX_DECOMPRESSED_BYTES)?),
    })
}

/// One decoded record, borrowing from the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: Vec<RecordHeader<'a>>,
}

/// One record header. Kafka header keys are strings; weir keeps them as bytes and leaves
/// UTF-8 checking to whoever displays them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordHeader<'a> {
    pub key: &'a [u8],
    pub value: Option<&'a [u8]>,
}

/// Iterator over the records of one validated batch: an uncompressed batch with
/// [`Records::new`], any batch with [`payload`] and [`Records::with_payload`].
#[derive(Debug, Clone)]
pub struct Records<'a> {
    header: BatchHeader,
    rest: &'a [u8],
    index: usize,
    failed: bool,
}

/// Checks that every record of `batch` decodes, decompressing a compressed batch: what a
/// broker does before it stores a batch, so that no reader meets an undecodable one later.
/// Skips the CRC on success (the log checks it as it appends); on failure, a bad CRC or
/// layout is reported in preference to the record fault it caused.
pub fn check_records(batch: &[u8]) -> Result<(), BatchError> {
    check_records_with_first(batch, |_| ()).map(drop)
}

/// [`check_records`], handing the first record (if the batch has one) to `first` on the way,
/// so that a caller who wants something from it does not decompress the batch twice.
pub fn check_records_with_first<T>(
    batch: &[u8],
    first: impl FnOnce(&Record<'_>) -> T,
) -> Result<Option<T>, BatchError> {
    check_records_with(batch, false, first)
}

/// [`check_records_with_first`], also refusing a record without a key when `require_keys` is
/// set (a compacted topic keeps the latest record of each key, so every record needs one).
pub fn check_records_with<T>(
    batch: &[u8],
    require_keys: bool,
    first: impl FnOnce(&Record<'_>) -> T,
) -> Result<Option<T>, BatchError> {
    let records = || -> Result<Option<T>, BatchError> {
        let header = crate::header::peek(batch)?;
        let section = section(&header, batch)?;
        let mut records = Records::with_payload(header, &section).enumerate();
        let keyed = |index: usize, r: &Record<'_>| {
            if require_keys && r.key.is_none() {
                return Err(BatchError::BadRecord {
                    index,
                    reason: "no key: a compacted topic keeps the latest record of each key, \
                             so every record needs one",
                });
            }
            Ok(())
        };
        let seen = match records.next() {
            Some((i, r)) => {
                let r = r?;
                keyed(i, &r)?;
                Some(first(&r))
            }
            None => None,
        };
        records.try_for_each(|(i, r)| r.and_then(|r| keyed(i, &r)))?;
        Ok(seen)
    };
    records().map_err(|fault| validate(batch).err().unwrap_or(fault))
}

/// What [`retain`] made of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retained {
    /// Every record was kept: the batch as it was.
    All,
    /// No record was kept.
    Nothing,
    /// Some records were kept: the new batch.
    Some(Vec<u8>),
}

/// The batch `batch` with only the records `keep` accepts, as log compaction rewrites it: the
/// header keeps its base offset, last offset delta, timestamps, producer fields and codec (so
/// the batch still covers the same offsets, with gaps), and gets the new record count, length
/// and CRC. Kept records are copied as they are (their offset and timestamp deltas stay
/// right); a compressed batch is decompressed once and compressed again with its codec.
/// Validates the batch (CRC included) first.
pub fn retain(
    batch: &[u8],
    mut keep: impl FnMut(&Record<'_>) -> bool,
) -> Result<Retained, BatchError> {
    let header = validate(batch)?;
    let section = section(&header, batch)?;
    let mut records = Records::with_payload(header, &section);
    let mut kept = Vec::with_capacity(section.len());
    let (mut count, mut dropped) = (0i32, false);
    loop {
        let before = records.rest;
        let Some(r) = records.next() else { break };
        let r = r?;
        if keep(&r) {
            kept.extend_from_slice(&before[..before.len() - records.rest.len()]);
            count += 1;
        } else {
            dropped = true;
        }
    }
    if !dropped {
        return Ok(Retained::All);
    }
    if count == 0 {
        return Ok(Retained::Nothing);
    }
    let body = match header.compression() {
        Compression::None => kept,
        codec => crate::compression::compress(codec, &kept)?,
    };
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&batch[..HEADER_LEN]);
    out.extend_from_slice(&body);
    let length = i32::try_from(out.len() - crate::header::LOG_OVERHEAD)
        .map_err(|_| BatchError::BadLength(i32::MAX))?;
    out[crate::header::BATCH_LENGTH..crate::header::BATCH_LENGTH + 4]
        .copy_from_slice(&length.to_be_bytes());
    out[crate::header::RECORD_COUNT..crate::header::RECORD_COUNT + 4]
        .copy_from_slice(&count.to_be_bytes());
    crate::header::reseal(&mut out);
    Ok(Retained::Some(out))
}

impl<'a> Records<'a> {
    /// Validates `batch` (one whole batch) and prepares to decode its records.
    pub fn new(batch: &'a [u8]) -> Result<Self, BatchError> {
        let header = validate(batch)?;
        let compression = header.compression();
        if compression != Compression::None {
            return Err(BatchError::Compressed(compression));
        }
        Ok(Self {
            header,
            rest: &batch[HEADER_LEN..],
            index: 0,
            failed: false,
        })
    }

    /// Decodes the records section `payload` of a batch with `header`, as [`payload`] returns
    /// them (for compressed batches, the decompressed section).
    pub fn with_payload(header: BatchHeader, payload: &'a [u8]) -> Self {
        Self {
            header,
            rest: payload,
            index: 0,
            failed: false,
        }
    }

    /// The batch header.
    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    fn decode_one(&mut self) -> Result<Record<'a>, BatchError> {
        let index = self.index;
        let bad = |reason| BatchError::BadRecord { index, reason };
        let mut cur = Cursor { buf: self.rest };
        let len = cur.varint().ok_or(bad("record length is not a varint"))?;
        if len < 0 || len as usize > cur.buf.len() {
            return Err(bad("record length exceeds the batch"));
        }
        let (body, after) = cur.buf.split_at(len as usize);
        let mut r = Cursor { buf: body };
        r.take(1).ok_or(bad("missing record attributes"))?;
        let ts_delta = r.varlong().ok_or(bad("bad timestamp delta"))?;
        let offset_delta = r.varint().ok_or(bad("bad offset delta"))?;
        if offset_delta < 0 || offset_delta > self.header.last_offset_delta {
            return Err(bad("offset delta outside the batch"));
        }
        let key = r.nullable_bytes().ok_or(bad("bad key"))?;
        let value = r.nullable_bytes().ok_or(bad("bad value"))?;
        let header_count = r.varint().ok_or(bad("bad header count"))?;
        if header_count < 0 {
            return Err(bad("negative header count"));
        }
        // Each header needs at least two bytes, which caps the allocation by the input size.
        if header_count as usize > r.buf.len() / 2 {
            return Err(bad("header count exceeds the record"));
        }
        let mut headers = Vec::with_capacity(header_count as usize);
        for _ in 0..header_count {
            let key = r
                .nullable_bytes()
                .ok_or(bad("bad header key"))?
                .ok_or(bad("null header key"))?;
            let value = r.nullable_bytes().ok_or(bad("bad header value"))?;
            headers.push(RecordHeader { key, value });
        }
        if !r.buf.is_empty() {
            return Err(bad("trailing bytes after record"));
        }
        self.rest = after;
        Ok(Record {
            // Wrapping: a hostile producer's base offset may sit at i64::MAX (the log
            // assigns the real one; this is only a check of the records).
            offset: self
                .header
                .base_offset
                .wrapping_add(i64::from(offset_delta)),
            // LogAppendTime: the broker's time, in the header, stands for every record.
            timestamp: if self.header.is_log_append_time() {
                self.header.max_timestamp
            } else {
                self.header.base_timestamp.wrapping_add(ts_delta)
            },
            key,
            value,
            headers,
        })
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<Record<'a>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.index >= self.header.record_count.max(0) as usize {
            if !self.failed && !self.rest.is_empty() && self.index > 0 {
                self.failed = true;
                return Some(Err(BatchError::BadRecord {
                    index: self.index,
                    reason: "bytes after the last record",
                }));
            }
            return None;
        }
        let result = self.decode_one();
        self.index += 1;
        if result.is_err() {
            self.failed = true;
        }
        Some(result)
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.buf.len() {
            return None;
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Some(head)
    }

    fn uvarint(&mut self, max_bytes: usize) -> Option<u64> {
        let mut value = 0u64;
        for i in 0..max_bytes {
            let byte = *self.buf.get(i)?;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                self.buf = &self.buf[i + 1..];
                return Some(value);
            }
        }
        None
    }

    fn varint(&mut self) -> Option<i32> {
        let raw = self.uvarint(5)?;
        let raw = u32::try_from(raw).ok()?;
        Some(((raw >> 1) as i32) ^ -((raw & 1) as i32))
    }

    fn varlong(&mut self) -> Option<i64> {
        let raw = self.uvarint(10)?;
        Some(((raw >> 1) as i64) ^ -((raw & 1) as i64))
    }

    fn nullable_bytes(&mut self) -> Option<Option<&'a [u8]>> {
        let len = self.varint()?;
        match len {
            -1 => Some(None),
            n if n < 0 => None,
            n => self.take(n as usize).map(Some),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BatchBuilder, RecordSpec, header::reseal, set_base_offset};
    use proptest::prelude::*;

    #[test]
    fn keys_are_required_when_asked() {
        let mut b = BatchBuilder::new(0);
        b.push(RecordSpec::keyed(b"k", b"v"));
        b.push(RecordSpec::value(b"no key"));
        let batch = b.build();
        assert_eq!(check_records_with(&batch, false, |_| ()), Ok(Some(())));
        assert!(matches!(
            check_records_with(&batch, true, |_| ()),
            Err(BatchError::BadRecord { index: 1, .. })
        ));
    }

    #[test]
    fn retain_keeps_the_offsets_and_drops_the_rest() {
        for codec in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let mut b = BatchBuilder::new(1_000).producer(7, 1, 40);
            for i in 0..5u8 {
                b.push(RecordSpec::keyed(&[b'k', i % 2], &[i]));
            }
            let mut batch = b.build_compressed(codec).unwrap();
            set_base_offset(&mut batch, 100);
            // Keep the last record of each key: offsets 103 and 104.
            let Retained::Some(out) = retain(&batch, |r| r.offset >= 103).unwrap() else {
                panic!("{codec:?}: some were dropped")
            };
            let h = validate(&out).unwrap();
            assert_eq!(
                (h.base_offset, h.last_offset_delta, h.record_count),
                (100, 4, 2)
            );
            assert_eq!(
                (h.producer_id, h.base_sequence, h.compression()),
                (7, 40, codec)
            );
            let (h, section) = payload(&out).unwrap();
            let got: Vec<_> = Records::with_payload(h, &section)
                .map(|r| r.map(|r| (r.offset, r.timestamp, r.value.unwrap().to_vec())))
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(
                got,
                vec![(103, 1_000, vec![3]), (104, 1_000, vec![4])],
                "{codec:?}"
            );
            assert_eq!(retain(&batch, |_| true).unwrap(), Retained::All);
            assert_eq!(retain(&batch, |_| false).unwrap(), Retained::Nothing);
        }
        let mut damaged = BatchBuilder::new(0);
        damaged.push(RecordSpec::value(b"x"));
        let mut damaged = damaged.build();
        damaged[HEADER_LEN] ^= 1;
        assert!(
            retain(&damaged, |_| false).is_err(),
            "a bad CRC is an error"
        );
    }

    #[test]
    fn check_records_refuses_what_readers_could_not_decode() {
        let mut b = BatchBuilder::new(5_000);
        b.push(RecordSpec::keyed(b"k1", b"v1"));
        b.push(RecordSpec::value(b"v2"));
        let plain = b.build();
        assert_eq!(check_records(&plain), Ok(()));
        // A record whose key length overruns it, resealed so the CRC holds.
        let mut bad = plain.clone();
        bad[HEADER_LEN + 4] = 0x7e; // the first record's key length: far too long
        reseal(&mut bad);
        assert!(matches!(
            check_records(&bad),
            Err(BatchError::BadRecord { index: 0, .. })
        ));
        // Marked gzip, but the section is not gzip: refused, naming the codec.
        let mut not_gzip = plain.clone();
        not_gzip[22] |= 1;
        reseal(&mut not_gzip);
        assert!(matches!(
            check_records(&not_gzip),
            Err(BatchError::Decompress {
                codec: Compression::Gzip,
                ..
            })
        ));
        // A damaged batch whose CRC no longer holds is reported as that, not as its records.
        let mut torn = bad.clone();
        torn[HEADER_LEN + 6] ^= 0xff;
        assert!(matches!(
            check_records(&torn),
            Err(BatchError::CrcMismatch { .. })
        ));
    }

    #[test]
    fn batches_built_compressed_decode_to_the_same_records_with_every_codec() {
        let build = || {
            let mut b = BatchBuilder::new(5_000).producer(7, 1, 10);
            for i in 0..200 {
                let v = format!("value {i} {}", "x".repeat(i % 50));
                b.push(RecordSpec::keyed(b"key", v.as_bytes()));
            }
            b
        };
        let plain = build().build();
        let want: Vec<Record> = Records::new(&plain)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        for codec in [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let batch = build().build_compressed(codec).unwrap();
            let h = validate(&batch).unwrap();
            assert_eq!(h.compression(), codec);
            assert_eq!(
                (h.producer_id, h.base_sequence, h.record_count),
                (7, 10, 200)
            );
            assert!(batch.len() < plain.len() / 2, "{codec:?}");
            assert_eq!(check_records(&batch), Ok(()));
            let (h, section) = payload(&batch).unwrap();
            let got: Vec<Record> = Records::with_payload(h, &section)
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(got, want, "{codec:?}");
        }
        assert_eq!(build().build_compressed(Compression::None).unwrap(), plain);
    }

    #[test]
    fn a_compressed_batch_decodes_through_its_payload() {
        use std::io::Write;
        let mut b = BatchBuilder::new(5_000);
        b.push(RecordSpec::keyed(b"k1", b"v1"));
        b.push(RecordSpec::value(b"v2"));
        let plain = b.build();
        // The same batch as a producer would send it gzipped: the records section
        // compressed, the codec in attribute bits 0-2, length and CRC updated.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&plain[HEADER_LEN..]).unwrap();
        let mut batch = plain[..HEADER_LEN].to_vec();
        batch.extend_from_slice(&gz.finish().unwrap());
        let len = (batch.len() - 12) as i32;
        batch[8..12].copy_from_slice(&len.to_be_bytes());
        batch[22] |= 1;
        reseal(&mut batch);
        assert_eq!(
            Records::new(&batch).unwrap_err(),
            BatchError::Compressed(Compression::Gzip)
        );
        let (h, section) = payload(&batch).unwrap();
        assert!(matches!(section, Cow::Owned(_)));
        let got: Vec<Record> = Records::with_payload(h, &section)
            .collect::<Result<_, _>>()
            .unwrap();
        let want: Vec<Record> = Records::new(&plain)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(got, want);
        // An uncompressed batch's section is borrowed, not copied.
        assert!(matches!(payload(&plain).unwrap().1, Cow::Borrowed(_)));
    }

    #[test]
    fn log_append_time_stamps_every_record_and_keeps_the_batch_valid() {
        let mut b = BatchBuilder::new(1_000);
        b.push(RecordSpec::value(b"a"));
        b.push(RecordSpec::value(b"b"));
        let mut buf = b.build();
        crate::set_log_append_time(&mut buf, 42_000);
        let h = crate::validate(&buf).unwrap();
        assert!(h.is_log_append_time());
        assert_eq!(h.max_timestamp, 42_000);
        let ts: Vec<i64> = Records::new(&buf)
            .unwrap()
            .map(|r| r.unwrap().timestamp)
            .collect();
        assert_eq!(ts, vec![42_000, 42_000]);
    }

    #[test]
    fn round_trip_keys_values_headers_timestamps() {
        let mut b = BatchBuilder::new(1000);
        b.push(RecordSpec::value(b"v0"));
        b.push(RecordSpec {
            key: Some(b"key"),
            value: None,
            headers: vec![("traceparent", Some(b"00-abc")), ("empty", None)],
            timestamp: Some(1500),
        });
        b.push(RecordSpec {
            timestamp: Some(900),
            ..RecordSpec::keyed(b"", b"")
        });
        let mut buf = b.build();
        set_base_offset(&mut buf, 10);
        let records: Vec<_> = Records::new(&buf).unwrap().map(Result::unwrap).collect();
        assert_eq!(records.len(), 3);
        assert_eq!(records[0].offset, 10);
        assert_eq!(records[0].value, Some(&b"v0"[..]));
        assert_eq!(records[0].key, None);
        assert_eq!(records[1].offset, 11);
        assert_eq!(records[1].timestamp, 1500);
        assert_eq!(records[1].value, None);
        assert_eq!(records[1].headers[0].key, b"traceparent");
        assert_eq!(records[1].headers[0].value, Some(&b"00-abc"[..]));
        assert_eq!(records[1].headers[1].value, None);
        assert_eq!(records[2].timestamp, 900);
        assert_eq!(records[2].key, Some(&b""[..]));
        let h = validate(&buf).unwrap();
        assert_eq!(h.max_timestamp, 1500);
    }

    #[test]
    fn lying_record_length_is_reported_not_followed() {
        let mut b = BatchBuilder::new(0);
        b.push(RecordSpec::value(b"abc"));
        let mut buf = b.build();
        buf[HEADER_LEN] = 0x7e; // record length 63, beyond the batch
        reseal(&mut buf);
        let first = Records::new(&buf).unwrap().next().unwrap();
        assert!(matches!(first, Err(BatchError::BadRecord { index: 0, .. })));
    }

    proptest! {
        /// Random bytes in the records section never panic the decoder.
        #[test]
        fn hostile_records_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..300), count in 0i32..50) {
            let mut buf = BatchBuilder::new(0).build();
            buf.truncate(HEADER_LEN);
            buf.extend_from_slice(&tail);
            let len = (buf.len() - 12) as i32;
            buf[8..12].copy_from_slice(&len.to_be_bytes());
            buf[57..61].copy_from_slice(&count.to_be_bytes());
            buf[23..27].copy_from_slice(&(count - 1).max(0).to_be_bytes());
            reseal(&mut buf);
            if let Ok(records) = Records::new(&buf) {
                for r in records.take(100) { let _ = r; }
            }
        }

        /// What the builder writes, the decoder reads back.
        #[test]
        fn builder_decoder_round_trip(values in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 1..20)) {
            let mut b = BatchBuilder::new(7);
            for v in &values { b.push(RecordSpec::value(v)); }
            let buf = b.build();
            let decoded: Vec<Vec<u8>> = Records::new(&buf).unwrap().map(|r| r.unwrap().value.unwrap().to_vec()).collect();
            prop_assert_eq!(decoded, values);
        }
    }
}
