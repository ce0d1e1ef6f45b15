//! ListOffsets, with Kafka's sentinels: -2 the log start, -1 the end (high watermark), -3
//! (v7+) the first record carrying the largest timestamp, -4 (v8+, tiered storage's earliest
//! local offset) the log start, as every record here is local; -5 (v9+, the earliest offset
//! not yet uploaded to tiered storage) has no answer here (-1). Any other time finds the first
//! record stamped at or after it, with that record's timestamp; -1 when every record is older.
//! Offsets found by time carry leader epoch 0, as every partition's leader epoch here is 0.

use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
use weir_broker::broker::OffsetSpec;
use weir_broker::{Broker, BrokerError};

use super::topic_name;
use crate::dispatch::Ctx;
use crate::error_code;
use weir_broker::access::{Operation, ResourceType};

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
const EARLIEST_LOCAL: i64 = -4;
const EARLIEST_PENDING_UPLOAD: i64 = -5;

pub(crate) async fn handle(cx: &mut Ctx<'_>, r: ListOffsetsRequest) -> ListOffsetsResponse {
    let broker = &cx.kafka.broker;
    // Leader epochs are answered from v4 (the encoder refuses one in an older version).
    let epoch = if cx.version >= 4 { 0 } else { -1 };
    let mut topics = Vec::new();
    for t in r.topics {
        let name = t.name.0.to_string();
        let mut parts = Vec::new();
        for p in t.partitions {
            let resp = ListOffsetsPartitionResponse::default()
                .with_partition_index(p.partition_index)
                .with_timestamp(-1)
                .with_offset(-1)
                .with_leader_epoch(-1);
            let allowed = cx.check(Operation::Describe, ResourceType::Topic, &name);
            let found = match u32::try_from(p.partition_index) {
                _ if let Err(e) = &allowed => Err(e.clone()),
                Ok(part) => find(broker, &name, part, p.timestamp).await,
                Err(_) => Err(BrokerError::UnknownPartition {
                    topic: name.clone(),
                    partition: u32::MAX,
                }),
            };
            parts.push(match found {
                Ok(Found::Offset(o)) => resp.with_offset(o as i64).with_leader_epoch(epoch),
                Ok(Found::Record(o, ts)) => resp
                    .with_offset(o as i64)
                    .with_timestamp(ts)
                    .with_leader_epoch(epoch),
                Ok(Found::Nothing) => resp,
                Err(e) => resp.with_error_code(error_code(&e)),
            });
        }
        topics.push(
            ListOffsetsTopicResponse::default()
                .with_name(topic_name(&name))
                .with_partitions(parts),
        );
    }
    ListOffsetsResponse::default().with_topics(topics)
}

/// What a ListOffsets entry finds.
enum Found {
    /// An offset that is not a record's (the log's start or end): no timestamp.
    Offset(u64),
    /// A record's offset and timestamp.
    Record(u64, i64),
    /// No offset answers (-1).
    Nothing,
}

async fn find(
    broker: &Broker,
    topic: &str,
    partition: u32,
    timestamp: i64,
) -> Result<Found, BrokerError> {
    let offset = |spec| broker.list_offsets(topic, partition, spec);
    let record = |r: Option<(u64, i64)>| r.map_or(Found::Nothing, |(o, ts)| Found::Record(o, ts));
    Ok(match timestamp {
        LATEST => Found::Offset(offset(OffsetSpec::Latest).await?),
        EARLIEST | EARLIEST_LOCAL => Found::Offset(offset(OffsetSpec::Earliest).await?),
        MAX_TIMESTAMP => record(broker.max_timestamp_record(topic, partition).await?),
        EARLIEST_PENDING_UPLOAD => {
            // The partition must still exist for the answer to say nothing is pending.
            offset(OffsetSpec::Latest).await?;
            Found::Nothing
        }
        ts => record(broker.record_at_or_after(topic, partition, ts).await?),
    })
}
