//! OffsetDelete: a group forgets its committed offsets of some partitions, unless one of its
//! members subscribes to the topic (GROUP_SUBSCRIBED_TO_TOPIC, as Kafka answers).

use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::{OffsetDeleteRequest, OffsetDeleteResponse};

use super::groups_admin;
use crate::dispatch::Ctx;
use crate::{code, group_error_code};
use weir_broker::access::{Operation, ResourceType};

pub(crate) async fn handle(cx: &mut Ctx<'_>, r: OffsetDeleteRequest) -> OffsetDeleteResponse {
    let (kafka, group) = (cx.kafka, &*r.group_id.0);
    if !cx.allows(Operation::Delete, ResourceType::Group, group) {
        return OffsetDeleteResponse::default().with_error_code(code::GROUP_AUTHORIZATION_FAILED);
    }
    let Some(view) = groups_admin::view(kafka, group) else {
        return OffsetDeleteResponse::default().with_error_code(code::GROUP_ID_NOT_FOUND);
    };
    let native = kafka.broker.describe_group(group);
    let subscribed = |topic: &str| {
        !view.members.is_empty()
            && (kafka.groups.subscribes(group, topic)
                || native.as_ref().is_some_and(|d| {
                    d.members
                        .iter()
                        .any(|m| m.topics.iter().any(|t| t == topic))
                }))
    };
    let mut doomed = Vec::new();
    let mut topics = Vec::new();
    for t in r.topics {
        let name = t.name.0.to_string();
        let error = if !cx.allows(Operation::Read, ResourceType::Topic, &name) {
            code::TOPIC_AUTHORIZATION_FAILED
        } else if kafka.broker.partition_count(&name).is_none() {
            code::UNKNOWN_TOPIC_OR_PARTITION
        } else if subscribed(&name) {
            code::GROUP_SUBSCRIBED_TO_TOPIC
        } else {
            code::NONE
        };
        let mut parts = Vec::new();
        for p in t.partitions {
            if error == code::NONE
                && let Ok(index) = u32::try_from(p.partition_index)
            {
                doomed.push((name.clone(), index));
            }
            parts.push((p.partition_index, error));
        }
        topics.push((t.name, parts));
    }
    let stored = match kafka.broker.delete_group_offsets(group, Some(doomed)).await {
        Ok(()) => code::NONE,
        Err(e) => group_error_code(&e),
    };
    let topics = topics
        .into_iter()
        .map(|(name, parts)| {
            let partitions = parts
                .into_iter()
                .map(|(index, error)| {
                    OffsetDeleteResponsePartition::default()
                        .with_partition_index(index)
                        .with_error_code(if error == code::NONE { stored } else { error })
                })
                .collect();
            OffsetDeleteResponseTopic::default()
                .with_name(name)
                .with_partitions(partitions)
        })
        .collect();
    OffsetDeleteResponse::default().with_topics(topics)
}
