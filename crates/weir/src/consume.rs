//! `weir consume TOPIC`.

use std::io::Write;
use std::time::Duration;

use anyhow::{Result, bail};
use futures::StreamExt;
use weir_client::consumer::GroupOptions;
use weir_client::{FetchLimit, GroupConsumer, PartitionConsumer, ReceivedRecord, Start};

use crate::Conn;

#[derive(clap::Args)]
pub struct Args {
    topic: String,
    #[command(flatten)]
    conn: Conn,
    /// Read only this partition (default: all).
    #[arg(long)]
    partition: Option<u32>,
    /// Consume as a member of this group, committing as records are printed.
    #[arg(long)]
    group: Option<String>,
    /// beginning, end, offset:<n> or timestamp:<ms>. With --group, where partitions without a
    /// committed offset start (beginning or end).
    #[arg(long, default_value = "beginning")]
    from: String,
    /// Keep waiting for new records instead of stopping at the end. Without it, a group
    /// member stops once it has caught up with every partition it owns.
    #[arg(long)]
    follow: bool,
    /// text (values, one per line) or json (one object per line).
    #[arg(long, default_value = "text")]
    output: String,
    /// Stop after this many records.
    #[arg(long)]
    max: Option<u64>,
}

/// Reads as a group member until caught up (or forever with --follow), printing and
/// committing; `uncommitted` says whether the last commit was refused by a rebalance.
async fn group_loop(
    consumer: &mut GroupConsumer,
    args: &Args,
    json: bool,
    limit: u64,
    wait: Duration,
    out: &mut impl Write,
    uncommitted: &mut bool,
) -> Result<()> {
    let mut printed = 0u64;
    let mut idle_polls = 0;
    while printed < limit {
        let records = consumer.poll(wait).await?;
        if records.is_empty() {
            if *uncommitted {
                *uncommitted = !commit(consumer).await?;
            }
            if args.follow {
                continue;
            }
            // Done once the member has caught up with every partition it owns (an empty poll
            // alone may only mean a rebalance was being followed).
            let lag = consumer.lag();
            if lag == Some(0) {
                return Ok(());
            }
            idle_polls += 1;
            if idle_polls >= MAX_IDLE_POLLS {
                match lag {
                    Some(n) => bail!(
                        "{n} records are left to read, but none came for {:?}",
                        wait * MAX_IDLE_POLLS
                    ),
                    None => bail!(
                        "a partition of this member did not answer for {:?}",
                        wait * MAX_IDLE_POLLS
                    ),
                }
            }
            continue;
        }
        idle_polls = 0;
        let mut rest = records.iter();
        while printed < limit {
            let Some(r) = rest.next() else { break };
            print(out, json, r)?;
            printed += 1;
        }
        out.flush()?;
        // Past --max: the records not printed are left for the group, the commit stopping
        // before the first of each partition.
        let mut left = std::collections::HashSet::new();
        for r in rest {
            if left.insert((r.topic.clone(), r.partition)) {
                consumer.seek(&r.topic, r.partition, r.offset)?;
            }
        }
        // Until the commit went through: an error ending the loop here leaves it to be
        // tried once more before leaving.
        *uncommitted = true;
        *uncommitted = !commit(consumer).await?;
    }
    Ok(())
}

