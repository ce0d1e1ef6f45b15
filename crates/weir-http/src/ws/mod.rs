//! WebSocket live push at `/ws`.
//!
//! Layout:
//! - [`queue`]: one subscription's bounded queue and its overflow policy (sans-I/O).
//! - [`hub`]: feeds (one reader per watched partition, fanning out shared frames),
//!   connections, the heartbeat sweeper, the counters.
//! - this file: one connection — client operations in, queued frames out — and the
//!   replay that brings a new subscription up to its feed.
//!
//! Client operations (JSON text frames):
//! `{"op":"subscribe","topics":["quotes"],"keys":["AAPL"],"from":"latest"|"earliest"|"snapshot"|
//! {"offset":{"0":123}}|{"offsets":{"quotes":{"0":123}}}|{"timestamp":ms},"policy":"conflate"|"drop_oldest"|"disconnect",
//! "format":"json"|"binary"}` and `{"op":"unsubscribe","subscription":1}`.
//!
//! Server frames (JSON text): `{"type":"subscribed",..}`, `{"type":"record",..}`,
//! `{"type":"gap",..}`, `{"type":"dropped",..}`, `{"type":"error",..}`, and after a snapshot
//! `{"type":"snapshot_end",..}`.

pub mod hub;
pub mod queue;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use bytes::Bytes;
use futures::SinkExt;
use serde::Deserialize;
use weir_broker::access::{Operation, ResourceType};
use weir_broker::broker::OffsetSpec;
use weir_broker::{Access, BrokerError};
use weir_log::LogError;

use hub::{Conn, FLAG_CLOSE, FLAG_PING, Hub, Subscriber, error_notice, gap_notice};
use queue::{Entry, OutQueue, Policy};

use crate::records::Format;

/// Where a subscription starts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Start {
    #[default]
    Latest,
    Earliest,
    /// On a compacted topic: the latest record of every key (of the `keys` asked for), then
    /// a `snapshot_end` notice, then live records from where the snapshot ends.
    Snapshot,
    /// The next offset wanted per partition (a resuming client sends its last offset + 1);
    /// partitions not listed start at the latest offset.
    Offsets(BTreeMap<u32, u64>),
    /// The same per topic, for subscriptions to several topics: topic → partition → offset.
    TopicOffsets(BTreeMap<String, BTreeMap<u32, u64>>),
    Timestamp(i64),
}

impl<'de> Deserialize<'de> for Start {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Name(String),
            Offset {
                offset: BTreeMap<String, u64>,
            },
            Offsets {
                offsets: BTreeMap<String, BTreeMap<String, u64>>,
            },
            Timestamp {
                timestamp: i64,
            },
        }
        let bad = || {
            serde::de::Error::custom(
                "from must be \"latest\", \"earliest\", \"snapshot\", {\"offset\":{\"<partition>\":<offset>}}, \
                 {\"offsets\":{\"<topic>\":{\"<partition>\":<offset>}}} or {\"timestamp\":<ms>}",
            )
        };
        let partitions = |m: BTreeMap<String, u64>| {
            m.into_iter()
                .map(|(p, o)| p.parse::<u32>().map(|p| (p, o)).map_err(|_| bad()))
                .collect::<Result<BTreeMap<u32, u64>, D::Error>>()
        };
        match Raw::deserialize(d).map_err(|_| bad())? {
            Raw::Name(n) if n == "latest" => Ok(Start::Latest),
            Raw::Name(n) if n == "earliest" => Ok(Start::Earliest),
            Raw::Name(n) if n == "snapshot" => Ok(Start::Snapshot),
            Raw::Name(_) => Err(bad()),
            Raw::Offset { offset } => partitions(offset).map(Start::Offsets),
            Raw::Offsets { offsets } => offsets
                .into_iter()
                .map(|(t, m)| partitions(m).map(|m| (t, m)))
                .collect::<Result<_, _>>()
                .map(Start::TopicOffsets),
            Raw::Timestamp { timestamp } => Ok(Start::Timestamp(timestamp)),
        }
    }
}

/// One operation from a client.
#[derive(Debug, PartialEq, Eq, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientOp {
    Subscribe {
        topics: Vec<String>,
        #[serde(default)]
        keys: Option<Vec<String>>,
        #[serde(default)]
        from: Start,
        #[serde(default)]
        policy: Policy,
        #[serde(default)]
        format: Format,
    },
    Unsubscribe {
        subscription: u32,
    },
}

