//! weir topics, in process through the broker (no socket).
//!
//! The source is a member of a native consumer group: the broker assigns it partitions (and
//! shares them with other members of the same group, such as the same pipeline on another
//! server reading through the native door); it starts each at the group's committed offset
//! (or the configured start), and commits, fenced by its generation, the contiguous
//! acknowledged watermark of each partition every second and when it stops. On a rebalance
//! it keeps reading the partitions it still owns, stops the ones it lost and starts the new
//! ones.
//!
//! The sink writes through the broker's idempotent produce path (a producer id per run and
//! sequences per partition), so a retried batch is never written twice; records with a key
//! go to the partition the key ring gives (as every weir client routes), keyless ones round
//! robin; events are batched by count, bytes and linger, and acknowledged once durable.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use serde::Deserialize;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use weir_batch::{BatchBuilder, Batches, RecordSpec, Records, Ring};
use weir_broker::broker::OffsetSpec;
use weir_broker::group::AssignmentStrategy;
use weir_broker::{Broker, BrokerError, ErrorKind};
use weir_flow::adaptive::{AdaptiveLimiter, Gradient2, Token};
use weir_flow::breaker::{BreakerConfig, CallPermit, CircuitBreaker, Window};
use weir_flow::clock::MonotonicClock;

use crate::codec::{Decoding, Encoding};
use crate::edge::BATCH_EVENTS;
use crate::event::{AckBatch, Event, Origin, Record};
use crate::pipeline::{ComponentError, Sink, SinkContext, Source, SourceContext};
use crate::tracker::Tracker;

/// Where a group without a committed offset starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Start {
    #[default]
    Earliest,
    Latest,
}

/// A weir topic source.
#[derive(Debug, Clone)]
pub struct TopicSource {
    pub broker: Broker,
    pub topic: String,
    /// The consumer group.
    pub group: String,
    pub start: Start,
    pub decoding: Decoding,
    /// How often acknowledged positions are committed.
    pub commit_interval: Duration,
    /// Its checkpoint and event time, as it runs.
    pub progress: Arc<super::ProgressCell>,
}

const FETCH_BYTES: usize = 1 << 20;
const SESSION: Duration = Duration::from_secs(30);

type Trackers = Arc<Mutex<HashMap<u32, Tracker>>>;

impl Source for TopicSource {
    fn run(&self, ctx: SourceContext) -> BoxFuture<'static, Result<(), ComponentError>> {
        Box::pin(self.clone().consume(ctx))
    }

    fn lag(&self) -> Option<u64> {
        let lag = self.broker.group_lag(&self.group);
        Some(
            lag.iter()
                .filter(|l| l.topic == self.topic)
                .map(|l| l.lag)
                .sum(),
        )
    }

    fn progress(&self) -> super::Progress {
        self.progress.get()
    }
}

struct Reader {
    stop: CancellationToken,
}

