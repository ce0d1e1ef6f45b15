//! The one way in for request bytes: the API and version checked against those served, the
//! layout checked by [`crate::guard`], then decoded by the `kafka-protocol` crate; and what
//! happens to a request that does not get that far.

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind};
use kafka_protocol::protocol::Decodable;

use crate::{dispatch, guard, legacy};

/// A request taken off the wire by [`decode_request`].
// Built once per request and destructured at once: boxing the large variant would only add an
// allocation per request.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Decoded {
    /// A request of a served API and version, checked by [`guard::check_request`] and decoded.
    Request {
        api: ApiKey,
        version: i16,
        header: RequestHeader,
        request: RequestKind,
    },
    /// ApiVersions above the versions served (or negative): answered in v0 with
    /// `UNSUPPORTED_VERSION` and the ranges served, before decoding anything past the
    /// correlation id, so newer clients can fall back.
    ApiVersionsTooNew { correlation_id: i32 },
}

/// Why a request could not be decoded; the connection is closed.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("request of {0} bytes is too short for a header")]
    TooShort(usize),
    #[error("unknown Kafka API key {0}")]
    UnknownApi(i16),
    #[error("unsupported Kafka API {api:?} v{version}")]
    Unsupported { api: ApiKey, version: i16 },
    #[error("undecodable legacy request: {0}")]
    Legacy(#[from] crate::legacy::LegacyError),
    #[error("refused before decoding: {0}")]
    Guard(#[from] guard::GuardError),
    #[error("undecodable request header: {0}")]
    Header(String),
    #[error("undecodable {api:?} v{version} request: {reason}")]
    Body {
        api: ApiKey,
        version: i16,
        reason: String,
    },
}

/// Decodes one request (without its size prefix), sans I/O: the API and version are checked
/// against those served, the frame's layout against [`guard::check_request`] (the decoders of
/// the `kafka-protocol` crate reserve memory from unchecked counts), and only then are the
/// header and body decoded.
pub fn decode_request(mut frame: Bytes) -> Result<Decoded, DecodeError> {
    let (Some(key), Some(version)) = (frame.get(0..2), frame.get(2..4)) else {
        return Err(DecodeError::TooShort(frame.len()));
    };
    let key = i16::from_be_bytes([key[0], key[1]]);
    let version = i16::from_be_bytes([version[0], version[1]]);
    let api = ApiKey::try_from(key).map_err(|()| DecodeError::UnknownApi(key))?;
    let Some((min, max)) = dispatch::range(api) else {
        return Err(DecodeError::Unsupported { api, version });
    };
    if api == ApiKey::ApiVersions && (version > max || version < 0) {
        let correlation_id = frame
            .get(4..8)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or(DecodeError::TooShort(frame.len()))?;
        return Ok(Decoded::ApiVersionsTooNew { correlation_id });
    }
    if version < min || version > max {
        return Err(DecodeError::Unsupported { api, version });
    }
    if legacy::covers(api, version) {
        let (header, request) = legacy::decode(api, version, &frame)?;
        return Ok(Decoded::Request {
            api,
            version,
            header,
            request,
        });
    }
    let header_version = api.request_header_version(version);
    guard::check_request(api, version, header_version, &frame)?;
    let header = RequestHeader::decode(&mut frame, header_version)
        .map_err(|e| DecodeError::Header(e.to_string()))?;
    let request = RequestKind::decode(api, &mut frame, version).map_err(|e| DecodeError::Body {
        api,
        version,
        reason: e.to_string(),
    })?;
    Ok(Decoded::Request {
        api,
        version,
        header,
        request,
    })
}

/// The client id of a request's header (v1+: after key, version and correlation id, an i16
/// length and the bytes), read by hand from a request that could not be decoded; empty if it
/// is not there.
pub(crate) fn frame_client_id(head: &[u8]) -> String {
    let mut c = weir_batch::cursor::Cursor(head);
    let _ = c.take(8);
    let Some(len) = c.i16().and_then(|len| usize::try_from(len).ok()) else {
        return String::new();
    };
    let rest = c.rest();
    String::from_utf8_lossy(&rest[..len.min(rest.len())]).into_owned()
}

/// A request refused before it was handled: counted in
/// `weir_kafka_refused_requests_total{reason}`, and logged at warn (the connection's span
/// names the peer) at most once a second, so a client that keeps sending it cannot flood the
/// log. Kafka closes such a connection too; what matters is that an operator sees why.
pub(crate) fn refused_request(e: &DecodeError, client_id: String) {
    static LAST_WARN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let reason = match e {
        DecodeError::UnknownApi(_) => "unknown_api",
        DecodeError::Unsupported { .. } => "unsupported_version",
        DecodeError::TooShort(_) | DecodeError::Header(_) => "malformed",
        DecodeError::Guard(_) | DecodeError::Body { .. } | DecodeError::Legacy(_) => "malformed",
    };
    metrics::counter!("weir_kafka_refused_requests_total", "reason" => reason).increment(1);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if LAST_WARN.swap(now, std::sync::atomic::Ordering::Relaxed) != now {
        tracing::warn!(error = %e, client_id, "Kafka request refused; closing the connection");
    } else {
        tracing::debug!(error = %e, client_id, "Kafka request refused; closing the connection");
    }
}