impl ClientOp {
    /// One text frame from a client as an operation, or the reason it is refused (sent back
    /// as a `bad_request` error notice): malformed JSON, or a subscription without topics or
    /// naming one twice (it would be replayed twice). What needs the broker or the
    /// connection (do the topics exist, how many subscriptions are open) is checked by the
    /// caller. Pure, so the fuzz target `ws_client_op` drives exactly what a connection runs.
    pub fn parse(text: &str) -> Result<ClientOp, String> {
        let op = serde_json::from_str::<ClientOp>(text).map_err(|e| e.to_string())?;
        if let ClientOp::Subscribe { topics, .. } = &op {
            if topics.is_empty() {
                return Err("topics is empty".into());
            }
            let mut listed = HashSet::new();
            if let Some(t) = topics.iter().find(|t| !listed.insert(t.as_str())) {
                return Err(format!("topic '{t}' is listed twice"));
            }
        }
        Ok(op)
    }
}

/// Frames sent per wake-up before the connection looks at its socket again.
const SEND_BATCH: usize = 64;

/// How long a close frame may take to go out to a client that is not reading.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Runs one WebSocket connection until either side closes it.
pub async fn run_connection(mut socket: WebSocket, hub: Arc<Hub>, access: Arc<Access>) {
    let conn = hub.connect();
    let mut feeds: Vec<(String, u32, Format)> = Vec::new();
    let mut subs = Subscriptions::default();
    let mut generation = access.generation();
    loop {
        // Rules read anew: subscriptions their reader may no longer read end before another
        // of their records goes out (records arriving wake this loop).
        if access.generation() != generation {
            generation = access.generation();
            revoke(&hub, &conn, &access, &feeds, &mut subs);
        }
        let flags = conn.flags.swap(0, Ordering::AcqRel);
        if flags & FLAG_CLOSE != 0 {
            let (code, reason) = conn
                .state
                .lock()
                .close
                .clone()
                .unwrap_or((hub::CLOSE_GOING_AWAY, String::new()));
            let frame = Message::Close(Some(CloseFrame {
                code,
                reason: Utf8Bytes::from(reason),
            }));
            let _ = tokio::time::timeout(CLOSE_GRACE, socket.send(frame)).await;
            break;
        }
        let mut out = Vec::new();
        if flags & FLAG_PING != 0 {
            out.push(Message::Ping(Bytes::new()));
        }
        let drained = take_frames(&conn, &hub, &mut out);
        if !out.is_empty() {
            if !Box::pin(send_frames(&mut socket, &conn, out)).await {
                if conn.flags.load(Ordering::Acquire) & FLAG_CLOSE != 0 {
                    continue; // send the close frame
                }
                break;
            }
            conn.room.notify_waiters();
            if !drained {
                continue;
            }
            // Drained: whatever was queued since has left a permit in `wake` (every push,
            // flag and close notifies it), so waiting below misses nothing and spares a
            // second look at the queues on every wake-up.
        }
        tokio::select! {
            msg = socket.recv() => {
                let Some(Ok(msg)) = msg else { break };
                conn.last_seen.store(hub.now_ms(), Ordering::Relaxed);
                match msg {
                    Message::Text(text) => {
                        on_text(&hub, &conn, &access, &mut feeds, &mut subs, text.as_str());
                    }
                    Message::Binary(_) => conn.close(
                        hub::CLOSE_POLICY,
                        "send operations as JSON text frames".into(),
                    ),
                    Message::Close(_) => {
                        let _ = tokio::time::timeout(CLOSE_GRACE, socket.flush()).await;
                        break;
                    }
                    Message::Ping(_) | Message::Pong(_) => {}
                }
            }
            _ = conn.wake.notified() => {}
        }
    }
    {
        let mut st = conn.state.lock();
        for (_, q) in st.subs.iter_mut() {
            q.clear();
        }
    }
    hub.disconnect(&conn, &feeds);
}

/// Sends `frames`; gives up (false) when the connection is told to close meanwhile (a
/// `disconnect` overflow, the idle timeout, shutdown) or the socket fails.
async fn send_frames(socket: &mut WebSocket, conn: &Conn, frames: Vec<Message>) -> bool {
    let send = async {
        for f in frames {
            socket.feed(f).await?;
        }
        socket.flush().await
    };
    tokio::select! {
        r = send => r.is_ok(),
        _ = conn.closing.notified() => false,
    }
}

