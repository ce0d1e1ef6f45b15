//! Arbitrary bytes as one Kafka request frame (after its size prefix), through the same
//! decode path the listener uses: the guard, then the `kafka-protocol` decoders. libFuzzer's
//! `-malloc_limit_mb` turns any oversized reservation into a finding.
//!
//! Whatever decodes is encoded again and must pass the guard: the guard accepts everything the
//! encoder writes for a served version.
#![no_main]

use bytes::{Bytes, BytesMut};
use kafka_protocol::protocol::Encodable;
use libfuzzer_sys::fuzz_target;
use weir_kafka::{Decoded, decode_request, guard};

fuzz_target!(|data: &[u8]| {
    let Ok(Decoded::Request {
        api,
        version,
        header,
        request,
    }) = decode_request(Bytes::copy_from_slice(data))
    else {
        return;
    };
    let header_version = api.request_header_version(version);
    let mut again = BytesMut::new();
    if header.encode(&mut again, header_version).is_err()
        || request.encode(&mut again, version).is_err()
    {
        return;
    }
    if let Err(e) = guard::check_request(api, version, header_version, &again) {
        panic!("{api:?} v{version}: the guard refuses a re-encoded request: {e}");
    }
});
