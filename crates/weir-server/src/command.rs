//! Commands: a decoded request frame becomes a call on the broker and a response frame.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use prost::Message;
use weir_broker::access::{Operation, ResourceType};
use weir_broker::activity::Door;
use weir_broker::broker::OffsetSpec;
use weir_broker::flow::QuotaKind;
use weir_broker::group::AssignmentStrategy;
use weir_broker::topic::{CleanupPolicy, DirtyRatio, DurabilitySetting, TimestampType};
use weir_broker::{Access, Broker, BrokerError, ErrorKind, TopicConfig};
use weir_wire::messages as msg;
use weir_wire::{Api, ErrorCode, Flags, Frame, FrameHeader, encode_frame};

use crate::connection::Parked;

/// A frame ready to write: header and message in `head`, then `records` as stored.
#[derive(Debug)]
pub(crate) struct OutFrame {
    pub head: BytesMut,
    pub records: Vec<Bytes>,
    /// The client went over a quota: the connection is not read for this long after the
    /// frame is written (the frame says so in its `throttle_ms`).
    pub throttle: Duration,
}

impl OutFrame {
    pub fn new(header: FrameHeader, message: &impl Message, records: Vec<Bytes>) -> Self {
        let len = records.iter().map(Bytes::len).sum();
        let mut head = BytesMut::new();
        encode_frame(header, message, len, &mut head);
        OutFrame {
            head,
            records,
            throttle: Duration::ZERO,
        }
    }

    /// Nothing to send, but the connection is to be muted for `throttle` (a throttled
    /// produce without acks).
    pub fn silent(throttle: Duration) -> Self {
        OutFrame {
            head: BytesMut::new(),
            records: Vec::new(),
            throttle,
        }
    }

    pub fn response(req: &FrameHeader, message: &impl Message) -> Self {
        Self::new(response_header(req, Flags::RESPONSE), message, Vec::new())
    }

    pub fn error(req: &FrameHeader, code: ErrorCode, message: impl Into<String>) -> Self {
        let body = msg::ErrorResponse {
            code: code as u32,
            message: message.into(),
            throttle_ms: 0,
        };
        Self::new(
            response_header(req, Flags::RESPONSE | Flags::ERROR),
            &body,
            Vec::new(),
        )
    }
}

pub(crate) fn response_header(req: &FrameHeader, flags: u16) -> FrameHeader {
    FrameHeader {
        api_key: req.api_key,
        api_version: req.api_version,
        correlation_id: req.correlation_id,
        flags: Flags(flags),
    }
}

/// The wire code for a broker error: the native door's one table from the broker's error
/// kinds to its codes.
pub(crate) fn code_of(e: &BrokerError) -> ErrorCode {
    kind_code(e.kind())
}

fn kind_code(kind: ErrorKind) -> ErrorCode {
    match kind {
        ErrorKind::UnknownTopic => ErrorCode::UnknownTopic,
        ErrorKind::UnknownPartition => ErrorCode::UnknownPartition,
        ErrorKind::TopicExists => ErrorCode::TopicExists,
        ErrorKind::InvalidTopicName | ErrorKind::InvalidConfig => ErrorCode::InvalidConfig,
        ErrorKind::InvalidRequest => ErrorCode::InvalidRequest,
        ErrorKind::CorruptBatch | ErrorKind::InvalidRecord => ErrorCode::InvalidBatch,
        ErrorKind::TooLarge => ErrorCode::BatchTooLarge,
        ErrorKind::OffsetOutOfRange => ErrorCode::OffsetOutOfRange,
        ErrorKind::UnknownMember => ErrorCode::UnknownMember,
        ErrorKind::Fenced => ErrorCode::IllegalGeneration,
        ErrorKind::RebalanceInProgress => ErrorCode::RebalanceInProgress,
        ErrorKind::GroupConflict => ErrorCode::GroupConflict,
        ErrorKind::StorageFull => ErrorCode::StorageFull,
        ErrorKind::StorageFailed => ErrorCode::Storage,
        ErrorKind::CorruptData => ErrorCode::CorruptData,
        ErrorKind::ShuttingDown => ErrorCode::ShuttingDown,
        ErrorKind::Internal => ErrorCode::Internal,
        ErrorKind::NotAuthorized(_) => ErrorCode::NotAuthorized,
    }
}

