//! `weir-compare`: the NATS JetStream and Redis Streams side of `scripts/bench-native`.
//!
//! Each subcommand drives one workload against a running server and prints one report in the
//! shape of `weir bench`, so that the script can put weir, NATS and Redis in one table:
//!
//! - `jetstream` (`nats-produce`, `nats-consume`, `nats-e2e`): JetStream through `async-nats`.
//! - `streams` (`redis-produce`, `redis-consume`, `redis-e2e`): Redis Streams through `redis`.
//! - this file: the command line and the report (throughput, HDR-histogram latency).
//!
//! Every byte count is payload bytes (messages × `--size`); protocol and storage framing are
//! not counted. Not part of the server.

mod jetstream;
mod streams;

use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;

#[derive(Parser)]
#[command(
    name = "weir-compare",
    version,
    about = "Benchmark NATS JetStream and Redis Streams like `weir bench` does weir"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Options every workload takes.
#[derive(clap::Args, Clone, Debug)]
pub struct Common {
    /// Messages in all.
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 1000)]
    size: usize,
    /// text or json.
    #[arg(long, default_value = "text")]
    output: String,
}

#[derive(clap::Args, Clone, Debug)]
pub struct Nats {
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    url: String,
    /// Stream name; its one subject has the same name.
    #[arg(long, default_value = "bench")]
    stream: String,
    /// Free text recorded in the report as the durability measured. nats-server cannot be asked
    /// for its file store's sync interval, so the caller says what it configured.
    #[arg(
        long,
        default_value = "server default: file store fsyncs every 2 min (sync_interval), acks before fsync"
    )]
    durability: String,
}

#[derive(clap::Args, Clone, Debug)]
pub struct Redis {
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    url: String,
    /// Stream key.
    #[arg(long, default_value = "bench")]
    key: String,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create the JetStream stream afresh (file storage) and publish to it with up to
    /// `--window` publishes awaiting their ack; latency is publish to ack.
    NatsProduce {
        #[command(flatten)]
        nats: Nats,
        #[command(flatten)]
        opts: Common,
        #[arg(long, default_value_t = 1000)]
        window: usize,
    },
    /// Read the stream from its first message with a pull consumer (no acks), `--batch`
    /// messages per fetch; latency is per fetch.
    NatsConsume {
        #[command(flatten)]
        nats: Nats,
        #[command(flatten)]
        opts: Common,
        #[arg(long, default_value_t = 1000)]
        batch: usize,
    },
    /// One message at a time: publish, await the ack, receive it through an ordered push
    /// consumer; latency is publish to both.
    NatsE2e {
        #[command(flatten)]
        nats: Nats,
        #[command(flatten)]
        opts: Common,
    },
    /// Delete the stream key, then XADD with `--window` commands pipelined per round trip;
    /// latency is per round trip.
    RedisProduce {
        #[command(flatten)]
        redis: Redis,
        #[command(flatten)]
        opts: Common,
        #[arg(long, default_value_t = 1000)]
        window: usize,
    },
    /// XRANGE `--batch` entries at a time from the start of the stream; latency is per XRANGE.
    RedisConsume {
        #[command(flatten)]
        redis: Redis,
        #[command(flatten)]
        opts: Common,
        #[arg(long, default_value_t = 1000)]
        batch: usize,
    },
    /// One message at a time: XREAD BLOCK waits on one connection while XADD writes on
    /// another; latency is XADD sent to both answered.
    RedisE2e {
        #[command(flatten)]
        redis: Redis,
        #[command(flatten)]
        opts: Common,
    },
}

/// What one workload measured.
#[derive(Debug)]
pub struct Report {
    pub system: &'static str,
    pub workload: &'static str,
    /// The durability the server was run with, as measured.
    pub durability: String,
    /// What one latency sample times.
    pub latency_of: String,
    pub messages: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    /// Microseconds.
    pub latency: Histogram<u64>,
}

impl Report {
    fn print(&self, output: &str) {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let q = |p: f64| self.latency.value_at_quantile(p);
        if output == "json" {
            println!(
                "{}",
                serde_json::json!({
                    "system": self.system,
                    "workload": self.workload,
                    "durability": self.durability,
                    "messages": self.messages,
                    "bytes": self.bytes,
                    "seconds": secs,
                    "messages_per_sec": self.messages as f64 / secs,
                    "mb_per_sec": self.bytes as f64 / secs / 1e6,
                    "latency_of": self.latency_of,
                    "latency_us": {
                        "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999),
                        "max": self.latency.max(), "count": self.latency.len(),
                    },
                })
            );
        } else {
            println!(
                "{} {}: {} messages in {:.2}s: {:.0} msg/s, {:.1} MB/s; latency ({}) µs p50={} p99={} max={}; durability: {}",
                self.system,
                self.workload,
                self.messages,
                secs,
                self.messages as f64 / secs,
                self.bytes as f64 / secs / 1e6,
                self.latency_of,
                q(0.5),
                q(0.99),
                self.latency.max(),
                self.durability,
            );
        }
    }
}

/// A histogram of microseconds from 1 µs to 1 hour, 3 significant digits.
pub fn histogram() -> Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 3_600_000_000, 3)?)
}

/// Records `d` in microseconds, clamped into the histogram's range.
pub fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record((d.as_micros() as u64).max(1));
}

fn check(opts: &Common, window: usize) -> Result<()> {
    if opts.output != "text" && opts.output != "json" {
        bail!("--output must be text or json, not {:?}", opts.output);
    }
    if opts.messages == 0 || opts.size == 0 || window == 0 {
        bail!("--messages, --size and --window/--batch must be positive");
    }
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // The e2e commands are one sequential loop, one message at a time: their connections'
    // tasks run on the loop's own thread, so that no wake-up of another thread adds to the
    // latency they measure (`weir bench e2e` does the same).
    let runtime = if matches!(cli.cmd, Cmd::NatsE2e { .. } | Cmd::RedisE2e { .. }) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
    };
    let (report, output) = runtime.block_on(async {
        anyhow::Ok(match cli.cmd {
            Cmd::NatsProduce { nats, opts, window } => {
                check(&opts, window)?;
                (jetstream::produce(&nats, &opts, window).await?, opts.output)
            }
            Cmd::NatsConsume { nats, opts, batch } => {
                check(&opts, batch)?;
                (jetstream::consume(&nats, &opts, batch).await?, opts.output)
            }
            Cmd::NatsE2e { nats, opts } => {
                check(&opts, 1)?;
                (jetstream::e2e(&nats, &opts).await?, opts.output)
            }
            Cmd::RedisProduce {
                redis,
                opts,
                window,
            } => {
                check(&opts, window)?;
                (streams::produce(&redis, &opts, window).await?, opts.output)
            }
            Cmd::RedisConsume { redis, opts, batch } => {
                check(&opts, batch)?;
                (streams::consume(&redis, &opts, batch).await?, opts.output)
            }
            Cmd::RedisE2e { redis, opts } => {
                check(&opts, 1)?;
                (streams::e2e(&redis, &opts).await?, opts.output)
            }
        })
    })?;
    report.print(&output);
    Ok(())
}
