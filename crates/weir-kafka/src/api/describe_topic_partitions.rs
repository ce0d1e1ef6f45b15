//! DescribeTopicPartitions (KIP-966): topics and their partitions, at most
//! `response_partition_limit` partitions per answer (capped at 2,000, Kafka's default), with a
//! cursor to go on from. Topics are taken in name order; an empty list asks for every topic.

use kafka_protocol::messages::describe_topic_partitions_response::{
    Cursor, DescribeTopicPartitionsResponsePartition, DescribeTopicPartitionsResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, DescribeTopicPartitionsRequest, DescribeTopicPartitionsResponse,
};
use uuid::Uuid;

use super::{topic_name, uuid};
use crate::code;
use crate::dispatch::Ctx;
use weir_broker::access::{Operation, ResourceType};

/// Most partitions in one answer.
const MAX_PARTITIONS: usize = 2_000;

pub(crate) async fn handle(
    cx: &mut Ctx<'_>,
    r: DescribeTopicPartitionsRequest,
) -> DescribeTopicPartitionsResponse {
    let broker = &cx.kafka.broker;
    // Every topic the client may see; named topics it may not are refused below.
    let mut names: Vec<String> = if r.topics.is_empty() {
        broker
            .topics()
            .into_iter()
            .map(|t| t.name)
            .filter(|n| cx.allows(Operation::Describe, ResourceType::Topic, n))
            .collect()
    } else {
        r.topics.iter().map(|t| t.name.0.to_string()).collect()
    };
    names.sort();
    names.dedup();
    let (from_topic, from_partition) = match &r.cursor {
        Some(c) => (c.topic_name.0.to_string(), c.partition_index.max(0) as u32),
        None => (String::new(), 0),
    };
    let mut budget = usize::try_from(r.response_partition_limit)
        .unwrap_or(MAX_PARTITIONS)
        .clamp(1, MAX_PARTITIONS);
    let mut topics = Vec::new();
    let mut next_cursor = None;
    for name in names.into_iter().filter(|n| *n >= from_topic) {
        if !cx.allows(Operation::Describe, ResourceType::Topic, &name) {
            topics.push(
                DescribeTopicPartitionsResponseTopic::default()
                    .with_name(Some(topic_name(&name)))
                    .with_topic_id(Uuid::nil())
                    .with_error_code(code::TOPIC_AUTHORIZATION_FAILED),
            );
            continue;
        }
        let Some(count) = broker.partition_count(&name) else {
            topics.push(
                DescribeTopicPartitionsResponseTopic::default()
                    .with_name(Some(topic_name(&name)))
                    .with_topic_id(Uuid::nil())
                    .with_error_code(code::UNKNOWN_TOPIC_OR_PARTITION),
            );
            continue;
        };
        let first = if name == from_topic {
            from_partition
        } else {
            0
        };
        if budget == 0 {
            next_cursor = Some((name, first));
            break;
        }
        let last = count.min(first.saturating_add(budget as u32));
        let partitions = (first..last)
            .map(|p| {
                DescribeTopicPartitionsResponsePartition::default()
                    .with_partition_index(p as i32)
                    .with_leader_id(BrokerId(0))
                    .with_leader_epoch(0)
                    .with_replica_nodes(vec![BrokerId(0)])
                    .with_isr_nodes(vec![BrokerId(0)])
            })
            .collect::<Vec<_>>();
        budget -= partitions.len();
        let id = broker.topic_id(&name).map_or(Uuid::nil(), uuid);
        topics.push(
            DescribeTopicPartitionsResponseTopic::default()
                .with_name(Some(topic_name(&name)))
                .with_topic_id(id)
                .with_partitions(partitions),
        );
        if last < count {
            next_cursor = Some((name, last));
            break;
        }
    }
    DescribeTopicPartitionsResponse::default()
        .with_topics(topics)
        .with_next_cursor(next_cursor.map(|(name, p)| {
            Cursor::default()
                .with_topic_name(topic_name(&name))
                .with_partition_index(p as i32)
        }))
}
