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
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Mutex;

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

/// A minimal WebSocket client for this load generator: handshake, one masked text frame out
/// (the subscribe operation), then server frames parsed in place from one reusable buffer.
/// A general-purpose client (tungstenite) allocates and copies each message and zeroes a large
/// read buffer per read, which made the generator, not the server, the bottleneck when it
/// shares two cores with the server. Pings are answered; anything malformed is an error.
struct RawWs {
    s: tokio::net::TcpStream,
    buf: Vec<u8>,
    /// Unparsed bytes are `buf[at..end]`.
    at: usize,
    end: usize,
    /// A text frame handed out by `next_text`, consumed at the next call.
    pending: usize,
}

impl RawWs {
    async fn connect(http: &str, subscribe: &str) -> Result<RawWs> {
        let mut s = tokio::net::TcpStream::connect(http).await?;
        s.set_nodelay(true)?;
        let req = format!(
            "GET /ws HTTP/1.1\r\nHost: {http}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await?;
        let mut ws = RawWs { s, buf: vec![0; 8192], at: 0, end: 0, pending: 0 };
        let head_end = loop {
            if let Some(i) = ws.buf[..ws.end].windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if ws.end == ws.buf.len() {
                bail!("handshake answer too long");
            }
            let n = ws.s.read(&mut ws.buf[ws.end..]).await?;
            if n == 0 {
                bail!("closed during the handshake");
            }
            ws.end += n;
        };
        if !ws.buf.starts_with(b"HTTP/1.1 101") {
            bail!("handshake refused: {}", String::from_utf8_lossy(&ws.buf[..head_end]));
        }
        ws.at = head_end;
        ws.send(0x1, subscribe.as_bytes()).await?;
        Ok(ws)
    }

    /// Sends one frame, masked (as clients must) with a zero key.
    async fn send(&mut self, opcode: u8, payload: &[u8]) -> Result<()> {
        let mut f = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n <= 0xffff => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&[0; 4]);
        f.extend_from_slice(payload);
        self.s.write_all(&f).await?;
        Ok(())
    }

    /// The next text frame; `None` when the server closes.
    async fn next_text(&mut self) -> Result<Option<&str>> {
        self.at += std::mem::take(&mut self.pending);
        loop {
            let avail = &self.buf[self.at..self.end];
            if avail.len() >= 2 {
                let (op, len7) = (avail[0] & 0x0f, avail[1]);
                if len7 & 0x80 != 0 {
                    bail!("the server masked a frame");
                }
                let (hdr, len) = match len7 {
                    126 if avail.len() >= 4 => (4, u16::from_be_bytes([avail[2], avail[3]]) as usize),
                    127 if avail.len() >= 10 => {
                        (10, u64::from_be_bytes(avail[2..10].try_into()?) as usize)
                    }
                    126 | 127 => (usize::MAX, 0),
                    n => (2, n as usize),
                };
                if hdr != usize::MAX && avail.len() >= hdr + len {
                    let start = self.at + hdr;
                    match op {
                        0x1 => {
                            self.at = start;
                            self.pending = len;
                            return Ok(Some(std::str::from_utf8(&self.buf[start..start + len])?));
                        }
                        0x9 => {
                            let payload = self.buf[start..start + len].to_vec();
                            self.at = start + len;
                            self.send(0xA, &payload).await?;
                        }
                        0x8 => return Ok(None),
                        _ => self.at = start + len,
                    }
                    continue;
                }
                if hdr != usize::MAX && hdr + len > self.buf.len() {
                    self.buf.resize(hdr + len, 0);
                }
            }
            // Need more bytes: move what is left to the front, then read.
            if self.at > 0 {
                self.buf.copy_within(self.at..self.end, 0);
                self.end -= self.at;
                self.at = 0;
            }
            let n = self.s.read(&mut self.buf[self.end..]).await?;
            if n == 0 {
                return Ok(None);
            }
            self.end += n;
        }
    }
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
        let http = http.clone();
        let (delivered, dropped, hist, stop, ready) = (
            delivered.clone(),
            dropped.clone(),
            hist.clone(),
            stop.clone(),
            ready.clone(),
        );
        let subscribe = subscribe.clone();
        tasks.push(tokio::spawn(async move {
            let mut ws = RawWs::connect(&http, &subscribe)
                .await
                .with_context(|| format!("connection {i}"))?;
            // Latencies in µs, merged into the histogram at the end: recording into a
            // histogram per connection would touch 10,000 large count arrays at random.
            let mut local: Vec<u32> = Vec::new();
            let (mut n, mut gone) = (0u64, 0u64);
            let stopped = stop.notified();
            tokio::pin!(stopped);
            loop {
                let frame = tokio::select! {
                    _ = &mut stopped => break,
                    f = ws.next_text() => f?,
                };
                let Some(t) = frame else { break };
                if let Some(sent) = sent_at(t) {
                    let us = now_micros().saturating_sub(sent).max(1);
                    local.push(us.min(u64::from(u32::MAX)) as u32);
                    n += 1;
                } else if t.contains("\"type\":\"subscribed\"") {
                    ready.fetch_add(1, Ordering::Relaxed);
                } else if t.contains("\"type\":\"dropped\"")
                    && let Ok(v) = serde_json::from_str::<serde_json::Value>(t)
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
        // A connection that failed (refused, reset, closed before subscribing) says why now,
        // instead of the run waiting out the deadline.
        if let Some(i) = tasks.iter().position(|t| t.is_finished()) {
            tasks.swap_remove(i).await??;
            bail!("connection {i} ended before the run began");
        }
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
