//! OffsetCommit: a group's offsets, stored as given (see [`commit_check`]), each with its
//! metadata string (at most 4,096 bytes, Kafka's default limit; OffsetFetch returns it).

use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::{OffsetCommitRequest, OffsetCommitResponse};
use weir_broker::Broker;
use weir_broker::offsets::MAX_METADATA_BYTES;

use super::topic_name;
use crate::dispatch::Ctx;
use crate::{code, group_error_code};
use weir_broker::access::{Operation, ResourceType};

pub(crate) async fn handle(cx: &mut Ctx<'_>, r: OffsetCommitRequest) -> OffsetCommitResponse {
    let (broker, groups) = (&cx.kafka.broker, &cx.kafka.groups);
    let group = r.group_id.0.to_string();
    // Checked first: a client that may not use the group does not touch its members either.
    let group_allowed = cx.allows(Operation::Read, ResourceType::Group, &group);
    // A KIP-848 group checks the member's epoch; a classic one its generation.
    let denied = if !group_allowed {
        code::GROUP_AUTHORIZATION_FAILED
    } else if groups.consumer.holds(&group) {
        groups
            .consumer
            .check_commit(&group, r.generation_id_or_member_epoch, &r.member_id)
    } else {
        groups.check_commit(&group, r.generation_id_or_member_epoch, &r.member_id)
    };
    let mut valid = Vec::new();
    // Per partition: the error it gets (validated first, then committed together).
    let mut results: Vec<(String, Vec<(i32, i16)>)> = Vec::new();
    for t in r.topics {
        let name = t.name.0.to_string();
        let topic_allowed = cx.allows(Operation::Read, ResourceType::Topic, &name);
        let mut parts = Vec::new();
        for p in t.partitions {
            let metadata = p
                .committed_metadata
                .map(|m| m.to_string())
                .unwrap_or_default();
            let error = if !group_allowed {
                code::GROUP_AUTHORIZATION_FAILED
            } else if !topic_allowed {
                code::TOPIC_AUTHORIZATION_FAILED
            } else if denied != code::NONE {
                denied
            } else if metadata.len() > MAX_METADATA_BYTES {
                // Kafka's offset.metadata.max.bytes default, and its answer.
                code::OFFSET_METADATA_TOO_LARGE
            } else {
                commit_check(broker, &name, p.partition_index)
            };
            if error == code::NONE {
                valid.push((
                    name.clone(),
                    p.partition_index as u32,
                    p.committed_offset,
                    metadata,
                ));
            }
            parts.push((p.partition_index, error));
        }
        results.push((name, parts));
    }
    let stored = if valid.is_empty() {
        code::NONE
    } else {
        match broker.commit_as_given(&group, valid).await {
            Ok(()) => code::NONE,
            Err(e) => {
                tracing::warn!(%group, error = %e, "Kafka offset commit failed");
                group_error_code(&e)
            }
        }
    };
    let topics = results
        .into_iter()
        .map(|(name, parts)| {
            let partitions = parts
                .into_iter()
                .map(|(index, error)| {
                    OffsetCommitResponsePartition::default()
                        .with_partition_index(index)
                        .with_error_code(if error == code::NONE { stored } else { error })
                })
                .collect();
            OffsetCommitResponseTopic::default()
                .with_name(topic_name(&name))
                .with_partitions(partitions)
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}

/// Whether an offset may be committed for a partition: `NONE` or the Kafka error code. As
/// Kafka does, an offset is stored as given, inside the log or not, negative or not: a
/// consumer commits where a `seek` put it, or a position that retention has since passed, and
/// an admin tool's reset to earliest commits -2 and reads it back; whether an offset can be
/// read is decided when it is fetched (OFFSET_OUT_OF_RANGE there, then the client's reset
/// policy). Refusing such a commit stops some clients for good. Only a partition that does
/// not exist is refused.
fn commit_check(broker: &Broker, topic: &str, partition: i32) -> i16 {
    let Ok(part) = u32::try_from(partition) else {
        return code::UNKNOWN_TOPIC_OR_PARTITION;
    };
    if broker.partition_count(topic).is_none_or(|n| part >= n) {
        return code::UNKNOWN_TOPIC_OR_PARTITION;
    }
    code::NONE
}
