//! OffsetFetch: a group's committed offsets, for the partitions asked for or (null, v2+) for
//! every partition it committed; -1 where it has none.

use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponsePartition, OffsetFetchResponseTopic,
};
use kafka_protocol::messages::{OffsetFetchRequest, OffsetFetchResponse};
use kafka_protocol::protocol::StrBytes;

use super::topic_name;
use crate::dispatch::Ctx;

pub(crate) async fn handle(cx: &mut Ctx<'_>, r: OffsetFetchRequest) -> OffsetFetchResponse {
    let broker = &cx.kafka.broker;
    let group = r.group_id.0.to_string();
    let wanted: Vec<(String, Vec<i32>)> = match r.topics {
        Some(ts) => ts
            .into_iter()
            .map(|t| (t.name.0.to_string(), t.partition_indexes))
            .collect(),
        None => {
            let mut all: Vec<(String, Vec<i32>)> = Vec::new();
            for (topic, partition, _) in broker.group_offsets(&group) {
                match all.last_mut() {
                    Some((t, ps)) if *t == topic => ps.push(partition as i32),
                    _ => all.push((topic, vec![partition as i32])),
                }
            }
            all
        }
    };
    let topics = wanted
        .into_iter()
        .map(|(name, parts)| {
            let partitions = parts
                .into_iter()
                .map(|p| {
                    let offset = u32::try_from(p)
                        .ok()
                        .and_then(|p| broker.committed(&group, &name, p))
                        .map_or(-1, |o| o as i64);
                    OffsetFetchResponsePartition::default()
                        .with_partition_index(p)
                        .with_committed_offset(offset)
                        .with_committed_leader_epoch(-1)
                        .with_metadata(Some(StrBytes::from_static_str("")))
                })
                .collect();
            OffsetFetchResponseTopic::default()
                .with_name(topic_name(&name))
                .with_partitions(partitions)
        })
        .collect();
    OffsetFetchResponse::default().with_topics(topics)
}
