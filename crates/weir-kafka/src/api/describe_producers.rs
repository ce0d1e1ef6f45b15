//! DescribeProducers: the idempotent producers a partition knows, with their epochs and last
//! sequences. Their last write times are not kept here (-1), and there are no transactions.

use kafka_protocol::messages::describe_producers_response::{
    PartitionResponse, ProducerState, TopicResponse,
};
use kafka_protocol::messages::{DescribeProducersRequest, DescribeProducersResponse, ProducerId};

use crate::code;
use crate::dispatch::Ctx;
use weir_broker::access::{Operation, ResourceType};

pub(crate) async fn handle(
    cx: &mut Ctx<'_>,
    r: DescribeProducersRequest,
) -> DescribeProducersResponse {
    let broker = &cx.kafka.broker;
    let topics = r
        .topics
        .into_iter()
        .map(|t| {
            // Refused as if absent would tell: refused outright, as Kafka does.
            let allowed = cx.allows(Operation::Read, ResourceType::Topic, &t.name.0);
            let count = broker.partition_count(&t.name.0);
            let partitions = t
                .partition_indexes
                .into_iter()
                .map(|index| {
                    let resp = PartitionResponse::default().with_partition_index(index);
                    match (count, u32::try_from(index)) {
                        _ if !allowed => resp.with_error_code(code::TOPIC_AUTHORIZATION_FAILED),
                        (Some(n), Ok(p)) if p < n => resp.with_active_producers(
                            broker
                                .producers()
                                .active(&t.name.0, p)
                                .into_iter()
                                .map(|(id, epoch, last)| {
                                    ProducerState::default()
                                        .with_producer_id(ProducerId(id))
                                        .with_producer_epoch(i32::from(epoch))
                                        .with_last_sequence(last)
                                        .with_last_timestamp(-1)
                                        .with_coordinator_epoch(-1)
                                        .with_current_txn_start_offset(-1)
                                })
                                .collect(),
                        ),
                        _ => resp.with_error_code(code::UNKNOWN_TOPIC_OR_PARTITION),
                    }
                })
                .collect();
            TopicResponse::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    DescribeProducersResponse::default().with_topics(topics)
}
