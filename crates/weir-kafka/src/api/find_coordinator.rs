//! FindCoordinator: this broker coordinates every group; transactional ids are refused
//! (transactions are not supported).

use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;

use crate::code;
use crate::dispatch::Ctx;

pub(crate) async fn handle(cx: &mut Ctx<'_>, r: FindCoordinatorRequest) -> FindCoordinatorResponse {
    let advertised = &cx.kafka.advertised;
    // Key type 0 is a group, 1 a transactional id.
    let (error, message) = match r.key_type {
        0 => (code::NONE, None),
        1 => (
            code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
            Some("transactions are not supported"),
        ),
        _ => (code::INVALID_REQUEST, Some("unknown coordinator key type")),
    };
    let ok = error == code::NONE;
    FindCoordinatorResponse::default()
        .with_error_code(error)
        .with_error_message(message.map(StrBytes::from_static_str))
        .with_node_id(BrokerId(if ok { 0 } else { -1 }))
        .with_host(StrBytes::from_string(if ok {
            advertised.host.clone()
        } else {
            String::new()
        }))
        .with_port(if ok { advertised.port } else { -1 })
}
