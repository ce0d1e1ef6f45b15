//! Consumers: an assigned partition from an offset, a server-assigned group member, and push
//! subscriptions with a credit window.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use weir_batch::{Batches, Records};
use weir_wire::messages as msg;
use weir_wire::{Api, ErrorCode};

use crate::error::{ClientError, Result};
use crate::inbox::{Bound, Inbox};
use crate::{Client, Start};

/// The server's queue bounds for a request of 0, mirrored by the client's local bound.
const DEFAULT_QUEUE_RECORDS: u64 = 10_000;
const DEFAULT_QUEUE_BYTES: u64 = 4 << 20;

/// One record as received, its key and value sharing the received buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedRecord {
    pub topic: Arc<str>,
    pub partition: u32,
    pub offset: u64,
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(Bytes, Option<Bytes>)>,
}

/// Decodes the records at or after `from` in `batches` (whole batches, CRC-checked).
pub fn decode_records(
    topic: &Arc<str>,
    partition: u32,
    batches: &Bytes,
    from: u64,
) -> Result<Vec<ReceivedRecord>> {
    let mut out = Vec::new();
    for b in Batches::new(batches) {
        let (h, bytes) =
            b.map_err(|e| ClientError::Protocol(format!("bad batch from server: {e}")))?;
        if (h.next_offset() as u64) <= from {
            continue;
        }
        // Room for the batch's records up front (a record takes at least 7 bytes, which caps
        // what a lying header can make this reserve).
        out.reserve((h.record_count.max(0) as usize).min(bytes.len() / 7));
        // Kafka producers' compressed batches are decompressed here; an uncompressed batch's
        // records are handed out as slices of the fetched buffer, not copied.
        // `Batches` checked the CRC already.
        let section =
            weir_batch::section(&h, bytes).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let data = match section {
            Cow::Borrowed(s) => batches.slice_ref(s),
            Cow::Owned(v) => Bytes::from(v),
        };
        let records = Records::with_payload(h, &data);
        let slice = |s: &[u8]| data.slice_ref(s);
        for r in records {
            let r = r.map_err(|e| ClientError::Protocol(e.to_string()))?;
            if (r.offset as u64) < from {
                continue;
            }
            out.push(ReceivedRecord {
                topic: topic.clone(),
                partition,
                offset: r.offset as u64,
                timestamp: r.timestamp,
                key: r.key.map(slice),
                value: r.value.map(slice),
                headers: r
                    .headers
                    .iter()
                    .map(|h| (slice(h.key), h.value.map(slice)))
                    .collect(),
            });
        }
    }
    Ok(out)
}

/// Reads one partition from a position the caller chooses.
///
/// Fetches run ahead of the application, as Kafka's consumers do: the moment an answer
/// arrives, the next fetch (from the end of its batches) is sent, so the server reads and
/// sends while the application decodes and handles what it got. Besides the answer being
/// handled, at most two answers wait in memory (one ready, one arriving or waiting its turn),
/// each of `max_bytes` or one stored batch when that is larger; no further fetch is sent
/// while both are there.
#[derive(Debug)]
pub struct PartitionConsumer {
    client: Client,
    topic: Arc<str>,
    partition: u32,
    position: u64,
    /// Bytes asked for per fetch. Default 1 MiB.
    pub max_bytes: u32,
    ahead: Option<Fetcher>,
    /// The latest poll's wait, for the fetches sent ahead.
    wait_ms: Arc<AtomicU64>,
    fetched_bytes: u64,
    /// Shared with other consumers (see [`PartitionConsumer::share_limit`]).
    limit: Option<Arc<Semaphore>>,
}

/// A bound on the answers several [`PartitionConsumer`]s hold at once, fetched ahead or
/// waiting to be taken: what consumers of many partitions keep in memory when their reader
/// is slow. A consumer that has caught up waits for records in a long poll that holds no
/// place (and no data), so any number of them can wait at once; records found that way (at
/// most 64 KiB, or one batch) are kept only if a place is free, and otherwise fetched again
/// once one is.
#[derive(Debug, Clone)]
pub struct FetchLimit(Arc<Semaphore>);

impl FetchLimit {
    /// At most `answers` answers (at least one).
    pub fn new(answers: usize) -> Self {
        Self(Arc::new(Semaphore::new(answers.max(1))))
    }
}

