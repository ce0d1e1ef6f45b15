//! The Rust API: sources, transforms and sinks assembled into a [`Pipeline`], checked as a
//! graph, run and restarted.
//!
//! Every component runs on its own task; a transform's or sink's input is a bounded queue
//! (`edge.rs`). A run ends when its sources end and everything they read drained, when
//! [`Pipeline::run`]'s stop token fires (sources stop reading, the rest drains for up to the
//! grace period, sources commit what was acknowledged), or when a component fails: then every
//! task is stopped, and the pipeline starts again after a backoff from what was committed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::edge::{BufferConfig, DeadLetters, Fanout, Input};
use crate::event::Event;
use crate::stats::{ComponentStats, StatsSnapshot};
use crate::transform::{Outputs, Transform};

/// A component failed; the pipeline restarts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ComponentError(pub String);

impl ComponentError {
    pub fn new(e: impl std::fmt::Display) -> Self {
        Self(e.to_string())
    }
}

/// What a source gets to run with.
#[derive(Debug)]
pub struct SourceContext {
    /// Where its events go.
    pub out: Fanout,
    /// Where events it cannot decode go.
    pub dead: DeadLetters,
    pub stats: Arc<ComponentStats>,
    /// Fires when the pipeline stops: stop reading, wait for what was read to be
    /// acknowledged (until `kill`), commit, return.
    pub stop: CancellationToken,
    /// Fires when the pipeline must end now.
    pub kill: CancellationToken,
    pub pipeline: Arc<str>,
    pub component: Arc<str>,
}

/// A source: reads events and sends them on; commits what was acknowledged.
pub trait Source: Send + Sync + 'static {
    fn run(&self, ctx: SourceContext) -> BoxFuture<'static, Result<(), ComponentError>>;

    /// Records not yet committed (a topic source: its group's lag), where known.
    fn lag(&self) -> Option<u64> {
        None
    }

    /// Its checkpoint and event time, where it keeps them.
    fn progress(&self) -> crate::connect::Progress {
        crate::connect::Progress::default()
    }
}

/// What a sink gets to run with.
#[derive(Debug)]
pub struct SinkContext {
    input: Arc<Input>,
    /// Where events it cannot write go.
    pub dead: DeadLetters,
    pub stats: Arc<ComponentStats>,
    /// Fires when the pipeline must end now.
    pub kill: CancellationToken,
    pub component: Arc<str>,
}

impl SourceContext {
    /// Sends a source's read on: the failed records to the dead-letter output, the events
    /// to its output (both emptied); every record counted as received.
    pub async fn emit(&self, events: &mut Vec<Event>, failed: &mut Vec<(Event, String)>) {
        self.stats.received((events.len() + failed.len()) as u64);
        if !failed.is_empty() {
            self.stats.errors(failed.len() as u64);
            self.dead
                .send_all(std::mem::take(failed), &self.component)
                .await;
        }
        if !events.is_empty() {
            let batch = std::mem::replace(events, Vec::with_capacity(crate::edge::BATCH_EVENTS));
            self.out.send(batch).await;
        }
    }
}

impl SinkContext {
    /// The next batch of events; `None` when the inputs are done (or the pipeline is killed).
    pub async fn next(&self) -> Option<Vec<Event>> {
        tokio::select! {
            b = self.input.pop(true) => b,
            _ = self.kill.cancelled() => None,
        }
    }
}

/// A sink: writes events, and acknowledges each once written (or sends it to the
/// dead-letter output).
pub trait Sink: Send + Sync + 'static {
    fn run(&self, ctx: SinkContext) -> BoxFuture<'static, Result<(), ComponentError>>;

    /// The encoding a sink applies to every event's value, when it takes events encoded
    /// ahead (then the runner may encode on the source's task).
    fn encoding(&self) -> Option<crate::codec::Encoding> {
        None
    }
}

/// Makes a fresh transform for each run (a restart starts from clean state).
pub trait TransformFactory: Send + Sync + 'static {
    fn build(&self) -> Box<dyn Transform>;
}

impl<F, T> TransformFactory for F
where
    F: Fn() -> T + Send + Sync + 'static,
    T: Transform,
{
    fn build(&self) -> Box<dyn Transform> {
        Box::new(self())
    }
}

/// A graph that cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct GraphError(pub String);

enum Kind {
    Source(Arc<dyn Source>),
    Transform {
        factory: Arc<dyn TransformFactory>,
        outputs: Vec<String>,
        /// Instances run side by side, each event going to the one its key (or, keyless,
        /// its source partition) hashes to, so each key keeps its order.
        workers: usize,
    },
    Sink {
        sink: Arc<dyn Sink>,
        best_effort: bool,
    },
}

struct Node {
    name: Arc<str>,
    kind: Kind,
    inputs: Vec<String>,
    buffer: BufferConfig,
    stats: Arc<ComponentStats>,
}

/// Assembles a pipeline.
pub struct Builder {
    name: Arc<str>,
    nodes: Vec<Node>,
    dead_letter: Option<Node>,
    grace: Duration,
    ingest: Option<Arc<crate::connect::http::IngestPoint>>,
    /// A mistake found while assembling, reported by `build`.
    refused: Option<String>,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder").field("name", &self.name).finish()
    }
}

