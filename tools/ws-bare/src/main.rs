//! A bare fan-out for the WebSocket benchmark: about the least a server can do to deliver every
//! record to every subscriber, so that `scripts/bench-ws-fanout` can show how much of weir's
//! delivery latency is weir's and how much is the machine's.
//!
//! It speaks the subset `tools/ws-fanout` uses (the `/ws` upgrade, a subscribe frame answered
//! with `{"type":"subscribed"}`, records POSTed as JSON to `/topics/<topic>/records`, pushed
//! as JSON text frames of weir's shape) and nothing else: no log, no queues, no policies, no
//! reads after the subscribe, no task per connection. Each record is framed once into a shared
//! list. Two writer threads own half the subscribers each and go round them: every
//! subscriber behind the list's end gets all its missing frames in one `writev`, straight from
//! the shared frames. So a write costs one system call and nothing else in user space, and a
//! subscriber's frames are gathered the way weir gathers them.
//!
//! One server per run: subscribers that leave are noticed only when written to.
//!
//! Usage: ws-bare  (prints `http=127.0.0.1:PORT` once listening on a free port)

use std::io::{IoSlice, Write};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use base64::Engine;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Most writer threads (`WS_BARE_WRITERS`, default 2: the machine has two cores).
const SHARDS: usize = 8;

#[derive(Default)]
struct Feed {
    /// Every frame so far, in order; a subscriber's cursor indexes it.
    frames: Vec<Arc<[u8]>>,
    /// Subscribers waiting to join each shard, with the cursor they start at.
    joining: [Vec<(std::net::TcpStream, usize)>; SHARDS],
}

static WRITERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(2);

struct Shared {
    feed: Mutex<Feed>,
    changed: Condvar,
}

struct Sub {
    s: std::net::TcpStream,
    /// The next frame to send, and how much of it went out already.
    cursor: usize,
    sent: usize,
}

