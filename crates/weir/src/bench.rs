//! `weir bench produce|consume|e2e|sync-floor|connections|groups` against a running server
//! (the last two are in `bench_scale`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Subcommand;
use hdrhistogram::Histogram;
use tokio::sync::oneshot;
use weir_batch::{BatchBuilder, RecordSpec};
use weir_client::messages as msg;
use weir_client::producer::{BatchAck, Record, RecordAck};
use weir_client::{Client, PartitionConsumer, Producer, ProducerConfig, Start};

use crate::Conn;

#[derive(Subcommand)]
pub enum BenchCmd {
    /// Produce fixed-size records in batches; report throughput and per-batch latency.
    Produce {
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        opts: Common,
        /// Records per batch.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        /// Concurrent producers, each on its own connection.
        #[arg(long, default_value_t = 1)]
        producers: usize,
        /// Batches in flight per producer.
        #[arg(long, default_value_t = 1)]
        in_flight: usize,
        /// Send record by record through weir-client's `Producer`, which batches them itself
        /// (5 ms linger, 1 MiB batches), as a Kafka client's producer does, instead of sending
        /// pre-built batches of --batch records. Latency is per record, send to acknowledgement.
        #[arg(long, conflicts_with_all = ["batch", "producers", "in_flight", "producer"])]
        records: bool,
        /// Hand each batch of --batch records to weir-client's `Producer` whole
        /// (`send_batch`), as an application with its records at hand would: encoded per
        /// batch, sent in order, up to the producer's window (5 batches) under way, instead
        /// of re-sending one pre-built batch. Batches go to the topic's partitions in turn.
        /// Latency is per batch, from the call to the acknowledgement, so it includes the
        /// wait in the producer's queue (up to `max_queued_bytes`, 64 MiB, ahead of it).
        #[arg(long, conflicts_with_all = ["producers", "in_flight"])]
        producer: bool,
    },
    /// Read a topic partition from the beginning to its end.
    Consume {
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        opts: Common,
        #[arg(long, default_value_t = 0)]
        partition: u32,
        #[arg(long, default_value_t = 4 << 20)]
        max_bytes: u32,
        /// Read through a push subscription (the server streams within a credit window of
        /// --max-bytes, re-granted as records arrive) instead of one fetch at a time. Every
        /// record is decoded, as an application would receive it.
        #[arg(long)]
        push: bool,
        /// With --push, on a compacted topic: take the partition's snapshot (every key's
        /// latest record) to its end marker instead of reading from the beginning; the time
        /// is the time to the last key. Checks every key arrives once.
        #[arg(long, requires = "push")]
        snapshot: bool,
    },
    /// One record at a time through a push subscription: the latency from a produce sent to
    /// both its acknowledgement and the record pushed back. A sequential client: it runs on
    /// one thread.
    E2e {
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        opts: Common,
    },
    /// The floor under one durable message at a time, without a broker: a loopback TCP round
    /// trip whose far end appends the message to a file in --dir and fdatasyncs it before it
    /// answers, in a tight loop. What a durable produce cannot beat on this disk.
    SyncFloor {
        /// Directory for the file (the disk the server's data is on); the file is removed
        /// after.
        #[arg(long)]
        dir: std::path::PathBuf,
        /// Messages in all.
        #[arg(long, default_value_t = 1000)]
        messages: u64,
        /// Bytes per message.
        #[arg(long, default_value_t = 100)]
        size: usize,
        /// text or json.
        #[arg(long, default_value = "text")]
        output: String,
    },
    /// Open many connections and hold them idle; with --server-pid, report the server's
    /// memory per connection. With --rate, each connection produces that many records a
    /// second instead (each awaiting its acknowledgement): report the latency, and the
    /// server's CPU time per record and memory.
    Connections {
        #[command(flatten)]
        conn: Conn,
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// PID of the server, to read its resident memory (and CPU time) before and after.
        #[arg(long)]
        server_pid: Option<u32>,
        /// Seconds to hold idle connections before measuring.
        #[arg(long, default_value_t = 2, conflicts_with = "rate")]
        hold_secs: u64,
        /// Records per second each connection produces (one per request, awaited, the sends
        /// of all connections spread evenly over the period).
        #[arg(long)]
        rate: Option<f64>,
        /// With --rate: seconds measured, after one period of warm-up.
        #[arg(long, default_value_t = 20, requires = "rate")]
        seconds: u64,
        /// With --rate: the topic, created with --partitions if missing.
        #[arg(long, default_value = "bench", requires = "rate")]
        topic: String,
        #[arg(long, default_value_t = 8, requires = "rate")]
        partitions: u32,
        /// With --rate: bytes per record value.
        #[arg(long, default_value_t = 100, requires = "rate")]
        size: usize,
        #[arg(long, default_value = "text")]
        output: String,
    },
    /// Many consumer groups on one topic, every member on its own connection: the time until
    /// all groups settle after joining, and after a member of each is replaced; the server's
    /// CPU with the members idle (heartbeats and long polls) and while they all commit in a
    /// loop (with --server-pid).
    Groups {
        #[command(flatten)]
        conn: Conn,
        #[arg(long, default_value_t = 1)]
        groups: usize,
        /// Members per group.
        #[arg(long, default_value_t = 3)]
        members: usize,
        /// The topic, created with --partitions if missing.
        #[arg(long, default_value = "bench-groups")]
        topic: String,
        #[arg(long, default_value_t = 6)]
        partitions: u32,
        /// Seconds each of the idle and commit phases is measured.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// The members' session timeout; they heartbeat every third of it.
        #[arg(long, default_value_t = 10_000)]
        session_timeout_ms: u64,
        /// PID of the server, to read its CPU time and resident memory.
        #[arg(long)]
        server_pid: Option<u32>,
        #[arg(long, default_value = "text")]
        output: String,
    },
}

