//! Broker errors as Kafka error codes: one table, [`kind_code`], from the broker's
//! [`ErrorKind`] to the code a Kafka client acts on, and a test that holds the table to
//! Kafka's split between retriable and fatal codes. A kind a client may retry must look
//! retriable to every Kafka client: librdkafka, for one, gives up at once on
//! UNKNOWN_SERVER_ERROR, where it retries NOT_LEADER_OR_FOLLOWER or KAFKA_STORAGE_ERROR.

use weir_broker::access::ResourceType;
use weir_broker::{BrokerError, ErrorKind};

/// Kafka error codes used here.
pub(crate) mod code {
    pub const NONE: i16 = 0;
    pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
    pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    pub const ILLEGAL_GENERATION: i16 = 22;
    pub const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
    pub const INVALID_GROUP_ID: i16 = 24;
    pub const UNKNOWN_MEMBER_ID: i16 = 25;
    pub const INVALID_SESSION_TIMEOUT: i16 = 26;
    pub const REBALANCE_IN_PROGRESS: i16 = 27;
    pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
    pub const INVALID_PRODUCER_EPOCH: i16 = 47;
    pub const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 = 53;
    pub const MEMBER_ID_REQUIRED: i16 = 79;
    pub const GROUP_MAX_SIZE_REACHED: i16 = 81;
    pub const FENCED_INSTANCE_ID: i16 = 82;
    pub const INVALID_RECORD: i16 = 87;
    pub const OFFSET_OUT_OF_RANGE: i16 = 1;
    pub const CORRUPT_MESSAGE: i16 = 2;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const UNKNOWN_TOPIC_ID: i16 = 100;
    pub const NON_EMPTY_GROUP: i16 = 68;
    pub const GROUP_ID_NOT_FOUND: i16 = 69;
    pub const GROUP_SUBSCRIBED_TO_TOPIC: i16 = 86;
    pub const UNSUPPORTED_ENDPOINT_TYPE: i16 = 115;
    pub const INVALID_REPLICA_ASSIGNMENT: i16 = 39;
    pub const UNKNOWN_LEADER_EPOCH: i16 = 75;
    pub const UNSUPPORTED_COMPRESSION_TYPE: i16 = 76;
    pub const OFFSET_METADATA_TOO_LARGE: i16 = 12;
    pub const FENCED_MEMBER_EPOCH: i16 = 110;
    pub const STALE_MEMBER_EPOCH: i16 = 113;
    pub const MESSAGE_TOO_LARGE: i16 = 10;
    pub const INVALID_TOPIC_EXCEPTION: i16 = 17;
    pub const INVALID_REQUEST: i16 = 42;
    pub const UNSUPPORTED_VERSION: i16 = 35;
    pub const TOPIC_ALREADY_EXISTS: i16 = 36;
    pub const INVALID_PARTITIONS: i16 = 37;
    pub const INVALID_REPLICATION_FACTOR: i16 = 38;
    pub const INVALID_CONFIG: i16 = 40;
    pub const KAFKA_STORAGE_ERROR: i16 = 56;
    pub const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
    pub const ILLEGAL_SASL_STATE: i16 = 34;
    pub const SASL_AUTHENTICATION_FAILED: i16 = 58;
    pub const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
    pub const GROUP_AUTHORIZATION_FAILED: i16 = 30;
    pub const CLUSTER_AUTHORIZATION_FAILED: i16 = 31;
    pub const SECURITY_DISABLED: i16 = 54;
    pub const UNKNOWN_SERVER_ERROR: i16 = -1;
}

/// The code for a failure of the data path (produce, fetch, list offsets, topics).
pub(crate) fn error_code(e: &BrokerError) -> i16 {
    kind_code(e.kind())
}

/// The code for a failure of a group request (offset commit and fetch, joins): a stopping
/// broker answers COORDINATOR_NOT_AVAILABLE, which sends the client to find its coordinator
/// again, where the data path's NOT_LEADER_OR_FOLLOWER would not.
pub(crate) fn group_error_code(e: &BrokerError) -> i16 {
    match e.kind() {
        ErrorKind::ShuttingDown => code::COORDINATOR_NOT_AVAILABLE,
        kind => kind_code(kind),
    }
}

