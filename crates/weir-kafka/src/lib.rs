//! The Kafka wire protocol front door onto weir's broker core (first slice).
//!
//! Layout:
//! - [`serve`]: accepts connections and runs each one: a 4-byte size, then a request, answered
//!   in order (Kafka clients rely on per-connection ordering).
//! - [`handle`]: one request, decoded with the `kafka-protocol` crate, applied to the
//!   [`Broker`], encoded back. Sans socket: bytes in, bytes out.
//! - [`decode_request`]: the one way in for request bytes: API and version checked against
//!   those served, the layout checked by [`guard`] (the crate's decoders reserve memory from
//!   unchecked counts), then decoded. The fuzz target `kafka_request` (the repository's
//!   top-level `fuzz/`) drives it.
//! - [`groups`], [`weir_broker::producers`]: the group coordinator and idempotent producer state.
//!
//! APIs served so far: ApiVersions 0–4, Metadata 0–8, Produce 3–8, Fetch 4–11,
//! ListOffsets 1–5 — what `kcat -P`, `kcat -C` and `kcat -L` need — and CreateTopics 2–4,
//! DeleteTopics 1–3, DescribeConfigs 1–2. Consumer groups, idempotent
//! producers and the admin APIs are the rest of the Kafka issue.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::fetch_response::PartitionData;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponsePartition, OffsetFetchResponseTopic,
};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, BrokerId, CreateTopicsResponse, DeleteTopicsResponse,
    DescribeConfigsResponse, FindCoordinatorResponse, HeartbeatResponse, InitProducerIdResponse,
    JoinGroupResponse, LeaveGroupResponse, ListOffsetsResponse, MetadataResponse,
    OffsetCommitResponse, OffsetFetchResponse, ProduceResponse, ProducerId, RequestHeader,
    RequestKind, ResponseHeader, SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

/// What to do after a request.
#[derive(Debug)]
pub enum Reply {
    /// Send this response (size prefix included).
    Response(Bytes),
    /// Send these pieces, in order, as one response (size prefix included in the first): a
    /// Fetch answer, whose stored batches are not copied.
    Parts(Vec<Bytes>),
    /// Say nothing (produce with acks=0).
    Silent,
    /// The request cannot be understood: close the connection, as Kafka brokers do.
    Close,
}
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;
use weir_broker::broker::OffsetSpec;
use weir_broker::flow::QuotaKind;
use weir_broker::{Broker, BrokerError};
use weir_net::{Acceptor, Shutdown};

mod errors;
pub mod groups;
pub mod guard;

pub(crate) use errors::{code, error_code, group_error_code};

use groups::KafkaGroups;
use weir_broker::producers::{Refusal, SequencedError, SequencedWrite};

/// Largest request accepted (checked before allocating).
pub const MAX_REQUEST_BYTES: usize = 16 << 20;

/// The APIs and versions advertised; every one is served.
const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 8),
    (ApiKey::Fetch, 4, 11),
    (ApiKey::ListOffsets, 1, 5),
    (ApiKey::Metadata, 0, 8),
    (ApiKey::OffsetCommit, 2, 7),
    (ApiKey::OffsetFetch, 1, 5),
    (ApiKey::FindCoordinator, 0, 2),
    (ApiKey::JoinGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 3),
    (ApiKey::LeaveGroup, 0, 1),
    (ApiKey::SyncGroup, 0, 3),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::CreateTopics, 2, 4),
    (ApiKey::DeleteTopics, 1, 3),
    (ApiKey::DescribeConfigs, 1, 2),
    (ApiKey::InitProducerId, 0, 1),
];

/// One Kafka listener's state: the broker, the address it advertises and its group
/// coordinator. (Idempotent producers' state is the broker's, shared with the native door.)
#[derive(Debug)]
pub struct Kafka {
    pub broker: Broker,
    pub advertised: Advertised,
    pub groups: Arc<KafkaGroups>,
}

impl Kafka {
    pub fn new(broker: Broker, advertised: Advertised) -> Self {
        Self {
            groups: Arc::new(KafkaGroups::new(broker.clone())),
            broker,
            advertised,
        }
    }
}

