//! Fan-out load on weir's WebSocket push: SUBSCRIBERS connections subscribe to one topic, a
//! producer posts RATE records per second through the HTTP API for SECONDS, each carrying its
//! send time; every subscriber measures each record's delivery latency. Prints one JSON line:
//! deliveries, deliveries per second over the produce window, latency p50/p99/p999/max, and
//! records the server reported dropped.
//!
//! Usage: ws-fanout HTTP_ADDR TOPIC SUBSCRIBERS RATE SECONDS

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The send time a record's value carries: `"value":"t=<micros>"`.
fn sent_at(frame: &str) -> Option<u64> {
    let i = frame.find("\"value\":\"t=")? + 11;
    let rest = &frame[i..];
    let end = rest.find('"')?;
    rest[..end].parse().ok()
}

/// POSTs `n` records, each with its send time, to /topics/TOPIC/records (HTTP/1.1, one
/// request per connection).
async fn post(http: &str, topic: &str, n: usize) -> Result<()> {
    let t = now_micros();
    let mut body = String::from("{\"records\":[");
    for i in 0..n {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&format!("{{\"key\":\"k{}\",\"value\":\"t={t}\"}}", i % 64));
    }
    body.push_str("]}");
    let mut s = tokio::net::TcpStream::connect(http).await?;
    let req = format!(
        "POST /topics/{topic}/records HTTP/1.1\r\nHost: {http}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await?;
    if !resp.starts_with(b"HTTP/1.1 2") {
        bail!("produce failed: {}", String::from_utf8_lossy(&resp[..resp.len().min(200)]));
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    if a.len() != 5 {
        bail!("usage: ws-fanout HTTP_ADDR TOPIC SUBSCRIBERS RATE SECONDS");
    }
    let (http, topic) = (a[0].clone(), a[1].clone());
    let subscribers: usize = a[2].parse()?;
    let rate: usize = a[3].parse()?;
    let seconds: u64 = a[4].parse()?;

    let delivered = Arc::new(AtomicU64::new(0));
    let dropped = Arc::new(AtomicU64::new(0));
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?));
    let stop = Arc::new(tokio::sync::Notify::new());
    let mut tasks = Vec::with_capacity(subscribers);
    let ready = Arc::new(AtomicU64::new(0));
    let subscribe = format!(
        "{{\"op\":\"subscribe\",\"topics\":[\"{topic}\"],\"from\":\"latest\",\"policy\":\"drop_oldest\"}}"
    );
    for i in 0..subscribers {
        let url = format!("ws://{http}/ws");
        let (delivered, dropped, hist, stop, ready) = (
            delivered.clone(),
            dropped.clone(),
            hist.clone(),
            stop.clone(),
            ready.clone(),
        );
        let subscribe = subscribe.clone();
        tasks.push(tokio::spawn(async move {
            // A small read buffer: the library's default (128 KiB) is zeroed on every read,
            // which would make this load generator, not the server, the bottleneck.
            let config = WebSocketConfig::default().read_buffer_size(4096);
            let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true)
                .await
                .with_context(|| format!("connection {i}"))?;
            ws.send(Message::text(subscribe)).await?;
            // Latencies in µs, merged into the histogram at the end: recording into a
            // histogram per connection would touch 10,000 large count arrays at random.
            let mut local: Vec<u32> = Vec::new();
            let (mut n, mut gone) = (0u64, 0u64);
            let stopped = stop.notified();
            tokio::pin!(stopped);
            loop {
                let msg = tokio::select! {
                    _ = &mut stopped => break,
                    m = ws.next() => m,
                };
                let Some(msg) = msg else { break };
                let Message::Text(t) = msg? else { continue };
                if let Some(sent) = sent_at(&t) {
                    let us = now_micros().saturating_sub(sent).max(1);
                    local.push(us.min(u64::from(u32::MAX)) as u32);
                    n += 1;
                } else if t.contains("\"type\":\"subscribed\"") {
                    ready.fetch_add(1, Ordering::Relaxed);
                } else if t.contains("\"type\":\"dropped\"")
                    && let Ok(v) = serde_json::from_str::<serde_json::Value>(&t)
                {
                    gone += v["count"].as_u64().unwrap_or(0);
                }
            }
            delivered.fetch_add(n, Ordering::Relaxed);
            dropped.fetch_add(gone, Ordering::Relaxed);
            let mut h = hist.lock().await;
            for us in local {
                h.saturating_record(u64::from(us));
            }
            anyhow::Ok(())
        }));
        if i % 200 == 199 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while (ready.load(Ordering::Relaxed) as usize) < subscribers {
        if Instant::now() > deadline {
            bail!("only {} of {subscribers} subscribed", ready.load(Ordering::Relaxed));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Produce in steps of 10 ms, or one record per step at low rates.
    let step = Duration::from_millis(10).max(Duration::from_secs(1) / rate.max(1) as u32);
    let per_step = ((rate as f64 * step.as_secs_f64()).round() as usize).max(1);
    let start = Instant::now();
    let mut produced = 0u64;
    let mut tick = tokio::time::interval(step);
    while start.elapsed() < Duration::from_secs(seconds) {
        tick.tick().await;
        post(&http, &topic, per_step).await?;
        produced += per_step as u64;
    }
    let window = start.elapsed();
    // Let deliveries drain.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.notify_waiters();
    for t in tasks {
        t.await??;
    }
    let h = hist.lock().await;
    let delivered = delivered.load(Ordering::Relaxed);
    println!(
        "{}",
        serde_json::json!({
            "subscribers": subscribers,
            "produced": produced,
            "expected_deliveries": produced * subscribers as u64,
            "delivered": delivered,
            "dropped": dropped.load(Ordering::Relaxed),
            "window_seconds": window.as_secs_f64(),
            "deliveries_per_sec": delivered as f64 / window.as_secs_f64(),
            "latency_ms": {
                "p50": h.value_at_quantile(0.5) as f64 / 1000.0,
                "p99": h.value_at_quantile(0.99) as f64 / 1000.0,
                "p999": h.value_at_quantile(0.999) as f64 / 1000.0,
                "max": h.max() as f64 / 1000.0,
            },
        })
    );
    Ok(())
}
