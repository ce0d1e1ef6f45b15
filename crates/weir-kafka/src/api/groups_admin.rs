//! What admin tools see of groups, whichever door's: a group of the Kafka door as it is; a
//! native group (the broker assigns) as a `consumer` group in the Stable state, its members'
//! topics and assignments written in Kafka's consumer protocol so that Kafka tools can show
//! them; a group with committed offsets only as an Empty group of no protocol type, as Kafka
//! shows one.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition;
use kafka_protocol::messages::{ConsumerProtocolAssignment, ConsumerProtocolSubscription};
use kafka_protocol::protocol::{Encodable, StrBytes};
use weir_broker::group::GroupProtocol;

use super::topic_name;
use crate::Kafka;
use crate::groups::{GroupView, MemberView};

/// A group seen by the admin APIs; `None`: no door knows it and it has no committed offsets.
pub(crate) fn view(kafka: &Kafka, group: &str) -> Option<GroupView> {
    if let Some(v) = kafka.groups.view(group) {
        return Some(v);
    }
    // A KIP-848 group: the broker assigns, as for a native group.
    if let Some((_, members)) = kafka.groups.consumer.view(group) {
        let members = members
            .into_iter()
            .map(|m| MemberView {
                metadata: subscription(&m.subscribed),
                assignment: assignment(&crate::consumer_groups::by_topic(m.assigned)),
                member_id: m.member_id,
                group_instance_id: m.instance_id,
                client_id: m.client_id,
                client_host: m.client_host,
            })
            .collect();
        return Some(GroupView {
            state: "Stable",
            protocol_type: "consumer".into(),
            protocol: "range".into(),
            members,
        });
    }
    if let Some(d) = kafka.broker.describe_group(group)
        && d.protocol == GroupProtocol::Native
    {
        let members = d
            .members
            .into_iter()
            .map(|m| MemberView {
                metadata: subscription(&m.topics),
                assignment: assignment(&m.assignment),
                member_id: m.member_id,
                group_instance_id: None,
                client_id: m.client_id,
                client_host: String::new(),
            })
            .collect::<Vec<_>>();
        return Some(GroupView {
            state: if members.is_empty() {
                "Empty"
            } else {
                "Stable"
            },
            protocol_type: "consumer".into(),
            protocol: d.strategy.map(|s| s.name().to_string()).unwrap_or_default(),
            members,
        });
    }
    (!kafka.broker.group_partitions(group).is_empty()).then(|| GroupView {
        state: "Empty",
        // A Kafka group whose members all left keeps its type, as in Kafka.
        protocol_type: kafka
            .groups
            .emptied_protocol_type(group)
            .unwrap_or_default(),
        protocol: String::new(),
        members: Vec::new(),
    })
}

/// Every group any door holds or with committed offsets, as (name, protocol type, state).
pub(crate) fn list(kafka: &Kafka) -> Vec<(String, String, &'static str)> {
    let mut all = kafka.groups.list();
    for name in kafka
        .groups
        .consumer
        .names()
        .into_iter()
        .chain(kafka.broker.groups())
    {
        if all.iter().any(|(n, _, _)| *n == name) {
            continue;
        }
        if let Some(v) = view(kafka, &name) {
            all.push((name, v.protocol_type, v.state));
        }
    }
    all.sort();
    all
}

/// A consumer-protocol subscription (version 0) to `topics`.
fn subscription(topics: &[String]) -> Bytes {
    let body = ConsumerProtocolSubscription::default().with_topics(
        topics
            .iter()
            .map(|t| StrBytes::from_string(t.clone()))
            .collect(),
    );
    versioned(0, &body)
}

/// A consumer-protocol assignment (version 0) of `partitions`.
fn assignment(partitions: &[(String, Vec<u32>)]) -> Bytes {
    let body = ConsumerProtocolAssignment::default().with_assigned_partitions(
        partitions
            .iter()
            .map(|(t, ps)| {
                TopicPartition::default()
                    .with_topic(topic_name(t))
                    .with_partitions(ps.iter().map(|p| *p as i32).collect())
            })
            .collect(),
    );
    versioned(0, &body)
}

/// A consumer-protocol message: its version, then its body in that version.
fn versioned(version: i16, body: &impl Encodable) -> Bytes {
    let mut b = BytesMut::new();
    b.put_i16(version);
    // Encoding a message built here into a growable buffer does not fail.
    if body.encode(&mut b, version).is_err() {
        return Bytes::new();
    }
    b.freeze()
}
