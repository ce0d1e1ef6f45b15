//! InitProducerId: a new idempotent producer id (epoch 0); transactional ids are refused.

use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};

use crate::code;
use crate::dispatch::Ctx;

pub(crate) async fn handle(cx: &mut Ctx<'_>, r: InitProducerIdRequest) -> InitProducerIdResponse {
    let refused = match r.transactional_id.as_ref().map(|t| t.0.is_empty()) {
        None => None,
        Some(true) => Some(code::INVALID_REQUEST),
        Some(false) => Some(code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED),
    };
    match refused {
        Some(error) => InitProducerIdResponse::default()
            .with_error_code(error)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1),
        None => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(cx.kafka.broker.producers().init()))
            .with_producer_epoch(0),
    }
}
