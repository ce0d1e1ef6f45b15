//! Arbitrary bytes as a native connection reads them: `weir_wire::decode_frame` takes frames
//! off the buffer (the size limit checked before anything is allocated), and each frame's
//! message goes through the prost decoder of the request type the server decodes for its API
//! key (`weir-server`'s `command.rs` and `connection.rs`); a produce's record batches through
//! `weir_batch::peek`, the first thing the server reads of them (the rest of a batch's checks
//! are `stored_batch`'s).
//!
//! Properties, beyond never panicking:
//! - a frame is taken whole or not at all: an incomplete one leaves the buffer untouched, and a
//!   decoded one consumed exactly the length its header announced;
//! - a request message that decodes encodes to bytes that decode to the same message;
//! - a frame encoded again from what was decoded (header, message, records) decodes to the
//!   same frame: the layout reads what the encoder writes.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use weir_wire::frame::encode_frame_to_vec;
use weir_wire::messages as msg;
use weir_wire::{Api, DEFAULT_MAX_FRAME_BYTES, Flags, Frame, FrameHeader, decode_frame, frame_len};

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    // A connection decodes frames until the buffer holds no whole one; an error closes it.
    loop {
        let before = buf.clone();
        match decode_frame(&mut buf, DEFAULT_MAX_FRAME_BYTES) {
            Ok(Some(frame)) => {
                let total = frame_len(&before, DEFAULT_MAX_FRAME_BYTES)
                    .expect("decode_frame accepted the length")
                    .expect("a whole frame has a length");
                assert_eq!(
                    buf[..],
                    before[total..],
                    "consumed other than the announced frame"
                );
                request(frame);
            }
            Ok(None) => {
                assert_eq!(buf, before, "an incomplete frame consumed bytes");
                break;
            }
            Err(_) => break,
        }
    }
});

/// The server's decoding of one request frame, by API key.
fn request(frame: Frame) {
    let Some(api) = Api::from_key(frame.header.api_key) else {
        return; // answered UnknownApi, nothing decoded
    };
    match api {
        Api::Hello => round_trip::<msg::HelloRequest>(&frame),
        Api::CreateTopic => round_trip::<msg::CreateTopicRequest>(&frame),
        Api::DeleteTopic => round_trip::<msg::DeleteTopicRequest>(&frame),
        Api::Metadata => round_trip::<msg::MetadataRequest>(&frame),
        Api::Produce => {
            round_trip::<msg::ProduceRequest>(&frame);
            let _ = weir_batch::peek(&frame.records);
        }
        Api::Fetch => round_trip::<msg::FetchRequest>(&frame),
        Api::ListOffsets => round_trip::<msg::ListOffsetsRequest>(&frame),
        Api::JoinGroup => round_trip::<msg::JoinGroupRequest>(&frame),
        Api::Heartbeat => round_trip::<msg::HeartbeatRequest>(&frame),
        Api::LeaveGroup => round_trip::<msg::LeaveGroupRequest>(&frame),
        Api::CommitOffsets => round_trip::<msg::CommitOffsetsRequest>(&frame),
        Api::FetchOffsets => round_trip::<msg::FetchOffsetsRequest>(&frame),
        Api::ListGroups => round_trip::<msg::ListGroupsRequest>(&frame),
        Api::DescribeGroup => round_trip::<msg::DescribeGroupRequest>(&frame),
        Api::Subscribe => round_trip::<msg::SubscribeRequest>(&frame),
        Api::Credit => round_trip::<msg::CreditRequest>(&frame),
        Api::Unsubscribe => round_trip::<msg::UnsubscribeRequest>(&frame),
        Api::InitProducer => round_trip::<msg::InitProducerRequest>(&frame),
        Api::Authenticate => round_trip::<msg::AuthenticateRequest>(&frame),
        // The server never decodes a ping's body, and refuses pushes from clients.
        Api::Ping | Api::Push => {}
    }
}

/// Decodes the frame's message as `M`, as the server does; whatever decodes must survive
/// encoding, both alone and as a whole frame with the same header and records.
fn round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(frame: &Frame) {
    let Ok(m) = M::decode(frame.message.clone()) else {
        return;
    };
    let bytes = m.encode_to_vec();
    assert_eq!(bytes.len(), m.encoded_len());
    let again = M::decode(&bytes[..]).expect("an encoded message decodes");
    // Compared as encoded: a float field holding NaN (a topic config's dirty ratio, which the
    // broker refuses) is never equal to itself as a value, yet survives the round trip.
    assert_eq!(
        again.encode_to_vec(),
        bytes,
        "a message changed in a round trip: {m:?} became {again:?}"
    );

    // `encode_frame` sets RECORDS itself when records follow, and writes the message length
    // only then: the flag is the encoder's to decide, so it is cleared from the header given.
    let header = FrameHeader {
        flags: Flags(frame.header.flags.0 & !Flags::RECORDS),
        ..frame.header
    };
    let mut buf = encode_frame_to_vec(header, &m, &frame.records);
    let f = decode_frame(&mut buf, usize::MAX)
        .expect("an encoded frame decodes")
        .expect("an encoded frame is whole");
    assert!(buf.is_empty(), "an encoded frame left bytes behind");
    let flags = if frame.records.is_empty() {
        header.flags
    } else {
        header.flags.with(Flags::RECORDS)
    };
    assert_eq!(f.header, FrameHeader { flags, ..header });
    assert_eq!(f.message[..], bytes[..]);
    assert_eq!(f.records, frame.records);
}