#[derive(clap::Args, Clone)]
pub struct Common {
    #[arg(long, default_value = "bench")]
    topic: String,
    /// Records in all.
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// Bytes per record value.
    #[arg(long, default_value_t = 1000)]
    size: usize,
    /// Partitions of the topic, if the bench creates it.
    #[arg(long, default_value_t = 1)]
    partitions: u32,
    /// text or json.
    #[arg(long, default_value = "text")]
    output: String,
}

struct Report {
    name: &'static str,
    messages: u64,
    /// Bytes on the wire: whole record batches.
    bytes: u64,
    /// Bytes of record values only, what a Kafka client's figures count.
    payload_bytes: u64,
    elapsed: Duration,
    latency: Histogram<u64>,
}

impl Report {
    fn print(&self, output: &str) -> Result<()> {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let q = |p: f64| self.latency.value_at_quantile(p);
        if output == "json" {
            println!(
                "{}",
                serde_json::json!({
                    "bench": self.name,
                    "messages": self.messages,
                    "bytes": self.bytes,
                    "seconds": secs,
                    "messages_per_sec": self.messages as f64 / secs,
                    "mb_per_sec": self.bytes as f64 / secs / 1e6,
                    "payload_bytes": self.payload_bytes,
                    "payload_mb_per_sec": self.payload_bytes as f64 / secs / 1e6,
                    "latency_us": {"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999), "max": self.latency.max(), "count": self.latency.len()},
                })
            );
        } else {
            println!(
                "{}: {} messages in {:.2}s: {:.0} msg/s, {:.1} MB/s; latency µs p50={} p90={} p99={} p99.9={} max={}",
                self.name,
                self.messages,
                secs,
                self.messages as f64 / secs,
                self.bytes as f64 / secs / 1e6,
                q(0.5),
                q(0.9),
                q(0.99),
                q(0.999),
                self.latency.max()
            );
        }
        Ok(())
    }
}

pub(crate) fn progress(total: u64, output: &str) -> indicatif::ProgressBar {
    if output == "json" {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} eta {eta}")
            .expect("valid template"),
    );
    bar
}