/// The task sending a consumer's fetches of one partition ahead of its polls, each from
/// where the last answer's batches end. Stopped when dropped, or when it meets an error
/// (handed over as its last answer).
#[derive(Debug)]
struct Fetcher {
    /// Where the next answer to take begins.
    offset: u64,
    max_bytes: u32,
    rest_when_idle: bool,
    answers: tokio::sync::mpsc::Receiver<Answer>,
    /// The partition's high watermark in the task's latest answer, empty ones included
    /// (which a resting fetcher does not hand over); `u64::MAX` before the first.
    high_watermark: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

/// A fetch's answer, with the permit it holds until it is taken (see [`Pace::limit`]).
#[derive(Debug)]
struct Answer {
    got: Result<crate::Fetched>,
    /// Where its batches end, and the task's next fetch begins.
    end: u64,
    _permit: Option<OwnedSemaphorePermit>,
}

/// How a fetcher's fetches go, shared with its consumer.
#[derive(Debug, Clone)]
struct Pace {
    /// The long-poll wait, in milliseconds, of the consumer's latest poll: read at each fetch.
    wait_ms: Arc<AtomicU64>,
    /// Fetches do not long-poll (with many partitions each would hold one of the
    /// connection's request slots, which its heartbeats and commits need too); a fetcher
    /// that found nothing rests for the wait instead.
    rest_when_idle: bool,
    /// Answers fetched or being fetched at once across consumers (a group member's
    /// partitions, or [`FetchLimit`]'s): a permit is taken before each fetch, or once a long
    /// poll has found records, and goes with its answer until the answer is taken.
    limit: Option<Arc<Semaphore>>,
    /// Notified after each answer.
    ready: Option<Arc<Notify>>,
}

impl Drop for Fetcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Fetcher {
    /// Starts fetching `partition` of `topic` from `offset`.
    fn start(
        client: &Client,
        topic: &Arc<str>,
        partition: u32,
        offset: u64,
        max_bytes: u32,
        pace: Pace,
    ) -> Fetcher {
        let (client, topic) = (client.clone(), topic.clone());
        let rest_when_idle = pace.rest_when_idle;
        let start = offset;
        let mut offset = offset;
        // One answer waits here while the task holds the next, then sends nothing more.
        let (tx, answers) = tokio::sync::mpsc::channel(1);
        let high_watermark = Arc::new(AtomicU64::new(u64::MAX));
        let seen = high_watermark.clone();
        let task = tokio::spawn(async move {
            let acquire = |limit: &Arc<Semaphore>| {
                let limit = limit.clone();
                async move {
                    limit
                        .acquire_owned()
                        .await
                        .expect("the limit is never closed")
                }
            };
            // Under a limit (and not resting), a fetcher that found nothing waits for records
            // in a long poll that holds no permit: it holds no data meanwhile, and so many
            // partitions can wait at once. Records found that way are kept if a permit is
            // free, else let go and fetched again under one; while catching up, each fetch
            // takes a permit first and does not wait. So what is kept stays within the limit
            // (a long poll asks for little, so that many waking at once hold little).
            let mut caught_up = false;
            loop {
                let long_poll = pace.limit.is_some() && !pace.rest_when_idle && caught_up;
                let mut permit = match &pace.limit {
                    Some(limit) if !long_poll => Some(acquire(limit).await),
                    _ => None,
                };
                let wait = Duration::from_millis(pace.wait_ms.load(Ordering::Relaxed));
                let fetch_wait = if pace.rest_when_idle || (pace.limit.is_some() && !long_poll) {
                    Duration::ZERO
                } else {
                    wait
                };
                // A long poll under a limit only learns that records came: it asks for little,
                // so that many waking at once hold little before they have a place.
                let ask = if long_poll {
                    max_bytes.min(LONG_POLL_BYTES)
                } else {
                    max_bytes
                };
                let mut got = fetch(&client, &topic, partition, offset, ask, fetch_wait).await;
                if let Ok(f) = &got {
                    seen.store(f.high_watermark.min(u64::MAX - 1), Ordering::Relaxed);
                }
                let idle = got.as_ref().is_ok_and(|f| f.batches.is_empty());
                if let Some(limit) = pace.limit.as_ref().filter(|_| !pace.rest_when_idle) {
                    if idle && !long_poll {
                        // Caught up: wait in a long poll next, without the permit.
                        caught_up = true;
                        continue;
                    }
                    if long_poll && got.is_ok() && !idle {
                        match limit.clone().try_acquire_owned() {
                            Ok(p) => permit = Some(p),
                            // No place: the records are let go and fetched again once one is
                            // free, so that waiting for it holds no data.
                            Err(_) => {
                                caught_up = false;
                                continue;
                            }
                        }
                    }
                    caught_up = idle;
                }
                if let Ok(f) = &got
                    && !idle
                {
                    match weir_batch::end_offset(&f.batches).filter(|&n| n > offset) {
                        Some(end) => offset = end,
                        // Taken, it would move nothing: the same fetch would come back forever.
                        None => {
                            got = Err(ClientError::Protocol(format!(
                                "a fetch from offset {offset} was answered with batches that do not go past it"
                            )));
                        }
                    }
                }
                if idle && pace.rest_when_idle {
                    // Nothing to hand over: rest for the latest poll's wait, then ask again.
                    drop(permit);
                    rest(&pace.wait_ms).await;
                    continue;
                }
                let failed = got.is_err();
                let answer = Answer {
                    got,
                    end: offset,
                    // An empty answer holds no memory and no request slot.
                    _permit: if idle { None } else { permit },
                };
                if tx.send(answer).await.is_err() {
                    return;
                }
                if let Some(ready) = &pace.ready {
                    ready.notify_one();
                }
                if failed {
                    return;
                }
            }
        });
        Fetcher {
            offset: start,
            max_bytes,
            rest_when_idle,
            answers,
            high_watermark,
            task,
        }
    }

    /// The high watermark the task last found, `None` before its first answer.
    fn high_watermark(&self) -> Option<u64> {
        let hwm = self.high_watermark.load(Ordering::Relaxed);
        (hwm != u64::MAX).then_some(hwm)
    }

    /// Whether it answers a reader at `position` asking for `max_bytes`.
    fn serves(&self, position: u64, max_bytes: u32, rest_when_idle: bool) -> bool {
        self.offset == position
            && self.max_bytes == max_bytes
            && self.rest_when_idle == rest_when_idle
    }

