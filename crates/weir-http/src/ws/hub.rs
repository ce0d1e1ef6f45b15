//! The fan-out: one reader task per watched (topic, partition, format), connections and their
//! subscription queues, the heartbeat sweeper, and the counters.
//!
//! A feed reads its partition once per batch of new records, serializes each record once into
//! a shared frame, and pushes a reference into the queue of every subscriber whose filter
//! matches. Pushing never waits: a full queue applies its subscription's policy, so a slow
//! subscriber never holds the feed back. A subscriber that starts behind the feed replays the
//! older records itself, paced by its own client, then joins the feed without a gap or a
//! duplicate (see [`Hub::join`]).
//!
//! **Architecture Invariant:** a subscriber receives a partition's records in offset order,
//! each at most once, and never skips one silently: every record it does not get is either
//! counted in a `dropped` notice (its policy) or covered by a `gap` notice (retention).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::Notify;
use weir_batch::{Batches, Records};
use weir_broker::{Broker, BrokerError};
use weir_log::LogError;

use super::queue::{Item, OutQueue, Pushed};
use crate::records::{Format, RecordOut};

/// WebSocket settings: the server's `[http]` keys that start with `ws_` (`ws_queue_messages`
/// is `queue_messages`; durations with their unit, `ws_ping_interval_ms`). Every default is
/// written once, here.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WsConfig {
    /// Records queued per subscription before its policy applies. Default 1,024.
    pub queue_messages: usize,
    /// Bytes of frames queued per subscription before its policy applies. Default 1 MiB.
    pub queue_bytes: usize,
    /// Bytes a feed (or a replay) reads per fetch. Default 1 MiB.
    pub fetch_bytes: usize,
    /// The server pings a connection it has heard nothing from for this long. Default 20 s.
    /// Key `ping_interval_ms`.
    #[serde(rename = "ping_interval_ms", with = "weir_broker::settings::millis")]
    pub ping_interval: Duration,
    /// A connection silent for this long (no frame, not even a pong) is closed. Default 60 s.
    /// Key `idle_timeout_ms`.
    #[serde(rename = "idle_timeout_ms", with = "weir_broker::settings::millis")]
    pub idle_timeout: Duration,
    /// Subscriptions per connection. Default 64.
    pub max_subscriptions: usize,
    /// Simultaneous WebSocket connections; more are refused with 503
    /// `too_many_connections`. Default 16,384 (each holds a file descriptor).
    pub max_connections: usize,
    /// Largest message a client may send. Default 64 KiB.
    pub max_message_bytes: usize,
    /// Read buffer of a connection, allocated when it opens (it grows for larger frames).
    /// Default 1 KiB: clients send only small operations. (The library's default is 128 KiB.)
    pub read_buffer_bytes: usize,
    /// The frames a connection has queued are gathered into writes of up to this many bytes,
    /// then flushed: one system call carries many frames when a client is behind, and nothing
    /// waits for the buffer to fill. A connection keeps a buffer of about this size once it
    /// has sent; one that never sent keeps none. 0 writes each frame with its own system
    /// call. Default 4 KiB. (The library's default is 128 KiB.)
    pub write_buffer_bytes: usize,
}

impl WsConfig {
    /// Checks the settings as a whole; the error names the key (with its `ws_` prefix).
    pub fn validate(&self) -> Result<(), String> {
        if self.queue_messages == 0 || self.queue_bytes < 1024 {
            return Err(
                "ws_queue_messages must be positive and ws_queue_bytes at least 1024".into(),
            );
        }
        if self.ping_interval < Duration::from_millis(100)
            || self.idle_timeout <= self.ping_interval
        {
            return Err(
                "ws_ping_interval_ms must be at least 100 and below ws_idle_timeout_ms".into(),
            );
        }
        if self.max_subscriptions == 0 || self.max_connections == 0 {
            return Err("ws_max_subscriptions and ws_max_connections must be positive".into());
        }
        if self.read_buffer_bytes < 64 || self.fetch_bytes < 1024 || self.max_message_bytes < 1024 {
            return Err(
                "ws_read_buffer_bytes must be at least 64, ws_fetch_bytes and \
                 ws_max_message_bytes at least 1024"
                    .into(),
            );
        }
        Ok(())
    }
}

