//! ConsumerGroupHeartbeat (KIP-848): a member of a consumer group joins, heartbeats, reports
//! what it owns, leaves, and is told its assignment; see [`crate::consumer_groups`].

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use kafka_protocol::messages::consumer_group_heartbeat_response::{Assignment, TopicPartitions};
use kafka_protocol::messages::{ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse};
use kafka_protocol::protocol::StrBytes;

use super::{name_of_id, uuid};
use crate::code;
use crate::consumer_groups::{Beat, HEARTBEAT_INTERVAL, Tp, by_topic};
use crate::dispatch::Ctx;
use weir_broker::access::{Operation, ResourceType};

pub(crate) async fn handle(
    cx: &mut Ctx<'_>,
    r: ConsumerGroupHeartbeatRequest,
) -> ConsumerGroupHeartbeatResponse {
    let broker = &cx.kafka.broker;
    let interval = HEARTBEAT_INTERVAL.as_millis() as i32;
    if !cx.allows(Operation::Read, ResourceType::Group, &r.group_id.0) {
        return ConsumerGroupHeartbeatResponse::default()
            .with_error_code(code::GROUP_AUTHORIZATION_FAILED)
            .with_member_epoch(-1)
            .with_heartbeat_interval_ms(interval);
    }
    // librdkafka sends an empty pattern with its topic names.
    if r.subscribed_topic_regex
        .as_deref()
        .is_some_and(|re| !re.is_empty())
    {
        return ConsumerGroupHeartbeatResponse::default()
            .with_error_code(code::INVALID_REQUEST)
            .with_error_message(Some(StrBytes::from_static_str(
                "regular-expression subscriptions are not served; name the topics",
            )))
            .with_member_epoch(-1)
            .with_heartbeat_interval_ms(interval);
    }
    let owned = r.topic_partitions.map(|tps| {
        tps.into_iter()
            .filter_map(|t| Some((name_of_id(broker, &t.topic_id)?, t.partitions)))
            .flat_map(|(name, ps)| {
                ps.into_iter()
                    .filter_map(move |p| Some((name.clone(), u32::try_from(p).ok()?)))
            })
            .collect::<BTreeSet<Tp>>()
    });
    let beat = Beat {
        group: r.group_id.0.to_string(),
        member_id: r.member_id.to_string(),
        member_epoch: r.member_epoch,
        instance_id: r.instance_id.map(|s| s.to_string()),
        client_id: cx.client_id.clone(),
        client_host: cx.peer.map(|p| format!("/{}", p.ip())).unwrap_or_default(),
        rebalance_timeout: Duration::from_millis(r.rebalance_timeout_ms.max(0) as u64),
        // Topics the client may not describe are left out of its subscription, so that an
        // assignment does not tell they exist.
        subscribed: r.subscribed_topic_names.map(|ts| {
            ts.into_iter()
                .map(|t| t.0.to_string())
                .filter(|t| cx.allows(Operation::Describe, ResourceType::Topic, t))
                .collect()
        }),
        owned,
    };
    let out = cx.kafka.groups.consumer_heartbeat(beat, Instant::now());
    let assignment = out.assignment.map(|tps| {
        let topic_partitions = by_topic(tps)
            .into_iter()
            .filter_map(|(t, ps)| {
                let id = broker.topic_id(&t).map(uuid)?;
                let ps = ps.into_iter().map(|p| p as i32).collect();
                Some(
                    TopicPartitions::default()
                        .with_topic_id(id)
                        .with_partitions(ps),
                )
            })
            .collect();
        Assignment::default().with_topic_partitions(topic_partitions)
    });
    ConsumerGroupHeartbeatResponse::default()
        .with_error_code(out.error)
        .with_error_message(out.message.map(StrBytes::from_string))
        .with_member_id((!out.member_id.is_empty()).then(|| StrBytes::from_string(out.member_id)))
        .with_member_epoch(out.member_epoch)
        .with_heartbeat_interval_ms(interval)
        .with_assignment(assignment)
}
