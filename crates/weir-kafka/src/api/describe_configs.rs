//! DescribeConfigs: a topic's configuration under Kafka's names, each with its source (the
//! topic's own or the broker default) and, when asked, the default as its synonym; the
//! broker's own settings, read-only. See [`super::topic_configs`].

use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse};
use kafka_protocol::protocol::StrBytes;

use super::topic_configs::{self, SOURCE_DEFAULT, SOURCE_STATIC_BROKER, SOURCE_TOPIC};
use crate::dispatch::Ctx;
use crate::{code, error_code};
use weir_broker::access::{Operation, ResourceType};

/// DescribeConfigs and AlterConfigs resource types.
pub(crate) const TOPIC_RESOURCE: i8 = 2;
pub(crate) const BROKER_RESOURCE: i8 = 4;

pub(crate) async fn handle(cx: &mut Ctx<'_>, r: DescribeConfigsRequest) -> DescribeConfigsResponse {
    let broker = &cx.kafka.broker;
    let defaults = &broker.config().default_topic;
    let mut results = Vec::new();
    for res in r.resources {
        let name = res.resource_name.to_string();
        // Null, not empty, when described (the crate's default is empty), as Kafka answers.
        let result = DescribeConfigsResult::default()
            .with_error_message(None)
            .with_resource_type(res.resource_type)
            .with_resource_name(res.resource_name.clone());
        let wanted = |k: &str| {
            res.configuration_keys
                .as_ref()
                .is_none_or(|w| w.iter().any(|x| &**x == k))
        };
        let configs = match res.resource_type {
            TOPIC_RESOURCE => match cx
                .check(Operation::Describe, ResourceType::Topic, &name)
                .and_then(|()| broker.topic_config(&name))
            {
                Ok(c) => Ok(topic_configs::entries(&c)
                    .into_iter()
                    .filter(|e| wanted(e.name))
                    .map(|e| {
                        let source = topic_configs::source(&e, defaults);
                        let mut synonyms = Vec::new();
                        if r.include_synonyms {
                            if source == SOURCE_TOPIC {
                                synonyms.push(synonym(e.name, e.value.clone(), SOURCE_TOPIC));
                            }
                            let default = topic_configs::entries(defaults)
                                .into_iter()
                                .find(|d| d.name == e.name)
                                .map(|d| d.value)
                                .unwrap_or_default();
                            synonyms.push(synonym(
                                topic_configs::broker_key(e.name),
                                default,
                                SOURCE_DEFAULT,
                            ));
                        }
                        DescribeConfigsResourceResult::default()
                            .with_name(StrBytes::from_static_str(e.name))
                            .with_value(Some(StrBytes::from_string(e.value)))
                            .with_read_only(e.read_only)
                            .with_config_source(source)
                            .with_config_type(e.config_type)
                            .with_synonyms(synonyms)
                    })
                    .collect()),
                Err(e) => Err((error_code(&e), e.to_string())),
            },
            BROKER_RESOURCE if !cx.access.allows_cluster(Operation::Describe) => Err((
                code::CLUSTER_AUTHORIZATION_FAILED,
                format!("{} may not describe the cluster", cx.access.principal()),
            )),
            BROKER_RESOURCE => Ok(topic_configs::broker_entries(broker.config())
                .into_iter()
                .filter(|(k, _, _)| wanted(k))
                .map(|(k, v, t)| {
                    let synonyms = if r.include_synonyms {
                        vec![synonym(k, v.clone(), SOURCE_STATIC_BROKER)]
                    } else {
                        Vec::new()
                    };
                    DescribeConfigsResourceResult::default()
                        .with_name(StrBytes::from_static_str(k))
                        .with_value(Some(StrBytes::from_string(v)))
                        .with_read_only(true)
                        .with_config_source(SOURCE_STATIC_BROKER)
                        .with_config_type(t)
                        .with_synonyms(synonyms)
                })
                .collect()),
            other => Err((
                code::INVALID_REQUEST,
                format!("resource type {other} has no configs here (topics: 2, brokers: 4)"),
            )),
        };
        results.push(match configs {
            Ok(configs) => result.with_configs(configs),
            Err((code, message)) => result
                .with_error_code(code)
                .with_error_message(Some(StrBytes::from_string(message))),
        });
    }
    DescribeConfigsResponse::default().with_results(results)
}

fn synonym(name: &'static str, value: String, source: i8) -> DescribeConfigsSynonym {
    DescribeConfigsSynonym::default()
        .with_name(StrBytes::from_static_str(name))
        .with_value(Some(StrBytes::from_string(value)))
        .with_source(source)
}