/// Commits the member's positions; `false` if a rebalance refused it even after rejoining
/// (the next poll follows the rebalance, and a partition's new owner reads on from its last
/// commit).
async fn commit(consumer: &mut GroupConsumer) -> Result<bool> {
    match consumer.commit().await {
        Ok(()) => Ok(true),
        Err(e) if e.is_rebalance() => {
            tracing::info!(error = %e, "commit refused by a rebalance; rejoining");
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

/// Empty polls in a row after which a group member reading without --follow gives up, with an
/// error, when it cannot tell it has caught up (5 s at 200 ms a poll).
const MAX_IDLE_POLLS: u32 = 25;

/// Answers fetched ahead across all partitions read without a group.
const FETCHES_AHEAD: usize = 16;

fn start(from: &str) -> Result<Start> {
    Ok(match from {
        "beginning" | "earliest" => Start::Earliest,
        "end" | "latest" => Start::Latest,
        other => match other.split_once(':') {
            Some(("offset", n)) => Start::Offset(n.parse()?),
            Some(("timestamp", ms)) => Start::Timestamp(ms.parse()?),
            _ => {
                bail!("--from must be beginning, end, offset:<n> or timestamp:<ms>, not {other:?}")
            }
        },
    })
}

fn text(b: &Option<bytes::Bytes>) -> serde_json::Value {
    match b {
        None => serde_json::Value::Null,
        Some(b) => serde_json::Value::String(String::from_utf8_lossy(b).into_owned()),
    }
}

fn print(out: &mut impl Write, json: bool, r: &ReceivedRecord) -> Result<()> {
    crate::otel::consumed(r);
    if json {
        let headers: serde_json::Map<String, serde_json::Value> = r
            .headers
            .iter()
            .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), text(v)))
            .collect();
        let v = serde_json::json!({
            "topic": &*r.topic,
            "partition": r.partition,
            "offset": r.offset,
            "timestamp": r.timestamp,
            "key": text(&r.key),
            "value": text(&r.value),
            "headers": headers,
        });
        writeln!(out, "{v}")?;
    } else {
        let value = r.value.as_deref().unwrap_or_default();
        out.write_all(value)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

pub async fn run(args: Args) -> Result<()> {
    let json = match args.output.as_str() {
        "json" => true,
        "text" => false,
        other => bail!("--output must be text or json, not {other:?}"),
    };
    let start = start(&args.from)?;
    let client = args.conn.connect("weir-cli").await?;
    let meta = client.metadata(&[&args.topic]).await?;
    let Some(topic) = meta.first() else {
        bail!("topic {:?} does not exist", args.topic)
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut printed = 0u64;
    let limit = args.max.unwrap_or(u64::MAX);
    let wait = Duration::from_millis(if args.follow { 1000 } else { 200 });

    if let Some(group) = &args.group {
        let options = GroupOptions {
            reset_earliest: !matches!(start, Start::Latest),
            ..GroupOptions::default()
        };
        let mut consumer = GroupConsumer::join(client, group, &[&args.topic], options).await?;
        // A commit a rebalance refused is tried again at the next poll, and before leaving,
        // whether the loop ends well or not.
        let mut uncommitted = false;
        let read = group_loop(
            &mut consumer,
            &args,
            json,
            limit,
            wait,
            &mut out,
            &mut uncommitted,
        )
        .await;
        if uncommitted {
            let done = commit(&mut consumer).await;
            if read.is_ok() {
                done?;
            }
        }
        let left = consumer.leave().await;
        read?;
        left?;
        return Ok(());
    }

    let partitions: Vec<u32> = match args.partition {
        Some(p) if (p as usize) < topic.partitions.len() => vec![p],
        Some(p) => bail!("topic {} has no partition {p}", args.topic),
        None => (0..topic.partitions.len() as u32).collect(),
    };
    let mut consumers = Vec::new();
    // However many partitions, at most this many answers wait in memory (a slow reader of a
    // wide topic held three per partition: 456 MB over 200 partitions of 1 MB batches).
    let fetch_limit = FetchLimit::new(FETCHES_AHEAD);
    for p in partitions {
        let end = topic.partitions[p as usize].high_watermark;
        let mut c = PartitionConsumer::new(client.clone(), &args.topic, p, start).await?;
        c.share_limit(&fetch_limit);
        consumers.push((c, end));
    }
    // The partition after the one that answered last goes first, so that a busy partition
    // does not keep the others waiting.
    let mut next = 0;
    'outer: while printed < limit {
        // A partition read to its end is dropped, with what it fetched ahead (which would
        // hold places of the shared limit).
        if !args.follow {
            consumers.retain(|(c, end)| c.position() < *end);
        }
        // Every partition still to read waits at once; the first to have records answers
        // (a poll cut short keeps what its fetch brings for the next one).
        let n = consumers.len();
        let (head, tail) = consumers.split_at_mut(next % n.max(1));
        let mut polls: futures::stream::FuturesUnordered<_> = tail
            .iter_mut()
            .chain(head.iter_mut())
            .enumerate()
            .map(|(i, (c, end))| {
                let (end, index) = (*end, (next + i) % n);
                async move { (c.poll(wait).await, end, index) }
            })
            .collect();
        if polls.is_empty() {
            break;
        }
        let mut got = None;
        while let Some((records, end, index)) = polls.next().await {
            let records = records?;
            if !records.is_empty() {
                got = Some((records, end));
                next = index + 1;
                break;
            }
        }
        drop(polls);
        if let Some((records, end)) = got {
            for r in &records {
                if printed >= limit {
                    break 'outer;
                }
                if !args.follow && r.offset >= end {
                    break;
                }
                print(&mut out, json, r)?;
                printed += 1;
            }
            out.flush()?;
        }
    }
    out.flush()?;
    Ok(())
}
