//! ListOffsets: a partition's earliest (-2) or latest (-1) offset, or the first offset whose
//! record is at or after a time (-1 when every record is older, as Kafka answers).

use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
use weir_broker::BrokerError;
use weir_broker::broker::OffsetSpec;

use super::topic_name;
use crate::dispatch::Ctx;
use crate::error_code;

pub(crate) async fn handle(cx: &mut Ctx<'_>, r: ListOffsetsRequest) -> ListOffsetsResponse {
    let broker = &cx.kafka.broker;
    let mut topics = Vec::new();
    for t in r.topics {
        let name = t.name.0.to_string();
        let mut parts = Vec::new();
        for p in t.partitions {
            let spec = match p.timestamp {
                -2 => OffsetSpec::Earliest,
                -1 => OffsetSpec::Latest,
                ts => OffsetSpec::Timestamp(ts),
            };
            let resp = ListOffsetsPartitionResponse::default()
                .with_partition_index(p.partition_index)
                .with_timestamp(-1);
            let result = match u32::try_from(p.partition_index) {
                // By time, as Kafka answers: -1 when every record is older.
                Ok(part) if matches!(spec, OffsetSpec::Timestamp(_)) => broker
                    .offset_for_timestamp(&name, part, p.timestamp)
                    .await
                    .map(|o| o.map_or(-1, |o| o as i64)),
                Ok(part) => broker
                    .list_offsets(&name, part, spec)
                    .await
                    .map(|o| o as i64),
                Err(_) => Err(BrokerError::UnknownPartition {
                    topic: name.clone(),
                    partition: u32::MAX,
                }),
            };
            parts.push(match result {
                Ok(o) => resp.with_offset(o),
                Err(e) => resp.with_error_code(error_code(&e)).with_offset(-1),
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
