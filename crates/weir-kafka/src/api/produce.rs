//! Produce: every batch of the request checked, then written in request order; the answer waits
//! until they are durable, and the connection meanwhile goes on with its next requests (see
//! [`crate::connection`]).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse};
use kafka_protocol::protocol::StrBytes;
use weir_broker::BrokerError;
use weir_broker::broker::OffsetSpec;
use weir_broker::flow::QuotaKind;
use weir_broker::producers::{Refusal, SequencedError, SequencedWrite};

use uuid::Uuid;

use super::{resolve, topic_name};
use crate::dispatch::{Ctx, finish_body, throttle_ms};
use crate::{Kafka, Reply, code, error_code};

/// A produce request's partitions, taken out of it: index, records, and the size of the memory
/// those records are part of (the request's, or their own once copied).
type ProducePartitions = Vec<(i32, Bytes, usize)>;

/// Writes every batch of `r` (a request `frame_len` bytes long); `body` is the response so far
/// (size prefix and header). The answer is [`ProduceInFlight::finish`]'s.
pub(crate) async fn handle(
    cx: &mut Ctx<'_>,
    r: ProduceRequest,
    frame_len: usize,
    body: BytesMut,
) -> ProduceInFlight {
    let acks = r.acks;
    let bytes: usize = r
        .topic_data
        .iter()
        .flat_map(|t| &t.partition_data)
        .map(|p| p.records.as_ref().map_or(0, Bytes::len))
        .sum();
    cx.charge(QuotaKind::Produce, bytes as u64);
    // The request is taken apart first: its names become strings and every other view of its
    // memory is dropped, so that a partition's records, when they are the only ones in the
    // request, are the only view left and the log stamps their offsets in place instead of
    // copying them.
    // Topics are named by name up to v12, by id from v13.
    let by_id = cx.version >= 13;
    let data: Vec<(Option<String>, Uuid, ProducePartitions)> = r
        .topic_data
        .into_iter()
        .map(|t| {
            let name = resolve(&cx.kafka.broker, &t.name, &t.topic_id, by_id);
            let parts = t
                .partition_data
                .into_iter()
                .map(|p| {
                    // Records that are less than half of the request are copied now, so that
                    // the request's memory is not kept alive for them (see
                    // `produce_partition_start`), and so that a large part can be the only
                    // view left when its turn comes.
                    let (records, memory) = owned_enough(p.records.unwrap_or_default(), frame_len);
                    (p.index, records, memory)
                })
                .collect();
            (name, t.topic_id, parts)
        })
        .collect();
    // Every batch is written now, in request order; the syncs are awaited after.
    let mut topics = Vec::with_capacity(data.len());
    for (name, id, partitions) in data {
        let mut parts = Vec::with_capacity(partitions.len());
        // Refused whether or not the topic exists, so that a refusal does not tell.
        let refused = name.as_deref().and_then(|n| {
            let creates = || cx.kafka.broker.produce_creates(n);
            cx.access.check_write(n, creates).err()
        });
        for (index, records, memory) in partitions {
            let started = match &name {
                Some(_) if let Some(e) = &refused => Err((error_code(e), e.to_string())),
                Some(name) => {
                    produce_partition_start(cx.kafka, cx.version, name, index, records, memory)
                        .await
                }
                None => Err((code::UNKNOWN_TOPIC_ID, format!("no topic has id {id}"))),
            };
            parts.push((index, started));
        }
        topics.push((name.unwrap_or_default(), id, parts));
    }
    ProduceInFlight {
        version: cx.version,
        acks,
        throttle: cx.throttle,
        body,
        topics,
    }
}

