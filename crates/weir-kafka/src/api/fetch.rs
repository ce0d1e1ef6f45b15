//! Fetch: long-polls on every partition asked for until one has data enough or `max_wait_ms`
//! passes, then answers with the stored batches themselves as pieces of one vectored write.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::FetchTopic;
use kafka_protocol::messages::fetch_response::PartitionData;
use kafka_protocol::messages::{BrokerId, FetchRequest, TopicName};
use kafka_protocol::protocol::Encodable;
use uuid::Uuid;
use weir_broker::access::{Operation, ResourceType};
use weir_broker::broker::OffsetSpec;
use weir_broker::flow::QuotaKind;
use weir_broker::{Broker, BrokerError};

use super::resolve;
use crate::dispatch::Ctx;
use crate::{MAX_REQUEST_BYTES, code, error_code};

/// Waits as the request asks, then reads. The answer is encoded by [`encode`].
pub(crate) async fn handle(cx: &mut Ctx<'_>, r: FetchRequest) -> Answer {
    let broker = &cx.kafka.broker;
    let max_wait = Duration::from_millis(r.max_wait_ms.clamp(0, 30_000) as u64);
    let min_bytes = r.min_bytes.max(0) as usize;
    let total_max = (r.max_bytes.max(1) as usize).min(MAX_REQUEST_BYTES);
    let deadline = tokio::time::Instant::now() + max_wait;
    // Topics are named by name up to v12, by id from v13.
    let by_id = cx.version >= 13;
    let topics: Vec<Asked<'_>> = r
        .topics
        .iter()
        .map(|t| {
            let name = resolve(broker, &t.topic, &t.topic_id, by_id);
            let allowed = name
                .as_deref()
                .is_none_or(|n| cx.allows(Operation::Read, ResourceType::Topic, n));
            Asked {
                name,
                allowed,
                topic: t,
            }
        })
        .collect();
    // Long-poll on every partition asked for: answered as soon as any of them has data
    // enough, or at max_wait.
    let mut watches: Vec<tokio::sync::watch::Receiver<u64>> = topics
        .iter()
        .filter(|t| t.allowed)
        .filter_map(|t| Some((t.name.as_deref()?, t.topic)))
        .flat_map(|(name, t)| {
            t.partitions.iter().filter_map(move |p| {
                let part = u32::try_from(p.partition).ok()?;
                broker.watch_high_watermark(name, part).ok()
            })
        })
        .take(MAX_WATCHED_PARTITIONS)
        .collect();
    loop {
        for w in &mut watches {
            w.borrow_and_update();
        }
        let (responses, total) = fetch_pass(broker, &topics, total_max).await;
        if total >= min_bytes.max(1)
            || min_bytes == 0
            || watches.is_empty()
            || tokio::time::Instant::now() >= deadline
        {
            cx.charge(QuotaKind::Fetch, total as u64);
            broker
                .activity()
                .door(weir_broker::activity::Door::Kafka)
                .delivered(total as u64);
            return responses;
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
    }
}

/// Most partitions one Fetch long-polls on (the rest are still read, just not watched).
const MAX_WATCHED_PARTITIONS: usize = 1024;

/// A topic of a Fetch: as asked, and its name (`None`: asked by an id no topic has).
struct Asked<'a> {
    name: Option<String>,
    /// The client may read it.
    allowed: bool,
    topic: &'a FetchTopic,
}

/// One pass over the partitions of a Fetch, without waiting: each partition's data (at least
/// the whole batch holding the fetch offset) within the request's byte limits.
async fn fetch_pass(broker: &Broker, topics: &[Asked<'_>], total_max: usize) -> (Answer, usize) {
    let mut responses = Vec::with_capacity(topics.len());
    let mut total = 0usize;
    for Asked {
        name,
        allowed,
        topic: t,
    } in topics
    {
        let mut parts = Vec::with_capacity(t.partitions.len());
        if !allowed {
            for p in &t.partitions {
                let refused = failed(p.partition, code::TOPIC_AUTHORIZATION_FAILED);
                parts.push((refused, Vec::new()));
            }
            responses.push((t.topic.clone(), t.topic_id, parts));
            continue;
        }
        let Some(name) = name.as_deref() else {
            for p in &t.partitions {
                parts.push((failed(p.partition, code::UNKNOWN_TOPIC_ID), Vec::new()));
            }
            responses.push((t.topic.clone(), t.topic_id, parts));
            continue;
        };
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
                Err(e) => (failed(p.partition, error_code(&e)), Vec::new()),
            });
        }
        responses.push((t.topic.clone(), t.topic_id, parts));
    }
    (responses, total)
}

