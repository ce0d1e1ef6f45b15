//! CreatePartitions: a topic grows to a new partition count (see
//! [`weir_broker::Broker::add_partitions`] for which keys move). Replica assignments cannot be
//! given on one node; a count not above the current one is INVALID_PARTITIONS.

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::{CreatePartitionsRequest, CreatePartitionsResponse};
use kafka_protocol::protocol::StrBytes;

use crate::dispatch::Ctx;
use crate::{code, error_code};
use weir_broker::access::{Operation, ResourceType};

pub(crate) async fn handle(
    cx: &mut Ctx<'_>,
    r: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let broker = &cx.kafka.broker;
    let mut results = Vec::new();
    for t in r.topics {
        let name = t.name.0.to_string();
        let allowed = cx.check(Operation::Alter, ResourceType::Topic, &name);
        let outcome = match broker.partition_count(&name) {
            _ if let Err(e) = &allowed => Err((error_code(e), e.to_string())),
            None => Err((
                code::UNKNOWN_TOPIC_OR_PARTITION,
                format!("topic {name} does not exist"),
            )),
            Some(_) if t.assignments.is_some() => Err((
                code::INVALID_REPLICA_ASSIGNMENT,
                "replica assignments cannot be given on a single node".to_string(),
            )),
            Some(have) if t.count <= have as i32 => Err((
                code::INVALID_PARTITIONS,
                format!(
                    "topic {name} has {have} partitions; it can only grow (asked for {})",
                    t.count
                ),
            )),
            Some(_) if r.validate_only => {
                let mut config = broker.topic_config(&name).unwrap_or_default();
                config.partitions = t.count as u32;
                config
                    .validate()
                    .map_err(|e| (code::INVALID_PARTITIONS, e.to_string()))
            }
            Some(_) => broker
                .add_partitions(&name, t.count as u32)
                .await
                .map(drop)
                .map_err(|e| match e.kind() {
                    weir_broker::ErrorKind::InvalidConfig => {
                        (code::INVALID_PARTITIONS, e.to_string())
                    }
                    _ => (error_code(&e), e.to_string()),
                }),
        };
        let result = CreatePartitionsTopicResult::default().with_name(t.name);
        results.push(match outcome {
            Ok(()) => result,
            Err((error, message)) => result
                .with_error_code(error)
                .with_error_message(Some(StrBytes::from_string(message))),
        });
    }
    CreatePartitionsResponse::default().with_results(results)
}