#[cfg(test)]
#[test]
fn every_error_kind_has_a_code_and_retriable_ones_look_retriable() {
    for &kind in ErrorKind::ALL {
        let c = kind_code(kind);
        assert_ne!(c, ErrorCode::None, "{kind:?}");
        assert_eq!(kind.is_retriable(), c.is_retriable(), "{kind:?} -> {c:?}");
    }
}

fn decode<M: Message + Default>(frame: &Frame) -> Result<M, (ErrorCode, String)> {
    M::decode(frame.message.clone())
        .map_err(|e| (ErrorCode::Malformed, format!("cannot decode request: {e}")))
}

fn broker_err(e: BrokerError) -> (ErrorCode, String) {
    (code_of(&e), e.to_string())
}

/// Topic configuration from the wire; zero fields take the broker's defaults.
pub(crate) fn topic_config(defaults: &TopicConfig, c: Option<msg::TopicConfig>) -> TopicConfig {
    let Some(c) = c else { return defaults.clone() };
    let d = defaults;
    TopicConfig {
        partitions: if c.partitions == 0 {
            d.partitions
        } else {
            c.partitions
        },
        retention_ms: match c.retention_ms {
            0 => d.retention_ms,
            n if n < 0 => None,
            n => Some(n as u64),
        },
        retention_bytes: match c.retention_bytes {
            0 => d.retention_bytes,
            n if n < 0 => None,
            n => Some(n as u64),
        },
        durability: match c.durability() {
            msg::Durability::Default => d.durability,
            msg::Durability::Always => DurabilitySetting::Always,
            msg::Durability::Never => DurabilitySetting::Never,
            msg::Durability::Interval => DurabilitySetting::Interval {
                ms: u64::from(c.durability_interval_ms),
            },
        },
        max_batch_bytes: if c.max_batch_bytes == 0 {
            d.max_batch_bytes
        } else {
            c.max_batch_bytes
        },
        segment_bytes: if c.segment_bytes == 0 {
            d.segment_bytes
        } else {
            c.segment_bytes
        },
        timestamp_type: match c.timestamp_type() {
            msg::TimestampType::Default => d.timestamp_type,
            msg::TimestampType::CreateTime => TimestampType::CreateTime,
            msg::TimestampType::LogAppendTime => TimestampType::LogAppendTime,
        },
        cleanup_policy: match c.cleanup_policy() {
            msg::CleanupPolicy::Default => d.cleanup_policy,
            msg::CleanupPolicy::Delete => CleanupPolicy::Delete,
            msg::CleanupPolicy::Compact => CleanupPolicy::Compact,
            msg::CleanupPolicy::CompactDelete => CleanupPolicy::CompactDelete,
        },
        delete_retention_ms: c.delete_retention_ms.unwrap_or(d.delete_retention_ms),
        min_compaction_lag_ms: c.min_compaction_lag_ms.unwrap_or(d.min_compaction_lag_ms),
        max_compaction_lag_ms: match c.max_compaction_lag_ms {
            None => d.max_compaction_lag_ms,
            Some(n) if n < 0 => None,
            // 0 is refused by validation, as a negative number would be a mistake.
            Some(n) => Some(n as u64),
        },
        min_cleanable_dirty_ratio: c
            .min_cleanable_dirty_ratio
            .map_or(d.min_cleanable_dirty_ratio, DirtyRatio),
    }
}

