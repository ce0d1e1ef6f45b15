//! The broker's error type. Front doors map it to their own protocol's codes.

use thiserror::Error;
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
    #[error("metadata storage failed: {0}")]
    Metadata(String),
}

pub type Result<T, E = BrokerError> = std::result::Result<T, E>;