impl TopicSource {
    async fn consume(self, ctx: SourceContext) -> Result<(), ComponentError> {
        let ctx = Arc::new(ctx);
        let client_id = format!("pipeline/{}/{}", ctx.pipeline, ctx.component);
        let trackers: Trackers = Arc::default();
        let mut readers: BTreeMap<u32, Reader> = BTreeMap::new();
        let mut tasks: JoinSet<Result<(), ComponentError>> = JoinSet::new();
        let mut member: Option<String> = None;
        // (member id, generation) of the last join.
        let mut current: Option<(String, u64)> = None;
        let result = 'run: loop {
            let joined = self.broker.join_group(
                &self.group,
                member.as_deref(),
                &client_id,
                vec![self.topic.clone()],
                SESSION,
                AssignmentStrategy::Sticky,
            );
            let j = match joined {
                Ok(j) => j,
                Err(e) => {
                    break 'run Err(ComponentError(format!(
                        "joining group `{}`: {e}",
                        self.group
                    )));
                }
            };
            member = Some(j.member_id.clone());
            let owned: Vec<u32> = j
                .assignment
                .iter()
                .filter(|(t, _)| *t == self.topic)
                .flat_map(|(_, ps)| ps.iter().copied())
                .collect();
            // Lost partitions stop; their events in flight can no longer be committed here.
            readers.retain(|p, r| {
                let keep = owned.contains(p);
                if !keep {
                    r.stop.cancel();
                    trackers.lock().remove(p);
                    self.progress.forget(*p);
                }
                keep
            });
            for p in owned {
                if readers.contains_key(&p) {
                    continue;
                }
                let position = match self.position(p).await {
                    Ok(o) => o,
                    Err(e) => break 'run Err(e),
                };
                trackers.lock().insert(p, Tracker::new(position));
                let stop = ctx.stop.child_token();
                readers.insert(p, Reader { stop: stop.clone() });
                tasks.spawn(
                    self.clone()
                        .read(p, position, ctx.clone(), trackers.clone(), stop),
                );
            }
            let generation = j.generation;
            current = Some((j.member_id.clone(), generation));
            let mut commit = tokio::time::interval(self.commit_interval);
            let mut heartbeat = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = ctx.stop.cancelled() => break 'run Ok(()),
                    _ = ctx.kill.cancelled() => break 'run Ok(()),
                    Some(done) = tasks.join_next() => match done {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => break 'run Err(e),
                        Err(e) => break 'run Err(ComponentError(format!("a partition reader ended abnormally: {e}"))),
                    },
                    _ = commit.tick() => {
                        if let Err(e) = self.commit(&trackers, &j.member_id, generation).await {
                            break 'run Err(e);
                        }
                    }
                    _ = heartbeat.tick() => match self.broker.heartbeat(&self.group, &j.member_id, generation) {
                        Ok(()) => {}
                        Err(e) if e.kind() == ErrorKind::RebalanceInProgress => {
                            // Commit what is ours before the generation moves on.
                            let _ = self.commit(&trackers, &j.member_id, generation).await;
                            continue 'run;
                        }
                        Err(e) if e.kind() == ErrorKind::ShuttingDown => break 'run Ok(()),
                        Err(e) => {
                            // Expired (a long pause): join again as a new member.
                            tracing::warn!(group = %self.group, error = %e, "pipeline source lost its group membership; joining again");
                            member = None;
                            continue 'run;
                        }
                    },
                }
            }
        };
        // Readers stop; what they read drains through the pipeline until it is acknowledged
        // or the pipeline is killed; then the acknowledged prefix is committed.
        for r in readers.values() {
            r.stop.cancel();
        }
        while let Some(done) = tasks.join_next().await {
            if let Ok(Err(e)) = done {
                tracing::debug!(error = %e, "partition reader ended with an error while stopping");
            }
        }
        // The pipeline's queues close behind this source once it returns; until then, wait
        // for the events under way.
        let idle = || trackers.lock().values().all(Tracker::is_idle);
        while !idle() && !ctx.kill.is_cancelled() {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                _ = ctx.kill.cancelled() => {}
            }
            let _ = self.advance(&trackers);
        }
        if let Some((m, generation)) = &current {
            let _ = self.commit(&trackers, m, *generation).await;
            let _ = self.broker.leave_group(&self.group, m);
        }
        result
    }

    /// Where partition `p` starts: the group's committed offset, or the configured start.
    async fn position(&self, p: u32) -> Result<u64, ComponentError> {
        if let Some(o) = self.broker.committed(&self.group, &self.topic, p) {
            return Ok(o);
        }
        let spec = match self.start {
            Start::Earliest => OffsetSpec::Earliest,
            Start::Latest => OffsetSpec::Latest,
        };
        self.broker
            .list_offsets(&self.topic, p, spec)
            .await
            .map_err(|e| ComponentError(format!("topic `{}` partition {p}: {e}", self.topic)))
    }

    /// Moves each partition's acknowledged watermark. A lost event is an error: the pipeline
    /// restarts from the last commit and reads it again.
    fn advance(&self, trackers: &Trackers) -> Result<(), ComponentError> {
        for (p, t) in trackers.lock().iter_mut() {
            if let Err(lost) = t.advance() {
                return Err(ComponentError(format!(
                    "events of topic `{}` partition {p} from offset {} were not delivered; \
                     restarting from the last commit",
                    self.topic, lost.position
                )));
            }
        }
        Ok(())
    }

    /// Commits each partition's acknowledged watermark (what was acknowledged before a lost
    /// event too), fenced by `generation`.
    async fn commit(
        &self,
        trackers: &Trackers,
        member: &str,
        generation: u64,
    ) -> Result<(), ComponentError> {
        let lost = self.advance(trackers);
        let offsets: Vec<(String, u32, u64)> = trackers
            .lock()
            .iter()
            .filter_map(|(p, t)| t.acked().map(|o| (*p, o)))
            .filter(|(p, o)| self.broker.committed(&self.group, &self.topic, *p) != Some(*o))
            .map(|(p, o)| (self.topic.clone(), p, o))
            .collect();
        if offsets.is_empty() {
            self.progress.checkpointed();
        } else {
            match self
                .broker
                .commit(&self.group, Some((member, generation)), offsets)
                .await
            {
                Ok(()) => self.progress.checkpointed(),
                // Fenced: the partition moved; its new owner reads from the last commit.
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::Fenced
                            | ErrorKind::RebalanceInProgress
                            | ErrorKind::ShuttingDown
                    ) => {}
                Err(e) => return Err(ComponentError(format!("committing: {e}"))),
            }
        }
        lost
    }

    /// Reads partition `p` from `position` until `stop`, sending events on.
    async fn read(
        self,
        p: u32,
        mut position: u64,
        ctx: Arc<SourceContext>,
        trackers: Trackers,
        stop: CancellationToken,
    ) -> Result<(), ComponentError> {
        let stream: Arc<str> = self.topic.as_str().into();
        loop {
            let before = position;
            let fetched = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                f = self.broker.fetch(&self.topic, p, position, FETCH_BYTES, 1, Duration::from_millis(500)) => f,
            };
            let fetched = match fetched {
                Ok(f) => f,
                Err(e) if e.kind() == ErrorKind::OffsetOutOfRange => {
                    let start = self
                        .broker
                        .list_offsets(&self.topic, p, OffsetSpec::Earliest)
                        .await
                        .map_err(ComponentError::new)?;
                    tracing::warn!(topic = %self.topic, partition = p, position, start,
                        "pipeline source position is no longer in the log (retention); going on from the log start");
                    position = start;
                    trackers.lock().insert(p, Tracker::new(position));
                    continue;
                }
                Err(e) if e.kind() == ErrorKind::ShuttingDown => return Ok(()),
                Err(e) => {
                    return Err(ComponentError(format!(
                        "reading `{}` partition {p}: {e}",
                        self.topic
                    )));
                }
            };
            let mut events = Vec::with_capacity(BATCH_EVENTS);
            let mut failed = Vec::new();
            let mut ack = AckBatch::new();
            let mut newest: Option<i64> = None;
            for chunk in &fetched.chunks {
                for batch in Batches::new(chunk) {
                    let (header, bytes) = batch.map_err(|e| {
                        ComponentError(format!("topic `{}` partition {p}: {e}", self.topic))
                    })?;
                    let end = header.next_offset().max(0) as u64;
                    if end <= position {
                        continue;
                    }
                    let section = weir_batch::section(&header, bytes).map_err(|e| {
                        ComponentError(format!("topic `{}` partition {p}: {e}", self.topic))
                    })?;
                    let borrowed = matches!(section, std::borrow::Cow::Borrowed(_));
                    let owned = Bytes::copy_from_slice(if borrowed { &[] } else { &section });
                    let slice = |s: &[u8]| -> Bytes {
                        if borrowed {
                            chunk.slice_ref(s)
                        } else {
                            owned.slice_ref(s)
                        }
                    };
                    for r in Records::with_payload(header, &section) {
                        let r = r.map_err(|e| {
                            ComponentError(format!("topic `{}` partition {p}: {e}", self.topic))
                        })?;
                        let offset = r.offset as u64;
                        if offset < position {
                            continue;
                        }
                        newest = newest.max(Some(r.timestamp));
                        let record = Record {
                            key: r.key.map(slice),
                            value: r.value.map(slice),
                            headers: r
                                .headers
                                .iter()
                                .map(|h| {
                                    (
                                        String::from_utf8_lossy(h.key).into_owned(),
                                        h.value.map(slice).unwrap_or_default(),
                                    )
                                })
                                .collect(),
                            timestamp: r.timestamp,
                            origin: Some(Origin {
                                stream: stream.clone(),
                                partition: p,
                                offset,
                            }),
                        };
                        let share = ack.share();
                        match self.decoding.decode(record.value.as_ref()) {
                            Ok(v) => events.push(Event::new(record, v, share)),
                            Err(e) => failed
                                .push((Event::new(record, vrl::value::Value::Null, share), e.0)),
                        }
                        if events.len() + failed.len() >= BATCH_EVENTS {
                            trackers
                                .lock()
                                .entry(p)
                                .or_insert_with(|| Tracker::new(position))
                                .push(offset + 1, std::mem::replace(&mut ack, AckBatch::new()));
                            ctx.emit(&mut events, &mut failed).await;
                        }
                    }
                    position = end;
                }
            }
            self.progress
                .read(p, newest, position >= fetched.high_watermark);
            if ack.pending() > 0 || !events.is_empty() || !failed.is_empty() {
                trackers
                    .lock()
                    .entry(p)
                    .or_insert_with(|| Tracker::new(position))
                    .push(position, ack);
                ctx.emit(&mut events, &mut failed).await;
            } else if position > before
                && let Some(t) = trackers.lock().get_mut(&p)
                && t.is_idle()
            {
                // Nothing under way: control records or compacted gaps move the watermark too.
                t.push(position, AckBatch::new());
            }
        }
    }
}

