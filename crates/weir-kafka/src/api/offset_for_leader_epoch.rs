//! OffsetForLeaderEpoch, as a single Kafka node whose every partition has had one leader
//! epoch, 0, answers: asked about epoch 0, the end of the log and epoch 0; about a later
//! epoch, or the undefined epoch -1, UNDEFINED (-1, -1). A `current_leader_epoch` above 0 is UNKNOWN_LEADER_EPOCH, as from a
//! client that saw a leader this node never was.

use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};
use weir_broker::broker::OffsetSpec;

use crate::dispatch::Ctx;
use crate::{code, error_code};
use weir_broker::access::{Operation, ResourceType};

pub(crate) async fn handle(
    cx: &mut Ctx<'_>,
    r: OffsetForLeaderEpochRequest,
) -> OffsetForLeaderEpochResponse {
    let broker = &cx.kafka.broker;
    let mut topics = Vec::new();
    for t in r.topics {
        let mut partitions = Vec::new();
        let allowed = cx.allows(Operation::Describe, ResourceType::Topic, &t.topic.0);
        for p in t.partitions {
            let resp = EpochEndOffset::default()
                .with_partition(p.partition)
                .with_leader_epoch(-1)
                .with_end_offset(-1);
            if !allowed {
                partitions.push(resp.with_error_code(code::TOPIC_AUTHORIZATION_FAILED));
                continue;
            }
            let Ok(part) = u32::try_from(p.partition) else {
                partitions.push(resp.with_error_code(code::UNKNOWN_TOPIC_OR_PARTITION));
                continue;
            };
            if p.current_leader_epoch > 0 {
                partitions.push(resp.with_error_code(code::UNKNOWN_LEADER_EPOCH));
                continue;
            }
            partitions.push(
                match broker
                    .list_offsets(&t.topic.0, part, OffsetSpec::Latest)
                    .await
                {
                    Err(e) => resp.with_error_code(error_code(&e)),
                    // Epoch -1 (undefined) or later than 0: no epoch to answer for.
                    Ok(_) if p.leader_epoch != 0 => resp,
                    Ok(end) => resp.with_leader_epoch(0).with_end_offset(end as i64),
                },
            );
        }
        topics.push(
            OffsetForLeaderTopicResult::default()
                .with_topic(t.topic)
                .with_partitions(partitions),
        );
    }
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}
