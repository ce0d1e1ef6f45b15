//! The queues between components, fan-out to several consumers, and the dead-letter output.
//!
//! Each consumer (transform or sink) has one input queue, a `weir-flow` `BoundedQueue` of
//! event batches bounded by batches and bytes under the consumer's overflow policy; every
//! producer output that names it holds a [`Sender`], and the queue closes when the last one
//! is gone. A batch for several consumers is copied for all but the last, each copy with its
//! own acknowledgement share.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use serde::Deserialize;
use weir_flow::queue::{BoundedQueue, Overflow, Pushed, QueueConfig};

use crate::event::Event;
use crate::stats::ComponentStats;

/// Most events in one batch between components.
pub const BATCH_EVENTS: usize = 256;

/// Header of a dead letter: the error.
pub const HEADER_ERROR: &str = "weir.error";
/// Header of a dead letter: the component that failed it.
pub const HEADER_COMPONENT: &str = "weir.error.component";
/// Header of a dead letter: the pipeline.
pub const HEADER_PIPELINE: &str = "weir.pipeline";

/// What a full input queue does with a new batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Wait for room: backpressure up to the source, which stops reading.
    #[default]
    Block,
    /// Drop the new events (acknowledged, counted as dropped).
    DropNewest,
    /// Drop the oldest queued events (acknowledged, counted as dropped).
    DropOldest,
    /// Send the new events to the dead-letter output.
    Reject,
}

/// The bounds of a consumer's input queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BufferConfig {
    /// Most events queued, counted in whole batches of up to 256 events. Default 4,096.
    pub max_events: usize,
    /// Most bytes queued (records as read, plus an estimate of their decoded values).
    /// Default 16 MiB.
    pub max_bytes: usize,
    /// Default `block`.
    pub when_full: WhenFull,
}

impl Default for BufferConfig {
    fn default() -> Self {
        Self {
            max_events: 4096,
            max_bytes: 16 << 20,
            when_full: WhenFull::Block,
        }
    }
}

// The queue's sizer takes `&T`, and T is the batch.
#[allow(clippy::ptr_arg)]
fn batch_size(b: &Vec<Event>) -> usize {
    b.iter().map(Event::size).sum()
}

/// One consumer's input.
#[derive(Debug)]
pub struct Input {
    pub(crate) name: Arc<str>,
    queue: BoundedQueue<Vec<Event>>,
    max_batches: usize,
    max_bytes: usize,
    senders: AtomicUsize,
    when_full: WhenFull,
    /// Events queued here are acknowledged at once: the consumer never holds back a commit.
    best_effort: bool,
    pub(crate) stats: Arc<ComponentStats>,
}

impl Input {
    pub(crate) fn new(
        name: Arc<str>,
        cfg: BufferConfig,
        best_effort: bool,
        stats: Arc<ComponentStats>,
    ) -> Arc<Self> {
        // A best-effort consumer never makes its producer wait: when full, it drops.
        let mut cfg = cfg;
        if best_effort && cfg.when_full == WhenFull::Block {
            cfg.when_full = WhenFull::DropNewest;
        }
        let overflow = match cfg.when_full {
            WhenFull::Block => Overflow::Block,
            WhenFull::DropNewest => Overflow::DropNewest,
            WhenFull::DropOldest => Overflow::DropOldest,
            WhenFull::Reject => Overflow::Reject,
        };
        let max_batches = cfg.max_events.div_ceil(BATCH_EVENTS).max(1);
        Arc::new(Self {
            name,
            queue: BoundedQueue::new(
                QueueConfig {
                    max_items: max_batches,
                    max_bytes: cfg.max_bytes,
                    overflow,
                },
                batch_size,
            ),
            max_batches,
            max_bytes: cfg.max_bytes,
            senders: AtomicUsize::new(0),
            when_full: cfg.when_full,
            best_effort,
            stats,
        })
    }

