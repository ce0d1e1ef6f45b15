//! A batching producer.
//!
//! Records are routed to a partition (explicit, else by key on the protocol's ring, else a
//! sticky partition per batch for keyless records), gathered per partition into one record
//! batch until it reaches `batch_bytes` or has waited `linger`, and sent. Records given whole
//! with `send_batch` go at once as a batch of their own. Order within a partition is the
//! order of `send` and `send_batch` calls.
//!
//! An idempotent producer (the default) takes a producer id from the server and stamps each
//! batch with it, an epoch and the partition's next sequence number. The server then writes
//! each batch once however often it is sent, and refuses a batch that does not follow the last
//! one written. So up to `max_in_flight` batches per partition can be under way at once: if one
//! fails and is retried, those behind it are refused until it is written, and retried in turn,
//! never written ahead of it; and a batch whose answer was lost (a timeout) can be sent again
//! without being stored twice. A batch that fails for good takes those sent after it on the
//! same partition with it (their records get the error that ended them, often
//! `OutOfOrderSequence`); once they are all answered the partition starts a new epoch, from
//! sequence 0, and goes on with the next batches. A dropped connection is retried too (the
//! client dials the server again; the batches under way resend in order) for up to
//! `reconnect_timeout` (30 s by default). After a server restart the server rebuilds
//! producers' sequences from the end of each partition's log, so the batches under way across
//! it are recognised too; they are not for a producer the server has forgotten (none of its
//! batches in that tail, or forgotten among very many producers).
//!
//! Without idempotence (turned off, sending without acknowledgement, or a server that does not
//! know producer ids), one batch per partition is in flight, so a retried batch can never be
//! overtaken by a later one, and only errors the server answered with are retried.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use completions::Completions;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use weir_batch::{BatchBuilder, Compression, RecordSpec};
use weir_wire::Ring;

use crate::Client;
use crate::error::{ClientError, Result};

/// Producer settings. Every default is documented on its field.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// How long a batch may wait for more records. Default 5 ms.
    pub linger: Duration,
    /// A batch is sent once it holds this many bytes. Default 1 MiB.
    pub batch_bytes: usize,
    /// Send without acknowledgement (fire and forget). Default false.
    pub no_ack: bool,
    /// Retries of a batch that failed with a retriable error. Default 5.
    pub retries: u32,
    /// Wait before a retry, doubled each time. Default 100 ms.
    pub retry_backoff: Duration,
    /// How long an idempotent producer's batch keeps trying after its connection dropped
    /// (a server restarting, say), dialing again with the same doubling wait, at most 1 s
    /// apart. Those attempts do not count against `retries`. Default 30 s.
    pub reconnect_timeout: Duration,
    /// Records waiting to be sent or answered, across partitions, before `send` waits.
    /// Default 100,000.
    pub max_queued: usize,
    /// Bytes of records (keys, values, headers) waiting to be sent or answered, across
    /// partitions, before `send` waits, as Kafka's `buffer.memory` bounds a producer's memory.
    /// Default 64 MiB. A record larger than this waits until nothing else is queued, then
    /// goes alone.
    pub max_queued_bytes: usize,
    /// Codec for each batch's records, as Kafka producers compress (readers through every
    /// door decompress them). Default none.
    pub compression: Compression,
    /// Stamp batches with a producer id and sequence numbers, so that retries neither store a
    /// batch twice nor reorder (see the module docs). Default true; off without acks.
    pub idempotent: bool,
    /// Batches per partition under way at once when idempotent (1 otherwise). Default 5, and
    /// at most 5: the server recognises a resent batch among a producer's last five.
    pub max_in_flight: usize,
}

/// Most batches per partition an idempotent producer has under way.
pub const MAX_IN_FLIGHT: usize = 5;

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            linger: Duration::from_millis(5),
            batch_bytes: 1 << 20,
            no_ack: false,
            retries: 5,
            retry_backoff: Duration::from_millis(100),
            reconnect_timeout: Duration::from_secs(30),
            max_queued: 100_000,
            max_queued_bytes: 64 << 20,
            compression: Compression::None,
            idempotent: true,
            max_in_flight: MAX_IN_FLIGHT,
        }
    }
}

/// Where a record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordAck {
    pub partition: u32,
    /// `None` when sent without acknowledgement.
    pub offset: Option<u64>,
}

/// Where a batch given to [`Producer::send_batch`] landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchAck {
    pub partition: u32,
    /// The first record's offset (the others follow it); `None` when sent without
    /// acknowledgement.
    pub base_offset: Option<u64>,
    /// Records in the batch.
    pub records: usize,
}

/// A record to send.
#[derive(Debug, Clone, Default)]
pub struct Record {
    pub topic: String,
    pub partition: Option<u32>,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
    /// Milliseconds since the epoch; default now.
    pub timestamp: Option<i64>,
}