/// `bench consume --push --snapshot`: one snapshot subscription to its end marker.
async fn snapshot_bench(
    client: &Client,
    opts: &Common,
    partition: u32,
    max_bytes: u32,
) -> Result<()> {
    let start = Instant::now();
    let mut sub = client
        .subscribe_snapshot(
            &opts.topic,
            partition,
            weir_client::SubscribeOptions {
                window_records: u64::MAX / 2,
                window_bytes: u64::from(max_bytes),
                ..Default::default()
            },
        )
        .await?;
    let mut keys = std::collections::HashSet::new();
    let mut latency = Histogram::<u64>::new(3)?;
    let (mut messages, mut bytes, mut payload_bytes) = (0u64, 0u64, 0u64);
    loop {
        let t = Instant::now();
        match sub.next_event().await?.context("subscription ended")? {
            weir_client::PushEvent::Records(b) => {
                latency.record(t.elapsed().as_micros() as u64)?;
                bytes += b.credit_bytes;
                for r in &b.records {
                    messages += 1;
                    payload_bytes += r.value.as_ref().map_or(0, Bytes::len) as u64;
                    if !keys.insert(r.key.clone()) {
                        bail!("key {:?} came twice in the snapshot", r.key);
                    }
                }
            }
            weir_client::PushEvent::SnapshotEnd { .. } => break,
            weir_client::PushEvent::Dropped(d) => bail!("records dropped: {d:?}"),
        }
    }
    Report {
        name: "snapshot",
        messages,
        bytes,
        payload_bytes,
        elapsed: start.elapsed(),
        latency,
    }
    .print(&opts.output)
}

/// Creates the bench topic with `partitions` unless it exists; its partition count.
pub(crate) async fn ensure_topic(client: &Client, topic: &str, partitions: u32) -> Result<u32> {
    if let Some(t) = client.metadata(&[]).await?.iter().find(|t| t.name == topic) {
        return Ok(t.partitions.len() as u32);
    }
    client
        .create_topic(
            topic,
            msg::TopicConfig {
                partitions,
                ..Default::default()
            },
        )
        .await
        .context("creating the bench topic")?;
    Ok(partitions)
}

pub(crate) fn batch_of(records: usize, size: usize) -> Bytes {
    let value = vec![0x61u8; size];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let mut b = BatchBuilder::with_capacity(now, records * (size + 16) + 64);
    for _ in 0..records {
        b.push(RecordSpec::value(&value));
    }
    Bytes::from(b.build())
}

/// What `bench produce --records` and `--producer` send through the `Producer`: a second
/// task awaits the acknowledgements in order, so that sending never waits on them, and takes
/// one latency sample each.
struct AckTask<T> {
    tx: tokio::sync::mpsc::Sender<(Instant, oneshot::Receiver<weir_client::Result<T>>)>,
    task: tokio::task::JoinHandle<Result<Histogram<u64>>>,
}

impl<T: Send + 'static> AckTask<T> {
    /// `records`: how many records an acknowledgement answers for, for the progress bar.
    fn spawn(bar: &indicatif::ProgressBar, records: fn(&T) -> u64) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(
            Instant,
            oneshot::Receiver<weir_client::Result<T>>,
        )>(4096);
        let bar = bar.clone();
        let task = tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3)?;
            // The bar moves by a thousand or more at a time, not once a record.
            let (mut done, mut shown) = (0u64, 0u64);
            while let Some((t, rx)) = rx.recv().await {
                let ack = rx.await.context("producer closed")??;
                h.record(t.elapsed().as_micros() as u64)?;
                done += records(&ack);
                if done - shown >= 1024 {
                    bar.inc(done - shown);
                    shown = done;
                }
            }
            bar.inc(done - shown);
            anyhow::Ok(h)
        });
        AckTask { tx, task }
    }

    /// Hands over a send's acknowledgement; `false` once the task failed (`finish` says why).
    async fn push(&self, sent: Instant, ack: oneshot::Receiver<weir_client::Result<T>>) -> bool {
        self.tx.send((sent, ack)).await.is_ok()
    }

    /// Flushes the producer and returns the latencies, one per acknowledgement.
    async fn finish(self, producer: &Producer) -> Result<Histogram<u64>> {
        drop(self.tx);
        producer.flush().await?;
        self.task.await?
    }
}

/// `bench produce --records`: one `Producer::send` per record.
async fn produce_records(client: Client, opts: &Common) -> Result<()> {
    let producer = Producer::new(client, ProducerConfig::default());
    let value = Bytes::from(vec![0x61u8; opts.size]);
    let bar = progress(opts.messages, &opts.output);
    let acks = AckTask::spawn(&bar, |_: &RecordAck| 1);
    let start = Instant::now();
    for _ in 0..opts.messages {
        let t = Instant::now();
        let rx = producer
            .send(Record::new(&opts.topic, value.clone()))
            .await?;
        if !acks.push(t, rx).await {
            break; // the ack task failed: its error is reported below
        }
    }
    let latency = acks.finish(&producer).await?;
    bar.finish_and_clear();
    if latency.len() != opts.messages {
        bail!(
            "{} of {} records acknowledged",
            latency.len(),
            opts.messages
        );
    }
    Report {
        name: "produce",
        messages: opts.messages,
        // What a batch of one record would weigh on the wire is not what the producer's
        // batches weigh; count values only.
        bytes: opts.messages * opts.size as u64,
        payload_bytes: opts.messages * opts.size as u64,
        elapsed: start.elapsed(),
        latency,
    }
    .print(&opts.output)
}

