//! Decompressing the records section of a compressed batch: gzip, snappy (raw, or in the
//! xerial framing of Java clients), LZ4 frames and zstd, the four codecs Kafka producers use.
//!
//! weir stores and ships compressed batches exactly as producers sent them; only a reader that
//! must show individual records (the HTTP API, WebSocket push, the native client) decompresses.
//! The input is hostile: output is capped ([`MAX_DECOMPRESSED_BYTES`], checked as it grows, so
//! a small "bomb" cannot make us allocate gigabytes), zstd's window is capped, and malformed
//! input is an error naming the codec, never a panic. The codecs themselves are well-kept
//! crates (flate2, snap, lz4_flex, zstd); only the xerial framing, a few lines, is by hand
//! because no crate reads it.

use std::io::Read;

use crate::header::{BatchError, Compression};

/// Most bytes one batch may decompress to. A batch holds at most one producer request's
/// worth of records; 64 MiB is four times the largest request weir accepts.
pub const MAX_DECOMPRESSED_BYTES: usize = 64 << 20;

/// Largest zstd window accepted: 2^27 (128 MiB), what Kafka itself accepts, so that batches
/// of Java producers at zstd levels 20–22 are read; a hostile frame could otherwise make the
/// decoder reserve 2 GiB. (The broker bounds how many decompressions run at once.)
const ZSTD_WINDOW_LOG_MAX: u32 = 27;

/// Snappy cannot expand its input more than about 21 times (a 3-byte copy of 64 bytes):
/// a block that declares more is refused before its output is allocated.
const SNAPPY_MAX_EXPANSION: usize = 22;

/// The xerial snappy stream header: magic, then version and compatible version (both i32).
const XERIAL_MAGIC: &[u8] = b"\x82SNAPPY\x00";
const XERIAL_HEADER_LEN: usize = 16;

/// Compresses a batch's records section with `codec` as Kafka producers do: gzip at the
/// default level, snappy in the xerial framing of Java clients (32 KiB blocks; librdkafka and
/// Java read it), an LZ4 frame, zstd at level 3. `Compression::None` returns a copy.
pub fn compress(codec: Compression, input: &[u8]) -> Result<Vec<u8>, BatchError> {
    use std::io::Write;
    let fail = |e: std::io::Error| BatchError::Compress {
        codec,
        reason: e.to_string(),
    };
    Ok(match codec {
        Compression::None => input.to_vec(),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(input).map_err(fail)?;
            e.finish().map_err(fail)?
        }
        Compression::Lz4 => {
            let mut e = lz4_flex::frame::FrameEncoder::new(Vec::new());
            e.write_all(input).map_err(fail)?;
            e.finish().map_err(|e| fail(e.into()))?
        }
        Compression::Zstd => zstd::stream::encode_all(input, 3).map_err(fail)?,
        Compression::Snappy => {
            let mut out = XERIAL_MAGIC.to_vec();
            out.extend_from_slice(&1i32.to_be_bytes()); // version
            out.extend_from_slice(&1i32.to_be_bytes()); // compatible version
            let mut encoder = snap::raw::Encoder::new();
            for block in input.chunks(32 * 1024) {
                let packed = encoder
                    .compress_vec(block)
                    .map_err(|e| fail(std::io::Error::other(e)))?;
                out.extend_from_slice(&(packed.len() as i32).to_be_bytes());
                out.extend_from_slice(&packed);
            }
            out
        }
    })
}

/// Decompresses `input` (a batch's records section) compressed with `codec`, producing at most
/// `limit` bytes.
pub fn decompress(codec: Compression, input: &[u8], limit: usize) -> Result<Vec<u8>, BatchError> {
    let fail = |reason: String| BatchError::Decompress { codec, reason };
    match codec {
        Compression::None => Ok(input.to_vec()),
        Compression::Gzip => read_capped(codec, flate2::read::MultiGzDecoder::new(input), limit),
        Compression::Lz4 => read_capped(codec, lz4_flex::frame::FrameDecoder::new(input), limit),
        Compression::Zstd => {
            let mut d =
                zstd::stream::read::Decoder::with_buffer(input).map_err(|e| fail(e.to_string()))?;
            d.window_log_max(ZSTD_WINDOW_LOG_MAX)
                .map_err(|e| fail(e.to_string()))?;
            read_capped(codec, d, limit)
        }
        Compression::Snappy => {
            if input.starts_with(XERIAL_MAGIC) {
                xerial(input, limit)
            } else {
                let mut out = Vec::new();
                snappy_block(input, limit, &mut out)?;
                Ok(out)
            }
        }
    }
}

