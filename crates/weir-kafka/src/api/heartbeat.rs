//! Heartbeat: keeps a member's session; tells it when the group rebalances.

use kafka_protocol::messages::{HeartbeatRequest, HeartbeatResponse};

use crate::code;
use crate::dispatch::Ctx;
use weir_broker::access::{Operation, ResourceType};

pub(crate) async fn handle(cx: &mut Ctx<'_>, r: HeartbeatRequest) -> HeartbeatResponse {
    if !cx.allows(Operation::Read, ResourceType::Group, &r.group_id.0) {
        return HeartbeatResponse::default().with_error_code(code::GROUP_AUTHORIZATION_FAILED);
    }
    let error = cx
        .kafka
        .groups
        .heartbeat(&r.group_id.0, r.generation_id, &r.member_id);
    HeartbeatResponse::default().with_error_code(error)
}
