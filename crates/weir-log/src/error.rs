//! The log's error type.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use thiserror::Error;
use weir_batch::BatchError;

/// Everything that can go wrong in the log. Cloneable, because one failed group commit fails
/// every append that shared it.
#[derive(Debug, Clone, Error)]
pub enum LogError {
    /// The batch given to `append` is malformed; nothing was written.
    #[error("invalid record batch: {0}")]
    InvalidBatch(#[from] BatchError),
    /// The batch is larger than the log's `max_batch_bytes`; nothing was written.
    #[error("record batch of {size} bytes exceeds the limit of {max} bytes")]
    BatchTooLarge { size: usize, max: usize },
    /// The requested offset is outside `[log_start_offset, high_watermark]`.
    #[error("offset {offset} is out of range: the log holds [{log_start}, {high_watermark})")]
    OffsetOutOfRange {
        offset: u64,
        log_start: u64,
        high_watermark: u64,
    },
    /// Stored data failed verification: a bad checksum, header or offset. What is stored before
    /// it stays readable.
    #[error("corrupt data in segment {segment} at byte {position}: {reason}")]
    Corrupt {
        segment: u64,
        position: u64,
        reason: String,
    },
    /// An I/O operation failed. When the cause is a full disk, [`LogError::is_storage_full`]
    /// says so; the append that hit it was not made visible and later appends work again once
    /// there is space.
    #[error("{op} failed on {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },
    /// The configuration is invalid.
    #[error("invalid log configuration: {0}")]
    Config(String),
    /// The log was closed.
    #[error("the log is closed")]
    Closed,
    /// Offsets would exceed the largest offset Kafka batches can carry (i64::MAX).
    #[error("offset space exhausted")]
    OffsetOverflow,
    /// A conditional append ([`crate::Log::append_start_unless_truncated`]) was refused: the
    /// log dropped unsynced data after a failed write or sync since the earlier append it
    /// depends on, which may be gone. Nothing was written.
    #[error("unsynced writes were dropped since the batch this one follows; resend from it")]
    TruncatedSince,
}

impl LogError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        LogError::Io {
            op,
            path: path.into(),
            source: Arc::new(source),
        }
    }

    /// Whether this error comes from a full disk.
    pub fn is_storage_full(&self) -> bool {
        matches!(self, LogError::Io { source, .. } if source.kind() == io::ErrorKind::StorageFull)
    }
}

/// Result alias for the log.
pub type Result<T, E = LogError> = std::result::Result<T, E>;