fn text_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x81];
    match payload.len() {
        n if n < 126 => f.push(n as u8),
        n if n <= 0xffff => {
            f.push(126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(payload);
    f
}

fn writer(shared: Arc<Shared>, shard: usize) {
    let mut subs: Vec<Sub> = Vec::new();
    let mut frames: Vec<Arc<[u8]>> = Vec::new();
    let mut blocked = false;
    loop {
        {
            let mut feed = shared.feed.lock().unwrap();
            loop {
                for (s, cursor) in feed.joining[shard].drain(..) {
                    subs.push(Sub { s, cursor, sent: 0 });
                }
                if feed.frames.len() > frames.len() {
                    frames.extend_from_slice(&feed.frames[frames.len()..]);
                }
                if blocked || subs.iter().any(|s| s.cursor < frames.len()) {
                    break;
                }
                feed = shared.changed.wait(feed).unwrap();
            }
        }
        if blocked {
            // A subscriber's socket was full: give it a moment rather than spin.
            std::thread::sleep(Duration::from_millis(1));
        }
        blocked = false;
        subs.retain_mut(|sub| {
            if sub.cursor >= frames.len() {
                return true;
            }
            let mut iov = Vec::with_capacity(frames.len() - sub.cursor);
            iov.push(IoSlice::new(&frames[sub.cursor][sub.sent..]));
            for f in &frames[sub.cursor + 1..] {
                iov.push(IoSlice::new(f));
            }
            match sub.s.write_vectored(&iov) {
                Ok(mut n) => {
                    n += sub.sent;
                    while sub.cursor < frames.len() && n >= frames[sub.cursor].len() {
                        n -= frames[sub.cursor].len();
                        sub.cursor += 1;
                    }
                    sub.sent = n;
                    true
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    blocked = true;
                    true
                }
                // Gone (the load generator closes when it is done).
                Err(_) => false,
            }
        });
    }
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Reads an HTTP request head (and anything after it) from `s`.
async fn read_head(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Result<usize> {
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(i + 4);
        }
        if buf.len() > 64 << 10 {
            bail!("request head too long");
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            bail!("closed before the request head ended");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

async fn serve(mut s: tokio::net::TcpStream, shared: Arc<Shared>, n: usize) -> Result<()> {
    let mut buf = Vec::new();
    let end = read_head(&mut s, &mut buf).await?;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut rest = buf[end..].to_vec();
    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
    if head.starts_with("GET ") && path == "/ws" {
        let key = header(&head, "sec-websocket-key").context("no Sec-WebSocket-Key")?;
        let mut h = Sha1::new();
        h.update(key.as_bytes());
        h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
        let accept = base64::engine::general_purpose::STANDARD.encode(h.finalize());
        s.write_all(
            format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
        // The subscribe frame (masked, short): read it whole, then answer.
        loop {
            if rest.len() >= 2 {
                let len = usize::from(rest[1] & 0x7f);
                if len >= 126 {
                    bail!("subscribe frame too long for this tool");
                }
                if rest.len() >= 2 + 4 + len {
                    break;
                }
            }
            let mut chunk = [0u8; 1024];
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                bail!("closed before subscribing");
            }
            rest.extend_from_slice(&chunk[..n]);
        }
        s.write_all(&text_frame(br#"{"type":"subscribed","subscription":1}"#))
            .await?;
        let std = s.into_std()?;
        std.set_nonblocking(true)?;
        let mut feed = shared.feed.lock().unwrap();
        let cursor = feed.frames.len();
        feed.joining[n % WRITERS.load(std::sync::atomic::Ordering::Relaxed)].push((std, cursor));
        shared.changed.notify_all();
        return Ok(());
    }
    let Some(topic) = path
        .strip_prefix("/topics/")
        .and_then(|p| p.strip_suffix("/records"))
        .filter(|_| head.starts_with("POST "))
    else {
        s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await?;
        return Ok(());
    };
    let len: usize = header(&head, "content-length")
        .context("no Content-Length")?
        .parse()?;
    if len > 16 << 20 {
        bail!("body too large");
    }
    while rest.len() < len {
        let mut chunk = vec![0u8; len - rest.len()];
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            bail!("closed before the body ended");
        }
        rest.extend_from_slice(&chunk[..n]);
    }
    let body: serde_json::Value = serde_json::from_slice(&rest[..len])?;
    let records = body["records"].as_array().cloned().unwrap_or_default();
    let (first, count) = {
        let mut feed = shared.feed.lock().unwrap();
        let first = feed.frames.len();
        let now = now_millis();
        for (i, r) in records.iter().enumerate() {
            let payload = serde_json::json!({
                "type": "record", "topic": topic, "partition": 0, "offset": first + i,
                "timestamp": now, "key": r["key"], "value": r["value"], "headers": {},
            })
            .to_string();
            feed.frames.push(text_frame(payload.as_bytes()).into());
        }
        shared.changed.notify_all();
        (first, records.len())
    };
    let reply = format!("{{\"base_offset\":{first},\"count\":{count}}}");
    s.write_all(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{reply}",
            reply.len()
        )
        .as_bytes(),
    )
    .await?;
    Ok(())
}

fn main() -> Result<()> {
    let shared = Arc::new(Shared {
        feed: Mutex::new(Feed::default()),
        changed: Condvar::new(),
    });
    let writers: usize = std::env::var("WS_BARE_WRITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2)
        .clamp(1, SHARDS);
    WRITERS.store(writers, std::sync::atomic::Ordering::Relaxed);
    for shard in 0..writers {
        let shared = shared.clone();
        std::thread::spawn(move || writer(shared, shard));
    }
    // Accepts, handshakes and POSTs on one thread: none is on the delivery path.
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?
        .block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            println!("http={}", l.local_addr()?);
            let mut n = 0usize;
            loop {
                let (s, _) = l.accept().await?;
                s.set_nodelay(true)?;
                let shared = shared.clone();
                n += 1;
                tokio::spawn(async move {
                    if let Err(e) = serve(s, shared, n).await {
                        eprintln!("connection {n}: {e:#}");
                    }
                });
            }
        })
}
