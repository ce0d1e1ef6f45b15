//! The broker's error type and its kinds.
//!
//! Front doors never match on [`BrokerError`]'s variants (nor on the `LogError` and
//! `BatchError` nested inside): they ask [`BrokerError::kind`] and map each [`ErrorKind`] to
//! their own protocol's code in one table apiece, which an exhaustive `match` keeps complete.
//! A new failure therefore needs a kind (or fits an existing one) and every door answers it.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use thiserror::Error;
use weir_auth::acl::{Operation, ResourceType};
use weir_batch::BatchError;
use weir_log::LogError;

#[derive(Debug, Clone, Error)]
pub enum BrokerError {
    #[error("topic {0:?} does not exist")]
    UnknownTopic(String),
    #[error("topic {topic:?} has no partition {partition}")]
    UnknownPartition { topic: String, partition: u32 },
    #[error("topic {0:?} already exists")]
    TopicExists(String),
    #[error("invalid topic name {name:?}: {reason}")]
    InvalidTopicName { name: String, reason: &'static str },
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("group {group:?}: member {member:?} is unknown (expired or never joined)")]
    UnknownMember { group: String, member: String },
    #[error("group {group:?}: generation {given} is not the current generation {current}")]
    IllegalGeneration {
        group: String,
        given: u64,
        current: u64,
    },
    #[error("group {group:?} is rebalancing; rejoin for the new assignment")]
    RebalanceInProgress { group: String },
    #[error(
        "group {group:?}: member {member:?} does not own {topic}/{partition} in this generation"
    )]
    NotOwner {
        group: String,
        member: String,
        topic: String,
        partition: u32,
    },
    #[error("group {group:?} is used by the {existing} protocol; pick another name")]
    GroupConflict {
        group: String,
        existing: &'static str,
    },
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("the broker is shutting down")]
    ShuttingDown,
    /// A file of the broker's own (topic metadata, committed offsets, a topic directory)
    /// could not be read or written.
    #[error("{op} {} failed: {source}", path.display())]
    Storage {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },
    /// A file of the broker's own holds what this build cannot read.
    #[error("{what} is damaged: {reason}")]
    CorruptMetadata { what: String, reason: String },
    /// A fault of the broker itself (a background task that panicked, say).
    #[error("internal error: {0}")]
    Internal(String),
    /// The access control lists do not let the client do this.
    #[error("{principal} may not {} {} {name:?}", operation.name(), resource.name())]
    NotAuthorized {
        principal: String,
        operation: Operation,
        resource: ResourceType,
        name: String,
    },
}

/// What went wrong, in the terms a client acts on. Every front door maps each kind to a code
/// of its protocol; whether the client should retry follows from the kind
/// ([`ErrorKind::is_retriable`]), and each door's table keeps that split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    UnknownTopic,
    UnknownPartition,
    TopicExists,
    InvalidTopicName,
    /// A setting out of range or unknown.
    InvalidConfig,
    /// A request malformed or impossible in itself (not a record batch).
    InvalidRequest,
    /// A batch damaged on its way (checksum, header, length). Kafka calls that retriable;
    /// weir's own doors do not, since their clients built the batch that failed.
    CorruptBatch,
    /// A batch built wrong (its records do not decode, a compression it cannot be read
    /// with): sending it again cannot succeed.
    InvalidRecord,
    /// A batch or request over a size limit.
    TooLarge,
    OffsetOutOfRange,
    UnknownMember,
    /// A stale generation, or a partition the member does not own in this one.
    Fenced,
    RebalanceInProgress,
    /// A group name used by the other protocol.
    GroupConflict,
    /// The disk is full; the write was not made and works again once space is freed.
    StorageFull,
    /// A write or sync failed for another reason (or unsynced writes were dropped after one);
    /// the write was not acknowledged, and a retry may succeed.
    StorageFailed,
    /// Stored data failed verification.
    CorruptData,
    /// The broker is stopping (or stopped): retry against it once it is back.
    ShuttingDown,
    /// A fault of the broker itself.
    Internal,
    /// Refused by the access control lists, on a resource of this type.
    NotAuthorized(ResourceType),
}

impl ErrorKind {
    /// Every kind, for the tests that hold each door's table complete.
    pub const ALL: &'static [ErrorKind] = &[
        ErrorKind::UnknownTopic,
        ErrorKind::UnknownPartition,
        ErrorKind::TopicExists,
        ErrorKind::InvalidTopicName,
        ErrorKind::InvalidConfig,
        ErrorKind::InvalidRequest,
        ErrorKind::CorruptBatch,
        ErrorKind::InvalidRecord,
        ErrorKind::TooLarge,
        ErrorKind::OffsetOutOfRange,
        ErrorKind::UnknownMember,
        ErrorKind::Fenced,
        ErrorKind::RebalanceInProgress,
        ErrorKind::GroupConflict,
        ErrorKind::StorageFull,
        ErrorKind::StorageFailed,
        ErrorKind::CorruptData,
        ErrorKind::ShuttingDown,
        ErrorKind::Internal,
        ErrorKind::NotAuthorized(ResourceType::Topic),
        ErrorKind::NotAuthorized(ResourceType::Group),
        ErrorKind::NotAuthorized(ResourceType::Cluster),
        ErrorKind::NotAuthorized(ResourceType::Pipeline),
    ];

    /// Whether the same request, sent again later, may succeed with nothing changed on the
    /// client's side. A client that retries these loses nothing.
    pub fn is_retriable(self) -> bool {
        matches!(
            self,
            ErrorKind::RebalanceInProgress
                | ErrorKind::StorageFull
                | ErrorKind::StorageFailed
                | ErrorKind::ShuttingDown
        )
    }
}