    /// Decodes answer `f` (not empty), whose batches end at `end`, for a reader at
    /// `position`. The reader is next at `end` (past the last batch even when its last
    /// offsets carry no record), where this fetcher's next answer begins. After an error the
    /// task has gone on past these batches and the reader has not: drop the fetcher.
    fn take(
        &mut self,
        topic: &Arc<str>,
        partition: u32,
        position: u64,
        f: &crate::Fetched,
        end: u64,
    ) -> Result<Vec<ReceivedRecord>> {
        let records = decode_records(topic, partition, &f.batches, position)?;
        self.offset = end;
        Ok(records)
    }
}

/// Most bytes a long poll under a [`FetchLimit`] asks for (a batch larger than this still
/// comes whole).
const LONG_POLL_BYTES: u32 = 64 << 10;

/// Sleeps for the wait in `wait_ms`, which a poll may change meanwhile: in steps of at most
/// 100 ms, each against the wait as it is then.
async fn rest(wait_ms: &AtomicU64) {
    // At least this long, so that polls with no wait do not make resting fetchers spin.
    const MIN_REST: Duration = Duration::from_millis(10);
    let start = tokio::time::Instant::now();
    loop {
        let wait = Duration::from_millis(wait_ms.load(Ordering::Relaxed)).max(MIN_REST);
        let left = wait.saturating_sub(start.elapsed());
        if left.is_zero() {
            return;
        }
        tokio::time::sleep(left.min(Duration::from_millis(100))).await;
    }
}

/// A wait in whole milliseconds, as fetches carry it.
fn wait_ms(wait: Duration) -> u64 {
    wait.as_millis().min(u128::from(u32::MAX)) as u64
}

/// The error when a fetch task ended without saying why (it panicked).
fn fetcher_stopped() -> ClientError {
    ClientError::Io(std::io::Error::other("the consumer's fetch task stopped"))
}

impl PartitionConsumer {
    pub async fn new(client: Client, topic: &str, partition: u32, start: Start) -> Result<Self> {
        let position = client.list_offsets(topic, partition, start).await?;
        Ok(Self {
            client,
            topic: Arc::from(topic),
            partition,
            position,
            max_bytes: 1 << 20,
            ahead: None,
            wait_ms: Arc::new(AtomicU64::new(0)),
            fetched_bytes: 0,
            limit: None,
        })
    }

    /// Holds this consumer's answers within `limit`, shared with other consumers. Without
    /// one, each consumer holds up to three answers of `max_bytes` (or of one batch, when a
    /// batch is larger). While the others hold the whole limit, this one's poll waits until
    /// they are polled: poll them together (or in turn). Fetches already under way are
    /// dropped and sent again.
    pub fn share_limit(&mut self, limit: &FetchLimit) {
        self.limit = Some(limit.0.clone());
        self.ahead = None;
    }

    /// The next offset to read.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Bytes of record batches received so far (as stored, before decompression).
    pub fn fetched_bytes(&self) -> u64 {
        self.fetched_bytes
    }