impl Default for WsConfig {
    fn default() -> Self {
        Self {
            queue_messages: 1024,
            queue_bytes: 1 << 20,
            fetch_bytes: 1 << 20,
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            max_subscriptions: 64,
            max_connections: 16_384,
            max_message_bytes: 64 << 10,
            read_buffer_bytes: 1024,
            write_buffer_bytes: 4096,
        }
    }
}

/// Counters of the WebSocket side, for the server to report (`GET /stats`).
#[derive(Debug, Default)]
pub struct WsStats {
    pub connections_open: AtomicU64,
    pub connections_total: AtomicU64,
    pub subscriptions_open: AtomicU64,
    pub feeds_open: AtomicU64,
    /// Records fetched by feeds (each once, however many subscribers).
    pub records_fetched: AtomicU64,
    /// Records written to clients, counted by every connection task on every thread, so in
    /// stripes (see [`Striped`]).
    pub records_sent: Striped,
    /// Records dropped by `drop_oldest` (and by `conflate` when keys did not repeat).
    pub dropped_oldest: AtomicU64,
    /// Records superseded by a newer value of their key under `conflate`.
    pub conflated: AtomicU64,
    /// Connections closed because a `disconnect` subscription overflowed.
    pub disconnected_slow: AtomicU64,
    pub gaps: AtomicU64,
    pub idle_timeouts: AtomicU64,
}

/// A copy of [`WsStats`], as served.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct WsStatsSnapshot {
    pub connections_open: u64,
    pub connections_total: u64,
    pub subscriptions_open: u64,
    pub feeds_open: u64,
    pub records_fetched: u64,
    pub records_sent: u64,
    pub dropped_oldest: u64,
    pub conflated: u64,
    pub disconnected_slow: u64,
    pub gaps: u64,
    pub idle_timeouts: u64,
}

impl WsStats {
    pub fn snapshot(&self) -> WsStatsSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        WsStatsSnapshot {
            connections_open: g(&self.connections_open),
            connections_total: g(&self.connections_total),
            subscriptions_open: g(&self.subscriptions_open),
            feeds_open: g(&self.feeds_open),
            records_fetched: g(&self.records_fetched),
            records_sent: self.records_sent.sum(),
            dropped_oldest: g(&self.dropped_oldest),
            conflated: g(&self.conflated),
            disconnected_slow: g(&self.disconnected_slow),
            gaps: g(&self.gaps),
            idle_timeouts: g(&self.idle_timeouts),
        }
    }
}

/// Adds `n` unless it is 0: the feed reports every push, and an atomic add of 0 would still
/// take the counter's cache line away from the other threads that count.
fn bump(a: &AtomicU64, n: u64) {
    if n > 0 {
        a.fetch_add(n, Ordering::Relaxed);
    }
}

/// A counter many threads add to often, split into cache-line-sized stripes so that two
/// threads adding at once rarely contend for one line (at 250k deliveries a second, one
/// shared counter bounced between the cores on every write). Readers sum the stripes.
#[derive(Debug, Default)]
pub struct Striped([Stripe; STRIPES]);

const STRIPES: usize = 16;

#[derive(Debug, Default)]
#[repr(align(128))]
struct Stripe(AtomicU64);

