//! AlterConfigs and IncrementalAlterConfigs of topics (see [`super::topic_configs`]): the
//! change is checked as a whole, then made durable and applied at once, or (validate only)
//! just checked. AlterConfigs replaces a topic's whole set (keys not given go back to the
//! broker's defaults); IncrementalAlterConfigs sets or deletes (back to the default) the keys
//! it names. The broker's own settings come from weir.toml and are not altered here.

use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse as IncrementalResult;
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, IncrementalAlterConfigsRequest,
    IncrementalAlterConfigsResponse,
};
use kafka_protocol::protocol::StrBytes;
use weir_broker::TopicConfig;

use super::describe_configs::{BROKER_RESOURCE, TOPIC_RESOURCE};
use super::topic_configs::{self, Refusal};
use crate::dispatch::Ctx;
use crate::{code, error_code};
use weir_broker::access::{Operation, ResourceType};

/// IncrementalAlterConfigs operations.
const SET: i8 = 0;
const DELETE: i8 = 1;

pub(crate) async fn handle(cx: &mut Ctx<'_>, r: AlterConfigsRequest) -> AlterConfigsResponse {
    let mut responses = Vec::new();
    for res in r.resources {
        let outcome = alter(
            cx,
            res.resource_type,
            &res.resource_name,
            r.validate_only,
            |c, d| {
                // The whole set: what is not named goes back to the default.
                for key in topic_configs::KEYS {
                    topic_configs::reset(c, key, d)?;
                }
                for entry in &res.configs {
                    topic_configs::set(c, &entry.name, entry.value.as_deref(), d)?;
                }
                Ok(())
            },
        )
        .await;
        let (error, message) = split(outcome);
        responses.push(
            AlterConfigsResourceResponse::default()
                .with_resource_type(res.resource_type)
                .with_resource_name(res.resource_name)
                .with_error_code(error)
                .with_error_message(message),
        );
    }
    AlterConfigsResponse::default().with_responses(responses)
}

pub(crate) async fn handle_incremental(
    cx: &mut Ctx<'_>,
    r: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let mut responses = Vec::new();
    for res in r.resources {
        let outcome = alter(cx, res.resource_type, &res.resource_name, r.validate_only, |c, d| {
            for entry in &res.configs {
                match entry.config_operation {
                    SET => topic_configs::set(c, &entry.name, entry.value.as_deref(), d)?,
                    DELETE => topic_configs::reset(c, &entry.name, d)?,
                    op => {
                        return Err((
                            code::INVALID_CONFIG,
                            format!(
                                "{}: operation {op} (APPEND 2, SUBTRACT 3) applies to list configs, and weir's topic configs are single values",
                                &*entry.name
                            ),
                        ));
                    }
                }
            }
            Ok(())
        })
        .await;
        let (error, message) = split(outcome);
        responses.push(
            IncrementalResult::default()
                .with_resource_type(res.resource_type)
                .with_resource_name(res.resource_name)
                .with_error_code(error)
                .with_error_message(message),
        );
    }
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}

/// Applies `change` to the configuration of topic `name` (checked whole, then stored and
/// applied unless `validate_only`).
async fn alter(
    cx: &Ctx<'_>,
    resource_type: i8,
    name: &str,
    validate_only: bool,
    change: impl FnOnce(&mut TopicConfig, &TopicConfig) -> Result<(), Refusal>,
) -> Result<(), Refusal> {
    let broker = &cx.kafka.broker;
    match resource_type {
        TOPIC_RESOURCE => {
            // Refused whether or not the topic exists.
            cx.check(Operation::Alter, ResourceType::Topic, name)
                .map_err(|e| (error_code(&e), e.to_string()))?;
        }
        BROKER_RESOURCE => {
            return Err((
                code::INVALID_REQUEST,
                "broker settings come from weir.toml and change with a restart".into(),
            ));
        }
        other => {
            return Err((
                code::INVALID_REQUEST,
                format!("resource type {other} has no configs here (topics: 2)"),
            ));
        }
    }
    let refuse = |e: weir_broker::BrokerError| {
        (error_code(&e), topic_configs::kafka_message(&e.to_string()))
    };
    let mut config = broker.topic_config(name).map_err(refuse)?;
    change(&mut config, &broker.config().default_topic)?;
    if validate_only {
        return config.validate().map_err(refuse);
    }
    broker
        .alter_topic(name, config)
        .await
        .map(drop)
        .map_err(refuse)
}

fn split(outcome: Result<(), Refusal>) -> (i16, Option<StrBytes>) {
    match outcome {
        Ok(()) => (code::NONE, None),
        Err((error, message)) => (error, Some(StrBytes::from_string(message))),
    }
}
