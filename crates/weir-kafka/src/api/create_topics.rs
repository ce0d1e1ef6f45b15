//! CreateTopics: partition count, replication factor 1 (or the default), and the topic configs
//! weir understands; anything else is refused by name, never silently ignored.

use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse};
use kafka_protocol::protocol::StrBytes;
use uuid::Uuid;

use super::{topic_configs, topic_name, uuid};
use crate::dispatch::Ctx;
use crate::{code, error_code};

pub(crate) async fn handle(cx: &mut Ctx<'_>, r: CreateTopicsRequest) -> CreateTopicsResponse {
    let broker = &cx.kafka.broker;
    let mut results = Vec::new();
    for t in r.topics {
        let name = t.name.0.to_string();
        // Null, not empty, when created (the crate's default is empty), as Kafka answers.
        let result = CreatableTopicResult::default()
            .with_error_message(None)
            .with_name(topic_name(&name))
            .with_num_partitions(-1)
            .with_replication_factor(-1);
        // Kafka's rule: the right to create on the cluster, or on the topic itself.
        let allowed = cx.access.check_create_topic(&name);
        let outcome = match topic_config(broker.config().default_topic.clone(), &t) {
            _ if let Err(e) = &allowed => Err((error_code(e), e.to_string())),
            Err((code, message)) => Err((code, message)),
            Ok(config) => {
                let checked =
                    weir_broker::topic::validate_name(&name).and_then(|()| config.validate());
                match checked {
                    Err(e) => Err((error_code(&e), topic_configs::kafka_message(&e.to_string()))),
                    Ok(()) if r.validate_only => Ok((config, Uuid::nil())),
                    Ok(()) => broker
                        .create_topic(&name, Some(config))
                        .await
                        .map(|info| (info.config, uuid(info.id)))
                        .map_err(|e| (error_code(&e), e.to_string())),
                }
            }
        };
        // From v5 the answer says what was created (or would be, validating only).
        results.push(match outcome {
            Ok((config, id)) => {
                let defaults = &broker.config().default_topic;
                let configs = topic_configs::entries(&config)
                    .into_iter()
                    .map(|e| {
                        CreatableTopicConfigs::default()
                            .with_name(StrBytes::from_static_str(e.name))
                            .with_config_source(topic_configs::source(&e, defaults))
                            .with_read_only(e.read_only)
                            .with_value(Some(StrBytes::from_string(e.value)))
                    })
                    .collect();
                result
                    .with_topic_id(id)
                    .with_num_partitions(config.partitions as i32)
                    .with_replication_factor(1)
                    .with_configs(Some(configs))
            }
            Err((code, message)) => result
                .with_error_code(code)
                .with_error_message(Some(StrBytes::from_string(message))),
        });
    }
    CreateTopicsResponse::default().with_topics(results)
}

/// A topic configuration from a CreateTopics entry: partition count, replication factor 1 (or
/// the default), and the topic configs weir understands; anything else is refused by name.
pub(crate) fn topic_config(
    mut config: weir_broker::TopicConfig,
    t: &kafka_protocol::messages::create_topics_request::CreatableTopic,
) -> Result<weir_broker::TopicConfig, (i16, String)> {
    match t.num_partitions {
        -1 => {}
        n if n >= 1 => config.partitions = n as u32,
        n => return Err((code::INVALID_PARTITIONS, format!("{n} partitions"))),
    }
    if !matches!(t.replication_factor, -1 | 1) {
        return Err((
            code::INVALID_REPLICATION_FACTOR,
            format!(
                "replication factor {} on a single node (use 1)",
                t.replication_factor
            ),
        ));
    }
    if !t.assignments.is_empty() {
        return Err((
            code::INVALID_CONFIG,
            "manual replica assignment is not supported".into(),
        ));
    }
    let defaults = config.clone();
    for c in &t.configs {
        topic_configs::set(&mut config, &c.name, c.value.as_deref(), &defaults)?;
    }
    Ok(config)
}
