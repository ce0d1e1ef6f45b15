//! The broker: topics, partitions, produce, fetch, offsets, groups, maintenance.
//!
//! All methods are async and never block the runtime: disk reads and appends that may wait
//! (a roll, a sync) run on the blocking pool (`spawn_blocking`); appends that go no further
//! than the page cache run on the calling thread (see `produce_start`), and reads the hot tail
//! can answer run inline.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;
use weir_batch::Ring;
use weir_log::{Log, LogError, ReadResult};

use crate::error::{BrokerError, Result};
use crate::group::{
    AssignmentStrategy, GroupCoordinator, GroupDescription, GroupProtocol, JoinResult,
};
use crate::offsets::OffsetStore;
use crate::topic::{
    self, PartitionInfo, StoredTopic, TimestampType, TopicConfig, TopicId, TopicInfo,
};

/// Broker-wide settings. Every default is documented on its field.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Where topics, offsets and metadata live. Default `./weir-data`.
    pub data_dir: PathBuf,
    /// Configuration of topics created without one (and auto-created topics).
    pub default_topic: TopicConfig,
    /// Create a topic with the default configuration when a producer writes to it.
    /// Default false.
    pub auto_create_topics: bool,
    /// In-memory tail per partition. Default 8 MiB.
    pub hot_tail_bytes: usize,
    /// In-memory tails of all partitions together: past `hot_tail_total_bytes /
    /// hot_tail_bytes` partitions, each keeps its share of this. Default 1 GiB.
    pub hot_tail_total_bytes: usize,
    /// Disk space each partition reserves ahead of its writes (see
    /// [`weir_log::LogConfig::preallocate_bytes`]). Default 8 MiB; 0 reserves nothing.
    pub preallocate_bytes: u64,
    /// Smallest and largest session timeout a group member may ask for. Default 1 s and 5 min.
    pub min_session: Duration,
    pub max_session: Duration,
    /// How often retention runs. Default 60 s.
    pub retention_check: Duration,
    /// How often compacted topics are looked at to see whether a compaction pass is due
    /// (their `min_cleanable_dirty_ratio` and `max_compaction_lag_ms`). Default 15 s.
    pub compaction_check: Duration,
    /// The compaction passes' disk I/O, read and write together, in bytes per second (0: no
    /// limit), so that produce latency does not suffer from them. Default 16 MiB/s (a 1 GB
    /// partition's first pass, which reads it twice, takes about two minutes).
    pub compaction_bytes_per_second: u64,
    /// Memory for a pass's map of keys (32 bytes per distinct key among the records written
    /// since the last pass; with more keys, a pass compacts the part that fits and the next
    /// one goes on). Default 64 MiB (about two million keys).
    pub compaction_key_map_bytes: usize,
    /// Most keys a partition of a compacted topic indexes for lookups by key (about 17 bytes
    /// a key; past it, lookups on that partition are refused). Default 1,048,576.
    pub key_index_max_keys: usize,
    /// Most partitions across all topics. Each holds one open file per segment, and a process
    /// may hold only so many (`ulimit -n`, shared with connections). Default 10,000.
    pub max_partitions: u32,
    /// Per-client quotas. Default: none.
    pub quotas: crate::flow::QuotaConfig,
    /// Bytes of produce data held at once across all connections; when used up, front doors
    /// stop reading sockets. Default 256 MiB.
    pub produce_memory_bytes: u64,
    /// Most connections from one address across front doors (0: no cap). Default 0.
    pub max_connections_per_ip: usize,
    /// Most new connections per second from one address (0: no limit). Default 0.
    pub connection_rate_per_ip: u32,
    /// Where every file of the broker is read and written: the logs, committed offsets,
    /// `topics.json` and the topic directories. Default: the real file system
    /// ([`weir_log::FileStorage`]); tests give [`weir_log::MemStorage`] to crash the broker at
    /// any I/O step or fill its disk.
    pub storage: Arc<dyn weir_log::Storage>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("weir-data"),
            default_topic: TopicConfig::default(),
            auto_create_topics: false,
            hot_tail_bytes: 8 << 20,
            hot_tail_total_bytes: 1 << 30,
            preallocate_bytes: 8 << 20,
            min_session: Duration::from_secs(1),
            max_session: Duration::from_secs(300),
            retention_check: Duration::from_secs(60),
            compaction_check: Duration::from_secs(15),
            compaction_bytes_per_second: 16 << 20,
            compaction_key_map_bytes: 64 << 20,
            key_index_max_keys: 1 << 20,
            max_partitions: 10_000,
            quotas: crate::flow::QuotaConfig::default(),
            produce_memory_bytes: 256 << 20,
            max_connections_per_ip: 0,
            connection_rate_per_ip: 0,
            storage: Arc::new(weir_log::FileStorage),
        }
    }
}

#[derive(Debug)]
struct Partition {
    log: Arc<Log>,
    /// The high watermark, for long-polling fetches and push subscriptions.
    hwm: watch::Sender<u64>,
    /// The read-ahead of a reader going through the log from disk in order.
    ahead: Mutex<AheadState>,
    /// Compacted topics: the latest offset of each key, built on the first lookup by key.
    keys: Mutex<crate::keys::KeyIndex>,
    /// The topic's `deleted` flag.
    topic_deleted: Arc<AtomicBool>,
    /// Set once idempotent producers' states were rebuilt from the log (at once for a
    /// partition created by this process; see `Broker::restore_producers`).
    producers_restored: tokio::sync::OnceCell<()>,
}

/// A reader that catches up from disk one fetch at a time (a Kafka consumer, a native fetch
/// loop, a WebSocket feed replaying) otherwise waits out every disk read in turn, and the
/// disk sits idle while the client handles what it got. So when a disk read starts where the
/// partition's previous one ended, the broker starts the next one, of the same size, the
/// moment it answers; the next fetch finds it done or joins it. At most one per partition,
/// bounded in bytes broker-wide ([`READ_AHEAD_BUDGET_BYTES`]), dropped if not claimed
/// within [`READ_AHEAD_TTL`]. Readers that interleave on one partition start none (no read
/// begins where the last one ended).
#[derive(Debug, Default)]
struct AheadState {
    /// Where the partition's last disk read ended.
    last_end: Option<u64>,
    next: Option<ReadAhead>,
}

#[derive(Debug)]
struct ReadAhead {
    offset: u64,
    max_bytes: usize,
    /// Bytes of budget held: the most it may read.
    budgeted: usize,
    /// The log's truncation count when the read began: if it moved, the offsets read may
    /// have been written again since, and the read is not used. (The log drops only data it
    /// never made visible, so this is a second line of defence.)
    truncations: u64,
    result: Arc<tokio::sync::OnceCell<ReadResult>>,
    _budget: tokio::sync::OwnedSemaphorePermit,
    /// Dropped with this entry (claimed, replaced, let go): ends the task's wait.
    _claimed: tokio::sync::oneshot::Sender<()>,
}

/// What a reader at `offset` asking for `max_bytes` may take of a read-ahead's result `r`:
/// nothing if the log was truncated since the read began or retention has passed `offset`
/// (a fresh read then tells the reader what it should see); otherwise the whole batches
/// within `max_bytes` (at least one), with the log's current high watermark and start.
fn claim(
    log: &Log,
    ahead: &ReadAhead,
    offset: u64,
    max_bytes: usize,
    r: &ReadResult,
) -> Option<ReadResult> {
    if log.truncations() != ahead.truncations || offset < log.log_start_offset() {
        return None;
    }
    let mut out = ReadResult {
        chunks: Vec::with_capacity(r.chunks.len()),
        high_watermark: r.high_watermark.max(log.high_watermark()),
        log_start_offset: log.log_start_offset(),
        from_memory: r.from_memory,
    };
    let mut taken = 0usize;
    'chunks: for chunk in &r.chunks {
        let mut at = 0;
        while at < chunk.len() {
            let len = weir_batch::peek(&chunk[at..]).ok()?.total_len();
            if taken > 0 && taken + len > max_bytes {
                if at > 0 {
                    out.chunks.push(chunk.slice(..at));
                }
                break 'chunks;
            }
            taken += len;
            at += len;
        }
        out.chunks.push(chunk.clone());
    }
    Some(out)
}

/// Bytes that started read-aheads may hold at once, across all partitions.
const READ_AHEAD_BUDGET_BYTES: usize = 64 << 20;

/// Partitions that read the end of their log at once to rebuild their idempotent producers'
/// states after a restart (each reads up to `producers::RESTORE_SCAN_BYTES`).
const RESTORES_AT_ONCE: usize = 2;
/// Budget charged at least per read-ahead: bounds how many run at once to
/// [`READ_AHEAD_BUDGET_BYTES`] / this.
const READ_AHEAD_MIN_CHARGE: usize = 64 << 10;
/// Reads larger than this (asked for, or as the last one came back) get no read-ahead.
const READ_AHEAD_MAX_BYTES: usize = 8 << 20;
/// How long a finished read-ahead waits for its reader before its memory is let go.
const READ_AHEAD_TTL: Duration = Duration::from_secs(2);

/// A read-ahead's read, on the blocking pool: an error if its first batch is over `cap`.
async fn read_budgeted(
    log: Arc<Log>,
    offset: u64,
    max_bytes: usize,
    cap: usize,
) -> Result<ReadResult> {
    blocking(move || {
        log.read_within(offset, max_bytes, cap)?
            .ok_or_else(|| BrokerError::Internal("read-ahead over budget".into()))
    })
    .await
}

/// The offset after the last whole batch in `chunks`.
fn end_of(chunks: &[Bytes]) -> Option<u64> {
    weir_batch::end_offset(chunks.iter().rev().find(|c| !c.is_empty())?)
}

#[derive(Debug)]
struct Topic {
    name: String,
    id: TopicId,
    config: TopicConfig,
    ring: Ring,
    partitions: Vec<Arc<Partition>>,
    next_keyless: AtomicU32,
    /// Set when the topic is deleted; each partition holds it too.
    deleted: Arc<AtomicBool>,
    /// Distinguishes a topic from an earlier one of the same name.
    incarnation: u64,
}

impl Topic {
    /// The same topic (name, id, incarnation, deleted flag, round-robin position) with
    /// `config` and `partitions`: a topic altered or grown replaces its entry with this.
    fn rebuilt(&self, config: TopicConfig, partitions: Vec<Arc<Partition>>) -> Topic {
        Topic {
            name: self.name.clone(),
            id: self.id,
            ring: Ring::new(partitions.len() as u32),
            config,
            partitions,
            next_keyless: AtomicU32::new(self.next_keyless.load(Ordering::Relaxed)),
            deleted: self.deleted.clone(),
            incarnation: self.incarnation,
        }
    }
}

/// Uncompressed batches up to this size are checked and written on the calling task's own
/// thread when the write goes no further than the page cache (see `Log::append_start_in_place`);
/// larger ones the same way inside `block_in_place`.
const IN_PLACE_APPEND_BYTES: usize = 16 * 1024;

static INCARNATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Threads that open or close partition logs at once (creation, growth, recovery at start,
/// shutdown). Opening or closing a log is mostly waiting for the disk (syncs of data, indexes
/// and the checkpoint), and a disk serves syncs that arrive together faster than one after
/// another, so this is sized for the disk, not for the cores.
const IO_THREADS: usize = 32;

/// Runs `open` over `items` on up to [`IO_THREADS`] threads and returns the results in the
/// order of `items`, or the first error (after which no new item starts; what was opened is
/// dropped).
fn open_in_parallel<T: Sync, R: Send>(
    items: &[T],
    open: impl Fn(&T) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    in_parallel(items, open, Result::is_err)
        .into_iter()
        .collect()
}

/// Runs `run` over `items` on up to [`IO_THREADS`] scoped threads and returns the results in
/// the order of `items`; once a result satisfies `stop`, no new item starts. Written here
/// rather than taken from a thread-pool crate: rayon's pool is sized to the cores, and this
/// is a one-off burst of blocking I/O.
fn in_parallel<T: Sync, R: Send>(
    items: &[T],
    run: impl Fn(&T) -> R + Sync,
    stop: impl Fn(&R) -> bool + Sync,
) -> Vec<R> {
    let threads = IO_THREADS.min(items.len());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let stopped = AtomicBool::new(false);
    let work = || {
        let mut out = Vec::new();
        while !stopped.load(Ordering::Relaxed) {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(item) = items.get(i) else { break };
            let r = run(item);
            if stop(&r) {
                stopped.store(true, Ordering::Relaxed);
            }
            out.push((i, r));
        }
        out
    };
    if threads <= 1 {
        return work().into_iter().map(|(_, r)| r).collect();
    }
    let mut done: Vec<(usize, R)> = std::thread::scope(|scope| {
        // Helpers the system will not give (a thread limit) are done without: this thread
        // works too, so every item is run whatever number started.
        let helpers: Vec<_> = (1..threads)
            .filter_map(|_| std::thread::Builder::new().spawn_scoped(scope, work).ok())
            .collect();
        let mut out = work();
        for h in helpers {
            match h.join() {
                Ok(o) => out.extend(o),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        out
    });
    done.sort_unstable_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, r)| r).collect()
}

/// Where a fetch starts when asked by time or position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetSpec {
    Earliest,
    Latest,
    Timestamp(i64),
}

/// What a produce did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProduceResult {
    pub partition: u32,
    pub base_offset: u64,
    pub last_offset: u64,
    /// The broker's stamp (ms since the epoch) on a LogAppendTime topic; `None` otherwise.
    pub log_append_time: Option<i64>,
}

/// A batch written by [`Broker::produce_start`], awaiting durability.
#[derive(Debug)]
#[must_use = "a produce is acknowledged only after wait"]
pub struct PendingProduce {
    part: Arc<Partition>,
    partition: u32,
    appended: weir_log::Appended,
    started: Instant,
    log_append_time: Option<i64>,
    /// For the produce observer.
    trace: Option<Box<TraceStart>>,
}

/// What a traced produce remembers until it is acknowledged: topic, wall-clock start, the
/// producer's `traceparent`, and the observer to tell.
type TraceStart = (
    Arc<str>,
    std::time::SystemTime,
    Option<String>,
    ProduceObserver,
);

/// One acknowledged produce, as a [`ProduceObserver`] sees it (for tracing).
#[derive(Debug, Clone)]
pub struct ProduceEvent<'a> {
    pub topic: &'a str,
    pub partition: u32,
    pub base_offset: u64,
    pub last_offset: u64,
    pub started: std::time::SystemTime,
    pub finished: std::time::SystemTime,
    /// The W3C `traceparent` header of the batch's first record, if it has one (uncompressed
    /// batches only: the broker does not decompress to look).
    pub traceparent: Option<String>,
}