impl Striped {
    /// Adds `n` to the stripe of `key` (a connection id: one connection is counted on one
    /// thread at a time).
    pub fn add(&self, key: u64, n: u64) {
        if n > 0 {
            self.0[key as usize % STRIPES]
                .0
                .fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn sum(&self) -> u64 {
        self.0.iter().map(|s| s.0.load(Ordering::Relaxed)).sum()
    }
}

/// [`Conn::flags`]: a ping is due (set by the sweeper).
pub const FLAG_PING: u8 = 1;
/// [`Conn::flags`]: the connection must close; the code and reason are in its state.
pub const FLAG_CLOSE: u8 = 2;

/// A connection as the hub sees it.
#[derive(Debug)]
pub struct Conn {
    pub id: u64,
    /// Wakes the connection task: queued messages, a ping due, a close.
    pub wake: Notify,
    /// Wakes replays waiting for room in a queue.
    pub room: Notify,
    /// Interrupts a send blocked on a client that does not read, when the connection must
    /// close.
    pub closing: Notify,
    pub flags: AtomicU8,
    /// Milliseconds since the hub started when the client was last heard from.
    pub last_seen: AtomicU64,
    pub closed: AtomicBool,
    pub state: Mutex<ConnState>,
}

#[derive(Debug, Default)]
pub struct ConnState {
    /// Subscriptions by id, each with its queue.
    pub subs: Vec<(u32, OutQueue)>,
    /// The close frame to send: code and reason.
    pub close: Option<(u16, String)>,
    /// Round-robin position over `subs`.
    pub next: usize,
    /// Notices that belong to no subscription (answers to malformed operations).
    pub direct: Vec<Utf8Bytes>,
}

/// Close codes.
pub const CLOSE_GOING_AWAY: u16 = 1001;
pub const CLOSE_POLICY: u16 = 1008;
/// A `disconnect` subscription's queue overflowed.
pub const CLOSE_SLOW_CONSUMER: u16 = 4001;
/// Nothing heard from the client within the idle timeout.
pub const CLOSE_IDLE: u16 = 4002;

impl Conn {
    /// Asks the connection to close with `code` and `reason` (the first request wins).
    pub fn close(&self, code: u16, reason: String) {
        {
            let mut st = self.state.lock();
            if st.close.is_none() {
                st.close = Some((code, reason));
            }
        }
        self.flags.fetch_or(FLAG_CLOSE, Ordering::AcqRel);
        self.wake.notify_one();
        self.closing.notify_one();
    }

    /// Queues a notice for subscription `sub` (in order with its records).
    pub fn notice(&self, sub: u32, text: String) {
        let mut st = self.state.lock();
        if let Some((_, q)) = st.subs.iter_mut().find(|(id, _)| *id == sub) {
            q.notice(Utf8Bytes::from(text));
        }
        drop(st);
        self.wake.notify_one();
    }

    /// Whether subscription `sub`'s queue has room for a paced replay; `None` once the
    /// subscription is gone.
    pub fn room_for(&self, sub: u32) -> Option<bool> {
        self.state
            .lock()
            .subs
            .iter()
            .find(|(id, _)| *id == sub)
            .map(|(_, q)| q.has_room())
    }
}

/// One subscriber of a feed.
#[derive(Debug, Clone)]
pub struct Subscriber {
    pub conn: Arc<Conn>,
    pub sub: u32,
    /// Only records with one of these keys; `None`: all.
    pub keys: Option<Arc<HashSet<Bytes>>>,
    /// Records below this offset were delivered by the subscriber's own replay.
    pub from: u64,
}

impl Subscriber {
    fn wants(&self, item: &Item) -> bool {
        item.offset >= self.from
            && self
                .keys
                .as_ref()
                .is_none_or(|k| item.key.as_ref().is_some_and(|key| k.contains(key)))
    }

    /// Queues `items` (those the filter passes) under the subscription's policy.
    pub fn deliver(&self, items: &[Arc<Item>], stats: &WsStats) {
        let mut overflow = None;
        let mut any = false;
        {
            let mut st = self.conn.state.lock();
            if st.close.is_some() {
                return; // closing: nothing more goes out
            }
            let Some((_, q)) = st.subs.iter_mut().find(|(id, _)| *id == self.sub) else {
                return;
            };
            // A queue that is empty when a fetch's records arrive takes them all, even past
            // its bounds: its client is keeping up, and one stored batch (a Kafka producer's
            // compressed batch can decompress to more than a queue holds) must not count as
            // falling behind. The records are shared with every subscriber; the bounds apply
            // again from the next delivery on.
            let bounded = !q.is_empty();
            for item in items.iter().filter(|i| self.wants(i)) {
                any = true;
                match q.push_bounded(item.clone(), bounded) {
                    Pushed::Queued { dropped, conflated } => {
                        bump(&stats.dropped_oldest, dropped);
                        bump(&stats.conflated, conflated);
                    }
                    Pushed::Overflow => {
                        overflow = Some(q.records());
                        q.clear();
                        break;
                    }
                }
            }
        }
        if let Some(n) = overflow {
            bump(&stats.disconnected_slow, 1);
            self.conn.close(
                CLOSE_SLOW_CONSUMER,
                format!(
                    "slow consumer: subscription {} fell {n} records behind (policy disconnect)",
                    self.sub
                ),
            );
        } else if any {
            self.conn.wake.notify_one();
        }
    }
}

/// A gap notice: records from `requested` are gone; the next available is `available_from`.
pub fn gap_notice(sub: u32, topic: &str, partition: u32, requested: u64, available: u64) -> String {
    serde_json::json!({
        "type": "gap", "subscription": sub, "topic": topic, "partition": partition,
        "requested": requested, "available_from": available,
    })
    .to_string()
}

pub fn error_notice(sub: Option<u32>, code: &str, message: &str) -> String {
    serde_json::json!({"type": "error", "subscription": sub, "code": code, "message": message})
        .to_string()
}

pub type FeedKey = (String, u32, Format);

#[derive(Debug)]
struct Feed {
    key: FeedKey,
    state: Mutex<FeedState>,
    stop: Notify,
}

#[derive(Debug)]
struct FeedState {
    /// The next offset the feed reads.
    position: u64,
    subs: Subscribers,
    stopped: bool,
}

impl<'a> IntoIterator for &'a Subscribers {
    type Item = &'a Subscriber;
    type IntoIter = std::slice::Iter<'a, Subscriber>;
    fn into_iter(self) -> Self::IntoIter {
        self.list.iter()
    }
}

/// A feed's subscribers: a vector to go through on every delivery, and where each one is
/// in it, so that one leaves in constant time. (Found by a scan, 10,000 connections closing
/// at once took 10,000 scans of 10,000 subscribers, each scan with the feed locked.)
#[derive(Debug, Default)]
struct Subscribers {
    list: Vec<Subscriber>,
    /// Index in `list` by connection id and subscription id.
    at: HashMap<(u64, u32), usize>,
}

impl Subscribers {
    fn push(&mut self, sub: Subscriber) {
        let key = (sub.conn.id, sub.sub);
        if let Some(&i) = self.at.get(&key) {
            self.list[i] = sub;
            return;
        }
        self.at.insert(key, self.list.len());
        self.list.push(sub);
    }

    /// Takes out subscription `sub` of connection `conn`, if it is here.
    fn remove(&mut self, conn: u64, sub: u32) {
        let Some(i) = self.at.remove(&(conn, sub)) else {
            return;
        };
        self.list.swap_remove(i);
        if let Some(moved) = self.list.get(i) {
            self.at.insert((moved.conn.id, moved.sub), i);
        }
    }

    fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    fn clear(&mut self) {
        self.list.clear();
        self.at.clear();
    }
}

/// The WebSocket hub: feeds, connections, the sweeper and the counters.
#[derive(Debug)]
pub struct Hub {
    pub broker: Broker,
    pub config: WsConfig,
    pub stats: WsStats,
    feeds: Mutex<HashMap<FeedKey, Arc<Feed>>>,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    next_conn: AtomicU64,
    started: Instant,
    pub shutting_down: AtomicBool,
    pub tasks: tokio_util::task::TaskTracker,
    /// One permit per open connection, up to `max_connections`.
    pub connection_slots: Arc<tokio::sync::Semaphore>,
}

/// Decodes the records at or after `from` in `chunks` into shared frames.
/// Returns the items and the offset after the last batch. Compressed batches wait for one of
/// the broker's decompression turns ([`crate::records::decode`]).
pub async fn decode_items(
    broker: &Broker,
    topic: &str,
    partition: u32,
    format: Format,
    chunks: &[Bytes],
    from: u64,
) -> Result<(Vec<Arc<Item>>, Option<u64>), String> {
    crate::records::decode(broker, crate::records::any_compressed(chunks), || {
        decode_items_here(topic, partition, format, chunks, from)
    })
    .await
}

pub(crate) fn decode_items_here(
    topic: &str,
    partition: u32,
    format: Format,
    chunks: &[Bytes],
    from: u64,
) -> Result<(Vec<Arc<Item>>, Option<u64>), String> {
    let mut items = Vec::new();
    let mut next = None;
    for chunk in chunks {
        for batch in Batches::new(chunk) {
            let (header, bytes) = batch.map_err(|e| e.to_string())?;
            next = Some(header.next_offset().max(0) as u64);
            if header.is_control() {
                continue;
            }
            // Compressed batches (from Kafka producers) are decompressed to be shown.
            let section = weir_batch::section(&header, bytes).map_err(|e| e.to_string())?;
            for record in Records::with_payload(header, &section) {
                let record = record.map_err(|e| e.to_string())?;
                if (record.offset.max(0) as u64) < from {
                    continue;
                }
                let out = RecordOut::new(topic, partition, &record, format, Some("record"));
                let text = serde_json::to_string(&out).map_err(|e| e.to_string())?;
                items.push(Arc::new(Item {
                    offset: out.offset,
                    key: record.key.map(Bytes::copy_from_slice),
                    frame: Utf8Bytes::from(text),
                }));
            }
        }
    }
    Ok((items, next))
}

impl Hub {
    pub fn new(broker: Broker, config: WsConfig) -> Arc<Hub> {
        Arc::new(Hub {
            broker,
            stats: WsStats::default(),
            feeds: Mutex::new(HashMap::new()),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            started: Instant::now(),
            shutting_down: AtomicBool::new(false),
            tasks: tokio_util::task::TaskTracker::new(),
            connection_slots: Arc::new(tokio::sync::Semaphore::new(config.max_connections.max(1))),
            config,
        })
    }

    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Registers a new connection.
    pub fn connect(&self) -> Arc<Conn> {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            id,
            wake: Notify::new(),
            room: Notify::new(),
            closing: Notify::new(),
            flags: AtomicU8::new(0),
            last_seen: AtomicU64::new(self.now_ms()),
            closed: AtomicBool::new(false),
            state: Mutex::new(ConnState::default()),
        });
        self.conns.lock().insert(id, conn.clone());
        bump(&self.stats.connections_open, 1);
        bump(&self.stats.connections_total, 1);
        if self.shutting_down.load(Ordering::Acquire) {
            conn.close(CLOSE_GOING_AWAY, "server shutting down".into());
        }
        conn
    }

