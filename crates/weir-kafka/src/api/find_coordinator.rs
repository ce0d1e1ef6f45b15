//! FindCoordinator: this broker coordinates every group; transactional ids are refused
//! (transactions are not supported). From v4 one request asks about several keys at once.

use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;

use crate::dispatch::Ctx;
use crate::{Advertised, code};
use weir_broker::access::{Operation, ResourceType};

pub(crate) async fn handle(cx: &mut Ctx<'_>, r: FindCoordinatorRequest) -> FindCoordinatorResponse {
    let advertised = &cx.kafka.advertised;
    if cx.version >= 4 {
        let coordinators = r
            .coordinator_keys
            .into_iter()
            .map(|key| {
                let found = match refused(cx, r.key_type, &key) {
                    Some(refusal) => refusal,
                    None => find(advertised, r.key_type),
                };
                Coordinator::default()
                    .with_key(key)
                    .with_node_id(found.node)
                    .with_host(found.host)
                    .with_port(found.port)
                    .with_error_code(found.error)
                    .with_error_message(found.message)
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    let found = match refused(cx, r.key_type, &r.key) {
        Some(refusal) => refusal,
        None => find(advertised, r.key_type),
    };
    FindCoordinatorResponse::default()
        .with_error_code(found.error)
        .with_error_message(found.message)
        .with_node_id(found.node)
        .with_host(found.host)
        .with_port(found.port)
}

/// A group's coordinator is found only by a client that may describe the group.
fn refused(cx: &Ctx<'_>, key_type: i8, key: &str) -> Option<Found> {
    (key_type == 0 && !cx.allows(Operation::Describe, ResourceType::Group, key)).then(|| Found {
        error: code::GROUP_AUTHORIZATION_FAILED,
        message: Some(StrBytes::from_string(format!(
            "{} may not describe group {key:?}",
            cx.access.principal()
        ))),
        node: BrokerId(-1),
        host: StrBytes::default(),
        port: -1,
    })
}

struct Found {
    error: i16,
    message: Option<StrBytes>,
    node: BrokerId,
    host: StrBytes,
    port: i32,
}

/// The coordinator of a key of `key_type`: 0 a group, 1 a transactional id.
fn find(advertised: &Advertised, key_type: i8) -> Found {
    let refuse = |error, message| Found {
        error,
        message: Some(StrBytes::from_static_str(message)),
        node: BrokerId(-1),
        host: StrBytes::default(),
        port: -1,
    };
    match key_type {
        0 => Found {
            error: code::NONE,
            message: None,
            node: BrokerId(0),
            host: StrBytes::from_string(advertised.host.clone()),
            port: advertised.port,
        },
        1 => refuse(
            code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
            "transactions are not supported",
        ),
        _ => refuse(code::INVALID_REQUEST, "unknown coordinator key type"),
    }
}