impl Record {
    pub fn new(topic: &str, value: impl Into<Bytes>) -> Self {
        Self {
            topic: topic.to_string(),
            value: Some(value.into()),
            ..Self::default()
        }
    }

    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    pub fn header(mut self, key: &str, value: impl Into<Bytes>) -> Self {
        self.headers.push((key.to_string(), Some(value.into())));
        self
    }

    pub fn partition(mut self, partition: u32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// The fewest bytes the record takes in an uncompressed batch: its key, value and
    /// headers, and a byte for each length and count around them.
    fn least_encoded(&self) -> usize {
        7 + self.key.as_ref().map_or(0, Bytes::len)
            + self.value.as_ref().map_or(0, Bytes::len)
            + self
                .headers
                .iter()
                .map(|(k, v)| 2 + k.len() + v.as_ref().map_or(0, Bytes::len))
                .sum::<usize>()
    }

    /// What the record counts against `max_queued_bytes` and `batch_bytes`: its key, value and
    /// headers, and a generous allowance for the lengths and counts around them (24 bytes
    /// a record, 4 a header).
    fn size(&self) -> usize {
        self.least_encoded() + 17 + 2 * self.headers.len()
    }
}

/// A record's acknowledgement channel.
type Ack = oneshot::Sender<Result<RecordAck>>;

/// How a batch's records are answered.
enum Acks {
    /// Each on its own channel (`send`).
    Each(Vec<Ack>),
    /// All at once (`send_batch`): one channel, not one per record.
    Whole(oneshot::Sender<Result<BatchAck>>),
}

impl Acks {
    /// Answers every record: `Ok` with the partition and the first record's offset (`None`
    /// without acknowledgement), or the error that ended the batch.
    fn answer(self, records: usize, r: std::result::Result<(u32, Option<u64>), &ClientError>) {
        match self {
            Acks::Each(acks) => {
                for (i, ack) in acks.into_iter().enumerate() {
                    let _ = ack.send(match r {
                        Ok((partition, base)) => Ok(RecordAck {
                            partition,
                            offset: base.map(|b| b + i as u64),
                        }),
                        Err(e) => Err(e.clone_lossy()),
                    });
                }
            }
            Acks::Whole(ack) => {
                let _ = ack.send(match r {
                    Ok((partition, base_offset)) => Ok(BatchAck {
                        partition,
                        base_offset,
                        records,
                    }),
                    Err(e) => Err(e.clone_lossy()),
                });
            }
        }
    }
}

/// A record's place among `max_queued` records and `max_queued_bytes` bytes. A batch holds
/// its records' places merged, released (in one step) once the batch is answered.
struct Place {
    record: tokio::sync::OwnedSemaphorePermit,
    bytes: tokio::sync::OwnedSemaphorePermit,
}

impl Place {
    fn merge(&mut self, other: Place) {
        self.record.merge(other.record);
        self.bytes.merge(other.bytes);
    }
}

/// A place on `semaphore` for `n` units: without building a future when they are free.
async fn take(
    semaphore: &Arc<tokio::sync::Semaphore>,
    n: u32,
) -> Result<tokio::sync::OwnedSemaphorePermit> {
    match semaphore.clone().try_acquire_many_owned(n) {
        Ok(permit) => Ok(permit),
        Err(tokio::sync::TryAcquireError::NoPermits) => semaphore
            .clone()
            .acquire_many_owned(n)
            .await
            .map_err(|_| ClientError::Closed),
        Err(tokio::sync::TryAcquireError::Closed) => Err(ClientError::Closed),
    }
}

enum Cmd {
    Send(Record, Ack, Place),
    SendBatch(Whole),
    Flush(oneshot::Sender<()>),
}

/// Records given to `send_batch`: sent as they are, in one batch.
struct Whole {
    topic: String,
    partition: u32,
    records: Vec<Record>,
    ack: oneshot::Sender<Result<BatchAck>>,
    place: Place,
}

/// A batching, ordered producer. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Producer {
    tx: mpsc::Sender<Cmd>,
    /// For the server's request limit ([`Producer::check_fits`]).
    client: Client,
    compression: Compression,
    queued: Arc<tokio::sync::Semaphore>,
    queued_bytes: Arc<tokio::sync::Semaphore>,
    /// `max_queued`, as the semaphore holds it.
    max_records: u32,
    /// `max_queued_bytes`, as the semaphore holds it.
    max_bytes: u32,
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Cmd::Send(..) => "Send",
            Cmd::SendBatch(..) => "SendBatch",
            Cmd::Flush(_) => "Flush",
        })
    }
}