/// The Kafka error code and message for a batch [`Broker::produce_sequenced`] did not write.
fn sequenced_code(e: &SequencedError) -> (i16, String) {
    let c = match e {
        SequencedError::Refused(Refusal::InvalidRecord, _) => code::INVALID_RECORD,
        SequencedError::Refused(Refusal::InvalidEpoch, _) => code::INVALID_PRODUCER_EPOCH,
        SequencedError::Refused(Refusal::OutOfOrder, _) => code::OUT_OF_ORDER_SEQUENCE_NUMBER,
        SequencedError::Retry(_) => code::KAFKA_STORAGE_ERROR,
        SequencedError::Internal(_) => code::UNKNOWN_SERVER_ERROR,
        SequencedError::Broker(b) => error_code(b),
    };
    (c, e.to_string())
}

/// `bytes`, part of `memory` bytes: stored as they are, they keep all of that memory alive in
/// the log's hot tail, so less than half of it is copied into memory of its own. Returns the
/// bytes and the size of the memory they now keep.
fn owned_enough(bytes: Bytes, memory: usize) -> (Bytes, usize) {
    if bytes.len() * 2 >= memory {
        (bytes, memory)
    } else {
        let len = bytes.len();
        (Bytes::copy_from_slice(&bytes), len)
    }
}

/// The first half of a partition's produce, in request order: every batch is checked, then
/// each is written (its sync not yet awaited). A connection can write its next request's
/// batches while this one's sync is under way; [`produce_partition_finish`] waits. Batches of
/// idempotent producers go through the broker's sequence checks
/// ([`weir_broker::Broker::produce_sequenced`]).
async fn produce_partition_start(
    kafka: &Kafka,
    version: i16,
    topic: &str,
    partition: i32,
    mut records: Bytes,
    memory: usize,
) -> PartitionStart {
    let broker = &kafka.broker;
    let fail = |e: BrokerError| (error_code(&e), e.to_string());
    let invalid =
        |e: weir_batch::BatchError| fail(BrokerError::Log(weir_log::LogError::InvalidBatch(e)));
    let part = u32::try_from(partition).map_err(|_| {
        fail(BrokerError::UnknownPartition {
            topic: topic.to_string(),
            partition: u32::MAX,
        })
    })?;
    if records.is_empty() {
        return Err(invalid(weir_batch::BatchError::Truncated {
            needed: weir_batch::HEADER_LEN,
            available: 0,
        }));
    }
    // Every batch is checked before any is appended: a bad one later in the request must not
    // leave the earlier ones written behind an error (a retry would write them twice).
    let mut batches = Vec::new();
    while !records.is_empty() {
        let h = weir_batch::peek(&records).map_err(invalid)?;
        if h.total_len() > records.len() {
            return Err(invalid(weir_batch::BatchError::Truncated {
                needed: h.total_len(),
                available: records.len(),
            }));
        }
        // zstd came with Produce v7 (KIP-110): an older request cannot carry it, as Kafka
        // answers, so a client that negotiated an older version is told plainly.
        if version < 7 && h.compression() == weir_batch::Compression::Zstd {
            return Err((
                code::UNSUPPORTED_COMPRESSION_TYPE,
                format!(
                    "zstd-compressed batches need Produce v7 or later (this request is v{version})"
                ),
            ));
        }
        if h.is_transactional() || h.is_control() {
            return Err((
                code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
                "transactions are not supported".into(),
            ));
        }
        // Split off, not sliced: a lone batch is then the only view of its memory.
        batches.push((h, records.split_to(h.total_len())));
    }
    drop(records);
    // With several batches, each is CRC-checked here so that none is appended before a bad
    // one is found; a lone batch is checked once, by the log as it appends.
    if batches.len() > 1 {
        for (_, batch) in &batches {
            weir_batch::validate(batch).map_err(invalid)?;
            weir_batch::check_records(batch).map_err(invalid)?;
        }
    }
    let mut writes = Vec::with_capacity(batches.len());
    let door = broker.activity().door(weir_broker::activity::Door::Kafka);
    for (h, batch) in batches {
        let bytes = batch.len() as u64;
        // `memory`: the request's, or the partition's records' own copy.
        let write = broker
            .produce_sequenced(topic, part, &h, batch, |b| owned_enough(b, memory).0)
            .await
            .map_err(|e| sequenced_code(&e))?;
        door.produced(u64::from(h.last_offset_delta.max(0) as u32) + 1, bytes);
        writes.push(write);
    }
    Ok((part, writes))
}

