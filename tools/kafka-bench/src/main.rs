//! Produces or consumes fixed-size records through a Kafka listener with librdkafka (the
//! client library behind kcat, confluent-kafka and most Kafka clients), and prints one JSON
//! line with the throughput.
//!
//! Usage:
//!   kafka-bench produce BOOTSTRAP TOPIC MESSAGES SIZE [key=value librdkafka settings...]
//!   kafka-bench consume BOOTSTRAP TOPIC MESSAGES [key=value ...]
//!   kafka-bench consume-batch BOOTSTRAP TOPIC MESSAGES [key=value ...]
//!
//! produce: sends MESSAGES records of SIZE bytes (acks=all by default), waits for every
//! delivery report; fails if any delivery failed. consume: reads every partition of TOPIC from
//! the beginning until it has MESSAGES records, one `rd_kafka_consumer_poll` per record (what
//! the `rdkafka` crate's consumers do). consume-batch: the same, taking up to 1,000 records per
//! call with `rd_kafka_consume_batch_queue`, librdkafka's batch API (what confluent-kafka's
//! `consume(num_messages)` uses); the `rdkafka` crate does not wrap it, so it is called here
//! through `rdkafka::bindings`.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use std::sync::atomic::{AtomicU64, Ordering};

use rdkafka::consumer::{BaseConsumer, Consumer};
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

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("produce") if args.len() >= 5 => produce(
            &args[1],
            &args[2],
            args[3].parse()?,
            args[4].parse()?,
            &args[5..],
        ),
        Some(op @ ("consume" | "consume-batch")) if args.len() >= 4 => consume(
            &args[1],
            &args[2],
            args[3].parse()?,
            op == "consume-batch",
            &args[4..],
        ),
        _ => bail!(
            "usage: kafka-bench produce BOOTSTRAP TOPIC MESSAGES SIZE [k=v...] | consume[-batch] BOOTSTRAP TOPIC MESSAGES [k=v...]"
        ),
    }
}
