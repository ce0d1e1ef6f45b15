//! Produces or consumes fixed-size records through a Kafka listener with librdkafka (the
//! client library behind kcat, confluent-kafka and most Kafka clients), and prints one JSON
//! line with the throughput.
//!
//! Usage:
//!   kafka-bench produce BOOTSTRAP TOPIC MESSAGES SIZE [key=value librdkafka settings...]
//!   kafka-bench latency BOOTSTRAP TOPIC MESSAGES SIZE [key=value ...]
//!   kafka-bench consume BOOTSTRAP TOPIC MESSAGES [key=value ...]
//!   kafka-bench consume-batch BOOTSTRAP TOPIC MESSAGES [key=value ...]
//!   kafka-bench group BOOTSTRAP TOPIC MESSAGES MEMBERS [key=value ...]
//!
//! produce: sends MESSAGES records of SIZE bytes (acks=all by default), waits for every
//! delivery report; fails if any delivery failed. latency: one record at a time (linger.ms=0),
//! each sent once the previous one's delivery report came; prints latency percentiles. consume: reads every partition of TOPIC from
//! the beginning until it has MESSAGES records, one `rd_kafka_consumer_poll` per record (what
//! the `rdkafka` crate's consumers do). consume-batch: the same, taking up to 1,000 records per
//! call with `rd_kafka_consume_batch_queue`, librdkafka's batch API (what confluent-kafka's
//! `consume(num_messages)` uses); the `rdkafka` crate does not wrap it, so it is called here
//! through `rdkafka::bindings`.
//!
//! group: MEMBERS consumers (one thread each) subscribe to TOPIC in a fresh consumer group
//! (auto.offset.reset=earliest, no commits) and report three figures: the join time (start →
//! every member has had an assignment and together they own every partition), the throughput
//! from then until the group has read MESSAGES records (the sum over partitions of the last
//! offset read + 1 in the current assignment, so records read again after a rebalance count
//! once), and the rebalance time (one member closes, → the others own every partition again).
//! Assignments are followed through the rebalance callbacks, so any assignor and either
//! protocol (eager or cooperative) works. Each phase is bounded in time.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::{ClientConfig, ClientContext};

fn config(bootstrap: &str, extra: &[String]) -> Result<ClientConfig> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    for kv in extra {
        let (k, v) = kv.split_once('=').context("settings are key=value")?;
        c.set(k, v);
    }
    Ok(c)
}

/// Counts delivery reports: the crate's default context drops them, failures included.
#[derive(Default)]
struct Deliveries {
    ok: AtomicU64,
    failed: AtomicU64,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let n = if result.is_ok() {
            &self.ok
        } else {
            &self.failed
        };
        n.fetch_add(1, Ordering::Relaxed);
    }
}

fn produce(bootstrap: &str, topic: &str, n: u64, size: usize, extra: &[String]) -> Result<()> {
    let mut c = config(bootstrap, extra)?;
    for (k, v) in [
        ("acks", "all"),
        ("linger.ms", "5"),
        ("batch.size", "1000000"),
        ("queue.buffering.max.kbytes", "1048576"),
        ("queue.buffering.max.messages", "1000000"),
    ] {
        if c.get(k).is_none() {
            c.set(k, v);
        }
    }
    let producer: BaseProducer<Deliveries> = c.create_with_context(Deliveries::default())?;
    // Connected and the topic known before the clock starts, as the native bench and the
    // consumer below are.
    producer
        .client()
        .fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let payload = vec![b'x'; size];
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < n {
        match producer.send(BaseRecord::<(), [u8]>::to(topic).payload(&payload)) {
            Ok(()) => sent += 1,
            Err((
                rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::QueueFull,
                ),
                _,
            )) => {
                producer.poll(Duration::from_millis(1));
            }
            Err((e, _)) => bail!("produce failed: {e}"),
        }
        if sent % 1024 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    // Not `producer.flush`: in the `rdkafka` crate it polls for delivery reports in rounds of
    // 100 ms, each round lasting its whole 100 ms, so a run would end up to 100 ms after its
    // last acknowledgement (a tenth of a 1 GB run, most of a 100 MB one).
    let deadline = Instant::now() + Duration::from_secs(120);
    while producer.in_flight_count() > 0 {
        if Instant::now() > deadline {
            bail!(
                "{} records still unacknowledged after 120 s",
                producer.in_flight_count()
            );
        }
        producer.poll(Duration::from_millis(1));
    }
    let secs = start.elapsed().as_secs_f64();
    let d = producer.context();
    let (ok, failed) = (
        d.ok.load(Ordering::Relaxed),
        d.failed.load(Ordering::Relaxed),
    );
    if ok != n || failed != 0 {
        bail!("{ok} of {n} records delivered, {failed} failed");
    }
    println!(
        "{}",
        serde_json::json!({
            "op": "produce", "messages": n, "size": size, "seconds": secs,
            "msgs_per_sec": n as f64 / secs,
            "mb_per_sec": (n as f64 * size as f64) / secs / 1e6,
        })
    );
    Ok(())
}