    pub(crate) fn sender(self: &Arc<Self>) -> Sender {
        self.senders.fetch_add(1, Ordering::AcqRel);
        Sender(self.clone())
    }

    /// The next batch; `None` once every sender is gone and the queue is empty. Counted as
    /// received by the consumer when `count`.
    pub(crate) async fn pop(&self, count: bool) -> Option<Vec<Event>> {
        let b = self.queue.pop().await?;
        if count {
            self.stats.received(b.len() as u64);
        }
        Some(b)
    }

    /// Batches and bytes queued.
    pub fn fill(&self) -> (usize, usize) {
        (self.queue.len(), self.queue.bytes())
    }

    pub(crate) fn close(&self) {
        self.queue.close();
    }

    /// No room for another batch now.
    fn is_full(&self) -> bool {
        self.queue.len() >= self.max_batches || self.queue.bytes() >= self.max_bytes
    }
}

/// A producer's handle on one consumer's input.
#[derive(Debug)]
pub struct Sender(Arc<Input>);

impl Sender {
    /// Pushes a batch, waiting for room (the queues of a transform's workers block); false
    /// when the consumer is gone.
    pub(crate) async fn push_waiting(&self, events: Vec<Event>) -> bool {
        matches!(
            self.0.queue.push(events).await,
            Pushed::Pushed | Pushed::DroppedOldest(_)
        )
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        if self.0.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.queue.close();
        }
    }
}

/// Where one output of a component goes: every consumer naming it.
#[derive(Debug)]
pub struct Fanout {
    targets: Vec<Sender>,
    dead: DeadLetters,
    /// Counts events that went nowhere (an output no consumer names: a route's unused route).
    stats: Arc<ComponentStats>,
    /// Stateless transforms run right here, on the producer's task, before the events go
    /// to `targets` (which then are the last one's consumers).
    chain: Vec<Stage>,
    /// The one sink after the chain, when it takes events encoded ahead.
    encode: Option<Encode>,
}

/// Encoding ahead for a sink (see [`crate::pipeline::Sink::encoding`]).
#[derive(Debug)]
pub(crate) struct Encode {
    pub(crate) encoding: crate::codec::Encoding,
    pub(crate) sink: Arc<str>,
    pub(crate) stats: Arc<ComponentStats>,
}

/// A transform run on its producer's task (see `pipeline.rs`, chaining): instances to
/// take turns on (the producer may send from several tasks at once), and its counters.
pub(crate) struct Stage {
    pub(crate) name: Arc<str>,
    pub(crate) instances: Vec<Mutex<Box<dyn crate::transform::Transform>>>,
    pub(crate) stats: Arc<ComponentStats>,
    /// The pipeline's: set after a panic, then each event runs apart (see `pipeline.rs`).
    pub(crate) isolate_all: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stage").field("name", &self.name).finish()
    }
}

impl Stage {
    /// Runs the transform on `events`; what passes comes back, failures go to `dead`.
    async fn run(&self, events: Vec<Event>, dead: &DeadLetters) -> Vec<Event> {
        self.stats.received(events.len() as u64);
        let mut out = crate::transform::Outputs::new(1);
        out.ports[0].reserve(events.len());
        let ran = {
            let mut t = self
                .instances
                .iter()
                .find_map(|m| m.try_lock())
                .unwrap_or_else(|| self.instances[0].lock());
            if self.isolate_all.load(Ordering::Relaxed) {
                crate::transform::process_apart(t.as_mut(), events, &mut out);
                Ok(())
            } else {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    for e in events {
                        t.process(e, &mut out);
                    }
                }))
            }
        };
        if ran.is_err() {
            // The events are lost unacknowledged: the source reads them again after the
            // restart this forces, and then each runs apart.
            let _ = crate::transform::panicked(&self.name, &self.isolate_all);
            out.ports[0].clear();
        }
        if out.dropped > 0 {
            self.stats.dropped(out.dropped);
        }
        if !out.failed.is_empty() {
            self.stats.errors(out.failed.len() as u64);
            dead.send_all(std::mem::take(&mut out.failed), &self.name)
                .await;
        }
        let passed = std::mem::take(&mut out.ports[0]);
        self.stats.sent(passed.len() as u64);
        passed
    }
}

