//! Stable numeric error codes. Never renumber: clients match on the numbers.

/// An error code on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ErrorCode {
    None = 0,
    /// An unexpected server-side failure; the message says more.
    Internal = 1,
    /// The frame or its message could not be decoded.
    Malformed = 2,
    /// No version both sides speak for this API.
    UnsupportedVersion = 3,
    UnknownApi = 4,
    FrameTooLarge = 5,
    UnknownTopic = 6,
    UnknownPartition = 7,
    TopicExists = 8,
    InvalidConfig = 9,
    /// A record batch failed validation (length, magic, CRC, record count).
    InvalidBatch = 10,
    BatchTooLarge = 11,
    OffsetOutOfRange = 12,
    /// A storage I/O error; the request had no effect.
    Storage = 13,
    StorageFull = 14,
    CorruptData = 15,
    UnknownMember = 16,
    IllegalGeneration = 17,
    RebalanceInProgress = 18,
    UnknownSubscription = 19,
    Throttled = 20,
    ShuttingDown = 21,
    Timeout = 22,
    InvalidRequest = 23,
    ConnectionLimit = 24,
    /// The request must come after a successful Hello.
    HelloRequired = 25,
    /// The group name is in use by a Kafka-protocol group.
    GroupConflict = 26,
    /// A push subscription's queue overflowed under the DISCONNECT policy: the subscriber did
    /// not keep up, and the subscription was ended.
    SlowConsumer = 27,
    /// A batch of an idempotent producer whose sequence number does not follow the last
    /// batch written for its partition: an earlier batch is missing. Resend from it.
    OutOfOrderSequence = 28,
    /// A batch of an idempotent producer with an epoch older than the latest seen.
    InvalidProducerEpoch = 29,
    /// The server requires authentication (Authenticate) before this request.
    AuthenticationRequired = 30,
    /// Unknown user, wrong password, a malformed or out-of-order SASL message, or too many
    /// failures from the client's address; the connection is closed.
    AuthenticationFailed = 31,
    /// The access control lists do not let the client's principal do this.
    NotAuthorized = 32,
}

impl ErrorCode {
    /// The code for a number, `Internal` for numbers this build does not know.
    pub fn from_u32(n: u32) -> Self {
        use ErrorCode::*;
        const ALL: [ErrorCode; 33] = [
            None,
            Internal,
            Malformed,
            UnsupportedVersion,
            UnknownApi,
            FrameTooLarge,
            UnknownTopic,
            UnknownPartition,
            TopicExists,
            InvalidConfig,
            InvalidBatch,
            BatchTooLarge,
            OffsetOutOfRange,
            Storage,
            StorageFull,
            CorruptData,
            UnknownMember,
            IllegalGeneration,
            RebalanceInProgress,
            UnknownSubscription,
            Throttled,
            ShuttingDown,
            Timeout,
            InvalidRequest,
            ConnectionLimit,
            HelloRequired,
            GroupConflict,
            SlowConsumer,
            OutOfOrderSequence,
            InvalidProducerEpoch,
            AuthenticationRequired,
            AuthenticationFailed,
            NotAuthorized,
        ];
        ALL.get(n as usize).copied().unwrap_or(Internal)
    }

    /// Whether retrying the same request later may succeed.
    pub fn is_retriable(self) -> bool {
        matches!(
            self,
            ErrorCode::Storage
                | ErrorCode::StorageFull
                | ErrorCode::Throttled
                | ErrorCode::Timeout
                | ErrorCode::RebalanceInProgress
                | ErrorCode::ShuttingDown
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip_and_are_stable() {
        for n in 0..33u32 {
            assert_eq!(ErrorCode::from_u32(n) as u32, n);
        }
        assert_eq!(ErrorCode::from_u32(10_000), ErrorCode::Internal);
        // Spot-check the contract: these numbers are published.
        assert_eq!(ErrorCode::UnknownTopic as u32, 6);
        assert_eq!(ErrorCode::OffsetOutOfRange as u32, 12);
        assert_eq!(ErrorCode::RebalanceInProgress as u32, 18);
        assert_eq!(ErrorCode::SlowConsumer as u32, 27);
        assert_eq!(ErrorCode::OutOfOrderSequence as u32, 28);
    }
}
