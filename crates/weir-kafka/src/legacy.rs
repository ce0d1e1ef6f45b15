//! Versions Kafka 3.9 serves below the `kafka-protocol` crate's (which follows Kafka 4, where
//! KIP-896 removed them): OffsetCommit v0–1, OffsetFetch v0, ListOffsets v0, DescribeConfigs
//! v0, CreateTopics v0–1, DeleteTopics v0 and OffsetForLeaderEpoch v0–1. Older clients (and clients told an old broker version) still send
//! them; refused, their groups never commit and re-read everything after a restart.
//!
//! The crate can neither decode these requests nor encode their answers, so they are read here
//! by hand into the crate's request types (the handlers then serve them as any other version)
//! and their answers written by hand, or by the crate at a later version with the same layout.
//! By hand, not by widening the guard: every count here is only iterated, each element read
//! from the bytes that are there, so nothing is reserved from a count on the wire, and the
//! elements of one request are capped as the guard caps them.
//!
//! Produce v0–2 and Fetch v0–3 are not here: they carry message formats 0 and 1, which weir
//! does not store.

use bytes::{BufMut, BytesMut};
use kafka_protocol::messages::create_topics_request::{
    CreatableReplicaAssignment, CreatableTopic, CreatableTopicConfig,
};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::{
    ApiKey, BrokerId, CreateTopicsRequest, DeleteTopicsRequest, DescribeConfigsRequest, GroupId,
    ListOffsetsRequest, OffsetCommitRequest, OffsetFetchRequest, OffsetForLeaderEpochRequest,
    RequestHeader, RequestKind, ResponseKind, TopicName,
};
use kafka_protocol::protocol::{Encodable, StrBytes};
use weir_batch::cursor::Cursor;

use crate::api::topic_configs::SOURCE_DEFAULT;
use crate::guard::MAX_ELEMENTS;

/// The (API, versions) read and written here.
pub(crate) const LEGACY: &[(ApiKey, i16, i16)] = &[
    (ApiKey::OffsetCommit, 0, 1),
    (ApiKey::OffsetFetch, 0, 0),
    (ApiKey::CreateTopics, 0, 1),
    (ApiKey::DeleteTopics, 0, 0),
    (ApiKey::DescribeConfigs, 0, 0),
    (ApiKey::ListOffsets, 0, 0),
    (ApiKey::OffsetForLeaderEpoch, 0, 1),
];

/// Whether `version` of `api` is one of these.
pub(crate) fn covers(api: ApiKey, version: i16) -> bool {
    LEGACY
        .iter()
        .any(|&(a, min, max)| a == api && (min..=max).contains(&version))
}

/// Why a legacy request could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LegacyError(String);

type Read<T> = Result<T, LegacyError>;

/// The reader: a cursor over the frame, and the elements of arrays counted so far.
struct Reader<'a> {
    cur: Cursor<'a>,
    elements: u64,
}

impl<'a> Reader<'a> {
    fn cut(what: &str) -> LegacyError {
        LegacyError(format!("request cut short in {what}"))
    }

    fn i8(&mut self, what: &str) -> Read<i8> {
        self.cur
            .u8()
            .map(|b| b as i8)
            .ok_or_else(|| Self::cut(what))
    }

    fn i16(&mut self, what: &str) -> Read<i16> {
        self.cur.i16().ok_or_else(|| Self::cut(what))
    }

    fn i32(&mut self, what: &str) -> Read<i32> {
        self.cur.i32().ok_or_else(|| Self::cut(what))
    }

    fn i64(&mut self, what: &str) -> Read<i64> {
        self.cur
            .u64()
            .map(|v| v as i64)
            .ok_or_else(|| Self::cut(what))
    }

    fn bool(&mut self, what: &str) -> Read<bool> {
        Ok(self.i8(what)? != 0)
    }

