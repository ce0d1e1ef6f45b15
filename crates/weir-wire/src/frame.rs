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

    /// The fuzz target `native_frame`'s seeds (the repository's
    /// `fuzz/corpus/native_frame/seed-*`): one request frame per API the server decodes a
    /// message of, so the fuzzer starts inside every request type rather than having to find
    /// each API key and message layout itself. `WEIR_WRITE_FUZZ_SEEDS=1 cargo test -p
    /// weir-wire fuzz_seeds` writes them anew; otherwise the test checks that the committed
    /// seeds are those frames, each one whole frame of its API.
    #[test]
    fn fuzz_seeds_are_one_request_frame_per_api() {
        use crate::Api;
        use crate::messages as m;
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/native_frame");
        let batch = {
            let mut b = weir_batch::BatchBuilder::new(1_700_000_000_000);
            b.push(weir_batch::RecordSpec::keyed(b"AAPL", b"{\"px\":1}"));
            b.push(weir_batch::RecordSpec::value(b"second"));
            b.build()
        };
        let tp = |topic: &str, partitions: Vec<u32>| m::TopicPartitions {
            topic: topic.into(),
            partitions,
        };
        fn seed(api: Api, message: &impl prost::Message, records: &[u8]) -> (Api, BytesMut) {
            let header = FrameHeader {
                api_key: api as u16,
                api_version: 1,
                correlation_id: 7,
                flags: Flags(0),
            };
            (api, encode_frame_to_vec(header, message, records))
        }
        let seeds = [
            seed(
                Api::Hello,
                &m::HelloRequest {
                    client_id: "fuzz-seed".into(),
                    apis: Api::supported(),
                },
                b"",
            ),
            seed(
                Api::CreateTopic,
                &m::CreateTopicRequest {
                    name: "quotes".into(),
                    config: Some(m::TopicConfig {
                        partitions: 4,
                        retention_ms: -1,
                        retention_bytes: 1 << 30,
                        durability: m::Durability::Interval as i32,
                        durability_interval_ms: 100,
                        max_batch_bytes: 1 << 20,
                        segment_bytes: 1 << 27,
                        timestamp_type: m::TimestampType::LogAppendTime as i32,
                        ..Default::default()
                    }),
                },
                b"",
            ),
            seed(
                Api::DeleteTopic,
                &m::DeleteTopicRequest {
                    name: "quotes".into(),
                },
                b"",
            ),
            seed(
                Api::Metadata,
                &m::MetadataRequest {
                    topics: vec!["quotes".into(), "orders".into()],
                },
                b"",
            ),
            seed(
                Api::Produce,
                &m::ProduceRequest {
                    topic: "quotes".into(),
                    partition: Some(1),
                    key: Some(b"AAPL".to_vec()),
                    acks: m::Acks::Durable as i32,
                },
                &batch,
            ),
            seed(
                Api::Fetch,
                &m::FetchRequest {
                    topic: "quotes".into(),
                    partition: 1,
                    offset: 42,
                    max_bytes: 1 << 20,
                    min_bytes: 1,
                    max_wait_ms: 500,
                },
                b"",
            ),
            seed(
                Api::ListOffsets,
                &m::ListOffsetsRequest {
                    topic: "quotes".into(),
                    partition: 0,
                    spec: Some(m::list_offsets_request::Spec::TimestampMs(
                        1_700_000_000_000,
                    )),
                },
                b"",
            ),
            seed(
                Api::JoinGroup,
                &m::JoinGroupRequest {
                    group: "g".into(),
                    member_id: String::new(),
                    topics: vec!["quotes".into()],
                    session_timeout_ms: 10_000,
                    strategy: m::AssignmentStrategy::AssignmentSticky as i32,
                },
                b"",
            ),
            seed(
                Api::Heartbeat,
                &m::HeartbeatRequest {
                    group: "g".into(),
                    member_id: "m-1".into(),
                    generation: 3,
                    max_wait_ms: 0,
                },
                b"",
            ),
            seed(
                Api::LeaveGroup,
                &m::LeaveGroupRequest {
                    group: "g".into(),
                    member_id: "m-1".into(),
                },
                b"",
            ),
            seed(
                Api::CommitOffsets,
                &m::CommitOffsetsRequest {
                    group: "g".into(),
                    member_id: "m-1".into(),
                    generation: 3,
                    offsets: vec![m::PartitionOffset {
                        topic: "quotes".into(),
                        partition: 1,
                        offset: 43,
                    }],
                },
                b"",
            ),
            seed(
                Api::FetchOffsets,
                &m::FetchOffsetsRequest {
                    group: "g".into(),
                    partitions: vec![tp("quotes", vec![0, 1, 2])],
                    reset: m::ResetPolicy::ResetLatest as i32,
                },
                b"",
            ),
            seed(Api::ListGroups, &m::ListGroupsRequest {}, b""),
            seed(
                Api::DescribeGroup,
                &m::DescribeGroupRequest { group: "g".into() },
                b"",
            ),
            seed(
                Api::Subscribe,
                &m::SubscribeRequest {
                    topic: "quotes".into(),
                    partition: 2,
                    start: Some(m::subscribe_request::Start::Offset(10)),
                    credit_records: 1000,
                    credit_bytes: 1 << 20,
                    policy: m::OverflowPolicy::DropOldest as i32,
                    queue_records: 500,
                    queue_bytes: 1 << 20,
                },
                b"",
            ),
            seed(
                Api::Credit,
                &m::CreditRequest {
                    subscription_id: 1,
                    records: 100,
                    bytes: 65_536,
                },
                b"",
            ),
            seed(
                Api::Unsubscribe,
                &m::UnsubscribeRequest { subscription_id: 1 },
                b"",
            ),
            seed(Api::InitProducer, &m::InitProducerRequest {}, b""),
            seed(
                Api::Authenticate,
                &m::AuthenticateRequest {
                    mechanism: "SCRAM-SHA-512".into(),
                    auth_bytes: b"n,,n=alice,r=fyko+d2lbbFgONRv9qkxdawL".to_vec(),
                },
                b"",
            ),
        ];
        if std::env::var_os("WEIR_WRITE_FUZZ_SEEDS").is_some() {
            std::fs::create_dir_all(&dir).unwrap();
            for (api, frame) in &seeds {
                std::fs::write(dir.join(format!("seed-{}", api.name())), frame).unwrap();
            }
        }
        let mut found = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let Some(api) = name.strip_prefix("seed-") else {
                continue;
            };
            let mut buf = BytesMut::from(&std::fs::read(&path).unwrap()[..]);
            let f = decode_frame(&mut buf, DEFAULT_MAX_FRAME_BYTES)
                .unwrap()
                .unwrap_or_else(|| panic!("{name} is not a whole frame"));
            assert!(buf.is_empty(), "{name} holds more than one frame");
            let (want, seed) = seeds
                .iter()
                .find(|(a, _)| a.name() == api)
                .unwrap_or_else(|| panic!("{name} names no seeded API"));
            assert_eq!(f.header.api_key, *want as u16, "{name}");
            assert_eq!(
                &std::fs::read(&path).unwrap()[..],
                &seed[..],
                "{name} is not what this test writes (WEIR_WRITE_FUZZ_SEEDS=1 rewrites it)"
            );
            found += 1;
        }
        assert_eq!(
            found,
            seeds.len(),
            "one seed per API with a request message"
        );
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