/// The address clients are told to connect to (Metadata).
#[derive(Debug, Clone)]
pub struct Advertised {
    pub host: String,
    pub port: i32,
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

fn topic_name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

/// Handles one request (without its size prefix): the response (without its size prefix),
/// silence (produce with acks=0), or a request that cannot be understood.
pub async fn handle(kafka: &Kafka, frame: Bytes) -> Reply {
    handle_throttled(kafka, frame).await.0
}

/// [`handle`], and how long the client is to be throttled: it went over a quota, its
/// response carries `throttle_time_ms`, and its connection is not read for that long.
pub async fn handle_throttled(kafka: &Kafka, frame: Bytes) -> (Reply, Duration) {
    let mut throttle = Duration::ZERO;
    let reply = reply_of(handle_inner(kafka, frame, &mut throttle, None).await);
    (reply, throttle)
}

fn reply_of(handled: Option<Option<Vec<Bytes>>>) -> Reply {
    match handled {
        Some(Some(mut pieces)) if pieces.len() == 1 => Reply::Response(pieces.remove(0)),
        Some(Some(pieces)) => Reply::Parts(pieces),
        Some(None) => Reply::Silent,
        None => Reply::Close,
    }
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

/// A produce request's partitions, taken out of it: index, records, and the size of the memory
/// those records are part of (the request's, or their own once copied).
type ProducePartitions = Vec<(i32, Bytes, usize)>;

/// A request taken as far as it goes without waiting for a sync.
enum Step {
    /// Answered (or to be closed on).
    Done(Reply, Duration),
    /// A produce whose batches are written, to be answered once they are durable.
    Syncing(ProduceInFlight, Duration),
}

/// [`handle_throttled`], except that a produce returns once its batches are written: the
/// connection then reads and writes its next requests while the syncs are under way.
async fn handle_step(kafka: &Kafka, frame: Bytes) -> Step {
    let mut throttle = Duration::ZERO;
    let mut deferred = None;
    let handled = handle_inner(kafka, frame, &mut throttle, Some(&mut deferred)).await;
    match deferred {
        Some(in_flight) => Step::Syncing(in_flight, throttle),
        None => Step::Done(reply_of(handled), throttle),
    }
}

fn throttle_ms(d: Duration) -> i32 {
    d.as_millis().min(i32::MAX as u128) as i32
}

/// A request taken off the wire by [`decode_request`].
// Built once per request and destructured at once: boxing the large variant would only add an
// allocation per request.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Decoded {
    /// A request of a served API and version, checked by [`guard::check_request`] and decoded.
    Request {
        api: ApiKey,
        version: i16,
        header: RequestHeader,
        request: RequestKind,
    },
    /// ApiVersions above the versions served (or negative): answered in v0 with
    /// `UNSUPPORTED_VERSION` and the ranges served, before decoding anything past the
    /// correlation id, so newer clients can fall back.
    ApiVersionsTooNew { correlation_id: i32 },
}

/// Why a request could not be decoded; the connection is closed.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("request of {0} bytes is too short for a header")]
    TooShort(usize),
    #[error("unknown Kafka API key {0}")]
    UnknownApi(i16),
    #[error("unsupported Kafka API {api:?} v{version}")]
    Unsupported { api: ApiKey, version: i16 },
    #[error("refused before decoding: {0}")]
    Guard(#[from] guard::GuardError),
    #[error("undecodable request header: {0}")]
    Header(String),
    #[error("undecodable {api:?} v{version} request: {reason}")]
    Body {
        api: ApiKey,
        version: i16,
        reason: String,
    },
}

/// Decodes one request (without its size prefix), sans I/O: the API and version are checked
/// against those served, the frame's layout against [`guard::check_request`] (the decoders of
/// the `kafka-protocol` crate reserve memory from unchecked counts), and only then are the
/// header and body decoded.
pub fn decode_request(mut frame: Bytes) -> Result<Decoded, DecodeError> {
    let (Some(key), Some(version)) = (frame.get(0..2), frame.get(2..4)) else {
        return Err(DecodeError::TooShort(frame.len()));
    };
    let key = i16::from_be_bytes([key[0], key[1]]);
    let version = i16::from_be_bytes([version[0], version[1]]);
    let api = ApiKey::try_from(key).map_err(|()| DecodeError::UnknownApi(key))?;
    let Some((min, max)) = range(api) else {
        return Err(DecodeError::Unsupported { api, version });
    };
    if api == ApiKey::ApiVersions && (version > max || version < 0) {
        let correlation_id = frame
            .get(4..8)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or(DecodeError::TooShort(frame.len()))?;
        return Ok(Decoded::ApiVersionsTooNew { correlation_id });
    }
    if version < min || version > max {
        return Err(DecodeError::Unsupported { api, version });
    }
    let header_version = api.request_header_version(version);
    guard::check_request(api, version, header_version, &frame)?;
    let header = RequestHeader::decode(&mut frame, header_version)
        .map_err(|e| DecodeError::Header(e.to_string()))?;
    let request = RequestKind::decode(api, &mut frame, version).map_err(|e| DecodeError::Body {
        api,
        version,
        reason: e.to_string(),
    })?;
    Ok(Decoded::Request {
        api,
        version,
        header,
        request,
    })
}

/// The client id of a request's header (v1+: after key, version and correlation id, an i16
/// length and the bytes), read by hand from a request that could not be decoded; empty if it
/// is not there.
fn frame_client_id(head: &[u8]) -> String {
    let mut c = weir_batch::cursor::Cursor(head);
    let _ = c.take(8);
    let Some(len) = c.i16().and_then(|len| usize::try_from(len).ok()) else {
        return String::new();
    };
    let rest = c.rest();
    String::from_utf8_lossy(&rest[..len.min(rest.len())]).into_owned()
}

/// A request refused before it was handled: counted in
/// `weir_kafka_refused_requests_total{reason}`, and logged at warn (the connection's span
/// names the peer) at most once a second, so a client that keeps sending it cannot flood the
/// log. Kafka closes such a connection too; what matters is that an operator sees why.
fn refused_request(e: &DecodeError, client_id: String) {
    static LAST_WARN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let reason = match e {
        DecodeError::UnknownApi(_) => "unknown_api",
        DecodeError::Unsupported { .. } => "unsupported_version",
        DecodeError::TooShort(_) | DecodeError::Header(_) => "malformed",
        DecodeError::Guard(_) | DecodeError::Body { .. } => "malformed",
    };
    metrics::counter!("weir_kafka_refused_requests_total", "reason" => reason).increment(1);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if LAST_WARN.swap(now, std::sync::atomic::Ordering::Relaxed) != now {
        tracing::warn!(error = %e, client_id, "Kafka request refused; closing the connection");
    } else {
        tracing::debug!(error = %e, client_id, "Kafka request refused; closing the connection");
    }
}

/// `None`: close; `Some(None)`: silent; `Some(Some(b))`: respond.
async fn handle_inner(
    kafka: &Kafka,
    frame: Bytes,
    throttle: &mut Duration,
    deferred: Option<&mut Option<ProduceInFlight>>,
) -> Option<Option<Vec<Bytes>>> {
    let (broker, advertised) = (&kafka.broker, &kafka.advertised);
    let frame_len = frame.len();
    // Kept to say whose request was refused, and let go of right after decoding, so that a
    // produce's records can still become the only view of the request (see the Produce arm).
    let whole = frame.clone();
    let decoded = decode_request(frame);
    let refused_by = match &decoded {
        Err(_) => frame_client_id(&whole),
        Ok(_) => String::new(),
    };
    drop(whole);
    let (api, version, header, request) = match decoded {
        Ok(Decoded::Request {
            api,
            version,
            header,
            request,
        }) => (api, version, header, request),
        Ok(Decoded::ApiVersionsTooNew { correlation_id }) => {
            // A strict v0 answer any client understands: the error and our ranges.
            return Some(Some(vec![api_versions_reply(
                correlation_id,
                0,
                code::UNSUPPORTED_VERSION,
            )]));
        }
        Err(e) => {
            refused_request(&e, refused_by);
            return None;
        }
    };
    metrics::counter!("weir_kafka_requests_total", "api" => api_name(api)).increment(1);
    let client_id = header.client_id.as_deref().unwrap_or("").to_string();
    let quotas = broker.quotas();
    *throttle = quotas.charge(&client_id, QuotaKind::Requests, 1);
    let correlation = header.correlation_id;
    // The header's strings are views of the request's memory: let go of them, so that a
    // produce's records can become the only view left (see the Produce arm).
    drop(header);
    // The response is built in place: size prefix (patched at the end), header, body, so that
    // records are copied once, into this buffer.
    let mut body = BytesMut::new();
    body.put_i32(0);
    ResponseHeader::default()
        .with_correlation_id(correlation)
        .encode(&mut body, api.response_header_version(version))
        .ok()?;
    match request {
        RequestKind::ApiVersions(_) => {
            return Some(Some(vec![api_versions_reply(
                correlation,
                version,
                code::NONE,
            )]));
        }
        RequestKind::Metadata(r) => {
            let wanted: Option<Vec<String>> = r.topics.map(|ts| {
                ts.into_iter()
                    .filter_map(|t| t.name.map(|n| n.0.to_string()))
                    .collect()
            });
            // In v0 an empty list (not null) asks for every topic.
            let wanted = wanted.filter(|w| !(version == 0 && w.is_empty()));
            let all = broker.topics();
            let mut topics = Vec::new();
            match wanted {
                None => {
                    for t in &all {
                        topics.push(metadata_topic(
                            &t.name,
                            Some(t.partitions.len()),
                            code::NONE,
                        ));
                    }
                }
                Some(names) => {
                    for n in names {
                        let found = all.iter().find(|t| t.name == n);
                        let auto = found.is_none()
                            && r.allow_auto_topic_creation
                            && broker.config().auto_create_topics;
                        if auto && broker.create_topic(&n, None).await.is_ok() {
                            let parts = broker.partition_count(&n).unwrap_or(0) as usize;
                            topics.push(metadata_topic(&n, Some(parts), code::NONE));
                            continue;
                        }
                        match found {
                            Some(t) => topics.push(metadata_topic(
                                &t.name,
                                Some(t.partitions.len()),
                                code::NONE,
                            )),
                            None => topics.push(metadata_topic(
                                &n,
                                None,
                                code::UNKNOWN_TOPIC_OR_PARTITION,
                            )),
                        }
                    }
                }
            }
            let resp = MetadataResponse::default()
                .with_brokers(vec![
                    MetadataResponseBroker::default()
                        .with_node_id(BrokerId(0))
                        .with_host(StrBytes::from_string(advertised.host.clone()))
                        .with_port(advertised.port),
                ])
                .with_cluster_id(Some(StrBytes::from_static_str("weir")))
                .with_controller_id(BrokerId(0))
                .with_topics(topics);
            resp.encode(&mut body, version).ok()?;
        }
        RequestKind::Produce(r) => {
            let acks = r.acks;
            let bytes: usize = r
                .topic_data
                .iter()
                .flat_map(|t| &t.partition_data)
                .map(|p| p.records.as_ref().map_or(0, Bytes::len))
                .sum();
            *throttle =
                (*throttle).max(quotas.charge(&client_id, QuotaKind::Produce, bytes as u64));
            // The request is taken apart first: its names become strings and every other view
            // of its memory is dropped, so that a partition's records, when they are the only
            // ones in the request, are the only view left and the log stamps their offsets in
            // place instead of copying them.
            let data: Vec<(String, ProducePartitions)> = r
                .topic_data
                .into_iter()
                .map(|t| {
                    let parts = t
                        .partition_data
                        .into_iter()
                        .map(|p| {
                            // Records that are less than half of the request are copied now,
                            // so that the request's memory is not kept alive for them (see
                            // `produce_partition_start`), and so that a large part can be the
                            // only view left when its turn comes.
                            let (records, memory) =
                                owned_enough(p.records.unwrap_or_default(), frame_len);
                            (p.index, records, memory)
                        })
                        .collect();
                    (t.name.0.to_string(), parts)
                })
                .collect();
            // Every batch is written now, in request order; the syncs are awaited after.
            let mut topics = Vec::with_capacity(data.len());
            for (name, partitions) in data {
                let mut parts = Vec::with_capacity(partitions.len());
                for (index, records, memory) in partitions {
                    let started =
                        produce_partition_start(kafka, &name, index, records, memory).await;
                    parts.push((index, started));
                }
                topics.push((name, parts));
            }
            let in_flight = ProduceInFlight {
                version,
                acks,
                throttle: *throttle,
                body,
                topics,
            };
            return match deferred {
                Some(slot) => {
                    *slot = Some(in_flight);
                    Some(None)
                }
                None => in_flight.finish(kafka).await,
            };
        }
        RequestKind::Fetch(r) => {
            let max_wait = Duration::from_millis(r.max_wait_ms.clamp(0, 30_000) as u64);
            let min_bytes = r.min_bytes.max(0) as usize;
            let total_max = (r.max_bytes.max(1) as usize).min(MAX_REQUEST_BYTES);
            let deadline = tokio::time::Instant::now() + max_wait;
            // Long-poll on every partition asked for: answered as soon as any of them has
            // data enough, or at max_wait.
            let mut watches: Vec<tokio::sync::watch::Receiver<u64>> = r
                .topics
                .iter()
                .flat_map(|t| {
                    t.partitions.iter().filter_map(|p| {
                        let part = u32::try_from(p.partition).ok()?;
                        broker.watch_high_watermark(&t.topic.0, part).ok()
                    })
                })
                .take(MAX_WATCHED_PARTITIONS)
                .collect();
            let responses = loop {
                for w in &mut watches {
                    w.borrow_and_update();
                }
                let (responses, total) = fetch_pass(broker, &r.topics, total_max).await;
                if total >= min_bytes.max(1)
                    || min_bytes == 0
                    || watches.is_empty()
                    || tokio::time::Instant::now() >= deadline
                {
                    *throttle =
                        (*throttle).max(quotas.charge(&client_id, QuotaKind::Fetch, total as u64));
                    break responses;
                }
                let changed =
                    futures::future::select_all(watches.iter_mut().map(|w| Box::pin(w.changed())));
                let gone = match tokio::time::timeout_at(deadline, changed).await {
                    Err(_) | Ok((Ok(()), _, _)) => None,
                    // A partition went away (topic deleted): stop watching it.
                    Ok((Err(_), i, _)) => Some(i),
                };
                if let Some(i) = gone {
                    watches.swap_remove(i);
                }
            };
            return encode_fetch(body, version, throttle_ms(*throttle), responses).map(Some);
        }
        RequestKind::ListOffsets(r) => {
            let mut topics = Vec::new();
            for t in r.topics {
                let name = t.name.0.to_string();
                let mut parts = Vec::new();
                for p in t.partitions {
                    let spec = match p.timestamp {
                        -2 => OffsetSpec::Earliest,
                        -1 => OffsetSpec::Latest,
                        ts => OffsetSpec::Timestamp(ts),
                    };
                    let resp = ListOffsetsPartitionResponse::default()
                        .with_partition_index(p.partition_index)
                        .with_timestamp(-1);
                    let result = match u32::try_from(p.partition_index) {
                        // By time, as Kafka answers: -1 when every record is older.
                        Ok(part) if matches!(spec, OffsetSpec::Timestamp(_)) => broker
                            .offset_for_timestamp(&name, part, p.timestamp)
                            .await
                            .map(|o| o.map_or(-1, |o| o as i64)),
                        Ok(part) => broker
                            .list_offsets(&name, part, spec)
                            .await
                            .map(|o| o as i64),
                        Err(_) => Err(BrokerError::UnknownPartition {
                            topic: name.clone(),
                            partition: u32::MAX,
                        }),
                    };
                    parts.push(match result {
                        Ok(o) => resp.with_offset(o),
                        Err(e) => resp.with_error_code(error_code(&e)).with_offset(-1),
                    });
                }
                topics.push(
                    ListOffsetsTopicResponse::default()
                        .with_name(topic_name(&name))
                        .with_partitions(parts),
                );
            }
            ListOffsetsResponse::default()
                .with_topics(topics)
                .encode(&mut body, version)
                .ok()?;
        }
        RequestKind::CreateTopics(r) => {
            let mut results = Vec::new();
            for t in r.topics {
                let name = t.name.0.to_string();
                let result = CreatableTopicResult::default().with_name(topic_name(&name));
                let outcome = match topic_config(broker.config().default_topic.clone(), &t) {
                    Err((code, message)) => Err((code, message)),
                    Ok(config) => {
                        let checked = weir_broker::topic::validate_name(&name)
                            .and_then(|()| config.validate());
                        match checked {
                            Err(e) => Err((error_code(&e), e.to_string())),
                            Ok(()) if r.validate_only => Ok(()),
                            Ok(()) => broker
                                .create_topic(&name, Some(config))
                                .await
                                .map(|_| ())
                                .map_err(|e| (error_code(&e), e.to_string())),
                        }
                    }
                };
                results.push(match outcome {
                    Ok(()) => result,
                    Err((code, message)) => result
                        .with_error_code(code)
                        .with_error_message(Some(StrBytes::from_string(message))),
                });
            }
            CreateTopicsResponse::default()
                .with_topics(results)
                .encode(&mut body, version)
                .ok()?;
        }
        RequestKind::DeleteTopics(r) => {
            let mut results = Vec::new();
            for name in r.topic_names {
                let name = name.0.to_string();
                let result = DeletableTopicResult::default().with_name(Some(topic_name(&name)));
                results.push(match broker.delete_topic(&name).await {
                    // (The broker forgets the topic's producer sequences.)
                    Ok(()) => result,
                    Err(e) => result
                        .with_error_code(error_code(&e))
                        .with_error_message(Some(StrBytes::from_string(e.to_string()))),
                });
            }
            DeleteTopicsResponse::default()
                .with_responses(results)
                .encode(&mut body, version)
                .ok()?;
        }
        RequestKind::DescribeConfigs(r) => {
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
                                .filter(|(k, _)| {
                                    wanted.is_none_or(|w| w.iter().any(|x| &**x == *k))
                                })
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
            DescribeConfigsResponse::default()
                .with_results(results)
                .encode(&mut body, version)
                .ok()?;
        }
        RequestKind::FindCoordinator(r) => {
            // Key type 0 is a group, 1 a transactional id; transactions are not supported.
            let (error, message) = match r.key_type {
                0 => (code::NONE, None),
                1 => (
                    code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
                    Some("transactions are not supported"),
                ),
                _ => (code::INVALID_REQUEST, Some("unknown coordinator key type")),
            };
            let ok = error == code::NONE;
            FindCoordinatorResponse::default()
                .with_error_code(error)
                .with_error_message(message.map(StrBytes::from_static_str))
                .with_node_id(BrokerId(if ok { 0 } else { -1 }))
                .with_host(StrBytes::from_string(if ok {
                    advertised.host.clone()
                } else {
                    String::new()
                }))
                .with_port(if ok { advertised.port } else { -1 })
                .encode(&mut body, version)
                .ok()?;
        }
        RequestKind::JoinGroup(r) => {
            let ms = |v: i32| Duration::from_millis(v.max(0) as u64);
            let req = groups::JoinRequest {
                group: r.group_id.0.to_string(),
                member_id: r.member_id.to_string(),
                group_instance_id: r.group_instance_id.map(|s| s.to_string()),
                client_id: client_id.clone(),
                session_timeout: ms(r.session_timeout_ms),
                // v0 has no rebalance timeout: the session timeout serves for both.
                rebalance_timeout: ms(if version >= 1 {
                    r.rebalance_timeout_ms
                } else {
                    r.session_timeout_ms
                }),
                protocol_type: r.protocol_type.to_string(),
                protocols: r
                    .protocols
                    .into_iter()
                    .map(|p| (p.name.to_string(), p.metadata))
                    .collect(),
                require_known_member_id: version >= 4,
            };
            let out = kafka.groups.join(req).await;
            let members = out
                .members
                .into_iter()
                .map(|(id, instance, metadata)| {
                    JoinGroupResponseMember::default()
                        .with_member_id(StrBytes::from_string(id))
                        .with_group_instance_id(instance.map(StrBytes::from_string))
                        .with_metadata(metadata)
                })
                .collect();
            JoinGroupResponse::default()
                .with_error_code(out.error)
                .with_generation_id(out.generation)
                .with_protocol_type(out.protocol_type.map(StrBytes::from_string))
                .with_protocol_name(Some(StrBytes::from_string(
                    out.protocol_name.unwrap_or_default(),
                )))
                .with_leader(StrBytes::from_string(out.leader))
                .with_member_id(StrBytes::from_string(out.member_id))
                .with_members(members)
                .encode(&mut body, version)
                .ok()?;
        }
        RequestKind::SyncGroup(r) => {
            let assignments = r
                .assignments
                .into_iter()
                .map(|a| (a.member_id.to_string(), a.assignment))
                .collect();
            let out = kafka
                .groups
                .sync(&r.group_id.0, r.generation_id, &r.member_id, assignments)
                .await;
            SyncGroupResponse::default()
                .with_error_code(out.error)
                .with_protocol_type(out.protocol_type.map(StrBytes::from_string))
                .with_protocol_name(out.protocol_name.map(StrBytes::from_string))
                .with_assignment(out.assignment)
                .encode(&mut body, version)
                .ok()?;
        }
        RequestKind::Heartbeat(r) => {
            let error = kafka
                .groups
                .heartbeat(&r.group_id.0, r.generation_id, &r.member_id);
            HeartbeatResponse::default()
                .with_error_code(error)
                .encode(&mut body, version)
                .ok()?;
        }
        RequestKind::LeaveGroup(r) => {
            let error = kafka.groups.leave(&r.group_id.0, &r.member_id);
            LeaveGroupResponse::default()
                .with_error_code(error)
                .encode(&mut body, version)
                .ok()?;
        }
        RequestKind::OffsetCommit(r) => {
            let group = r.group_id.0.to_string();
            let denied =
                kafka
                    .groups
                    .check_commit(&group, r.generation_id_or_member_epoch, &r.member_id);
            let mut topics = Vec::new();
            let mut valid = Vec::new();
            // Per partition: the error it gets (validated first, then committed together).
            let mut results: Vec<(String, Vec<(i32, i16)>)> = Vec::new();
            for t in r.topics {
                let name = t.name.0.to_string();
                let mut parts = Vec::new();
                for p in t.partitions {
                    let error = if denied != code::NONE {
                        denied
                    } else {
                        commit_check(broker, &name, p.partition_index, p.committed_offset)
                    };
                    if error == code::NONE {
                        valid.push((
                            name.clone(),
                            p.partition_index as u32,
                            p.committed_offset as u64,
                        ));
                    }
                    parts.push((p.partition_index, error));
                }
                results.push((name, parts));
            }
            let stored = if valid.is_empty() {
                code::NONE
            } else {
                match broker.commit_as_given(&group, valid).await {
                    Ok(()) => code::NONE,
                    Err(e) => {
                        tracing::warn!(%group, error = %e, "Kafka offset commit failed");
                        group_error_code(&e)
                    }
                }
            };
            for (name, parts) in results {
                topics.push(
                    OffsetCommitResponseTopic::default()
                        .with_name(topic_name(&name))
                        .with_partitions(
                            parts
                                .into_iter()
                                .map(|(index, error)| {
                                    OffsetCommitResponsePartition::default()
                                        .with_partition_index(index)
                                        .with_error_code(if error == code::NONE {
                                            stored
                                        } else {
                                            error
                                        })
                                })
                                .collect(),
                        ),
                );
            }
            OffsetCommitResponse::default()
                .with_topics(topics)
                .encode(&mut body, version)
                .ok()?;
        }
        RequestKind::OffsetFetch(r) => {
            let group = r.group_id.0.to_string();
            let wanted: Vec<(String, Vec<i32>)> = match r.topics {
                Some(ts) => ts
                    .into_iter()
                    .map(|t| (t.name.0.to_string(), t.partition_indexes))
                    .collect(),
                // Null (v2+): every partition the group committed.
                None => {
                    let mut all: Vec<(String, Vec<i32>)> = Vec::new();
                    for (topic, partition, _) in broker.group_offsets(&group) {
                        match all.last_mut() {
                            Some((t, ps)) if *t == topic => ps.push(partition as i32),
                            _ => all.push((topic, vec![partition as i32])),
                        }
                    }
                    all
                }
            };
            let topics = wanted
                .into_iter()
                .map(|(name, parts)| {
                    let partitions = parts
                        .into_iter()
                        .map(|p| {
                            let offset = u32::try_from(p)
                                .ok()
                                .and_then(|p| broker.committed(&group, &name, p))
                                .map_or(-1, |o| o as i64);
                            OffsetFetchResponsePartition::default()
                                .with_partition_index(p)
                                .with_committed_offset(offset)
                                .with_committed_leader_epoch(-1)
                                .with_metadata(Some(StrBytes::from_static_str("")))
                        })
                        .collect();
                    OffsetFetchResponseTopic::default()
                        .with_name(topic_name(&name))
                        .with_partitions(partitions)
                })
                .collect();
            OffsetFetchResponse::default()
                .with_topics(topics)
                .encode(&mut body, version)
                .ok()?;
        }
        RequestKind::InitProducerId(r) => {
            let refused = match r.transactional_id.as_ref().map(|t| t.0.is_empty()) {
                None => None,
                Some(true) => Some(code::INVALID_REQUEST),
                Some(false) => Some(code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED),
            };
            let resp = if let Some(error) = refused {
                InitProducerIdResponse::default()
                    .with_error_code(error)
                    .with_producer_id(ProducerId(-1))
                    .with_producer_epoch(-1)
            } else {
                InitProducerIdResponse::default()
                    .with_producer_id(ProducerId(kafka.broker.producers().init()))
                    .with_producer_epoch(0)
            };
            resp.encode(&mut body, version).ok()?;
        }
        _ => return None,
    }
    let len = i32::try_from(body.len() - 4).ok()?;
    body[..4].copy_from_slice(&len.to_be_bytes());
    Some(Some(vec![body.freeze()]))
}

/// Most partitions one Fetch long-polls on (the rest are still read, just not watched).
const MAX_WATCHED_PARTITIONS: usize = 1024;

/// One pass over the partitions of a Fetch, without waiting: each partition's data (at least
/// the whole batch holding the fetch offset) within the request's byte limits.
async fn fetch_pass(
    broker: &Broker,
    topics: &[kafka_protocol::messages::fetch_request::FetchTopic],
    total_max: usize,
) -> (FetchAnswer, usize) {
    let mut responses = Vec::with_capacity(topics.len());
    let mut total = 0usize;
    for t in topics {
        let name = &*t.topic.0;
        let mut parts = Vec::with_capacity(t.partitions.len());
        for p in &t.partitions {
            let max =
                (p.partition_max_bytes.max(1) as usize).min(total_max.saturating_sub(total).max(1));
            // Once the response is full, the remaining partitions say where they stand but
            // bring no data (only the first data may exceed max_bytes, by one whole batch).
            let full = total > 0 && total >= total_max;
            let result = match u32::try_from(p.partition) {
                Ok(part) if p.fetch_offset >= 0 && full => {
                    let hwm = broker.list_offsets(name, part, OffsetSpec::Latest).await;
                    let start = broker.list_offsets(name, part, OffsetSpec::Earliest).await;
                    hwm.and_then(|h| {
                        start.map(|s| weir_broker::FetchResult {
                            chunks: Vec::new(),
                            high_watermark: h,
                            log_start_offset: s,
                        })
                    })
                }
                Ok(part) if p.fetch_offset >= 0 => {
                    broker
                        .fetch(name, part, p.fetch_offset as u64, max, 0, Duration::ZERO)
                        .await
                }
                _ => Err(BrokerError::UnknownPartition {
                    topic: name.to_string(),
                    partition: u32::MAX,
                }),
            };
            parts.push(match result {
                Ok(f) => {
                    total += f.len();
                    (
                        PartitionData::default()
                            .with_partition_index(p.partition)
                            .with_high_watermark(f.high_watermark as i64)
                            .with_last_stable_offset(f.high_watermark as i64)
                            .with_log_start_offset(f.log_start_offset as i64)
                            .with_aborted_transactions(Some(Vec::new()))
                            .with_preferred_read_replica(BrokerId(-1)),
                        f.chunks,
                    )
                }
                Err(e) => (
                    PartitionData::default()
                        .with_partition_index(p.partition)
                        .with_error_code(error_code(&e))
                        .with_high_watermark(-1)
                        .with_last_stable_offset(-1)
                        .with_log_start_offset(-1)
                        .with_preferred_read_replica(BrokerId(-1)),
                    Vec::new(),
                ),
            });
        }
        responses.push((t.topic.clone(), parts));
    }
    (responses, total)
}

/// A Fetch answer before encoding: per topic, per partition, its fields and its stored batches.
type FetchAnswer = Vec<(TopicName, Vec<(PartitionData, Vec<Bytes>)>)>;

/// Encodes a Fetch response (versions 4–11, the classic encoding) after `head` (size prefix
/// placeholder and response header) as pieces for one vectored write: the stored batches are
/// not copied. Each partition's `records` is the last field of its entry in these versions, so
/// the entry is encoded with empty records and its 4-byte length rewritten to the batches'
/// total, which follow as their own pieces. Patches the size prefix.
fn encode_fetch(
    head: BytesMut,
    version: i16,
    throttle_ms: i32,
    topics: FetchAnswer,
) -> Option<Vec<Bytes>> {
    if !(4..=11).contains(&version) {
        return None;
    }
    let mut pieces: Vec<Bytes> = Vec::new();
    let mut cur = head;
    let mut first: Option<BytesMut> = None;
    cur.put_i32(throttle_ms);
    if version >= 7 {
        cur.put_i16(code::NONE);
        cur.put_i32(0); // session id: no fetch sessions
    }
    cur.put_i32(i32::try_from(topics.len()).ok()?);
    let mut total = 0usize;
    for (name, partitions) in topics {
        let n = name.0.as_bytes();
        cur.put_i16(i16::try_from(n.len()).ok()?);
        cur.extend_from_slice(n);
        cur.put_i32(i32::try_from(partitions.len()).ok()?);
        for (data, chunks) in partitions {
            data.with_records(Some(Bytes::new()))
                .encode(&mut cur, version)
                .ok()?;
            let len: usize = chunks.iter().map(Bytes::len).sum();
            cur.truncate(cur.len() - 4);
            cur.put_i32(i32::try_from(len).ok()?);
            if len > 0 {
                let piece = cur.split();
                total += piece.len() + len;
                match first {
                    None => first = Some(piece),
                    Some(_) => pieces.push(piece.freeze()),
                }
                pieces.extend(chunks.into_iter().filter(|c| !c.is_empty()));
            }
        }
    }
    total += cur.len();
    let size = i32::try_from(total - 4).ok()?.to_be_bytes();
    match first.as_mut() {
        Some(f) => f[..4].copy_from_slice(&size),
        None => cur[..4].copy_from_slice(&size),
    }
    let mut out = Vec::with_capacity(pieces.len() + 2);
    if let Some(f) = first {
        out.push(f.freeze());
    }
    out.extend(pieces);
    if !cur.is_empty() {
        out.push(cur.freeze());
    }
    Some(out)
}

/// Whether an offset may be committed for a partition: `NONE` or the Kafka error code. As
/// Kafka does, an offset is stored as given, inside the log or not: a consumer commits where a
/// `seek` put it, or a position that retention has since passed, and whether it can be read is
/// decided when it is fetched (OFFSET_OUT_OF_RANGE there, then the client's reset policy).
/// Refusing such a commit stops some clients for good. Only a negative offset, which the
/// offset store cannot hold, is refused.
fn commit_check(broker: &Broker, topic: &str, partition: i32, offset: i64) -> i16 {
    let Ok(part) = u32::try_from(partition) else {
        return code::UNKNOWN_TOPIC_OR_PARTITION;
    };
    if broker.partition_count(topic).is_none_or(|n| part >= n) {
        return code::UNKNOWN_TOPIC_OR_PARTITION;
    }
    if offset < 0 {
        return code::OFFSET_OUT_OF_RANGE;
    }
    code::NONE
}

/// A topic configuration from a CreateTopics entry: partition count, replication factor 1 (or
/// the default), and the topic configs weir understands; anything else is refused by name.
fn topic_config(
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
    for c in &t.configs {
        let value = c.value.as_ref().map(|v| v.to_string()).unwrap_or_default();
        let number = || {
            value.parse::<i64>().map_err(|_| {
                (
                    code::INVALID_CONFIG,
                    format!("{} = {value:?} is not a number", c.name),
                )
            })
        };
        match &*c.name.to_string() {
            "retention.ms" => config.retention_ms = u64::try_from(number()?).ok(),
            "retention.bytes" => config.retention_bytes = u64::try_from(number()?).ok(),
            "segment.bytes" => {
                config.segment_bytes = u64::try_from(number()?).map_err(|_| {
                    (
                        code::INVALID_CONFIG,
                        "segment.bytes must be positive".to_string(),
                    )
                })?
            }
            "max.message.bytes" => {
                config.max_batch_bytes = u32::try_from(number()?).map_err(|_| {
                    (
                        code::INVALID_CONFIG,
                        "max.message.bytes out of range".to_string(),
                    )
                })?
            }
            "message.timestamp.type" => {
                config.timestamp_type = match value.as_str() {
                    "CreateTime" => weir_broker::topic::TimestampType::CreateTime,
                    "LogAppendTime" => weir_broker::topic::TimestampType::LogAppendTime,
                    _ => {
                        return Err((
                            code::INVALID_CONFIG,
                            format!(
                                "message.timestamp.type = {value:?}: use CreateTime or LogAppendTime"
                            ),
                        ));
                    }
                }
            }
            other => {
                return Err((
                    code::INVALID_CONFIG,
                    format!("topic config {other:?} is not supported"),
                ));
            }
        }
    }
    Ok(config)
}

/// DescribeConfigs resource types.
const TOPIC_RESOURCE: i8 = 2;
const BROKER_RESOURCE: i8 = 4;
/// DescribeConfigs config source: DYNAMIC_TOPIC_CONFIG.
const CONFIG_SOURCE_TOPIC: i8 = 1;

/// A topic's configuration under Kafka's names.
fn topic_configs(c: &weir_broker::TopicConfig) -> Vec<(&'static str, String)> {
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

/// Snake-case names of the APIs served, as metrics label them.
fn api_name(api: ApiKey) -> &'static str {
    match api {
        ApiKey::Produce => "produce",
        ApiKey::Fetch => "fetch",
        ApiKey::ListOffsets => "list_offsets",
        ApiKey::Metadata => "metadata",
        ApiKey::OffsetCommit => "offset_commit",
        ApiKey::OffsetFetch => "offset_fetch",
        ApiKey::FindCoordinator => "find_coordinator",
        ApiKey::JoinGroup => "join_group",
        ApiKey::Heartbeat => "heartbeat",
        ApiKey::LeaveGroup => "leave_group",
        ApiKey::SyncGroup => "sync_group",
        ApiKey::ApiVersions => "api_versions",
        ApiKey::CreateTopics => "create_topics",
        ApiKey::DeleteTopics => "delete_topics",
        ApiKey::DescribeConfigs => "describe_configs",
        ApiKey::InitProducerId => "init_producer_id",
        _ => "other",
    }
}

fn range(api: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED
        .iter()
        .find(|(k, _, _)| *k == api)
        .map(|(_, min, max)| (*min, *max))
}

fn api_versions_reply(correlation: i32, version: i16, error: i16) -> Bytes {
    let keys = SUPPORTED
        .iter()
        .map(|(k, min, max)| {
            ApiVersion::default()
                .with_api_key(*k as i16)
                .with_min_version(*min)
                .with_max_version(*max)
        })
        .collect();
    let resp = ApiVersionsResponse::default()
        .with_error_code(error)
        .with_api_keys(keys);
    let mut out = BytesMut::new();
    out.put_i32(0);
    // ApiVersions responses always use header v0, whatever the request version.
    ResponseHeader::default()
        .with_correlation_id(correlation)
        .encode(&mut out, 0)
        .expect("header encodes");
    resp.encode(&mut out, version).expect("ApiVersions encodes");
    let len = (out.len() - 4) as i32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    out.freeze()
}

fn metadata_topic(name: &str, partitions: Option<usize>, error: i16) -> MetadataResponseTopic {
    MetadataResponseTopic::default()
        .with_error_code(error)
        .with_name(Some(topic_name(name)))
        .with_partitions(
            (0..partitions.unwrap_or(0))
                .map(|p| {
                    MetadataResponsePartition::default()
                        .with_partition_index(p as i32)
                        .with_leader_id(BrokerId(0))
                        .with_leader_epoch(0)
                        .with_replica_nodes(vec![BrokerId(0)])
                        .with_isr_nodes(vec![BrokerId(0)])
                })
                .collect(),
        )
}

/// The first half of a partition's produce, in request order: every batch is checked, then
/// each is written (its sync not yet awaited). A connection can write its next request's
/// batches while this one's sync is under way; [`produce_partition_finish`] waits. Batches of
/// idempotent producers go through the broker's sequence checks
/// ([`Broker::produce_sequenced`]).
async fn produce_partition_start(
    kafka: &Kafka,
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
    for (h, batch) in batches {
        // `memory`: the request's, or the partition's records' own copy.
        let write = broker
            .produce_sequenced(topic, part, &h, batch, |b| owned_enough(b, memory).0)
            .await
            .map_err(|e| sequenced_code(&e))?;
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
/// answered (see [`handle_pipelined`]).
struct ProduceInFlight {
    version: i16,
    acks: i16,
    throttle: Duration,
    /// The response so far: size prefix and header.
    body: BytesMut,
    /// Per topic, per partition index: its writes, or why it was refused.
    topics: Vec<(String, Vec<(i32, PartitionStart)>)>,
}

impl ProduceInFlight {
    async fn finish(self, kafka: &Kafka) -> Option<Option<Vec<Bytes>>> {
        let ProduceInFlight {
            version,
            acks,
            throttle,
            mut body,
            topics,
        } = self;
        let mut responses = Vec::with_capacity(topics.len());
        for (name, parts) in topics {
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
                    .with_partition_responses(out),
            );
        }
        if acks == 0 {
            return Some(None);
        }
        ProduceResponse::default()
            .with_responses(responses)
            .with_throttle_time_ms(throttle_ms(throttle))
            .encode(&mut body, version)
            .ok()?;
        let len = i32::try_from(body.len() - 4).ok()?;
        body[..4].copy_from_slice(&len.to_be_bytes());
        Some(Some(vec![body.freeze()]))
    }
}

/// Serves the Kafka protocol on `listener` until `shutdown` begins: connections and the
/// group clock run as tasks of the shutdown. Once it begins, waiting joins and syncs are
/// answered (retriable), and each connection stops taking requests, answers those it has
/// read and closes; the binary waits for them, then closes the broker.
pub async fn serve(
    listener: TcpListener,
    broker: Broker,
    advertised: Advertised,
    shutdown: Shutdown,
) {
    let kafka = Arc::new(Kafka::new(broker, advertised));
    // The groups' sessions and rebalance timeouts run on the broker's one group clock (its
    // maintenance task), beside the native groups', and the broker's admin views describe
    // them; the broker forgets them once the listener is gone.
    let coordinator: Arc<dyn weir_broker::group::ForeignCoordinator> = kafka.groups.clone();
    kafka
        .broker
        .register_coordinator(Arc::downgrade(&coordinator));
    drop(coordinator);
    let mut acceptor = Acceptor::new(
        listener,
        "kafka",
        kafka.broker.admission().clone(),
        shutdown.clone(),
    );
    while let Some(accepted) = acceptor.accept().await {
        let kafka = Arc::clone(&kafka);
        let stop = shutdown.begun();
        let span = tracing::info_span!("kafka", peer = %accepted.peer);
        shutdown.spawn(
            async move {
                let _slot = accepted.slot;
                if let Err(e) = connection(accepted.stream, &kafka, stop).await {
                    tracing::debug!(error = %e, "Kafka connection ended");
                }
            }
            .instrument(span),
        );
    }
    tracing::info!("Kafka listener closed: draining connections");
    kafka.groups.clear();
}

/// A Kafka connection that sends nothing this long is closed (Kafka's
/// `connections.max.idle.ms` default).
const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Once a request's size is read (and memory budget granted for it), its body must arrive
/// within this long.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// A response the client does not take within this long closes its connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Requests read ahead of the one being handled, per connection. Kafka answers a connection's
/// requests in order, one at a time; reading the next few while one is handled overlaps the
/// socket reads with the appends. Bounds a connection's buffered requests to this many times
/// [`MAX_REQUEST_BYTES`].
const READ_AHEAD: usize = 2;

/// Writes `pieces` in order with vectored writes.
async fn write_pieces(
    writer: &mut tokio::net::tcp::OwnedWriteHalf,
    mut pieces: Vec<Bytes>,
) -> std::io::Result<()> {
    let mut i = 0;
    while i < pieces.len() {
        let slices: Vec<std::io::IoSlice<'_>> = pieces[i..]
            .iter()
            .take(64)
            .map(|b| std::io::IoSlice::new(b))
            .collect();
        let mut n = writer.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 && i < pieces.len() {
            let len = pieces[i].len();
            if n >= len {
                n -= len;
                i += 1;
            } else {
                bytes::Buf::advance(&mut pieces[i], n);
                n = 0;
            }
        }
    }
    Ok(())
}

/// Produce requests of one connection that may await their syncs at once (librdkafka keeps up
/// to five in flight when idempotent, more otherwise). Past this many the connection takes no
/// new request until the oldest is answered.
const MAX_SYNCING: usize = 8;

/// An answer in the making: the reply and the client's throttle time.
type Answer<'a> = std::pin::Pin<Box<dyn Future<Output = (Reply, Duration)> + Send + 'a>>;

/// Writes one reply. Over a quota, the connection then takes no new request until
/// `muted_until` (the read-ahead full, the socket is not read either), as a Kafka broker
/// mutes the channel; answers to requests already taken still go out. The throttle times of
/// pipelined requests overlap (the latest deadline wins), they do not add up.
async fn answer(
    writer: &mut tokio::net::tcp::OwnedWriteHalf,
    reply: Reply,
    throttle: Duration,
    muted_until: &mut Option<tokio::time::Instant>,
) -> std::io::Result<()> {
    let written = match reply {
        Reply::Response(r) => tokio::time::timeout(WRITE_TIMEOUT, writer.write_all(&r)).await,
        Reply::Parts(pieces) => {
            tokio::time::timeout(WRITE_TIMEOUT, write_pieces(writer, pieces)).await
        }
        Reply::Silent => Ok(Ok(())),
        Reply::Close => return Err(std::io::Error::other("request not understood")),
    };
    match written {
        Ok(r) => r?,
        Err(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client did not read its response",
            ));
        }
    }
    if !throttle.is_zero() {
        let until = tokio::time::Instant::now() + throttle;
        *muted_until = Some(muted_until.map_or(until, |m| m.max(until)));
    }
    Ok(())
}

