//! One module per Kafka API: each a function from the decoded request (and the request's
//! [`Ctx`](crate::dispatch::Ctx)) to its response. [`crate::dispatch`] decides which runs and
//! encodes what it returns.

use kafka_protocol::messages::TopicName;
use kafka_protocol::protocol::StrBytes;
use uuid::Uuid;
use weir_broker::{Broker, TopicId};

pub(crate) mod acls;
pub(crate) mod alter_configs;
pub(crate) mod api_versions;
pub(crate) mod consumer_group_heartbeat;
pub(crate) mod create_partitions;
pub(crate) mod create_topics;
pub(crate) mod delete_groups;
pub(crate) mod delete_records;
pub(crate) mod delete_topics;
pub(crate) mod describe_cluster;
pub(crate) mod describe_configs;
pub(crate) mod describe_groups;
pub(crate) mod describe_producers;
pub(crate) mod describe_topic_partitions;
pub(crate) mod fetch;
pub(crate) mod find_coordinator;
pub(crate) mod groups_admin;
pub(crate) mod heartbeat;
pub(crate) mod init_producer_id;
pub(crate) mod join_group;
pub(crate) mod leave_group;
pub(crate) mod list_groups;
pub(crate) mod list_offsets;
pub(crate) mod metadata;
pub(crate) mod offset_commit;
pub(crate) mod offset_delete;
pub(crate) mod offset_fetch;
pub(crate) mod offset_for_leader_epoch;
pub(crate) mod produce;
pub(crate) mod sync_group;
pub(crate) mod topic_configs;

fn topic_name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

/// A topic id as the protocol carries it.
fn uuid(id: TopicId) -> Uuid {
    Uuid::from_bytes(id.0)
}

/// The name of the topic a request names, by name or (`by_id`, newer versions) by id; `None`
/// for an id no topic has (the answer is UNKNOWN_TOPIC_ID).
fn resolve(broker: &Broker, name: &TopicName, id: &Uuid, by_id: bool) -> Option<String> {
    if by_id {
        name_of_id(broker, id)
    } else {
        Some(name.0.to_string())
    }
}

/// The name of the topic whose id is `id`, if there is one.
fn name_of_id(broker: &Broker, id: &Uuid) -> Option<String> {
    broker.topic_name_of(&TopicId(*id.as_bytes()))
}

/// The id of topic `name`, or the nil id if there is none.
fn id_of(broker: &Broker, name: &str) -> Uuid {
    broker.topic_id(name).map_or(Uuid::nil(), uuid)
}