/// The one table.
fn kind_code(kind: ErrorKind) -> i16 {
    match kind {
        ErrorKind::UnknownTopic | ErrorKind::UnknownPartition => code::UNKNOWN_TOPIC_OR_PARTITION,
        ErrorKind::TopicExists => code::TOPIC_ALREADY_EXISTS,
        ErrorKind::InvalidTopicName => code::INVALID_TOPIC_EXCEPTION,
        ErrorKind::InvalidConfig => code::INVALID_CONFIG,
        ErrorKind::InvalidRequest => code::INVALID_REQUEST,
        // Damaged on the way: Kafka's CORRUPT_MESSAGE is retriable. Built wrong: retrying
        // cannot help.
        ErrorKind::CorruptBatch => code::CORRUPT_MESSAGE,
        ErrorKind::InvalidRecord => code::INVALID_RECORD,
        ErrorKind::TooLarge => code::MESSAGE_TOO_LARGE,
        ErrorKind::OffsetOutOfRange => code::OFFSET_OUT_OF_RANGE,
        ErrorKind::UnknownMember => code::UNKNOWN_MEMBER_ID,
        ErrorKind::Fenced => code::ILLEGAL_GENERATION,
        ErrorKind::RebalanceInProgress => code::REBALANCE_IN_PROGRESS,
        ErrorKind::GroupConflict => code::INCONSISTENT_GROUP_PROTOCOL,
        // Retriable: the producer resends, and a full disk takes writes again once space is
        // freed.
        ErrorKind::StorageFull | ErrorKind::StorageFailed | ErrorKind::CorruptData => {
            code::KAFKA_STORAGE_ERROR
        }
        // Retriable: the client refreshes its metadata and tries again, by then against the
        // broker started again.
        ErrorKind::ShuttingDown => code::NOT_LEADER_OR_FOLLOWER,
        ErrorKind::Internal => code::UNKNOWN_SERVER_ERROR,
        ErrorKind::NotAuthorized(ResourceType::Topic) => code::TOPIC_AUTHORIZATION_FAILED,
        ErrorKind::NotAuthorized(ResourceType::Group) => code::GROUP_AUTHORIZATION_FAILED,
        // Pipelines are not Kafka's: a rule on one refuses as a cluster operation would.
        ErrorKind::NotAuthorized(ResourceType::Cluster | ResourceType::Pipeline) => {
            code::CLUSTER_AUTHORIZATION_FAILED
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The codes Kafka's clients retry (Kafka's `RetriableException`s among the codes used
    /// here, and REBALANCE_IN_PROGRESS, on which consumers rejoin).
    const RETRIABLE: &[i16] = &[
        code::CORRUPT_MESSAGE,
        code::UNKNOWN_TOPIC_OR_PARTITION,
        code::NOT_LEADER_OR_FOLLOWER,
        code::COORDINATOR_NOT_AVAILABLE,
        code::REBALANCE_IN_PROGRESS,
        code::KAFKA_STORAGE_ERROR,
    ];

    #[test]
    fn every_kind_a_client_may_retry_gets_a_retriable_code() {
        let shutting_down = BrokerError::ShuttingDown;
        for &kind in ErrorKind::ALL {
            let c = kind_code(kind);
            assert_ne!(c, code::NONE, "{kind:?}");
            if kind.is_retriable() {
                assert!(RETRIABLE.contains(&c), "{kind:?} -> {c}");
            }
            if kind != ErrorKind::Internal {
                assert_ne!(c, code::UNKNOWN_SERVER_ERROR, "{kind:?}");
            }
        }
        assert_eq!(error_code(&shutting_down), code::NOT_LEADER_OR_FOLLOWER);
        assert_eq!(
            group_error_code(&shutting_down),
            code::COORDINATOR_NOT_AVAILABLE
        );
    }
}