pub(crate) fn topic_config_out(c: &TopicConfig) -> msg::TopicConfig {
    let (durability, interval) = match c.durability {
        DurabilitySetting::Always => (msg::Durability::Always, 0),
        DurabilitySetting::Interval { ms } => (
            msg::Durability::Interval,
            ms.min(u64::from(u32::MAX)) as u32,
        ),
        DurabilitySetting::Never => (msg::Durability::Never, 0),
    };
    msg::TopicConfig {
        partitions: c.partitions,
        retention_ms: c.retention_ms.map_or(-1, |v| v as i64),
        retention_bytes: c.retention_bytes.map_or(-1, |v| v as i64),
        durability: durability as i32,
        durability_interval_ms: interval,
        max_batch_bytes: c.max_batch_bytes,
        segment_bytes: c.segment_bytes,
        timestamp_type: match c.timestamp_type {
            TimestampType::CreateTime => msg::TimestampType::CreateTime,
            TimestampType::LogAppendTime => msg::TimestampType::LogAppendTime,
        } as i32,
        cleanup_policy: match c.cleanup_policy {
            CleanupPolicy::Delete => msg::CleanupPolicy::Delete,
            CleanupPolicy::Compact => msg::CleanupPolicy::Compact,
            CleanupPolicy::CompactDelete => msg::CleanupPolicy::CompactDelete,
        } as i32,
        delete_retention_ms: Some(c.delete_retention_ms),
        min_compaction_lag_ms: Some(c.min_compaction_lag_ms),
        max_compaction_lag_ms: Some(c.max_compaction_lag_ms.map_or(-1, |v| v as i64)),
        min_cleanable_dirty_ratio: Some(c.min_cleanable_dirty_ratio.0),
    }
}

fn tps(list: Vec<(String, Vec<u32>)>) -> Vec<msg::TopicPartitions> {
    list.into_iter()
        .map(|(topic, partitions)| msg::TopicPartitions { topic, partitions })
        .collect()
}

/// Largest fetch a client may ask for (one larger batch is still returned whole).
const MAX_FETCH_BYTES: usize = 8 << 20;
/// Longest long-poll.
const MAX_WAIT: Duration = Duration::from_secs(30);

/// Runs a produce request. `written` is dropped once the batch is written (before it is
/// durable), which lets the connection's next produce start: appends keep arrival order while
/// their syncs overlap. `None`: no response is due.
pub(crate) async fn produce(
    broker: &Broker,
    access: &Access,
    frame: Frame,
    written: tokio::sync::oneshot::Sender<()>,
    client_id: &str,
    alone: bool,
) -> Option<OutFrame> {
    let Frame {
        header: req,
        message,
        mut records,
    } = frame;
    // Stored as it is, a batch keeps all the memory it shares alive in the log's hot tail. A
    // small one shares the connection's read buffer with other frames, and one that is not
    // most of its frame would keep the rest of the frame: those are copied into memory of
    // their own. A large frame has an allocation of its own
    // (`Connection::own_buffer_for_frame`), so a batch that fills it is stored without a copy.
    let owns_frame =
        records.len() > weir_broker::flow::SMALL_REQUEST_BYTES && records.len() >= message.len();
    if !owns_frame {
        records = Bytes::copy_from_slice(&records);
    }
    let bytes: u64 = records.len() as u64;
    let throttle = broker.quotas().charge(client_id, QuotaKind::Produce, bytes);
    // The message is consumed here: once the read buffer has moved on, a large frame's
    // records are then the only view of its memory, and the log stamps their offsets in place
    // instead of copying the batch.
    let r = match msg::ProduceRequest::decode(message) {
        Ok(r) => r,
        Err(e) => {
            let message = format!("cannot decode request: {e}");
            return Some(OutFrame::error(&req, ErrorCode::Malformed, message));
        }
    };
    let silent = r.acks() == msg::Acks::None || req.flags.has(Flags::NO_RESPONSE);
    let creates = || broker.produce_creates(&r.topic);
    let result = if let Err(e) = access.check_write(&r.topic, creates) {
        Err(broker_err(e))
    } else if records.is_empty() {
        Err((
            ErrorCode::InvalidBatch,
            "produce request carries no record batch".to_string(),
        ))
    } else if let Ok(h) = weir_batch::peek(&records)
        && h.producer_id >= 0
    {
        produce_sequenced(broker, &r, h, records, written).await
    } else {
        match broker
            .produce_start(&r.topic, r.partition, r.key.as_deref(), records)
            .await
        {
            Ok(pending) => {
                drop(written);
                if alone {
                    pending.wait_alone().await.map_err(broker_err)
                } else {
                    pending.wait().await.map_err(broker_err)
                }
            }
            Err(e) => Err(broker_err(e)),
        }
    };
    if let Ok(p) = &result {
        let records = p.last_offset.saturating_sub(p.base_offset) + 1;
        broker
            .activity()
            .door(Door::Native)
            .produced(records, bytes);
    }
    let throttle_ms = throttle.as_millis().min(u128::from(u32::MAX)) as u32;
    let mut out = match (result, silent) {
        (Err((_, message)), true) => {
            tracing::debug!(topic = %r.topic, error = %message, "produce without acks failed");
            OutFrame::silent(throttle)
        }
        (Ok(_), true) => OutFrame::silent(throttle),
        (Err((code, message)), false) => OutFrame::error(&req, code, message),
        (Ok(p), false) => OutFrame::response(
            &req,
            &msg::ProduceResponse {
                partition: p.partition,
                base_offset: p.base_offset,
                last_offset: p.last_offset,
                throttle_ms,
            },
        ),
    };
    out.throttle = throttle;
    (!out.head.is_empty() || !throttle.is_zero()).then_some(out)
}