/// A partition's entry that brings nothing but `error`.
fn failed(partition: i32, error: i16) -> PartitionData {
    PartitionData::default()
        .with_partition_index(partition)
        .with_error_code(error)
        .with_high_watermark(-1)
        .with_last_stable_offset(-1)
        .with_log_start_offset(-1)
        .with_preferred_read_replica(BrokerId(-1))
}

/// A Fetch answer before encoding: per topic (its name up to v12, its id from v13), per
/// partition, its fields and its stored batches.
pub(crate) type Answer = Vec<(TopicName, Uuid, Vec<(PartitionData, Vec<Bytes>)>)>;

/// Encodes a Fetch response after `head` (size prefix placeholder and response header) as
/// pieces for one vectored write: the stored batches are not copied. Each partition's
/// `records` is the last field of its entry but for the tagged-field section that closes the
/// entry in flexible versions (12+), so the entry is encoded with empty records and that
/// length rewritten to the batches' total, which follow as their own pieces, then the entry's
/// (empty) tagged fields. Patches the size prefix. Written by hand rather than by the crate's
/// encoder because the encoder would copy every stored batch into the response.
pub(crate) fn encode(
    head: BytesMut,
    version: i16,
    throttle_ms: i32,
    topics: Answer,
) -> Option<Vec<Bytes>> {
    if !(4..=18).contains(&version) {
        return None;
    }
    let flexible = version >= 12;
    let mut pieces: Vec<Bytes> = Vec::new();
    let mut cur = head;
    let mut first: Option<BytesMut> = None;
    cur.put_i32(throttle_ms);
    if version >= 7 {
        cur.put_i16(code::NONE);
        cur.put_i32(0); // session id: no fetch sessions
    }
    put_len(&mut cur, topics.len(), flexible)?;
    let mut total = 0usize;
    for (name, id, partitions) in topics {
        if version >= 13 {
            cur.extend_from_slice(id.as_bytes());
        } else {
            let n = name.0.as_bytes();
            if flexible {
                put_uvarint(&mut cur, u32::try_from(n.len() + 1).ok()?);
            } else {
                cur.put_i16(i16::try_from(n.len()).ok()?);
            }
            cur.extend_from_slice(n);
        }
        put_len(&mut cur, partitions.len(), flexible)?;
        for (data, chunks) in partitions {
            data.with_records(Some(Bytes::new()))
                .encode(&mut cur, version)
                .ok()?;
            let len: usize = chunks.iter().map(Bytes::len).sum();
            if flexible {
                // Empty compact records (length + 1 = 1), then no tagged fields: the entry
                // sets none of its tagged fields.
                if !cur.ends_with(&[1, 0]) {
                    return None;
                }
                cur.truncate(cur.len() - 2);
                put_uvarint(&mut cur, u32::try_from(len + 1).ok()?);
            } else {
                cur.truncate(cur.len() - 4);
                cur.put_i32(i32::try_from(len).ok()?);
            }
            if len > 0 {
                let piece = cur.split();
                total += piece.len() + len;
                match first {
                    None => first = Some(piece),
                    Some(_) => pieces.push(piece.freeze()),
                }
                pieces.extend(chunks.into_iter().filter(|c| !c.is_empty()));
            }
            if flexible {
                cur.put_u8(0); // the entry's tagged fields
            }
        }
        if flexible {
            cur.put_u8(0); // the topic's tagged fields
        }
    }
    if flexible {
        cur.put_u8(0); // the response's tagged fields
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

/// An array's length: `i32`, or (flexible) a compact unsigned varint of the length + 1.
fn put_len(buf: &mut BytesMut, len: usize, flexible: bool) -> Option<()> {
    if flexible {
        put_uvarint(buf, u32::try_from(len + 1).ok()?);
    } else {
        buf.put_i32(i32::try_from(len).ok()?);
    }
    Some(())
}

fn put_uvarint(buf: &mut BytesMut, mut v: u32) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}