    /// Records from the position on; waits up to `max_wait` when there are none yet. Fetches
    /// under way when `max_wait` runs out (or when the call is dropped) stay for the next call.
    pub async fn poll(&mut self, max_wait: Duration) -> Result<Vec<ReceivedRecord>> {
        let deadline = tokio::time::Instant::now() + max_wait;
        self.wait_ms.store(wait_ms(max_wait), Ordering::Relaxed);
        if !self
            .ahead
            .as_ref()
            .is_some_and(|a| a.serves(self.position, self.max_bytes, false))
        {
            let pace = Pace {
                wait_ms: self.wait_ms.clone(),
                rest_when_idle: false,
                limit: self.limit.clone(),
                ready: None,
            };
            self.ahead = Some(Fetcher::start(
                &self.client,
                &self.topic,
                self.partition,
                self.position,
                self.max_bytes,
                pace,
            ));
        }
        let ahead = self.ahead.as_mut().expect("started above");
        loop {
            // A fetch begun by an earlier call may have a longer wait than this one.
            let Ok(got) = tokio::time::timeout_at(deadline, ahead.answers.recv()).await else {
                return Ok(Vec::new());
            };
            let Some(answer) = got else {
                self.ahead = None;
                return Err(fetcher_stopped());
            };
            let f = match answer.got {
                Ok(f) => f,
                Err(e) => {
                    self.ahead = None;
                    return Err(e);
                }
            };
            if f.batches.is_empty() {
                // A long poll that ran out: the task has sent the next one.
                continue;
            }
            self.fetched_bytes += f.batches.len() as u64;
            return match ahead.take(&self.topic, self.partition, self.position, &f, answer.end) {
                Ok(records) => {
                    self.position = answer.end;
                    Ok(records)
                }
                Err(e) => {
                    self.ahead = None;
                    Err(e)
                }
            };
        }
    }
}

async fn fetch(
    client: &Client,
    topic: &str,
    partition: u32,
    offset: u64,
    max_bytes: u32,
    max_wait: Duration,
) -> Result<crate::Fetched> {
    client
        .fetch(topic, partition, offset, max_bytes, 1, max_wait)
        .await
}

/// Options of a group member.
#[derive(Debug, Clone)]
pub struct GroupOptions {
    /// Default 10 s.
    pub session_timeout: Duration,
    /// Where partitions without a committed offset start: earliest (default) or latest.
    pub reset_earliest: bool,
    /// Sticky assignment (default) or round robin.
    pub sticky: bool,
    /// Most partitions the member waits on at once with long polls, each answered the moment
    /// a record arrives. The server keeps up to 1,024 waiting fetches per connection (65,536
    /// in all) outside its request window, and members or consumers sharing a [`Client`]
    /// share that; past it, waiting fetches take request slots that heartbeats and commits
    /// need. A member owning
    /// more asks a quiet partition again only after each poll's wait, so a record there may
    /// wait that long. Default 512.
    pub max_long_polls: usize,
}

impl Default for GroupOptions {
    fn default() -> Self {
        Self {
            session_timeout: Duration::from_secs(10),
            reset_earliest: true,
            sticky: true,
            max_long_polls: 512,
        }
    }
}

/// A member of a server-assigned consumer group: heartbeats in the background, follows
/// rebalances, reads its partitions and commits its positions.
#[derive(Debug)]
pub struct GroupConsumer {
    client: Client,
    group: String,
    topics: Vec<String>,
    options: GroupOptions,
    member_id: String,
    generation: u64,
    assignment: Vec<(Arc<str>, u32)>,
    positions: HashMap<(Arc<str>, u32), u64>,
    next: usize,
    rebalance: Arc<AtomicBool>,
    heartbeat: Option<tokio::task::JoinHandle<()>>,
    /// Bytes asked for per fetch of one partition. Default 1 MiB.
    pub max_bytes: u32,
    /// Each owned partition's fetches, run ahead as [`PartitionConsumer`]'s are.
    fetchers: HashMap<(Arc<str>, u32), Fetcher>,
    /// Partitions [`GroupConsumer::seek`] moved since their last commit: a rejoin keeps
    /// their position even behind the committed offset.
    sought: std::collections::HashSet<(Arc<str>, u32)>,
    /// The latest poll's wait, for the fetches sent ahead.
    wait_ms: Arc<AtomicU64>,
    /// [`GROUP_FETCHES_AHEAD`] permits, one per answer fetched or being fetched.
    limit: Arc<Semaphore>,
    /// Notified by the fetchers after each answer, and by the heartbeat when a rebalance
    /// begins.
    ready: Arc<Notify>,
}

/// Answers a group member may have fetched and kept at once, across its partitions: what
/// waits in memory stays within this many times `max_bytes` (or a stored batch, when one is
/// larger). A partition that has caught up waits for records in a long poll that holds no
/// place (see [`FetchLimit`]) and asks for at most 64 KiB (or one batch), so when many wake
/// at once each holds that much until it has a place or lets it go.
pub const GROUP_FETCHES_AHEAD: usize = 16;

impl Drop for GroupConsumer {
    fn drop(&mut self) {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
    }
}

impl GroupConsumer {
    /// Joins `group` for `topics`.
    pub async fn join(
        client: Client,
        group: &str,
        topics: &[&str],
        options: GroupOptions,
    ) -> Result<Self> {
        let mut c = Self {
            client,
            group: group.to_string(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            options,
            member_id: String::new(),
            generation: 0,
            assignment: Vec::new(),
            positions: HashMap::new(),
            next: 0,
            rebalance: Arc::new(AtomicBool::new(false)),
            heartbeat: None,
            max_bytes: 1 << 20,
            fetchers: HashMap::new(),
            sought: std::collections::HashSet::new(),
            wait_ms: Arc::new(AtomicU64::new(0)),
            limit: Arc::new(Semaphore::new(GROUP_FETCHES_AHEAD)),
            ready: Arc::new(Notify::new()),
        };
        c.rejoin().await?;
        Ok(c)
    }

    pub fn member_id(&self) -> &str {
        &self.member_id
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// How many records the member's partitions hold past its positions, as of each
    /// partition's latest fetch (a partition kept through a rebalance keeps what its fetches
    /// found before): `None` while an owned partition has no fetch answered yet, or while a
    /// rebalance waits to be followed. `Some(0)` means caught up, which a member owning no
    /// partition always is.
    pub fn lag(&self) -> Option<u64> {
        if self.rebalance.load(Ordering::Acquire) {
            return None;
        }
        self.assignment.iter().try_fold(0u64, |sum, key| {
            let hwm = self.fetchers.get(key)?.high_watermark()?;
            let pos = self.positions.get(key).copied().unwrap_or(0);
            Some(sum.saturating_add(hwm.saturating_sub(pos)))
        })
    }

    /// Moves the member's position in `partition` of `topic`, which it must own, to
    /// `offset`: the next polls read from there, and a commit stores it (a rejoin keeps it
    /// until then, even behind the committed offset). For example, back to the first record
    /// of a poll the application did not get to, before it commits. Records fetched ahead for
    /// the partition are dropped. Past the end of the partition, reading goes on from its
    /// end; before its start, from its start.
    pub fn seek(&mut self, topic: &str, partition: u32, offset: u64) -> Result<()> {
        let Some(key) = self
            .assignment
            .iter()
            .find(|(t, p)| &**t == topic && *p == partition)
            .cloned()
        else {
            return Err(ClientError::Invalid(format!(
                "{topic}/{partition} is not assigned to this member"
            )));
        };
        self.fetchers.remove(&key);
        self.positions.insert(key.clone(), offset);
        self.sought.insert(key);
        Ok(())
    }

    /// The partitions this member owns in the current generation.
    pub fn assignment(&self) -> Vec<(String, u32)> {
        self.assignment
            .iter()
            .map(|(t, p)| (t.to_string(), *p))
            .collect()
    }

    async fn rejoin(&mut self) -> Result<()> {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
        let strategy = if self.options.sticky {
            msg::AssignmentStrategy::AssignmentSticky
        } else {
            msg::AssignmentStrategy::AssignmentRoundRobin
        };
        let req = msg::JoinGroupRequest {
            group: self.group.clone(),
            member_id: self.member_id.clone(),
            topics: self.topics.clone(),
            session_timeout_ms: self.options.session_timeout.as_millis() as u32,
            strategy: strategy as i32,
        };
        let r = match self.client.join_group(req.clone()).await {
            Err(e) if e.code() == Some(ErrorCode::UnknownMember) => {
                // Our session expired: join afresh.
                self.client
                    .join_group(msg::JoinGroupRequest {
                        member_id: String::new(),
                        ..req
                    })
                    .await?
            }
            other => other?,
        };
        self.member_id = r.member_id;
        self.generation = r.generation;
        self.assignment = r
            .assignment
            .iter()
            .flat_map(|tp| {
                tp.partitions
                    .iter()
                    .map(|p| (Arc::<str>::from(tp.topic.as_str()), *p))
            })
            .collect();
        // Partitions this member no longer owns stop fetching (what they fetched ahead is
        // dropped unread, and their positions were committed or are lost with them).
        let owned: std::collections::HashSet<&(Arc<str>, u32)> = self.assignment.iter().collect();
        self.fetchers.retain(|k, _| owned.contains(k));
        self.sought.retain(|k| owned.contains(k));
        let parts: Vec<(String, u32)> = self
            .assignment
            .iter()
            .map(|(t, p)| (t.to_string(), *p))
            .collect();
        let offsets = self
            .client
            .fetch_offsets(&self.group, &parts, self.options.reset_earliest)
            .await?;
        let old = std::mem::take(&mut self.positions);
        for (t, p, o) in offsets {
            let key = (Arc::<str>::from(t.as_str()), p);
            // Keep our own position for partitions we kept (it may be ahead of the commit, or
            // behind it where the application sought back).
            let pos = match old.get(&key) {
                Some(&mine) if self.sought.contains(&key) => mine,
                Some(&mine) => mine.max(o),
                None => o,
            };
            self.positions.insert(key, pos);
        }
        self.rebalance.store(false, Ordering::Release);
        let (client, group, member, generation, flag, ready) = (
            self.client.clone(),
            self.group.clone(),
            self.member_id.clone(),
            self.generation,
            self.rebalance.clone(),
            self.ready.clone(),
        );
        let every = (self.options.session_timeout / 3).max(Duration::from_millis(50));
        self.heartbeat = Some(tokio::spawn(async move {
            // Each heartbeat waits at the server for a rebalance, up to the interval, so a
            // rebalance is followed at once; one answered sooner (a server that does not
            // hold heartbeats) is followed by a pause for the rest of the interval.
            loop {
                let next = tokio::time::Instant::now() + every;
                match client
                    .heartbeat_wait(&group, &member, generation, every)
                    .await
                {
                    Ok(()) => tokio::time::sleep_until(next).await,
                    Err(e) if e.is_rebalance() => {
                        flag.store(true, Ordering::Release);
                        // A waiting poll follows it now.
                        ready.notify_one();
                        return;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "heartbeat failed; retrying");
                        tokio::time::sleep_until(next).await;
                    }
                }
            }
        }));
        tracing::debug!(group = %self.group, member = %self.member_id, generation = self.generation, partitions = self.assignment.len(), "joined group");
        Ok(())
    }

    /// Records from the member's partitions; waits up to `max_wait` when there are none, and
    /// returns as soon as any of them has some. Follows a rebalance when one begins.
    ///
    /// Each partition's fetches run ahead of the polls in a task of its own (see
    /// [`PartitionConsumer`]), within [`GROUP_FETCHES_AHEAD`] answers for all; the partitions
    /// take turns in what one call returns. A member owning more partitions than
    /// [`GroupOptions::max_long_polls`] asks a quiet partition again only after the poll's
    /// wait, so a record arriving there may wait that long.
    pub async fn poll(&mut self, max_wait: Duration) -> Result<Vec<ReceivedRecord>> {
        let deadline = tokio::time::Instant::now() + max_wait;
        self.wait_ms.store(wait_ms(max_wait), Ordering::Relaxed);
        let ready = self.ready.clone();
        loop {
            if self.rebalance.load(Ordering::Acquire) {
                self.rejoin().await?;
            }
            if self.assignment.is_empty() {
                let nap = tokio::time::Instant::now() + Duration::from_millis(200);
                tokio::time::sleep_until(deadline.min(nap)).await;
                return Ok(Vec::new());
            }
            // Registered before looking, so that an answer arriving meanwhile is not missed.
            let answered = ready.notified();
            tokio::pin!(answered);
            answered.as_mut().enable();
            if let Some(records) = self.take_answer().await? {
                return Ok(records);
            }
            // Answers that keep coming do not stretch the wait.
            if tokio::time::Instant::now() >= deadline {
                return Ok(Vec::new());
            }
            if tokio::time::timeout_at(deadline, answered).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }

    /// Looks at each owned partition once, round robin, starting fetchers where none serves;
    /// the records of the first answer that has some.
    async fn take_answer(&mut self) -> Result<Option<Vec<ReceivedRecord>>> {
        let n = self.assignment.len();
        let rest_when_idle = n > self.options.max_long_polls;
        for i in 0..n {
            let idx = (self.next + i) % n;
            let key = self.assignment[idx].clone();
            let pos = self.positions.get(&key).copied().unwrap_or(0);
            let fetcher = match self.fetchers.entry(key.clone()) {
                std::collections::hash_map::Entry::Occupied(e)
                    if e.get().serves(pos, self.max_bytes, rest_when_idle) =>
                {
                    e.into_mut()
                }
                e => {
                    let pace = Pace {
                        wait_ms: self.wait_ms.clone(),
                        rest_when_idle,
                        limit: Some(self.limit.clone()),
                        ready: Some(self.ready.clone()),
                    };
                    let f = Fetcher::start(&self.client, &key.0, key.1, pos, self.max_bytes, pace);
                    e.insert_entry(f).into_mut()
                }
            };
            let (got, end) = match fetcher.answers.try_recv() {
                Ok(answer) => (answer.got, answer.end),
                Err(tokio::sync::mpsc::error::TryRecvError::Empty) => continue,
                Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => {
                    (Err(fetcher_stopped()), pos)
                }
            };
            let taken = match got {
                // Nothing new (the task sends the next fetch).
                Ok(f) if f.batches.is_empty() => continue,
                Ok(f) => fetcher.take(&key.0, key.1, pos, &f, end),
                Err(e) => Err(e),
            };
            match taken {
                Ok(records) => {
                    self.positions.insert(key, end);
                    if !records.is_empty() {
                        self.next = idx + 1;
                        return Ok(Some(records));
                    }
                }
                Err(e) if e.code() == Some(ErrorCode::OffsetOutOfRange) => {
                    // Retention passed our position: continue from the log start. (Past the
                    // end, as a seek may leave it: from the end.)
                    self.fetchers.remove(&key);
                    let earliest = self
                        .client
                        .list_offsets(&key.0, key.1, Start::Earliest)
                        .await?;
                    let to = if pos < earliest {
                        earliest
                    } else {
                        self.client
                            .list_offsets(&key.0, key.1, Start::Latest)
                            .await?
                    };
                    self.positions.insert(key, to);
                }
                Err(e) => {
                    self.fetchers.remove(&key);
                    return Err(e);
                }
            }
        }
        Ok(None)
    }

    /// Commits the member's positions. If the group rebalanced since the member last joined
    /// (the server refuses the commit with REBALANCE_IN_PROGRESS, ILLEGAL_GENERATION or
    /// UNKNOWN_MEMBER), rejoins and commits again the partitions it still owns; what it had
    /// read of the partitions it lost is not committed, and their new owner reads it again
    /// (delivery is at least once). Fails if the second attempt is refused too (the next poll
    /// rejoins) or on any other error.
    pub async fn commit(&mut self) -> Result<()> {
        match self.commit_once(|_| true).await {
            Err(e) if e.is_rebalance() => {
                let before: std::collections::HashSet<_> =
                    self.assignment.iter().cloned().collect();
                self.rejoin().await?;
                // Not the partitions just gained: their positions are only where they start.
                self.commit_once(|key| before.contains(key)).await
            }
            other => other,
        }
    }

    /// Commits the positions of the owned partitions `which` selects.
    async fn commit_once(&mut self, which: impl Fn(&(Arc<str>, u32)) -> bool) -> Result<()> {
        let offsets: Vec<(String, u32, u64)> = self
            .assignment
            .iter()
            .filter(|key| which(key))
            .filter_map(|(t, p)| {
                self.positions
                    .get(&(t.clone(), *p))
                    .map(|o| (t.to_string(), *p, *o))
            })
            .collect();
        let r = self
            .client
            .commit(
                &self.group,
                Some((&self.member_id, self.generation)),
                &offsets,
            )
            .await;
        match &r {
            Ok(()) => self.sought.retain(|(t, p)| {
                !offsets
                    .iter()
                    .any(|(ct, cp, _)| cp == p && ct.as_str() == &**t)
            }),
            Err(e) if e.is_rebalance() => self.rebalance.store(true, Ordering::Release),
            Err(_) => {}
        }
        r
    }

    /// Leaves the group so its partitions move at once.
    pub async fn leave(mut self) -> Result<()> {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
        self.fetchers.clear();
        self.client.leave_group(&self.group, &self.member_id).await
    }
}

/// What a subscriber that falls behind gets (see `docs/native-protocol.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OverflowPolicy {
    /// Credit-based flow control: the server sends only within the credit window; a slow
    /// subscriber gets fewer records and nothing is dropped.
    #[default]
    Credit,
    /// A bounded queue per subscription, filled as records arrive; when it is full the oldest
    /// records are dropped and announced ([`PushEvent::Dropped`]).
    DropOldest,
    /// The same queue; when it overflows the subscription ends with `SLOW_CONSUMER`.
    Disconnect,
}

/// How to subscribe. Every default is documented on its field.
#[derive(Debug, Clone, Copy)]
pub struct SubscribeOptions {
    /// Default [`OverflowPolicy::Credit`].
    pub policy: OverflowPolicy,
    /// Credit window in records (`Credit` only). Default 1,000.
    pub window_records: u64,
    /// Credit window in bytes, at least one batch (`Credit` only). Default 1 MiB.
    pub window_bytes: u64,
    /// Queue bound in records (`DropOldest`, `Disconnect`); 0 takes the server's default
    /// (10,000), the server caps larger values. The bound the server grants applies to what
    /// this client holds for the subscription too ([`Subscription::queue_bounds`]). Default 0.
    pub queue_records: u64,
    /// Queue bound in bytes; 0 takes the server's default (4 MiB). Default 0.
    pub queue_bytes: u64,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        Self {
            policy: OverflowPolicy::Credit,
            window_records: 1000,
            window_bytes: 1 << 20,
            queue_records: 0,
            queue_bytes: 0,
        }
    }
}

/// Records dropped for a subscriber that fell behind, offsets `from..to` (exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    pub records: u64,
    pub from: u64,
    pub to: u64,
}