/// Reads a decoder to its end, refusing output beyond `limit`.
fn read_capped(codec: Compression, r: impl Read, limit: usize) -> Result<Vec<u8>, BatchError> {
    let mut out = Vec::new();
    r.take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| BatchError::Decompress {
            codec,
            reason: e.to_string(),
        })?;
    if out.len() > limit {
        return Err(BatchError::DecompressedTooLarge { codec, limit });
    }
    Ok(out)
}

/// Appends one raw snappy block to `out`, whose total may not exceed `limit`. The block's
/// declared length is checked before anything is allocated.
fn snappy_block(block: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<(), BatchError> {
    let codec = Compression::Snappy;
    let fail = |e: snap::Error| BatchError::Decompress {
        codec,
        reason: e.to_string(),
    };
    let len = snap::raw::decompress_len(block).map_err(fail)?;
    if len
        > block
            .len()
            .saturating_mul(SNAPPY_MAX_EXPANSION)
            .saturating_add(64)
    {
        return Err(BatchError::Decompress {
            codec,
            reason: format!(
                "a {}-byte block declares {len} bytes, more than snappy can expand to",
                block.len()
            ),
        });
    }
    if out.len().saturating_add(len) > limit {
        return Err(BatchError::DecompressedTooLarge { codec, limit });
    }
    let at = out.len();
    out.resize(at + len, 0);
    let n = snap::raw::Decoder::new()
        .decompress(block, &mut out[at..])
        .map_err(fail)?;
    out.truncate(at + n);
    Ok(())
}

/// Java clients' snappy: the xerial stream header, then blocks, each a big-endian i32 length
/// and a raw snappy block of that length.
fn xerial(input: &[u8], limit: usize) -> Result<Vec<u8>, BatchError> {
    let bad = |reason: &str| BatchError::Decompress {
        codec: Compression::Snappy,
        reason: format!("xerial framing: {reason}"),
    };
    let mut rest = input
        .get(XERIAL_HEADER_LEN..)
        .ok_or_else(|| bad("header truncated"))?;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let len: [u8; 4] = rest
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad("block length truncated"))?;
        let len = i32::from_be_bytes(len);
        let block = usize::try_from(len)
            .ok()
            .and_then(|n| rest.get(4..4 + n))
            .ok_or_else(|| bad("block length exceeds the input"))?;
        snappy_block(block, limit, &mut out)?;
        rest = &rest[4 + block.len()..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn lz4(data: &[u8]) -> Vec<u8> {
        let mut e = lz4_flex::frame::FrameEncoder::new(Vec::new());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn zstd(data: &[u8]) -> Vec<u8> {
        zstd::stream::encode_all(data, 3).unwrap()
    }

    fn snappy(data: &[u8]) -> Vec<u8> {
        snap::raw::Encoder::new().compress_vec(data).unwrap()
    }

    /// Java's framing, with blocks of at most `block` bytes.
    fn xerial_of(data: &[u8], block: usize) -> Vec<u8> {
        let mut out = XERIAL_MAGIC.to_vec();
        out.extend_from_slice(&1i32.to_be_bytes());
        out.extend_from_slice(&1i32.to_be_bytes());
        for chunk in data.chunks(block) {
            let c = snappy(chunk);
            out.extend_from_slice(&(c.len() as i32).to_be_bytes());
            out.extend_from_slice(&c);
        }
        out
    }

    #[test]
    fn what_compress_writes_decompress_reads() {
        let data = b"quote AAPL 189.5; quote MSFT 411.2; ".repeat(5_000);
        for codec in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let packed = compress(codec, &data).unwrap();
            if codec != Compression::None {
                assert!(packed.len() < data.len() / 4, "{codec:?}");
            }
            assert_eq!(
                decompress(codec, &packed, MAX_DECOMPRESSED_BYTES).unwrap(),
                data,
                "{codec:?}"
            );
        }
        // Snappy goes out in Java's framing, several blocks for large sections.
        assert!(
            compress(Compression::Snappy, &data)
                .unwrap()
                .starts_with(XERIAL_MAGIC)
        );
    }

    #[test]
    fn every_codec_round_trips() {
        let data: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for (codec, packed) in [
            (Compression::Gzip, gzip(&data)),
            (Compression::Lz4, lz4(&data)),
            (Compression::Zstd, zstd(&data)),
            (Compression::Snappy, snappy(&data)),
            (Compression::Snappy, xerial_of(&data, 32 * 1024)),
        ] {
            assert!(packed.len() < data.len(), "{codec:?} compressed");
            assert_eq!(
                decompress(codec, &packed, MAX_DECOMPRESSED_BYTES).unwrap(),
                data,
                "{codec:?}"
            );
        }
    }

    #[test]
    fn output_beyond_the_limit_is_refused_for_every_codec() {
        // 8 MiB of zeros compresses to a few KiB: a small bomb.
        let data = vec![0u8; 8 << 20];
        for (codec, packed) in [
            (Compression::Gzip, gzip(&data)),
            (Compression::Lz4, lz4(&data)),
            (Compression::Zstd, zstd(&data)),
            (Compression::Snappy, snappy(&data)),
            (Compression::Snappy, xerial_of(&data, 64 * 1024)),
        ] {
            assert!(packed.len() < 1 << 20, "{codec:?}");
            assert_eq!(
                decompress(codec, &packed, 1 << 20),
                Err(BatchError::DecompressedTooLarge {
                    codec,
                    limit: 1 << 20
                }),
                "{codec:?}"
            );
            assert_eq!(decompress(codec, &packed, 8 << 20).unwrap().len(), 8 << 20);
        }
    }

    #[test]
    fn damaged_input_is_an_error_naming_the_codec() {
        let data = b"some records, some records, some records".repeat(20);
        for (codec, mut packed) in [
            (Compression::Gzip, gzip(&data)),
            (Compression::Lz4, lz4(&data)),
            (Compression::Zstd, zstd(&data)),
            (Compression::Snappy, snappy(&data)),
            (Compression::Snappy, xerial_of(&data, 100)),
        ] {
            packed.truncate(packed.len() / 2);
            match decompress(codec, &packed, MAX_DECOMPRESSED_BYTES) {
                Err(BatchError::Decompress { codec: c, .. }) => assert_eq!(c, codec),
                other => panic!("{codec:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_snappy_block_that_declares_more_than_snappy_can_expand_to_is_refused_unallocated() {
        // A varint length of 60 MiB and nothing else: 5 bytes that must not cost 60 MiB.
        let mut lying = Vec::new();
        let mut n = 60u64 << 20;
        while n >= 0x80 {
            lying.push((n as u8) | 0x80);
            n >>= 7;
        }
        lying.push(n as u8);
        match decompress(Compression::Snappy, &lying, MAX_DECOMPRESSED_BYTES) {
            Err(BatchError::Decompress { reason, .. }) => {
                assert!(
                    reason.contains("more than snappy can expand to"),
                    "{reason}"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..2048),
                                       xerial_header in any::<bool>()) {
            let mut input = input;
            if xerial_header {
                let mut framed = XERIAL_MAGIC.to_vec();
                framed.extend_from_slice(&[0; 8]);
                framed.extend_from_slice(&input);
                input = framed;
            }
            for codec in [Compression::Gzip, Compression::Lz4, Compression::Zstd, Compression::Snappy] {
                if let Ok(out) = decompress(codec, &input, 1 << 20) {
                    prop_assert!(out.len() <= 1 << 20);
                }
            }
        }
    }
}