    /// A classic string: an `i16` length (-1: null), then UTF-8.
    fn nullable_str(&mut self, what: &str) -> Read<Option<StrBytes>> {
        let len = self.i16(what)?;
        if len == -1 {
            return Ok(None);
        }
        let len = usize::try_from(len)
            .map_err(|_| LegacyError(format!("negative length {len} in {what}")))?;
        let bytes = self.cur.take(len).ok_or_else(|| Self::cut(what))?;
        let s =
            std::str::from_utf8(bytes).map_err(|_| LegacyError(format!("{what} is not UTF-8")))?;
        Ok(Some(StrBytes::from_string(s.to_string())))
    }

    fn str(&mut self, what: &str) -> Read<StrBytes> {
        self.nullable_str(what)?
            .ok_or_else(|| LegacyError(format!("{what} is null")))
    }

    /// A classic array: an `i32` count (-1: null), then each element read by `elem`. The
    /// count is only iterated: each element must be there to be read.
    fn nullable_array<T>(
        &mut self,
        what: &str,
        mut elem: impl FnMut(&mut Self) -> Read<T>,
    ) -> Read<Option<Vec<T>>> {
        let count = self.i32(what)?;
        if count == -1 {
            return Ok(None);
        }
        let count = u64::try_from(count)
            .map_err(|_| LegacyError(format!("negative count {count} in {what}")))?;
        self.elements = self.elements.saturating_add(count);
        if self.elements > MAX_ELEMENTS {
            return Err(LegacyError(format!(
                "more than {MAX_ELEMENTS} array elements in one request"
            )));
        }
        let mut out = Vec::new();
        for _ in 0..count {
            if self.cur.rest().is_empty() {
                return Err(Self::cut(what));
            }
            out.push(elem(self)?);
        }
        Ok(Some(out))
    }

    fn array<T>(&mut self, what: &str, elem: impl FnMut(&mut Self) -> Read<T>) -> Read<Vec<T>> {
        self.nullable_array(what, elem)?
            .ok_or_else(|| LegacyError(format!("{what} is null")))
    }
}

/// Reads a legacy request (header v1, then the body) into the crate's types.
pub(crate) fn decode(
    api: ApiKey,
    version: i16,
    frame: &[u8],
) -> Result<(RequestHeader, RequestKind), LegacyError> {
    let mut r = Reader {
        cur: Cursor(frame),
        elements: 0,
    };
    let key = r.i16("the header")?;
    let v = r.i16("the header")?;
    if key != api as i16 || v != version {
        return Err(LegacyError(
            "the header names another API or version".into(),
        ));
    }
    let header = RequestHeader::default()
        .with_request_api_key(key)
        .with_request_api_version(v)
        .with_correlation_id(r.i32("the header")?)
        .with_client_id(r.nullable_str("the client id")?);
    let request = match api {
        ApiKey::OffsetCommit => RequestKind::OffsetCommit(offset_commit(&mut r, version)?),
        ApiKey::OffsetFetch => RequestKind::OffsetFetch(
            OffsetFetchRequest::default()
                .with_group_id(GroupId(r.str("the group")?))
                .with_topics(Some(r.array("the topics", |r| {
                    Ok(OffsetFetchRequestTopic::default()
                        .with_name(TopicName(r.str("a topic name")?))
                        .with_partition_indexes(r.array("partitions", |r| r.i32("a partition"))?))
                })?)),
        ),
        ApiKey::DescribeConfigs => RequestKind::DescribeConfigs(
            DescribeConfigsRequest::default().with_resources(r.array("the resources", |r| {
                Ok(DescribeConfigsResource::default()
                    .with_resource_type(r.i8("a resource type")?)
                    .with_resource_name(r.str("a resource name")?)
                    .with_configuration_keys(
                        r.nullable_array("config names", |r| r.str("a config name"))?,
                    ))
            })?),
        ),
        ApiKey::CreateTopics => RequestKind::CreateTopics(create_topics(&mut r, version)?),
        // v0: per partition a time and how many offsets to list; one at most is listed.
        ApiKey::ListOffsets => RequestKind::ListOffsets(
            ListOffsetsRequest::default()
                .with_replica_id(BrokerId(r.i32("the replica id")?))
                .with_topics(r.array("the topics", |r| {
                    Ok(ListOffsetsTopic::default()
                        .with_name(TopicName(r.str("a topic name")?))
                        .with_partitions(r.array("partitions", |r| {
                            let partition = ListOffsetsPartition::default()
                                .with_partition_index(r.i32("a partition")?)
                                .with_timestamp(r.i64("a time")?);
                            r.i32("max_num_offsets")?;
                            Ok(partition)
                        })?))
                })?),
        ),
        ApiKey::OffsetForLeaderEpoch => RequestKind::OffsetForLeaderEpoch(
            OffsetForLeaderEpochRequest::default().with_topics(r.array("the topics", |r| {
                Ok(OffsetForLeaderTopic::default()
                    .with_topic(TopicName(r.str("a topic name")?))
                    .with_partitions(r.array("partitions", |r| {
                        Ok(OffsetForLeaderPartition::default()
                            .with_partition(r.i32("a partition")?)
                            .with_leader_epoch(r.i32("a leader epoch")?))
                    })?))
            })?),
        ),
        ApiKey::DeleteTopics => RequestKind::DeleteTopics(
            DeleteTopicsRequest::default()
                .with_topic_names(r.array("the topics", |r| Ok(TopicName(r.str("a topic")?)))?)
                .with_timeout_ms(r.i32("the timeout")?),
        ),
        _ => return Err(LegacyError(format!("{api:?} v{version} is not read here"))),
    };
    Ok((header, request))
}