/// The name of the dead-letter output as a component (in stats and errors).
pub const DEAD_LETTER: &str = "dead_letter";

/// Sink options.
#[derive(Debug, Clone, Copy, Default)]
pub struct SinkOptions {
    pub buffer: BufferConfig,
    /// Events are acknowledged when queued for this sink, so it never holds back a commit;
    /// what it cannot keep up with is dropped and counted.
    pub best_effort: bool,
}

impl Builder {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            nodes: Vec::new(),
            dead_letter: None,
            grace: Duration::from_secs(10),
            ingest: None,
            refused: None,
        }
    }

    /// An HTTP source, fed through [`Pipeline::ingest_point`] (at most one per pipeline).
    pub fn http_source(mut self, name: &str, decoding: crate::codec::Decoding) -> Self {
        if self.ingest.is_some() {
            self.refused = Some(format!(
                "source `{name}`: a pipeline has one HTTP endpoint, so at most one http source"
            ));
        }
        let point = crate::connect::http::IngestPoint::new(decoding);
        self.ingest = Some(point.clone());
        self.source(name, crate::connect::http::HttpSource { point })
    }

    fn node(&self, name: &str, kind: Kind, inputs: &[&str], buffer: BufferConfig) -> Node {
        Node {
            name: name.into(),
            kind,
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            buffer,
            stats: ComponentStats::new(&self.name, name),
        }
    }

    pub fn source(mut self, name: &str, source: impl Source) -> Self {
        let n = self.node(
            name,
            Kind::Source(Arc::new(source)),
            &[],
            BufferConfig::default(),
        );
        self.nodes.push(n);
        self
    }

    pub fn transform(self, name: &str, inputs: &[&str], factory: impl TransformFactory) -> Self {
        self.transform_buffered(name, inputs, factory, BufferConfig::default())
    }

    pub fn transform_buffered(
        self,
        name: &str,
        inputs: &[&str],
        factory: impl TransformFactory,
        buffer: BufferConfig,
    ) -> Self {
        self.transform_parallel(name, inputs, factory, buffer, 1)
    }

    /// A transform run as `workers` instances side by side (order kept per key).
    pub fn transform_parallel(
        mut self,
        name: &str,
        inputs: &[&str],
        factory: impl TransformFactory,
        buffer: BufferConfig,
        workers: usize,
    ) -> Self {
        let outputs = factory.build().outputs();
        let kind = Kind::Transform {
            factory: Arc::new(factory),
            outputs,
            workers: workers.clamp(1, 64),
        };
        let n = self.node(name, kind, inputs, buffer);
        self.nodes.push(n);
        self
    }

    pub fn sink(self, name: &str, inputs: &[&str], sink: impl Sink) -> Self {
        self.sink_with(name, inputs, sink, SinkOptions::default())
    }

    pub fn sink_with(
        mut self,
        name: &str,
        inputs: &[&str],
        sink: impl Sink,
        options: SinkOptions,
    ) -> Self {
        let kind = Kind::Sink {
            sink: Arc::new(sink),
            best_effort: options.best_effort,
        };
        let n = self.node(name, kind, inputs, options.buffer);
        self.nodes.push(n);
        self
    }

    /// Where failed events go (with the error in headers).
    pub fn dead_letter(mut self, sink: impl Sink) -> Self {
        let kind = Kind::Sink {
            sink: Arc::new(sink),
            best_effort: false,
        };
        self.dead_letter = Some(self.node(DEAD_LETTER, kind, &[], BufferConfig::default()));
        self
    }

    /// How long a stopping pipeline waits for what was read to drain. Default 10 s.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Checks the graph: unique names, inputs that exist and are outputs, no cycles, every
    /// output read.
    pub fn build(self) -> Result<Pipeline, GraphError> {
        if let Some(e) = self.refused {
            return Err(GraphError(e));
        }
        check(&self.nodes)?;
        let components = self
            .nodes
            .iter()
            .chain(&self.dead_letter)
            .map(|n| (n.name.to_string(), kind_name(&n.kind), n.stats.clone()))
            .collect();
        let sources = self
            .nodes
            .iter()
            .filter_map(|n| match &n.kind {
                Kind::Source(s) => Some((n.name.to_string(), s.clone())),
                _ => None,
            })
            .collect();
        Ok(Pipeline {
            inner: Arc::new(Inner {
                name: self.name,
                nodes: self.nodes,
                dead_letter: self.dead_letter,
                grace: self.grace,
                ingest: self.ingest,
                sources,
                components,
                status: Mutex::new(Status::default()),
                inputs: Mutex::new(Vec::new()),
                isolate_all: Arc::new(AtomicBool::new(false)),
            }),
        })
    }
}

fn kind_name(k: &Kind) -> &'static str {
    match k {
        Kind::Source(_) => "source",
        Kind::Transform { .. } => "transform",
        Kind::Sink { .. } => "sink",
    }
}

/// The outputs a node offers: `NAME` for sources and plain transforms; `NAME.ROUTE` and
/// `NAME._unmatched` for a transform with named outputs.
fn outputs_of(n: &Node) -> Vec<String> {
    match &n.kind {
        Kind::Source(_) => vec![n.name.to_string()],
        Kind::Transform { outputs, .. } if outputs.is_empty() => vec![n.name.to_string()],
        Kind::Transform { outputs, .. } => {
            std::iter::once(format!("{}.{}", n.name, crate::vrl::UNMATCHED))
                .chain(outputs.iter().map(|o| format!("{}.{o}", n.name)))
                .collect()
        }
        Kind::Sink { .. } => Vec::new(),
    }
}