/// Moves up to [`SEND_BATCH`] frames out of the connection's queues, round robin, each
/// preceded by a `dropped` notice when its subscription lost records since the last frame.
/// True when it left every queue empty.
fn take_frames(conn: &Conn, hub: &Hub, out: &mut Vec<Message>) -> bool {
    let mut st = conn.state.lock();
    out.extend(st.direct.drain(..).map(Message::Text));
    let n = st.subs.len();
    if n == 0 {
        return true;
    }
    let mut idle_rounds = 0;
    let mut sent = 0u64;
    while out.len() < SEND_BATCH && idle_rounds < n {
        let i = st.next % n;
        st.next = st.next.wrapping_add(1);
        let (sub, q) = &mut st.subs[i];
        let Some((lost, entry)) = q.pop() else {
            idle_rounds += 1;
            continue;
        };
        idle_rounds = 0;
        if lost > 0 {
            let notice = serde_json::json!({
                "type": "dropped", "subscription": *sub, "count": lost,
                "policy": q.policy.as_str(),
            });
            out.push(Message::Text(Utf8Bytes::from(notice.to_string())));
        }
        match entry {
            Entry::Record(item) => {
                sent += 1;
                out.push(Message::Text(item.frame.clone()));
            }
            Entry::Notice(text) => out.push(Message::Text(text)),
        }
    }
    hub.stats.records_sent.add(conn.id, sent);
    idle_rounds >= n
}

fn on_text(
    hub: &Arc<Hub>,
    conn: &Arc<Conn>,
    access: &Access,
    feeds: &mut Vec<(String, u32, Format)>,
    subs: &mut Subscriptions,
    text: &str,
) {
    let op = match ClientOp::parse(text) {
        Ok(op) => op,
        Err(e) => {
            send_direct(conn, error_notice(None, "bad_request", &e));
            return;
        }
    };
    match op {
        ClientOp::Unsubscribe { subscription } => {
            if !unsubscribe(hub, conn, feeds, subs, subscription) {
                let msg = format!("there is no subscription {subscription}");
                send_direct(conn, error_notice(None, "bad_request", &msg));
            }
        }
        ClientOp::Subscribe {
            topics,
            keys,
            from,
            policy,
            format,
        } => {
            let fail = |code: &str, msg: String| {
                send_direct(conn, error_notice(None, code, &msg));
            };
            if conn.state.lock().subs.len() >= hub.config.max_subscriptions {
                return fail(
                    "bad_request",
                    format!(
                        "at most {} subscriptions per connection",
                        hub.config.max_subscriptions
                    ),
                );
            }
            let mut parts = Vec::new();
            for t in &topics {
                // Refused whether or not the topic exists, so that a refusal does not tell.
                if let Err(e) = access.check(Operation::Read, ResourceType::Topic, t) {
                    return fail("forbidden", e.to_string());
                }
                match hub.broker.partition_count(t) {
                    Some(n) => parts.extend((0..n).map(|p| (t.clone(), p))),
                    None => return fail("unknown_topic", format!("topic '{t}' does not exist")),
                }
            }
            let sub = subs.next;
            subs.next += 1;
            subs.topics.push((sub, topics.clone()));
            conn.state.lock().subs.push((
                sub,
                OutQueue::new(policy, hub.config.queue_messages, hub.config.queue_bytes),
            ));
            hub.stats.subscriptions_open.fetch_add(1, Ordering::Relaxed);
            for (t, p) in &parts {
                let key = (t.clone(), *p, format);
                if !feeds.contains(&key) {
                    feeds.push(key);
                }
            }
            let keys = keys.map(|k| {
                Arc::new(
                    k.into_iter()
                        .map(|k| Bytes::from(k.into_bytes()))
                        .collect::<HashSet<_>>(),
                )
            });
            let spec = SubSpec {
                sub,
                parts,
                keys,
                from,
                policy,
                format,
            };
            let (hub2, conn2) = (hub.clone(), conn.clone());
            hub.tasks
                .spawn(async move { subscribe(hub2, conn2, spec).await });
        }
    }
}

/// The connection's own record of its subscriptions: the next id, and the topics of each (to
/// be checked again when the access rules change).
#[derive(Debug)]
struct Subscriptions {
    next: u32,
    topics: Vec<(u32, Vec<String>)>,
}

impl Default for Subscriptions {
    fn default() -> Self {
        Self {
            next: 1,
            topics: Vec::new(),
        }
    }
}

/// Ends `subscription`: its queue, its places in the feeds. False when there was none.
fn unsubscribe(
    hub: &Hub,
    conn: &Conn,
    feeds: &[hub::FeedKey],
    subs: &mut Subscriptions,
    subscription: u32,
) -> bool {
    subs.topics.retain(|(id, _)| *id != subscription);
    let mut st = conn.state.lock();
    let before = st.subs.len();
    st.subs.retain(|(id, _)| *id != subscription);
    let removed = (before - st.subs.len()) as u64;
    drop(st);
    hub.leave(conn, subscription, feeds);
    hub.stats
        .subscriptions_open
        .fetch_sub(removed, Ordering::Relaxed);
    removed > 0
}

