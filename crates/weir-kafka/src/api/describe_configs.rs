//! DescribeConfigs: a topic's configuration under Kafka's names.

use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse};
use kafka_protocol::protocol::StrBytes;

use crate::dispatch::Ctx;
use crate::{code, error_code};

pub(crate) async fn handle(cx: &mut Ctx<'_>, r: DescribeConfigsRequest) -> DescribeConfigsResponse {
    let broker = &cx.kafka.broker;
    let mut results = Vec::new();
    for res in r.resources {
        let name = res.resource_name.to_string();
        let result = DescribeConfigsResult::default()
            .with_resource_type(res.resource_type)
            .with_resource_name(res.resource_name.clone());
        let configs = match res.resource_type {
            TOPIC_RESOURCE => match broker.topic_info(&name) {
                Ok(t) => Ok(topic_configs(&t.config)),
                Err(e) => Err((error_code(&e), e.to_string())),
            },
            BROKER_RESOURCE => Ok(Vec::new()),
            other => Err((
                code::INVALID_REQUEST,
                format!("resource type {other} is not supported"),
            )),
        };
        results.push(match configs {
            Ok(all) => {
                let wanted = res.configuration_keys.as_ref();
                result.with_configs(
                    all.into_iter()
                        .filter(|(k, _)| wanted.is_none_or(|w| w.iter().any(|x| &**x == *k)))
                        .map(|(k, v)| {
                            DescribeConfigsResourceResult::default()
                                .with_name(StrBytes::from_static_str(k))
                                .with_value(Some(StrBytes::from_string(v)))
                                .with_read_only(true)
                                .with_config_source(CONFIG_SOURCE_TOPIC)
                        })
                        .collect(),
                )
            }
            Err((code, message)) => result
                .with_error_code(code)
                .with_error_message(Some(StrBytes::from_string(message))),
        });
    }
    DescribeConfigsResponse::default().with_results(results)
}

/// DescribeConfigs resource types.
pub(crate) const TOPIC_RESOURCE: i8 = 2;
const BROKER_RESOURCE: i8 = 4;
/// DescribeConfigs config source: DYNAMIC_TOPIC_CONFIG.
pub(crate) const CONFIG_SOURCE_TOPIC: i8 = 1;

/// A topic's configuration under Kafka's names.
pub(crate) fn topic_configs(c: &weir_broker::TopicConfig) -> Vec<(&'static str, String)> {
    vec![
        ("cleanup.policy", "delete".to_string()),
        (
            "retention.ms",
            c.retention_ms.map_or(-1, |v| v as i64).to_string(),
        ),
        (
            "retention.bytes",
            c.retention_bytes.map_or(-1, |v| v as i64).to_string(),
        ),
        ("segment.bytes", c.segment_bytes.to_string()),
        ("max.message.bytes", c.max_batch_bytes.to_string()),
        (
            "message.timestamp.type",
            match c.timestamp_type {
                weir_broker::topic::TimestampType::CreateTime => "CreateTime",
                weir_broker::topic::TimestampType::LogAppendTime => "LogAppendTime",
            }
            .to_string(),
        ),
    ]
}