impl Producer {
    pub fn new(client: Client, config: ProducerConfig) -> Producer {
        let max_records = config.max_queued.clamp(
            1,
            tokio::sync::Semaphore::MAX_PERMITS.min(u32::MAX as usize),
        ) as u32;
        let queued = Arc::new(tokio::sync::Semaphore::new(max_records as usize));
        let max_bytes = config.max_queued_bytes.clamp(1, u32::MAX as usize) as u32;
        let queued_bytes = Arc::new(tokio::sync::Semaphore::new(max_bytes as usize));
        let (tx, rx) = mpsc::channel(1024);
        let compression = config.compression;
        tokio::spawn(run(client.clone(), config, rx));
        Producer {
            tx,
            client,
            compression,
            queued,
            queued_bytes,
            max_records,
            max_bytes,
        }
    }

    /// Queues a record and returns a receiver of its acknowledgement, so many records can be
    /// in flight. Waits only while `max_queued` records or `max_queued_bytes` bytes are
    /// already waiting. A record that cannot fit in a request to the server (its frame limit)
    /// is refused at once, uncompressed, as Kafka refuses one over `max.request.size`.
    pub async fn send(&self, record: Record) -> Result<oneshot::Receiver<Result<RecordAck>>> {
        self.check_fits(record.least_encoded(), "record")?;
        let size = u32::try_from(record.size()).unwrap_or(u32::MAX);
        let place = Place {
            record: take(&self.queued, 1).await?,
            bytes: take(&self.queued_bytes, size.min(self.max_bytes)).await?,
        };
        let (ack, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Send(record, ack, place))
            .await
            .map_err(|_| ClientError::Closed)?;
        Ok(rx)
    }

    /// Sends `records` to `partition` of `topic` as one batch of their own, at once (no linger),
    /// after every record sent to that partition before them, and returns a receiver of their
    /// acknowledgement, one for all of them: as Iggy's `send_messages` takes a batch of
    /// messages, without waiting for the answer before the next call. Each record's own `topic`
    /// and `partition` are not used (its key, value, headers and timestamp are). Batches given
    /// this way follow the same window, retries and order as those `send` gathers. One larger
    /// than the topic's `max_batch_bytes` is refused by the server and, like any batch that
    /// fails for good, fails those sent after it to the same partition too (module docs). One
    /// that cannot fit in a request at all (the server's frame limit,
    /// `native.max_frame_bytes`, 16 MiB by default) is refused here, before it is queued, if
    /// uncompressed (compressed, when it is sent).
    /// Waits while the records would exceed `max_queued` or `max_queued_bytes`: a batch larger
    /// than either waits until nothing else is queued (records `send` left in an open batch of
    /// that partition go at its `linger`), then goes alone. Empty `records` is an error.
    pub async fn send_batch(
        &self,
        topic: &str,
        partition: u32,
        records: Vec<Record>,
    ) -> Result<oneshot::Receiver<Result<BatchAck>>> {
        if records.is_empty() {
            return Err(ClientError::Invalid(
                "a batch needs at least one record".into(),
            ));
        }
        self.check_fits(records.iter().map(Record::least_encoded).sum(), "batch")?;
        let count = u32::try_from(records.len()).unwrap_or(u32::MAX);
        let size: usize = records.iter().map(Record::size).sum();
        let size = u32::try_from(size).unwrap_or(u32::MAX);
        let place = Place {
            record: take(&self.queued, count.min(self.max_records)).await?,
            bytes: take(&self.queued_bytes, size.min(self.max_bytes)).await?,
        };
        let (ack, rx) = oneshot::channel();
        self.tx
            .send(Cmd::SendBatch(Whole {
                topic: topic.to_string(),
                partition,
                records,
                ack,
                place,
            }))
            .await
            .map_err(|_| ClientError::Closed)?;
        Ok(rx)
    }

    /// Refuses, with `ClientError::Invalid`, records that could not fit in one request to the
    /// server however they were batched (`least`: the fewest bytes they encode to), as a
    /// Kafka producer refuses a record over `max.request.size` at `send`. Sent, they would be
    /// refused after taking their sequence numbers, and the batches behind them on their
    /// partition with them. Compressed batches may shrink below it: not checked here.
    fn check_fits(&self, least: usize, what: &str) -> Result<()> {
        if self.compression != Compression::None {
            return Ok(());
        }
        let max = self.client.max_request_bytes();
        // A request's frame around its batch: the frame header, the produce message (topic,
        // partition: counted as none), the batch header.
        let least = least + 10 + 4 + weir_batch::HEADER_LEN;
        if least > max {
            return Err(ClientError::Invalid(format!(
                "a {what} of at least {least} bytes does not fit in a request to the server \
                 (its frame limit is {max} bytes)"
            )));
        }
        Ok(())
    }

