//! LeaveGroup: a member leaves, and the group rebalances without it. From v3 one request
//! names several members, each answered on its own.

use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{LeaveGroupRequest, LeaveGroupResponse};

use crate::dispatch::Ctx;

pub(crate) async fn handle(cx: &mut Ctx<'_>, r: LeaveGroupRequest) -> LeaveGroupResponse {
    let groups = &cx.kafka.groups;
    if cx.version >= 3 {
        let members = r
            .members
            .into_iter()
            .map(|m| {
                let error = groups.leave(&r.group_id.0, &m.member_id);
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