/// Ends, each with a `forbidden` notice, the subscriptions to a topic `access` no longer lets
/// the client read.
fn revoke(
    hub: &Hub,
    conn: &Conn,
    access: &Access,
    feeds: &[hub::FeedKey],
    subs: &mut Subscriptions,
) {
    let refused: Vec<(u32, String)> = subs
        .topics
        .iter()
        .filter_map(|(id, topics)| {
            topics.iter().find_map(|t| {
                access
                    .check(Operation::Read, ResourceType::Topic, t)
                    .err()
                    .map(|e| (*id, e.to_string()))
            })
        })
        .collect();
    for (id, why) in refused {
        if unsubscribe(hub, conn, feeds, subs, id) {
            send_direct(conn, error_notice(Some(id), "forbidden", &why));
        }
    }
}

/// Queues a notice that belongs to no subscription (a malformed operation): it goes out
/// ahead of everything queued.
fn send_direct(conn: &Conn, text: String) {
    conn.state.lock().direct.push(Utf8Bytes::from(text));
    conn.wake.notify_one();
}

#[derive(Debug)]
struct SubSpec {
    sub: u32,
    parts: Vec<(String, u32)>,
    keys: Option<Arc<HashSet<Bytes>>>,
    from: Start,
    policy: Policy,
    format: Format,
}

async fn resolve(hub: &Hub, topic: &str, partition: u32, from: &Start) -> Result<u64, BrokerError> {
    let latest = hub
        .broker
        .list_offsets(topic, partition, OffsetSpec::Latest)
        .await?;
    Ok(match from {
        // The snapshot's end, planned by the caller.
        Start::Latest | Start::Snapshot => latest,
        Start::Earliest => {
            hub.broker
                .list_offsets(topic, partition, OffsetSpec::Earliest)
                .await?
        }
        Start::Offsets(map) => map.get(&partition).map_or(latest, |o| (*o).min(latest)),
        Start::TopicOffsets(map) => map
            .get(topic)
            .and_then(|m| m.get(&partition))
            .map_or(latest, |o| (*o).min(latest)),
        Start::Timestamp(ts) => {
            hub.broker
                .list_offsets(topic, partition, OffsetSpec::Timestamp(*ts))
                .await?
        }
    })
}

/// Brings a new subscription live: resolves where each partition starts, acknowledges, then
/// per partition replays what the partition's feed has already passed and joins the feed.
async fn subscribe(hub: Arc<Hub>, conn: Arc<Conn>, spec: SubSpec) {
    let fail = |e: BrokerError| {
        let code = crate::error::ApiError::from(e.clone()).code.as_str();
        conn.notice(spec.sub, error_notice(Some(spec.sub), code, &e.to_string()));
    };
    let mut starts = Vec::with_capacity(spec.parts.len());
    let mut snapshots = Vec::new();
    for (t, p) in &spec.parts {
        let start = if spec.from == Start::Snapshot {
            let only = spec.keys.as_ref().map(|k| k.iter().cloned().collect());
            hub.broker.snapshot(t, *p, only).await.map(|plan| {
                let end = plan.end();
                snapshots.push(plan);
                end
            })
        } else {
            resolve(&hub, t, *p, &spec.from).await
        };
        match start {
            Ok(o) => starts.push(o),
            Err(e) => return fail(e),
        }
    }
    let ack = serde_json::json!({
        "type": "subscribed",
        "subscription": spec.sub,
        "policy": spec.policy.as_str(),
        "snapshot": spec.from == Start::Snapshot,
        "partitions": spec.parts.iter().zip(&starts).map(|((t, p), o)| {
            serde_json::json!({"topic": t, "partition": p, "from": o})
        }).collect::<Vec<_>>(),
    });
    conn.notice(spec.sub, ack.to_string());
    if spec.from == Start::Snapshot {
        // Every partition's snapshot, then the marker, then (below) each partition from
        // where its snapshot ended: what was appended meanwhile is replayed, not lost.
        for ((topic, partition), plan) in spec.parts.iter().zip(snapshots) {
            if let Err(e) = send_snapshot(&hub, &conn, &spec, topic, *partition, plan).await {
                return fail(e);
            }
        }
        let end = serde_json::json!({
            "type": "snapshot_end",
            "subscription": spec.sub,
            "partitions": spec.parts.iter().zip(&starts).map(|((t, p), o)| {
                serde_json::json!({"topic": t, "partition": p, "next": o})
            }).collect::<Vec<_>>(),
        });
        conn.notice(spec.sub, end.to_string());
    }
    for ((topic, partition), start) in spec.parts.iter().zip(starts) {
        let mut sub = Subscriber {
            conn: conn.clone(),
            sub: spec.sub,
            keys: spec.keys.clone(),
            from: start,
        };
        let key = (topic.clone(), *partition, spec.format);
        loop {
            if conn.closed.load(Ordering::Acquire) {
                return;
            }
            let position = match hub.join(key.clone(), sub.clone()) {
                Ok(()) => break,
                Err(position) => position,
            };
            if !replay(&hub, &mut sub, topic, *partition, spec.format, position).await {
                return;
            }
        }
    }
}

