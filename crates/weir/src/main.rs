//! `weir`: the server and its command-line client.
//!
//! Layout: `config` (server configuration), `serve` (`weir serve`), `admin` (`weir topic`,
//! `weir group`), `produce` and `consume` (`weir produce`, `weir consume`), `bench`
//! (`weir bench`), `pipeline` (`weir pipeline check | run`), `users` (`weir user`).

mod acls;
mod admin;
mod bench;
mod bench_scale;
mod config;
mod consume;
mod metrics;
mod otel;
mod pipeline;
mod produce;
mod serve;
mod users;

use std::path::PathBuf;

use anyhow::{Context, Result};
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
    /// On an error, print its full detail (with a backtrace when RUST_BACKTRACE is set).
    #[arg(long, short, global = true)]
    verbose: bool,
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
    /// Connect over TLS (to the server's `native.tls_listen`), trusting the system's CAs or
    /// --tls-ca.
    #[arg(long, env = "WEIR_TLS", global = true)]
    pub tls: bool,
    /// PEM CA certificate(s) the server's certificate must chain to; implies --tls.
    #[arg(long = "tls-ca", env = "WEIR_TLS_CA", global = true)]
    pub ca: Option<PathBuf>,
    /// PEM client certificate, for a server that requires one (mutual TLS); with --tls-key.
    #[arg(
        long = "tls-cert",
        env = "WEIR_TLS_CERT",
        global = true,
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// PEM key of --tls-cert.
    #[arg(
        long = "tls-key",
        env = "WEIR_TLS_KEY",
        global = true,
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// User to authenticate as, to a server that requires it; the password comes from
    /// WEIR_PASSWORD or --password-file (never a flag: other users could read it in `ps`).
    #[arg(long, env = "WEIR_USER", global = true)]
    pub user: Option<String>,
    /// File whose first line is --user's password.
    #[arg(long = "password-file", global = true, requires = "user")]
    pub password_file: Option<PathBuf>,
    /// SASL mechanism to authenticate with: SCRAM-SHA-512 (the default), SCRAM-SHA-256 or
    /// PLAIN (which sends the password itself: over TLS only).
    #[arg(
        long = "sasl-mechanism",
        env = "WEIR_SASL_MECHANISM",
        global = true,
        default_value = "SCRAM-SHA-512",
        value_parser = parse_mechanism
    )]
    pub mechanism: weir_client::Mechanism,
}

fn parse_mechanism(s: &str) -> std::result::Result<weir_client::Mechanism, String> {
    weir_client::Mechanism::parse(&s.to_ascii_uppercase())
        .ok_or_else(|| format!("{s:?} is not SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN"))
}

impl Conn {
    /// A client connected as these options say.
    pub async fn connect(&self, client_id: &str) -> Result<weir_client::Client> {
        let options = weir_client::ConnectOptions {
            tls: self.client_tls()?,
            credentials: self.credentials()?,
        };
        Ok(weir_client::Client::connect_options(&self.addr, client_id, options).await?)
    }

    /// The user and password these options give, if any.
    pub fn credentials(&self) -> Result<Option<weir_client::Credentials>> {
        let Some(user) = &self.user else {
            return Ok(None);
        };
        let password = match (&self.password_file, std::env::var("WEIR_PASSWORD")) {
            (Some(path), _) => std::fs::read_to_string(path)
                .with_context(|| format!("reading --password-file {}", path.display()))?
                .lines()
                .next()
                .unwrap_or("")
                .to_string(),
            (None, Ok(p)) => p,
            (None, Err(_)) => anyhow::bail!(
                "--user {user} needs a password: set WEIR_PASSWORD or give --password-file"
            ),
        };
        let mut credentials = weir_client::Credentials::new(user.clone(), password);
        credentials.mechanism = self.mechanism;
        Ok(Some(credentials))
    }