/// Batching of a sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Batching {
    /// Most events in one write. Default 1,000.
    pub max_events: usize,
    /// Most bytes in one write. Default 1 MiB.
    pub max_bytes: usize,
    /// How long a write waits for more events. Default 5 ms.
    pub linger_ms: u64,
}

impl Default for Batching {
    fn default() -> Self {
        Self {
            max_events: 1000,
            max_bytes: 1 << 20,
            linger_ms: 5,
        }
    }
}

/// A weir topic sink.
#[derive(Debug, Clone)]
pub struct TopicSink {
    pub broker: Broker,
    pub topic: String,
    pub encoding: Encoding,
    pub batching: Batching,
    /// Writes each record's original value (a dead-letter output) instead of encoding.
    pub raw: bool,
}

impl Sink for TopicSink {
    fn run(&self, ctx: SinkContext) -> BoxFuture<'static, Result<(), ComponentError>> {
        Box::pin(self.clone().write(ctx))
    }

    fn encoding(&self) -> Option<Encoding> {
        (!self.raw).then(|| self.encoding.clone())
    }
}

/// Takes events from `ctx` for one write: at least one batch, then more until `max_events`,
/// `max_bytes` or the linger. `None` when the input is done.
pub(crate) async fn gather(ctx: &SinkContext, b: &Batching) -> Option<Vec<Event>> {
    let mut events = ctx.next().await?;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(b.linger_ms);
    let mut bytes: usize = events.iter().map(|e| e.record.size()).sum();
    while events.len() < b.max_events && bytes < b.max_bytes {
        match tokio::time::timeout_at(deadline, ctx.next()).await {
            Ok(Some(more)) => {
                bytes += more.iter().map(|e| e.record.size()).sum::<usize>();
                events.extend(more);
            }
            Ok(None) | Err(_) => break,
        }
    }
    Some(events)
}