fn check(nodes: &[Node]) -> Result<(), GraphError> {
    let err = |s: String| Err(GraphError(s));
    let mut names = BTreeSet::new();
    for n in nodes {
        if n.name.is_empty()
            || !n
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return err(format!(
                "component name `{}`: use letters, digits, `_` and `-`",
                n.name
            ));
        }
        if &*n.name == DEAD_LETTER {
            return err(format!("`{DEAD_LETTER}` is the dead-letter output's name"));
        }
        if !names.insert(n.name.clone()) {
            return err(format!("two components are named `{}`", n.name));
        }
    }
    if !nodes.iter().any(|n| matches!(n.kind, Kind::Source(_))) {
        return err("a pipeline needs at least one source".into());
    }
    if !nodes.iter().any(|n| matches!(n.kind, Kind::Sink { .. })) {
        return err("a pipeline needs at least one sink".into());
    }
    // Output name -> producing node index.
    let mut produced: HashMap<String, usize> = HashMap::new();
    for (i, n) in nodes.iter().enumerate() {
        for o in outputs_of(n) {
            produced.insert(o, i);
        }
    }
    let mut read: BTreeSet<usize> = BTreeSet::new();
    for n in nodes {
        let what = kind_name(&n.kind);
        if !matches!(n.kind, Kind::Source(_)) && n.inputs.is_empty() {
            return err(format!("{what} `{}`: `inputs` is empty", n.name));
        }
        let mut seen = BTreeSet::new();
        for i in &n.inputs {
            if !seen.insert(i) {
                return err(format!("{what} `{}`: input `{i}` is named twice", n.name));
            }
            match produced.get(i) {
                Some(p) => {
                    read.insert(*p);
                }
                None => {
                    let hint = match nodes.iter().find(|m| *m.name == **i) {
                        Some(m) if matches!(m.kind, Kind::Sink { .. }) => {
                            " (it is a sink, which has no output)".to_string()
                        }
                        Some(m) => {
                            format!(" (name one of its outputs: {})", outputs_of(m).join(", "))
                        }
                        None => String::new(),
                    };
                    return err(format!(
                        "{what} `{}`: input `{i}` is not a source or transform output{hint}",
                        n.name
                    ));
                }
            }
        }
    }
    for (i, n) in nodes.iter().enumerate() {
        if !matches!(n.kind, Kind::Sink { .. }) && !read.contains(&i) {
            return err(format!(
                "{} `{}`: nothing reads its output; name it in the `inputs` of a transform or sink",
                kind_name(&n.kind),
                n.name
            ));
        }
    }
    // Cycles: depth-first over input edges.
    let parents = |n: &Node| -> Vec<usize> {
        n.inputs
            .iter()
            .filter_map(|i| produced.get(i).copied())
            .collect()
    };
    let mut state = vec![0u8; nodes.len()]; // 0 new, 1 on the stack, 2 done
    fn visit(
        i: usize,
        nodes: &[Node],
        parents: &dyn Fn(&Node) -> Vec<usize>,
        state: &mut [u8],
        path: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        state[i] = 1;
        path.push(i);
        for p in parents(&nodes[i]) {
            if state[p] == 1 {
                let start = path.iter().position(|x| *x == p).unwrap_or(0);
                return Some(path[start..].to_vec());
            }
            if state[p] == 0
                && let Some(c) = visit(p, nodes, parents, state, path)
            {
                return Some(c);
            }
        }
        path.pop();
        state[i] = 2;
        None
    }
    for i in 0..nodes.len() {
        if state[i] == 0
            && let Some(cycle) = visit(i, nodes, &parents, &mut state, &mut Vec::new())
        {
            let mut names: Vec<&str> = cycle.iter().rev().map(|i| &*nodes[*i].name).collect();
            names.push(names[0]);
            return err(format!("the inputs form a cycle: {}", names.join(" -> ")));
        }
    }
    Ok(())
}

/// Where a pipeline is in its life.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum State {
    #[default]
    Starting,
    Running,
    /// A run failed; the next starts after the backoff.
    Restarting {
        error: String,
    },
    Stopping,
    Stopped,
    /// Its sources ended and everything drained (stdin at end of file).
    Finished,
}

/// A pipeline's state and restarts.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    #[serde(flatten)]
    pub state: State,
    pub restarts: u64,
    /// The last error, kept after the pipeline recovered.
    pub last_error: Option<String>,
    /// When the last error happened, in ms since the epoch.
    pub last_error_at_ms: Option<u64>,
}

