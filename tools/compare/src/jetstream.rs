//! NATS JetStream workloads: windowed async publish, pull-consumer reads, one-at-a-time
//! publish-to-delivery.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy};
use async_nats::jetstream::context::{Context, ContextBuilder};
use async_nats::jetstream::stream::{self, StorageType};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;

use crate::{Common, Nats, Report, histogram, record};

async fn connect(nats: &Nats, max_ack_inflight: usize) -> Result<(async_nats::Client, Context)> {
    let client = async_nats::connect(&nats.url)
        .await
        .with_context(|| format!("connecting to {}", nats.url))?;
    let js = ContextBuilder::new()
        .timeout(Duration::from_secs(30))
        .max_ack_inflight(max_ack_inflight.max(1))
        .build(client.clone());
    Ok((client, js))
}

/// Deletes the stream if it exists and creates it empty: file storage, one subject named
/// like the stream, no limits.
async fn fresh_stream(js: &Context, name: &str) -> Result<stream::Stream> {
    // Absent on a fresh server: nothing to delete is fine.
    let _ = js.delete_stream(name).await;
    js.create_stream(stream::Config {
        name: name.to_string(),
        subjects: vec![name.to_string()],
        storage: StorageType::File,
        num_replicas: 1,
        ..Default::default()
    })
    .await
    .with_context(|| format!("creating stream {name}"))
}

pub async fn produce(nats: &Nats, opts: &Common, window: usize) -> Result<Report> {
    let (_client, js) = connect(nats, window).await?;
    fresh_stream(&js, &nats.stream).await?;
    let payload = Bytes::from(vec![0x61u8; opts.size]);
    let mut latency = histogram()?;
    let mut pending = FuturesUnordered::new();
    let start = Instant::now();
    for _ in 0..opts.messages {
        while pending.len() >= window {
            let took = pending.next().await.context("ack window empty")??;
            record(&mut latency, took);
        }
        let t = Instant::now();
        let ack = js
            .publish(nats.stream.clone(), payload.clone())
            .await
            .context("publishing")?;
        pending.push(async move {
            ack.await.context("awaiting a publish ack")?;
            anyhow::Ok(t.elapsed())
        });
    }
    while let Some(took) = pending.next().await {
        record(&mut latency, took?);
    }
    let elapsed = start.elapsed();
    Ok(Report {
        system: "nats",
        workload: "produce",
        durability: nats.durability.clone(),
        latency_of: format!("one publish to its ack, {window} in flight"),
        messages: opts.messages,
        bytes: opts.messages * opts.size as u64,
        elapsed,
        latency,
    })
}

pub async fn consume(nats: &Nats, opts: &Common, batch: usize) -> Result<Report> {
    let (_client, js) = connect(nats, 1).await?;
    let mut stream = js
        .get_stream(&nats.stream)
        .await
        .with_context(|| format!("stream {} (run nats-produce first)", nats.stream))?;
    let stored = stream.info().await?.state.messages;
    if stored < opts.messages {
        bail!(
            "stream {} holds {stored} messages, fewer than --messages {}",
            nats.stream,
            opts.messages
        );
    }
    // Ephemeral pull consumer from the first message, no acks: weir's consume reads a
    // partition by offset and commits nothing either.
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::None,
            inactive_threshold: Duration::from_secs(60),
            ..Default::default()
        })
        .await
        .context("creating the pull consumer")?;
    let mut latency = histogram()?;
    let (mut messages, mut bytes, mut empty) = (0u64, 0u64, 0u32);
    let start = Instant::now();
    while messages < opts.messages {
        let want = batch.min((opts.messages - messages) as usize);
        let t = Instant::now();
        let mut got = consumer
            .fetch()
            .max_messages(want)
            .messages()
            .await
            .context("fetching")?;
        let before = messages;
        while let Some(m) = got.next().await {
            let m = m.map_err(|e| anyhow::anyhow!("fetching: {e}"))?;
            bytes += m.payload.len() as u64;
            messages += 1;
        }
        record(&mut latency, t.elapsed());
        if messages == before {
            empty += 1;
            if empty > 100 {
                bail!("fetch keeps returning nothing after {messages} messages");
            }
        }
    }
    let elapsed = start.elapsed();
    Ok(Report {
        system: "nats",
        workload: "consume",
        durability: nats.durability.clone(),
        latency_of: format!("one fetch of up to {batch} messages"),
        messages,
        bytes,
        elapsed,
        latency,
    })
}

pub async fn e2e(nats: &Nats, opts: &Common) -> Result<Report> {
    let (client, js) = connect(nats, 1).await?;
    let stream = fresh_stream(&js, &nats.stream).await?;
    let consumer = stream
        .create_consumer(consumer::push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            filter_subject: nats.stream.clone(),
            deliver_policy: DeliverPolicy::New,
            ..Default::default()
        })
        .await
        .context("creating the ordered push consumer")?;
    let mut delivered = consumer.messages().await.context("subscribing")?;
    let payload = Bytes::from(vec![0x61u8; opts.size]);
    let mut latency = histogram()?;
    let start = Instant::now();
    for _ in 0..opts.messages {
        let t = Instant::now();
        js.publish(nats.stream.clone(), payload.clone())
            .await
            .context("publishing")?
            .await
            .context("awaiting a publish ack")?;
        let m = delivered
            .next()
            .await
            .context("ordered consumer ended")?
            .map_err(|e| anyhow::anyhow!("ordered consumer: {e}"))?;
        if m.payload.len() != opts.size {
            bail!("received {} bytes, sent {}", m.payload.len(), opts.size);
        }
        record(&mut latency, t.elapsed());
    }
    let elapsed = start.elapsed();
    Ok(Report {
        system: "nats",
        workload: "e2e",
        durability: nats.durability.clone(),
        latency_of: "publish to ack and delivery through an ordered push consumer".into(),
        messages: opts.messages,
        bytes: opts.messages * opts.size as u64,
        elapsed,
        latency,
    })
}