impl Fanout {
    pub(crate) fn new(targets: Vec<Sender>, dead: DeadLetters, stats: Arc<ComponentStats>) -> Self {
        Self {
            targets,
            dead,
            stats,
            chain: Vec::new(),
            encode: None,
        }
    }

    /// A fan-out that first runs `chain` (whose last stage's consumers are `targets`).
    pub(crate) fn chained(
        targets: Vec<Sender>,
        dead: DeadLetters,
        stats: Arc<ComponentStats>,
        chain: Vec<Stage>,
        encode: Option<Encode>,
    ) -> Self {
        Self {
            targets,
            dead,
            stats,
            chain,
            encode,
        }
    }

    /// True when a consumer of this output has no room now (a blocking one would make a
    /// send wait): for sources that answer "busy" instead of waiting.
    pub fn is_full(&self) -> bool {
        self.targets
            .iter()
            .any(|t| !t.0.best_effort && t.0.is_full())
    }

    /// Sends `events` to every consumer, waiting while a blocking queue is full. Counted as
    /// sent by the producer.
    pub async fn send(&self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        self.stats.sent(events.len() as u64);
        let mut events = events;
        for stage in &self.chain {
            events = stage.run(events, &self.dead).await;
            if events.is_empty() {
                return;
            }
        }
        if let Some(enc) = &self.encode {
            // One buffer for the batch; each event's bytes are a slice of it.
            let mut failed = Vec::new();
            let guess: usize = events
                .iter()
                .map(|e| e.record.value.as_ref().map_or(0, bytes::Bytes::len) + 16)
                .sum();
            let mut buf = Vec::with_capacity(guess);
            let mut ends = Vec::with_capacity(events.len());
            events.retain_mut(|e| {
                let start = buf.len();
                match enc.encoding.encode(&e.value, &mut buf) {
                    Ok(()) => {
                        ends.push(buf.len());
                        e.value = vrl::value::Value::Null;
                        true
                    }
                    Err(err) => {
                        buf.truncate(start);
                        let failed_event =
                            std::mem::replace(e, Event::detached(vrl::value::Value::Null));
                        failed.push((failed_event, err.0));
                        false
                    }
                }
            });
            let all = bytes::Bytes::from(buf);
            let mut start = 0;
            for (e, end) in events.iter_mut().zip(ends) {
                e.encoded = Some(all.slice(start..end));
                start = end;
            }
            if !failed.is_empty() {
                enc.stats.errors(failed.len() as u64);
                self.dead.send_all(failed, &enc.sink).await;
            }
        }
        let Some((last, rest)) = self.targets.split_last() else {
            // Nobody reads this output: dropped by design, counted.
            self.stats.dropped(events.len() as u64);
            events.into_iter().for_each(Event::ack);
            return;
        };
        for t in rest {
            let copy: Vec<Event> = events.iter().map(Event::fork).collect();
            self.push(t, copy).await;
        }
        self.push(last, events).await;
    }

