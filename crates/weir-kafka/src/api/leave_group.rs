//! LeaveGroup: a member leaves, and the group rebalances without it. From v3 one request
//! names several members, each answered on its own, by member id or, for a static member,
//! by its instance id alone.

use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{LeaveGroupRequest, LeaveGroupResponse};

use crate::code;
use crate::dispatch::Ctx;
use weir_broker::access::{Operation, ResourceType};

pub(crate) async fn handle(cx: &mut Ctx<'_>, r: LeaveGroupRequest) -> LeaveGroupResponse {
    if !cx.allows(Operation::Read, ResourceType::Group, &r.group_id.0) {
        return LeaveGroupResponse::default().with_error_code(code::GROUP_AUTHORIZATION_FAILED);
    }
    let groups = &cx.kafka.groups;
    if cx.version >= 3 {
        let members = r
            .members
            .into_iter()
            .map(|m| {
                let error = match (&*m.member_id, &m.group_instance_id) {
                    ("", Some(instance)) => groups.leave_instance(&r.group_id.0, instance),
                    (id, _) => groups.leave(&r.group_id.0, id),
                };
                MemberResponse::default()
                    .with_member_id(m.member_id)
                    .with_group_instance_id(m.group_instance_id)
                    .with_error_code(error)
            })
            .collect();
        return LeaveGroupResponse::default().with_members(members);
    }
    let error = groups.leave(&r.group_id.0, &r.member_id);
    LeaveGroupResponse::default().with_error_code(error)
}