/// `bench produce --producer`: batches of `batch` records given whole to one `Producer`
/// (`send_batch`, to the topic's `partitions` in turn).
async fn produce_whole(client: Client, opts: &Common, batch: usize, partitions: u32) -> Result<()> {
    let producer = Producer::new(client, ProducerConfig::default());
    let value = Bytes::from(vec![0x61u8; opts.size]);
    let batches = opts.messages.div_ceil(batch as u64);
    let bar = progress(batches * batch as u64, &opts.output);
    let acks = AckTask::spawn(&bar, |a: &BatchAck| a.records as u64);
    let start = Instant::now();
    for i in 0..batches {
        let records = (0..batch)
            .map(|_| Record {
                value: Some(value.clone()),
                ..Record::default()
            })
            .collect();
        let t = Instant::now();
        let partition = (i % u64::from(partitions.max(1))) as u32;
        let rx = producer.send_batch(&opts.topic, partition, records).await?;
        if !acks.push(t, rx).await {
            break; // the ack task failed: its error is reported below
        }
    }
    let latency = acks.finish(&producer).await?;
    bar.finish_and_clear();
    if latency.len() != batches {
        bail!("{} of {batches} batches acknowledged", latency.len());
    }
    let messages = batches * batch as u64;
    Report {
        name: "produce",
        messages,
        // The producer's batches weigh on the wire what a pre-built batch of as many records
        // does (the same records, all stamped with one timestamp).
        bytes: batches * batch_of(batch, opts.size).len() as u64,
        payload_bytes: messages * opts.size as u64,
        elapsed: start.elapsed(),
        latency,
    }
    .print(&opts.output)
}

fn check_output(o: &str) -> Result<()> {
    if o != "text" && o != "json" {
        bail!("--output must be text or json");
    }
    Ok(())
}