    /// The TLS these options ask for (files read and checked), or `None` for plain TCP.
    pub fn client_tls(&self) -> Result<Option<weir_client::ClientTls>> {
        if !(self.tls || self.ca.is_some() || self.tls_cert.is_some()) {
            return Ok(None);
        }
        let opts = weir_client::TlsOptions {
            ca: self.ca.clone(),
            client_cert: self.tls_cert.clone().zip(self.tls_key.clone()),
        };
        Ok(Some(opts.load()?))
    }
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
    /// Check and run stream pipelines.
    #[command(subcommand)]
    Pipeline(pipeline::PipelineCmd),
    /// Measure throughput and latency against a running server.
    #[command(subcommand)]
    Bench(bench::BenchCmd),
    /// Manage the users clients authenticate as (`[auth]`).
    #[command(subcommand)]
    User(users::UserCmd),
    /// Manage the access control lists requests are authorized by (`[auth] acls`).
    #[command(subcommand)]
    Acl(acls::AclCmd),
}

fn main() -> std::process::ExitCode {
    // mimalloc asks the kernel for transparent huge pages for its heap. Memory it purges and
    // later reuses is then faulted in again as whole 2 MiB pages, each zeroed by the kernel:
    // in the pipeline benchmark (BENCHMARKS.md) that zeroing was half the server's system
    // time and 10% of its CPU, for no gain in user time. So the process takes 4 KiB pages,
    // unless MIMALLOC_ALLOW_THP is set (mimalloc's own setting, which it then follows). A
    // kernel without the flag changes nothing, so its refusal is ignored.
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        let _ = rustix::thread::disable_transparent_huge_pages(true);
    }
    let cli = Cli::parse();
    let verbose = cli.verbose;
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            if verbose {
                eprintln!("error: {e:?}");
            } else {
                // The chain on one line: what failed, and why. A backtrace (RUST_BACKTRACE)
                // is for --verbose; panics still print theirs.
                eprintln!("error: {}", one_line(&e));
            }
            if let Some(hint) = hint(&e) {
                eprintln!("hint: {hint}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

/// An error's chain as `outer: cause: root`, leaving out a cause its outer message already
/// quotes (many errors print their source as part of their own message).
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// What the user can do about a common error.
fn hint(e: &anyhow::Error) -> Option<String> {
    use weir_wire::ErrorCode;
    let client = e
        .chain()
        .find_map(|c| c.downcast_ref::<weir_client::ClientError>())?;
    match client {
        weir_client::ClientError::Server {
            code: ErrorCode::UnknownTopic,
            message,
        } => {
            let name = message.split('"').nth(1).unwrap_or("NAME");
            Some(format!(
                "create the topic with `weir topic create {name} --partitions N`, or start the \
                 server with WEIR_TOPICS__AUTO_CREATE=true"
            ))
        }
        weir_client::ClientError::Server {
            code: ErrorCode::AuthenticationRequired,
            ..
        } => Some(
            "authenticate with --user NAME (or WEIR_USER), the password in WEIR_PASSWORD or \
             --password-file"
                .into(),
        ),
        weir_client::ClientError::Connect { addr, .. } => Some(format!(
            "is `weir serve` running and listening on {addr}? (--addr or WEIR_ADDR to change it)"
        )),
        _ => None,
    }
}

fn run(cli: Cli) -> Result<()> {
    // `weir bench e2e` is one sequential loop, one message at a time: its two connections'
    // tasks run on the loop's own thread, so that no wake-up of another thread adds to the
    // latency it measures (tools/compare's e2e commands do the same for NATS and Redis).
    let runtime = if matches!(cli.cmd, Cmd::Bench(bench::BenchCmd::E2e { .. })) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
    };
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
        Cmd::User(cmd) => users::run(cmd),
        Cmd::Acl(cmd) => acls::run(cmd),
        Cmd::Pipeline(cmd) => {
            if matches!(cmd, pipeline::PipelineCmd::Run { .. }) {
                serve::init_stderr_logging();
            }
            runtime.block_on(pipeline::run(cmd))
        }
    }
}
