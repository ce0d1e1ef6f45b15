//! OffsetFetch: a group's committed offsets, for the partitions asked for or (null, v2+) for
//! every partition it committed; -1 where it has none. From v8 one request asks for several
//! groups at once.

use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{OffsetFetchRequest, OffsetFetchResponse};
use kafka_protocol::protocol::StrBytes;

use super::topic_name;
use crate::code;
use crate::dispatch::Ctx;
use weir_broker::access::{Operation, ResourceType};

pub(crate) async fn handle(cx: &mut Ctx<'_>, r: OffsetFetchRequest) -> OffsetFetchResponse {
    if cx.version >= 8 {
        let groups = r
            .groups
            .into_iter()
            .map(|g| {
                if !cx.allows(Operation::Describe, ResourceType::Group, &g.group_id.0) {
                    return OffsetFetchResponseGroup::default()
                        .with_group_id(g.group_id)
                        .with_error_code(code::GROUP_AUTHORIZATION_FAILED);
                }
                let wanted = g.topics.map(|ts| {
                    ts.into_iter()
                        .map(|t| (t.name.0.to_string(), t.partition_indexes))
                        .collect()
                });
                let topics = committed(cx, &g.group_id.0, wanted)
                    .into_iter()
                    .map(|(name, parts)| {
                        let partitions = parts
                            .into_iter()
                            .map(|(p, offset, metadata, error)| {
                                OffsetFetchResponsePartitions::default()
                                    .with_partition_index(p)
                                    .with_error_code(error)
                                    .with_committed_offset(offset)
                                    .with_committed_leader_epoch(-1)
                                    .with_metadata(Some(StrBytes::from_string(metadata)))
                            })
                            .collect();
                        OffsetFetchResponseTopics::default()
                            .with_name(topic_name(&name))
                            .with_partitions(partitions)
                    })
                    .collect();
                OffsetFetchResponseGroup::default()
                    .with_group_id(g.group_id)
                    .with_topics(topics)
            })
            .collect();
        return OffsetFetchResponse::default().with_groups(groups);
    }
    if !cx.allows(Operation::Describe, ResourceType::Group, &r.group_id.0) {
        // v0 and v1 have no top-level error: each partition asked for carries it.
        let topics = r
            .topics
            .unwrap_or_default()
            .into_iter()
            .map(|t| {
                let partitions = t
                    .partition_indexes
                    .into_iter()
                    .map(|p| {
                        OffsetFetchResponsePartition::default()
                            .with_partition_index(p)
                            .with_committed_offset(-1)
                            .with_error_code(code::GROUP_AUTHORIZATION_FAILED)
                    })
                    .collect();
                OffsetFetchResponseTopic::default()
                    .with_name(t.name)
                    .with_partitions(partitions)
            })
            .collect();
        return OffsetFetchResponse::default()
            .with_error_code(code::GROUP_AUTHORIZATION_FAILED)
            .with_topics(topics);
    }
    let wanted = r.topics.map(|ts| {
        ts.into_iter()
            .map(|t| (t.name.0.to_string(), t.partition_indexes))
            .collect()
    });
    let topics = committed(cx, &r.group_id.0, wanted)
        .into_iter()
        .map(|(name, parts)| {
            let partitions = parts
                .into_iter()
                .map(|(p, offset, metadata, error)| {
                    OffsetFetchResponsePartition::default()
                        .with_partition_index(p)
                        .with_error_code(error)
                        .with_committed_offset(offset)
                        .with_committed_leader_epoch(-1)
                        .with_metadata(Some(StrBytes::from_string(metadata)))
                })
                .collect();
            OffsetFetchResponseTopic::default()
                .with_name(topic_name(&name))
                .with_partitions(partitions)
        })
        .collect();
    OffsetFetchResponse::default().with_topics(topics)
}

/// Per topic, per partition: index, committed offset, metadata and error.
type Committed = Vec<(String, Vec<(i32, i64, String, i16)>)>;

/// Per topic, per partition: the group's committed offset (-1 where it has none) and its
/// metadata. `wanted` `None` asks for every partition the group committed.
/// Topics the client may not describe are left out of "every partition", and refused when
/// named.
fn committed(cx: &Ctx<'_>, group: &str, wanted: Option<Vec<(String, Vec<i32>)>>) -> Committed {
    let broker = &cx.kafka.broker;
    let allowed = |name: &str| cx.allows(Operation::Describe, ResourceType::Topic, name);
    let wanted = wanted.unwrap_or_else(|| {
        let mut all: Vec<(String, Vec<i32>)> = Vec::new();
        for (topic, partition) in broker.group_partitions(group) {
            if !allowed(&topic) {
                continue;
            }
            match all.last_mut() {
                Some((t, ps)) if *t == topic => ps.push(partition as i32),
                _ => all.push((topic, vec![partition as i32])),
            }
        }
        all
    });
    wanted
        .into_iter()
        .map(|(name, parts)| {
            let refused = !allowed(&name);
            let offsets = parts
                .into_iter()
                .map(|p| match u32::try_from(p) {
                    _ if refused => (p, -1, String::new(), code::TOPIC_AUTHORIZATION_FAILED),
                    Ok(part) => {
                        let offset = broker.committed_as_given(group, &name, part).unwrap_or(-1);
                        let metadata = broker.committed_metadata(group, &name, part);
                        (p, offset, metadata, code::NONE)
                    }
                    Err(_) => (p, -1, String::new(), code::NONE),
                })
                .collect();
            (name, offsets)
        })
        .collect()
}