/// Writes a batch of an idempotent producer (its header carries a producer id) through the
/// broker's sequence checks: written once however often it is sent, refused when it does not
/// follow the last one written. Its partition must be given: sequences are per partition.
async fn produce_sequenced(
    broker: &Broker,
    r: &msg::ProduceRequest,
    h: weir_batch::BatchHeader,
    records: Bytes,
    written: tokio::sync::oneshot::Sender<()>,
) -> Result<weir_broker::ProduceResult, (ErrorCode, String)> {
    use weir_broker::producers::{Refusal, SequencedError};
    let fail = |e: SequencedError| {
        let code = match &e {
            SequencedError::Refused(Refusal::InvalidRecord, _) => ErrorCode::InvalidBatch,
            SequencedError::Refused(Refusal::InvalidEpoch, _) => ErrorCode::InvalidProducerEpoch,
            SequencedError::Refused(Refusal::OutOfOrder, _) => ErrorCode::OutOfOrderSequence,
            SequencedError::Retry(_) => ErrorCode::Storage,
            SequencedError::Internal(_) => ErrorCode::Internal,
            SequencedError::Broker(b) => code_of(b),
        };
        (code, e.to_string())
    };
    let Some(partition) = r.partition else {
        return Err((
            ErrorCode::InvalidRequest,
            "a batch with a producer id needs an explicit partition".to_string(),
        ));
    };
    let write = broker
        .produce_sequenced(&r.topic, partition, &h, records, |b| b)
        .await
        .map_err(fail)?;
    drop(written);
    let (base_offset, last_offset, log_append_time) = write.wait().await.map_err(fail)?;
    Ok(weir_broker::ProduceResult {
        partition,
        base_offset,
        last_offset,
        log_append_time,
    })
}

/// Runs one request that needs no connection state. `None`: no response is due.
/// `parked`: where a fetch counts itself while it waits for records (see [`Parked`]).
pub(crate) async fn handle(
    broker: &Broker,
    access: &Access,
    frame: Frame,
    client_id: &str,
    parked: Option<Arc<Parked>>,
) -> Option<OutFrame> {
    let req = frame.header;
    let api = Api::from_key(req.api_key)?;
    match run(broker, access, api, frame, client_id, parked).await {
        Ok(out) => out,
        Err((code, message)) => Some(OutFrame::error(&req, code, message)),
    }
}