    /// Forgets a connection and all its subscriptions.
    pub fn disconnect(&self, conn: &Arc<Conn>, feeds: &[(String, u32, Format)]) {
        conn.closed.store(true, Ordering::Release);
        conn.room.notify_waiters();
        // The connection's subscriptions; closed above, it makes no more.
        let subs: Vec<u32> = conn.state.lock().subs.iter().map(|(id, _)| *id).collect();
        {
            let mut map = self.feeds.lock();
            for key in feeds {
                let Some(feed) = map.get(key).cloned() else {
                    continue;
                };
                let mut st = feed.state.lock();
                for &sub in &subs {
                    st.subs.remove(conn.id, sub);
                }
                if st.subs.is_empty() && !st.stopped {
                    st.stopped = true;
                    map.remove(key);
                    feed.stop.notify_one();
                }
            }
        }
        self.stats
            .subscriptions_open
            .fetch_sub(subs.len() as u64, Ordering::Relaxed);
        self.conns.lock().remove(&conn.id);
        self.stats.connections_open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Takes subscription `sub` of `conn` off the feeds in `feeds`; a feed left without
    /// subscribers stops.
    pub fn leave(&self, conn: &Conn, sub: u32, feeds: &[FeedKey]) {
        let mut map = self.feeds.lock();
        for key in feeds {
            let Some(feed) = map.get(key).cloned() else {
                continue;
            };
            let mut st = feed.state.lock();
            st.subs.remove(conn.id, sub);
            if st.subs.is_empty() && !st.stopped {
                st.stopped = true;
                map.remove(key);
                feed.stop.notify_one();
            }
        }
    }

    /// Joins `sub` to the feed of its partition if the feed has not read past `sub.from`.
    /// Returns `Err(position)` when the subscriber must first replay up to `position` itself.
    /// A partition without a feed gets one starting at `sub.from` once `sub.from` is the
    /// partition's end.
    pub fn join(self: &Arc<Self>, key: FeedKey, sub: Subscriber) -> Result<(), u64> {
        let mut map = self.feeds.lock();
        let gone = !sub
            .conn
            .state
            .lock()
            .subs
            .iter()
            .any(|(id, _)| *id == sub.sub);
        if gone || sub.conn.closed.load(Ordering::Acquire) {
            return Ok(()); // unsubscribed or disconnected meanwhile
        }
        if let Some(feed) = map.get(&key) {
            let mut st = feed.state.lock();
            if sub.from < st.position {
                return Err(st.position);
            }
            st.subs.push(sub);
            return Ok(());
        }
        // A feed is shared and not paced by any one client: started behind the partition's
        // end, it would hand this subscriber the whole backlog as fast as it reads. The
        // subscriber replays to the end first, paced by its client, then starts the feed.
        // Close enough to the end (what a queue takes in one go), the feed starts where the
        // subscriber is: else steady appends between its last read and this join could keep it
        // replaying for good.
        if let Ok(hwm) = self.broker.watch_high_watermark(&key.0, key.1) {
            let hwm = *hwm.borrow();
            let near = (self.config.queue_messages / 2).max(1) as u64;
            if sub.from.saturating_add(near) < hwm {
                return Err(hwm);
            }
        }
        let feed = Arc::new(Feed {
            key: key.clone(),
            state: Mutex::new(FeedState {
                position: sub.from,
                subs: {
                    let mut subs = Subscribers::default();
                    subs.push(sub);
                    subs
                },
                stopped: false,
            }),
            stop: Notify::new(),
        });
        map.insert(key, feed.clone());
        bump(&self.stats.feeds_open, 1);
        let hub = self.clone();
        self.tasks.spawn(async move {
            hub.run_feed(&feed).await;
            hub.stats.feeds_open.fetch_sub(1, Ordering::Relaxed);
        });
        Ok(())
    }

    /// Tells every subscriber of a feed, then drops the feed.
    fn end_feed(&self, feed: &Feed, notice: impl Fn(&Subscriber) -> String) {
        let mut map = self.feeds.lock();
        let mut st = feed.state.lock();
        for s in &st.subs {
            s.conn.notice(s.sub, notice(s));
        }
        st.subs.clear();
        if !st.stopped {
            st.stopped = true;
            map.remove(&feed.key);
        }
    }

    async fn run_feed(&self, feed: &Feed) {
        let (topic, partition, format) = feed.key.clone();
        let mut hwm = match self.broker.watch_high_watermark(&topic, partition) {
            Ok(w) => w,
            Err(e) => {
                let msg = e.to_string();
                self.end_feed(feed, |s| error_notice(Some(s.sub), "unknown_topic", &msg));
                return;
            }
        };
        loop {
            let position = {
                let st = feed.state.lock();
                if st.stopped {
                    return;
                }
                st.position
            };
            hwm.borrow_and_update();
            // A fetch larger than half a queue would overflow even a subscriber that keeps up.
            let max_bytes = self
                .config
                .fetch_bytes
                .min(self.config.queue_bytes / 2)
                .max(1024);
            let read = self
                .broker
                .read_at(&topic, partition, position, max_bytes)
                .await;
            let r = match read {
                Ok(r) => r,
                Err(BrokerError::Log(LogError::OffsetOutOfRange {
                    log_start,
                    high_watermark,
                    ..
                })) => {
                    // Retention passed the feed, or the offset asked for is in the future.
                    let next = if position < log_start {
                        log_start
                    } else {
                        high_watermark
                    };
                    let mut st = feed.state.lock();
                    if position < log_start {
                        for s in &st.subs {
                            let requested = s.from.max(position);
                            if requested < next {
                                bump(&self.stats.gaps, 1);
                                s.conn.notice(
                                    s.sub,
                                    gap_notice(s.sub, &topic, partition, requested, next),
                                );
                            }
                        }
                    }
                    st.position = next;
                    continue;
                }
                Err(e) => {
                    let code = crate::error::ApiError::from(e.clone()).code.as_str();
                    let msg = e.to_string();
                    self.end_feed(feed, |s| error_notice(Some(s.sub), code, &msg));
                    return;
                }
            };
            if r.is_empty() {
                if self.shutting_down.load(Ordering::Acquire) {
                    return;
                }
                tokio::select! {
                    changed = hwm.changed() => if changed.is_err() { return },
                    _ = feed.stop.notified() => {}
                }
                continue;
            }
            let decoded =
                decode_items(&self.broker, &topic, partition, format, &r.chunks, position).await;
            let (items, next) = match decoded {
                Ok(x) => x,
                Err(e) => {
                    self.end_feed(feed, |s| error_notice(Some(s.sub), "storage_error", &e));
                    return;
                }
            };
            bump(&self.stats.records_fetched, items.len() as u64);
            {
                let mut st = feed.state.lock();
                for s in &st.subs {
                    s.deliver(&items, &self.stats);
                }
                st.position = next.unwrap_or(position).max(position);
            }
            // Let the connections write before the next read, which may be answered from
            // memory without ever yielding.
            tokio::task::yield_now().await;
        }
    }

    /// Closes every connection (shutdown): each sends a close frame and ends.
    pub fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
        let conns: Vec<Arc<Conn>> = self.conns.lock().values().cloned().collect();
        for c in conns {
            c.close(CLOSE_GOING_AWAY, "server shutting down".into());
        }
        let feeds: Vec<Arc<Feed>> = self.feeds.lock().values().cloned().collect();
        for f in feeds {
            f.state.lock().stopped = true;
            f.stop.notify_one();
        }
    }