impl TopicSink {
    /// Writes as batches arrive, and acknowledges each batch's events once its writes are
    /// durable. Writes are started in order (the idempotent sequences need it) while earlier
    /// ones still await their syncs; how many wait at once follows how long they take
    /// (`weir-flow`'s Gradient2 adaptive limit: more while the sync time stays flat, fewer
    /// when it climbs). Writes that keep failing (a full disk) open the sink's circuit
    /// breaker (`weir-flow`'s): it then tries one write a second until one succeeds, instead
    /// of one per backoff step, and its state is in the component's status and metrics.
    async fn write(self, ctx: SinkContext) -> Result<(), ComponentError> {
        let limiter = AdaptiveLimiter::new(Gradient2::new(2, 1, 16));
        let breaker = CircuitBreaker::new(BreakerConfig {
            window: Window::Count(10),
            minimum_calls: 3,
            failure_rate: 0.5,
            open_duration: BREAKER_OPEN,
            half_open_probes: 1,
            ..BreakerConfig::default()
        })
        .with_metrics(ctx.stats.breaker_metrics());
        let breaker = &breaker;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let writer = self.start_writes(&ctx, &limiter, breaker, tx);
        let acker = async {
            while let Some(w) = rx.recv().await {
                let Underway {
                    writes,
                    events,
                    token,
                } = w;
                for (p, batch, write) in writes {
                    if write.wait().await.is_err() {
                        // The sync failed: this batch and those after it go again, in order
                        // (their sequences let the broker tell one already stored).
                        failed_write(breaker);
                        self.produce(&ctx, breaker, p, batch).await?;
                    }
                }
                token.success();
                ctx.stats.sent(events.len() as u64);
                events.into_iter().for_each(Event::ack);
            }
            Ok::<_, ComponentError>(())
        };
        tokio::try_join!(writer, acker).map(drop)
    }

