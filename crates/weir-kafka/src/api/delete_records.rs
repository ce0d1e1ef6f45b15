//! DeleteRecords: a partition's records before an offset (-1: the high watermark) become
//! unreadable and the log start moves there; whole segments below it are deleted. The answer
//! is the new log start (the low watermark). An offset past the high watermark is
//! OFFSET_OUT_OF_RANGE.

use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};

use crate::dispatch::Ctx;
use crate::{code, error_code};
use weir_broker::access::{Operation, ResourceType};

pub(crate) async fn handle(cx: &mut Ctx<'_>, r: DeleteRecordsRequest) -> DeleteRecordsResponse {
    let broker = &cx.kafka.broker;
    let mut topics = Vec::new();
    for t in r.topics {
        let mut partitions = Vec::new();
        let allowed = cx.allows(Operation::Delete, ResourceType::Topic, &t.name.0);
        for p in t.partitions {
            let result = DeleteRecordsPartitionResult::default()
                .with_partition_index(p.partition_index)
                .with_low_watermark(-1);
            let before = match p.offset {
                -1 => Some(None),
                o => u64::try_from(o).ok().map(Some),
            };
            let done = match (u32::try_from(p.partition_index), before) {
                _ if !allowed => Err(code::TOPIC_AUTHORIZATION_FAILED),
                (Ok(part), Some(before)) => broker
                    .delete_records(&t.name.0, part, before)
                    .await
                    .map_err(|e| error_code(&e)),
                (Err(_), _) => Err(code::UNKNOWN_TOPIC_OR_PARTITION),
                (_, None) => Err(code::OFFSET_OUT_OF_RANGE),
            };
            partitions.push(match done {
                Ok(start) => result.with_low_watermark(start as i64),
                Err(error) => result.with_error_code(error),
            });
        }
        topics.push(
            DeleteRecordsTopicResult::default()
                .with_name(t.name)
                .with_partitions(partitions),
        );
    }
    DeleteRecordsResponse::default().with_topics(topics)
}