/// Signals each delivery report (on the producer's polling thread) to the sender.
struct Signal(Mutex<std::sync::mpsc::Sender<bool>>);

impl ClientContext for Signal {}

impl ProducerContext for Signal {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let _ = self.0.lock().map(|tx| tx.send(result.is_ok()));
    }
}

/// One record at a time: send it (linger.ms=0, acks=all unless overridden), wait for its
/// delivery report, then send the next; prints the rate and the latency percentiles (µs).
/// The reports arrive on the `ThreadedProducer`'s own polling thread, which hands them over at
/// once: a `BaseProducer::poll` on this thread would return only when its timeout ran out.
fn latency(bootstrap: &str, topic: &str, n: u64, size: usize, extra: &[String]) -> Result<()> {
    let mut c = config(bootstrap, extra)?;
    for (k, v) in [("acks", "all"), ("linger.ms", "0")] {
        if c.get(k).is_none() {
            c.set(k, v);
        }
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let producer: rdkafka::producer::ThreadedProducer<Signal> =
        c.create_with_context(Signal(Mutex::new(tx)))?;
    producer
        .client()
        .fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let payload = vec![b'x'; size];
    let mut hist = hdrhistogram::Histogram::<u64>::new(3)?;
    let start = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        producer
            .send(BaseRecord::<(), [u8]>::to(topic).payload(&payload))
            .map_err(|(e, _)| e)
            .context("produce failed")?;
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(true) => {}
            Ok(false) => bail!("record {i} failed"),
            Err(_) => bail!("record {i} unacknowledged after 30 s"),
        }
        hist.record(t.elapsed().as_micros() as u64)?;
    }
    let secs = start.elapsed().as_secs_f64();
    let q = |p| hist.value_at_quantile(p);
    println!(
        "{}",
        serde_json::json!({
            "op": "latency", "messages": n, "size": size, "seconds": secs,
            "messages_per_sec": n as f64 / secs,
            "latency_us": {"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999), "max": hist.max()},
        })
    );
    Ok(())
}