/// One component as `describe` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ComponentView {
    pub name: String,
    pub kind: &'static str,
    /// What it reads, as declared: component names, or `component.output` for a route's
    /// outputs (the dead-letter output's is empty: it takes every component's failures).
    pub inputs: Vec<String>,
    #[serde(flatten)]
    pub stats: StatsSnapshot,
    /// Batches and bytes in its input queue (transforms and sinks).
    pub queued_batches: Option<usize>,
    pub queued_bytes: Option<usize>,
    /// Sources: records not yet committed, where known (a topic source's group lag).
    pub lag: Option<u64>,
    /// Sources: when the position was last saved (everything acknowledged by then), ms
    /// since the epoch; `None` before the first save, and for sources that keep none.
    pub checkpoint_ms: Option<u64>,
    /// Sources that read timestamped records (topics): the event time read up to, ms since
    /// the epoch (see [`crate::connect::Progress::watermark_ms`]).
    pub watermark_ms: Option<i64>,
    /// What the component is retrying now (a sink that cannot write), if anything.
    pub retrying: Option<String>,
    /// Since when it retries, ms since the epoch.
    pub retrying_since_ms: Option<u64>,
}

struct Inner {
    name: Arc<str>,
    nodes: Vec<Node>,
    dead_letter: Option<Node>,
    grace: Duration,
    ingest: Option<Arc<crate::connect::http::IngestPoint>>,
    components: Vec<(String, &'static str, Arc<ComponentStats>)>,
    sources: Vec<(String, Arc<dyn Source>)>,
    status: Mutex<Status>,
    inputs: Mutex<Vec<Arc<Input>>>,
    /// Set once a transform that skips per-event panic isolation panicked (a bug, or a
    /// poison event): from then on every transform of this pipeline runs each event apart,
    /// so that when the event is read again after the restart, it alone goes to the
    /// dead-letter output instead of failing the pipeline again, forever.
    isolate_all: Arc<AtomicBool>,
}

/// A checked pipeline, ready to run.
#[derive(Clone)]
pub struct Pipeline {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("name", &self.inner.name)
            .finish()
    }
}

/// How a run ended.
enum Ended {
    /// Sources ended and everything drained.
    Finished,
    /// Stopped by the caller.
    Stopped,
    Failed(String),
}