/// Called after every acknowledged produce once installed with
/// [`Broker::set_produce_observer`]; the binary turns these into OpenTelemetry spans.
#[derive(Clone)]
pub struct ProduceObserver(pub Arc<dyn Fn(&ProduceEvent<'_>) + Send + Sync>);

impl std::fmt::Debug for ProduceObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProduceObserver")
    }
}

/// The `traceparent` header of a batch's first record.
fn traceparent_of(first: &weir_batch::Record<'_>) -> Option<String> {
    first
        .headers
        .iter()
        .find(|h| h.key.eq_ignore_ascii_case(b"traceparent"))
        .and_then(|h| h.value)
        .filter(|v| v.len() <= 128)
        .and_then(|v| std::str::from_utf8(v).ok())
        .map(str::to_string)
}

impl PendingProduce {
    /// The offset the batch was written at.
    pub fn base_offset(&self) -> u64 {
        self.appended.info().base_offset
    }

    /// The log's count of dropped writes when this batch was written (see
    /// [`Broker::produce_start_unless_truncated`]).
    pub fn truncations(&self) -> u64 {
        self.appended.truncations()
    }

    /// Whether the topic the batch was written to has been deleted since.
    pub fn topic_deleted(&self) -> bool {
        self.part.topic_deleted.load(Ordering::Acquire)
    }

    /// Waits until the batch is as durable as the topic's policy promises.
    pub async fn wait(self) -> Result<ProduceResult> {
        self.finish(false).await
    }

    /// [`PendingProduce::wait`] for a caller with nothing else to do meanwhile (a connection
    /// with no other request under way or buffered: a client sending one message at a time).
    /// A sync it must wait for runs on this thread, inside `block_in_place`, instead of on
    /// the blocking pool: no hand-off to another thread and back, which on this machine is
    /// most of the gap between a durable produce and the disk's own write + fdatasync. A
    /// caller with requests pipelined should use `wait`, so that the next ones are written
    /// while this one syncs and share the next sync.
    pub async fn wait_alone(self) -> Result<ProduceResult> {
        let inline = tokio::runtime::Handle::current().runtime_flavor()
            == tokio::runtime::RuntimeFlavor::MultiThread;
        self.finish(inline).await
    }

    async fn finish(self, inline: bool) -> Result<ProduceResult> {
        let PendingProduce {
            part,
            partition,
            appended,
            started,
            log_append_time,
            trace,
        } = self;
        let info = if appended.needs_wait() {
            let log = part.log.clone();
            // While another produce (or a roll, or a checkpoint) syncs, wait for it without
            // holding a thread: thousands of connections may each have one batch waiting on
            // the same partition. Only the one that leads the next sync takes a thread.
            let info = match durable_or_lead(&log, appended).await {
                Ok(r) => r?,
                Err(claim) if inline => tokio::task::block_in_place(|| log.lead_wait(claim))?,
                Err(claim) => {
                    blocking(move || log.lead_wait(claim).map_err(BrokerError::from)).await?
                }
            };
            part.hwm.send_replace(part.log.high_watermark());
            info
        } else {
            appended.info()
        };
        metrics::histogram!("weir_broker_produce_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        if let Some(t) = trace {
            let (topic, wall_start, traceparent, observer) = *t;
            (observer.0)(&ProduceEvent {
                topic: &topic,
                partition,
                base_offset: info.base_offset,
                last_offset: info.last_offset,
                started: wall_start,
                finished: std::time::SystemTime::now(),
                traceparent,
            });
        }
        Ok(ProduceResult {
            partition,
            base_offset: info.base_offset,
            last_offset: info.last_offset,
            log_append_time,
        })
    }
}

/// What a fetch returns: whole record batches.
#[derive(Debug, Clone, Default)]
pub struct FetchResult {
    pub chunks: Vec<Bytes>,
    pub high_watermark: u64,
    pub log_start_offset: u64,
}

impl From<ReadResult> for FetchResult {
    fn from(r: ReadResult) -> Self {
        FetchResult {
            chunks: r.chunks,
            high_watermark: r.high_watermark,
            log_start_offset: r.log_start_offset,
        }
    }
}

impl FetchResult {
    pub fn len(&self) -> usize {
        self.chunks.iter().map(Bytes::len).sum()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Lag of one partition for one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: u32,
    pub committed: Option<u64>,
    pub high_watermark: u64,
    pub lag: u64,
}

#[derive(Debug)]
struct Inner {
    config: BrokerConfig,
    topics: RwLock<HashMap<String, Arc<Topic>>>,
    /// Topic ids to names (Kafka clients name topics by id): kept with `topics`, under the
    /// admin lock.
    topic_ids: RwLock<HashMap<TopicId, String>>,
    /// Serializes topic creation and deletion (metadata file writes).
    admin: tokio::sync::Mutex<()>,
    groups: GroupCoordinator,
    offsets: OffsetStore,
    /// Held by the one offset commit whose write goes to the blocking pool (a segment roll or
    /// a reservation holds the commit log's writer for a while): the others wait for it as
    /// tasks, not each on a thread of its own.
    commit_off_thread: tokio::sync::Mutex<()>,
    quotas: crate::flow::Quotas,
    memory: crate::flow::MemoryBudget,
    admission: Arc<crate::flow::Admission>,
    /// What each front door moves, for the console.
    activity: crate::activity::Activity,
    observer: std::sync::OnceLock<ProduceObserver>,
    /// Who clients must prove to be, when the server requires authentication (set once,
    /// before the doors open).
    auth: std::sync::OnceLock<Arc<weir_auth::Auth>>,
    closed: AtomicBool,
    /// Shutdown began: long polls answer at once with what they have.
    stopping: AtomicBool,
    deleted_dirs: Mutex<u64>,
    /// Other protocols' group coordinators (the Kafka door's): their clocks run with the
    /// native groups' expiry, and they describe their groups. Weak: a coordinator gone (its
    /// listener stopped) is dropped.
    coordinators: Mutex<Vec<std::sync::Weak<dyn crate::group::ForeignCoordinator>>>,
    /// Compressed batches decompressed at once, to check them on produce or by the front
    /// doors that decode records for their clients (each may decompress to 64 MiB, with a
    /// zstd window of up to 128 MiB): bounds that memory whatever the number of producers and
    /// readers.
    decompressions: tokio::sync::Semaphore,
    /// KiB that read-aheads may hold (see [`AheadState`]).
    read_ahead_budget: Arc<tokio::sync::Semaphore>,
    /// Read-aheads started, and disk reads they answered.
    read_aheads: AtomicU64,
    read_ahead_hits: AtomicU64,
    /// Idempotent producers' sequence state, shared by every door.
    pub(crate) producers: Arc<crate::producers::Producers>,
    /// Turns for partitions rebuilding their producers' states (`Broker::restore_producers`).
    restores: tokio::sync::Semaphore,
}

/// Compressed batches decompressed at once (see [`Broker::decompression_permit`]).
const CONCURRENT_DECOMPRESSIONS: usize = 2;

/// The broker core. Cheap to clone; all clones share one broker.
#[derive(Debug, Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

fn topic_dir(data: &Path, name: &str) -> PathBuf {
    data.join("topics").join(name)
}

/// A fetch's answer, counted.
fn fetched(r: ReadResult) -> FetchResult {
    let f = FetchResult::from(r);
    metrics::counter!("weir_broker_fetch_reads_total").increment(1);
    metrics::counter!("weir_broker_fetch_bytes_total")
        .increment(f.chunks.iter().map(|c| c.len() as u64).sum());
    f
}

/// A copy of `batch` stamped with the broker's clock (LogAppendTime), CRC recomputed. The
/// batch is validated first, so a corrupt one is refused rather than resealed.
fn stamp_log_append_time(batch: Bytes) -> Result<(Bytes, i64)> {
    weir_batch::validate(&batch).map_err(|e| BrokerError::Log(LogError::InvalidBatch(e)))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let mut buf = batch.to_vec();
    weir_batch::set_log_append_time(&mut buf, now);
    Ok((Bytes::from(buf), now))
}

/// The topic a grave directory (`NAME.SEQ.deleted`) held.
fn grave_topic(dir: &str) -> Option<&str> {
    let rest = dir.strip_suffix(".deleted")?;
    let (name, seq) = rest.rsplit_once('.')?;
    seq.parse::<u64>().ok().map(|_| name)
}

/// Awaits `appended`'s durability while another caller syncs `log`; `Err` with the
/// leadership of the next sync when nobody does, for [`Log::lead_wait`] (see
/// [`Log::poll_durable`]).
async fn durable_or_lead(
    log: &Log,
    appended: weir_log::Appended,
) -> std::result::Result<weir_log::Result<weir_log::AppendInfo>, weir_log::Claim> {
    let mut held = Some(appended);
    std::future::poll_fn(|cx| {
        let Some(appended) = held.take() else {
            // Not reached: the future is not polled after it is ready.
            return std::task::Poll::Pending;
        };
        match log.poll_durable(appended, cx.waker()) {
            weir_log::Durable::Done(r) => std::task::Poll::Ready(Ok(r)),
            weir_log::Durable::Lead(claim) => std::task::Poll::Ready(Err(claim)),
            weir_log::Durable::Pending(a) => {
                held = Some(a);
                std::task::Poll::Pending
            }
        }
    })
    .await
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BrokerError::Internal(format!("background task failed: {e}")))?
}

impl Broker {
    /// Opens the broker in `config.data_dir`: loads topic metadata, opens (and if needed
    /// recovers) every partition's log and the committed offsets. Blocks on disk I/O.
    pub fn open(config: BrokerConfig) -> Result<Broker> {
        config.default_topic.validate()?;
        let data = &config.data_dir;
        let storage = &config.storage;
        let topics_dir = data.join("topics");
        let io = |op: &'static str, e: std::io::Error| BrokerError::storage(op, &topics_dir, e);
        storage
            .create_dir_all(&topics_dir)
            .map_err(|e| io("creating", e))?;
        let (mut meta, rewrite) = topic::load_meta(storage.as_ref(), data)?;
        // Finish deletions a crash interrupted. A deletion moves the topic's directory aside
        // (`NAME.SEQ.deleted`), empties it, updates the metadata, then removes it: a topic
        // still listed whose directory is gone while its grave remains was deleted, and its
        // metadata is brought up to date before the grave goes.
        let subdirs = storage
            .list_subdirs(&topics_dir)
            .map_err(|e| io("listing", e))?;
        let mut dropped = rewrite;
        for grave in subdirs.iter().filter(|d| d.ends_with(".deleted")) {
            if let Some(name) = grave_topic(grave)
                && meta.contains_key(name)
                && !subdirs.iter().any(|d| d == name)
            {
                tracing::info!(topic = name, "finishing a deletion cut short by a crash");
                meta.remove(name);
                dropped = true;
            }
        }
        if dropped {
            topic::store_meta(storage.as_ref(), data, &meta)?;
        }
        for grave in subdirs.iter().filter(|d| d.ends_with(".deleted")) {
            let _ = storage.remove_dir_all(&topics_dir.join(grave));
        }
        // Directories of topics the metadata does not list (a creation cut short by a crash)
        // must not resurface in a topic created later under the same name.
        for dir in subdirs.iter().filter(|d| !d.ends_with(".deleted")) {
            if !meta.contains_key(dir.as_str()) {
                tracing::warn!(dir = %topics_dir.join(dir).display(), "removing the data of a topic the metadata does not list");
                let _ = storage.remove_dir_all(&topics_dir.join(dir));
            }
        }
        let _ = storage.sync_dir(&topics_dir);
        // Every partition of every topic at once: recovery is mostly waiting for the disk.
        let stored: Vec<(String, StoredTopic, weir_log::LogConfig, Arc<AtomicBool>)> = meta
            .into_iter()
            .map(|(name, s)| {
                let log_config = s
                    .config
                    .log_config(config.hot_tail_bytes, config.preallocate_bytes);
                (name, s, log_config, Arc::new(AtomicBool::new(false)))
            })
            .collect();
        let jobs: Vec<(usize, u32)> = stored
            .iter()
            .enumerate()
            .flat_map(|(i, (_, s, _, _))| (0..s.config.partitions).map(move |p| (i, p)))
            .collect();
        let mut opened = open_in_parallel(&jobs, |&(i, p)| {
            let (name, _, log_config, deleted) = &stored[i];
            Self::open_partition(&config, name, p, log_config, deleted, true)
        })?
        .into_iter();
        let mut topics = HashMap::new();
        for (name, s, _, deleted) in stored {
            let partitions: Vec<_> = opened.by_ref().take(s.config.partitions as usize).collect();
            let t = Self::assemble_topic(&name, s.config, s.id, deleted, partitions);
            // Partitions the metadata does not list: a growth cut short by a crash before its
            // metadata was written. They were never readable; their files go.
            let dir = topic_dir(data, &name);
            for extra in storage.list_subdirs(&dir).unwrap_or_default() {
                if extra
                    .parse::<usize>()
                    .is_ok_and(|p| p >= t.partitions.len())
                {
                    tracing::warn!(
                        topic = name,
                        partition = extra,
                        "removing a partition the metadata does not list"
                    );
                    let _ = storage.remove_dir_all(&dir.join(&extra));
                }
            }
            topics.insert(name, Arc::new(t));
        }
        let offsets = OffsetStore::open_with_storage(storage.clone(), &data.join("offsets"))?;
        let logs = || {
            topics
                .values()
                .flat_map(|t| &t.partitions)
                .map(|p| p.log.recovery_report())
        };
        tracing::info!(
            data_dir = %data.display(),
            topics = topics.len(),
            partitions = logs().count(),
            recovered_after_unclean_stop = logs().filter(|r| !r.clean_shutdown).count(),
            "broker opened"
        );
        let broker = Broker {
            inner: Arc::new(Inner {
                groups: GroupCoordinator::new(config.min_session, config.max_session),
                quotas: crate::flow::Quotas::new(config.quotas.clone()),
                memory: crate::flow::MemoryBudget::new(config.produce_memory_bytes),
                activity: crate::activity::Activity::default(),
                observer: std::sync::OnceLock::new(),
                auth: std::sync::OnceLock::new(),
                admission: Arc::new(crate::flow::Admission::new(
                    config.max_connections_per_ip,
                    config.connection_rate_per_ip,
                )),
                config,
                topic_ids: RwLock::new(topics.values().map(|t| (t.id, t.name.clone())).collect()),
                topics: RwLock::new(topics),
                admin: tokio::sync::Mutex::new(()),
                offsets,
                commit_off_thread: tokio::sync::Mutex::new(()),
                closed: AtomicBool::new(false),
                stopping: AtomicBool::new(false),
                deleted_dirs: Mutex::new(0),
                coordinators: Mutex::new(Vec::new()),
                decompressions: tokio::sync::Semaphore::new(CONCURRENT_DECOMPRESSIONS),
                read_ahead_budget: Arc::new(tokio::sync::Semaphore::new(
                    READ_AHEAD_BUDGET_BYTES >> 10,
                )),
                read_aheads: AtomicU64::new(0),
                read_ahead_hits: AtomicU64::new(0),
                producers: Arc::new(crate::producers::Producers::new()),
                restores: tokio::sync::Semaphore::new(RESTORES_AT_ONCE),
            }),
        };
        broker.share_hot_tail();
        Ok(broker)
    }