    /// Sends a record and waits until it is acknowledged.
    pub async fn send_and_wait(&self, record: Record) -> Result<RecordAck> {
        self.send(record)
            .await?
            .await
            .map_err(|_| ClientError::Closed)?
    }

    /// Sends everything queued and waits for the answers.
    pub async fn flush(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Flush(tx))
            .await
            .map_err(|_| ClientError::Closed)?;
        rx.await.map_err(|_| ClientError::Closed)
    }
}

struct Batch {
    records: Vec<Record>,
    /// Each record's acknowledgement (`send`), or one for all (`send_batch`).
    acks: Acks,
    /// The records' places among `max_queued` and `max_queued_bytes`, merged.
    places: Option<Place>,
    bytes: usize,
    started: Instant,
    /// Order in which batches were sealed; a flush waits for the ones sealed before it.
    seq: u64,
}

type Part = (Arc<str>, u32);

/// The producer's maps are looked up for every record: a fast hash (their keys are topic names
/// and partitions the application chose, not an attacker).
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Completions of in-flight batches, without pulling in a futures crate: each send runs as a
/// task that reports back on a channel.
mod completions {
    use tokio::sync::mpsc;

    pub(super) struct Completions<T> {
        pub tx: mpsc::UnboundedSender<T>,
        pub rx: mpsc::UnboundedReceiver<T>,
    }

    impl<T> Completions<T> {
        pub fn new() -> Self {
            let (tx, rx) = mpsc::unbounded_channel();
            Self { tx, rx }
        }
    }
}

struct State {
    client: Client,
    config: ProducerConfig,
    rings: Map<Arc<str>, Ring>,
    sticky: Map<Arc<str>, u32>,
    open: Map<Part, Batch>,
    ready: Map<Part, VecDeque<Batch>>,
    /// Per partition, the batches sent from the oldest one not yet answered on, in order, and
    /// whether each was answered. The window bounds this span, not the count unanswered: the
    /// server recognises a resent batch only among a producer's last five on a partition.
    in_flight: Map<Part, VecDeque<(u64, bool)>>,
    /// The producer id, when idempotent.
    producer_id: Option<i64>,
    /// Each partition's epoch and next sequence number, when idempotent.
    sequences: Map<Part, Sequence>,
    /// Partitions that ran out of epochs, produced to without idempotence.
    unsequenced: HashSet<Part, foldhash::fast::RandomState>,
    /// Per partition, what the last batch handed to a task tells once it was sent, and once
    /// its task ended.
    sent_order: Map<Part, (oneshot::Receiver<()>, oneshot::Receiver<()>)>,
    /// Flushes waiting, each for every batch sealed up to its sequence number.
    flushes: Vec<(u64, oneshot::Sender<()>)>,
    /// Sequence numbers of sealed batches not yet answered.
    outstanding: std::collections::BTreeSet<u64>,
    next_seq: u64,
    done: Completions<Done>,
    /// The topic of the last record added.
    last_topic: Option<Arc<str>>,
}

/// A partition's place in an idempotent producer's sequence.
struct Sequence {
    epoch: i16,
    next: i32,
    state: Arc<EpochState>,
}

/// What the batches of one partition's epoch learn from each other.
struct EpochState {
    /// A batch was written. Until then one batch is under way at a time: the server takes a
    /// producer's first batch on a partition whatever its sequence (it may have forgotten the
    /// producer), so a second one sent beside it could be written first if the first fails.
    confirmed: std::sync::atomic::AtomicBool,
    /// The first batch (by [`Batch::seq`]) that failed for good, `u64::MAX` while none has.
    /// Those under way behind it are refused (they must not be written after it), so they
    /// stop retrying; those before it go on. No new batch goes out until all are answered and
    /// the partition has moved to the next epoch.
    failed_from: std::sync::atomic::AtomicU64,
}

impl Default for EpochState {
    fn default() -> Self {
        EpochState {
            confirmed: Default::default(),
            failed_from: std::sync::atomic::AtomicU64::new(u64::MAX),
        }
    }
}

impl EpochState {
    fn fail(&self, batch: u64) {
        self.failed_from.fetch_min(batch, Ordering::AcqRel);
    }

    fn failed(&self) -> bool {
        self.failed_from.load(Ordering::Acquire) != u64::MAX
    }

    /// Whether a batch sent before `batch` failed for good.
    fn failed_before(&self, batch: u64) -> bool {
        self.failed_from.load(Ordering::Acquire) < batch
    }
}

/// A batch's answer, as its task reports it.
struct Done {
    part: Part,
    seq: u64,
}

/// Commands the producer's task takes from its channel per turn of its loop.
const DRAIN_AT_ONCE: usize = 1024;