/// One item of a subscription's stream.
#[derive(Debug)]
pub enum PushEvent {
    Records(PushBatch),
    /// Records were dropped (`DropOldest`); what follows starts at or after `to`.
    Dropped(Dropped),
    /// A snapshot subscription's snapshot is complete ([`Client::subscribe_snapshot`]): the
    /// records before held every key's latest value below `live_from`; the records after are
    /// live, from `live_from` on.
    SnapshotEnd {
        live_from: u64,
    },
}

/// A push subscription to one partition, under an [`OverflowPolicy`].
#[derive(Debug)]
pub struct Subscription {
    /// The connection it was opened on: it ends with it.
    conn: Arc<crate::connection::Connection>,
    /// Keeps the client's pings going while the subscription lives, even when the
    /// application dropped its own handles.
    _client: Client,
    id: u64,
    topic: Arc<str>,
    partition: u32,
    inbox: Arc<Inbox>,
    policy: OverflowPolicy,
    bounds: Option<(u64, u64)>,
    position: u64,
    ended: bool,
    dropped: u64,
    /// The credit window asked for (records, bytes), and what `next` has taken of it and not
    /// yet granted back: it is granted back once half the window is used, not after every
    /// batch (one Credit frame per pushed batch cost the server a read and a wake-up of the
    /// subscription, with a message at a time on the path of the next message).
    window: (u64, u64),
    owed: (u64, u64),
}

