//! Metadata: the topics asked for, by name or (v12+) by id (every topic for null, or for an
//! empty list in v0), created on the way when the client allows it and the broker auto-creates
//! topics; each with its id (v10+). One broker, node 0, leads every partition. Topics the
//! client may not describe are left out of "every topic" and refused when named.

use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse};
use kafka_protocol::protocol::StrBytes;
use uuid::Uuid;
use weir_broker::TopicId;
use weir_broker::access::{Operation, ResourceType};

use super::{topic_name, uuid};
use crate::code;
use crate::dispatch::Ctx;

pub(crate) async fn handle(cx: &mut Ctx<'_>, r: MetadataRequest) -> MetadataResponse {
    let (broker, advertised) = (&cx.kafka.broker, &cx.kafka.advertised);
    // A topic asked for by id only (v12+) that no topic has is answered UNKNOWN_TOPIC_ID.
    let mut unknown_ids = Vec::new();
    // Names asked for, with the id they were asked by (v12+).
    let wanted: Option<Vec<(String, Option<Uuid>)>> = r.topics.map(|ts| {
        ts.into_iter()
            .filter_map(|t| match t.name {
                Some(n) => Some((n.0.to_string(), None)),
                None => {
                    let name = broker.topic_name_of(&TopicId(*t.topic_id.as_bytes()));
                    if name.is_none() {
                        unknown_ids.push(t.topic_id);
                    }
                    name.map(|n| (n, Some(t.topic_id)))
                }
            })
            .collect()
    });
    // In v0 an empty list (not null) asks for every topic.
    let wanted = wanted.filter(|w| !(cx.version == 0 && w.is_empty()));
    let all = broker.topics();
    let mut topics = Vec::new();
    match wanted {
        // Every topic the client may see: the others are left out, as if they did not exist.
        None => {
            for t in &all {
                if !cx.allows(Operation::Describe, ResourceType::Topic, &t.name) {
                    continue;
                }
                topics.push(topic(
                    &t.name,
                    uuid(t.id),
                    Some(t.partitions.len()),
                    code::NONE,
                ));
            }
        }
        Some(names) => {
            for (n, by_id) in names {
                // Refused whether or not it exists, so that refusals do not tell (Kafka's
                // rule); asked for by id, the name is not given either.
                if !cx.allows(Operation::Describe, ResourceType::Topic, &n) {
                    let mut refused = MetadataResponseTopic::default()
                        .with_error_code(code::TOPIC_AUTHORIZATION_FAILED);
                    match by_id {
                        Some(id) => refused = refused.with_topic_id(id),
                        None => refused = refused.with_name(Some(topic_name(&n))),
                    }
                    topics.push(refused);
                    continue;
                }
                let found = all.iter().find(|t| t.name == n);
                // Creating one on the way takes the right to create it (on the cluster, or on
                // the topic itself).
                let auto = found.is_none()
                    && r.allow_auto_topic_creation
                    && broker.config().auto_create_topics
                    && (cx.access.allows_cluster(Operation::Create)
                        || cx.allows(Operation::Create, ResourceType::Topic, &n));
                if auto && let Ok(info) = broker.create_topic(&n, None).await {
                    let parts = info.partitions.len();
                    topics.push(topic(&n, uuid(info.id), Some(parts), code::NONE));
                    continue;
                }
                topics.push(match found {
                    Some(t) => topic(&t.name, uuid(t.id), Some(t.partitions.len()), code::NONE),
                    None => topic(&n, Uuid::nil(), None, code::UNKNOWN_TOPIC_OR_PARTITION),
                });
            }
        }
    }
    for id in unknown_ids {
        topics.push(
            MetadataResponseTopic::default()
                .with_error_code(code::UNKNOWN_TOPIC_ID)
                .with_topic_id(id),
        );
    }
    MetadataResponse::default()
        .with_brokers(vec![
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(0))
                .with_host(StrBytes::from_string(advertised.host.clone()))
                .with_port(advertised.port),
        ])
        .with_cluster_id(Some(StrBytes::from_static_str("weir")))
        .with_controller_id(BrokerId(0))
        .with_topics(topics)
}

fn topic(name: &str, id: Uuid, partitions: Option<usize>, error: i16) -> MetadataResponseTopic {
    MetadataResponseTopic::default()
        .with_error_code(error)
        .with_name(Some(topic_name(name)))
        .with_topic_id(id)
        .with_partitions(
            (0..partitions.unwrap_or(0))
                .map(|p| {
                    MetadataResponsePartition::default()
                        .with_partition_index(p as i32)
                        .with_leader_id(BrokerId(0))
                        .with_leader_epoch(0)
                        .with_replica_nodes(vec![BrokerId(0)])
                        .with_isr_nodes(vec![BrokerId(0)])
                })
                .collect(),
        )
}
