//! Frames.
//!
//! Layout (big-endian):
//!
//! | pos | size | field |
//! |---:|---:|---|
//! | 0 | 4 | length of the rest of the frame (header fields below + body) |
//! | 4 | 2 | API key |
//! | 6 | 2 | API version |
//! | 8 | 4 | correlation id (a response echoes its request's; pushes use 0) |
//! | 12 | 2 | flags: [`Flags`] |
//! | 14 | … | body |
//!
//! Without the RECORDS flag the body is one protobuf message. With it, the body is
//! `message length: u32, message, record batches`: record data travels as the raw Kafka record
//! batch v2 bytes, exactly as stored.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;

/// Bytes of the fixed header, length field included.
pub const FRAME_HEADER_LEN: usize = 14;
/// Header bytes counted by the length field.
const COUNTED_HEADER: usize = FRAME_HEADER_LEN - 4;
/// Default largest frame (length field value) accepted: 16 MiB.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 16 << 20;

/// Frame flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags(pub u16);

impl Flags {
    /// The frame answers a request.
    pub const RESPONSE: u16 = 1;
    /// The body is an `ErrorResponse`.
    pub const ERROR: u16 = 2;
    /// Record batches follow the message.
    pub const RECORDS: u16 = 4;
    /// Sent by the server unasked (push subscriptions).
    pub const PUSH: u16 = 8;
    /// The sender expects no response.
    pub const NO_RESPONSE: u16 = 16;
    const KNOWN: u16 = 31;

    pub fn has(self, bit: u16) -> bool {
        self.0 & bit != 0
    }

    pub fn with(self, bit: u16) -> Self {
        Flags(self.0 | bit)
    }
}

/// The fixed header of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub api_key: u16,
    pub api_version: u16,
    pub correlation_id: u32,
    pub flags: Flags,
}

/// A decoded frame. `message` is the protobuf body; `records` the raw batches (empty if none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub header: FrameHeader,
    pub message: Bytes,
    pub records: Bytes,
}

/// What is wrong with bytes received.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WireError {
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge { len: usize, max: usize },
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    #[error("unknown API key {0}")]
    UnknownApi(u16),
    #[error("API {api} version {version} is not supported")]
    UnsupportedVersion { api: u16, version: u16 },
    #[error("cannot decode message: {0}")]
    Decode(String),
}

impl From<prost::DecodeError> for WireError {
    fn from(e: prost::DecodeError) -> Self {
        WireError::Decode(e.to_string())
    }
}

/// Total size of the frame starting `buf` (length field included), once 4 bytes are there.
/// Fails before anything is allocated if the frame is larger than `max`.
pub fn frame_len(buf: &[u8], max: usize) -> Result<Option<usize>, WireError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > max {
        return Err(WireError::FrameTooLarge { len, max });
    }
    if len < COUNTED_HEADER {
        return Err(WireError::Malformed(
            "length field smaller than the frame header",
        ));
    }
    Ok(Some(4 + len))
}

/// Takes one whole frame off the front of `buf`, or `None` if it has not fully arrived.
pub fn decode_frame(buf: &mut BytesMut, max: usize) -> Result<Option<Frame>, WireError> {
    let Some(total) = frame_len(buf, max)? else {
        return Ok(None);
    };
    if buf.len() < total {
        return Ok(None);
    }
    let mut b = buf.split_to(total).freeze();
    b.advance(4);
    let header = FrameHeader {
        api_key: b.get_u16(),
        api_version: b.get_u16(),
        correlation_id: b.get_u32(),
        flags: Flags(b.get_u16()),
    };
    if header.flags.0 & !Flags::KNOWN != 0 {
        return Err(WireError::Malformed("unknown flag bits"));
    }
    let (message, records) = if header.flags.has(Flags::RECORDS) {
        if b.len() < 4 {
            return Err(WireError::Malformed(
                "records frame without a message length",
            ));
        }
        let mlen = b.get_u32() as usize;
        if mlen > b.len() {
            return Err(WireError::Malformed("message length exceeds the frame"));
        }
        let message = b.split_to(mlen);
        (message, b)
    } else {
        (b, Bytes::new())
    };
    Ok(Some(Frame {
        header,
        message,
        records,
    }))
}

