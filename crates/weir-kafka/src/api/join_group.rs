//! JoinGroup: a member joins (or rejoins) a group; answered once the group's rebalance
//! completes (see [`crate::groups`]).

use std::time::Duration;

use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::{JoinGroupRequest, JoinGroupResponse};
use kafka_protocol::protocol::StrBytes;

use crate::code;
use crate::dispatch::Ctx;
use crate::groups;
use weir_broker::access::{Operation, ResourceType};

pub(crate) async fn handle(cx: &mut Ctx<'_>, r: JoinGroupRequest) -> JoinGroupResponse {
    if !cx.allows(Operation::Read, ResourceType::Group, &r.group_id.0) {
        return JoinGroupResponse::default()
            .with_error_code(code::GROUP_AUTHORIZATION_FAILED)
            .with_generation_id(-1)
            .with_member_id(r.member_id);
    }
    let ms = |v: i32| Duration::from_millis(v.max(0) as u64);
    let req = groups::JoinRequest {
        group: r.group_id.0.to_string(),
        member_id: r.member_id.to_string(),
        group_instance_id: r.group_instance_id.map(|s| s.to_string()),
        client_id: cx.client_id.clone(),
        client_host: cx.peer.map(|p| format!("/{}", p.ip())).unwrap_or_default(),
        session_timeout: ms(r.session_timeout_ms),
        // v0 has no rebalance timeout: the session timeout serves for both.
        rebalance_timeout: ms(if cx.version >= 1 {
            r.rebalance_timeout_ms
        } else {
            r.session_timeout_ms
        }),
        protocol_type: r.protocol_type.to_string(),
        protocols: r
            .protocols
            .into_iter()
            .map(|p| (p.name.to_string(), p.metadata))
            .collect(),
        require_known_member_id: cx.version >= 4,
    };
    let out = cx.kafka.groups.join(req).await;
    let members = out
        .members
        .into_iter()
        .map(|(id, instance, metadata)| {
            JoinGroupResponseMember::default()
                .with_member_id(StrBytes::from_string(id))
                .with_group_instance_id(instance.map(StrBytes::from_string))
                .with_metadata(metadata)
        })
        .collect();
    JoinGroupResponse::default()
        .with_error_code(out.error)
        .with_generation_id(out.generation)
        .with_protocol_type(out.protocol_type.map(StrBytes::from_string))
        .with_protocol_name(Some(StrBytes::from_string(
            out.protocol_name.unwrap_or_default(),
        )))
        .with_leader(StrBytes::from_string(out.leader))
        .with_member_id(StrBytes::from_string(out.member_id))
        .with_members(members)
}