/// A producer id, or `None` to go on without idempotence: the server does not know producer
/// ids (an older weir), or could not give one (said in a warning).
async fn producer_id(client: &Client, config: &ProducerConfig) -> Option<i64> {
    if !config.idempotent || config.no_ack {
        return None;
    }
    match client.init_producer().await {
        Ok(id) => Some(id),
        Err(e) => {
            if !matches!(
                e.code(),
                Some(weir_wire::ErrorCode::UnknownApi | weir_wire::ErrorCode::UnsupportedVersion)
            ) {
                tracing::warn!(error = %e, "no producer id; producing without idempotence");
            }
            None
        }
    }
}

async fn run(client: Client, config: ProducerConfig, mut rx: mpsc::Receiver<Cmd>) {
    let producer_id = producer_id(&client, &config).await;
    let mut s = State {
        client,
        config,
        rings: Map::default(),
        sticky: Map::default(),
        open: Map::default(),
        ready: Map::default(),
        in_flight: Map::default(),
        producer_id,
        sequences: Map::default(),
        unsequenced: HashSet::default(),
        sent_order: Map::default(),
        flushes: Vec::new(),
        outstanding: std::collections::BTreeSet::new(),
        next_seq: 1,
        done: Completions::new(),
        last_topic: None,
    };
    let mut closed = false;
    loop {
        let deadline = s.open.values().map(|b| b.started + s.config.linger).min();
        tokio::select! {
            cmd = rx.recv(), if !closed => match cmd {
                Some(Cmd::Send(record, ack, place)) => {
                    s.add(record, ack, place).await;
                    // Take what else is queued without a turn through this select (which
                    // arms the linger timer anew each time): a busy sender's records cost a
                    // channel read each, not a loop turn each.
                    for _ in 0..DRAIN_AT_ONCE {
                        match rx.try_recv() {
                            Ok(Cmd::Send(record, ack, place)) => {
                                let sealed = s.next_seq;
                                s.add(record, ack, place).await;
                                // A batch filled up: off it goes, not after the drain.
                                if s.next_seq != sealed {
                                    s.dispatch();
                                }
                            }
                            Ok(Cmd::SendBatch(whole)) => {
                                s.add_whole(whole);
                                s.dispatch();
                            }
                            Ok(Cmd::Flush(tx)) => {
                                s.flush(tx);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                }
                Some(Cmd::SendBatch(whole)) => s.add_whole(whole),
                Some(Cmd::Flush(tx)) => s.flush(tx),
                None => {
                    closed = true;
                    s.seal_all();
                }
            },
            Some(done) = s.done.rx.recv() => s.answered(done),
            _ = sleep_until(deadline) => {
                let now = Instant::now();
                let due: Vec<Part> = s.open.iter().filter(|(_, b)| b.started + s.config.linger <= now).map(|(p, _)| p.clone()).collect();
                for p in due {
                    s.seal(&p);
                }
            }
        }
        s.dispatch();
        // A flush is done once every batch sealed before it was answered, whatever was sent
        // after it.
        let oldest = s.outstanding.first().copied().unwrap_or(u64::MAX);
        let (finished, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut s.flushes)
            .into_iter()
            .partition(|(upto, _)| *upto < oldest);
        s.flushes = waiting;
        for (_, tx) in finished {
            let _ = tx.send(());
        }
        if closed && s.open.is_empty() && s.outstanding.is_empty() {
            return;
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

impl State {
    async fn ring(&mut self, topic: &Arc<str>) -> Result<&Ring> {
        if !self.rings.contains_key(topic) {
            // The first lookup rides out a server restart as every later request does: a
            // lost connection is dialled again until `reconnect_timeout`.
            let started = Instant::now();
            let mut wait = Duration::from_millis(10);
            let meta = loop {
                match self.client.metadata(&[topic]).await {
                    Ok(meta) => break meta,
                    Err(e)
                        if connection_lost(&e)
                            && started.elapsed() < self.config.reconnect_timeout =>
                    {
                        tracing::debug!(%topic, error = %e, "metadata lookup failed; trying again");
                        tokio::time::sleep(wait).await;
                        wait = wait.saturating_mul(2).min(Duration::from_secs(1));
                    }
                    Err(e) => return Err(e),
                }
            };
            let n = meta.first().map_or(0, |t| t.partitions.len() as u32);
            if n == 0 {
                return Err(ClientError::Server {
                    code: weir_wire::ErrorCode::UnknownTopic,
                    message: format!("topic {topic:?} does not exist"),
                });
            }
            self.rings.insert(topic.clone(), Ring::new(n));
        }
        Ok(&self.rings[topic])
    }

    /// The topic's name, shared: records mostly follow others to the same topic, so the last
    /// one's allocation is reused.
    fn topic(&mut self, name: &str) -> Arc<str> {
        match &self.last_topic {
            Some(t) if **t == *name => t.clone(),
            _ => {
                let t: Arc<str> = Arc::from(name);
                self.last_topic = Some(t.clone());
                t
            }
        }
    }

    /// A batch given whole: sealed at once, after what this partition gathered before it.
    fn add_whole(&mut self, whole: Whole) {
        let part = (self.topic(&whole.topic), whole.partition);
        self.seal(&part);
        let batch = Batch {
            bytes: whole.records.iter().map(Record::size).sum(),
            records: whole.records,
            acks: Acks::Whole(whole.ack),
            places: Some(whole.place),
            started: Instant::now(),
            seq: 0,
        };
        self.open.insert(part.clone(), batch);
        self.seal(&part);
    }

    async fn add(&mut self, record: Record, ack: Ack, place: Place) {
        let topic = self.topic(&record.topic);
        let partition = match (record.partition, &record.key) {
            (Some(p), _) => p,
            (None, key) => {
                let ring = match self.ring(&topic).await {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ack.send(Err(e));
                        return;
                    }
                };
                match key {
                    Some(k) => ring.partition_for(k),
                    None => {
                        let n = ring.partitions();
                        *self
                            .sticky
                            .entry(topic.clone())
                            .or_insert_with(|| rand_index(n))
                    }
                }
            }
        };
        let part = (topic, partition);
        let size = record.size();
        let batch = self.open.entry(part.clone()).or_insert_with(|| Batch {
            records: Vec::new(),
            acks: Acks::Each(Vec::new()),
            places: None,
            bytes: 0,
            started: Instant::now(),
            seq: 0,
        });
        batch.records.push(record);
        // Always `Each`: a batch given whole is sealed as soon as it is opened (`add_whole`).
        debug_assert!(matches!(batch.acks, Acks::Each(_)));
        if let Acks::Each(acks) = &mut batch.acks {
            acks.push(ack);
        }
        match &mut batch.places {
            Some(places) => places.merge(place),
            None => batch.places = Some(place),
        }
        batch.bytes += size;
        if batch.bytes >= self.config.batch_bytes {
            self.seal(&part);
        }
    }

    fn seal(&mut self, part: &Part) {
        if let Some(mut batch) = self.open.remove(part) {
            batch.seq = self.next_seq;
            self.next_seq += 1;
            self.outstanding.insert(batch.seq);
            self.ready.entry(part.clone()).or_default().push_back(batch);
            // Keyless records stick to a partition for one batch, then move on (not when a
            // batch of another partition of the topic is sealed).
            if let Some(next) = self.sticky.get_mut(&part.0)
                && *next == part.1
            {
                let n = self.rings.get(&part.0).map_or(1, Ring::partitions);
                *next = (*next + 1) % n.max(1);
            }
        }
    }

    /// Seals every open batch; `tx` is told once those and all sealed before are answered.
    fn flush(&mut self, tx: oneshot::Sender<()>) {
        self.seal_all();
        self.flushes.push((self.next_seq - 1, tx));
    }

    fn seal_all(&mut self) {
        let parts: Vec<Part> = self.open.keys().cloned().collect();
        for p in parts {
            self.seal(&p);
        }
    }

    fn answered(&mut self, done: Done) {
        self.outstanding.remove(&done.seq);
        let left = match self.in_flight.get_mut(&done.part) {
            Some(span) => {
                if let Some(e) = span.iter_mut().find(|(seq, _)| *seq == done.seq) {
                    e.1 = true;
                }
                while span.front().is_some_and(|(_, answered)| *answered) {
                    span.pop_front();
                }
                span.len()
            }
            None => 0,
        };
        if left == 0 {
            self.in_flight.remove(&done.part);
        }
        if left == 0
            && let Some(sq) = self.sequences.get_mut(&done.part)
            && sq.state.failed()
        {
            // Every batch of the failed epoch is answered: the next start a new one.
            match sq.epoch.checked_add(1) {
                Some(epoch) => {
                    sq.epoch = epoch;
                    sq.next = 0;
                    sq.state = Arc::default();
                }
                // 32,767 epochs failed on this partition: it goes on without idempotence.
                None => {
                    self.sequences.remove(&done.part);
                    self.unsequenced.insert(done.part.clone());
                }
            }
        }
    }

    fn dispatch(&mut self) {
        let parts: Vec<Part> = self
            .ready
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(p, _)| p.clone())
            .collect();
        for part in parts {
            loop {
                let under_way = self.in_flight.get(&part).map_or(0, VecDeque::len);
                // The partition's sequence: from 0 at its first batch. None goes out while
                // its failed epoch's batches are still under way.
                let stamp = match self.producer_id {
                    Some(id) if !self.unsequenced.contains(&part) => {
                        let sq = self
                            .sequences
                            .entry(part.clone())
                            .or_insert_with(|| Sequence {
                                epoch: 0,
                                next: 0,
                                state: Arc::default(),
                            });
                        let window = if sq.state.confirmed.load(Ordering::Acquire) {
                            self.config.max_in_flight.clamp(1, MAX_IN_FLIGHT)
                        } else {
                            1
                        };
                        if under_way >= window || sq.state.failed() {
                            break;
                        }
                        Some((id, sq.epoch, sq.next, sq.state.clone()))
                    }
                    _ if under_way >= 1 => break,
                    _ => None,
                };
                let Some(batch) = self.ready.get_mut(&part).and_then(VecDeque::pop_front) else {
                    break;
                };
                let stamp = stamp.map(|(producer_id, epoch, first, state)| {
                    let count = i32::try_from(batch.records.len()).unwrap_or(i32::MAX);
                    if let Some(sq) = self.sequences.get_mut(&part) {
                        sq.next = next_sequence(first, count);
                    }
                    Stamp {
                        producer_id,
                        epoch,
                        first,
                        state,
                    }
                });
                self.in_flight
                    .entry(part.clone())
                    .or_default()
                    .push_back((batch.seq, false));
                // Batches go out in the order they leave here: each task sends its batch
                // only after the one before it on this partition has sent its own.
                let (sent, next_sent) = oneshot::channel();
                let (finished, next_finished) = oneshot::channel();
                let before = self
                    .sent_order
                    .insert(part.clone(), (next_sent, next_finished));
                let (after, before_finished) = before.unzip();
                let order = Order {
                    after,
                    before_finished,
                    sent,
                    finished,
                };
                let (client, config, done, part) = (
                    self.client.clone(),
                    self.config.clone(),
                    self.done.tx.clone(),
                    part.clone(),
                );
                tokio::spawn(async move {
                    // Reports the answer even if the send panics, so flushes do not hang.
                    let mut answered = Answered {
                        done,
                        part: Some(part.clone()),
                        seq: batch.seq,
                        epoch: stamp.as_ref().map(|s| s.state.clone()),
                    };
                    send_batch(&client, &config, &part, batch, stamp, order).await;
                    answered.epoch = None;
                });
            }
        }
    }
}

/// A batch's place in its partition's order of sending.
struct Order {
    /// Resolves once the batch before it was sent (or its task ended).
    after: Option<oneshot::Receiver<()>>,
    /// Resolves once the task of the batch before it ended.
    before_finished: Option<oneshot::Receiver<()>>,
    /// Told once this batch was sent.
    sent: oneshot::Sender<()>,
    /// Dropped when this batch's task ends.
    finished: oneshot::Sender<()>,
}

/// Tells the producer's loop that a batch's task ended, when dropped.
struct Answered {
    done: mpsc::UnboundedSender<Done>,
    part: Option<Part>,
    seq: u64,
    /// Still set when the send did not return (it panicked): the batch failed, so its epoch
    /// did.
    epoch: Option<Arc<EpochState>>,
}

impl Drop for Answered {
    fn drop(&mut self) {
        if let Some(epoch) = self.epoch.take() {
            epoch.fail(self.seq);
        }
        if let Some(part) = self.part.take() {
            let _ = self.done.send(Done {
                part,
                seq: self.seq,
            });
        }
    }
}

/// The sequence number `count` records after `first`; sequences wrap from `i32::MAX` to 0.
fn next_sequence(first: i32, count: i32) -> i32 {
    let room = i32::MAX - first;
    if count <= room {
        first + count
    } else {
        count - room - 1
    }
}

/// What an idempotent producer stamps on a batch.
struct Stamp {
    producer_id: i64,
    epoch: i16,
    first: i32,
    state: Arc<EpochState>,
}

fn rand_index(n: u32) -> u32 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    nanos % n.max(1)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Sends a batch (retrying as the module docs say) and answers its records.
async fn send_batch(
    client: &Client,
    config: &ProducerConfig,
    part: &Part,
    batch: Batch,
    stamp: Option<Stamp>,
    order: Order,
) {
    let now = now_ms();
    let mut b = BatchBuilder::with_capacity(now, batch.bytes + 128);
    if let Some(st) = &stamp {
        b = b.producer(st.producer_id, st.epoch, st.first);
    }
    for r in &batch.records {
        b.push(RecordSpec {
            key: r.key.as_deref(),
            value: r.value.as_deref(),
            headers: r
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_deref()))
                .collect(),
            timestamp: Some(r.timestamp.unwrap_or(now)),
        });
    }
    let (topic, partition) = (&part.0, part.1);
    let bytes = match b.build_compressed(config.compression) {
        Ok(b) => Bytes::from(b),
        Err(e) => {
            let e = ClientError::Invalid(e.to_string());
            batch.acks.answer(batch.records.len(), Err(&e));
            if let Some(st) = &stamp {
                st.state.fail(batch.seq);
            }
            // Its records are answered: their places are free while this task waits.
            drop(batch.places);
            // The next batch goes out after the one before this, not before it.
            if let Some(before) = order.after {
                let _ = before.await;
            }
            return;
        }
    };
    if let Some(before) = order.after {
        // Err: the task before ended without sending (it could not build its batch).
        let _ = before.await;
    }
    if config.no_ack {
        let r = client
            .produce_no_ack(topic, Some(partition), None, bytes)
            .await;
        batch
            .acks
            .answer(batch.records.len(), r.as_ref().map(|_| (partition, None)));
        let _ = order.sent.send(());
        return;
    }
    // The first attempt is sent here, in the partition's order; retries need no order (the
    // server refuses a batch out of sequence until those before it are written).
    let first = client.produce_sent(topic, partition, bytes.clone());
    let Order {
        sent,
        mut before_finished,
        finished: _finished,
        ..
    } = order;
    let _ = sent.send(());
    let mut backoff = config.retry_backoff;
    let mut attempt = 0;
    // Since when the server cannot be reached, and the wait before dialing again.
    let mut unreachable: Option<Instant> = None;
    let mut redial_wait = config.retry_backoff;
    let mut pending = Some(first);
    let result = loop {
        let r = match pending.take() {
            Some(Ok(answer)) => answer.await,
            Some(Err(e)) => Err(e),
            None => {
                client
                    .produce(topic, Some(partition), None, bytes.clone())
                    .await
            }
        };
        match r {
            // Refused because the batch before this one is not written yet, or cut off with
            // the connection (the batches under way then would reach a new connection in any
            // order, and a server that does not know the producer takes its first batch
            // whatever its sequence): once the batch before has been resent and its task has
            // ended (written, or failed for good), try again, without spending a retry on
            // the wait.
            Err(e)
                if (e.code() == Some(weir_wire::ErrorCode::OutOfOrderSequence)
                    || connection_lost(&e))
                    && before_finished.is_some()
                    && retry(&e, stamp.as_ref(), batch.seq) =>
            {
                if let Some(before) = before_finished.take() {
                    let _ = before.await;
                }
            }
            Err(e)
                if connection_lost(&e)
                    && stamp.is_some()
                    && retry(&e, stamp.as_ref(), batch.seq)
                    && unreachable.get_or_insert_with(Instant::now).elapsed()
                        < config.reconnect_timeout =>
            {
                tracing::debug!(%topic, partition, error = %e, "connection lost; trying again");
                tokio::time::sleep(redial_wait).await;
                redial_wait = redial_wait.saturating_mul(2).min(Duration::from_secs(1));
            }
            Err(e) if attempt < config.retries && retry(&e, stamp.as_ref(), batch.seq) => {
                attempt += 1;
                tracing::debug!(%topic, partition, attempt, error = %e, "produce failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = backoff.saturating_mul(2);
            }
            other => break other,
        }
    };
    match result {
        Ok(a) => {
            if let Some(st) = &stamp {
                st.state.confirmed.store(true, Ordering::Release);
            }
            batch
                .acks
                .answer(batch.records.len(), Ok((a.partition, Some(a.base_offset))));
        }
        Err(e) => {
            if let Some(st) = &stamp {
                // At once, so that the batches behind it stop retrying.
                st.state.fail(batch.seq);
            }
            batch.acks.answer(batch.records.len(), Err(&e));
        }
    }
}

/// Whether `e` says the connection dropped (or could not be made again).
fn connection_lost(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Io(_) | ClientError::Closed | ClientError::Connect { .. }
    )
}

/// Whether batch `seq`, which failed with `e`, is sent again.
fn retry(e: &ClientError, stamp: Option<&Stamp>, seq: u64) -> bool {
    let Some(stamp) = stamp else {
        // Only errors the server answered with: after a timeout the batch may still be
        // appended, and sending it again would store it twice.
        return matches!(e, ClientError::Server { .. }) && e.is_retriable();
    };
    match e.code() {
        // A batch ahead of this one is not written yet (it is being retried): this one will
        // follow it, unless that one failed for good.
        Some(weir_wire::ErrorCode::OutOfOrderSequence) => !stamp.state.failed_before(seq),
        // Retriable answers, timeouts, and a connection that dropped (the next attempt dials
        // the server again): a resent batch that was written after all is recognised and
        // answered with its offsets, after a server restart too.
        _ => e.is_retriable() || connection_lost(e),
    }
}