fn consume(bootstrap: &str, topic: &str, n: u64, batch: bool, extra: &[String]) -> Result<()> {
    let mut c = config(bootstrap, extra)?;
    c.set("group.id", "kafka-bench")
        .set("enable.auto.commit", "false");
    let consumer: BaseConsumer = c.create()?;
    let meta = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let parts = meta
        .topics()
        .first()
        .map(|t| t.partitions().len())
        .context("topic not found")?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..parts {
        tpl.add_partition_offset(topic, p as i32, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let start = Instant::now();
    let (mut got, mut bytes) = (0u64, 0u64);
    let deadline = start + Duration::from_secs(300);
    if batch {
        let rk = consumer.client().native_ptr();
        // SAFETY: `rk` is the live consumer's handle; the queue reference taken here is
        // released before `consumer` drops, and every message the batch call hands out is
        // read and destroyed before the next call.
        unsafe {
            let queue = rdkafka::bindings::rd_kafka_queue_get_consumer(rk);
            if queue.is_null() {
                bail!("no consumer queue");
            }
            let mut msgs: Vec<*mut rdkafka::bindings::rd_kafka_message_t> =
                vec![std::ptr::null_mut(); 1000];
            let mut failed = None;
            while got < n && failed.is_none() {
                if Instant::now() > deadline {
                    failed = Some(format!("timed out after {got} of {n} messages"));
                    break;
                }
                // No more than are still wanted: the call returns when the array is full or
                // the timeout passes.
                let want = msgs.len().min((n - got) as usize);
                let k = rdkafka::bindings::rd_kafka_consume_batch_queue(
                    queue,
                    100,
                    msgs.as_mut_ptr(),
                    want,
                );
                if k < 0 {
                    failed = Some("rd_kafka_consume_batch_queue failed".to_string());
                    break;
                }
                for &m in &msgs[..k as usize] {
                    if (*m).err
                        != rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
                    {
                        failed.get_or_insert_with(|| format!("consume error {:?}", (*m).err));
                    } else {
                        got += 1;
                        bytes += (*m).len as u64;
                    }
                    rdkafka::bindings::rd_kafka_message_destroy(m);
                }
            }
            rdkafka::bindings::rd_kafka_queue_destroy(queue);
            if let Some(e) = failed {
                bail!(e);
            }
        }
    } else {
        while got < n {
            if Instant::now() > deadline {
                bail!("timed out after {got} of {n} messages");
            }
            if let Some(m) = consumer.poll(Duration::from_millis(100)) {
                let m = m?;
                got += 1;
                bytes += m.payload().map_or(0, |p| p.len() as u64);
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "op": if batch { "consume-batch" } else { "consume" }, "messages": got, "bytes": bytes, "seconds": secs,
            "msgs_per_sec": got as f64 / secs,
            "mb_per_sec": bytes as f64 / secs / 1e6,
        })
    );
    Ok(())
}

/// Who owns which partition, as the members' rebalance callbacks report it.
struct Owners {
    owner: Vec<Option<usize>>,
    /// Assignments each member has received.
    assigns: Vec<u64>,
    /// Members told to leave: what they still own does not count.
    left: Vec<bool>,
    /// Since when every member has had an assignment and the members still in own every
    /// partition; `None` while not.
    covered_since: Option<Instant>,
    error: Option<String>,
}

impl Owners {
    fn recheck(&mut self) {
        let covered = self.owner.iter().all(|o| o.is_some_and(|m| !self.left[m]))
            && self
                .assigns
                .iter()
                .zip(&self.left)
                .all(|(&n, &left)| left || n > 0);
        if !covered {
            self.covered_since = None;
        } else if self.covered_since.is_none() {
            self.covered_since = Some(Instant::now());
        }
    }

    fn owned(&self) -> usize {
        self.owner.iter().filter(|o| o.is_some()).count()
    }
}

struct Group {
    owners: Mutex<Owners>,
    /// Per partition: the last offset read + 1 since the partition was last assigned.
    next: Vec<AtomicU64>,
    /// The sum of `next` (signed: a member's update and another's reset may pass each other).
    read: AtomicI64,
    bytes: AtomicU64,
    polled: AtomicU64,
    wanted: u64,
    /// Set once the group has joined: until then `read` may reach `wanted` in an earlier
    /// generation (the first member alone can read the topic before the others are in).
    joined: AtomicBool,
    /// When `read` reached `wanted` after the join.
    done_at: OnceLock<Instant>,
    stop: Vec<AtomicBool>,
}

struct Member {
    id: usize,
    group: Arc<Group>,
}

impl ClientContext for Member {}

impl ConsumerContext for Member {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let mut o = self.group.owners.lock().unwrap();
        match rebalance {
            Rebalance::Revoke(tpl) => {
                for e in tpl.elements() {
                    if let Some(slot) = o.owner.get_mut(e.partition() as usize)
                        && *slot == Some(self.id)
                    {
                        *slot = None;
                    }
                }
                o.recheck();
            }
            Rebalance::Error(e) => {
                o.error
                    .get_or_insert_with(|| format!("member {}: {e}", self.id));
            }
            Rebalance::Assign(_) => {}
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let mut o = self.group.owners.lock().unwrap();
            for e in tpl.elements() {
                let p = e.partition() as usize;
                if p < o.owner.len() {
                    o.owner[p] = Some(self.id);
                    // Read again from the start (no commits): forget what was read before.
                    let before = self.group.next[p].swap(0, Ordering::Relaxed);
                    self.group.read.fetch_sub(before as i64, Ordering::Relaxed);
                }
            }
            o.assigns[self.id] += 1;
            o.recheck();
        }
    }
}

fn member(id: usize, config: ClientConfig, topic: String, group: Arc<Group>) -> Result<()> {
    let consumer: BaseConsumer<Member> = config.create_with_context(Member {
        id,
        group: group.clone(),
    })?;
    consumer.subscribe(&[&topic])?;
    let fail = |e: String| {
        let mut o = group.owners.lock().unwrap();
        o.error.get_or_insert(e);
    };
    while !group.stop[id].load(Ordering::Relaxed) {
        match consumer.poll(Duration::from_millis(10)) {
            Some(Ok(m)) => {
                let p = m.partition() as usize;
                let Some(next) = group.next.get(p) else {
                    fail(format!(
                        "member {id}: partition {p} not in the topic's metadata"
                    ));
                    continue;
                };
                let to = m.offset() as u64 + 1;
                let delta = to as i64 - next.swap(to, Ordering::Relaxed) as i64;
                let read = group.read.fetch_add(delta, Ordering::Relaxed) + delta;
                group
                    .bytes
                    .fetch_add(m.payload_len() as u64, Ordering::Relaxed);
                group.polled.fetch_add(1, Ordering::Relaxed);
                if read >= group.wanted as i64 && group.joined.load(Ordering::Relaxed) {
                    let _ = group.done_at.set(Instant::now());
                }
            }
            Some(Err(e)) => fail(format!("member {id}: {e}")),
            None => {}
        }
    }
    // Closing (in the drop) leaves the group: its revoke callback gives its partitions up.
    drop(consumer);
    let mut o = group.owners.lock().unwrap();
    for slot in o.owner.iter_mut().filter(|s| **s == Some(id)) {
        *slot = None;
    }
    o.recheck();
    Ok(())
}

/// Waits until `ready` says so, or fails after `limit` naming the phase.
fn wait_for<T>(
    group: &Group,
    phase: &str,
    limit: Duration,
    mut ready: impl FnMut(&Owners) -> Option<T>,
) -> Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        {
            let o = group.owners.lock().unwrap();
            if let Some(e) = &o.error {
                bail!("{phase}: {e}");
            }
            if let Some(t) = ready(&o) {
                return Ok(t);
            }
            if Instant::now() > deadline {
                bail!(
                    "{phase}: not done after {} s: {} of {} partitions owned, assignments per member {:?}, {} of {} records read",
                    limit.as_secs(),
                    o.owned(),
                    o.owner.len(),
                    o.assigns,
                    group.read.load(Ordering::Relaxed),
                    group.wanted,
                );
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn group(bootstrap: &str, topic: &str, n: u64, members: usize, extra: &[String]) -> Result<()> {
    if members < 2 {
        bail!("a group needs at least 2 members (one leaves to measure the rebalance)");
    }
    let meta_client: BaseConsumer = config(bootstrap, extra)?.create()?;
    let meta = meta_client.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let parts = meta
        .topics()
        .first()
        .map(|t| t.partitions().len())
        .filter(|&p| p > 0)
        .context("topic not found")?;
    drop(meta_client);
    let mut c = config(bootstrap, extra)?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    let group_id = format!("kafka-bench-{}-{nanos}", std::process::id());
    for (k, v) in [
        ("group.id", group_id.as_str()),
        ("auto.offset.reset", "earliest"),
        ("enable.auto.commit", "false"),
    ] {
        if c.get(k).is_none() {
            c.set(k, v);
        }
    }
    let g = Arc::new(Group {
        owners: Mutex::new(Owners {
            owner: vec![None; parts],
            assigns: vec![0; members],
            left: vec![false; members],
            covered_since: None,
            error: None,
        }),
        next: (0..parts).map(|_| AtomicU64::new(0)).collect(),
        read: AtomicI64::new(0),
        bytes: AtomicU64::new(0),
        polled: AtomicU64::new(0),
        wanted: n,
        joined: AtomicBool::new(false),
        done_at: OnceLock::new(),
        stop: (0..members).map(|_| AtomicBool::new(false)).collect(),
    });

    let start = Instant::now();
    let threads: Vec<_> = (0..members)
        .map(|id| {
            let (c, t, g) = (c.clone(), topic.to_string(), g.clone());
            std::thread::spawn(move || {
                if let Err(e) = member(id, c, t, g.clone()) {
                    let mut o = g.owners.lock().unwrap();
                    o.error.get_or_insert(format!("member {id}: {e:#}"));
                }
            })
        })
        .collect();

    let joined = wait_for(&g, "join", Duration::from_secs(60), |o| o.covered_since)?;
    g.joined.store(true, Ordering::Relaxed);
    // A member that read its last record between the join and the flag did not see it: then
    // the count is seen here.
    let done = wait_for(&g, "consume", Duration::from_secs(300), |_| {
        g.done_at.get().copied().or_else(|| {
            (g.read.load(Ordering::Relaxed) >= n as i64)
                .then(|| *g.done_at.get_or_init(Instant::now))
        })
    })?;

    let leaver = members - 1;
    let left = Instant::now();
    {
        let mut o = g.owners.lock().unwrap();
        o.left[leaver] = true;
        o.recheck();
    }
    g.stop[leaver].store(true, Ordering::Relaxed);
    let rebalanced = wait_for(&g, "rebalance", Duration::from_secs(60), |o| {
        o.covered_since
    })?;

    // Close the rest; report whether they closed in time rather than wait without bound.
    for s in &g.stop {
        s.store(true, Ordering::Relaxed);
    }
    let closing = Instant::now();
    while threads.iter().any(|t| !t.is_finished()) && closing.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let closed = threads.iter().all(|t| t.is_finished());
    let close_secs = closed.then(|| closing.elapsed().as_secs_f64());

    let secs = done.duration_since(joined).as_secs_f64();
    let polled = g.polled.load(Ordering::Relaxed).max(1);
    let bytes = g.bytes.load(Ordering::Relaxed) as f64 / polled as f64 * n as f64;
    println!(
        "{}",
        serde_json::json!({
            "op": "group", "partitions": parts, "members": members, "messages": n,
            "join_seconds": joined.duration_since(start).as_secs_f64(),
            "seconds": secs,
            "msgs_per_sec": n as f64 / secs,
            "mb_per_sec": bytes / secs / 1e6,
            "records_polled": g.polled.load(Ordering::Relaxed),
            "rebalance_seconds": rebalanced.duration_since(left).as_secs_f64(),
            "close_seconds": close_secs,
        })
    );
    if !closed {
        eprintln!("kafka-bench group: members still closing after 30 s; exiting without them");
        std::process::exit(0);
    }
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some(op @ ("produce" | "latency")) if args.len() >= 5 => {
            let run = if op == "produce" { produce } else { latency };
            run(
                &args[1],
                &args[2],
                args[3].parse()?,
                args[4].parse()?,
                &args[5..],
            )
        }
        Some(op @ ("consume" | "consume-batch")) if args.len() >= 4 => consume(
            &args[1],
            &args[2],
            args[3].parse()?,
            op == "consume-batch",
            &args[4..],
        ),
        Some("group") if args.len() >= 5 => group(
            &args[1],
            &args[2],
            args[3].parse()?,
            args[4].parse()?,
            &args[5..],
        ),
        _ => bail!(
            "usage: kafka-bench produce|latency BOOTSTRAP TOPIC MESSAGES SIZE [k=v...] | consume[-batch] BOOTSTRAP TOPIC MESSAGES [k=v...] | group BOOTSTRAP TOPIC MESSAGES MEMBERS [k=v...]"
        ),
    }
}
