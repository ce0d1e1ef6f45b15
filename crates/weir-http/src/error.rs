//! The API's error type and its JSON form: `{"error":{"code":"unknown_topic","message":"…"}}`.
//!
//! Codes are stable: clients match on `code`, people read `message`. The list is
//! [`ErrorCode`]; `openapi.json` documents it as an enum, and a test keeps the two equal.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use weir_broker::{BrokerError, ErrorKind};

/// Every error code the HTTP API answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The body is not the JSON the endpoint expects, or a parameter is malformed.
    BadRequest,
    /// A record in a produce request is malformed (for example invalid base64).
    InvalidRecord,
    /// The body is larger than `max_body_bytes`.
    PayloadTooLarge,
    /// The body's content type is neither JSON nor `application/octet-stream`.
    UnsupportedMediaType,
    UnknownTopic,
    UnknownPartition,
    UnknownGroup,
    /// The group has members: its offsets are reset only while it has none.
    GroupNotEmpty,
    /// No record has this key in the compacted topic, or its latest is a tombstone.
    UnknownKey,
    TopicExists,
    InvalidTopicName,
    InvalidConfig,
    /// The requested offset is outside the partition's `[log start, high watermark]`.
    OffsetOutOfRange,
    /// A record batch is larger than the topic's `max_batch_bytes`.
    RecordTooLarge,
    /// No route has this path.
    NotFound,
    /// The path exists but not with this method.
    MethodNotAllowed,
    /// The broker is shutting down.
    ShuttingDown,
    /// The WebSocket connection limit (`ws_max_connections`) is reached.
    TooManyConnections,
    /// A profiling endpoint was called while profiling is off (`[http] profiling = false`).
    ProfilingDisabled,
    /// A CPU profile was asked for while another one is being taken.
    ProfileInProgress,
    /// The disk is full: nothing was written. Writes work again once space is freed (deleting
    /// a topic frees its space); retry later.
    StorageFull,
    /// A disk write or read failed, or stored data failed its check. Nothing was acknowledged;
    /// a retry may succeed.
    StorageError,
    /// No pipeline has this name (or it has no http source, for ingest).
    UnknownPipeline,
    /// The pipeline's input is full: nothing was taken; retry after `Retry-After` seconds.
    PipelineBusy,
    /// The pipeline is stopped or restarting: nothing was taken.
    PipelineNotRunning,
    /// The events were taken but not all delivered (the pipeline stopped or failed); retry.
    NotDelivered,
    /// The events were not delivered in time; they may still be, so a retry may duplicate.
    DeliveryTimeout,
    /// The server requires authentication and the request has no valid credentials
    /// (`Authorization: Bearer` with an API token or a JWT; `access_token` on `/ws`).
    Unauthenticated,
    /// The access control lists do not let the caller do this (or see this resource).
    Forbidden,
    /// Anything else; the message says what.
    Internal,
}

impl ErrorCode {
    /// Every code, for the OpenAPI document.
    pub const ALL: &'static [ErrorCode] = &[
        ErrorCode::BadRequest,
        ErrorCode::InvalidRecord,
        ErrorCode::PayloadTooLarge,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::UnknownTopic,
        ErrorCode::UnknownPartition,
        ErrorCode::UnknownGroup,
        ErrorCode::GroupNotEmpty,
        ErrorCode::UnknownKey,
        ErrorCode::TopicExists,
        ErrorCode::InvalidTopicName,
        ErrorCode::InvalidConfig,
        ErrorCode::OffsetOutOfRange,
        ErrorCode::RecordTooLarge,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::ShuttingDown,
        ErrorCode::TooManyConnections,
        ErrorCode::ProfilingDisabled,
        ErrorCode::ProfileInProgress,
        ErrorCode::StorageFull,
        ErrorCode::StorageError,
        ErrorCode::UnknownPipeline,
        ErrorCode::PipelineBusy,
        ErrorCode::PipelineNotRunning,
        ErrorCode::NotDelivered,
        ErrorCode::DeliveryTimeout,
        ErrorCode::Unauthenticated,
        ErrorCode::Forbidden,
        ErrorCode::Internal,
    ];

    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::InvalidRecord => "invalid_record",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::UnknownTopic => "unknown_topic",
            ErrorCode::UnknownPartition => "unknown_partition",
            ErrorCode::UnknownGroup => "unknown_group",
            ErrorCode::GroupNotEmpty => "group_not_empty",
            ErrorCode::UnknownKey => "unknown_key",
            ErrorCode::TopicExists => "topic_exists",
            ErrorCode::InvalidTopicName => "invalid_topic_name",
            ErrorCode::InvalidConfig => "invalid_config",
            ErrorCode::OffsetOutOfRange => "offset_out_of_range",
            ErrorCode::RecordTooLarge => "record_too_large",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::ProfilingDisabled => "profiling_disabled",
            ErrorCode::ProfileInProgress => "profile_in_progress",
            ErrorCode::StorageFull => "storage_full",
            ErrorCode::StorageError => "storage_error",
            ErrorCode::UnknownPipeline => "unknown_pipeline",
            ErrorCode::PipelineBusy => "pipeline_busy",
            ErrorCode::PipelineNotRunning => "pipeline_not_running",
            ErrorCode::NotDelivered => "not_delivered",
            ErrorCode::DeliveryTimeout => "delivery_timeout",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Internal => "internal",
        }
    }

    /// The HTTP status that goes with the code.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::BadRequest
            | ErrorCode::InvalidRecord
            | ErrorCode::InvalidTopicName
            | ErrorCode::InvalidConfig => StatusCode::BAD_REQUEST,
            ErrorCode::PayloadTooLarge | ErrorCode::RecordTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::UnknownTopic
            | ErrorCode::UnknownPartition
            | ErrorCode::UnknownGroup
            | ErrorCode::UnknownKey
            | ErrorCode::NotFound
            | ErrorCode::UnknownPipeline
            | ErrorCode::ProfilingDisabled => StatusCode::NOT_FOUND,
            ErrorCode::PipelineBusy => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::PipelineNotRunning | ErrorCode::NotDelivered => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ErrorCode::DeliveryTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::TopicExists | ErrorCode::ProfileInProgress | ErrorCode::GroupNotEmpty => {
                StatusCode::CONFLICT
            }
            ErrorCode::OffsetOutOfRange => StatusCode::RANGE_NOT_SATISFIABLE,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::ShuttingDown | ErrorCode::TooManyConnections => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ErrorCode::StorageFull => StatusCode::INSUFFICIENT_STORAGE,
            ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::StorageError | ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// An error answered to an HTTP client.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"error": {"code": self.code.as_str(), "message": self.message}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.code.status();
        if status.is_server_error() {
            tracing::warn!(code = self.code.as_str(), message = %self.message, "HTTP request failed");
        }
        (
            status,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            self.body().to_string(),
        )
            .into_response()
    }
}

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> Self {
        if let BrokerError::UnknownTopic(name) = &e {
            return ApiError::new(
                ErrorCode::UnknownTopic,
                format!("topic '{name}' does not exist"),
            );
        }
        ApiError::new(kind_code(e.kind()), e.to_string())
    }
}

