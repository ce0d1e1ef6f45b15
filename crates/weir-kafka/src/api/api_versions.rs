//! ApiVersions: the APIs and versions served, exactly those [`crate::dispatch::SUPPORTED`]
//! lists (the SASL APIs only when authentication is required, the ACL APIs only with ACLs). A version above those served is answered in v0 with UNSUPPORTED_VERSION (see
//! [`crate::Decoded::ApiVersionsTooNew`]), so that a newer client can fall back.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiVersionsResponse, ResponseHeader};
use kafka_protocol::protocol::Encodable;

use crate::dispatch::{Offered, SUPPORTED};

/// The whole answer, size prefix included: ApiVersions responses always use header v0,
/// whatever the request's version. The SASL and ACL APIs are listed only if `offered`.
pub(crate) fn reply(correlation: i32, version: i16, error: i16, offered: Offered) -> Bytes {
    let keys = SUPPORTED
        .iter()
        .filter(|(k, _, _)| offered.offers(*k))
        .map(|(k, min, max)| {
            ApiVersion::default()
                .with_api_key(*k as i16)
                .with_min_version(*min)
                .with_max_version(*max)
        })
        .collect();
    let resp = ApiVersionsResponse::default()
        .with_error_code(error)
        .with_api_keys(keys);
    let mut out = BytesMut::new();
    out.put_i32(0);
    ResponseHeader::default()
        .with_correlation_id(correlation)
        .encode(&mut out, 0)
        .expect("header encodes");
    resp.encode(&mut out, version).expect("ApiVersions encodes");
    let len = (out.len() - 4) as i32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    out.freeze()
}