    /// Gives every partition its share of the memory for hot tails: `hot_tail_bytes` each,
    /// or less once the partitions together would pass `hot_tail_total_bytes` (then the
    /// total over the partitions). Run whenever the number of partitions changes.
    fn share_hot_tail(&self) {
        let topics: Vec<Arc<Topic>> = self.inner.topics.read().values().cloned().collect();
        let count: usize = topics.iter().map(|t| t.partitions.len()).sum();
        let cfg = &self.inner.config;
        let share = cfg
            .hot_tail_bytes
            .min(cfg.hot_tail_total_bytes / count.max(1));
        for t in &topics {
            for p in &t.partitions {
                p.log.set_hot_tail_cap(share);
            }
        }
    }

    /// Bytes the partitions' hot tails hold now, in all.
    pub fn hot_tail_bytes(&self) -> usize {
        let topics: Vec<Arc<Topic>> = self.inner.topics.read().values().cloned().collect();
        topics
            .iter()
            .flat_map(|t| &t.partitions)
            .map(|p| p.log.hot_tail_bytes())
            .sum()
    }

    /// Opens (or creates) partition `p` of topic `name`; `from_disk` when it existed before
    /// this process, so that its idempotent producers' states are rebuilt before their next
    /// batch.
    fn open_partition(
        config: &BrokerConfig,
        name: &str,
        p: u32,
        log_config: &weir_log::LogConfig,
        deleted: &Arc<AtomicBool>,
        from_disk: bool,
    ) -> Result<Arc<Partition>> {
        let dir = topic_dir(&config.data_dir, name).join(p.to_string());
        let log = Log::open_with(config.storage.clone(), &dir, log_config.clone())?;
        let (hwm, _) = watch::channel(log.high_watermark());
        Ok(Arc::new(Partition {
            log: Arc::new(log),
            hwm,
            ahead: Mutex::new(AheadState::default()),
            keys: Mutex::new(crate::keys::KeyIndex::default()),
            producers_restored: tokio::sync::OnceCell::new_with((!from_disk).then_some(())),
            topic_deleted: deleted.clone(),
        }))
    }

    fn open_topic(
        config: &BrokerConfig,
        name: &str,
        cfg: TopicConfig,
        id: TopicId,
        from_disk: bool,
    ) -> Result<Topic> {
        let log_config = cfg.log_config(config.hot_tail_bytes, config.preallocate_bytes);
        let deleted = Arc::new(AtomicBool::new(false));
        let numbers: Vec<u32> = (0..cfg.partitions).collect();
        let partitions = open_in_parallel(&numbers, |&p| {
            Self::open_partition(config, name, p, &log_config, &deleted, from_disk)
        })?;
        Ok(Self::assemble_topic(name, cfg, id, deleted, partitions))
    }

    fn assemble_topic(
        name: &str,
        cfg: TopicConfig,
        id: TopicId,
        deleted: Arc<AtomicBool>,
        partitions: Vec<Arc<Partition>>,
    ) -> Topic {
        Topic {
            name: name.to_string(),
            id,
            ring: Ring::new(cfg.partitions),
            config: cfg,
            partitions,
            next_keyless: AtomicU32::new(0),
            deleted,
            incarnation: INCARNATIONS.fetch_add(1, Ordering::Relaxed),
        }
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.inner.config
    }

    /// Installs the produce observer (once; later calls are ignored).
    pub fn set_produce_observer(&self, observer: ProduceObserver) {
        let _ = self.inner.observer.set(observer);
    }

    /// Requires every client of every door to authenticate against `auth` (once, before the
    /// doors open; later calls are ignored).
    pub fn set_auth(&self, auth: Arc<weir_auth::Auth>) {
        let _ = self.inner.auth.set(auth);
    }

    /// The authentication clients must pass, if the server requires it.
    pub fn auth(&self) -> Option<&Arc<weir_auth::Auth>> {
        self.inner.auth.get()
    }

    /// Whether a produce to `topic` would create it (it does not exist, and topics are created
    /// on first use): such a produce needs the right to create it too
    /// ([`crate::Access::check_write`]).
    pub fn produce_creates(&self, topic: &str) -> bool {
        self.inner.config.auto_create_topics && self.partition_count(topic).is_none()
    }

    /// What `principal` may do: checked against the access control lists when the server
    /// has them, else everything.
    pub fn access(&self, principal: weir_auth::Principal) -> crate::Access {
        let rules = self.auth().and_then(|a| a.acls()).cloned();
        crate::Access::new(principal, rules)
    }

    /// Per-client quotas, shared by the front doors.
    pub fn quotas(&self) -> &crate::flow::Quotas {
        &self.inner.quotas
    }

    /// The memory budget for produce data in flight, shared by the front doors.
    pub fn memory(&self) -> &crate::flow::MemoryBudget {
        &self.inner.memory
    }

    /// Connection admission per source address, shared by the front doors.
    pub fn admission(&self) -> &Arc<crate::flow::Admission> {
        &self.inner.admission
    }

    /// What each front door moves (the doors count it), for the console.
    pub fn activity(&self) -> &crate::activity::Activity {
        &self.inner.activity
    }

    /// Whether the broker takes requests: open, and no shutdown has begun (for readiness
    /// probes).
    pub fn is_serving(&self) -> bool {
        !self.inner.closed.load(Ordering::Acquire) && !self.inner.stopping.load(Ordering::Acquire)
    }