    async fn start_writes<'a>(
        &'a self,
        ctx: &'a SinkContext,
        limiter: &'a AdaptiveLimiter,
        breaker: &'a CircuitBreaker,
        tx: tokio::sync::mpsc::UnboundedSender<Underway<'a>>,
    ) -> Result<(), ComponentError> {
        let producer_id = self.broker.producers().init();
        let mut sequences: HashMap<u32, i32> = HashMap::new();
        let mut round_robin = 0u32;
        let mut value = Vec::new();
        loop {
            let token = limiter.acquire().await;
            let Some(events) = gather(ctx, &self.batching).await else {
                return Ok(());
            };
            let partitions = self.partitions().await?;
            let ring = Ring::new(partitions);
            // The topic's largest batch, less room for the batch header.
            let limit = self
                .broker
                .topic_config(&self.topic)
                .map(|c| c.max_batch_bytes as usize)
                .unwrap_or(1 << 20)
                .saturating_sub(256)
                .max(1024);
            // Per partition: batches of encoded records, each with its events.
            let mut by_partition: BTreeMap<u32, Vec<(BatchBuilder, Vec<Event>)>> = BTreeMap::new();
            let mut failed = Vec::new();
            let now = crate::event::now_ms();
            for e in events {
                value.clear();
                // The encoded value, in `value` (no copy: the batch builder copies it).
                let encoded = if self.raw {
                    if let Some(v) = &e.record.value {
                        value.extend_from_slice(v);
                    }
                    Ok(())
                } else if e.encoded.is_some() {
                    Ok(())
                } else {
                    self.encoding.encode(&e.value, &mut value)
                };
                if let Err(err) = encoded {
                    failed.push((e, err.0));
                    continue;
                }
                let v: Option<&[u8]> = if let Some(ahead) = &e.encoded {
                    Some(ahead)
                } else if self.raw && e.record.value.is_none() {
                    None
                } else {
                    Some(&value)
                };
                let size = e.record.key.as_ref().map_or(0, Bytes::len)
                    + v.map_or(0, <[u8]>::len)
                    + e.record
                        .headers
                        .iter()
                        .map(|(k, v)| k.len() + v.len() + 10)
                        .sum::<usize>()
                    + 32;
                if size > limit {
                    failed.push((
                        e,
                        format!(
                            "a record of about {size} bytes is larger than topic `{}` takes \
                             (max_batch_bytes)",
                            self.topic
                        ),
                    ));
                    continue;
                }
                let p = match &e.record.key {
                    Some(k) => ring.partition_for(k),
                    None => {
                        round_robin = round_robin.wrapping_add(1);
                        round_robin % partitions
                    }
                };
                let batches = by_partition.entry(p).or_default();
                if batches
                    .last()
                    .is_none_or(|(b, _)| !b.is_empty() && b.size() + size > limit)
                {
                    batches.push((BatchBuilder::new(now), Vec::new()));
                }
                let (builder, evs) = batches.last_mut().expect("a batch was just made");
                builder.push(RecordSpec {
                    key: e.record.key.as_deref(),
                    value: v,
                    headers: e
                        .record
                        .headers
                        .iter()
                        .map(|(k, v)| (k.as_str(), Some(&v[..])))
                        .collect(),
                    timestamp: Some(e.record.timestamp),
                });
                evs.push(e);
            }
            if !failed.is_empty() {
                ctx.stats.errors(failed.len() as u64);
                ctx.dead.send_all(failed, &ctx.component).await;
            }
            // Started in order; every partition's syncs overlap.
            let mut writes = Vec::new();
            let mut written = Vec::new();
            for (p, batches) in by_partition {
                let seq = sequences.entry(p).or_insert(0);
                for (builder, evs) in batches {
                    let batch = Bytes::from(builder.producer(producer_id, 0, *seq).build());
                    *seq = seq.wrapping_add(evs.len() as i32);
                    let write = self.start(ctx, breaker, p, batch.clone()).await?;
                    writes.push((p, batch, write));
                    written.extend(evs);
                }
            }
            let underway = Underway {
                writes,
                events: written,
                token,
            };
            if tx.send(underway).is_err() {
                return Ok(());
            }
        }
    }

    /// The topic's partition count; a missing topic is created when the broker creates
    /// topics on first use.
    async fn partitions(&self) -> Result<u32, ComponentError> {
        if let Some(n) = self.broker.partition_count(&self.topic) {
            return Ok(n);
        }
        if self.broker.config().auto_create_topics {
            match self.broker.create_topic(&self.topic, None).await {
                Ok(_) | Err(BrokerError::TopicExists(_)) => {}
                Err(e) => {
                    return Err(ComponentError(format!(
                        "creating topic `{}`: {e}",
                        self.topic
                    )));
                }
            }
        }
        self.broker
            .partition_count(&self.topic)
            .ok_or_else(|| ComponentError(format!("topic `{}` does not exist", self.topic)))
    }

    /// Starts writing one batch (the sync is awaited by the caller), retrying what may
    /// succeed later until the pipeline is killed.
    async fn start(
        &self,
        ctx: &SinkContext,
        breaker: &CircuitBreaker,
        p: u32,
        batch: Bytes,
    ) -> Result<weir_broker::producers::SequencedWrite, ComponentError> {
        let header = weir_batch::peek(&batch).map_err(ComponentError::new)?;
        let mut backoff = Duration::from_millis(50);
        loop {
            let permit = self.admit(ctx, breaker).await?;
            let err = match self
                .broker
                .produce_sequenced(&self.topic, p, &header, batch.clone(), |b| b)
                .await
            {
                Ok(w) => {
                    permit.success();
                    ctx.stats.recovered();
                    return Ok(w);
                }
                Err(e) => {
                    permit.failure();
                    e
                }
            };
            self.backoff(ctx, p, &err, &mut backoff).await?;
        }
    }

    /// Waits until the circuit breaker lets a write through (at once while it is closed),
    /// saying in the component's status why it waits.
    async fn admit<'b>(
        &self,
        ctx: &SinkContext,
        breaker: &'b CircuitBreaker,
    ) -> Result<CallPermit<'b, MonotonicClock>, ComponentError> {
        loop {
            let refused = match breaker.try_acquire() {
                Ok(permit) => return Ok(permit),
                Err(refused) => refused,
            };
            // Open: until its pause ends; half-open: while another write is the probe.
            let wait = refused
                .retry_after
                .unwrap_or(Duration::from_millis(50))
                .max(Duration::from_millis(10));
            let why = format!(
                "writes to `{}` keep failing: the sink's circuit breaker holds them back and \
                 lets one through every {} ms until one succeeds",
                self.topic,
                BREAKER_OPEN.as_millis()
            );
            if ctx.stats.retry(&why) {
                tracing::warn!(sink = %ctx.component, error = %why, "pipeline sink retrying a write until it succeeds");
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = ctx.kill.cancelled() => return Err(ComponentError("stopped while retrying a write".into())),
            }
        }
    }

    /// After a failed write: an error if it cannot succeed later, else waits (the backoff
    /// doubles up to 2 s) and says why in the component's status.
    async fn backoff(
        &self,
        ctx: &SinkContext,
        p: u32,
        err: &weir_broker::producers::SequencedError,
        backoff: &mut Duration,
    ) -> Result<(), ComponentError> {
        use weir_broker::producers::SequencedError;
        let retry = match err {
            SequencedError::Retry(_) => true,
            SequencedError::Broker(b) => {
                b.kind().is_retriable() && b.kind() != ErrorKind::ShuttingDown
            }
            _ => false,
        };
        let why = format!("writing to `{}` partition {p}: {err}", self.topic);
        if !retry {
            return Err(ComponentError(why));
        }
        if ctx.stats.retry(&why) {
            tracing::warn!(sink = %ctx.component, error = %why, "pipeline sink retrying a write until it succeeds");
        }
        tokio::select! {
            _ = tokio::time::sleep(*backoff) => {}
            _ = ctx.kill.cancelled() => return Err(ComponentError("stopped while retrying a write".into())),
        }
        *backoff = (*backoff * 2).min(Duration::from_secs(2));
        Ok(())
    }

    /// Writes one batch and awaits its sync, retrying what may succeed later until the
    /// pipeline is killed.
    async fn produce(
        &self,
        ctx: &SinkContext,
        breaker: &CircuitBreaker,
        p: u32,
        batch: Bytes,
    ) -> Result<(), ComponentError> {
        let mut backoff = Duration::from_millis(50);
        loop {
            let write = self.start(ctx, breaker, p, batch.clone()).await?;
            match write.wait().await {
                Ok(_) => return Ok(()),
                Err(e) => {
                    failed_write(breaker);
                    self.backoff(ctx, p, &e, &mut backoff).await?;
                }
            }
        }
    }
}