/// The second half: waits until every batch written by [`produce_partition_start`] is
/// durable. Returns the first batch's base offset, the log start offset and the
/// LogAppendTime stamp.
async fn produce_partition_finish(
    kafka: &Kafka,
    topic: &str,
    part: u32,
    writes: Vec<SequencedWrite>,
) -> Result<(u64, u64, Option<i64>), (i16, String)> {
    let fail = |e: BrokerError| (error_code(&e), e.to_string());
    let mut first = None;
    let mut append_time = None;
    for w in writes {
        let (base, _, stamp) = w.wait().await.map_err(|e| sequenced_code(&e))?;
        append_time = append_time.or(stamp);
        first.get_or_insert(base);
    }
    // The log start alone, not a whole topic description, on every produce.
    let log_start = kafka
        .broker
        .list_offsets(topic, part, OffsetSpec::Earliest)
        .await
        .map_err(fail)?;
    Ok((first.unwrap_or(0), log_start, append_time))
}

/// What [`produce_partition_start`] gives: the partition and its writes, or an error code and
/// message.
type PartitionStart = Result<(u32, Vec<SequencedWrite>), (i16, String)>;

/// A produce request whose batches are all written, awaiting their syncs before it is
/// answered (see [`crate::connection`]).
pub(crate) struct ProduceInFlight {
    version: i16,
    acks: i16,
    throttle: Duration,
    /// The response so far: size prefix and header.
    body: BytesMut,
    /// Per topic, per partition index: its writes, or why it was refused.
    topics: Vec<TopicStarted>,
}

/// A topic of a produce: its name, its id (v13), and per partition index what was started.
type TopicStarted = (String, Uuid, Vec<(i32, PartitionStart)>);

impl ProduceInFlight {
    /// Waits for every write to be durable and answers: the response, or silence for acks=0.
    pub(crate) async fn finish(self, kafka: &Kafka) -> Reply {
        let ProduceInFlight {
            version,
            acks,
            throttle,
            body,
            topics,
        } = self;
        let mut responses = Vec::with_capacity(topics.len());
        for (name, id, parts) in topics {
            let mut out = Vec::with_capacity(parts.len());
            for (index, started) in parts {
                let mut resp = PartitionProduceResponse::default()
                    .with_index(index)
                    .with_base_offset(-1)
                    .with_log_append_time_ms(-1)
                    .with_log_start_offset(-1);
                let done = match started {
                    Ok((part, writes)) => {
                        produce_partition_finish(kafka, &name, part, writes).await
                    }
                    Err(e) => Err(e),
                };
                match done {
                    Ok((base, log_start, append_time)) => {
                        resp = resp
                            .with_base_offset(base as i64)
                            .with_log_start_offset(log_start as i64)
                            // The broker's stamp on LogAppendTime topics, -1 otherwise.
                            .with_log_append_time_ms(append_time.unwrap_or(-1));
                    }
                    Err((code, message)) => {
                        tracing::debug!(topic = %name, partition = index, code, %message, "Kafka produce failed");
                        resp = resp
                            .with_error_code(code)
                            .with_error_message(Some(StrBytes::from_string(message)));
                    }
                }
                out.push(resp);
            }
            responses.push(
                TopicProduceResponse::default()
                    .with_name(topic_name(&name))
                    .with_topic_id(id)
                    .with_partition_responses(out),
            );
        }
        if acks == 0 {
            return Reply::Silent;
        }
        let response = ProduceResponse::default()
            .with_responses(responses)
            .with_throttle_time_ms(throttle_ms(throttle));
        finish_body(body, ApiKey::Produce, version, &response.into())
    }
}
