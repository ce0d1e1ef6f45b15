//! Redis Streams workloads: pipelined XADD, XRANGE reads, one-at-a-time XADD-to-XREAD.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Value};

use crate::{Common, Redis, Report, histogram, record};

/// A connection whose replies may take as long as `timeout` (the client's default, 500 ms,
/// is shorter than an fsynced pipeline of 1 MB can take on a slow disk).
async fn connect(redis: &Redis, timeout: Option<Duration>) -> Result<MultiplexedConnection> {
    let client = redis::Client::open(redis.url.as_str())?;
    let config = AsyncConnectionConfig::new().set_response_timeout(timeout);
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .with_context(|| format!("connecting to {}", redis.url))
}

/// The server's persistence settings, as the report's durability.
async fn durability(con: &mut MultiplexedConnection) -> Result<String> {
    let mut parts = Vec::new();
    for key in ["appendonly", "appendfsync", "save"] {
        let kv: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg(key)
            .query_async(con)
            .await
            .with_context(|| format!("CONFIG GET {key}"))?;
        parts.push(format!("{key}={:?}", kv.get(1).map_or("", String::as_str)));
    }
    Ok(parts.join(" "))
}

fn xadds(key: &str, payload: &[u8], n: usize) -> redis::Pipeline {
    let mut p = redis::pipe();
    for _ in 0..n {
        p.cmd("XADD").arg(key).arg("*").arg("v").arg(payload);
    }
    p
}

pub async fn produce(redis: &Redis, opts: &Common, window: usize) -> Result<Report> {
    let mut con = connect(redis, Some(Duration::from_secs(60))).await?;
    let durability = durability(&mut con).await?;
    let _: i64 = redis::cmd("DEL")
        .arg(&redis.key)
        .query_async(&mut con)
        .await?;
    let payload = vec![0x61u8; opts.size];
    let full = xadds(&redis.key, &payload, window);
    let mut latency = histogram()?;
    let mut sent = 0u64;
    let start = Instant::now();
    while sent < opts.messages {
        let n = window.min((opts.messages - sent) as usize);
        let partial;
        let p = if n == window {
            &full
        } else {
            partial = xadds(&redis.key, &payload, n);
            &partial
        };
        let t = Instant::now();
        let ids: Vec<String> = p.query_async(&mut con).await.context("XADD pipeline")?;
        record(&mut latency, t.elapsed());
        if ids.len() != n {
            bail!("a pipeline of {n} XADDs answered {} ids", ids.len());
        }
        sent += n as u64;
    }
    let elapsed = start.elapsed();
    Ok(Report {
        system: "redis",
        workload: "produce",
        durability,
        latency_of: format!("one pipeline of {window} XADDs"),
        messages: sent,
        bytes: sent * opts.size as u64,
        elapsed,
        latency,
    })
}

/// Walks an XRANGE/XREAD entry list (`[[id, [field, value, ...]], ...]`): entries, value
/// bytes, and the last id.
fn entries(v: &Value) -> Result<(u64, u64, Option<String>)> {
    let Value::Array(list) = v else {
        bail!("expected an array of entries, got {v:?}");
    };
    let (mut n, mut bytes, mut last) = (0u64, 0u64, None);
    for e in list {
        let Value::Array(pair) = e else {
            bail!("expected [id, fields], got {e:?}");
        };
        let (Some(Value::BulkString(id)), Some(Value::Array(fields))) = (pair.first(), pair.get(1))
        else {
            bail!("expected [id, fields], got {pair:?}");
        };
        for f in fields.iter().skip(1).step_by(2) {
            if let Value::BulkString(b) = f {
                bytes += b.len() as u64;
            }
        }
        n += 1;
        last = Some(String::from_utf8_lossy(id).into_owned());
    }
    Ok((n, bytes, last))
}

pub async fn consume(redis: &Redis, opts: &Common, batch: usize) -> Result<Report> {
    let mut con = connect(redis, Some(Duration::from_secs(60))).await?;
    let durability = durability(&mut con).await?;
    let stored: u64 = redis::cmd("XLEN")
        .arg(&redis.key)
        .query_async(&mut con)
        .await?;
    if stored < opts.messages {
        bail!(
            "stream {} holds {stored} entries, fewer than --messages {} (run redis-produce first)",
            redis.key,
            opts.messages
        );
    }
    let mut latency = histogram()?;
    let (mut messages, mut bytes) = (0u64, 0u64);
    let mut from = "-".to_string();
    let start = Instant::now();
    while messages < opts.messages {
        let want = batch.min((opts.messages - messages) as usize);
        let t = Instant::now();
        let reply: Value = redis::cmd("XRANGE")
            .arg(&redis.key)
            .arg(&from)
            .arg("+")
            .arg("COUNT")
            .arg(want)
            .query_async(&mut con)
            .await
            .context("XRANGE")?;
        record(&mut latency, t.elapsed());
        let (n, b, last) = entries(&reply)?;
        let Some(last) = last else {
            bail!("XRANGE returned nothing after {messages} entries");
        };
        messages += n;
        bytes += b;
        from = format!("({last}");
    }
    let elapsed = start.elapsed();
    Ok(Report {
        system: "redis",
        workload: "consume",
        durability,
        latency_of: format!("one XRANGE of up to {batch} entries"),
        messages,
        bytes,
        elapsed,
        latency,
    })
}

pub async fn e2e(redis: &Redis, opts: &Common) -> Result<Report> {
    let mut writer = connect(redis, Some(Duration::from_secs(60))).await?;
    // XREAD BLOCK 0 waits as long as it must: no client-side timeout on the reader.
    let mut reader = connect(redis, None).await?;
    let durability = durability(&mut writer).await?;
    let _: i64 = redis::cmd("DEL")
        .arg(&redis.key)
        .query_async(&mut writer)
        .await?;
    let payload = vec![0x61u8; opts.size];
    let mut xadd = redis::cmd("XADD");
    xadd.arg(&redis.key).arg("*").arg("v").arg(&payload);
    let mut latency = histogram()?;
    let mut last = "0-0".to_string();
    let start = Instant::now();
    for _ in 0..opts.messages {
        let mut xread = redis::cmd("XREAD");
        xread
            .arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(0)
            .arg("STREAMS")
            .arg(&redis.key)
            .arg(&last);
        let t = Instant::now();
        // The XREAD is polled first, so it is on its way before the XADD is.
        let (read, added) = tokio::join!(
            xread.query_async::<Value>(&mut reader),
            xadd.query_async::<String>(&mut writer)
        );
        let read = read.context("XREAD BLOCK")?;
        added.context("XADD")?;
        record(&mut latency, t.elapsed());
        // [[key, [[id, [field, value]]]]]
        let entry_list = match &read {
            Value::Array(streams) => match streams.first() {
                Some(Value::Array(kv)) => kv.get(1),
                _ => None,
            },
            Value::Map(streams) => streams.first().map(|(_, v)| v),
            _ => None,
        }
        .with_context(|| format!("unexpected XREAD reply {read:?}"))?;
        let (n, b, id) = entries(entry_list)?;
        if n != 1 || b != opts.size as u64 {
            bail!(
                "XREAD returned {n} entries of {b} bytes, expected one of {}",
                opts.size
            );
        }
        last = id.context("entry without id")?;
    }
    let elapsed = start.elapsed();
    Ok(Report {
        system: "redis",
        workload: "e2e",
        durability,
        latency_of: "XADD to its reply and to the blocked XREAD's reply".into(),
        messages: opts.messages,
        bytes: opts.messages * opts.size as u64,
        elapsed,
        latency,
    })
}