    /// The heartbeat sweeper: one timer for all connections. Pings those silent for
    /// `ping_interval`, closes those silent for `idle_timeout`.
    pub async fn run_sweeper(self: Arc<Self>) {
        let period = (self.config.ping_interval.min(self.config.idle_timeout) / 4)
            .max(Duration::from_millis(50));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ping_ms = self.config.ping_interval.as_millis() as u64;
        let idle_ms = self.config.idle_timeout.as_millis() as u64;
        while !self.shutting_down.load(Ordering::Acquire) {
            tick.tick().await;
            let now = self.now_ms();
            let conns: Vec<Arc<Conn>> = self.conns.lock().values().cloned().collect();
            for c in conns {
                let silent = now.saturating_sub(c.last_seen.load(Ordering::Relaxed));
                if silent >= idle_ms {
                    bump(&self.stats.idle_timeouts, 1);
                    c.close(
                        CLOSE_IDLE,
                        format!("idle timeout: nothing received for {silent} ms"),
                    );
                } else if silent >= ping_ms {
                    c.flags.fetch_or(FLAG_PING, Ordering::AcqRel);
                    c.wake.notify_one();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn conn(id: u64) -> Arc<Conn> {
        Arc::new(Conn {
            id,
            wake: Notify::new(),
            room: Notify::new(),
            closing: Notify::new(),
            flags: AtomicU8::new(0),
            last_seen: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            state: Mutex::new(ConnState::default()),
        })
    }

    proptest! {
        /// Against a plain list: whatever the order of joins and leaves, a feed holds each
        /// (connection, subscription) once, exactly those joined and not left since.
        #[test]
        fn subscribers_match_a_plain_list(ops in prop::collection::vec((any::<bool>(), 0u64..4, 0u32..3, 0u64..100), 1..200)) {
            let conns: Vec<_> = (0..4).map(conn).collect();
            let mut subs = Subscribers::default();
            let mut model: Vec<(u64, u32, u64)> = Vec::new();
            for (join, c, sub, from) in ops {
                if join {
                    subs.push(Subscriber { conn: conns[c as usize].clone(), sub, keys: None, from });
                    match model.iter_mut().find(|m| (m.0, m.1) == (c, sub)) {
                        Some(m) => m.2 = from,
                        None => model.push((c, sub, from)),
                    }
                } else {
                    subs.remove(c, sub);
                    model.retain(|m| (m.0, m.1) != (c, sub));
                }
                let mut got: Vec<_> = subs.into_iter().map(|s| (s.conn.id, s.sub, s.from)).collect();
                got.sort_unstable();
                let mut want = model.clone();
                want.sort_unstable();
                prop_assert_eq!(got, want);
                prop_assert_eq!(subs.is_empty(), model.is_empty());
            }
        }
    }
}
