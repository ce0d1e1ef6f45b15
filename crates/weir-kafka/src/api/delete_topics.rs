//! DeleteTopics, by name (the broker forgets the topics' producer sequences too).

use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{DeleteTopicsRequest, DeleteTopicsResponse};
use kafka_protocol::protocol::StrBytes;

use super::topic_name;
use crate::dispatch::Ctx;
use crate::error_code;

pub(crate) async fn handle(cx: &mut Ctx<'_>, r: DeleteTopicsRequest) -> DeleteTopicsResponse {
    let mut results = Vec::new();
    for name in r.topic_names {
        let name = name.0.to_string();
        let result = DeletableTopicResult::default().with_name(Some(topic_name(&name)));
        results.push(match cx.kafka.broker.delete_topic(&name).await {
            Ok(()) => result,
            Err(e) => result
                .with_error_code(error_code(&e))
                .with_error_message(Some(StrBytes::from_string(e.to_string()))),
        });
    }
    DeleteTopicsResponse::default().with_responses(results)
}