    async fn push(&self, to: &Sender, mut events: Vec<Event>) {
        let input = &to.0;
        if input.best_effort {
            events = events.into_iter().map(Event::settled).collect();
        }
        // A batch over the queue's byte bound goes in pieces; a single event over it fails.
        if events.len() > 1 && batch_size(&events) > input.max_bytes {
            let mut pieces = vec![events];
            while let Some(mut piece) = pieces.pop() {
                if piece.len() > 1 && batch_size(&piece) > input.max_bytes {
                    let back = piece.split_off(piece.len() / 2);
                    pieces.push(back);
                    pieces.push(piece);
                } else {
                    Box::pin(self.push(to, piece)).await;
                }
            }
            return;
        }
        match input.queue.push(events).await {
            Pushed::Pushed => {}
            Pushed::DroppedOldest(old) => {
                for b in old {
                    input.stats.dropped(b.len() as u64);
                    b.into_iter().for_each(Event::ack);
                }
            }
            Pushed::Dropped(b) => {
                input.stats.dropped(b.len() as u64);
                b.into_iter().for_each(Event::ack);
            }
            Pushed::Rejected(b) | Pushed::TimedOut(b) => {
                let why = match input.when_full {
                    WhenFull::Reject => format!("the input buffer of `{}` is full", input.name),
                    _ => format!(
                        "an event of {} bytes is larger than the input buffer of `{}` \
                         (buffer.max_bytes {})",
                        batch_size(&b),
                        input.name,
                        input.max_bytes
                    ),
                };
                input.stats.errors(b.len() as u64);
                self.dead
                    .send_all(
                        b.into_iter().map(|e| (e, why.clone())).collect(),
                        &input.name,
                    )
                    .await;
            }
            // The consumer is gone (the pipeline is stopping): unacknowledged, read again.
            Pushed::Closed(b) => drop(b),
        }
    }
}

/// The pipeline's dead-letter output: events that failed, with the error and the component
/// in headers. Without one configured, they are logged (rate-limited) and counted.
#[derive(Debug, Clone)]
pub struct DeadLetters {
    pipeline: Arc<str>,
    to: Option<Arc<Sender>>,
    logged: Arc<Mutex<Option<Instant>>>,
}

impl DeadLetters {
    pub(crate) fn new(pipeline: Arc<str>, to: Option<Sender>) -> Self {
        Self {
            pipeline,
            to: to.map(Arc::new),
            logged: Arc::new(Mutex::new(None)),
        }
    }

    /// Sends failed events with their errors; `component` failed them.
    pub async fn send_all(&self, failed: Vec<(Event, String)>, component: &str) {
        if failed.is_empty() {
            return;
        }
        let Some(to) = &self.to else {
            let mut logged = self.logged.lock();
            if logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                *logged = Some(Instant::now());
                tracing::warn!(
                    pipeline = %self.pipeline,
                    component,
                    events = failed.len(),
                    error = %failed[0].1,
                    "events failed and the pipeline has no dead_letter output; they are \
                     counted as errors and not written anywhere (logged at most every 10 s)"
                );
            }
            drop(logged);
            failed.into_iter().for_each(|(e, _)| e.ack());
            return;
        };
        let events = failed
            .into_iter()
            .map(|(mut e, why)| {
                let h = &mut e.record.headers;
                h.push((HEADER_ERROR.into(), Bytes::from(why)));
                h.push((HEADER_COMPONENT.into(), Bytes::from(component.to_string())));
                h.push((
                    HEADER_PIPELINE.into(),
                    Bytes::from(self.pipeline.to_string()),
                ));
                e
            })
            .collect::<Vec<_>>();
        for chunk in chunks(events) {
            match to.0.queue.push(chunk).await {
                Pushed::Pushed => {}
                Pushed::DroppedOldest(old) => old.into_iter().flatten().for_each(Event::ack),
                Pushed::Dropped(b) | Pushed::Rejected(b) | Pushed::TimedOut(b) => {
                    // The dead-letter output itself is full under a non-blocking policy: not
                    // acknowledged, so read again after a restart rather than lost.
                    drop(b)
                }
                Pushed::Closed(b) => drop(b),
            }
        }
    }
}

fn chunks(mut events: Vec<Event>) -> Vec<Vec<Event>> {
    let mut out = Vec::new();
    while events.len() > BATCH_EVENTS {
        let rest = events.split_off(BATCH_EVENTS);
        out.push(events);
        events = rest;
    }
    out.push(events);
    out
}