/// Queues one partition's snapshot, paced by the client like a replay (never overflowing the
/// queue). Ends early, with `Ok`, when the connection closes.
async fn send_snapshot(
    hub: &Hub,
    conn: &Arc<Conn>,
    spec: &SubSpec,
    topic: &str,
    partition: u32,
    mut plan: weir_broker::keys::SnapshotReader,
) -> Result<(), BrokerError> {
    let sub = Subscriber {
        conn: conn.clone(),
        sub: spec.sub,
        keys: spec.keys.clone(),
        from: 0,
    };
    loop {
        if !wait_for_room(&sub).await {
            return Ok(());
        }
        let batches = hub
            .broker
            .read_snapshot(topic, partition, &mut plan, hub.config.fetch_bytes)
            .await?;
        if batches.is_empty() {
            return Ok(());
        }
        let (items, _) = hub::decode_items(&hub.broker, topic, partition, spec.format, &batches, 0)
            .await
            .map_err(BrokerError::Internal)?;
        hub.stats
            .records_fetched
            .fetch_add(items.len() as u64, Ordering::Relaxed);
        if !deliver_paced(hub, &sub, &items).await {
            return Ok(());
        }
    }
}

/// Queues `items` in slices that fit the room the queue has, so that a replay never
/// overflows a queue, however large the stored batches. False when the connection closed.
async fn deliver_paced(hub: &Hub, sub: &Subscriber, items: &[Arc<queue::Item>]) -> bool {
    let (max_records, max_bytes) = (hub.config.queue_messages / 2, hub.config.queue_bytes / 2);
    let mut rest = items;
    while !rest.is_empty() {
        let mut n = 0;
        let mut bytes = 0;
        while n < rest.len() && (n == 0 || (n < max_records && bytes + rest[n].size() <= max_bytes))
        {
            bytes += rest[n].size();
            n += 1;
        }
        if !wait_for_room(sub).await {
            return false;
        }
        sub.deliver(&rest[..n], &hub.stats);
        rest = &rest[n..];
    }
    true
}

/// Waits until the subscription's queue is at most half full. False when the connection
/// closed or the subscription ended (unsubscribed): a replay or snapshot for it stops there.
async fn wait_for_room(sub: &Subscriber) -> bool {
    loop {
        let room = sub.conn.room.notified();
        tokio::pin!(room);
        room.as_mut().enable();
        if sub.conn.closed.load(Ordering::Acquire) {
            return false;
        }
        match sub.conn.room_for(sub.sub) {
            None => return false,
            Some(true) => return true,
            Some(false) => {}
        }
        room.await;
    }
}