async fn connection(
    stream: TcpStream,
    kafka: &Kafka,
    stop: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let (mut reader, mut writer) = stream.into_split();
    let (tx, mut rx) =
        tokio::sync::mpsc::channel::<(Bytes, weir_broker::flow::BudgetPermit)>(READ_AHEAD);
    let budget = kafka.broker.memory().clone();
    let read = async move {
        tokio::pin!(stop);
        loop {
            let mut len = [0u8; 4];
            // A connection silent this long is closed (Kafka's connections.max.idle.ms). At
            // shutdown no new request is started: the handler answers those read, then the
            // connection closes, and the client retries elsewhere or later.
            let next = tokio::time::timeout(IDLE_TIMEOUT, reader.read_exact(&mut len));
            let read = tokio::select! {
                biased;
                _ = &mut stop => return Ok(()),
                r = next => r,
            };
            match read {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return Ok(()),
                Err(_) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "idle connection closed",
                    ));
                }
            }
            let len = i32::from_be_bytes(len);
            if len < 0 || len as usize > MAX_REQUEST_BYTES {
                return Err(std::io::Error::other(format!(
                    "request of {len} bytes refused"
                )));
            }
            let len = len as usize;
            // A large request is read only with memory budget in hand: while none is left,
            // the socket is not read and TCP pushes back on the producer.
            let permit = budget.acquire(len).await;
            // Exactly its size, budget in hand: read without regrowing and copying, and a
            // batch kept in place holds no slack (a buffer grown by doubling could be twice
            // the request). A size prefix whose body never comes holds the budget, not
            // memory: untouched capacity is address space, and the body times out below.
            let mut frame = Vec::with_capacity(len);
            // Budget granted, the body must arrive promptly: a sender that trickles it would
            // otherwise hold the budget for as long as it likes.
            tokio::time::timeout(
                BODY_TIMEOUT,
                (&mut reader).take(len as u64).read_to_end(&mut frame),
            )
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("a {len}-byte request did not arrive within {BODY_TIMEOUT:?}"),
                )
            })??;
            if frame.len() < len {
                return Ok(());
            }
            if tx.send((Bytes::from(frame), permit)).await.is_err() {
                // The handler stopped (it closed the connection).
                return Ok(());
            }
        }
    };
    let handle_all = async {
        // Produce requests whose batches are written, awaiting their syncs, oldest first. Their
        // answers go out in request order, but the appends of consecutive produces overlap
        // their syncs (and share them: group commit), as a client's pipelined produces do on
        // the native protocol.
        let mut syncing: FuturesOrdered<Answer<'_>> = FuturesOrdered::new();
        let mut reading = true;
        let mut muted_until = None;
        loop {
            let frame = tokio::select! {
                biased;
                Some((reply, throttle)) = syncing.next(), if !syncing.is_empty() => {
                    answer(&mut writer, reply, throttle, &mut muted_until).await?;
                    continue;
                }
                _ = tokio::time::sleep_until(muted_until.unwrap_or_else(tokio::time::Instant::now)),
                    if muted_until.is_some() => {
                    muted_until = None;
                    continue;
                }
                f = rx.recv(), if reading && muted_until.is_none() && syncing.len() < MAX_SYNCING => f,
                else => return Ok(()),
            };
            let Some((frame, permit)) = frame else {
                reading = false;
                continue;
            };
            // Only produce data is held for the whole request; other requests (a JoinGroup
            // can wait minutes) give their budget back once read.
            if frame.get(0..2) == Some(&[0, 0][..]) {
                match handle_step(kafka, frame).await {
                    Step::Syncing(in_flight, throttle) => syncing.push_back(Box::pin(async move {
                        let reply = reply_of(in_flight.finish(kafka).await);
                        drop(permit);
                        (reply, throttle)
                    })),
                    Step::Done(reply, throttle) => {
                        drop(permit);
                        // A request not understood closes the connection once the answers
                        // before it are out: nothing read after it is handled.
                        if matches!(reply, Reply::Close) {
                            reading = false;
                        }
                        syncing.push_back(Box::pin(std::future::ready((reply, throttle))));
                    }
                }
                continue;
            }
            drop(permit);
            // Anything else is handled once every produce before it is answered: requests
            // other than produce see the connection as strictly one request at a time.
            while let Some((reply, throttle)) = syncing.next().await {
                answer(&mut writer, reply, throttle, &mut muted_until).await?;
            }
            // Read while the connection was not muted, it waits out a mute those answers set.
            if let Some(until) = muted_until.take() {
                tokio::time::sleep_until(until).await;
            }
            let (reply, throttle) = handle_throttled(kafka, frame).await;
            answer(&mut writer, reply, throttle, &mut muted_until).await?;
        }
    };
    // The handler finishes what was read before the reader stopped (the reader's end drops
    // its sender); a handler error, or a request it cannot understand, ends both at once.
    tokio::pin!(read, handle_all);
    let mut read_result = None;
    loop {
        tokio::select! {
            r = &mut read, if read_result.is_none() => read_result = Some(r),
            h = &mut handle_all => return h.and(read_result.unwrap_or(Ok(()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{
        FindCoordinatorRequest, InitProducerIdRequest, MetadataRequest, ProduceRequest,
        TransactionalId,
    };

    use super::*;

    fn request(api: ApiKey, version: i16, body: &impl Encodable) -> Bytes {
        let mut b = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(42)
            .encode(&mut b, api.request_header_version(version))
            .unwrap();
        body.encode(&mut b, version).unwrap();
        b.freeze()
    }

    fn response<T: Decodable>(api: ApiKey, version: i16, reply: Reply) -> T {
        let mut b = match reply {
            Reply::Response(b) => b,
            Reply::Parts(pieces) => Bytes::from(pieces.concat()),
            other => panic!("expected a response, got {other:?}"),
        };
        let len = bytes::Buf::get_i32(&mut b);
        assert_eq!(len as usize, b.len(), "size prefix");
        let h = ResponseHeader::decode(&mut b, api.response_header_version(version)).unwrap();
        assert_eq!(h.correlation_id, 42);
        T::decode(&mut b, version).unwrap()
    }

    async fn broker(dir: &std::path::Path) -> (Broker, Kafka) {
        let broker = Broker::open(weir_broker::BrokerConfig {
            data_dir: dir.to_path_buf(),
            ..Default::default()
        })
        .unwrap();
        broker.create_topic("a", None).await.unwrap();
        broker.create_topic("b", None).await.unwrap();
        let kafka = Kafka::new(
            broker.clone(),
            Advertised {
                host: "127.0.0.1".into(),
                port: 9092,
            },
        );
        (broker, kafka)
    }

    #[test]
    fn a_refused_request_is_named_by_its_client_id_read_by_hand() {
        let mut head = vec![0, 99, 0, 42, 0, 0, 0, 7, 0, 5];
        head.extend_from_slice(b"kcat!");
        assert_eq!(frame_client_id(&head), "kcat!");
        assert_eq!(
            frame_client_id(&head[..12]),
            "kc",
            "cut short: what is there"
        );
        assert_eq!(frame_client_id(&head[..9]), "");
        assert_eq!(
            frame_client_id(&[0, 99, 0, 42, 0, 0, 0, 7, 0xff, 0xff]),
            "",
            "null"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn list_offsets_by_a_time_after_every_record_answers_minus_one() {
        use kafka_protocol::messages::ListOffsetsRequest;
        use kafka_protocol::messages::list_offsets_request::{
            ListOffsetsPartition, ListOffsetsTopic,
        };
        let dir = tempfile::tempdir().unwrap();
        let (broker, kafka) = broker(dir.path()).await;
        let mut b = weir_batch::BatchBuilder::new(1_000);
        b.push(weir_batch::RecordSpec::value(b"x"));
        broker
            .produce("a", Some(0), None, Bytes::from(b.build()))
            .await
            .unwrap();
        for (ts, want) in [(500, 0), (1_000, 0), (1_001, -1), (-1, 1), (-2, 0)] {
            let req = ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_topics(vec![
                    ListOffsetsTopic::default()
                        .with_name(topic_name("a"))
                        .with_partitions(vec![
                            ListOffsetsPartition::default()
                                .with_partition_index(0)
                                .with_timestamp(ts),
                        ]),
                ]);
            let r: ListOffsetsResponse = response(
                ApiKey::ListOffsets,
                5,
                handle(&kafka, request(ApiKey::ListOffsets, 5, &req)).await,
            );
            let p = &r.topics[0].partitions[0];
            assert_eq!(
                (p.error_code, p.offset),
                (code::NONE, want),
                "timestamp {ts}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn offsets_outside_the_log_are_committed_as_given_as_kafka_does() {
        use kafka_protocol::messages::offset_commit_request::{
            OffsetCommitRequestPartition, OffsetCommitRequestTopic,
        };
        use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
        use kafka_protocol::messages::{GroupId, OffsetCommitRequest, OffsetFetchRequest};
        let dir = tempfile::tempdir().unwrap();
        let (_broker, kafka) = broker(dir.path()).await;
        // Topic "a" is empty: 1,000 is past its end (a seek, or a position from before
        // retention); -1 is no offset at all.
        for (offset, want) in [
            (1000, code::NONE),
            (0, code::NONE),
            (-1, code::OFFSET_OUT_OF_RANGE),
        ] {
            let req = OffsetCommitRequest::default()
                .with_group_id(GroupId(StrBytes::from_static_str("g")))
                .with_generation_id_or_member_epoch(-1)
                .with_topics(vec![
                    OffsetCommitRequestTopic::default()
                        .with_name(topic_name("a"))
                        .with_partitions(vec![
                            OffsetCommitRequestPartition::default()
                                .with_partition_index(0)
                                .with_committed_offset(offset),
                        ]),
                ]);
            let r: OffsetCommitResponse = response(
                ApiKey::OffsetCommit,
                7,
                handle(&kafka, request(ApiKey::OffsetCommit, 7, &req)).await,
            );
            assert_eq!(
                r.topics[0].partitions[0].error_code, want,
                "offset {offset}"
            );
            if want != code::NONE {
                continue;
            }
            let req = OffsetFetchRequest::default()
                .with_group_id(GroupId(StrBytes::from_static_str("g")))
                .with_topics(Some(vec![
                    OffsetFetchRequestTopic::default()
                        .with_name(topic_name("a"))
                        .with_partition_indexes(vec![0]),
                ]));
            let r: OffsetFetchResponse = response(
                ApiKey::OffsetFetch,
                5,
                handle(&kafka, request(ApiKey::OffsetFetch, 5, &req)).await,
            );
            assert_eq!(r.topics[0].partitions[0].committed_offset, offset);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn metadata_lists_all_topics_for_null_and_for_a_v0_empty_list() {
        let dir = tempfile::tempdir().unwrap();
        let (_broker, adv) = broker(dir.path()).await;
        for (version, topics) in [(0, Some(vec![])), (8, None)] {
            let req = MetadataRequest::default().with_topics(topics);
            let r: MetadataResponse = response(
                ApiKey::Metadata,
                version,
                handle(&adv, request(ApiKey::Metadata, version, &req)).await,
            );
            assert_eq!(r.topics.len(), 2, "version {version}");
            assert_eq!(r.brokers[0].port, 9092);
        }
        // v1+: an empty list asks for no topic; an unknown one gets its error.
        let req = MetadataRequest::default().with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(topic_name("nope"))),
        ]));
        let r: MetadataResponse = response(
            ApiKey::Metadata,
            8,
            handle(&adv, request(ApiKey::Metadata, 8, &req)).await,
        );
        assert_eq!(r.topics[0].error_code, code::UNKNOWN_TOPIC_OR_PARTITION);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn produce_acks_zero_is_silent_and_bad_batches_get_corrupt_message() {
        let dir = tempfile::tempdir().unwrap();
        let (broker, adv) = broker(dir.path()).await;
        let mut good = weir_batch::BatchBuilder::new(0);
        good.push(weir_batch::RecordSpec::value(b"v"));
        let good = Bytes::from(good.build());
        let mut bad = good.to_vec();
        *bad.last_mut().unwrap() ^= 1;
        let produce = |records: Bytes, acks: i16| {
            ProduceRequest::default()
                .with_acks(acks)
                .with_timeout_ms(1000)
                .with_topic_data(vec![
                    TopicProduceData::default()
                        .with_name(topic_name("a"))
                        .with_partition_data(vec![
                            PartitionProduceData::default()
                                .with_index(0)
                                .with_records(Some(records)),
                        ]),
                ])
        };
        let silent = handle(&adv, request(ApiKey::Produce, 8, &produce(good.clone(), 0))).await;
        assert!(matches!(silent, Reply::Silent));
        let r: ProduceResponse = response(
            ApiKey::Produce,
            8,
            handle(&adv, request(ApiKey::Produce, 8, &produce(good, -1))).await,
        );
        let p = &r.responses[0].partition_responses[0];
        assert_eq!(
            (p.error_code, p.base_offset),
            (code::NONE, 1),
            "after the acks=0 record at offset 0"
        );
        let r: ProduceResponse = response(
            ApiKey::Produce,
            8,
            handle(
                &adv,
                request(ApiKey::Produce, 8, &produce(Bytes::from(bad), -1)),
            )
            .await,
        );
        assert_eq!(
            r.responses[0].partition_responses[0].error_code,
            code::CORRUPT_MESSAGE
        );
        // A batch marked gzip whose records are not gzip, with a CRC that holds: refused
        // too (INVALID_RECORD), so that no reader that decompresses (HTTP, WebSocket, native) meets it later.
        let mut not_gzip = weir_batch::BatchBuilder::new(0);
        not_gzip.push(weir_batch::RecordSpec::value(b"plain"));
        let mut not_gzip = not_gzip.build();
        not_gzip[22] |= 1;
        weir_batch::header::reseal(&mut not_gzip);
        assert!(weir_batch::validate(&not_gzip).is_ok(), "the CRC holds");
        let r: ProduceResponse = response(
            ApiKey::Produce,
            8,
            handle(
                &adv,
                request(ApiKey::Produce, 8, &produce(Bytes::from(not_gzip), -1)),
            )
            .await,
        );
        let p = &r.responses[0].partition_responses[0];
        // Not retriable, unlike a damaged CRC: the producer built it wrong.
        assert_eq!(p.error_code, code::INVALID_RECORD);
        assert!(
            p.error_message.as_deref().unwrap_or("").contains("Gzip"),
            "{:?}",
            p.error_message
        );
        assert_eq!(
            broker.topic_info("a").unwrap().partitions[0].high_watermark,
            2,
            "nothing bad stored"
        );
    }

    fn produce_to(topic: &str, records: Bytes) -> ProduceRequest {
        ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(1000)
            .with_topic_data(vec![
                TopicProduceData::default()
                    .with_name(topic_name(topic))
                    .with_partition_data(vec![
                        PartitionProduceData::default()
                            .with_index(0)
                            .with_records(Some(records)),
                    ]),
            ])
    }

    async fn produce_one(kafka: &Kafka, topic: &str, records: Bytes) -> (i16, i64) {
        let r: ProduceResponse = response(
            ApiKey::Produce,
            8,
            handle(
                kafka,
                request(ApiKey::Produce, 8, &produce_to(topic, records)),
            )
            .await,
        );
        let p = &r.responses[0].partition_responses[0];
        (p.error_code, p.base_offset)
    }

    fn idempotent(pid: i64, seq: i32, values: &[&[u8]]) -> Bytes {
        let mut b = weir_batch::BatchBuilder::new(0).producer(pid, 0, seq);
        for v in values {
            b.push(weir_batch::RecordSpec::value(v));
        }
        Bytes::from(b.build())
    }

    /// `serve` on 127.0.0.1, on a port of its own, until `stop`.
    struct Listening {
        addr: std::net::SocketAddr,
        shutdown: Shutdown,
    }

    impl Listening {
        async fn start(broker: Broker) -> Listening {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let shutdown = Shutdown::new();
            {
                // The group clock serve registers with runs in the broker's maintenance.
                let broker = broker.clone();
                let stop = shutdown.begun();
                shutdown.spawn(async move { broker.run_maintenance(stop).await });
            }
            shutdown.spawn(serve(
                listener,
                broker,
                Advertised {
                    host: "127.0.0.1".into(),
                    port: i32::from(addr.port()),
                },
                shutdown.clone(),
            ));
            Listening { addr, shutdown }
        }

        async fn stop(self) {
            self.shutdown.begin();
            assert!(self.shutdown.drain(Duration::from_secs(10)).await);
        }
    }

    async fn always_topic(broker: &Broker, name: &str) {
        let config = weir_broker::TopicConfig {
            durability: weir_broker::topic::DurabilitySetting::Always,
            ..Default::default()
        };
        broker.create_topic(name, Some(config)).await.unwrap();
    }

    fn produced(reply: Reply) -> (i16, i64) {
        let r: ProduceResponse = response(ApiKey::Produce, 8, reply);
        let p = &r.responses[0].partition_responses[0];
        (p.error_code, p.base_offset)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn produces_are_written_before_earlier_ones_are_answered_and_a_retry_waits_for_the_first()
    {
        let dir = tempfile::tempdir().unwrap();
        let (broker, kafka) = broker(dir.path()).await;
        always_topic(&broker, "s").await;
        let pid = kafka.broker.producers().init();
        let first = request(
            ApiKey::Produce,
            8,
            &produce_to("s", idempotent(pid, 0, &[b"a", b"b"])),
        );
        let second = request(
            ApiKey::Produce,
            8,
            &produce_to("s", idempotent(pid, 2, &[b"c"])),
        );
        // Both written, neither answered yet.
        let Step::Syncing(a, _) = handle_step(&kafka, first.clone()).await else {
            panic!("a produce to an fsync topic awaits its sync")
        };
        let Step::Syncing(b, _) = handle_step(&kafka, second).await else {
            panic!("a produce to an fsync topic awaits its sync")
        };
        // The first batch retried before its answer: a duplicate that writes nothing and
        // is answered with the first write's offset once that write is durable.
        let Step::Syncing(retry, _) = handle_step(&kafka, first).await else {
            panic!("a retry awaits the first write")
        };
        // Finished out of order here (a connection answers in order): each stands alone, and
        // the second was written after the first without waiting for the first's answer.
        assert_eq!(produced(reply_of(b.finish(&kafka).await)), (code::NONE, 2));
        assert_eq!(
            produced(reply_of(retry.finish(&kafka).await)),
            (code::NONE, 0)
        );
        assert_eq!(produced(reply_of(a.finish(&kafka).await)), (code::NONE, 0));
        assert_eq!(
            broker
                .list_offsets("s", 0, OffsetSpec::Latest)
                .await
                .unwrap(),
            3
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pipelined_requests_on_one_connection_are_answered_in_order() {
        use kafka_protocol::messages::list_offsets_request::{
            ListOffsetsPartition, ListOffsetsTopic,
        };
        use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let (broker, _) = broker(dir.path()).await;
        always_topic(&broker, "s").await;
        let listener = Listening::start(broker.clone()).await;
        let addr = listener.addr;
        // The helper's requests carry correlation id 42 at bytes 4..8 (after the api key and
        // the version), and no size prefix.
        let with_correlation = |req: Bytes, id: i32| {
            let mut b = BytesMut::new();
            b.put_i32(req.len() as i32);
            b.extend_from_slice(&req);
            b[8..12].copy_from_slice(&id.to_be_bytes());
            b.freeze()
        };
        // 30 produces of 2 records each, then a ListOffsets, written at once: more than the
        // connection lets await their syncs together.
        const N: i32 = 30;
        let mut wire = Vec::new();
        for i in 1..=N {
            let batch = Bytes::from({
                let mut b = weir_batch::BatchBuilder::new(0);
                b.push(weir_batch::RecordSpec::value(b"x"));
                b.push(weir_batch::RecordSpec::value(b"y"));
                b.build()
            });
            let req = request(ApiKey::Produce, 8, &produce_to("s", batch));
            wire.extend_from_slice(&with_correlation(req, i));
        }
        let list = ListOffsetsRequest::default()
            .with_replica_id(kafka_protocol::messages::BrokerId(-1))
            .with_topics(vec![
                ListOffsetsTopic::default()
                    .with_name(topic_name("s"))
                    .with_partitions(vec![
                        ListOffsetsPartition::default()
                            .with_partition_index(0)
                            .with_timestamp(-1),
                    ]),
            ]);
        let req = request(ApiKey::ListOffsets, 5, &list);
        wire.extend_from_slice(&with_correlation(req, N + 1));
        let mut conn = TcpStream::connect(addr).await.unwrap();
        conn.write_all(&wire).await.unwrap();
        for i in 1..=N + 1 {
            let len = conn.read_i32().await.unwrap();
            let mut b = vec![0u8; len as usize];
            conn.read_exact(&mut b).await.unwrap();
            let mut b = Bytes::from(b);
            let api = if i <= N {
                ApiKey::Produce
            } else {
                ApiKey::ListOffsets
            };
            let version = if i <= N { 8 } else { 5 };
            let h = ResponseHeader::decode(&mut b, api.response_header_version(version)).unwrap();
            assert_eq!(h.correlation_id, i, "answers in request order");
            if i <= N {
                let r = ProduceResponse::decode(&mut b, version).unwrap();
                let p = &r.responses[0].partition_responses[0];
                assert_eq!(
                    (p.error_code, p.base_offset),
                    (code::NONE, 2 * (i - 1) as i64)
                );
            } else {
                // Answered after every produce before it, and sees them all.
                let r = ListOffsetsResponse::decode(&mut b, version).unwrap();
                assert_eq!(r.topics[0].partitions[0].offset, 2 * N as i64);
            }
        }
        listener.stop().await;
    }

    /// A request's lone batch is stored as it arrived: what the broker holds is the request's
    /// own memory, not a copy of it. A batch that is a small part of a request is copied, so
    /// that it does not keep the whole request alive.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lone_batch_is_stored_without_a_copy() {
        let dir = tempfile::tempdir().unwrap();
        let (broker, kafka) = broker(dir.path()).await;
        let mut b = weir_batch::BatchBuilder::new(0);
        for _ in 0..100 {
            b.push(weir_batch::RecordSpec::value(&[7u8; 100]));
        }
        let req = request(ApiKey::Produce, 8, &produce_to("a", Bytes::from(b.build())));
        let span = req.as_ptr_range();
        let r: ProduceResponse = response(ApiKey::Produce, 8, handle(&kafka, req).await);
        assert_eq!(r.responses[0].partition_responses[0].error_code, code::NONE);
        let f = broker
            .fetch("a", 0, 0, 1 << 20, 0, Duration::ZERO)
            .await
            .unwrap();
        let stored = f.chunks[0].as_ptr();
        assert!(
            span.contains(&stored),
            "the stored batch at {stored:?} was copied out of the request at {span:?}"
        );

        let batch = |n: usize| {
            let mut b = weir_batch::BatchBuilder::new(0);
            for _ in 0..n {
                b.push(weir_batch::RecordSpec::value(&[7u8; 100]));
            }
            Some(Bytes::from(b.build()))
        };
        let to = |topic: &str, records| {
            TopicProduceData::default()
                .with_name(topic_name(topic))
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(0)
                        .with_records(records),
                ])
        };
        let two = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(1000)
            .with_topic_data(vec![to("a", batch(1000)), to("b", batch(10))]);
        let req = request(ApiKey::Produce, 8, &two);
        let span = req.as_ptr_range();
        let r: ProduceResponse = response(ApiKey::Produce, 8, handle(&kafka, req).await);
        assert!(
            r.responses
                .iter()
                .all(|t| t.partition_responses[0].error_code == code::NONE)
        );
        let at = |topic: &'static str| {
            let broker = broker.clone();
            async move {
                let f = broker
                    .fetch(topic, 0, 0, 1 << 20, 0, Duration::ZERO)
                    .await
                    .unwrap();
                f.chunks.last().unwrap().as_ptr()
            }
        };
        assert!(span.contains(&at("a").await), "the large batch was copied");
        assert!(
            !span.contains(&at("b").await),
            "the small batch keeps the request alive"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idempotent_resends_are_recognised_after_the_broker_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let (broker, kafka) = broker(dir.path()).await;
        let pid = broker.producers().init();
        let (first, second) = (
            idempotent(pid, 0, &[b"a", b"b"]),
            idempotent(pid, 2, &[b"c"]),
        );
        assert_eq!(
            produce_one(&kafka, "a", first.clone()).await,
            (code::NONE, 0)
        );
        assert_eq!(
            produce_one(&kafka, "a", second.clone()).await,
            (code::NONE, 2)
        );
        drop(kafka);
        broker.close().await.unwrap();
        drop(broker);

        let broker = Broker::open(weir_broker::BrokerConfig {
            data_dir: dir.path().to_path_buf(),
            ..Default::default()
        })
        .unwrap();
        let kafka = Kafka::new(
            broker.clone(),
            Advertised {
                host: "127.0.0.1".into(),
                port: 9092,
            },
        );
        // Resent after the restart: answered with the offsets written before it.
        assert_eq!(produce_one(&kafka, "a", second).await, (code::NONE, 2));
        assert_eq!(produce_one(&kafka, "a", first).await, (code::NONE, 0));
        assert_eq!(
            broker.topic_info("a").unwrap().partitions[0].high_watermark,
            3
        );
        let (err, _) = produce_one(&kafka, "a", idempotent(pid, 4, &[b"d"])).await;
        assert_eq!(err, code::OUT_OF_ORDER_SEQUENCE_NUMBER);
        assert_eq!(
            produce_one(&kafka, "a", idempotent(pid, 3, &[b"d"])).await,
            (code::NONE, 3)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idempotent_retries_are_written_once_and_gaps_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (broker, kafka) = broker(dir.path()).await;
        let r: InitProducerIdResponse = response(
            ApiKey::InitProducerId,
            1,
            handle(
                &kafka,
                request(
                    ApiKey::InitProducerId,
                    1,
                    &InitProducerIdRequest::default()
                        .with_transactional_id(None)
                        .with_transaction_timeout_ms(60_000),
                ),
            )
            .await,
        );
        assert_eq!(r.error_code, code::NONE);
        let pid = r.producer_id.0;
        assert!(pid > 0);
        let first = idempotent(pid, 0, &[b"a", b"b"]);
        assert_eq!(
            produce_one(&kafka, "a", first.clone()).await,
            (code::NONE, 0)
        );
        assert_eq!(
            produce_one(&kafka, "a", idempotent(pid, 2, &[b"c"])).await,
            (code::NONE, 2)
        );
        // The first batch again (its answer was lost): the same offset, nothing appended.
        assert_eq!(produce_one(&kafka, "a", first).await, (code::NONE, 0));
        // A gap: seq 4 where 3 is due.
        let (err, _) = produce_one(&kafka, "a", idempotent(pid, 4, &[b"d"])).await;
        assert_eq!(err, code::OUT_OF_ORDER_SEQUENCE_NUMBER);
        assert_eq!(
            broker.topic_info("a").unwrap().partitions[0].high_watermark,
            3
        );
        // Transactions are refused, not half-served.
        let r: InitProducerIdResponse = response(
            ApiKey::InitProducerId,
            1,
            handle(
                &kafka,
                request(
                    ApiKey::InitProducerId,
                    1,
                    &InitProducerIdRequest::default().with_transactional_id(Some(TransactionalId(
                        StrBytes::from_static_str("tx"),
                    ))),
                ),
            )
            .await,
        );
        assert_eq!(r.error_code, code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED);
        let r: FindCoordinatorResponse = response(
            ApiKey::FindCoordinator,
            2,
            handle(
                &kafka,
                request(
                    ApiKey::FindCoordinator,
                    2,
                    &FindCoordinatorRequest::default()
                        .with_key(StrBytes::from_static_str("tx"))
                        .with_key_type(1),
                ),
            )
            .await,
        );
        assert_eq!(r.error_code, code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_over_its_produce_quota_is_told_its_throttle_time() {
        let dir = tempfile::tempdir().unwrap();
        let broker = Broker::open(weir_broker::BrokerConfig {
            data_dir: dir.path().to_path_buf(),
            quotas: weir_broker::flow::QuotaConfig {
                default: weir_broker::flow::Quota {
                    produce_bytes_per_sec: Some(10_000),
                    ..Default::default()
                },
                ..Default::default()
            },
            ..Default::default()
        })
        .unwrap();
        broker.create_topic("a", None).await.unwrap();
        let kafka = Kafka::new(
            broker,
            Advertised {
                host: "127.0.0.1".into(),
                port: 9092,
            },
        );
        let big = idempotent(-1, -1, &[&[1u8; 30_000]]);
        let frame = request(ApiKey::Produce, 8, &produce_to("a", big));
        let (reply, throttle) = handle_throttled(&kafka, frame).await;
        let r: ProduceResponse = response(ApiKey::Produce, 8, reply);
        // 30 KB at 10 KB/s with a 2 KB burst: about 2.8 s to wait, said in the response.
        assert!(throttle > Duration::from_secs(2), "{throttle:?}");
        assert_eq!(r.throttle_time_ms as u128, throttle.as_millis());
        assert_eq!(r.responses[0].partition_responses[0].error_code, code::NONE);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn throttle_times_of_pipelined_requests_overlap_rather_than_add_up() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let broker = Broker::open(weir_broker::BrokerConfig {
            data_dir: dir.path().to_path_buf(),
            quotas: weir_broker::flow::QuotaConfig {
                default: weir_broker::flow::Quota {
                    produce_bytes_per_sec: Some(100_000),
                    ..Default::default()
                },
                ..Default::default()
            },
            ..Default::default()
        })
        .unwrap();
        broker.create_topic("a", None).await.unwrap();
        let listener = Listening::start(broker).await;
        let addr = listener.addr;
        // Four produces of 50 KB at 100 KB/s, then a Metadata request, written at once: the
        // client is over its quota for about 2 s in all. Were each answer's throttle time
        // waited out in turn, the fourth (charged while the others were in flight, so
        // about 2 s itself) would come after 0.5 + 1 + 1.5 + 2 = 5 s.
        let mut wire = Vec::new();
        let mut frame = |req: Bytes| {
            wire.extend_from_slice(&(req.len() as i32).to_be_bytes());
            wire.extend_from_slice(&req);
        };
        for _ in 0..4 {
            let big = idempotent(-1, -1, &[&[1u8; 50_000]]);
            frame(request(ApiKey::Produce, 8, &produce_to("a", big)));
        }
        frame(request(
            ApiKey::Metadata,
            8,
            &MetadataRequest::default().with_topics(None),
        ));
        let started = std::time::Instant::now();
        let mut conn = TcpStream::connect(addr).await.unwrap();
        conn.write_all(&wire).await.unwrap();
        let mut throttles = Vec::new();
        for i in 0..5 {
            let len = conn.read_i32().await.unwrap();
            let mut b = vec![0u8; len as usize];
            conn.read_exact(&mut b).await.unwrap();
            if i < 4 {
                let mut b = Bytes::from(b);
                ResponseHeader::decode(&mut b, ApiKey::Produce.response_header_version(8)).unwrap();
                let r = ProduceResponse::decode(&mut b, 8).unwrap();
                assert_eq!(r.responses[0].partition_responses[0].error_code, code::NONE);
                throttles.push(r.throttle_time_ms);
            }
        }
        let elapsed = started.elapsed();
        assert!(throttles.iter().any(|t| *t > 0), "{throttles:?}");
        assert!(
            elapsed >= Duration::from_millis(800),
            "the quota held nothing back: {elapsed:?} ({throttles:?})"
        );
        assert!(
            elapsed < Duration::from_millis(3_500),
            "throttle times added up: {elapsed:?} ({throttles:?})"
        );
        listener.stop().await;
    }

    /// The vectored Fetch answer is, byte for byte, what the `kafka-protocol` encoder writes
    /// for the same response with the records in place: every served version, topics with
    /// data in several pieces, empty partitions and errors.
    #[test]
    fn vectored_fetch_responses_match_the_reference_encoder() {
        use kafka_protocol::messages::FetchResponse;
        use kafka_protocol::messages::fetch_response::FetchableTopicResponse;
        let data = |i: i32| {
            PartitionData::default()
                .with_partition_index(i)
                .with_high_watermark(100 + i64::from(i))
                .with_last_stable_offset(100 + i64::from(i))
                .with_log_start_offset(3)
                .with_aborted_transactions(Some(Vec::new()))
                .with_preferred_read_replica(BrokerId(-1))
        };
        let answer = || -> FetchAnswer {
            vec![
                (
                    topic_name("alpha"),
                    vec![
                        (
                            data(0),
                            vec![Bytes::from_static(b"first-"), Bytes::from_static(b"second")],
                        ),
                        (data(1), Vec::new()),
                        (
                            data(2).with_error_code(code::OFFSET_OUT_OF_RANGE),
                            Vec::new(),
                        ),
                    ],
                ),
                (
                    topic_name("b"),
                    vec![(data(7), vec![Bytes::from_static(b"x")])],
                ),
                (topic_name("empty"), Vec::new()),
            ]
        };
        for version in 4..=11 {
            let mut head = BytesMut::new();
            head.put_i32(0);
            head.put_i32(42); // a correlation id, as the response header would hold
            let pieces = encode_fetch(head, version, 7, answer()).unwrap();
            let got = pieces.concat();
            let reference = FetchResponse::default()
                .with_throttle_time_ms(7)
                .with_responses(
                    answer()
                        .into_iter()
                        .map(|(name, parts)| {
                            FetchableTopicResponse::default()
                                .with_topic(name)
                                .with_partitions(
                                    parts
                                        .into_iter()
                                        .map(|(d, chunks)| {
                                            d.with_records(Some(Bytes::from(chunks.concat())))
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                );
            let mut want = BytesMut::new();
            want.put_i32(0);
            want.put_i32(42);
            reference.encode(&mut want, version).unwrap();
            let len = (want.len() - 4) as i32;
            want[..4].copy_from_slice(&len.to_be_bytes());
            assert_eq!(got, want.to_vec(), "version {version}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fetch_long_polls_on_every_partition_it_asks_for() {
        use kafka_protocol::messages::FetchRequest;
        use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
        let dir = tempfile::tempdir().unwrap();
        let (broker, kafka) = broker(dir.path()).await;
        let two = weir_broker::TopicConfig {
            partitions: 2,
            ..Default::default()
        };
        broker.create_topic("two", Some(two)).await.unwrap();
        let req = FetchRequest::default()
            .with_max_wait_ms(10_000)
            .with_min_bytes(1)
            .with_max_bytes(1 << 20)
            .with_topics(vec![
                FetchTopic::default()
                    .with_topic(topic_name("two"))
                    .with_partitions(
                        (0..2)
                            .map(|p| {
                                FetchPartition::default()
                                    .with_partition(p)
                                    .with_fetch_offset(0)
                                    .with_partition_max_bytes(1 << 20)
                            })
                            .collect(),
                    ),
            ]);
        let writer = broker.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            writer
                .produce("two", Some(1), None, idempotent(-1, -1, &[b"late"]))
                .await
                .unwrap();
        });
        let started = std::time::Instant::now();
        let r: kafka_protocol::messages::FetchResponse = response(
            ApiKey::Fetch,
            11,
            handle(&kafka, request(ApiKey::Fetch, 11, &req)).await,
        );
        let waited = started.elapsed();
        // Answered when partition 1 got data, long before the 10 s max_wait.
        assert!(waited >= Duration::from_millis(150), "{waited:?}");
        assert!(waited < Duration::from_secs(5), "{waited:?}");
        let parts = &r.responses[0].partitions;
        assert!(parts[0].records.as_ref().unwrap().is_empty());
        assert!(!parts[1].records.as_ref().unwrap().is_empty());
        assert_eq!(parts[1].high_watermark, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn oversized_batches_get_message_too_large_and_log_append_time_restamps() {
        let dir = tempfile::tempdir().unwrap();
        let (broker, kafka) = broker(dir.path()).await;
        let small = weir_broker::TopicConfig {
            max_batch_bytes: 200,
            ..Default::default()
        };
        broker.create_topic("small", Some(small)).await.unwrap();
        let (err, _) = produce_one(
            &kafka,
            "small",
            crate::tests::idempotent(-1, -1, &[&[7u8; 400]]),
        )
        .await;
        assert_eq!(err, code::MESSAGE_TOO_LARGE);
        let stamped = weir_broker::TopicConfig {
            timestamp_type: weir_broker::topic::TimestampType::LogAppendTime,
            ..Default::default()
        };
        broker.create_topic("stamped", Some(stamped)).await.unwrap();
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        // Producer timestamps from 1970: the broker's clock replaces them.
        let mut b = weir_batch::BatchBuilder::new(1_000);
        b.push(weir_batch::RecordSpec::value(b"x"));
        let r: ProduceResponse = response(
            ApiKey::Produce,
            8,
            handle(
                &kafka,
                request(
                    ApiKey::Produce,
                    8,
                    &produce_to("stamped", Bytes::from(b.build())),
                ),
            )
            .await,
        );
        let p = &r.responses[0].partition_responses[0];
        assert_eq!((p.error_code, p.base_offset), (code::NONE, 0));
        assert!(
            p.log_append_time_ms >= before,
            "the response carries the broker's stamp"
        );
        let f = broker
            .fetch("stamped", 0, 0, 1 << 20, 0, Duration::ZERO)
            .await
            .unwrap();
        let batch = f.chunks.concat();
        let h = weir_batch::validate(&batch).unwrap();
        assert!(h.is_log_append_time());
        let ts = weir_batch::Records::new(&batch)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .timestamp;
        assert!(
            ts >= before,
            "timestamp {ts} is the broker's, not the producer's 1000"
        );
        // A corrupt batch is refused, not resealed into a valid one.
        let mut bad = weir_batch::BatchBuilder::new(1_000);
        bad.push(weir_batch::RecordSpec::value(b"y"));
        let mut bad = bad.build();
        *bad.last_mut().unwrap() ^= 1;
        let (err, _) = produce_one(&kafka, "stamped", Bytes::from(bad)).await;
        assert_eq!(err, code::CORRUPT_MESSAGE);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn create_and_delete_topics_with_kafka_errors_for_each_refusal() {
        use kafka_protocol::messages::create_topics_request::{
            CreatableTopic, CreatableTopicConfig,
        };
        use kafka_protocol::messages::{CreateTopicsRequest, DeleteTopicsRequest};
        let dir = tempfile::tempdir().unwrap();
        let (broker, adv) = broker(dir.path()).await;
        let topic = |name: &str, partitions: i32, rf: i16, configs: &[(&str, &str)]| {
            CreatableTopic::default()
                .with_name(topic_name(name))
                .with_num_partitions(partitions)
                .with_replication_factor(rf)
                .with_configs(
                    configs
                        .iter()
                        .map(|(k, v)| {
                            CreatableTopicConfig::default()
                                .with_name(StrBytes::from_string(k.to_string()))
                                .with_value(Some(StrBytes::from_string(v.to_string())))
                        })
                        .collect(),
                )
        };
        let req = CreateTopicsRequest::default()
            .with_timeout_ms(1000)
            .with_topics(vec![
                topic(
                    "c",
                    3,
                    1,
                    &[("retention.ms", "-1"), ("max.message.bytes", "2097152")],
                ),
                topic("a", 1, -1, &[]),
                topic("r", 1, 3, &[]),
                topic("u", 1, 1, &[("cleanup.policy", "compact")]),
                topic("bad name", 1, 1, &[]),
                topic("z", 0, 1, &[]),
            ]);
        let r: CreateTopicsResponse = response(
            ApiKey::CreateTopics,
            4,
            handle(&adv, request(ApiKey::CreateTopics, 4, &req)).await,
        );
        let codes: Vec<i16> = r.topics.iter().map(|t| t.error_code).collect();
        assert_eq!(
            codes,
            vec![
                code::NONE,
                code::TOPIC_ALREADY_EXISTS,
                code::INVALID_REPLICATION_FACTOR,
                code::INVALID_CONFIG,
                code::INVALID_TOPIC_EXCEPTION,
                code::INVALID_PARTITIONS
            ]
        );
        let c = broker.topic_info("c").unwrap();
        assert_eq!(
            (
                c.config.partitions,
                c.config.retention_ms,
                c.config.max_batch_bytes
            ),
            (3, None, 2 << 20)
        );
        // validate_only creates nothing.
        let req = CreateTopicsRequest::default()
            .with_validate_only(true)
            .with_topics(vec![topic("v", 2, 1, &[])]);
        let r: CreateTopicsResponse = response(
            ApiKey::CreateTopics,
            4,
            handle(&adv, request(ApiKey::CreateTopics, 4, &req)).await,
        );
        assert_eq!(r.topics[0].error_code, code::NONE);
        assert!(broker.topic_info("v").is_err());
        let req = DeleteTopicsRequest::default()
            .with_timeout_ms(1000)
            .with_topic_names(vec![topic_name("c"), topic_name("nope")]);
        let r: DeleteTopicsResponse = response(
            ApiKey::DeleteTopics,
            3,
            handle(&adv, request(ApiKey::DeleteTopics, 3, &req)).await,
        );
        let codes: Vec<i16> = r.responses.iter().map(|t| t.error_code).collect();
        assert_eq!(codes, vec![code::NONE, code::UNKNOWN_TOPIC_OR_PARTITION]);
        assert!(broker.topic_info("c").is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn describe_configs_reports_topic_settings_under_kafka_names() {
        use kafka_protocol::messages::DescribeConfigsRequest;
        use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
        let dir = tempfile::tempdir().unwrap();
        let (_broker, adv) = broker(dir.path()).await;
        let req = DescribeConfigsRequest::default().with_resources(vec![
            DescribeConfigsResource::default()
                .with_resource_type(TOPIC_RESOURCE)
                .with_resource_name(StrBytes::from_static_str("a"))
                .with_configuration_keys(Some(vec![StrBytes::from_static_str("retention.ms")])),
            DescribeConfigsResource::default()
                .with_resource_type(TOPIC_RESOURCE)
                .with_resource_name(StrBytes::from_static_str("missing")),
        ]);
        let r: DescribeConfigsResponse = response(
            ApiKey::DescribeConfigs,
            2,
            handle(&adv, request(ApiKey::DescribeConfigs, 2, &req)).await,
        );
        assert_eq!(r.results[0].error_code, code::NONE);
        assert_eq!(r.results[0].configs.len(), 1);
        assert_eq!(
            r.results[0].configs[0].value.as_deref(),
            Some("604800000"),
            "the 7-day default"
        );
        assert_eq!(r.results[1].error_code, code::UNKNOWN_TOPIC_OR_PARTITION);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn garbage_and_unsupported_requests_close_the_connection() {
        let dir = tempfile::tempdir().unwrap();
        let (_broker, adv) = broker(dir.path()).await;
        assert!(matches!(
            handle(&adv, Bytes::from_static(&[0x7f, 0x7f, 0, 0])).await,
            Reply::Close
        ));
        assert!(matches!(
            handle(&adv, Bytes::from_static(b"ab")).await,
            Reply::Close
        ));
        // Produce v9 is above the advertised range (3–8).
        let req = ProduceRequest::default().with_acks(1);
        assert!(matches!(
            handle(&adv, request(ApiKey::Produce, 9, &req)).await,
            Reply::Close
        ));
        // Metadata v0 declaring 2³¹−1 topics in 14 bytes: the guard refuses it before the
        // decoder would reserve ~150 GB for it (which aborted the process).
        let attack = [0, 3, 0, 0, 0, 0, 0, 42, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff];
        assert!(matches!(
            handle(&adv, Bytes::copy_from_slice(&attack)).await,
            Reply::Close
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn api_versions_above_the_range_get_the_v0_answer_before_decoding() {
        let dir = tempfile::tempdir().unwrap();
        let (_broker, adv) = broker(dir.path()).await;
        // v9 with a body no decoder knows: only the correlation id is read.
        let frame = [0, 18, 0, 9, 0, 0, 0, 42, 0x7f, 0xff, 0xff, 0xff];
        let r: ApiVersionsResponse = response(
            ApiKey::ApiVersions,
            0,
            handle(&adv, Bytes::copy_from_slice(&frame)).await,
        );
        assert_eq!(r.error_code, code::UNSUPPORTED_VERSION);
        assert!(
            r.api_keys
                .iter()
                .any(|k| k.api_key == ApiKey::Metadata as i16)
        );
    }
}
