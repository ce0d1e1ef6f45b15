//! SyncGroup: the leader hands out the assignments; every member gets its own.

use kafka_protocol::messages::{SyncGroupRequest, SyncGroupResponse};
use kafka_protocol::protocol::StrBytes;

use crate::code;
use crate::dispatch::Ctx;
use weir_broker::access::{Operation, ResourceType};

pub(crate) async fn handle(cx: &mut Ctx<'_>, r: SyncGroupRequest) -> SyncGroupResponse {
    if !cx.allows(Operation::Read, ResourceType::Group, &r.group_id.0) {
        return SyncGroupResponse::default().with_error_code(code::GROUP_AUTHORIZATION_FAILED);
    }
    let assignments = r
        .assignments
        .into_iter()
        .map(|a| (a.member_id.to_string(), a.assignment))
        .collect();
    let out = cx
        .kafka
        .groups
        .sync(&r.group_id.0, r.generation_id, &r.member_id, assignments)
        .await;
    SyncGroupResponse::default()
        .with_error_code(out.error)
        .with_protocol_type(out.protocol_type.map(StrBytes::from_string))
        .with_protocol_name(out.protocol_name.map(StrBytes::from_string))
        .with_assignment(out.assignment)
}