/// Replays `[sub.from, until)` of one partition into the subscription's queue, paced by its
/// client. Returns false when the subscription cannot go on.
async fn replay(
    hub: &Hub,
    sub: &mut Subscriber,
    topic: &str,
    partition: u32,
    format: Format,
    until: u64,
) -> bool {
    while sub.from < until {
        if !wait_for_room(sub).await {
            return false;
        }
        match hub
            .broker
            .read_at(topic, partition, sub.from, hub.config.fetch_bytes)
            .await
        {
            Ok(r) if r.is_empty() => {
                // Nothing stored from here to the end (compaction can leave a gap there):
                // caught up.
                sub.from = sub.from.max(r.high_watermark);
                return true;
            }
            Ok(r) => {
                match hub::decode_items(&hub.broker, topic, partition, format, &r.chunks, sub.from)
                    .await
                {
                    Ok((items, next)) => {
                        if !deliver_paced(hub, sub, &items).await {
                            return false;
                        }
                        hub.stats
                            .records_fetched
                            .fetch_add(items.len() as u64, Ordering::Relaxed);
                        match next {
                            Some(n) if n > sub.from => sub.from = n,
                            _ => return true,
                        }
                    }
                    Err(e) => {
                        sub.conn
                            .notice(sub.sub, error_notice(Some(sub.sub), "storage_error", &e));
                        return false;
                    }
                }
            }
            Err(BrokerError::Log(LogError::OffsetOutOfRange { log_start, .. }))
                if sub.from < log_start =>
            {
                hub.stats.gaps.fetch_add(1, Ordering::Relaxed);
                sub.conn.notice(
                    sub.sub,
                    gap_notice(sub.sub, topic, partition, sub.from, log_start),
                );
                sub.from = log_start;
            }
            Err(e) => {
                let code = crate::error::ApiError::from(e.clone()).code.as_str();
                sub.conn
                    .notice(sub.sub, error_notice(Some(sub.sub), code, &e.to_string()));
                return false;
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client allowed everything (a server without access control lists).
    fn open_access() -> Access {
        Access::unchecked(weir_broker::access::Principal::Anonymous)
    }
    use weir_broker::{Broker, BrokerConfig};

    fn batch(from: usize, n: usize) -> Bytes {
        let values: Vec<String> = (from..from + n).map(|i| format!("v{i}")).collect();
        let mut b = weir_batch::BatchBuilder::new(1);
        for v in &values {
            b.push(weir_batch::RecordSpec::keyed(b"k", v.as_bytes()));
        }
        Bytes::from(b.build())
    }

    /// A broker in `dir` with `topics` created.
    async fn broker_with(dir: &tempfile::TempDir, topics: &[&str]) -> Broker {
        let broker = Broker::open(BrokerConfig {
            data_dir: dir.path().to_path_buf(),
            ..BrokerConfig::default()
        })
        .unwrap();
        for t in topics {
            broker.create_topic(t, None).await.unwrap();
        }
        broker
    }

    /// Offsets of the records queued for the connection's first subscription.
    fn drain(conn: &Conn, into: &mut Vec<u64>) {
        let mut st = conn.state.lock();
        let q = &mut st.subs[0].1;
        while let Some((lost, e)) = q.pop() {
            assert_eq!(lost, 0);
            if let Entry::Record(item) = e {
                into.push(item.offset);
            }
        }
        drop(st);
        conn.room.notify_waiters();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_subscriber_behind_the_feed_replays_then_joins_without_gap_or_duplicate() {
        let dir = tempfile::tempdir().unwrap();
        let broker = broker_with(&dir, &["t"]).await;
        broker
            .produce("t", Some(0), None, batch(0, 100))
            .await
            .unwrap();
        let config = hub::WsConfig {
            queue_messages: 64,
            fetch_bytes: 2048,
            ..hub::WsConfig::default()
        };
        let hub = Hub::new(broker.clone(), config);
        let spec = |sub, from| SubSpec {
            sub,
            parts: vec![("t".to_string(), 0)],
            keys: None,
            from,
            policy: Policy::Disconnect,
            format: Format::Json,
        };
        let subscribe_conn = |from| {
            let conn = hub.connect();
            conn.state
                .lock()
                .subs
                .push((1, OutQueue::new(Policy::Disconnect, 64, 1 << 20)));
            tokio::spawn(subscribe(hub.clone(), conn.clone(), spec(1, from)));
            conn
        };
        // The first subscriber starts the feed at the end of the log.
        let live = subscribe_conn(Start::Latest);
        // Records keep arriving while a second subscriber starts far behind the feed and
        // replays, in steps smaller than the backlog, paced by its (small) queue.
        let producer = {
            let broker = broker.clone();
            tokio::spawn(async move {
                for i in 0..40 {
                    broker
                        .produce("t", Some(0), None, batch(100 + i * 5, 5))
                        .await
                        .unwrap();
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let behind = subscribe_conn(Start::Offsets([(0, 30)].into()));
        let (mut got_live, mut got_behind) = (Vec::new(), Vec::new());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while got_behind.len() < 270 || got_live.len() < 200 {
            drain(&live, &mut got_live);
            drain(&behind, &mut got_behind);
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} {}",
                got_live.len(),
                got_behind.len()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        producer.await.unwrap();
        assert_eq!(got_live, (100..300).collect::<Vec<_>>());
        assert_eq!(got_behind, (30..300).collect::<Vec<_>>());
        assert!(live.state.lock().close.is_none(), "no overflow");
        assert!(behind.state.lock().close.is_none(), "no overflow");
        // One feed for both.
        assert_eq!(hub.stats.feeds_open.load(Ordering::Relaxed), 1);
        hub.shutdown();
        broker.close().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_first_subscriber_far_behind_replays_at_its_pace_before_starting_the_feed() {
        let dir = tempfile::tempdir().unwrap();
        let broker = broker_with(&dir, &["t"]).await;
        for i in 0..30 {
            broker
                .produce("t", Some(0), None, batch(i * 20, 20))
                .await
                .unwrap();
        }
        // A queue far smaller than the backlog, and reads far larger than the queue.
        let config = hub::WsConfig {
            queue_messages: 32,
            fetch_bytes: 2048,
            ..hub::WsConfig::default()
        };
        let hub = Hub::new(broker.clone(), config);
        let conn = hub.connect();
        conn.state
            .lock()
            .subs
            .push((1, OutQueue::new(Policy::Disconnect, 32, 1 << 20)));
        let spec = SubSpec {
            sub: 1,
            parts: vec![("t".to_string(), 0)],
            keys: None,
            from: Start::Earliest,
            policy: Policy::Disconnect,
            format: Format::Json,
        };
        tokio::spawn(subscribe(hub.clone(), conn.clone(), spec));
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while got.len() < 600 {
            assert!(
                conn.state.lock().close.is_none(),
                "disconnected at {}",
                got.len()
            );
            assert!(tokio::time::Instant::now() < deadline, "{}", got.len());
            drain(&conn, &mut got);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // Then live, through the feed it started at the end.
        broker
            .produce("t", Some(0), None, batch(600, 5))
            .await
            .unwrap();
        while got.len() < 605 {
            assert!(tokio::time::Instant::now() < deadline, "{}", got.len());
            drain(&conn, &mut got);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert_eq!(got, (0..605).collect::<Vec<_>>());
        assert!(conn.state.lock().close.is_none());
        assert_eq!(hub.stats.feeds_open.load(Ordering::Relaxed), 1);
        hub.shutdown();
        broker.close().await.unwrap();
    }

    #[test]
    fn a_kafka_producers_compressed_batch_becomes_one_frame_per_record() {
        use std::io::Write;
        let plain = batch(0, 3);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&plain[weir_batch::HEADER_LEN..]).unwrap();
        let mut b = plain[..weir_batch::HEADER_LEN].to_vec();
        b.extend_from_slice(&gz.finish().unwrap());
        let len = (b.len() - 12) as i32;
        b[8..12].copy_from_slice(&len.to_be_bytes());
        b[22] |= 1; // gzip
        weir_batch::header::reseal(&mut b);
        let chunks = [plain, Bytes::from(b)];
        // The same three records, stored plain and stored gzipped (offsets 0..3 twice here:
        // only the decoding is under test).
        let (items, next) = hub::decode_items_here("t", 0, Format::Json, &chunks, 0).unwrap();
        assert_eq!(next, Some(3));
        let values: Vec<String> = items
            .iter()
            .map(|i| {
                let v: serde_json::Value = serde_json::from_str(i.frame.as_str()).unwrap();
                v["value"].as_str().unwrap().to_string()
            })
            .collect();
        assert_eq!(values, ["v0", "v1", "v2", "v0", "v1", "v2"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_empty_queue_takes_a_whole_fetch_and_the_bounds_apply_after() {
        let dir = tempfile::tempdir().unwrap();
        let broker = broker_with(&dir, &[]).await;
        let hub = Hub::new(broker.clone(), hub::WsConfig::default());
        let conn = hub.connect();
        conn.state
            .lock()
            .subs
            .push((1, OutQueue::new(Policy::Disconnect, 4, 1 << 20)));
        let sub = Subscriber {
            conn: conn.clone(),
            sub: 1,
            keys: None,
            from: 0,
        };
        let items = |from: u64, n: u64| -> Vec<Arc<queue::Item>> {
            (from..from + n)
                .map(|o| {
                    Arc::new(queue::Item {
                        offset: o,
                        key: None,
                        frame: Utf8Bytes::from(format!("record {o}")),
                    })
                })
                .collect()
        };
        // One fetch of 10 records (say, one decompressed Kafka batch) into an empty queue
        // bounded at 4: all queued, the subscriber is not taken for a slow one.
        sub.deliver(&items(0, 10), &hub.stats);
        assert!(conn.state.lock().close.is_none());
        let mut got = Vec::new();
        drain(&conn, &mut got);
        assert_eq!(got, (0..10).collect::<Vec<_>>());
        // A client that does not take them: the next fetch finds the queue full, and the
        // policy (disconnect) applies.
        sub.deliver(&items(10, 10), &hub.stats);
        assert!(
            conn.state.lock().close.is_none(),
            "empty again: taken whole"
        );
        sub.deliver(&items(20, 1), &hub.stats);
        let close = conn.state.lock().close.clone();
        assert!(
            close.is_some_and(|(code, _)| code == hub::CLOSE_SLOW_CONSUMER),
            "the bounds apply to a queue that is not empty"
        );
        broker.close().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_last_subscriber_leaving_stops_the_feed() {
        let dir = tempfile::tempdir().unwrap();
        let broker = broker_with(&dir, &["t"]).await;
        let hub = Hub::new(broker.clone(), hub::WsConfig::default());
        let conn = hub.connect();
        let mut feeds = Vec::new();
        let mut next = Subscriptions::default();
        let op = r#"{"op":"subscribe","topics":["t"],"from":"earliest"}"#;
        on_text(&hub, &conn, &open_access(), &mut feeds, &mut next, op);
        let open = || hub.stats.feeds_open.load(Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while open() != 1 {
            assert!(tokio::time::Instant::now() < deadline, "no feed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        on_text(
            &hub,
            &conn,
            &open_access(),
            &mut feeds,
            &mut next,
            r#"{"op":"unsubscribe","subscription":1}"#,
        );
        while open() != 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the feed kept running"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(hub.stats.subscriptions_open.load(Ordering::Relaxed), 0);
        // Unsubscribing again is an error the client is told about.
        on_text(
            &hub,
            &conn,
            &open_access(),
            &mut feeds,
            &mut next,
            r#"{"op":"unsubscribe","subscription":1}"#,
        );
        let direct = conn.state.lock().direct.clone();
        assert!(
            direct[0].as_str().contains("no subscription 1"),
            "{direct:?}"
        );
        hub.disconnect(&conn, &feeds);
        broker.close().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_topic_listed_twice_is_refused_and_opens_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let broker = broker_with(&dir, &["t", "u"]).await;
        let hub = Hub::new(broker.clone(), hub::WsConfig::default());
        let conn = hub.connect();
        let (mut feeds, mut next) = (Vec::new(), Subscriptions::default());
        let op = r#"{"op":"subscribe","topics":["t","u","t"],"from":"earliest"}"#;
        on_text(&hub, &conn, &open_access(), &mut feeds, &mut next, op);
        let direct = conn.state.lock().direct.clone();
        assert_eq!(direct.len(), 1, "{direct:?}");
        assert!(
            direct[0].as_str().contains("topic 't' is listed twice"),
            "{direct:?}"
        );
        assert!(direct[0].as_str().contains("bad_request"), "{direct:?}");
        assert!(conn.state.lock().subs.is_empty());
        assert_eq!(hub.stats.subscriptions_open.load(Ordering::Relaxed), 0);
        assert!(feeds.is_empty());
        hub.disconnect(&conn, &feeds);
        broker.close().await.unwrap();
    }

    #[test]
    fn operations_parse_with_defaults_and_name_bad_fields() {
        let op = ClientOp::parse(r#"{"op":"subscribe","topics":["q"]}"#).unwrap();
        assert!(matches!(
            op,
            ClientOp::Subscribe {
                from: Start::Latest,
                policy: Policy::Conflate,
                format: Format::Json,
                keys: None,
                ..
            }
        ));
        let op = ClientOp::parse(
            r#"{"op":"subscribe","topics":["q"],"keys":["AAPL"],"from":{"offset":{"0":12,"3":4}},"policy":"drop_oldest","format":"binary"}"#,
        )
        .unwrap();
        let ClientOp::Subscribe { from, policy, .. } = op else {
            panic!("not a subscribe")
        };
        assert_eq!(from, Start::Offsets([(0, 12), (3, 4)].into()));
        let op = ClientOp::parse(
            r#"{"op":"subscribe","topics":["q","r"],"from":{"offsets":{"q":{"1":7},"r":{"0":2}}}}"#,
        )
        .unwrap();
        let ClientOp::Subscribe { from, .. } = op else {
            panic!("not a subscribe")
        };
        assert_eq!(
            from,
            Start::TopicOffsets(
                [
                    ("q".to_string(), [(1, 7)].into()),
                    ("r".to_string(), [(0, 2)].into())
                ]
                .into()
            )
        );
        assert_eq!(policy, Policy::DropOldest);
        let op =
            ClientOp::parse(r#"{"op":"subscribe","topics":["q"],"from":{"timestamp":5}}"#).unwrap();
        assert!(matches!(
            op,
            ClientOp::Subscribe {
                from: Start::Timestamp(5),
                ..
            }
        ));
        for (bad, needle) in [
            (
                r#"{"op":"subscribe","topics":["q"],"from":"middle"}"#,
                "from must be",
            ),
            (
                r#"{"op":"subscribe","topics":["q"],"policy":"maybe"}"#,
                "maybe",
            ),
            (r#"{"op":"subscribe","topics":["q"],"colour":1}"#, "colour"),
            (r#"{"op":"dance"}"#, "dance"),
            (r#"{"op":"subscribe","topics":[]}"#, "topics is empty"),
            (
                r#"{"op":"subscribe","topics":["q","r","q"]}"#,
                "topic 'q' is listed twice",
            ),
        ] {
            let e = ClientOp::parse(bad).unwrap_err();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    /// The seeds of the fuzz target `ws_client_op` (the repository's
    /// `fuzz/corpus/ws_client_op/seed-*`) are operations a connection accepts, so the fuzzer
    /// starts from inside the format.
    #[test]
    fn fuzz_seeds_are_accepted_operations() {
        for (path, bytes) in crate::fuzz_seeds("ws_client_op", "seed-") {
            let text = String::from_utf8(bytes).unwrap();
            assert!(ClientOp::parse(&text).is_ok(), "{}", path.display());
        }
    }
}
