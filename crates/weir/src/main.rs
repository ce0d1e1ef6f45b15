//! `weir`: the server and its command-line client.
//!
//! Layout: `config` (server configuration), `serve` (`weir serve`), `admin` (`weir topic`,
//! `weir group`), `produce` and `consume` (`weir produce`, `weir consume`), `bench`
//! (`weir bench`).

mod admin;
mod bench;
mod config;
mod consume;
mod metrics;
mod otel;
mod produce;
mod serve;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

// Fetch responses are read into fresh multi-megabyte buffers. glibc's malloc maps and unmaps
// such blocks, faulting in fresh pages each time; mimalloc keeps freed blocks for reuse.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "weir",
    version,
    about = "weir: a real-time streaming platform in one binary"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Where the client commands connect.
#[derive(clap::Args, Clone, Debug)]
pub struct Conn {
    /// Server address (native protocol).
    #[arg(
        long,
        env = "WEIR_ADDR",
        default_value = "127.0.0.1:9094",
        global = true
    )]
    pub addr: String,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the server.
    Serve {
        /// TOML configuration file; `WEIR_*` environment variables override it.
        #[arg(long, short, env = "WEIR_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Manage topics.
    #[command(subcommand)]
    Topic(admin::TopicCmd),
    /// Inspect consumer groups.
    #[command(subcommand)]
    Group(admin::GroupCmd),
    /// Write records: one per line from standard input or a file.
    Produce(produce::Args),
    /// Read records.
    Consume(consume::Args),
    /// Measure throughput and latency against a running server.
    #[command(subcommand)]
    Bench(bench::BenchCmd),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.cmd {
        Cmd::Serve { config } => runtime.block_on(serve::run(config)),
        Cmd::Topic(cmd) => runtime.block_on(admin::topic(cmd)),
        Cmd::Group(cmd) => runtime.block_on(admin::group(cmd)),
        Cmd::Produce(args) => {
            let r = runtime.block_on(produce::run(args));
            otel::flush_cli();
            r
        }
        Cmd::Consume(args) => {
            let r = runtime.block_on(consume::run(args));
            otel::flush_cli();
            r
        }
        Cmd::Bench(cmd) => runtime.block_on(bench::run(cmd)),
    }
}