pub async fn run(cmd: BenchCmd) -> Result<()> {
    match cmd {
        BenchCmd::Produce {
            conn,
            opts,
            batch,
            producers,
            in_flight,
            records,
            producer,
        } => {
            check_output(&opts.output)?;
            let admin = conn.connect("weir-bench").await?;
            let partitions = ensure_topic(&admin, &opts.topic, opts.partitions).await?;
            if records {
                return produce_records(admin, &opts).await;
            }
            if producer {
                return produce_whole(admin, &opts, batch, partitions).await;
            }
            let batches = opts.messages.div_ceil(batch as u64);
            let template = batch_of(batch, opts.size);
            let issued = Arc::new(AtomicU64::new(0));
            let bar = progress(batches * batch as u64, &opts.output);
            let start = Instant::now();
            let mut tasks = Vec::new();
            for _ in 0..producers {
                let client = conn.connect("weir-bench").await?;
                for _ in 0..in_flight.max(1) {
                    let (client, issued, template, bar, topic) = (
                        client.clone(),
                        issued.clone(),
                        template.clone(),
                        bar.clone(),
                        opts.topic.clone(),
                    );
                    tasks.push(tokio::spawn(async move {
                        let mut h = Histogram::<u64>::new(3)?;
                        while issued.fetch_add(1, Ordering::Relaxed) < batches {
                            let t = Instant::now();
                            client.produce(&topic, None, None, template.clone()).await?;
                            h.record(t.elapsed().as_micros() as u64)?;
                            bar.inc(batch as u64);
                        }
                        anyhow::Ok(h)
                    }));
                }
            }
            let mut latency = Histogram::<u64>::new(3)?;
            for t in tasks {
                latency.add(t.await??)?;
            }
            bar.finish_and_clear();
            let messages = batches * batch as u64;
            Report {
                name: "produce",
                messages,
                bytes: batches * template.len() as u64,
                payload_bytes: messages * opts.size as u64,
                elapsed: start.elapsed(),
                latency,
            }
            .print(&opts.output)
        }
        BenchCmd::Consume {
            conn,
            opts,
            partition,
            max_bytes,
            push,
            snapshot,
        } => {
            check_output(&opts.output)?;
            let client = conn.connect("weir-bench").await?;
            if snapshot {
                return snapshot_bench(&client, &opts, partition, max_bytes).await;
            }
            let end = client
                .list_offsets(&opts.topic, partition, Start::Latest)
                .await?;
            let mut offset = client
                .list_offsets(&opts.topic, partition, Start::Earliest)
                .await?;
            let target = end.min(offset + opts.messages);
            let bar = progress(target - offset, &opts.output);
            let mut latency = Histogram::<u64>::new(3)?;
            let (mut messages, mut bytes, mut payload_bytes) = (0u64, 0u64, 0u64);
            let start = Instant::now();
            if push {
                let mut sub = client
                    .subscribe(
                        &opts.topic,
                        partition,
                        Start::Offset(offset),
                        u64::MAX / 2,
                        u64::from(max_bytes),
                    )
                    .await?;
                while offset < target {
                    let t = Instant::now();
                    let b = sub.next().await?.context("subscription ended")?;
                    latency.record(t.elapsed().as_micros() as u64)?;
                    bytes += b.credit_bytes;
                    // Records, not offsets: a compacted partition has gaps.
                    for r in b
                        .records
                        .iter()
                        .filter(|r| r.offset >= offset && r.offset < target)
                    {
                        messages += 1;
                        payload_bytes += r.value.as_ref().map_or(0, Bytes::len) as u64;
                    }
                    if let Some(last) = b.records.last() {
                        bar.inc((last.offset + 1).min(target) - offset);
                        offset = last.offset + 1;
                    }
                }
            } else {
                // weir-client's consumer: every batch CRC-checked and every record decoded for
                // the application, the next fetch sent while this one is decoded.
                let mut consumer =
                    PartitionConsumer::new(client, &opts.topic, partition, Start::Offset(offset))
                        .await?;
                consumer.max_bytes = max_bytes;
                while consumer.position() < target {
                    let t = Instant::now();
                    let records = consumer.poll(Duration::from_secs(1)).await?;
                    latency.record(t.elapsed().as_micros() as u64)?;
                    let before = messages;
                    for r in records.iter().filter(|r| r.offset < target) {
                        messages += 1;
                        payload_bytes += r.value.as_ref().map_or(0, Bytes::len) as u64;
                    }
                    bar.inc(messages - before);
                }
                bytes = consumer.fetched_bytes();
            }
            bar.finish_and_clear();
            Report {
                name: "consume",
                messages,
                bytes,
                payload_bytes,
                elapsed: start.elapsed(),
                latency,
            }
            .print(&opts.output)
        }
        BenchCmd::E2e { conn, opts } => {
            check_output(&opts.output)?;
            let client = conn.connect("weir-bench").await?;
            ensure_topic(&client, &opts.topic, opts.partitions).await?;
            let consumer = conn.connect("weir-bench").await?;
            let mut sub = consumer
                .subscribe(&opts.topic, 0, Start::Latest, 10_000, 64 << 20)
                .await?;
            let one = batch_of(1, opts.size);
            let mut latency = Histogram::<u64>::new(3)?;
            let bar = progress(opts.messages, &opts.output);
            let start = Instant::now();
            for _ in 0..opts.messages {
                let t = Instant::now();
                // The ack and the push are awaited together (either may come first), as
                // tools/compare's e2e commands do.
                let received = async {
                    loop {
                        let b = sub.next().await?.context("subscription ended")?;
                        if !b.records.is_empty() {
                            return anyhow::Ok(());
                        }
                    }
                };
                let (acked, received) = tokio::join!(
                    client.produce(&opts.topic, Some(0), None, one.clone()),
                    received
                );
                acked?;
                received?;
                latency.record(t.elapsed().as_micros() as u64)?;
                bar.inc(1);
            }
            bar.finish_and_clear();
            Report {
                name: "e2e",
                messages: opts.messages,
                bytes: opts.messages * one.len() as u64,
                payload_bytes: opts.messages * opts.size as u64,
                elapsed: start.elapsed(),
                latency,
            }
            .print(&opts.output)
        }
        BenchCmd::Groups {
            conn,
            groups,
            members,
            topic,
            partitions,
            seconds,
            session_timeout_ms,
            server_pid,
            output,
        } => {
            check_output(&output)?;
            let o = crate::bench_scale::GroupsOptions {
                groups,
                members,
                topic,
                partitions,
                seconds,
                session_timeout: Duration::from_millis(session_timeout_ms),
                server_pid,
                output,
            };
            crate::bench_scale::groups(&conn, o).await
        }
        BenchCmd::SyncFloor {
            dir,
            messages,
            size,
            output,
        } => {
            check_output(&output)?;
            let (elapsed, latency) =
                tokio::task::spawn_blocking(move || sync_floor(&dir, messages, size)).await??;
            Report {
                name: "sync-floor",
                messages,
                bytes: messages * size as u64,
                payload_bytes: messages * size as u64,
                elapsed,
                latency,
            }
            .print(&output)
        }
        BenchCmd::Connections {
            conn,
            count,
            server_pid,
            hold_secs,
            rate,
            seconds,
            topic,
            partitions,
            size,
            output,
        } => {
            check_output(&output)?;
            if let Some(rate) = rate {
                let o = crate::bench_scale::BusyOptions {
                    count,
                    rate,
                    seconds,
                    topic,
                    partitions,
                    size,
                    server_pid,
                    output,
                };
                return crate::bench_scale::busy_connections(&conn, o).await;
            }
            let rss = crate::bench_scale::rss;
            let before = server_pid.and_then(rss);
            let bar = progress(count as u64, &output);
            let mut clients = Vec::with_capacity(count);
            let tls = conn.client_tls()?;
            let start = Instant::now();
            for _ in 0..count {
                clients.push(Client::connect_with(&conn.addr, "weir-bench", tls.clone()).await?);
                bar.inc(1);
            }
            bar.finish_and_clear();
            let opened = start.elapsed();
            tokio::time::sleep(Duration::from_secs(hold_secs)).await;
            let after = server_pid.and_then(rss);
            let per_conn = before
                .zip(after)
                .map(|(b, a)| a.saturating_sub(b) as f64 / count as f64);
            if output == "json" {
                println!(
                    "{}",
                    serde_json::json!({"bench": "connections", "connections": count, "open_seconds": opened.as_secs_f64(), "server_rss_before": before, "server_rss_after": after, "server_bytes_per_connection": per_conn})
                );
            } else {
                println!(
                    "connections: {count} opened in {:.2}s{}",
                    opened.as_secs_f64(),
                    per_conn.map_or(String::new(), |b| format!(
                        "; server RSS grew {:.0} bytes per connection",
                        b
                    ))
                );
            }
            drop(clients);
            Ok(())
        }
    }
}

