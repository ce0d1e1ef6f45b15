//! The round-trip floor of a machine: a bare tokio TCP echo on loopback, closed loop, one
//! request in flight. The server reads a request of REQUEST bytes and answers RESPONSE bytes;
//! the client times each round trip. No protocol, no storage: what any tokio server on this
//! machine pays for one request and its answer, to put weir's batch-1 latency beside.
//!
//! Usage: rtt-floor server ADDR REQUEST RESPONSE   (prints `listening=ADDR`)
//!        rtt-floor client ADDR REQUEST RESPONSE COUNT   (prints one JSON line)

use std::time::Instant;

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn server(addr: &str, request: usize, response: usize) -> Result<()> {
    let listener = TcpListener::bind(addr).await?;
    println!("listening={}", listener.local_addr()?);
    loop {
        let (mut s, _) = listener.accept().await?;
        s.set_nodelay(true)?;
        tokio::spawn(async move {
            let mut req = vec![0u8; request];
            let resp = vec![0u8; response];
            while s.read_exact(&mut req).await.is_ok() {
                if s.write_all(&resp).await.is_err() {
                    return;
                }
            }
        });
    }
}

async fn client(addr: &str, request: usize, response: usize, count: u64) -> Result<()> {
    let mut s = TcpStream::connect(addr).await.context("connect")?;
    s.set_nodelay(true)?;
    let req = vec![7u8; request];
    let mut resp = vec![0u8; response];
    let mut h = Histogram::<u64>::new(3)?;
    let start = Instant::now();
    for _ in 0..count {
        let t = Instant::now();
        s.write_all(&req).await?;
        s.read_exact(&mut resp).await?;
        h.record(t.elapsed().as_micros() as u64)?;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "round_trips": count, "per_sec": count as f64 / secs,
            "latency_us": {
                "p50": h.value_at_quantile(0.5), "p90": h.value_at_quantile(0.9),
                "p99": h.value_at_quantile(0.99), "p999": h.value_at_quantile(0.999),
                "max": h.max(),
            },
        })
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    match a.first().map(String::as_str) {
        Some("server") if a.len() == 4 => server(&a[1], a[2].parse()?, a[3].parse()?).await,
        Some("client") if a.len() == 5 => {
            client(&a[1], a[2].parse()?, a[3].parse()?, a[4].parse()?).await
        }
        _ => bail!(
            "usage: rtt-floor server ADDR REQUEST RESPONSE | rtt-floor client ADDR REQUEST RESPONSE COUNT"
        ),
    }
}