/// Writes the header and `message` of a frame into `dst`. `records_len` bytes of record
/// batches must follow, written by the caller (so stored batches go out without a copy); with
/// `records_len > 0` the RECORDS flag is set.
pub fn encode_frame(
    header: FrameHeader,
    message: &impl prost::Message,
    records_len: usize,
    dst: &mut BytesMut,
) {
    let mlen = message.encoded_len();
    let mut flags = header.flags;
    let mut body = mlen;
    if records_len > 0 {
        flags = flags.with(Flags::RECORDS);
        body += 4 + records_len;
    }
    dst.reserve(FRAME_HEADER_LEN + 4 + mlen);
    dst.put_u32((COUNTED_HEADER + body) as u32);
    dst.put_u16(header.api_key);
    dst.put_u16(header.api_version);
    dst.put_u32(header.correlation_id);
    dst.put_u16(flags.0);
    if records_len > 0 {
        dst.put_u32(mlen as u32);
    }
    message
        .encode(dst)
        .expect("BytesMut grows, encoding cannot run out of space");
}

/// A whole frame in one buffer, records copied in. For tests and small frames.
pub fn encode_frame_to_vec(
    header: FrameHeader,
    message: &impl prost::Message,
    records: &[u8],
) -> BytesMut {
    let mut dst = BytesMut::new();
    encode_frame(header, message, records.len(), &mut dst);
    dst.extend_from_slice(records);
    dst
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{FetchRequest, Ping};
    use proptest::prelude::*;

    fn header(flags: u16) -> FrameHeader {
        FrameHeader {
            api_key: 6,
            api_version: 1,
            correlation_id: 77,
            flags: Flags(flags),
        }
    }

    #[test]
    fn round_trip_with_and_without_records() {
        let msg = FetchRequest {
            topic: "orders".into(),
            partition: 3,
            offset: 42,
            max_bytes: 1000,
            min_bytes: 1,
            max_wait_ms: 500,
        };
        let mut buf = encode_frame_to_vec(header(0), &msg, b"");
        buf.extend_from_slice(&encode_frame_to_vec(
            header(Flags::RESPONSE),
            &Ping {},
            b"batches",
        ));
        let f = decode_frame(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(f.header, header(0));
        assert_eq!(
            <FetchRequest as prost::Message>::decode(f.message).unwrap(),
            msg
        );
        assert!(f.records.is_empty());
        let f = decode_frame(&mut buf, 1024).unwrap().unwrap();
        assert!(f.header.flags.has(Flags::RECORDS | Flags::RESPONSE));
        assert_eq!(&f.records[..], b"batches");
        assert!(buf.is_empty());
    }

    #[test]
    fn partial_frames_wait_and_oversized_frames_fail_before_allocating() {
        let full = encode_frame_to_vec(header(0), &Ping {}, b"xyz");
        for cut in 0..full.len() {
            let mut part = BytesMut::from(&full[..cut]);
            assert_eq!(decode_frame(&mut part, 1024).unwrap(), None, "cut at {cut}");
        }
        let mut huge = BytesMut::from(&[0x7f, 0xff, 0xff, 0xff][..]);
        assert_eq!(
            decode_frame(&mut huge, 1024),
            Err(WireError::FrameTooLarge {
                len: 0x7fff_ffff,
                max: 1024
            })
        );
        let mut tiny = BytesMut::from(&[0, 0, 0, 3, 1, 2, 3][..]);
        assert!(matches!(
            decode_frame(&mut tiny, 1024),
            Err(WireError::Malformed(_))
        ));
    }

    #[test]
    fn lying_message_length_is_malformed() {
        let mut f = encode_frame_to_vec(header(0), &Ping {}, b"abc");
        f[14..18].copy_from_slice(&1000u32.to_be_bytes());
        assert!(matches!(
            decode_frame(&mut f, 1024),
            Err(WireError::Malformed(_))
        ));
    }

    proptest! {
        /// Random bytes never panic the decoder, and it never consumes a partial frame.
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut buf = BytesMut::from(&bytes[..]);
            for _ in 0..4 {
                match decode_frame(&mut buf, 4096) {
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }
}