/// How long a sink's open circuit breaker holds writes back before letting one through.
const BREAKER_OPEN: Duration = Duration::from_secs(1);

/// A write whose start passed the breaker failed at its sync: counted as a failure too (when
/// the breaker takes a call now).
fn failed_write(breaker: &CircuitBreaker) {
    if let Ok(permit) = breaker.try_acquire() {
        permit.failure();
    }
}

/// A batch of events whose writes were started, awaiting their syncs.
struct Underway<'a> {
    writes: Vec<(u32, Bytes, weir_broker::producers::SequencedWrite)>,
    events: Vec<Event>,
    token: Token<'a, weir_flow::clock::MonotonicClock>,
}

impl From<BrokerError> for ComponentError {
    fn from(e: BrokerError) -> Self {
        ComponentError(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::Builder;
    use weir_broker::BrokerConfig;
    use weir_broker::topic::{DurabilitySetting, TopicConfig};
    use weir_log::{FaultKind, MemStorage};

    /// Sends `n` events, then waits for them to be acknowledged (and fails the run if one
    /// was not, so that it is read again).
    struct Events(u64);

    impl Source for Events {
        fn run(&self, ctx: SourceContext) -> BoxFuture<'static, Result<(), ComponentError>> {
            let n = self.0;
            Box::pin(async move {
                let ack = AckBatch::new();
                let mut events: Vec<Event> = (0..n)
                    .map(|i| {
                        let value = vrl::value::Value::Integer(i as i64);
                        Event::new(Record::default(), value, ack.share())
                    })
                    .collect();
                ctx.emit(&mut events, &mut Vec::new()).await;
                if ack.settled().await {
                    Ok(())
                } else {
                    Err(ComponentError("not acknowledged".into()))
                }
            })
        }
    }

    /// A disk that stays full: the sink's breaker opens and holds its writes back (its
    /// status says so); once the disk has room, every event is written, each once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_that_keep_failing_open_the_breaker_and_all_are_written_after() {
        let storage = MemStorage::new();
        let cfg = BrokerConfig {
            data_dir: std::path::PathBuf::from("/data"),
            storage: Arc::new(storage.clone()),
            preallocate_bytes: 0,
            default_topic: TopicConfig {
                durability: DurabilitySetting::Always,
                ..TopicConfig::default()
            },
            ..BrokerConfig::default()
        };
        let broker = tokio::task::spawn_blocking(move || Broker::open(cfg))
            .await
            .unwrap()
            .unwrap();
        broker.create_topic("out", None).await.unwrap();
        storage.inject_faults(storage.op_count(), u64::MAX, FaultKind::DiskFull);
        let p = Builder::new("p")
            .source("in", Events(50))
            .sink(
                "out",
                &["in"],
                TopicSink {
                    broker: broker.clone(),
                    topic: "out".into(),
                    encoding: Encoding::default(),
                    batching: Batching::default(),
                    raw: false,
                },
            )
            .build()
            .unwrap();
        let run = tokio::spawn({
            let p = p.clone();
            async move { p.run(CancellationToken::new()).await }
        });
        let retrying = || {
            p.components()
                .into_iter()
                .find(|c| c.name == "out")
                .and_then(|c| c.retrying)
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if retrying().is_some_and(|r| r.contains("circuit breaker")) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the breaker did not open: {:?}",
                retrying()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let written = || async {
            let mut n = 0;
            for p in 0..broker.partition_count("out").unwrap() {
                n += broker
                    .list_offsets("out", p, OffsetSpec::Latest)
                    .await
                    .unwrap();
            }
            n
        };
        assert_eq!(written().await, 0, "nothing written while the disk is full");
        storage.heal();
        tokio::time::timeout(Duration::from_secs(20), run)
            .await
            .expect("the pipeline finishes once writes succeed")
            .unwrap();
        assert_eq!(written().await, 50, "every event written once");
        assert_eq!(retrying(), None, "recovered");
        broker.close().await.unwrap();
    }
}