/// Records pushed in one frame.
#[derive(Debug)]
pub struct PushBatch {
    pub records: Vec<ReceivedRecord>,
    pub high_watermark: u64,
    /// Records and bytes the frame used of the credit (re-granted by `next`).
    pub credit_records: u64,
    pub credit_bytes: u64,
}

impl Subscription {
    pub(crate) async fn open(
        client: Client,
        topic: &str,
        partition: u32,
        start: Option<Start>,
        opts: SubscribeOptions,
    ) -> Result<Self> {
        use msg::subscribe_request::Start as S;
        let (window_records, window_bytes) = match opts.policy {
            OverflowPolicy::Credit => (opts.window_records, opts.window_bytes),
            _ => (0, 0),
        };
        if opts.policy == OverflowPolicy::Credit && (window_records == 0 || window_bytes == 0) {
            return Err(ClientError::Invalid(
                "a credit window must allow at least one record and one byte".into(),
            ));
        }
        // `None`: a snapshot first.
        let start_msg = match start {
            None => S::Snapshot(true),
            Some(Start::Earliest) => S::Earliest(true),
            Some(Start::Latest) => S::Latest(true),
            Some(Start::Offset(o)) => S::Offset(o),
            Some(Start::Timestamp(ts)) => S::TimestampMs(ts),
        };
        let req = msg::SubscribeRequest {
            topic: topic.to_string(),
            partition,
            start: Some(start_msg),
            credit_records: window_records,
            credit_bytes: window_bytes,
            policy: match opts.policy {
                OverflowPolicy::Credit => msg::OverflowPolicy::Credit,
                OverflowPolicy::DropOldest => msg::OverflowPolicy::DropOldest,
                OverflowPolicy::Disconnect => msg::OverflowPolicy::Disconnect,
            } as i32,
            queue_records: opts.queue_records,
            queue_bytes: opts.queue_bytes,
        };
        let conn = client.connection().await?;
        let (r, _): (msg::SubscribeResponse, _) =
            crate::call(&conn, Api::Subscribe, &req, &[], crate::DEFAULT_TIMEOUT).await?;
        // The server says which bounds are in force (defaulted and capped); an older server
        // that does not leaves the request's.
        let or = |server: u64, asked: u64, default: u64| match (server, asked) {
            (0, 0) => default,
            (0, asked) => asked,
            (server, _) => server,
        };
        let bound = (opts.policy != OverflowPolicy::Credit).then(|| Bound {
            drop_oldest: opts.policy == OverflowPolicy::DropOldest,
            max_records: or(r.queue_records, opts.queue_records, DEFAULT_QUEUE_RECORDS),
            max_bytes: or(r.queue_bytes, opts.queue_bytes, DEFAULT_QUEUE_BYTES),
        });
        let bounds = bound.map(|b| (b.max_records, b.max_bytes));
        let inbox = Arc::new(Inbox::new(r.subscription_id, bound));
        conn.register_push(r.subscription_id, inbox.clone());
        Ok(Self {
            conn,
            _client: client,
            id: r.subscription_id,
            topic: Arc::from(topic),
            partition,
            inbox,
            policy: opts.policy,
            bounds,
            position: r.start_offset,
            ended: false,
            dropped: 0,
            window: (window_records, window_bytes),
            owed: (0, 0),
        })
    }