/// OffsetCommit v0: the group, then per topic per partition its offset and metadata. v1 adds
/// the generation and member id, and a commit timestamp per partition (Kafka 3.9 ignores it
/// as well).
fn offset_commit(r: &mut Reader, version: i16) -> Read<OffsetCommitRequest> {
    let group = GroupId(r.str("the group")?);
    let (generation, member) = if version >= 1 {
        (r.i32("the generation")?, r.str("the member id")?)
    } else {
        (-1, StrBytes::default())
    };
    let topics = r.array("the topics", |r| {
        Ok(OffsetCommitRequestTopic::default()
            .with_name(TopicName(r.str("a topic name")?))
            .with_partitions(r.array("partitions", |r| {
                let index = r.i32("a partition")?;
                let offset = r.i64("an offset")?;
                if version >= 1 {
                    r.i64("a commit timestamp")?;
                }
                Ok(OffsetCommitRequestPartition::default()
                    .with_partition_index(index)
                    .with_committed_offset(offset)
                    .with_committed_metadata(r.nullable_str("metadata")?))
            })?))
    })?;
    Ok(OffsetCommitRequest::default()
        .with_group_id(group)
        .with_generation_id_or_member_epoch(generation)
        .with_member_id(member)
        .with_topics(topics))
}

/// CreateTopics v0: per topic its name, partitions, replication factor, replica assignments
/// and configs, then the timeout; v1 adds validate_only.
fn create_topics(r: &mut Reader, version: i16) -> Read<CreateTopicsRequest> {
    let topics = r.array("the topics", |r| {
        Ok(CreatableTopic::default()
            .with_name(TopicName(r.str("a topic name")?))
            .with_num_partitions(r.i32("a partition count")?)
            .with_replication_factor(r.i16("a replication factor")?)
            .with_assignments(r.array("assignments", |r| {
                Ok(CreatableReplicaAssignment::default()
                    .with_partition_index(r.i32("an assigned partition")?)
                    .with_broker_ids(r.array("broker ids", |r| Ok(BrokerId(r.i32("a broker")?)))?))
            })?)
            .with_configs(r.array("configs", |r| {
                Ok(CreatableTopicConfig::default()
                    .with_name(r.str("a config name")?)
                    .with_value(r.nullable_str("a config value")?))
            })?))
    })?;
    let request = CreateTopicsRequest::default()
        .with_topics(topics)
        .with_timeout_ms(r.i32("the timeout")?);
    Ok(if version >= 1 {
        request.with_validate_only(r.bool("validate_only")?)
    } else {
        request
    })
}

