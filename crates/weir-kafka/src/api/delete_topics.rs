//! DeleteTopics, by name, or from v6 by name or id (the broker forgets the topics' producer
//! sequences too).

use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{DeleteTopicsRequest, DeleteTopicsResponse};
use kafka_protocol::protocol::StrBytes;
use uuid::Uuid;

use super::{id_of, name_of_id, topic_name};
use crate::dispatch::Ctx;
use crate::{code, error_code};
use weir_broker::access::{Operation, ResourceType};

pub(crate) async fn handle(cx: &mut Ctx<'_>, r: DeleteTopicsRequest) -> DeleteTopicsResponse {
    let broker = &cx.kafka.broker;
    // (name, id, whether asked by id) as asked: v6 names each topic by name or, with a null
    // name, by id.
    let asked: Vec<(Option<String>, Uuid, bool)> = if cx.version >= 6 {
        r.topics
            .into_iter()
            .map(|t| match t.name {
                Some(n) => (Some(n.0.to_string()), t.topic_id, false),
                None => (name_of_id(broker, &t.topic_id), t.topic_id, true),
            })
            .collect()
    } else {
        r.topic_names
            .into_iter()
            .map(|n| (Some(n.0.to_string()), Uuid::nil(), false))
            .collect()
    };
    let mut results = Vec::new();
    for (name, id, by_id) in asked {
        // An answer that does not name the topic: asked by an id that is unknown, or that
        // names a topic the client may not describe (Kafka keeps the name to itself too).
        let nameless = |error: i16, message: String| {
            DeletableTopicResult::default()
                .with_name(None)
                .with_topic_id(id)
                .with_error_code(error)
                .with_error_message(Some(StrBytes::from_string(message)))
        };
        let Some(name) = name else {
            results.push(nameless(
                code::UNKNOWN_TOPIC_ID,
                format!("no topic has id {id}"),
            ));
            continue;
        };
        if by_id && !cx.allows(Operation::Describe, ResourceType::Topic, &name) {
            results.push(nameless(
                code::TOPIC_AUTHORIZATION_FAILED,
                format!("not authorized to delete the topic with id {id}"),
            ));
            continue;
        }
        let id = id_of(broker, &name);
        let result = DeletableTopicResult::default()
            .with_name(Some(topic_name(&name)))
            .with_topic_id(id);
        let deleted = match cx.check(Operation::Delete, ResourceType::Topic, &name) {
            Ok(()) => broker.delete_topic(&name).await,
            Err(e) => Err(e),
        };
        results.push(match deleted {
            Ok(()) => result,
            Err(e) => result
                .with_error_code(error_code(&e))
                .with_error_message(Some(StrBytes::from_string(e.to_string()))),
        });
    }
    DeleteTopicsResponse::default().with_responses(results)
}
