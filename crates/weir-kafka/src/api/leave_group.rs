//! LeaveGroup: a member leaves, and the group rebalances without it.

use kafka_protocol::messages::{LeaveGroupRequest, LeaveGroupResponse};

use crate::dispatch::Ctx;

pub(crate) async fn handle(cx: &mut Ctx<'_>, r: LeaveGroupRequest) -> LeaveGroupResponse {
    let error = cx.kafka.groups.leave(&r.group_id.0, &r.member_id);
    LeaveGroupResponse::default().with_error_code(error)
}