impl BrokerError {
    pub(crate) fn storage(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        BrokerError::Storage {
            op,
            path: path.into(),
            source: Arc::new(source),
        }
    }

    /// The kind of failure, which each front door maps to its protocol's code.
    pub fn kind(&self) -> ErrorKind {
        match self {
            BrokerError::UnknownTopic(_) => ErrorKind::UnknownTopic,
            BrokerError::UnknownPartition { .. } => ErrorKind::UnknownPartition,
            BrokerError::TopicExists(_) => ErrorKind::TopicExists,
            BrokerError::InvalidTopicName { .. } => ErrorKind::InvalidTopicName,
            BrokerError::InvalidConfig(_) => ErrorKind::InvalidConfig,
            BrokerError::Log(l) => log_kind(l),
            BrokerError::UnknownMember { .. } => ErrorKind::UnknownMember,
            BrokerError::IllegalGeneration { .. } | BrokerError::NotOwner { .. } => {
                ErrorKind::Fenced
            }
            BrokerError::RebalanceInProgress { .. } => ErrorKind::RebalanceInProgress,
            BrokerError::GroupConflict { .. } => ErrorKind::GroupConflict,
            BrokerError::InvalidRequest(_) => ErrorKind::InvalidRequest,
            BrokerError::ShuttingDown => ErrorKind::ShuttingDown,
            BrokerError::Storage { source, .. } => io_kind(source),
            BrokerError::CorruptMetadata { .. } => ErrorKind::CorruptData,
            BrokerError::Internal(_) => ErrorKind::Internal,
            BrokerError::NotAuthorized { resource, .. } => ErrorKind::NotAuthorized(*resource),
        }
    }
}

fn io_kind(e: &io::Error) -> ErrorKind {
    if e.kind() == io::ErrorKind::StorageFull {
        ErrorKind::StorageFull
    } else {
        ErrorKind::StorageFailed
    }
}

fn log_kind(e: &LogError) -> ErrorKind {
    match e {
        LogError::InvalidBatch(
            BatchError::BadRecord { .. }
            | BatchError::Decompress { .. }
            | BatchError::BadCompression(_)
            | BatchError::BadRecordCount { .. },
        ) => ErrorKind::InvalidRecord,
        LogError::InvalidBatch(BatchError::DecompressedTooLarge { .. }) => ErrorKind::TooLarge,
        LogError::InvalidBatch(_) => ErrorKind::CorruptBatch,
        LogError::BatchTooLarge { .. } => ErrorKind::TooLarge,
        LogError::OffsetOutOfRange { .. } => ErrorKind::OffsetOutOfRange,
        LogError::Corrupt { .. } => ErrorKind::CorruptData,
        LogError::Io { source, .. } => io_kind(source),
        LogError::TruncatedSince => ErrorKind::StorageFailed,
        LogError::Config(_) => ErrorKind::InvalidConfig,
        LogError::Closed => ErrorKind::ShuttingDown,
        LogError::OffsetOverflow => ErrorKind::Internal,
    }
}

pub type Result<T, E = BrokerError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_its_own_kind_wherever_it_is_met() {
        let full = || io::Error::from(io::ErrorKind::StorageFull);
        let other = || io::Error::other("EIO");
        assert_eq!(
            BrokerError::storage("write", "/x", full()).kind(),
            ErrorKind::StorageFull
        );
        assert_eq!(
            BrokerError::storage("write", "/x", other()).kind(),
            ErrorKind::StorageFailed
        );
        let log = |e| {
            BrokerError::Log(LogError::Io {
                op: "append",
                path: "/x".into(),
                source: Arc::new(e),
            })
        };
        assert_eq!(log(full()).kind(), ErrorKind::StorageFull);
        assert_eq!(log(other()).kind(), ErrorKind::StorageFailed);
        assert!(ErrorKind::StorageFull.is_retriable());
        assert!(ErrorKind::ShuttingDown.is_retriable());
        assert!(!ErrorKind::InvalidRecord.is_retriable());
    }

    #[test]
    fn all_lists_every_kind_once() {
        let set: std::collections::HashSet<_> = ErrorKind::ALL.iter().collect();
        assert_eq!(set.len(), ErrorKind::ALL.len());
        // A kind missing from ALL would escape the doors' table tests: this match breaks the
        // build when a kind is added, as a reminder to list it.
        for k in ErrorKind::ALL {
            match k {
                ErrorKind::UnknownTopic
                | ErrorKind::UnknownPartition
                | ErrorKind::TopicExists
                | ErrorKind::InvalidTopicName
                | ErrorKind::InvalidConfig
                | ErrorKind::InvalidRequest
                | ErrorKind::CorruptBatch
                | ErrorKind::InvalidRecord
                | ErrorKind::TooLarge
                | ErrorKind::OffsetOutOfRange
                | ErrorKind::UnknownMember
                | ErrorKind::Fenced
                | ErrorKind::RebalanceInProgress
                | ErrorKind::GroupConflict
                | ErrorKind::StorageFull
                | ErrorKind::StorageFailed
                | ErrorKind::CorruptData
                | ErrorKind::ShuttingDown
                | ErrorKind::Internal => {}
                ErrorKind::NotAuthorized(
                    ResourceType::Topic
                    | ResourceType::Group
                    | ResourceType::Cluster
                    | ResourceType::Pipeline,
                ) => {}
            }
        }
        assert_eq!(ErrorKind::ALL.len(), 23);
    }
}