/// `weir bench sync-floor`: a client thread sends `size` bytes over loopback TCP and waits
/// for one byte back; the server thread reads them, appends them to a file and fdatasyncs it,
/// then answers. Returns the time taken and the round trips' latencies (µs).
fn sync_floor(
    dir: &std::path::Path,
    messages: u64,
    size: usize,
) -> Result<(Duration, Histogram<u64>)> {
    use std::io::{Read, Write};
    let path = dir.join(format!("weir-sync-floor-{}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut conn, _) = listener.accept()?;
        conn.set_nodelay(true)?;
        let mut file = file;
        let mut buf = vec![0u8; size];
        for _ in 0..messages {
            conn.read_exact(&mut buf)?;
            file.write_all(&buf)?;
            file.sync_data()?;
            conn.write_all(&[1])?;
        }
        Ok(())
    });
    let run = || -> Result<(Duration, Histogram<u64>)> {
        let mut conn = std::net::TcpStream::connect(addr)?;
        conn.set_nodelay(true)?;
        let msg = vec![b'x'; size];
        let mut ack = [0u8; 1];
        let mut latency = Histogram::<u64>::new(3)?;
        let start = Instant::now();
        for _ in 0..messages {
            let t = Instant::now();
            conn.write_all(&msg)?;
            conn.read_exact(&mut ack)?;
            latency.record(t.elapsed().as_micros() as u64)?;
        }
        Ok((start.elapsed(), latency))
    };
    let result = run();
    let served = server.join();
    let _ = std::fs::remove_file(&path);
    match served {
        Ok(Ok(())) => result,
        Ok(Err(e)) => Err(e).context("the floor's server side failed"),
        Err(_) => anyhow::bail!("the floor's server side panicked"),
    }
}