    fn check_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(BrokerError::ShuttingDown);
        }
        Ok(())
    }

    fn topic(&self, name: &str) -> Result<Arc<Topic>> {
        self.inner
            .topics
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| BrokerError::UnknownTopic(name.to_string()))
    }

    fn partition(&self, topic: &str, partition: u32) -> Result<(Arc<Topic>, Arc<Partition>)> {
        let t = self.topic(topic)?;
        let p = t
            .partitions
            .get(partition as usize)
            .cloned()
            .ok_or_else(|| BrokerError::UnknownPartition {
                topic: topic.to_string(),
                partition,
            })?;
        Ok((t, p))
    }

    /// Rebuilds the idempotent producers' states of a partition opened from disk from the end
    /// of its log, once, before its first idempotent batch (every idempotent batch to the
    /// partition waits for it). The scan runs in a task of its own, so a caller that goes away
    /// meanwhile does not cut it short for the next; at most [`RESTORES_AT_ONCE`] partitions
    /// scan at a time. A log that cannot be read leaves the states empty (logged) and the
    /// produce goes on; the next idempotent batch tries again.
    pub(crate) async fn restore_producers(&self, topic: &str, partition: u32) {
        let Ok((_, part)) = self.partition(topic, partition) else {
            return;
        };
        if part.producers_restored.initialized() {
            return;
        }
        let (broker, topic) = (self.clone(), topic.to_string());
        let task = tokio::spawn(async move {
            let _ = part
                .producers_restored
                .get_or_try_init(|| broker.scan_for_producers(&topic, &part, partition))
                .await;
        });
        let _ = task.await;
    }

    async fn scan_for_producers(
        &self,
        topic: &str,
        part: &Arc<Partition>,
        partition: u32,
    ) -> std::result::Result<(), ()> {
        let _turn = self.inner.restores.acquire().await;
        let (p, producers, name) = (part.clone(), self.producers().clone(), topic.to_string());
        let scan = tokio::task::spawn_blocking(move || {
            let mut found = crate::producers::Restored::default();
            let log = &p.log;
            let cut = log.tail_headers(crate::producers::RESTORE_SCAN_BYTES, |h| found.add(h))?;
            let restored = producers.restore(&name, partition, found, || {
                p.topic_deleted.load(Ordering::Acquire)
            });
            Ok::<_, weir_log::LogError>((restored, cut))
        })
        .await;
        match scan {
            Ok(Ok((Some(producers), cut))) => {
                if cut > 0 {
                    tracing::warn!(
                        topic,
                        partition,
                        segments = cut,
                        "damaged batches at the end of the log: idempotent producers' \
                         sequences restored from the rest of it"
                    );
                }
                tracing::debug!(
                    topic,
                    partition,
                    producers,
                    "idempotent producers' sequences restored from the log"
                );
                Ok(())
            }
            // Deleted meanwhile: nothing to restore, and nothing restored.
            Ok(Ok((None, _))) => Err(()),
            Ok(Err(e)) => {
                tracing::warn!(topic, partition, error = %e,
                    "could not read the end of the log to restore idempotent producers' \
                     sequences; a batch resent across the restart may be written twice");
                Err(())
            }
            Err(e) => {
                tracing::warn!(topic, partition, error = %e,
                    "restoring idempotent producers' sequences failed");
                Err(())
            }
        }
    }

    /// Every topic's configuration, as the metadata file lists them.
    /// What `topics.json` is to hold: every topic, its configuration and id.
    fn stored_topics(&self) -> BTreeMap<String, StoredTopic> {
        self.inner
            .topics
            .read()
            .iter()
            .map(|(k, v)| {
                let stored = StoredTopic {
                    config: v.config.clone(),
                    id: v.id,
                };
                (k.clone(), stored)
            })
            .collect()
    }

    /// The id of topic `name`, if it exists.
    pub fn topic_id(&self, name: &str) -> Option<TopicId> {
        self.inner.topics.read().get(name).map(|t| t.id)
    }

    /// The name of the topic whose id is `id`, if there is one.
    pub fn topic_name_of(&self, id: &TopicId) -> Option<String> {
        self.inner.topic_ids.read().get(id).cloned()
    }

    /// Number of partitions of `topic`, if it exists.
    pub fn partition_count(&self, topic: &str) -> Option<u32> {
        self.inner
            .topics
            .read()
            .get(topic)
            .map(|t| t.partitions.len() as u32)
    }

    /// Creates a topic. Its metadata is durable when this returns.
    pub async fn create_topic(&self, name: &str, config: Option<TopicConfig>) -> Result<TopicInfo> {
        self.check_open()?;
        topic::validate_name(name)?;
        let config = config.unwrap_or_else(|| self.inner.config.default_topic.clone());
        config.validate()?;
        let _admin = self.inner.admin.lock().await;
        if self.inner.topics.read().contains_key(name) {
            return Err(BrokerError::TopicExists(name.to_string()));
        }
        let existing: u32 = self
            .inner
            .topics
            .read()
            .values()
            .map(|t| t.partitions.len() as u32)
            .sum();
        let limit = self.inner.config.max_partitions;
        if existing.saturating_add(config.partitions) > limit {
            return Err(BrokerError::InvalidConfig(format!(
                "{} more partitions would exceed the broker's limit of {limit} ({existing} in use)",
                config.partitions
            )));
        }
        let this = self.clone();
        let name_owned = name.to_string();
        let topic = blocking(move || {
            let cfg = &this.inner.config;
            let id = TopicId::random();
            let topic = Self::open_topic(cfg, &name_owned, config.clone(), id, false)?;
            let mut all = this.stored_topics();
            all.insert(name_owned.clone(), StoredTopic { config, id });
            if let Err(e) = topic::store_meta(cfg.storage.as_ref(), &cfg.data_dir, &all) {
                for p in &topic.partitions {
                    let _ = p.log.close();
                }
                let _ = cfg
                    .storage
                    .remove_dir_all(&topic_dir(&cfg.data_dir, &name_owned));
                return Err(e);
            }
            Ok(topic)
        })
        .await?;
        let topic = Arc::new(topic);
        self.inner
            .topic_ids
            .write()
            .insert(topic.id, name.to_string());
        self.inner
            .topics
            .write()
            .insert(name.to_string(), topic.clone());
        let partitions_of = |t: &str| self.partition_count(t);
        self.inner
            .groups
            .on_partitions_changed(name, &partitions_of);
        self.share_hot_tail();
        tracing::info!(
            topic = name,
            partitions = topic.partitions.len(),
            "topic created"
        );
        Ok(self.info(&topic))
    }

    /// Changes a topic's configuration, durably. Retention, the largest batch and the
    /// timestamp type take effect at once (the next retention pass, the next append);
    /// durability and segment size are fixed once the topic exists, and partitions only grow
    /// ([`Broker::add_partitions`]): a change to them is refused.
    pub async fn alter_topic(&self, name: &str, config: TopicConfig) -> Result<TopicInfo> {
        self.check_open()?;
        config.validate()?;
        let _admin = self.inner.admin.lock().await;
        let old = self.topic(name)?;
        let fixed = |what: &str| {
            Err(BrokerError::InvalidConfig(format!(
                "the {what} of topic {name} is fixed once it is created"
            )))
        };
        if config.durability != old.config.durability {
            return fixed("durability");
        }
        if config.segment_bytes != old.config.segment_bytes {
            return fixed("segment size");
        }
        if config.partitions != old.config.partitions {
            return Err(BrokerError::InvalidConfig(format!(
                "topic {name} has {} partitions; partitions are added, not configured",
                old.config.partitions
            )));
        }
        let topic = Arc::new(old.rebuilt(config, old.partitions.clone()));
        self.store_replacing(&topic).await?;
        let limits = topic.config.log_config(0, 0).limits();
        for p in &topic.partitions {
            p.log.set_limits(limits);
        }
        self.inner
            .topics
            .write()
            .insert(name.to_string(), topic.clone());
        tracing::info!(topic = name, "topic configuration changed");
        Ok(self.info(&topic))
    }

    /// Grows a topic to `count` partitions, durably. Keys routed by the broker's ring move
    /// only to the new partitions, about (new − old) / new of them; keys a client places
    /// itself (a Kafka producer's partitioner) follow that client's rule. Existing partitions
    /// and their data do not change.
    pub async fn add_partitions(&self, name: &str, count: u32) -> Result<TopicInfo> {
        self.check_open()?;
        let _admin = self.inner.admin.lock().await;
        let old = self.topic(name)?;
        let have = old.partitions.len() as u32;
        if count <= have {
            return Err(BrokerError::InvalidConfig(format!(
                "topic {name} has {have} partitions; it can only grow (asked for {count})"
            )));
        }
        let mut config = old.config.clone();
        config.partitions = count;
        config.validate()?;
        let existing: u32 = self
            .inner
            .topics
            .read()
            .values()
            .map(|t| t.partitions.len() as u32)
            .sum();
        let limit = self.inner.config.max_partitions;
        if existing.saturating_add(count - have) > limit {
            return Err(BrokerError::InvalidConfig(format!(
                "{} more partitions would exceed the broker's limit of {limit} ({existing} in use)",
                count - have
            )));
        }
        let this = self.clone();
        let (name_owned, old_topic) = (name.to_string(), old.clone());
        let topic = blocking(move || {
            let cfg = &this.inner.config;
            let log_config = config.log_config(cfg.hot_tail_bytes, cfg.preallocate_bytes);
            let mut partitions = old_topic.partitions.clone();
            let close_new = |partitions: &[Arc<Partition>]| {
                for (p, part) in partitions.iter().enumerate().skip(have as usize) {
                    let _ = part.log.close();
                    let dir = topic_dir(&cfg.data_dir, &name_owned).join(p.to_string());
                    let _ = cfg.storage.remove_dir_all(&dir);
                }
            };
            let numbers: Vec<u32> = (have..count).collect();
            let added = open_in_parallel(&numbers, |&p| {
                Self::open_partition(cfg, &name_owned, p, &log_config, &old_topic.deleted, false)
            });
            match added {
                Ok(added) => partitions.extend(added),
                Err(e) => {
                    // Those that did open were dropped (closed); their files go.
                    for p in have..count {
                        let dir = topic_dir(&cfg.data_dir, &name_owned).join(p.to_string());
                        let _ = cfg.storage.remove_dir_all(&dir);
                    }
                    return Err(e);
                }
            }
            let topic = old_topic.rebuilt(config, partitions);
            let mut all = this.stored_topics();
            all.insert(
                name_owned.clone(),
                StoredTopic {
                    config: topic.config.clone(),
                    id: topic.id,
                },
            );
            if let Err(e) = topic::store_meta(cfg.storage.as_ref(), &cfg.data_dir, &all) {
                close_new(&topic.partitions);
                return Err(e);
            }
            Ok(topic)
        })
        .await?;
        let topic = Arc::new(topic);
        self.inner
            .topics
            .write()
            .insert(name.to_string(), topic.clone());
        let partitions_of = |t: &str| self.partition_count(t);
        self.inner
            .groups
            .on_partitions_changed(name, &partitions_of);
        self.share_hot_tail();
        tracing::info!(topic = name, from = have, to = count, "partitions added");
        Ok(self.info(&topic))
    }

    /// Writes `topics.json` with `topic` in place of the topic of its name.
    async fn store_replacing(&self, topic: &Arc<Topic>) -> Result<()> {
        let mut all = self.stored_topics();
        all.insert(
            topic.name.clone(),
            StoredTopic {
                config: topic.config.clone(),
                id: topic.id,
            },
        );
        let this = self.clone();
        blocking(move || {
            let cfg = &this.inner.config;
            topic::store_meta(cfg.storage.as_ref(), &cfg.data_dir, &all)
        })
        .await
    }

    /// The idempotent producers' sequence state, shared by every door.
    pub fn producers(&self) -> &Arc<crate::producers::Producers> {
        &self.inner.producers
    }

    /// Deletes a topic, its data and the committed offsets of every group for it.
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        self.check_open()?;
        let _admin = self.inner.admin.lock().await;
        let topic = self.topic(name)?;
        // Unreachable first, so no new produce or fetch starts on logs about to close.
        self.inner.topics.write().remove(name);
        self.inner.topic_ids.write().remove(&topic.id);
        topic.deleted.store(true, Ordering::Release);
        for p in &topic.partitions {
            p.hwm.send_modify(|_| {});
        }
        let seq = {
            let mut n = self.inner.deleted_dirs.lock();
            *n += 1;
            *n
        };
        let this = self.clone();
        let name_owned = name.to_string();
        let doomed = topic.clone();
        let result = blocking(move || Ok(this.delete_files(&name_owned, &doomed, seq)))
            .await
            .unwrap_or_else(|e| Err((e, true)));
        match result {
            Ok(()) => {}
            Err((e, true)) => {
                // The data is gone; what failed (the metadata or the offsets, on a disk still
                // full) is finished at the next start, and any later metadata write.
                tracing::error!(topic = name, error = %e, "topic deleted, but recording it failed; it is finished at the next start");
            }
            Err((e, false)) => {
                // Nothing was deleted: the topic comes back as it was.
                self.inner.producers.forget_topic(name);
                let cfg = &self.inner.config;
                match Self::open_topic(cfg, name, topic.config.clone(), topic.id, true) {
                    Ok(t) => {
                        self.inner.topic_ids.write().insert(t.id, name.to_string());
                        self.inner
                            .topics
                            .write()
                            .insert(name.to_string(), Arc::new(t));
                    }
                    Err(reopen) => {
                        tracing::error!(topic = name, error = %reopen, "reopening a topic whose deletion failed");
                    }
                }
                return Err(e);
            }
        }
        // A topic created again under this name starts every producer's sequence afresh. (An
        // append that raced the deletion records nothing: it sees the topic's deleted flag.)
        self.inner.producers.forget_topic(name);
        let partitions_of = |t: &str| self.partition_count(t);
        self.inner
            .groups
            .on_partitions_changed(name, &partitions_of);
        self.share_hot_tail();
        tracing::info!(topic = name, "topic deleted");
        Ok(())
    }

    /// Deletes a topic's files (blocking). The data goes first, the metadata after: on a full
    /// disk, rewriting `topics.json` (or the offsets log) needs the very space the deletion
    /// frees. The directory is moved aside (no space needed), emptied, the metadata and
    /// offsets updated, then the empty directory removed; `Broker::open` finishes whatever a
    /// crash cut short. An error says whether the topic is deleted anyway (`true`: its data
    /// is gone, recording that failed).
    fn delete_files(
        &self,
        name: &str,
        doomed: &Topic,
        seq: u64,
    ) -> std::result::Result<(), (BrokerError, bool)> {
        let cfg = &self.inner.config;
        let storage = cfg.storage.as_ref();
        for p in &doomed.partitions {
            let _ = p.log.close();
        }
        let topics_dir = cfg.data_dir.join("topics");
        let dir = topic_dir(&cfg.data_dir, name);
        let grave = topics_dir.join(format!("{name}.{seq}.deleted"));
        if let Err(e) = storage
            .rename_dir(&dir, &grave)
            .and_then(|()| storage.sync_dir(&topics_dir))
        {
            return Err((BrokerError::storage("moving aside", &dir, e), false));
        }
        // Deleted from here on, whatever fails next.
        for p in 0..doomed.partitions.len() {
            let _ = storage.remove_dir_all(&grave.join(p.to_string()));
        }
        topic::store_meta(storage, &cfg.data_dir, &self.stored_topics()).map_err(|e| (e, true))?;
        self.inner
            .offsets
            .delete_topic(name)
            .map_err(|e| (e, true))?;
        let _ = storage.remove_dir_all(&grave);
        let _ = storage.sync_dir(&topics_dir);
        Ok(())
    }

    fn info(&self, t: &Topic) -> TopicInfo {
        TopicInfo {
            name: t.name.clone(),
            id: t.id,
            config: t.config.clone(),
            partitions: t
                .partitions
                .iter()
                .enumerate()
                .map(|(i, p)| PartitionInfo {
                    partition: i as u32,
                    log_start_offset: p.log.log_start_offset(),
                    high_watermark: p.log.high_watermark(),
                    size_bytes: p.log.size_bytes(),
                })
                .collect(),
        }
    }

    /// Every topic, by name.
    pub fn topics(&self) -> Vec<TopicInfo> {
        let topics: Vec<Arc<Topic>> = self.inner.topics.read().values().cloned().collect();
        let mut out: Vec<TopicInfo> = topics.iter().map(|t| self.info(t)).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// A topic's configuration (cheap: no partition is looked at).
    pub fn topic_config(&self, name: &str) -> Result<TopicConfig> {
        Ok(self.topic(name)?.config.clone())
    }

    /// One topic.
    pub fn topic_info(&self, name: &str) -> Result<TopicInfo> {
        let topic = self.topic(name)?;
        Ok(self.info(&topic))
    }

    /// Appends one record batch and returns once it is as durable as the topic's policy
    /// promises. The partition is `partition` if given, else the one the ring gives `key`,
    /// else the next one round robin (keyless batches spread over all partitions).
    pub async fn produce(
        &self,
        topic: &str,
        partition: Option<u32>,
        key: Option<&[u8]>,
        batch: Bytes,
    ) -> Result<ProduceResult> {
        self.produce_start(topic, partition, key, batch)
            .await?
            .wait()
            .await
    }

    /// The first half of [`Broker::produce`]: routes, validates and writes the batch, in call
    /// order. Await [`PendingProduce::wait`] for durability; meanwhile the next batch can be
    /// written, and the two share a sync.
    pub async fn produce_start(
        &self,
        topic: &str,
        partition: Option<u32>,
        key: Option<&[u8]>,
        batch: Bytes,
    ) -> Result<PendingProduce> {
        self.produce_start_unless_truncated(topic, partition, key, batch, None)
            .await
    }

    /// [`Broker::produce_start`] for a batch that must directly follow an earlier one in its
    /// partition's log, such as an idempotent producer's next batch: with `since` set to the
    /// earlier batch's [`PendingProduce::truncations`], it is refused
    /// ([`LogError::TruncatedSince`], nothing written) if the log dropped unsynced data since,
    /// which may have been that batch.
    pub async fn produce_start_unless_truncated(
        &self,
        topic: &str,
        partition: Option<u32>,
        key: Option<&[u8]>,
        batch: Bytes,
        since: Option<u64>,
    ) -> Result<PendingProduce> {
        self.check_open()?;
        let started = Instant::now();
        let t = match self.topic(topic) {
            Ok(t) => t,
            Err(BrokerError::UnknownTopic(_)) if self.inner.config.auto_create_topics => {
                match self.create_topic(topic, None).await {
                    Ok(_) | Err(BrokerError::TopicExists(_)) => self.topic(topic)?,
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        let n = t.partitions.len() as u32;
        let p = match (partition, key) {
            (Some(p), _) if p < n => p,
            (Some(p), _) => {
                return Err(BrokerError::UnknownPartition {
                    topic: topic.to_string(),
                    partition: p,
                });
            }
            (None, Some(k)) => t.ring.partition_for(k),
            (None, None) => t.next_keyless.fetch_add(1, Ordering::Relaxed) % n,
        };
        let part = t.partitions[p as usize].clone();
        let log = part.log.clone();
        let (batch, log_append_time) = match t.config.timestamp_type {
            TimestampType::CreateTime => (batch, None),
            TimestampType::LogAppendTime => {
                let (b, at) = stamp_log_append_time(batch)?;
                (b, Some(at))
            }
        };
        let multi_thread = tokio::runtime::Handle::current().runtime_flavor()
            == tokio::runtime::RuntimeFlavor::MultiThread;
        let batch_len = batch.len() as u64;
        let observer = self.inner.observer.get().cloned();
        let wall_start = observer.as_ref().map(|_| std::time::SystemTime::now());
        let traced = observer.is_some();
        // Every record must decode (compressed batches are decompressed to see), so that no
        // reader meets an undecodable batch later; the log then checks the CRC as it appends.
        let compressed = weir_batch::peek(&batch)
            .is_ok_and(|h| h.compression() != weir_batch::Compression::None);
        let _decompressing = if compressed {
            Some(self.decompression_permit().await)
        } else {
            None
        };
        // Every record is checked (the first one's trace context read on the way; compressed
        // batches are decompressed once), then the log checks the CRC as it appends.
        let require_keys = t.config.cleanup_policy.compacts();
        let check = move |batch: &Bytes| {
            weir_batch::check_records_with(batch, require_keys, |first| {
                traced.then(|| traceparent_of(first)).flatten()
            })
            .map(Option::flatten)
            .map_err(|e| BrokerError::Log(LogError::InvalidBatch(e)))
        };
        // A plain batch whose write goes no further than the page cache is checked and
        // written on this thread, where it was just received (still in this core's cache):
        // a small one directly, since any hop would cost more than the write; a larger one
        // inside `block_in_place`, which moves the runtime's other tasks elsewhere meanwhile
        // (for 1 MB batches, 22% less server CPU than a hop to the blocking pool; see
        // BENCHMARKS.md). The log turns a batch back when the append would block (a segment
        // roll, an interval sync, a disk-space reservation, a busy writer): that append, and
        // every compressed batch (its check decompresses it), goes to the blocking pool, so
        // the other requests of the same connection keep moving meanwhile.
        let in_place = |batch: Bytes| {
            let traceparent = check(&batch)?;
            Ok::<_, BrokerError>(match part.log.append_start_in_place(batch, since)? {
                weir_log::InPlace::Appended(a) => Ok((a, traceparent)),
                weir_log::InPlace::WouldBlock(batch) => Err((batch, Some(traceparent))),
            })
        };
        let first_try = if compressed {
            Err((batch, None))
        } else if batch_len as usize <= IN_PLACE_APPEND_BYTES {
            in_place(batch)?
        } else if multi_thread {
            tokio::task::block_in_place(|| in_place(batch))?
        } else {
            Err((batch, None))
        };
        let (appended, traceparent) = match first_try {
            Ok(done) => done,
            Err((batch, checked)) => {
                let append = move || {
                    let traceparent = match checked {
                        Some(traceparent) => traceparent,
                        None => check(&batch)?,
                    };
                    let appended = log
                        .append_start_unless_truncated(batch, since)
                        .map_err(BrokerError::from)?;
                    Ok((appended, traceparent))
                };
                blocking(append).await?
            }
        };
        let trace = observer
            .zip(wall_start)
            .map(|(o, wall_start)| Box::new((Arc::from(topic), wall_start, traceparent, o)));
        // Visible already unless the policy waits for a sync.
        part.hwm.send_replace(part.log.high_watermark());
        let info = appended.info();
        metrics::counter!("weir_broker_produce_batches_total").increment(1);
        metrics::counter!("weir_broker_produce_records_total")
            .increment(info.last_offset - info.base_offset + 1);
        metrics::counter!("weir_broker_produce_bytes_total").increment(batch_len);
        Ok(PendingProduce {
            part,
            partition: p,
            appended,
            started,
            log_append_time,
            trace,
        })
    }

    /// Waits for a turn to decompress record batches: the broker and every front door that
    /// decodes compressed batches share [`CONCURRENT_DECOMPRESSIONS`] turns, so that the memory
    /// decompression takes stays bounded however many clients ask at once.
    pub async fn decompression_permit(&self) -> tokio::sync::SemaphorePermit<'_> {
        self.inner
            .decompressions
            .acquire()
            .await
            .expect("the decompression semaphore is never closed")
    }

    async fn read(
        &self,
        part: &Arc<Partition>,
        offset: u64,
        max_bytes: usize,
    ) -> Result<ReadResult> {
        if let Some(r) = part.log.read_cached(offset, max_bytes)? {
            return Ok(r);
        }
        let (in_order, ahead) = {
            let mut a = part.ahead.lock();
            let in_order = a.last_end == Some(offset);
            let ahead = a
                .next
                .take_if(|n| n.offset == offset && n.max_bytes >= max_bytes);
            (in_order || ahead.is_some(), ahead)
        };
        let mut got = None;
        if let Some(ahead) = ahead {
            // Joins the read if it is still under way (or makes it, if it never started).
            let read = ahead
                .result
                .get_or_try_init(|| {
                    read_budgeted(part.log.clone(), offset, max_bytes, ahead.budgeted)
                })
                .await;
            if let Ok(r) = read {
                got = claim(&part.log, &ahead, offset, max_bytes, r);
            }
            if got.is_some() {
                self.inner.read_ahead_hits.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("weir_broker_read_ahead_hits_total").increment(1);
            }
        }
        let r = match got {
            Some(r) => r,
            None => {
                let log = part.log.clone();
                blocking(move || log.read(offset, max_bytes).map_err(BrokerError::from)).await?
            }
        };
        if !r.from_memory
            && let Some(end) = end_of(&r.chunks)
        {
            part.ahead.lock().last_end = Some(end);
            if in_order && end < r.high_watermark {
                self.read_ahead(part, end, max_bytes, r.len());
            }
        }
        Ok(r)
    }

    /// Starts reading `max_bytes` from `offset` for the partition's next in-order fetch, if
    /// the broker-wide budget allows (see [`AheadState`]). A read returns at least one whole
    /// batch, so it may exceed `max_bytes`: the budget taken is the largest of that, the last
    /// read's size (`last_len`) and [`READ_AHEAD_MIN_CHARGE`], and a first batch larger than
    /// the budget is not read ahead (the log says so from its header, before allocating).
    fn read_ahead(&self, part: &Arc<Partition>, offset: u64, max_bytes: usize, last_len: usize) {
        let budgeted = max_bytes.max(last_len).max(READ_AHEAD_MIN_CHARGE);
        if budgeted > READ_AHEAD_MAX_BYTES {
            return;
        }
        // The hot tail answers it without I/O (and an error is the reader's to meet).
        if !matches!(part.log.read_cached(offset, max_bytes), Ok(None)) {
            return;
        }
        let truncations = part.log.truncations();
        let result = Arc::new(tokio::sync::OnceCell::new());
        let (claimed, released) = tokio::sync::oneshot::channel::<()>();
        let replaced = {
            let mut a = part.ahead.lock();
            // Another reader in step with this one already started it.
            if a.next
                .as_ref()
                .is_some_and(|n| n.offset == offset && n.max_bytes >= max_bytes)
            {
                return;
            }
            let kib = budgeted.div_ceil(1024) as u32;
            let Ok(budget) = self
                .inner
                .read_ahead_budget
                .clone()
                .try_acquire_many_owned(kib)
            else {
                return;
            };
            a.next.replace(ReadAhead {
                offset,
                max_bytes,
                budgeted,
                truncations,
                result: result.clone(),
                _budget: budget,
                _claimed: claimed,
            })
        };
        // Outside the lock: it may hold a whole read.
        drop(replaced);
        self.inner.read_aheads.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("weir_broker_read_aheads_total").increment(1);
        let log = part.log.clone();
        let part = Arc::downgrade(part);
        tokio::spawn(async move {
            let read = result
                .get_or_try_init(|| read_budgeted(log, offset, max_bytes, budgeted))
                .await
                .is_ok();
            // Not kept alive from here: once its reader took it, its memory is the reader's.
            let mine = Arc::downgrade(&result);
            drop(result);
            // Failed (or over budget): let it go now. Otherwise wait for its reader to take
            // it (which ends this wait) or for the time to run out.
            if read {
                tokio::select! {
                    _ = tokio::time::sleep(READ_AHEAD_TTL) => {}
                    _ = released => return,
                }
            }
            if let Some(part) = part.upgrade() {
                let unclaimed = {
                    let mut a = part.ahead.lock();
                    a.next
                        .take_if(|n| std::ptr::eq(Arc::as_ptr(&n.result), mine.as_ptr()))
                };
                drop(unclaimed);
            }
        });
    }

    /// Reads whole batches from `offset`, up to about `max_bytes` (at least one batch). If
    /// fewer than `min_bytes` are there, waits up to `max_wait` for more, answering the moment
    /// enough arrived.
    pub async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: usize,
        min_bytes: usize,
        max_wait: Duration,
    ) -> Result<FetchResult> {
        self.fetch_parking(
            topic,
            partition,
            offset,
            max_bytes,
            min_bytes,
            max_wait,
            || (),
        )
        .await
    }

    /// [`Broker::fetch`], calling `park` each time the fetch starts waiting for records and
    /// dropping what it returned when the wait ends: a front door can tell the fetches that
    /// only wait (and hold no read data) from those under way.
    #[allow(clippy::too_many_arguments)]
    pub async fn fetch_parking<G>(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: usize,
        min_bytes: usize,
        max_wait: Duration,
        mut park: impl FnMut() -> G,
    ) -> Result<FetchResult> {
        self.check_open()?;
        let (t, part) = self.partition(topic, partition)?;
        let deadline = tokio::time::Instant::now() + max_wait;
        let mut hwm_rx = part.hwm.subscribe();
        loop {
            hwm_rx.borrow_and_update();
            let r = self.read(&part, offset, max_bytes).await?;
            let got: usize = r.chunks.iter().map(Bytes::len).sum();
            // Records past what was read: `max_bytes` stopped the read, and waiting could not
            // make the answer larger (a `min_bytes` above `max_bytes` is never reached).
            let full = got > 0
                && r.chunks
                    .last()
                    .and_then(|c| weir_batch::end_offset(c))
                    .is_some_and(|end| end < r.high_watermark);
            if got >= min_bytes.max(1)
                || full
                || tokio::time::Instant::now() >= deadline
                || min_bytes == 0
            {
                return Ok(fetched(r));
            }
            if t.deleted.load(Ordering::Acquire) {
                return Err(BrokerError::UnknownTopic(topic.to_string()));
            }
            if self.inner.stopping.load(Ordering::Acquire) {
                return Ok(fetched(r));
            }
            if self.inner.closed.load(Ordering::Acquire) {
                return Err(BrokerError::ShuttingDown);
            }
            // Answered the moment the high watermark moves, or at the deadline, from a fresh
            // read: what was read so far is not held while waiting (a parked fetch holds no
            // data).
            drop(r);
            let parked = park();
            let _ = tokio::time::timeout_at(deadline, hwm_rx.changed()).await;
            drop(parked);
        }
    }

    /// A watch of a partition's high watermark (for push subscriptions).
    pub fn watch_high_watermark(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<watch::Receiver<u64>> {
        Ok(self.partition(topic, partition)?.1.hwm.subscribe())
    }

    /// Whether a topic exists.
    pub fn topic_exists(&self, topic: &str) -> bool {
        self.inner.topics.read().contains_key(topic)
    }

    /// Identifies this incarnation of a topic: a topic deleted and created again under the
    /// same name gets a new one.
    pub fn topic_incarnation(&self, topic: &str) -> Option<u64> {
        self.inner.topics.read().get(topic).map(|t| t.incarnation)
    }

    /// Reads without waiting, from memory if possible (for push subscriptions).
    pub async fn read_at(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: usize,
    ) -> Result<FetchResult> {
        let (_, part) = self.partition(topic, partition)?;
        let r = self.read(&part, offset, max_bytes).await?;
        Ok(FetchResult::from(r))
    }

    /// Resolves an offset specification.
    pub async fn list_offsets(&self, topic: &str, partition: u32, spec: OffsetSpec) -> Result<u64> {
        self.check_open()?;
        let (_, part) = self.partition(topic, partition)?;
        match spec {
            OffsetSpec::Earliest => Ok(part.log.log_start_offset()),
            OffsetSpec::Latest => Ok(part.log.high_watermark()),
            OffsetSpec::Timestamp(ts) => {
                let found = self.offset_for_timestamp(topic, partition, ts).await?;
                Ok(found.unwrap_or_else(|| part.log.high_watermark()))
            }
        }
    }

    /// The offset of the first record stamped at or after `timestamp` (ms), or `None` when
    /// every record is older (Kafka's ListOffsets answers -1 then; the other doors, the end).
    pub async fn offset_for_timestamp(
        &self,
        topic: &str,
        partition: u32,
        timestamp: i64,
    ) -> Result<Option<u64>> {
        Ok(self
            .record_at_or_after(topic, partition, timestamp)
            .await?
            .map(|(offset, _)| offset))
    }

    /// The offset and timestamp of the first record stamped at or after `timestamp` (ms), or
    /// `None` when every record is older.
    pub async fn record_at_or_after(
        &self,
        topic: &str,
        partition: u32,
        timestamp: i64,
    ) -> Result<Option<(u64, i64)>> {
        self.check_open()?;
        let (_, part) = self.partition(topic, partition)?;
        let log = part.log.clone();
        blocking(move || Ok(log.record_at_or_after(timestamp)?)).await
    }

    /// The offset and timestamp of the first record carrying the partition's largest
    /// timestamp (Kafka's ListOffsets -3), or `None` for an empty partition.
    pub async fn max_timestamp_record(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<Option<(u64, i64)>> {
        self.check_open()?;
        let (_, part) = self.partition(topic, partition)?;
        let log = part.log.clone();
        blocking(move || match log.max_timestamp()? {
            Some(max) => Ok(log.record_at_or_after(max)?),
            None => Ok(None),
        })
        .await
    }

    // ---- groups ----

    /// Joins (or rejoins) a server-assigned consumer group.
    pub fn join_group(
        &self,
        group: &str,
        member_id: Option<&str>,
        client_id: &str,
        topics: Vec<String>,
        session_timeout: Duration,
        strategy: AssignmentStrategy,
    ) -> Result<JoinResult> {
        self.check_open()?;
        let partitions_of = |t: &str| self.partition_count(t);
        self.inner.groups.join(
            group,
            member_id,
            client_id,
            topics,
            session_timeout,
            strategy,
            &partitions_of,
            Instant::now(),
        )
    }

    pub fn heartbeat(&self, group: &str, member_id: &str, generation: u64) -> Result<()> {
        self.check_open()?;
        self.inner
            .groups
            .heartbeat(group, member_id, generation, Instant::now())
    }

    /// [`Broker::heartbeat`] that, when the member is current, waits up to `wait` for a
    /// rebalance of its group and answers the moment one begins (`RebalanceInProgress`), so
    /// that members learn of it at once rather than at their next heartbeat. The session is
    /// refreshed when the wait begins and again when it ends, and the wait is cut to half the
    /// session timeout, so that no wait, however long asked for, lets the session expire.
    /// `park` is called when the wait begins and its value kept while it lasts (as for a
    /// waiting fetch).
    pub async fn heartbeat_wait<P>(
        &self,
        group: &str,
        member_id: &str,
        generation: u64,
        wait: Duration,
        park: impl FnOnce() -> P,
    ) -> Result<()> {
        self.check_open()?;
        let (mut generations, session) =
            self.inner
                .groups
                .heartbeat_watch(group, member_id, generation, Instant::now())?;
        let wait = wait.min(session / 2);
        if wait.is_zero() || self.inner.stopping.load(Ordering::Acquire) {
            return Ok(());
        }
        let parked = park();
        let _ = tokio::time::timeout(wait, generations.changed()).await;
        drop(parked);
        self.heartbeat(group, member_id, generation)
    }

    pub fn leave_group(&self, group: &str, member_id: &str) -> Result<()> {
        self.inner.groups.leave(group, member_id)
    }

    /// Commits offsets for a group member, fenced by generation and ownership. Durable when it
    /// returns. With `member` `None` (an admin or a standalone consumer), no fencing applies.
    pub async fn commit(
        &self,
        group: &str,
        member: Option<(&str, u64)>,
        offsets: Vec<(String, u32, u64)>,
    ) -> Result<()> {
        self.check_open()?;
        for (topic, partition, offset) in &offsets {
            let (_, part) = self.partition(topic, *partition)?;
            if *offset > part.log.high_watermark() {
                return Err(BrokerError::InvalidRequest(format!(
                    "offset {offset} for {topic}/{partition} is beyond the high watermark {}",
                    part.log.high_watermark()
                )));
            }
            if let Some((member_id, generation)) = member {
                self.inner
                    .groups
                    .check_owner(group, member_id, generation, topic, *partition)?;
            }
        }
        let offsets: Vec<(String, u32, u64, String)> = offsets
            .into_iter()
            .map(|(t, p, o)| (t, p, o, String::new()))
            .collect();
        self.store_commit(group, &offsets).await
    }

    /// Stores a checked commit: writes it to the commit log, awaits its durability without
    /// holding a thread while another commit syncs (a thousand group members may commit at
    /// once), then applies it.
    async fn store_commit(
        &self,
        group: &str,
        offsets: &[(String, u32, u64, String)],
    ) -> Result<()> {
        let store = &self.inner.offsets;
        let Some(batch) = store.commit_batch(group, offsets)? else {
            return Ok(());
        };
        // A write the commit log cannot take at once (its writer busy, or a roll or a
        // reservation due) goes to the blocking pool, one commit at a time: thousands of
        // members committing together would otherwise each hold a thread there.
        let appended = match store.log().append_start_in_place(batch, None)? {
            weir_log::InPlace::Appended(a) => a,
            weir_log::InPlace::WouldBlock(batch) => {
                let _turn = self.inner.commit_off_thread.lock().await;
                match store.log().append_start_in_place(batch, None)? {
                    weir_log::InPlace::Appended(a) => a,
                    weir_log::InPlace::WouldBlock(batch) => {
                        let this = self.clone();
                        blocking(move || Ok(this.inner.offsets.log().append_start(batch)?)).await?
                    }
                }
            }
        };
        match durable_or_lead(store.log(), appended).await {
            Ok(r) => {
                r?;
            }
            Err(claim) => {
                let this = self.clone();
                blocking(move || Ok(this.inner.offsets.log().lead_wait(claim)?)).await?;
            }
        }
        store.apply_committed()?;
        if store.claim_snapshot() {
            // A snapshot writes and syncs a file.
            let this = self.clone();
            blocking(move || {
                this.inner.offsets.take_claimed_snapshot();
                Ok(())
            })
            .await?;
        }
        Ok(())
    }

    /// Commits offsets as Kafka's coordinator stores them: as given, inside the log or not
    /// (whether they can be read is decided at fetch), for partitions that exist, unfenced
    /// (the Kafka door checks its own group's generation), each with its metadata string (at
    /// most [`crate::offsets::MAX_METADATA_BYTES`]). Durable when it returns. Any value is kept,
    /// negative ones too (an admin tool's "reset to earliest" commits -2, and reads it back):
    /// stored as their two's complement, they read back through
    /// [`Broker::committed_as_given`], and as no commit at all through
    /// [`Broker::committed`] and the other doors.
    pub async fn commit_as_given(
        &self,
        group: &str,
        offsets: Vec<(String, u32, i64, String)>,
    ) -> Result<()> {
        self.check_open()?;
        for (topic, partition, _, _) in &offsets {
            self.partition(topic, *partition)?;
        }
        let offsets: Vec<(String, u32, u64, String)> = offsets
            .into_iter()
            .map(|(t, p, o, m)| (t, p, o as u64, m))
            .collect();
        self.store_commit(group, &offsets).await
    }

    /// The metadata string `group` committed with its offset for `topic`/`partition` (empty
    /// for none): Kafka clients keep state of their own there.
    pub fn committed_metadata(&self, group: &str, topic: &str, partition: u32) -> String {
        self.inner.offsets.metadata(group, topic, partition)
    }

    /// Committed offsets; partitions without one resolve by `reset` (earliest or latest).
    pub fn committed_offsets(
        &self,
        group: &str,
        partitions: &[(String, u32)],
        reset_to_earliest: bool,
    ) -> Result<Vec<(String, u32, u64)>> {
        let mut out = Vec::with_capacity(partitions.len());
        for (topic, partition) in partitions {
            let (_, part) = self.partition(topic, *partition)?;
            let offset = match self.committed(group, topic, *partition) {
                // A commit below the log start (retention passed it) resumes at the log start.
                Some(o) => o.max(part.log.log_start_offset()),
                None if reset_to_earliest => part.log.log_start_offset(),
                None => part.log.high_watermark(),
            };
            out.push((topic.clone(), *partition, offset));
        }
        Ok(out)
    }

    /// The offset `group` committed for a partition, as stored (no reset policy applied);
    /// `None` for a negative one a Kafka client committed (no position to resume from).
    pub fn committed(&self, group: &str, topic: &str, partition: u32) -> Option<u64> {
        self.inner
            .offsets
            .committed(group, topic, partition)
            .filter(|o| i64::try_from(*o).is_ok())
    }

    /// The offset `group` committed for a partition exactly as a Kafka client gave it,
    /// negative ones included.
    pub fn committed_as_given(&self, group: &str, topic: &str, partition: u32) -> Option<i64> {
        self.inner
            .offsets
            .committed(group, topic, partition)
            .map(|o| o as i64)
    }

    /// Every offset `group` committed, as (topic, partition, offset), sorted; negative ones
    /// (see [`Broker::committed`]) left out.
    pub fn group_offsets(&self, group: &str) -> Vec<(String, u32, u64)> {
        let mut all = self.inner.offsets.group_offsets(group);
        all.retain(|(_, _, o)| i64::try_from(*o).is_ok());
        all
    }

    /// Every partition `group` committed an offset for, negative ones included.
    pub fn group_partitions(&self, group: &str) -> Vec<(String, u32)> {
        self.inner
            .offsets
            .group_offsets(group)
            .into_iter()
            .map(|(t, p, _)| (t, p))
            .collect()
    }

    /// Forgets `group`'s committed offsets: all of them (`None`), or those of the (topic,
    /// partition) pairs listed. Durable when it returns `Ok`. Whether the group may lose them
    /// (it has no members, or none reading those topics) is for the caller to decide.
    pub async fn delete_group_offsets(
        &self,
        group: &str,
        partitions: Option<Vec<(String, u32)>>,
    ) -> Result<()> {
        self.check_open()?;
        let this = self.clone();
        let group = group.to_string();
        blocking(move || {
            this.inner
                .offsets
                .delete_group(&group, partitions.as_deref())
        })
        .await
    }

    /// Makes the records of a partition before `offset` unreadable (Kafka's DeleteRecords):
    /// `None` means up to the high watermark. Returns the new log start offset. An offset
    /// past the high watermark is refused.
    pub async fn delete_records(
        &self,
        topic: &str,
        partition: u32,
        offset: Option<u64>,
    ) -> Result<u64> {
        self.check_open()?;
        let (_, part) = self.partition(topic, partition)?;
        let log = part.log.clone();
        blocking(move || {
            let before = offset.unwrap_or_else(|| log.high_watermark());
            Ok(log.delete_records_before(before)?)
        })
        .await
    }

    /// Reserves a group name for a front door with its own coordinator (see
    /// [`GroupCoordinator::claim`]).
    pub fn claim_group(&self, group: &str, protocol: GroupProtocol) -> Result<()> {
        self.inner.groups.claim(group, protocol)
    }

    /// Gives back a name [`Broker::claim_group`] reserved.
    pub fn release_group(&self, group: &str, protocol: GroupProtocol) {
        self.inner.groups.release(group, protocol)
    }

    /// The protocol that holds `group` now, if any.
    pub fn group_protocol(&self, group: &str) -> Option<GroupProtocol> {
        self.inner.groups.protocol_of(group)
    }

    /// Group names: those with members and those with committed offsets.
    pub fn groups(&self) -> Vec<String> {
        let mut all = self.inner.groups.list();
        all.extend(self.inner.offsets.groups());
        all.sort();
        all.dedup();
        all
    }

    /// A group's members and assignments, whichever protocol holds it.
    pub fn describe_group(&self, group: &str) -> Option<GroupDescription> {
        let native = self.inner.groups.describe(group);
        if native
            .as_ref()
            .is_some_and(|d| d.protocol == GroupProtocol::Native)
        {
            return native;
        }
        self.coordinators()
            .iter()
            .find_map(|c| c.describe(group))
            .or(native)
    }

    /// Lag of every partition the group has committed offsets for or is assigned.
    pub fn group_lag(&self, group: &str) -> Vec<PartitionLag> {
        let mut parts: BTreeMap<(String, u32), Option<u64>> = BTreeMap::new();
        for (topic, partition, offset) in self.group_offsets(group) {
            parts.insert((topic, partition), Some(offset));
        }
        if let Some(desc) = self.describe_group(group) {
            for m in desc.members {
                for (topic, ps) in m.assignment {
                    for p in ps {
                        parts.entry((topic.clone(), p)).or_insert(None);
                    }
                }
            }
        }
        parts
            .into_iter()
            .filter_map(|((topic, partition), committed)| {
                let (_, part) = self.partition(&topic, partition).ok()?;
                let hwm = part.log.high_watermark();
                let from = committed.unwrap_or_else(|| part.log.log_start_offset());
                Some(PartitionLag {
                    lag: hwm.saturating_sub(from),
                    topic,
                    partition,
                    committed,
                    high_watermark: hwm,
                })
            })
            .collect()
    }

    /// The latest record of `key` in compacted topic `topic` (a tombstone included), from
    /// whichever partition holds it (the newest by timestamp if a producer's partitioner put
    /// the key in several). `None` if the key was never written or compaction dropped its
    /// tombstone. Reads from disk on the first lookup of a partition (see `keys.rs`).
    pub async fn latest_by_key(
        &self,
        topic: &str,
        key: &[u8],
    ) -> Result<Option<crate::keys::KeyLookup>> {
        self.check_open()?;
        let t = self.topic(topic)?;
        if !t.config.cleanup_policy.compacts() {
            return Err(BrokerError::InvalidRequest(format!(
                "topic {topic} is not compacted: lookups by key are served for compacted topics"
            )));
        }
        let max_keys = self.inner.config.key_index_max_keys;
        let key = key.to_vec();
        blocking(move || {
            let mut best: Option<(i64, crate::keys::KeyLookup)> = None;
            for (p, part) in t.partitions.iter().enumerate() {
                let found = part
                    .keys
                    .lock()
                    .lookup(&part.log, p as u32, &key, max_keys)?;
                if let Some(f) = found {
                    let ts = weir_batch::peek(&f.batch).map_or(i64::MIN, |h| h.max_timestamp);
                    if best.as_ref().is_none_or(|(t, _)| ts > *t) {
                        best = Some((ts, f));
                    }
                }
            }
            Ok(best.map(|(_, f)| f))
        })
        .await
    }

    /// Plans a snapshot of partition `partition` of compacted topic `topic`: the latest record
    /// of every key (or of the keys `only` names) below the returned reader's `end`, from
    /// which live records follow with no gap and no duplicate. Builds the partition's key
    /// index on first use (see `keys.rs`); holds 8 bytes a planned key until delivered.
    pub async fn snapshot(
        &self,
        topic: &str,
        partition: u32,
        only: Option<Vec<Bytes>>,
    ) -> Result<crate::keys::SnapshotReader> {
        self.check_open()?;
        let t = self.topic(topic)?;
        if !t.config.cleanup_policy.compacts() {
            return Err(BrokerError::InvalidRequest(format!(
                "topic {topic} is not compacted: snapshots are served for compacted topics"
            )));
        }
        let (_, part) = self.partition(topic, partition)?;
        let max_keys = self.inner.config.key_index_max_keys;
        blocking(move || {
            let (end, offsets) = part
                .keys
                .lock()
                .snapshot(&part.log, only.as_deref(), max_keys)?;
            Ok(crate::keys::SnapshotReader::new(end, offsets))
        })
        .await
    }

    /// The next batches of a snapshot, cut down to its records (about `max_bytes`); empty
    /// once it is delivered. Records retention removed meanwhile are passed over.
    pub async fn read_snapshot(
        &self,
        topic: &str,
        partition: u32,
        reader: &mut crate::keys::SnapshotReader,
        max_bytes: usize,
    ) -> Result<Vec<Bytes>> {
        loop {
            let Some(at) = reader.next_offset() else {
                return Ok(Vec::new());
            };
            match self.read_at(topic, partition, at, max_bytes).await {
                Ok(r) if r.chunks.is_empty() => {
                    // Cut back below the plan (not done to a live log): nothing more to read.
                    reader.skip_below(u64::MAX);
                }
                Ok(r) => {
                    let out = reader.take(&r.chunks, max_bytes)?;
                    if !out.is_empty() {
                        return Ok(out);
                    }
                    if reader.next_offset() == Some(at) {
                        // The read ended before the batch holding `at` (cannot happen: a
                        // read returns at least the batch holding its offset).
                        return Err(BrokerError::Internal(format!(
                            "snapshot read at {at} returned nothing at or after it"
                        )));
                    }
                }
                Err(BrokerError::Log(LogError::OffsetOutOfRange { log_start, .. }))
                    if at < log_start =>
                {
                    reader.skip_below(log_start);
                }
                Err(e) => return Err(e),
            }
        }
    }

    // ---- maintenance and shutdown ----

    /// Runs periodic work until `shutdown` resolves: expires group members, syncs
    /// interval-durability logs, applies retention.
    pub async fn run_maintenance(&self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        // Two loops: the groups' one clock every 100 ms, never held up by the storage work
        // (interval syncs, retention) of the other.
        tokio::select! {
            _ = &mut shutdown => {}
            _ = self.group_clock() => {}
            _ = self.storage_maintenance() => {}
            _ = self.compaction() => {}
        }
    }

    /// Compacts the partitions of compacted topics, one pass at a time, each when due: when
    /// its dirty share reaches the topic's `min_cleanable_dirty_ratio`, or its oldest dirty
    /// record is older than `max_compaction_lag_ms`. The passes' I/O goes through one rate
    /// limiter (`compaction_bytes_per_second`).
    async fn compaction(&self) {
        let config = &self.inner.config;
        let limiter = (config.compaction_bytes_per_second > 0).then(|| {
            let rate = config.compaction_bytes_per_second;
            // A burst of a tenth of a second: passes run close to the rate, never far above.
            let burst = u32::try_from((rate / 10).max(1 << 20)).unwrap_or(u32::MAX);
            Arc::new(weir_flow::Limiter::new(weir_flow::Gcra::new(
                weir_flow::Rate::per_second(rate),
                burst,
            )))
        });
        // The first look comes one period after the start, not during it.
        let period = config.compaction_check.max(Duration::from_millis(10));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let parts: Vec<(String, u32, TopicConfig, Arc<Partition>)> = self
                .inner
                .topics
                .read()
                .values()
                .filter(|t| t.config.cleanup_policy.compacts())
                .flat_map(|t| {
                    t.partitions
                        .iter()
                        .enumerate()
                        .map(|(i, p)| (t.name.clone(), i as u32, t.config.clone(), p.clone()))
                        .collect::<Vec<_>>()
                })
                .collect();
            // On a thread of its own at a lower CPU priority (nice 10), so that on a busy
            // machine producers and readers go first: a pass is background work.
            let limiter = limiter.clone();
            let key_map_bytes = config.compaction_key_map_bytes;
            let (done, passes) = tokio::sync::oneshot::channel();
            let spawned = std::thread::Builder::new()
                .name("weir-compact".into())
                .spawn(move || {
                    let me = rustix::thread::gettid();
                    if let Err(e) = rustix::process::setpriority_process(Some(me), 10) {
                        tracing::debug!(error = %e, "compaction: cannot lower the thread's priority");
                    }
                    for (topic, partition, tc, p) in parts {
                        compact_if_due(
                            &topic,
                            partition,
                            &tc,
                            &p.log,
                            key_map_bytes,
                            limiter.as_deref(),
                        );
                    }
                    let _ = done.send(());
                });
            match spawned {
                Ok(_) => {
                    let _ = passes.await;
                }
                Err(e) => tracing::error!(error = %e, "compaction: cannot start its thread"),
            }
        }
    }

    /// Registers another protocol's group coordinator (the Kafka door's): its clock runs every
    /// 100 ms in [`Broker::run_maintenance`] beside the native groups' expiry (one expiry
    /// clock for every group), and [`Broker::describe_group`] asks it about the groups it
    /// holds. Held weakly: once the coordinator is dropped, it is forgotten.
    pub fn register_coordinator(
        &self,
        coordinator: std::sync::Weak<dyn crate::group::ForeignCoordinator>,
    ) {
        self.inner.coordinators.lock().push(coordinator);
    }

    fn coordinators(&self) -> Vec<Arc<dyn crate::group::ForeignCoordinator>> {
        let mut list = self.inner.coordinators.lock();
        list.retain(|c| c.strong_count() > 0);
        list.iter().filter_map(std::sync::Weak::upgrade).collect()
    }

    async fn group_clock(&self) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = Instant::now();
            for (group, member) in self.inner.groups.expire(now) {
                tracing::info!(%group, %member, "group member session expired");
            }
            for c in self.coordinators() {
                c.tick(now);
            }
        }
    }

    async fn storage_maintenance(&self) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_retention = Instant::now();
        loop {
            tick.tick().await;
            let parts: Vec<(String, u32, Arc<Partition>)> = self
                .inner
                .topics
                .read()
                .values()
                .flat_map(|t| {
                    t.partitions
                        .iter()
                        .enumerate()
                        .map(|(i, p)| (t.name.clone(), i as u32, p.clone()))
                        .collect::<Vec<_>>()
                })
                .collect();
            let retention_due = last_retention.elapsed() >= self.inner.config.retention_check;
            if retention_due {
                last_retention = Instant::now();
            }
            let _ = blocking(move || {
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64);
                for (topic, partition, p) in parts {
                    if let Err(e) = p.log.tick() {
                        tracing::error!(%topic, partition, error = %e, "interval sync failed");
                    }
                    if retention_due {
                        match p.log.apply_retention(now_ms) {
                            Ok(r) if r.deleted_segments > 0 => tracing::info!(%topic, partition, segments = r.deleted_segments, bytes = r.deleted_bytes, log_start = r.log_start_offset, "retention deleted segments"),
                            Ok(_) => {}
                            Err(LogError::Closed) => {}
                            Err(e) => tracing::error!(%topic, partition, error = %e, "retention failed"),
                        }
                    }
                }
                Ok(())
            })
            .await;
        }
    }

    /// Starts a shutdown: long polls answer at once with what they have, so connections can
    /// drain without waiting out their max_wait. Requests still work until [`Broker::close`].
    pub fn begin_shutdown(&self) {
        self.inner.stopping.store(true, Ordering::Release);
        self.inner.groups.wake_heartbeats();
        let topics: Vec<Arc<Topic>> = self.inner.topics.read().values().cloned().collect();
        for t in topics {
            for p in &t.partitions {
                p.hwm.send_modify(|_| {});
            }
        }
    }

    /// Flushes and closes every log and the offsets store (clean-shutdown checkpoints).
    /// Later calls fail with `ShuttingDown`.
    pub async fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let topics: Vec<Arc<Topic>> = self.inner.topics.read().values().cloned().collect();
        for t in &topics {
            for p in &t.partitions {
                p.hwm.send_modify(|_| {});
            }
        }
        let this = self.clone();
        blocking(move || {
            let logs: Vec<(&str, &Partition)> = topics
                .iter()
                .flat_map(|t| t.partitions.iter().map(|p| (t.name.as_str(), &**p)))
                .collect();
            let closed = in_parallel(&logs, |(topic, p)| (*topic, p.log.close()), |_| false);
            let mut first_err = None;
            for (topic, r) in closed {
                if let Err(e) = r {
                    tracing::error!(topic, error = %e, "closing log failed");
                    first_err.get_or_insert(BrokerError::from(e));
                }
            }
            if let Err(e) = this.inner.offsets.close() {
                first_err.get_or_insert(e);
            }
            first_err.map_or(Ok(()), Err)
        })
        .await?;
        tracing::info!("broker closed");
        Ok(())
    }
}