    /// The queue bounds in force (records, bytes), as the server granted them; `None` under
    /// `Credit`.
    pub fn queue_bounds(&self) -> Option<(u64, u64)> {
        self.bounds
    }

    /// Records dropped for this subscriber so far (`DropOldest`), as announced.
    pub fn dropped_records(&self) -> u64 {
        self.dropped
    }

    /// The next item: records, or a drop notice. Re-grants the credit records used (under
    /// `Credit`), once they come to half the window in records or in bytes; `Ok(None)` once
    /// the connection is gone; a `SLOW_CONSUMER` end (under `Disconnect`) is an error with
    /// that code. Cancel-safe.
    pub async fn next_event(&mut self) -> Result<Option<PushEvent>> {
        let e = self.next_event_without_credit().await?;
        if let Some(PushEvent::Records(b)) = &e
            && self.policy == OverflowPolicy::Credit
        {
            self.owed.0 += b.credit_records;
            self.owed.1 += b.credit_bytes;
            if self.owed.0 * 2 >= self.window.0 || self.owed.1 * 2 >= self.window.1 {
                self.grant_owed()?;
            }
        }
        Ok(e)
    }

    /// Grants back the credit `next` has taken and not yet granted; false when there was none.
    fn grant_owed(&mut self) -> Result<bool> {
        let (records, bytes) = std::mem::take(&mut self.owed);
        if records == 0 && bytes == 0 {
            return Ok(false);
        }
        self.grant(records, bytes)?;
        Ok(true)
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// The next pushed records, in order. Re-grants the credit they used, half the window at
    /// a time, so the server has at least half the window to push into while the caller keeps
    /// up; `Ok(None)` once the connection is gone.
    /// Cancel-safe: records are either returned or still queued.
    /// Drop notices (counted in [`Subscription::dropped_records`]) and the snapshot's end are
    /// skipped here; use [`Subscription::next_event`] to see them.
    pub async fn next(&mut self) -> Result<Option<PushBatch>> {
        loop {
            match self.next_event().await? {
                Some(PushEvent::Records(b)) => return Ok(Some(b)),
                Some(PushEvent::Dropped(_) | PushEvent::SnapshotEnd { .. }) => {}
                None => return Ok(None),
            }
        }
    }

    /// Like `next`, but leaves the credit used; grant it back with [`Subscription::grant`]
    /// when ready for more (a slow consumer's back-pressure).
    pub async fn next_without_credit(&mut self) -> Result<Option<PushBatch>> {
        loop {
            match self.next_event_without_credit().await? {
                Some(PushEvent::Records(b)) => return Ok(Some(b)),
                Some(PushEvent::Dropped(_) | PushEvent::SnapshotEnd { .. }) => {}
                None => return Ok(None),
            }
        }
    }

    async fn next_event_without_credit(&mut self) -> Result<Option<PushEvent>> {
        loop {
            if self.ended {
                return Ok(None);
            }
            let Some(p) = self.inbox.take().await else {
                self.ended = true;
                return Ok(None);
            };
            if p.data.dropped_records > 0 {
                let d = Dropped {
                    records: p.data.dropped_records,
                    from: p.data.skipped_from,
                    to: p.data.skipped_to,
                };
                self.dropped += d.records;
                self.position = self.position.max(d.to);
                return Ok(Some(PushEvent::Dropped(d)));
            }
            if p.data.snapshot_end {
                let live_from = p.data.live_from;
                self.position = self.position.max(live_from);
                return Ok(Some(PushEvent::SnapshotEnd { live_from }));
            }
            if p.data.end_code != 0 {
                self.ended = true;
                if p.data.end_code == ErrorCode::SlowConsumer as u32 {
                    // Ended here when the local buffer overflowed: end it on the server too
                    // (harmless when the server ended it).
                    let conn = &self.conn;
                    conn.unregister_push(self.id);
                    let _ = conn.send(
                        Api::Unsubscribe,
                        &msg::UnsubscribeRequest {
                            subscription_id: self.id,
                        },
                        &[],
                    );
                    self.id = 0;
                }
                return Err(ClientError::Server {
                    code: ErrorCode::from_u32(p.data.end_code),
                    message: p.data.end_message,
                });
            }
            if p.records.is_empty() {
                // The next batch is larger than the credit left: first give back what `next`
                // took and has not yet granted (the server says again if that is not enough),
                // else lend it what it needs, so a window smaller than one batch does not
                // stall forever.
                if (p.data.need_records > 0 || p.data.need_bytes > 0) && !self.grant_owed()? {
                    self.grant(p.data.need_records, p.data.need_bytes)?;
                }
                continue;
            }
            // Headers only: `decode_records` below checks every batch's CRC.
            let mut credit_records = 0;
            let mut at = 0;
            while at < p.records.len() {
                let h = weir_batch::peek(&p.records[at..])
                    .map_err(|e| ClientError::Protocol(e.to_string()))?;
                credit_records += u64::from(h.last_offset_delta.max(0) as u32) + 1;
                at += h.total_len();
            }
            let records = decode_records(&self.topic, self.partition, &p.records, self.position)?;
            if let Some(last) = records.last() {
                self.position = last.offset + 1;
            }
            return Ok(Some(PushEvent::Records(PushBatch {
                records,
                high_watermark: p.data.high_watermark,
                credit_records,
                credit_bytes: p.records.len() as u64,
            })));
        }
    }

    /// Adds credit. Queued at once; never waits.
    pub fn grant(&self, records: u64, bytes: u64) -> Result<()> {
        self.conn.send(
            Api::Credit,
            &msg::CreditRequest {
                subscription_id: self.id,
                records,
                bytes,
            },
            &[],
        )
    }

    /// Ends the subscription and waits for the server to confirm.
    pub async fn unsubscribe(mut self) -> Result<()> {
        self.ended = true;
        self.conn.unregister_push(self.id);
        let r = crate::call::<msg::UnsubscribeResponse>(
            &self.conn,
            Api::Unsubscribe,
            &msg::UnsubscribeRequest {
                subscription_id: self.id,
            },
            &[],
            crate::DEFAULT_TIMEOUT,
        )
        .await
        .map(|_| ());
        self.id = 0;
        r
    }
}

impl Drop for Subscription {
    /// A dropped subscription is ended on the server too (without waiting for the answer).
    fn drop(&mut self) {
        if self.id == 0 {
            return;
        }
        let conn = &self.conn;
        conn.unregister_push(self.id);
        let _ = conn.send(
            Api::Unsubscribe,
            &msg::UnsubscribeRequest {
                subscription_id: self.id,
            },
            &[],
        );
    }
}