/// The HTTP door's one table from the broker's error kinds to its codes.
fn kind_code(kind: ErrorKind) -> ErrorCode {
    match kind {
        ErrorKind::UnknownTopic => ErrorCode::UnknownTopic,
        ErrorKind::UnknownPartition => ErrorCode::UnknownPartition,
        ErrorKind::TopicExists => ErrorCode::TopicExists,
        ErrorKind::InvalidTopicName => ErrorCode::InvalidTopicName,
        ErrorKind::InvalidConfig => ErrorCode::InvalidConfig,
        ErrorKind::InvalidRequest => ErrorCode::BadRequest,
        ErrorKind::CorruptBatch | ErrorKind::InvalidRecord => ErrorCode::InvalidRecord,
        ErrorKind::TooLarge => ErrorCode::RecordTooLarge,
        ErrorKind::OffsetOutOfRange => ErrorCode::OffsetOutOfRange,
        ErrorKind::StorageFull => ErrorCode::StorageFull,
        ErrorKind::StorageFailed | ErrorKind::CorruptData => ErrorCode::StorageError,
        ErrorKind::ShuttingDown => ErrorCode::ShuttingDown,
        // No HTTP route joins a group, so these come only from a broker fault.
        ErrorKind::UnknownMember
        | ErrorKind::Fenced
        | ErrorKind::RebalanceInProgress
        | ErrorKind::GroupConflict
        | ErrorKind::Internal => ErrorCode::Internal,
        ErrorKind::NotAuthorized(_) => ErrorCode::Forbidden,
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_kind_has_a_code_and_retriable_ones_say_so() {
        for &kind in ErrorKind::ALL {
            let status = kind_code(kind).status();
            // HTTP clients retry server errors (5xx), never client errors (4xx).
            if kind.is_retriable() {
                assert!(status.is_server_error(), "{kind:?} -> {status}");
            }
        }
        assert_eq!(
            kind_code(ErrorKind::StorageFull).status(),
            StatusCode::INSUFFICIENT_STORAGE
        );
    }

    #[test]
    fn codes_are_distinct_and_map_to_client_or_server_errors() {
        let mut seen = std::collections::BTreeSet::new();
        for c in ErrorCode::ALL {
            assert!(seen.insert(c.as_str()), "{} twice", c.as_str());
            let s = c.status();
            assert!(s.is_client_error() || s.is_server_error(), "{s}");
        }
    }

    #[test]
    fn broker_errors_keep_their_meaning() {
        let e = ApiError::from(BrokerError::UnknownTopic("x".into()));
        assert_eq!(e.code, ErrorCode::UnknownTopic);
        assert_eq!(e.message, "topic 'x' does not exist");
        assert_eq!(
            e.body(),
            serde_json::json!({"error":{"code":"unknown_topic","message":"topic 'x' does not exist"}})
        );
        let e = ApiError::from(BrokerError::Log(weir_log::LogError::OffsetOutOfRange {
            offset: 1,
            log_start: 5,
            high_watermark: 9,
        }));
        assert_eq!(e.code.status(), StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(
            ApiError::from(BrokerError::ShuttingDown).code.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