const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl Pipeline {
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Where the HTTP door hands this pipeline's HTTP source its requests.
    pub fn ingest_point(&self) -> Option<&Arc<crate::connect::http::IngestPoint>> {
        self.inner.ingest.as_ref()
    }

    pub fn status(&self) -> Status {
        self.inner.status.lock().clone()
    }

    /// Every component with its counters and queue fill.
    pub fn components(&self) -> Vec<ComponentView> {
        let inputs = self.inner.inputs.lock().clone();
        self.inner
            .components
            .iter()
            .map(|(name, kind, stats)| {
                let fill = inputs.iter().find(|i| &*i.name == name).map(|i| i.fill());
                let source = self.inner.sources.iter().find(|(n, _)| n == name);
                let lag = source.and_then(|(_, s)| s.lag());
                let progress = source.map(|(_, s)| s.progress()).unwrap_or_default();
                let retrying = stats.retrying.lock().clone();
                let inputs = self
                    .inner
                    .nodes
                    .iter()
                    .find(|n| &*n.name == name)
                    .map(|n| n.inputs.clone())
                    .unwrap_or_default();
                ComponentView {
                    name: name.clone(),
                    kind,
                    inputs,
                    stats: stats.snapshot(),
                    queued_batches: fill.map(|f| f.0),
                    queued_bytes: fill.map(|f| f.1),
                    lag,
                    checkpoint_ms: progress.checkpoint_ms,
                    watermark_ms: progress.watermark_ms,
                    retrying_since_ms: retrying.as_ref().map(|r| r.1),
                    retrying: retrying.map(|r| r.0),
                }
            })
            .collect()
    }

    fn set(&self, state: State) {
        self.inner.status.lock().state = state;
    }

    /// Runs until `stop` fires (then drains for up to the grace period) or the sources end;
    /// a failed run is restarted after a backoff (0.5 s doubling to 30 s, back to 0.5 s after
    /// a minute of running).
    pub async fn run(&self, stop: CancellationToken) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            self.set(State::Running);
            let started = tokio::time::Instant::now();
            match self.run_once(&stop).await {
                Ended::Finished => {
                    self.set(State::Finished);
                    return;
                }
                Ended::Stopped => {
                    self.set(State::Stopped);
                    return;
                }
                Ended::Failed(error) if stop.is_cancelled() => {
                    // Killed at the end of its grace period while stopping: what was not
                    // acknowledged is read again at the next start.
                    tracing::warn!(pipeline = %self.inner.name, %error, "pipeline stopped before it drained");
                    self.set(State::Stopped);
                    return;
                }
                Ended::Failed(error) => {
                    tracing::warn!(pipeline = %self.inner.name, %error, "pipeline failed; restarting after {backoff:?}");
                    {
                        let mut s = self.inner.status.lock();
                        s.state = State::Restarting {
                            error: error.clone(),
                        };
                        s.restarts += 1;
                        s.last_error = Some(error);
                        s.last_error_at_ms = Some(crate::event::now_ms().max(0) as u64);
                    }
                    if started.elapsed() >= Duration::from_secs(60) {
                        backoff = FIRST_BACKOFF;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.cancelled() => {
                            self.set(State::Stopped);
                            return;
                        }
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    async fn run_once(&self, stop: &CancellationToken) -> Ended {
        let inner = &self.inner;
        let kill = CancellationToken::new();
        let source_stop = stop.child_token();
        // Inputs first: every consumer's queue.
        let mut inputs: BTreeMap<String, Arc<Input>> = BTreeMap::new();
        for n in inner.nodes.iter().chain(&inner.dead_letter) {
            let best_effort = matches!(
                n.kind,
                Kind::Sink {
                    best_effort: true,
                    ..
                }
            );
            if !matches!(n.kind, Kind::Source(_)) {
                inputs.insert(
                    n.name.to_string(),
                    Input::new(n.name.clone(), n.buffer, best_effort, n.stats.clone()),
                );
            }
        }
        *inner.inputs.lock() = inputs.values().cloned().collect();
        let dead = DeadLetters::new(
            inner.name.clone(),
            inner
                .dead_letter
                .as_ref()
                .map(|n| inputs[&*n.name].sender()),
        );
        let fanout = |output: &str, stats: &Arc<ComponentStats>| {
            let targets = inner
                .nodes
                .iter()
                .filter(|c| c.inputs.iter().any(|i| i == output))
                .map(|c| inputs[&*c.name].sender())
                .collect();
            Fanout::new(targets, dead.clone(), stats.clone())
        };
        // Chaining: a stateless one-output transform whose only input is a source (or a
        // transform chained to one), and the only reader of that output, runs on the
        // source's tasks, saving a queue and a thread hop per event.
        let mut chained: BTreeSet<Arc<str>> = BTreeSet::new();
        let mut chains: HashMap<Arc<str>, (Vec<crate::edge::Stage>, String)> = HashMap::new();
        for n in inner
            .nodes
            .iter()
            .filter(|n| matches!(n.kind, Kind::Source(_)))
        {
            let mut stages = Vec::new();
            let mut tail: &Node = n;
            loop {
                let outputs = outputs_of(tail);
                let readers: Vec<&Node> = inner
                    .nodes
                    .iter()
                    .filter(|c| c.inputs.iter().any(|i| outputs.contains(i)))
                    .collect();
                let [next] = readers.as_slice() else { break };
                let Kind::Transform {
                    factory,
                    outputs: named,
                    workers: 1,
                } = &next.kind
                else {
                    break;
                };
                if !named.is_empty() || next.inputs.len() != 1 || !factory.build().chainable() {
                    break;
                }
                stages.push(crate::edge::Stage {
                    name: next.name.clone(),
                    instances: (0..4)
                        .map(|_| parking_lot::Mutex::new(factory.build()))
                        .collect(),
                    stats: next.stats.clone(),
                    isolate_all: inner.isolate_all.clone(),
                });
                chained.insert(next.name.clone());
                tail = next;
            }
            if !stages.is_empty() {
                chains.insert(n.name.clone(), (stages, tail.name.to_string()));
            }
        }
        let mut tasks: JoinSet<(Arc<str>, Result<(), ComponentError>)> = JoinSet::new();
        for n in inner.nodes.iter().chain(&inner.dead_letter) {
            let name = n.name.clone();
            if chained.contains(&name) {
                continue;
            }
            match &n.kind {
                Kind::Source(source) => {
                    let out = match chains.remove(&name) {
                        Some((stages, tail)) => {
                            let readers: Vec<&Node> = inner
                                .nodes
                                .iter()
                                .filter(|c| c.inputs.contains(&tail))
                                .collect();
                            // One sink that takes events encoded ahead: encode here too, so
                            // the values are freed on the thread that made them.
                            let encode = match readers.as_slice() {
                                [one] => match &one.kind {
                                    Kind::Sink {
                                        sink,
                                        best_effort: false,
                                    } => sink.encoding().map(|e| crate::edge::Encode {
                                        encoding: e,
                                        sink: one.name.clone(),
                                        stats: one.stats.clone(),
                                    }),
                                    _ => None,
                                },
                                _ => None,
                            };
                            let targets =
                                readers.iter().map(|c| inputs[&*c.name].sender()).collect();
                            Fanout::chained(targets, dead.clone(), n.stats.clone(), stages, encode)
                        }
                        None => fanout(&n.name, &n.stats),
                    };
                    let ctx = SourceContext {
                        out,
                        dead: dead.clone(),
                        stats: n.stats.clone(),
                        stop: source_stop.clone(),
                        kill: kill.clone(),
                        pipeline: inner.name.clone(),
                        component: name.clone(),
                    };
                    let run = source.run(ctx);
                    tasks.spawn(async move { (name, run.await) });
                }
                Kind::Transform {
                    factory, workers, ..
                } if *workers > 1 => {
                    let input = inputs[&*n.name].clone();
                    let mut shards = Vec::new();
                    for _ in 0..*workers {
                        // Small: the component's own input queue is the bound.
                        let shard = Input::new(
                            name.clone(),
                            BufferConfig {
                                max_events: crate::edge::BATCH_EVENTS * 2,
                                max_bytes: n.buffer.max_bytes,
                                when_full: crate::edge::WhenFull::Block,
                            },
                            false,
                            n.stats.clone(),
                        );
                        let outs: Vec<Fanout> =
                            outputs_of(n).iter().map(|o| fanout(o, &n.stats)).collect();
                        let run = run_transform(
                            factory.build(),
                            shard.clone(),
                            outs,
                            n.stats.clone(),
                            name.clone(),
                            RunShared {
                                dead: dead.clone(),
                                kill: kill.clone(),
                                isolate_all: inner.isolate_all.clone(),
                            },
                        );
                        let (name, closing) = (name.clone(), shard.clone());
                        tasks.spawn(async move {
                            let r = run.await;
                            closing.close();
                            (name, r)
                        });
                        shards.push(shard.sender());
                    }
                    let kill = kill.clone();
                    tasks.spawn(async move {
                        let r = dispatch(&input, shards, kill).await;
                        input.close();
                        (name, r)
                    });
                }
                Kind::Transform { factory, .. } => {
                    let outs: Vec<Fanout> =
                        outputs_of(n).iter().map(|o| fanout(o, &n.stats)).collect();
                    let t = factory.build();
                    let input = inputs[&*n.name].clone();
                    let run = run_transform(
                        t,
                        input.clone(),
                        outs,
                        n.stats.clone(),
                        name.clone(),
                        RunShared {
                            dead: dead.clone(),
                            kill: kill.clone(),
                            isolate_all: inner.isolate_all.clone(),
                        },
                    );
                    tasks.spawn(async move {
                        let r = run.await;
                        // Whoever still sends here learns it at once instead of waiting.
                        input.close();
                        (name, r)
                    });
                }
                Kind::Sink { sink, .. } => {
                    let input = inputs[&*n.name].clone();
                    let is_dead_letter =
                        inner.dead_letter.as_ref().is_some_and(|d| d.name == n.name);
                    let ctx = SinkContext {
                        input: input.clone(),
                        // The dead-letter output cannot send to itself (its input would never
                        // close); what it cannot write is logged and counted.
                        dead: if is_dead_letter {
                            DeadLetters::new(inner.name.clone(), None)
                        } else {
                            dead.clone()
                        },
                        stats: n.stats.clone(),
                        kill: kill.clone(),
                        component: name.clone(),
                    };
                    let run = sink.run(ctx);
                    tasks.spawn(async move {
                        let r = run.await;
                        input.close();
                        (name, r)
                    });
                }
            }
        }
        // The dead-letter input closes once every component that may fail events is done.
        drop(dead);
        drop(inputs);

        let mut failed: Option<String> = None;
        let mut grace_deadline: Option<tokio::time::Instant> = None;
        loop {
            let next = async {
                match grace_deadline {
                    Some(at) => tokio::time::timeout_at(at, tasks.join_next()).await.ok(),
                    None => Some(tasks.join_next().await),
                }
            };
            tokio::select! {
                joined = next => match joined {
                    None => {
                        // The grace period ran out.
                        tracing::warn!(pipeline = %inner.name, "pipeline did not drain within {:?}; stopping it", inner.grace);
                        kill.cancel();
                        grace_deadline = None;
                    }
                    Some(None) => break,
                    Some(Some(Ok((_, Ok(()))))) => {}
                    Some(Some(Ok((name, Err(e))))) => {
                        if failed.is_none() {
                            failed = Some(format!("{name}: {e}"));
                        }
                        source_stop.cancel();
                        kill.cancel();
                    }
                    Some(Some(Err(join))) => {
                        if failed.is_none() {
                            failed = Some(format!("a component task ended abnormally: {join}"));
                        }
                        source_stop.cancel();
                        kill.cancel();
                    }
                },
                _ = stop.cancelled(), if grace_deadline.is_none() && !kill.is_cancelled() => {
                    self.set(State::Stopping);
                    grace_deadline = Some(tokio::time::Instant::now() + inner.grace);
                }
            }
        }
        inner.inputs.lock().clear();
        match failed {
            Some(e) => Ended::Failed(e),
            None if stop.is_cancelled() => Ended::Stopped,
            None => Ended::Finished,
        }
    }
}

/// Deals a parallel transform's input to its workers by key, counting it received once.
async fn dispatch(
    input: &Input,
    shards: Vec<crate::edge::Sender>,
    kill: CancellationToken,
) -> Result<(), ComponentError> {
    use std::hash::{BuildHasher, Hash, Hasher};
    let hasher = foldhash::fast::FixedState::with_seed(7);
    let n = shards.len();
    loop {
        let batch = tokio::select! {
            b = input.pop(false) => b,
            _ = kill.cancelled() => None,
        };
        let Some(batch) = batch else {
            return Ok(());
        };
        let mut parts: Vec<Vec<Event>> = (0..n).map(|_| Vec::new()).collect();
        for e in batch {
            let mut h = hasher.build_hasher();
            match (&e.record.key, &e.record.origin) {
                (Some(k), _) => k.hash(&mut h),
                (None, Some(o)) => (&*o.stream, o.partition).hash(&mut h),
                (None, None) => {}
            }
            parts[(h.finish() % n as u64) as usize].push(e);
        }
        for (part, shard) in parts.into_iter().zip(&shards) {
            if !part.is_empty() && !shard.push_waiting(part).await {
                return Ok(());
            }
        }
    }
}

/// What every transform task of one run shares.
struct RunShared {
    dead: DeadLetters,
    kill: CancellationToken,
    /// The pipeline's [`Inner::isolate_all`].
    isolate_all: Arc<AtomicBool>,
}

async fn run_transform(
    mut t: Box<dyn Transform>,
    input: Arc<Input>,
    outs: Vec<Fanout>,
    stats: Arc<ComponentStats>,
    name: Arc<str>,
    run: RunShared,
) -> Result<(), ComponentError> {
    let RunShared {
        dead,
        kill,
        isolate_all,
    } = run;
    let mut out = Outputs::new(outs.len());
    let isolate = t.isolate_panics();
    loop {
        let batch = tokio::select! {
            b = input.pop(true) => b,
            _ = kill.cancelled() => None,
        };
        let Some(batch) = batch else {
            return Ok(());
        };
        if isolate || isolate_all.load(Ordering::Relaxed) {
            crate::transform::process_apart(t.as_mut(), batch, &mut out);
        } else {
            // A panic here (a bug, or an event no one foresaw) loses the batch: its reads are
            // not acknowledged, the pipeline fails and restarts from its last commit, and
            // runs every event apart from then on.
            std::panic::catch_unwind(AssertUnwindSafe(|| {
                for event in batch {
                    t.process(event, &mut out);
                }
            }))
            .map_err(|_| crate::transform::panicked(&name, &isolate_all))?;
        }
        if out.dropped > 0 {
            stats.dropped(out.dropped);
            out.dropped = 0;
        }
        if !out.failed.is_empty() {
            stats.errors(out.failed.len() as u64);
            dead.send_all(std::mem::take(&mut out.failed), &name).await;
        }
        for (port, fan) in out.ports.iter_mut().zip(&outs) {
            if !port.is_empty() {
                fan.send(std::mem::take(port)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{AckBatch, Record};
    use crate::transform::map;
    use bytes::Bytes;
    use vrl::value::Value;

    /// Sends `n` keyed events in batches of 7, then waits for them to be acknowledged.
    struct Numbers {
        n: u64,
        keys: u64,
        acked: Arc<parking_lot::Mutex<bool>>,
    }

    impl Source for Numbers {
        fn run(&self, ctx: SourceContext) -> BoxFuture<'static, Result<(), ComponentError>> {
            let (n, keys, acked) = (self.n, self.keys, self.acked.clone());
            Box::pin(async move {
                let mut batches = Vec::new();
                for start in (0..n).step_by(7) {
                    let ack = AckBatch::new();
                    let events = (start..(start + 7).min(n))
                        .map(|i| {
                            let record = Record {
                                key: Some(Bytes::from(format!("k{}", i % keys))),
                                ..Record::default()
                            };
                            let v: Value =
                                serde_json::from_str(&format!(r#"{{"k":{},"i":{i}}}"#, i % keys))
                                    .unwrap();
                            Event::new(record, v, ack.share())
                        })
                        .collect();
                    ctx.out.send(events).await;
                    batches.push(ack);
                }
                for b in batches {
                    assert!(b.settled().await, "every event acknowledged");
                }
                *acked.lock() = true;
                Ok(())
            })
        }
    }

    struct Collect(Arc<parking_lot::Mutex<Vec<(i64, i64)>>>);

    impl Sink for Collect {
        fn run(&self, ctx: SinkContext) -> BoxFuture<'static, Result<(), ComponentError>> {
            let got = self.0.clone();
            Box::pin(async move {
                while let Some(batch) = ctx.next().await {
                    for e in batch {
                        let k = e.value.as_object().unwrap()["k"].as_integer().unwrap();
                        let i = e.value.as_object().unwrap()["i"].as_integer().unwrap();
                        got.lock().push((k, i));
                        e.ack();
                    }
                }
                Ok(())
            })
        }
    }

    /// Four workers, one of them slowed by its keys: each key's events still come out in
    /// order, every event once, and every event is acknowledged.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn parallel_workers_keep_each_keys_order() {
        let got = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let acked = Arc::new(parking_lot::Mutex::new(false));
        let p = Builder::new("t")
            .source(
                "in",
                Numbers {
                    n: 5000,
                    keys: 13,
                    acked: acked.clone(),
                },
            )
            .transform_parallel(
                "slow",
                &["in"],
                || {
                    map(|e| {
                        if e.value.as_object().unwrap()["k"].as_integer() == Some(3) {
                            std::thread::sleep(Duration::from_micros(200));
                        }
                        Ok(())
                    })
                },
                BufferConfig::default(),
                4,
            )
            .sink("out", &["slow"], Collect(got.clone()))
            .build()
            .unwrap();
        tokio::time::timeout(Duration::from_secs(60), p.run(CancellationToken::new()))
            .await
            .unwrap();
        assert_eq!(p.status().state, State::Finished);
        assert!(*acked.lock());
        let got = got.lock();
        assert_eq!(got.len(), 5000);
        let mut last: HashMap<i64, i64> = HashMap::new();
        for (k, i) in got.iter() {
            if let Some(prev) = last.insert(*k, *i) {
                assert!(prev < *i, "key {k}: {i} after {prev}");
            }
        }
        let slow = p
            .components()
            .into_iter()
            .find(|c| c.name == "slow")
            .unwrap();
        assert_eq!((slow.stats.received, slow.stats.sent), (5000, 5000));
    }
}

#[cfg(test)]
mod panics {
    use super::*;
    use crate::event::{AckBatch, Record};
    use crate::transform::map;
    use vrl::value::Value;

    /// Sends three events of one read and waits for their acknowledgement.
    struct Three(Arc<parking_lot::Mutex<Option<bool>>>);

    impl Source for Three {
        fn run(&self, ctx: SourceContext) -> BoxFuture<'static, Result<(), ComponentError>> {
            let done = self.0.clone();
            Box::pin(async move {
                let ack = AckBatch::new();
                let events = (0..3)
                    .map(|i| {
                        let record = Record {
                            value: Some(bytes::Bytes::from(format!("raw{i}"))),
                            ..Record::default()
                        };
                        Event::new(record, Value::Integer(i), ack.share())
                    })
                    .collect();
                ctx.out.send(events).await;
                let settled = ack.settled().await;
                *done.lock() = Some(settled);
                // As a log's source does: what was not acknowledged is read again, by the
                // next run.
                if settled {
                    Ok(())
                } else {
                    Err(ComponentError("a read was not acknowledged".into()))
                }
            })
        }
    }

    /// A record value and its `weir.error` header.
    type Arrival = (String, Option<String>);

    /// What reached a sink.
    struct Seen(Arc<parking_lot::Mutex<Vec<Arrival>>>);

    impl Sink for Seen {
        fn run(&self, ctx: SinkContext) -> BoxFuture<'static, Result<(), ComponentError>> {
            let seen = self.0.clone();
            Box::pin(async move {
                while let Some(batch) = ctx.next().await {
                    for e in batch {
                        let v =
                            String::from_utf8_lossy(e.record.value.as_deref().unwrap_or_default())
                                .into_owned();
                        let err = e
                            .record
                            .header(crate::edge::HEADER_ERROR)
                            .map(|h| String::from_utf8_lossy(h).into_owned());
                        seen.lock().push((v, err));
                        e.ack();
                    }
                }
                Ok(())
            })
        }
    }

    /// A transform that skips per-event panic isolation (as the built-in ones do) and
    /// panics on the event whose value is 1.
    struct Brittle {
        chainable: bool,
    }

    impl Transform for Brittle {
        fn process(&mut self, event: Event, out: &mut Outputs) {
            assert!(event.value != Value::Integer(1), "brittle on one");
            out.emit(event);
        }

        fn isolate_panics(&self) -> bool {
            false
        }

        fn chainable(&self) -> bool {
            self.chainable
        }
    }

    /// A poison event in a transform that runs without per-event isolation, on its own task
    /// or chained onto its source's: the first run fails and restarts, and the event, read
    /// again, goes to the dead-letter output alone instead of failing every run after.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_poison_event_fails_one_run_then_goes_to_the_dead_letter_output() {
        for chainable in [false, true] {
            let done = Arc::new(parking_lot::Mutex::new(None));
            let out = Arc::new(parking_lot::Mutex::new(Vec::new()));
            let dead = Arc::new(parking_lot::Mutex::new(Vec::new()));
            let p = Builder::new("p")
                .source("in", Three(done.clone()))
                .transform("brittle", &["in"], move || Brittle { chainable })
                .sink("out", &["brittle"], Seen(out.clone()))
                .dead_letter(Seen(dead.clone()))
                .build()
                .unwrap();
            tokio::time::timeout(Duration::from_secs(30), p.run(CancellationToken::new()))
                .await
                .expect("the pipeline finishes instead of failing forever");
            assert_eq!(*done.lock(), Some(true), "chainable {chainable}");
            assert_eq!(p.status().restarts, 1, "chainable {chainable}");
            let out = out.lock();
            assert_eq!(
                out.iter().map(|(v, _)| v.as_str()).collect::<Vec<_>>(),
                ["raw0", "raw2"],
                "chainable {chainable}"
            );
            let dead = dead.lock();
            assert_eq!(dead.len(), 1, "chainable {chainable}: {dead:?}");
            assert_eq!(dead[0].0, "raw1");
            assert!(
                dead[0]
                    .1
                    .as_deref()
                    .is_some_and(|e| e.contains("panicked: brittle on one")),
                "{dead:?}"
            );
        }
    }

    /// A transform that panics on one event: that event goes to the dead-letter output with
    /// the panic's message, the others go on, the pipeline keeps running, and the read is
    /// acknowledged as a whole.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panic_costs_one_event_to_the_dead_letter_output() {
        let done = Arc::new(parking_lot::Mutex::new(None));
        let out = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let dead = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let p = Builder::new("p")
            .source("in", Three(done.clone()))
            .transform("boom", &["in"], || {
                map(|e| {
                    if e.value == Value::Integer(1) {
                        panic!("boom on one");
                    }
                    Ok(())
                })
            })
            .sink("out", &["boom"], Seen(out.clone()))
            .dead_letter(Seen(dead.clone()))
            .build()
            .unwrap();
        tokio::time::timeout(Duration::from_secs(30), p.run(CancellationToken::new()))
            .await
            .unwrap();
        assert_eq!(*done.lock(), Some(true), "every event acknowledged");
        let out = out.lock();
        assert_eq!(
            out.iter().map(|(v, _)| v.as_str()).collect::<Vec<_>>(),
            ["raw0", "raw2"]
        );
        let dead = dead.lock();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].0, "raw1");
        assert!(
            dead[0]
                .1
                .as_deref()
                .unwrap()
                .contains("panicked: boom on one"),
            "{dead:?}"
        );
        let boom = p
            .components()
            .into_iter()
            .find(|c| c.name == "boom")
            .unwrap();
        assert_eq!((boom.stats.sent, boom.stats.errors), (2, 1));
    }
}