/// One compaction pass on `log` if it is due (see `Broker::compaction`).
fn compact_if_due(
    topic: &str,
    partition: u32,
    tc: &TopicConfig,
    log: &Log,
    key_map_bytes: usize,
    limiter: Option<&weir_flow::Limiter<weir_flow::Gcra>>,
) {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let min_lag = tc.min_compaction_lag_ms as i64;
    let state = match log.compaction_state(now_ms, min_lag) {
        Ok(s) => s,
        Err(LogError::Closed) => return,
        Err(e) => {
            tracing::error!(topic, partition, error = %e, "compaction: cannot read the log's state");
            return;
        }
    };
    if state.dirty_bytes == 0 {
        return;
    }
    let overdue = tc.max_compaction_lag_ms.is_some_and(|max| {
        state
            .first_dirty_timestamp
            .is_some_and(|ts| ts < now_ms.saturating_sub(max as i64))
    });
    if state.dirty_ratio() < tc.min_cleanable_dirty_ratio.0 && !overdue {
        return;
    }
    let opts = weir_log::CompactOptions {
        now_ms,
        delete_retention_ms: tc.delete_retention_ms as i64,
        min_lag_ms: min_lag,
        key_map_bytes,
    };
    let mut throttle = |bytes: u64| {
        if let Some(l) = limiter {
            let wait = l.charge(bytes);
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
        }
    };
    let started = Instant::now();
    match log.compact(&opts, &mut throttle) {
        Ok(r) if r.segments_rewritten + r.segments_removed == 0 => {
            tracing::debug!(
                topic,
                partition,
                clean_to = r.clean_to,
                "compaction found nothing to drop"
            );
        }
        Ok(r) => tracing::info!(
            topic,
            partition,
            dirty_ratio = state.dirty_ratio(),
            rewritten = r.segments_rewritten,
            removed = r.segments_removed,
            records_removed = r.records_removed,
            tombstones_removed = r.tombstones_removed,
            bytes_before = r.bytes_before,
            bytes_after = r.bytes_after,
            clean_to = r.clean_to,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "compacted"
        ),
        Err(LogError::Closed) => {}
        Err(e) => tracing::error!(topic, partition, error = %e, "compaction failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::DurabilitySetting;

    /// A broker whose partitions keep no hot tail, so that every read goes to disk.
    async fn broker_on_disk(
        dir: &Path,
        segment_bytes: u64,
        retention_bytes: Option<u64>,
    ) -> Broker {
        let broker = Broker::open(BrokerConfig {
            data_dir: dir.to_path_buf(),
            hot_tail_bytes: 0,
            ..Default::default()
        })
        .unwrap();
        let config = TopicConfig {
            durability: DurabilitySetting::Never,
            segment_bytes,
            max_batch_bytes: 8 << 10,
            retention_bytes,
            ..Default::default()
        };
        broker.create_topic("t", Some(config)).await.unwrap();
        for i in 0..200u32 {
            let mut b = weir_batch::BatchBuilder::new(0);
            for j in 0..10u32 {
                let value = format!("{:0100}", i * 10 + j);
                b.push(weir_batch::RecordSpec::value(value.as_bytes()));
            }
            broker
                .produce("t", Some(0), None, Bytes::from(b.build()))
                .await
                .unwrap();
        }
        broker
    }

    /// The offsets of the records in `chunks` at or after `from`, each checked against the
    /// value it was written with.
    fn offsets_in(chunks: &[Bytes], from: u64) -> Vec<u64> {
        let mut out = Vec::new();
        for chunk in chunks {
            for batch in weir_batch::Batches::new(chunk) {
                let (h, bytes) = batch.unwrap();
                let section = weir_batch::section(&h, bytes).unwrap();
                for r in weir_batch::Records::with_payload(h, &section) {
                    let r = r.unwrap();
                    let value = std::str::from_utf8(r.value.unwrap()).unwrap();
                    assert_eq!(value.parse::<i64>().unwrap(), r.offset, "record and offset");
                    if r.offset as u64 >= from {
                        out.push(r.offset as u64);
                    }
                }
            }
        }
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reader_in_order_is_read_ahead_and_gets_every_record_once() {
        let dir = tempfile::tempdir().unwrap();
        let broker = broker_on_disk(dir.path(), 1 << 30, None).await;
        let mut offset = 0;
        let mut seen = Vec::new();
        let mut fetches = 0;
        while offset < 2000 {
            fetches += 1;
            let f = broker
                .fetch("t", 0, offset, 4096, 1, Duration::ZERO)
                .await
                .unwrap();
            let got = offsets_in(&f.chunks, offset);
            assert!(!got.is_empty(), "no progress at {offset}");
            offset = got.last().unwrap() + 1;
            seen.extend(got);
            assert_eq!(f.high_watermark, 2000);
        }
        assert_eq!(seen, (0..2000).collect::<Vec<u64>>());
        // Every read after the first two (the second is the first seen in order, and starts
        // the first read-ahead) is answered by one started ahead of it.
        let hits = broker.inner.read_ahead_hits.load(Ordering::Relaxed);
        assert_eq!(hits, fetches - 2, "read-aheads used, of {fetches} fetches");
    }

    /// A fetch that waits for records is reported as parked while it waits, once per wait;
    /// and one whose `min_bytes` is beyond its `max_bytes` answers as soon as `max_bytes`
    /// stopped its read (more would never fit), not at its deadline.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiting_fetch_is_reported_parked() {
        let dir = tempfile::tempdir().unwrap();
        let broker = broker_on_disk(dir.path(), 1 << 30, None).await;
        let t = std::time::Instant::now();
        let f = broker
            .fetch("t", 0, 0, 4096, 1 << 20, Duration::from_secs(10))
            .await
            .unwrap();
        assert!(!f.chunks.is_empty());
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        // At the end of the log: parked until the deadline, once; with records, never.
        let parks = std::sync::atomic::AtomicUsize::new(0);
        let f = broker
            .fetch_parking("t", 0, 2000, 4096, 1, Duration::from_millis(200), || {
                parks.fetch_add(1, Ordering::Relaxed);
            })
            .await
            .unwrap();
        assert!(f.chunks.is_empty());
        assert_eq!(parks.load(Ordering::Relaxed), 1);
        let f = broker
            .fetch_parking("t", 0, 0, 4096, 1, Duration::from_secs(10), || {
                parks.fetch_add(1, Ordering::Relaxed);
            })
            .await
            .unwrap();
        assert!(!f.chunks.is_empty());
        assert_eq!(parks.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readers_taking_turns_start_no_read_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let broker = broker_on_disk(dir.path(), 1 << 30, None).await;
        let (mut a, mut b) = (0u64, 1000u64);
        while a < 1000 {
            for at in [&mut a, &mut b] {
                let f = broker
                    .fetch("t", 0, *at, 4096, 1, Duration::ZERO)
                    .await
                    .unwrap();
                *at = offsets_in(&f.chunks, *at).last().unwrap() + 1;
            }
        }
        assert_eq!(broker.inner.read_ahead_hits.load(Ordering::Relaxed), 0);
        assert!(
            broker
                .partition("t", 0)
                .unwrap()
                .1
                .ahead
                .lock()
                .next
                .is_none()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_ahead_larger_than_its_budget_is_let_go() {
        let dir = tempfile::tempdir().unwrap();
        let broker = Broker::open(BrokerConfig {
            data_dir: dir.path().to_path_buf(),
            hot_tail_bytes: 0,
            ..Default::default()
        })
        .unwrap();
        let config = TopicConfig {
            durability: DurabilitySetting::Never,
            ..Default::default()
        };
        broker.create_topic("t", Some(config)).await.unwrap();
        // Two batches of one 900-byte record, then one of 256 KiB: read 1 KiB at a time, the
        // third is read ahead on the least budget (64 KiB).
        for size in [900, 900, 256 << 10] {
            let mut b = weir_batch::BatchBuilder::new(0);
            b.push(weir_batch::RecordSpec::value(&vec![b'x'; size]));
            broker
                .produce("t", Some(0), None, Bytes::from(b.build()))
                .await
                .unwrap();
        }
        let part = broker.partition("t", 0).unwrap().1;
        for offset in [0, 1] {
            let f = broker
                .fetch("t", 0, offset, 1024, 1, Duration::ZERO)
                .await
                .unwrap();
            assert_eq!(offsets_in_any(&f.chunks), vec![offset]);
        }
        // The second read, in order, started one (at offset 2); it finds its batch over
        // budget and is let go without waiting for a reader.
        assert_eq!(broker.inner.read_aheads.load(Ordering::Relaxed), 1);
        let deadline = Instant::now() + Duration::from_secs(1);
        while part.ahead.lock().next.is_some() {
            assert!(
                Instant::now() < deadline,
                "an oversized read-ahead was kept"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The reader gets its batch all the same.
        let f = broker
            .fetch("t", 0, 2, 1024, 1, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(offsets_in_any(&f.chunks), vec![2]);
        assert_eq!(
            broker.inner.read_ahead_budget.available_permits(),
            READ_AHEAD_BUDGET_BYTES >> 10
        );
    }

    fn offsets_in_any(chunks: &[Bytes]) -> Vec<u64> {
        let mut out = Vec::new();
        for chunk in chunks {
            for batch in weir_batch::Batches::new(chunk) {
                let (h, _) = batch.unwrap();
                out.extend(h.base_offset as u64..h.next_offset() as u64);
            }
        }
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_ahead_is_claimed_only_while_nothing_it_read_can_have_changed() {
        let dir = tempfile::tempdir().unwrap();
        let broker = broker_on_disk(dir.path(), 16 << 10, Some(1)).await;
        let part = broker.partition("t", 0).unwrap().1;
        let budget = Arc::new(tokio::sync::Semaphore::new(4));
        let ahead_at = |offset: u64, truncations: u64, r: &ReadResult| ReadAhead {
            offset,
            max_bytes: 1 << 20,
            budgeted: 1 << 20,
            truncations,
            result: Arc::new(tokio::sync::OnceCell::new_with(Some(r.clone()))),
            _budget: budget.clone().try_acquire_owned().unwrap(),
            _claimed: tokio::sync::oneshot::channel().0,
        };
        let r = part.log.read(30, 1 << 20).unwrap();
        let all = offsets_in(&r.chunks, 30);
        assert!(all.len() > 10, "{} records", all.len());
        let now = part.log.truncations();
        // As read: claimed, and cut to whole batches within what the reader asks for.
        let ahead = ahead_at(30, now, &r);
        let whole = claim(&part.log, &ahead, 30, 1 << 20, &r).unwrap();
        assert_eq!(offsets_in(&whole.chunks, 30), all);
        let one_batch = claim(&part.log, &ahead, 30, 1, &r).unwrap();
        assert_eq!(
            offsets_in(&one_batch.chunks, 30),
            (30..40).collect::<Vec<_>>()
        );
        // A truncation since the read began: not claimed.
        let truncated = ahead_at(30, now + 1, &r);
        assert!(claim(&part.log, &truncated, 30, 1 << 20, &r).is_none());
        // Retention passed it: not claimed.
        part.log.apply_retention(0).unwrap();
        assert!(part.log.log_start_offset() > 30);
        assert!(claim(&part.log, &ahead, 30, 1 << 20, &r).is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_ahead_that_retention_passed_is_not_served() {
        let dir = tempfile::tempdir().unwrap();
        // Small segments and a retention that keeps only the active one; retention runs
        // only when this test calls it.
        let broker = broker_on_disk(dir.path(), 16 << 10, Some(1)).await;
        let part = broker.partition("t", 0).unwrap().1;
        // Two reads in order: the second starts a read-ahead of what follows it.
        let first = broker
            .fetch("t", 0, 0, 4096, 1, Duration::ZERO)
            .await
            .unwrap();
        let next = offsets_in(&first.chunks, 0).last().unwrap() + 1;
        let second = broker
            .fetch("t", 0, next, 4096, 1, Duration::ZERO)
            .await
            .unwrap();
        let ahead_at = offsets_in(&second.chunks, next).last().unwrap() + 1;
        let started = part.ahead.lock().next.as_ref().map(|n| n.offset);
        assert_eq!(started, Some(ahead_at));
        // Let it finish, then let retention delete every segment but the active one.
        tokio::time::sleep(Duration::from_millis(100)).await;
        part.log.apply_retention(0).unwrap();
        assert!(part.log.log_start_offset() > ahead_at);
        match broker
            .fetch("t", 0, ahead_at, 4096, 1, Duration::ZERO)
            .await
        {
            Err(BrokerError::Log(LogError::OffsetOutOfRange { .. })) => {}
            other => panic!("read what retention deleted: {other:?}"),
        }
        assert_eq!(broker.inner.read_ahead_hits.load(Ordering::Relaxed), 0);
    }

    /// A heartbeat asked to wait longer than its member's session can afford waits half the
    /// session, then answers (the session refreshed, the member still in its group); a
    /// rebalance answers it at once.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_waiting_heartbeat_is_cut_to_half_its_session_and_answered_by_a_rebalance() {
        let dir = tempfile::tempdir().unwrap();
        let broker = Broker::open(BrokerConfig {
            data_dir: dir.path().to_path_buf(),
            ..Default::default()
        })
        .unwrap();
        broker.create_topic("t", None).await.unwrap();
        let session = Duration::from_secs(2);
        let join = |member: Option<&str>| {
            broker
                .join_group(
                    "g",
                    member,
                    "c",
                    vec!["t".into()],
                    session,
                    AssignmentStrategy::Sticky,
                )
                .unwrap()
        };
        let a = join(None);
        let t = tokio::time::Instant::now();
        broker
            .heartbeat_wait(
                "g",
                &a.member_id,
                a.generation,
                Duration::from_secs(30),
                || (),
            )
            .await
            .unwrap();
        let waited = t.elapsed();
        assert!(
            waited >= session / 2 && waited < session / 2 + Duration::from_millis(10),
            "{waited:?}"
        );
        broker.heartbeat("g", &a.member_id, a.generation).unwrap();

        let waiting = {
            let broker = broker.clone();
            let (id, generation) = (a.member_id.clone(), a.generation);
            tokio::spawn(async move {
                let t = tokio::time::Instant::now();
                let r = broker
                    .heartbeat_wait("g", &id, generation, Duration::from_secs(30), || ())
                    .await;
                (r, t.elapsed())
            })
        };
        tokio::task::yield_now().await;
        let b = join(None);
        assert!(b.generation > a.generation);
        let (r, waited) = waiting.await.unwrap();
        assert!(
            matches!(r, Err(BrokerError::RebalanceInProgress { .. })),
            "{r:?}"
        );
        assert!(waited < Duration::from_millis(1), "{waited:?}");
    }

    /// Many commits at once (each awaiting its durability without a thread while another
    /// syncs the commit log): each is visible when answered, and all of them after a reopen.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_commits_are_visible_when_answered_and_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let broker = broker_on_disk(dir.path(), 1 << 30, None).await;
        let tasks: Vec<_> = (0..400u64)
            .map(|i| {
                let broker = broker.clone();
                tokio::spawn(async move {
                    let group = format!("g{}", i % 40);
                    let partition_offset = i * 5;
                    broker
                        .commit(&group, None, vec![("t".to_string(), 0, partition_offset)])
                        .await
                        .unwrap();
                    // Another commit of the same group may land after this one: at least
                    // this one's effect (or a later one's) is visible.
                    assert!(
                        broker.committed(&group, "t", 0).is_some(),
                        "{group} after commit"
                    );
                    (group, partition_offset)
                })
            })
            .collect();
        let mut last = std::collections::HashMap::new();
        for t in tasks {
            let (group, offset) = t.await.unwrap();
            last.entry(group).or_insert_with(Vec::new).push(offset);
        }
        let seen: std::collections::HashMap<String, u64> = last
            .keys()
            .map(|g| (g.clone(), broker.committed(g, "t", 0).unwrap()))
            .collect();
        for (g, offsets) in &last {
            assert!(
                offsets.contains(&seen[g]),
                "{g}: {} is one it committed",
                seen[g]
            );
        }
        broker.close().await.unwrap();
        drop(broker);
        let reopened = Broker::open(BrokerConfig {
            data_dir: dir.path().to_path_buf(),
            ..Default::default()
        })
        .unwrap();
        for (g, offset) in &seen {
            assert_eq!(
                reopened.committed(g, "t", 0),
                Some(*offset),
                "{g} after reopen"
            );
        }
    }
}

/// The broker's own files (topic metadata, topic directories) on the storage seam: a full disk
/// and a crash at every I/O step of creating and deleting a topic.
#[cfg(test)]
mod storage_tests {
    use std::path::Path;

    use weir_log::{CrashMode, FaultKind, MemStorage, Storage};

    use super::*;
    use crate::ErrorKind;
    use crate::topic::DurabilitySetting;

    fn config(storage: &MemStorage) -> BrokerConfig {
        BrokerConfig {
            data_dir: PathBuf::from("/data"),
            storage: Arc::new(storage.clone()),
            preallocate_bytes: 0,
            default_topic: TopicConfig {
                durability: DurabilitySetting::Always,
                segment_bytes: 1 << 20,
                max_batch_bytes: 64 << 10,
                ..TopicConfig::default()
            },
            ..BrokerConfig::default()
        }
    }

    fn batch(value: &[u8]) -> Bytes {
        let mut b = weir_batch::BatchBuilder::new(0);
        b.push(weir_batch::RecordSpec::value(value));
        Bytes::from(b.build())
    }

    /// Memory for hot tails is shared: each partition keeps `hot_tail_bytes`, or its share of
    /// `hot_tail_total_bytes` once there are too many partitions; adding partitions shrinks
    /// the tails already held at once, and deleting a topic gives its share back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hot_tails_share_one_budget_as_partitions_come_and_go() {
        let storage = MemStorage::new();
        let cfg = BrokerConfig {
            hot_tail_bytes: 64 << 10,
            hot_tail_total_bytes: 256 << 10,
            ..config(&storage)
        };
        let broker = tokio::task::spawn_blocking(move || Broker::open(cfg))
            .await
            .unwrap()
            .unwrap();
        let fill = |topic: &'static str, partitions: u32| {
            let broker = broker.clone();
            async move {
                for p in 0..partitions {
                    // 100 KiB a partition, in batches of about 4 KiB.
                    for _ in 0..25 {
                        broker
                            .produce(topic, Some(p), None, batch(&[7u8; 4096]))
                            .await
                            .unwrap();
                    }
                }
            }
        };
        let per_partition = |topic: &str| {
            broker
                .topic(topic)
                .unwrap()
                .partitions
                .iter()
                .map(|p| p.log.hot_tail_bytes())
                .max()
                .unwrap()
        };
        broker
            .create_topic(
                "a",
                Some(TopicConfig {
                    partitions: 2,
                    ..TopicConfig::default()
                }),
            )
            .await
            .unwrap();
        fill("a", 2).await;
        // Two partitions: each its full 64 KiB (less than one batch more).
        let a = per_partition("a");
        assert!(a <= 64 << 10 && a > 56 << 10, "{a}");
        broker
            .create_topic(
                "b",
                Some(TopicConfig {
                    partitions: 6,
                    ..TopicConfig::default()
                }),
            )
            .await
            .unwrap();
        // Eight: 32 KiB each, the tails already held cut down at once.
        assert!(per_partition("a") <= 32 << 10, "{}", per_partition("a"));
        fill("b", 6).await;
        fill("a", 2).await;
        assert!(per_partition("b") <= 32 << 10);
        assert!(
            broker.hot_tail_bytes() <= 256 << 10,
            "{}",
            broker.hot_tail_bytes()
        );
        assert!(
            broker.hot_tail_bytes() > 200 << 10,
            "{}",
            broker.hot_tail_bytes()
        );
        // Two again: a's tails grow back to 64 KiB as it is written.
        broker.delete_topic("b").await.unwrap();
        fill("a", 2).await;
        let a = per_partition("a");
        assert!(a <= 64 << 10 && a > 56 << 10, "{a}");
        broker.close().await.unwrap();
    }

    async fn open(storage: &MemStorage) -> Broker {
        let cfg = config(storage);
        tokio::task::spawn_blocking(move || Broker::open(cfg))
            .await
            .unwrap()
            .unwrap()
    }

    async fn records(broker: &Broker, topic: &str) -> u64 {
        broker
            .list_offsets(topic, 0, OffsetSpec::Latest)
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deleting_a_topic_frees_space_on_a_full_disk() {
        let storage = MemStorage::new();
        let broker = open(&storage).await;
        broker.create_topic("big", None).await.unwrap();
        broker.create_topic("small", None).await.unwrap();
        broker
            .produce("small", Some(0), None, batch(b"before"))
            .await
            .unwrap();
        storage.set_capacity(Some(storage.used_bytes() + (256 << 10)));
        let value = vec![7u8; 16 << 10];
        let full = loop {
            match broker.produce("big", Some(0), None, batch(&value)).await {
                Ok(_) => {}
                Err(e) => break e,
            }
        };
        assert_eq!(full.kind(), ErrorKind::StorageFull, "{full}");
        // To the last byte: even the smallest batch no longer fits.
        while broker
            .produce("big", Some(0), None, batch(b""))
            .await
            .is_ok()
        {}
        let err = broker
            .produce("small", Some(0), None, batch(b"refused"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::StorageFull);
        // The disk is full, and deleting the topic that filled it frees it.
        broker.delete_topic("big").await.unwrap();
        broker
            .produce("small", Some(0), None, batch(b"after"))
            .await
            .unwrap();
        assert_eq!(records(&broker, "small").await, 2);
        broker.close().await.unwrap();
        let broker = open(&storage.crash_image(CrashMode::SyncedOnly)).await;
        assert!(broker.partition_count("big").is_none());
        assert_eq!(records(&broker, "small").await, 2);
        broker.close().await.unwrap();
    }

    /// Creating and deleting a topic, with the process dying at the `n`th I/O operation of
    /// either, then restarting from what the disk kept: the topic is there whole or not at
    /// all, the other topic untouched, and a topic made again under the name starts empty.
    /// Topic ids: one per topic, kept across a restart, looked up both ways, and new for a
    /// topic created again under an old name.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn topic_ids_are_kept_and_never_reused() {
        let storage = MemStorage::new();
        let broker = open(&storage).await;
        let a = broker.create_topic("a", None).await.unwrap().id;
        let b = broker.create_topic("b", None).await.unwrap().id;
        assert_ne!(a, b);
        assert_eq!(broker.topic_name_of(&a).as_deref(), Some("a"));
        broker.close().await.unwrap();
        let broker = open(&storage).await;
        assert_eq!(broker.topic_id("a"), Some(a));
        assert_eq!(broker.topic_name_of(&b).as_deref(), Some("b"));
        broker.delete_topic("a").await.unwrap();
        assert_eq!(broker.topic_name_of(&a), None);
        let again = broker.create_topic("a", None).await.unwrap().id;
        assert_ne!(again, a);
        assert_eq!(broker.topic_name_of(&again).as_deref(), Some("a"));
        broker.close().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crash_at_any_step_of_growing_or_altering_a_topic_leaves_it_before_or_after() {
        let mut n = 0;
        loop {
            let storage = MemStorage::new();
            let broker = open(&storage).await;
            broker.create_topic("t", None).await.unwrap();
            broker
                .produce("t", Some(0), None, batch(b"k"))
                .await
                .unwrap();
            let start = storage.op_count();
            storage.inject_faults(start + n, u64::MAX, FaultKind::Dead);
            let grown = broker.add_partitions("t", 3).await.is_ok();
            let mut altered_config = broker.topic_config("t").unwrap();
            altered_config.retention_ms = Some(60_000);
            let altered = grown && broker.alter_topic("t", altered_config).await.is_ok();
            let finished = altered && storage.op_count() < start + n;
            let image = storage.crash_image(CrashMode::SyncedOnly);
            drop(broker);
            let broker = open(&image).await;
            let count = broker.partition_count("t").unwrap();
            assert!(count == 1 || count == 3, "step {n}: {count} partitions");
            if grown {
                assert_eq!(count, 3, "step {n}: an acknowledged growth was lost");
            }
            assert_eq!(records(&broker, "t").await, 1, "step {n}");
            let retention = broker.topic_config("t").unwrap().retention_ms;
            if altered {
                assert_eq!(
                    retention,
                    Some(60_000),
                    "step {n}: an acknowledged change was lost"
                );
            }
            // No partition the metadata does not list is left behind, and growing again
            // starts the new partitions empty.
            let dirs = image.list_subdirs(Path::new("/data/topics/t")).unwrap();
            assert_eq!(dirs.len(), count as usize, "step {n}: {dirs:?}");
            broker.add_partitions("t", 4).await.unwrap();
            assert_eq!(records(&broker, "t").await, 1, "step {n}");
            broker.close().await.unwrap();
            if finished {
                break;
            }
            n += 1;
            assert!(n < 10_000, "the sequence never finished");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crash_at_any_step_of_creating_or_deleting_a_topic_leaves_it_whole_or_gone() {
        let mut n = 0;
        loop {
            let storage = MemStorage::new();
            let broker = open(&storage).await;
            broker.create_topic("keep", None).await.unwrap();
            broker
                .produce("keep", Some(0), None, batch(b"k"))
                .await
                .unwrap();
            let start = storage.op_count();
            storage.inject_faults(start + n, u64::MAX, FaultKind::Dead);
            let created = broker.create_topic("t", None).await.is_ok();
            let produced = created
                && broker
                    .produce("t", Some(0), None, batch(b"v"))
                    .await
                    .is_ok();
            let deleted = produced && broker.delete_topic("t").await.is_ok();
            let finished = deleted && storage.op_count() < start + n;
            let image = storage.crash_image(CrashMode::SyncedOnly);
            drop(broker);
            let broker = open(&image).await;
            assert_eq!(records(&broker, "keep").await, 1, "step {n}");
            match broker.partition_count("t") {
                None => {}
                Some(1) => {
                    let held = records(&broker, "t").await;
                    assert!(held <= 1, "step {n}: {held}");
                    if produced && !deleted {
                        assert_eq!(held, 1, "step {n}: an acknowledged record was lost");
                    }
                }
                Some(other) => panic!("step {n}: {other} partitions"),
            }
            if deleted {
                assert!(
                    broker.partition_count("t").is_none(),
                    "step {n}: a deleted topic came back"
                );
            }
            // Made again, the name starts empty.
            if broker.partition_count("t").is_some() {
                broker.delete_topic("t").await.unwrap();
            }
            broker.create_topic("t", None).await.unwrap();
            assert_eq!(records(&broker, "t").await, 0, "step {n}");
            assert!(
                !image
                    .list_subdirs(Path::new("/data/topics"))
                    .unwrap()
                    .iter()
                    .any(|d| d.ends_with(".deleted")),
                "step {n}: a grave left behind"
            );
            broker.close().await.unwrap();
            if finished {
                break;
            }
            n += 1;
            assert!(n < 10_000, "the sequence never finished");
        }
    }
}