/// Writes the answer to a legacy request after `out` (its size prefix and response header).
pub(crate) fn encode(
    api: ApiKey,
    version: i16,
    response: &ResponseKind,
    out: &mut BytesMut,
) -> Result<(), String> {
    match response {
        // The same layout as v2 (which adds nothing to the answer) and v1.
        ResponseKind::OffsetCommit(r) => r.encode(out, 2).map_err(|e| e.to_string()),
        ResponseKind::OffsetFetch(r) => r.encode(out, 1).map_err(|e| e.to_string()),
        ResponseKind::CreateTopics(r) => {
            put_len(out, r.topics.len())?;
            for t in &r.topics {
                put_str(out, Some(&t.name.0))?;
                out.put_i16(t.error_code);
                if version >= 1 {
                    put_str(out, t.error_message.as_deref())?;
                }
            }
            Ok(())
        }
        // v0 lists offsets (at most one here) where later versions give one offset and time.
        ResponseKind::ListOffsets(r) => {
            put_len(out, r.topics.len())?;
            for t in &r.topics {
                put_str(out, Some(&t.name.0))?;
                put_len(out, t.partitions.len())?;
                for p in &t.partitions {
                    out.put_i32(p.partition_index);
                    out.put_i16(p.error_code);
                    let listed = usize::from(p.error_code == 0 && p.offset >= 0);
                    put_len(out, listed)?;
                    if listed == 1 {
                        out.put_i64(p.offset);
                    }
                }
            }
            Ok(())
        }
        // v0 has no leader epoch in the answer; v1 has it after the partition.
        ResponseKind::OffsetForLeaderEpoch(r) => {
            put_len(out, r.topics.len())?;
            for t in &r.topics {
                put_str(out, Some(&t.topic.0))?;
                put_len(out, t.partitions.len())?;
                for p in &t.partitions {
                    out.put_i16(p.error_code);
                    out.put_i32(p.partition);
                    if version >= 1 {
                        out.put_i32(p.leader_epoch);
                    }
                    out.put_i64(p.end_offset);
                }
            }
            Ok(())
        }
        ResponseKind::DeleteTopics(r) => {
            put_len(out, r.responses.len())?;
            for t in &r.responses {
                put_str(out, t.name.as_ref().map(|n| &*n.0))?;
                out.put_i16(t.error_code);
            }
            Ok(())
        }
        // v0 has `is_default` where later versions have a source, and no synonyms.
        ResponseKind::DescribeConfigs(r) => {
            out.put_i32(r.throttle_time_ms);
            put_len(out, r.results.len())?;
            for res in &r.results {
                out.put_i16(res.error_code);
                put_str(out, res.error_message.as_deref())?;
                out.put_i8(res.resource_type);
                put_str(out, Some(&res.resource_name))?;
                put_len(out, res.configs.len())?;
                for c in &res.configs {
                    put_str(out, Some(&c.name))?;
                    put_str(out, c.value.as_deref())?;
                    out.put_u8(u8::from(c.read_only));
                    out.put_u8(u8::from(c.config_source == SOURCE_DEFAULT));
                    out.put_u8(u8::from(c.is_sensitive));
                }
            }
            Ok(())
        }
        _ => Err(format!("{api:?} v{version} has no legacy answer")),
    }
}

fn put_len(out: &mut BytesMut, len: usize) -> Result<(), String> {
    out.put_i32(i32::try_from(len).map_err(|_| format!("{len} elements"))?);
    Ok(())
}

fn put_str(out: &mut BytesMut, s: Option<&str>) -> Result<(), String> {
    match s {
        None => out.put_i16(-1),
        Some(s) => {
            out.put_i16(i16::try_from(s.len()).map_err(|_| format!("a {}-byte string", s.len()))?);
            out.extend_from_slice(s.as_bytes());
        }
    }
    Ok(())
}

/// The whole frame of a request, for tests: header v1, then `body`.
#[cfg(test)]
pub(crate) fn frame(api: ApiKey, version: i16, body: &[u8]) -> bytes::Bytes {
    let mut b = BytesMut::new();
    b.put_i16(api as i16);
    b.put_i16(version);
    b.put_i32(42);
    b.put_i16(6);
    b.extend_from_slice(b"legacy");
    b.extend_from_slice(body);
    b.freeze()
}