/// Each arm asks `access` first, for what its request does (the native door's table of
/// operations; see `weir_broker::access`).
async fn run(
    broker: &Broker,
    access: &Access,
    api: Api,
    frame: Frame,
    client_id: &str,
    parked: Option<Arc<Parked>>,
) -> Result<Option<OutFrame>, (ErrorCode, String)> {
    let req = frame.header;
    let ok = |m: &dyn Fn() -> OutFrame| Ok(Some(m()));
    let check = |op, resource, name: &str| access.check(op, resource, name).map_err(broker_err);
    use ResourceType::{Group, Topic};
    match api {
        Api::CreateTopic => {
            let r: msg::CreateTopicRequest = decode(&frame)?;
            // The right to create on the cluster, or on the topic itself.
            if !access.allows_cluster(Operation::Create) {
                check(Operation::Create, Topic, &r.name)?;
            }
            let config = topic_config(&broker.config().default_topic, r.config);
            let info = broker
                .create_topic(&r.name, Some(config))
                .await
                .map_err(broker_err)?;
            let out = msg::CreateTopicResponse {
                config: Some(topic_config_out(&info.config)),
            };
            ok(&|| OutFrame::response(&req, &out))
        }
        Api::DeleteTopic => {
            let r: msg::DeleteTopicRequest = decode(&frame)?;
            check(Operation::Delete, Topic, &r.name)?;
            broker.delete_topic(&r.name).await.map_err(broker_err)?;
            ok(&|| OutFrame::response(&req, &msg::DeleteTopicResponse {}))
        }
        Api::Metadata => {
            let r: msg::MetadataRequest = decode(&frame)?;
            // Every topic the client may see; one named that it may not is refused.
            let infos = if r.topics.is_empty() {
                let mut all = broker.topics();
                all.retain(|t| access.allows(Operation::Describe, Topic, &t.name));
                all
            } else {
                r.topics
                    .iter()
                    .map(|t| {
                        check(Operation::Describe, Topic, t)?;
                        broker.topic_info(t).map_err(broker_err)
                    })
                    .collect::<Result<Vec<_>, _>>()?
            };
            let out = msg::MetadataResponse {
                topics: infos
                    .into_iter()
                    .map(|t| msg::TopicMetadata {
                        config: Some(topic_config_out(&t.config)),
                        name: t.name,
                        partitions: t
                            .partitions
                            .into_iter()
                            .map(|p| msg::PartitionMetadata {
                                partition: p.partition,
                                log_start_offset: p.log_start_offset,
                                high_watermark: p.high_watermark,
                                size_bytes: p.size_bytes,
                            })
                            .collect(),
                    })
                    .collect(),
            };
            ok(&|| OutFrame::response(&req, &out))
        }
        Api::Produce => Err((
            ErrorCode::InvalidRequest,
            "produce is handled by command::produce".into(),
        )),
        Api::Fetch => {
            let r: msg::FetchRequest = decode(&frame)?;
            check(Operation::Read, Topic, &r.topic)?;
            let max_bytes = (r.max_bytes as usize).clamp(1, MAX_FETCH_BYTES);
            let wait = Duration::from_millis(u64::from(r.max_wait_ms)).min(MAX_WAIT);
            let f = broker
                .fetch_parking(
                    &r.topic,
                    r.partition,
                    r.offset,
                    max_bytes,
                    r.min_bytes as usize,
                    wait,
                    || parked.as_ref().map(Parked::park),
                )
                .await
                .map_err(broker_err)?;
            broker
                .activity()
                .door(Door::Native)
                .delivered(f.len() as u64);
            let throttle = broker
                .quotas()
                .charge(client_id, QuotaKind::Fetch, f.len() as u64);
            let out = msg::FetchResponse {
                high_watermark: f.high_watermark,
                log_start_offset: f.log_start_offset,
                throttle_ms: throttle.as_millis().min(u128::from(u32::MAX)) as u32,
            };
            let header = response_header(&req, Flags::RESPONSE);
            let mut out = OutFrame::new(header, &out, f.chunks);
            out.throttle = throttle;
            Ok(Some(out))
        }
        Api::ListOffsets => {
            let r: msg::ListOffsetsRequest = decode(&frame)?;
            check(Operation::Describe, Topic, &r.topic)?;
            use msg::list_offsets_request::Spec;
            let spec = match r.spec {
                Some(Spec::Earliest(_)) => OffsetSpec::Earliest,
                Some(Spec::Latest(_)) | None => OffsetSpec::Latest,
                Some(Spec::TimestampMs(ts)) => OffsetSpec::Timestamp(ts),
            };
            let offset = broker
                .list_offsets(&r.topic, r.partition, spec)
                .await
                .map_err(broker_err)?;
            ok(&|| OutFrame::response(&req, &msg::ListOffsetsResponse { offset }))
        }
        Api::JoinGroup => {
            let r: msg::JoinGroupRequest = decode(&frame)?;
            check(Operation::Read, Group, &r.group)?;
            for t in &r.topics {
                check(Operation::Read, Topic, t)?;
            }
            let strategy = match r.strategy() {
                msg::AssignmentStrategy::AssignmentRoundRobin => AssignmentStrategy::RoundRobin,
                msg::AssignmentStrategy::AssignmentSticky => AssignmentStrategy::Sticky,
            };
            let member = (!r.member_id.is_empty()).then_some(r.member_id.as_str());
            let session = Duration::from_millis(u64::from(r.session_timeout_ms));
            let j = broker
                .join_group(&r.group, member, client_id, r.topics, session, strategy)
                .map_err(broker_err)?;
            let out = msg::JoinGroupResponse {
                member_id: j.member_id,
                generation: j.generation,
                assignment: tps(j.assignment),
                heartbeat_interval_ms: (r.session_timeout_ms / 3).max(1),
            };
            ok(&|| OutFrame::response(&req, &out))
        }
        Api::Heartbeat => {
            let r: msg::HeartbeatRequest = decode(&frame)?;
            check(Operation::Read, Group, &r.group)?;
            let wait = Duration::from_millis(u64::from(r.max_wait_ms)).min(MAX_WAIT);
            broker
                .heartbeat_wait(&r.group, &r.member_id, r.generation, wait, || {
                    parked.as_ref().map(Parked::park)
                })
                .await
                .map_err(broker_err)?;
            ok(&|| OutFrame::response(&req, &msg::HeartbeatResponse {}))
        }
        Api::LeaveGroup => {
            let r: msg::LeaveGroupRequest = decode(&frame)?;
            check(Operation::Read, Group, &r.group)?;
            broker
                .leave_group(&r.group, &r.member_id)
                .map_err(broker_err)?;
            ok(&|| OutFrame::response(&req, &msg::LeaveGroupResponse {}))
        }
        Api::CommitOffsets => {
            let r: msg::CommitOffsetsRequest = decode(&frame)?;
            check(Operation::Read, Group, &r.group)?;
            for o in &r.offsets {
                check(Operation::Read, Topic, &o.topic)?;
            }
            let member = (!r.member_id.is_empty()).then_some((r.member_id.as_str(), r.generation));
            let offsets = r
                .offsets
                .into_iter()
                .map(|o| (o.topic, o.partition, o.offset))
                .collect();
            broker
                .commit(&r.group, member, offsets)
                .await
                .map_err(broker_err)?;
            ok(&|| OutFrame::response(&req, &msg::CommitOffsetsResponse {}))
        }
        Api::FetchOffsets => {
            let r: msg::FetchOffsetsRequest = decode(&frame)?;
            check(Operation::Describe, Group, &r.group)?;
            for tp in &r.partitions {
                check(Operation::Describe, Topic, &tp.topic)?;
            }
            let parts: Vec<(String, u32)> = r
                .partitions
                .iter()
                .flat_map(|tp| tp.partitions.iter().map(|p| (tp.topic.clone(), *p)))
                .collect();
            let earliest = r.reset() == msg::ResetPolicy::ResetEarliest;
            let offsets = broker
                .committed_offsets(&r.group, &parts, earliest)
                .map_err(broker_err)?;
            let out = msg::FetchOffsetsResponse {
                offsets: offsets
                    .into_iter()
                    .map(|(topic, partition, offset)| msg::PartitionOffset {
                        topic,
                        partition,
                        offset,
                    })
                    .collect(),
            };
            ok(&|| OutFrame::response(&req, &out))
        }
        Api::ListGroups => {
            let _: msg::ListGroupsRequest = decode(&frame)?;
            // Describing the cluster lists every group; else those the client may describe.
            let every = access.allows_cluster(Operation::Describe);
            let mut groups = broker.groups();
            groups.retain(|g| every || access.allows(Operation::Describe, Group, g));
            let out = msg::ListGroupsResponse { groups };
            ok(&|| OutFrame::response(&req, &out))
        }
        Api::DescribeGroup => {
            let r: msg::DescribeGroupRequest = decode(&frame)?;
            check(Operation::Describe, Group, &r.group)?;
            let desc = broker.describe_group(&r.group);
            // Topics the client may not describe are left out of assignments and offsets.
            let seen = |t: &str| access.allows(Operation::Describe, Topic, t);
            let mut lag = broker.group_lag(&r.group);
            lag.retain(|l| seen(&l.topic));
            let out = msg::DescribeGroupResponse {
                group: r.group.clone(),
                generation: desc.as_ref().map_or(0, |d| d.generation),
                members: desc
                    .map(|d| {
                        d.members
                            .into_iter()
                            .map(|mut m| {
                                m.assignment.retain(|(t, _)| seen(t));
                                msg::GroupMember {
                                    member_id: m.member_id,
                                    client_id: m.client_id,
                                    assignment: tps(m.assignment),
                                }
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                lag: lag
                    .into_iter()
                    .map(|l| msg::PartitionLag {
                        topic: l.topic,
                        partition: l.partition,
                        committed: l.committed,
                        high_watermark: l.high_watermark,
                        lag: l.lag,
                    })
                    .collect(),
            };
            ok(&|| OutFrame::response(&req, &out))
        }
        Api::InitProducer => {
            let _: msg::InitProducerRequest = decode(&frame)?;
            let out = msg::InitProducerResponse {
                producer_id: broker.producers().init(),
                epoch: 0,
            };
            ok(&|| OutFrame::response(&req, &out))
        }
        Api::Ping => {
            if req.flags.has(Flags::RESPONSE) {
                return Ok(None);
            }
            ok(&|| OutFrame::response(&req, &msg::Ping {}))
        }
        Api::Hello
        | Api::Authenticate
        | Api::Subscribe
        | Api::Credit
        | Api::Unsubscribe
        | Api::Push => Err((
            ErrorCode::InvalidRequest,
            format!("{api:?} is handled by the connection"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Produces a batch of `records` records of 100 B, with a key of `key_len` bytes, through
    /// `produce`, from a frame decoded out of a buffer that is then dropped (as the
    /// connection's moves on); says whether the broker holds the frame's own memory (true) or
    /// a copy (false).
    async fn stored_in_place(records: usize, key_len: usize) -> bool {
        let dir = tempfile::tempdir().unwrap();
        let broker = Broker::open(weir_broker::BrokerConfig {
            data_dir: dir.path().to_path_buf(),
            ..Default::default()
        })
        .unwrap();
        broker.create_topic("t", None).await.unwrap();
        let mut b = weir_batch::BatchBuilder::new(0);
        for _ in 0..records {
            b.push(weir_batch::RecordSpec::value(&[7u8; 100]));
        }
        let header = FrameHeader {
            api_key: Api::Produce as u16,
            api_version: 1,
            correlation_id: 1,
            flags: Flags(0),
        };
        let req = msg::ProduceRequest {
            topic: "t".into(),
            partition: Some(0),
            key: Some(vec![1; key_len]),
            acks: msg::Acks::Durable as i32,
        };
        let mut buf = weir_wire::frame::encode_frame_to_vec(header, &req, &b.build());
        let span = buf.as_ptr_range();
        let frame = weir_wire::decode_frame(&mut buf, 16 << 20)
            .unwrap()
            .unwrap();
        drop(buf);
        let (written, _) = tokio::sync::oneshot::channel();
        let out = produce(
            &broker,
            &Access::unchecked(weir_broker::access::Principal::Anonymous),
            frame,
            written,
            "test",
            false,
        )
        .await
        .unwrap();
        assert!(!out.head.is_empty());
        let f = broker
            .fetch("t", 0, 0, 16 << 20, 0, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(f.chunks.len(), 1);
        let in_place = span.contains(&f.chunks[0].as_ptr());
        broker.close().await.unwrap();
        in_place
    }

    /// A large frame's batch is stored as it arrived: what the broker holds is the frame's own
    /// memory, not a copy of it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_large_batch_is_stored_without_a_copy() {
        assert!(stored_in_place(1000, 0).await, "a 110 KB batch was copied");
    }

    /// A large batch in a frame that is mostly something else is copied, so that it does not
    /// keep the rest of the frame alive.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_that_is_not_most_of_its_frame_is_copied() {
        assert!(
            !stored_in_place(1000, 200_000).await,
            "a 110 KB batch kept a 310 KB frame"
        );
    }

    /// A small batch is copied: stored as it is, it would keep the whole read buffer it shares
    /// with other frames alive in the hot tail.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_small_batch_is_copied_out_of_the_read_buffer() {
        assert!(
            !stored_in_place(10, 0).await,
            "a 1 KB batch kept the frame's memory"
        );
    }
}
