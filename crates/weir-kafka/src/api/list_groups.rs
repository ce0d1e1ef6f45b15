//! ListGroups: every group, with its protocol type, state (v4+) and type (v5+: `consumer` for
//! a KIP-848 group, `classic` for the others); filtered by state (v4+) and type (v5+) when
//! asked, ignoring case as Kafka does.

use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{GroupId, ListGroupsRequest, ListGroupsResponse};
use kafka_protocol::protocol::StrBytes;

use super::groups_admin;
use crate::dispatch::Ctx;
use weir_broker::access::{Operation, ResourceType};

pub(crate) async fn handle(cx: &mut Ctx<'_>, r: ListGroupsRequest) -> ListGroupsResponse {
    let wanted = |filter: &[StrBytes], value: &str| {
        filter.is_empty() || filter.iter().any(|f| f.eq_ignore_ascii_case(value))
    };
    // Describing the cluster lists every group; else those the client may describe.
    let every = cx.access.allows_cluster(Operation::Describe);
    let groups = groups_admin::list(cx.kafka)
        .into_iter()
        .filter(|(name, _, _)| every || cx.allows(Operation::Describe, ResourceType::Group, name))
        .filter(|(_, _, state)| wanted(&r.states_filter, state))
        .map(|(name, protocol_type, state)| {
            let kind = if cx.kafka.groups.consumer.holds(&name) {
                "consumer"
            } else {
                "classic"
            };
            (name, protocol_type, state, kind)
        })
        .filter(|(_, _, _, kind)| wanted(&r.types_filter, kind))
        .map(|(name, protocol_type, state, kind)| {
            ListedGroup::default()
                .with_group_id(GroupId(StrBytes::from_string(name)))
                .with_protocol_type(StrBytes::from_string(protocol_type))
                .with_group_state(StrBytes::from_static_str(state))
                .with_group_type(StrBytes::from_static_str(kind))
        })
        .collect();
    ListGroupsResponse::default().with_groups(groups)
}
