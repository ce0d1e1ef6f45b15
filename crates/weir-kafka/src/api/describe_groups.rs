//! DescribeGroups: each group's state, protocol and members with their metadata and
//! assignments (see [`super::groups_admin`]). A group no one knows is `Dead`, or from v6
//! GROUP_ID_NOT_FOUND, as Kafka answers. A member's host is the address its JoinGroup came from
//! (`/ADDRESS`, as Kafka shows it); native members' hosts are not recorded and show empty.

use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::{DescribeGroupsRequest, DescribeGroupsResponse};
use kafka_protocol::protocol::StrBytes;

use super::groups_admin;
use crate::code;
use crate::dispatch::Ctx;
use weir_broker::access::{Operation, ResourceType};

pub(crate) async fn handle(cx: &mut Ctx<'_>, r: DescribeGroupsRequest) -> DescribeGroupsResponse {
    let groups = r
        .groups
        .into_iter()
        .map(|group| {
            let described = DescribedGroup::default().with_group_id(group.clone());
            if let Err(e) = cx.check(Operation::Describe, ResourceType::Group, &group.0) {
                return described
                    .with_error_code(code::GROUP_AUTHORIZATION_FAILED)
                    .with_error_message(Some(StrBytes::from_string(e.to_string())));
            }
            let Some(v) = groups_admin::view(cx.kafka, &group.0) else {
                let described = described.with_group_state(StrBytes::from_static_str("Dead"));
                return if cx.version >= 6 {
                    described
                        .with_error_code(code::GROUP_ID_NOT_FOUND)
                        .with_error_message(Some(StrBytes::from_string(format!(
                            "group {} does not exist",
                            &*group.0
                        ))))
                } else {
                    described
                };
            };
            let members = v
                .members
                .into_iter()
                .map(|m| {
                    DescribedGroupMember::default()
                        .with_member_id(StrBytes::from_string(m.member_id))
                        .with_group_instance_id(m.group_instance_id.map(StrBytes::from_string))
                        .with_client_id(StrBytes::from_string(m.client_id))
                        .with_client_host(StrBytes::from_string(m.client_host))
                        .with_member_metadata(m.metadata)
                        .with_member_assignment(m.assignment)
                })
                .collect();
            described
                .with_group_state(StrBytes::from_static_str(v.state))
                .with_protocol_type(StrBytes::from_string(v.protocol_type))
                .with_protocol_data(StrBytes::from_string(v.protocol))
                .with_members(members)
        })
        .collect();
    DescribeGroupsResponse::default().with_groups(groups)
}
