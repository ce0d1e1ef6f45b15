//! `weir pipeline check | run` (in this process) and `list | describe | stop | start |
//! reload` (a running server's pipelines, through its HTTP API).

use std::path::PathBuf;

use anyhow::{Context, Result};
use weir_broker::Broker;
use weir_pipeline::config::{self, Declaration, Host};

/// Where the commands that manage a running server's pipelines send their requests.
#[derive(clap::Args, Clone, Debug)]
pub struct HttpAddr {
    /// The server's HTTP address.
    #[arg(long, env = "WEIR_HTTP", default_value = "127.0.0.1:8080")]
    pub http: String,
    /// A bearer token (an API token from `weir user token`, or a JWT), for a server that
    /// requires authentication.
    #[arg(long, env = "WEIR_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(clap::Subcommand, Debug)]
pub enum PipelineCmd {
    /// List the server's pipelines and their states.
    List(HttpAddr),
    /// Show one pipeline: state, restarts, last error, and per component the events
    /// received, sent, dropped and failed, and its queue.
    Describe {
        name: String,
        #[command(flatten)]
        http: HttpAddr,
    },
    /// Stop a pipeline (what its sources read drains; positions are committed).
    Stop {
        name: String,
        #[command(flatten)]
        http: HttpAddr,
    },
    /// Start a stopped pipeline.
    Start {
        name: String,
        #[command(flatten)]
        http: HttpAddr,
    },
    /// Read the server's configuration again and restart the pipeline with its new
    /// declaration (refused, and the running one left alone, if it is invalid).
    Reload {
        name: String,
        #[command(flatten)]
        http: HttpAddr,
    },
    /// Check pipeline files without running them: every key, every VRL program, the graph.
    Check {
        /// Pipeline files (TOML, one pipeline each, named after the file).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Run one pipeline in this process until its sources end or Ctrl-C / SIGTERM. Topics
    /// are read and written in the data directory of `--config` (`./weir-data` by default),
    /// which no server may be using at the same time.
    Run {
        /// The pipeline file.
        file: PathBuf,
        /// Server configuration, for the data directory and topic defaults.
        #[arg(long, short, env = "WEIR_CONFIG")]
        config: Option<PathBuf>,
    },
}

/// Calls the server's HTTP API; an error answer becomes an error with its message.
async fn call(method: reqwest::Method, http: &HttpAddr, path: &str) -> Result<serde_json::Value> {
    let url = format!("http://{}{path}", http.http);
    let mut request = reqwest::Client::new().request(method, &url);
    if let Some(token) = &http.token {
        request = request.bearer_auth(token);
    }
    let resp = request
        .send()
        .await
        .with_context(|| format!("calling {url} (is `weir serve` running with HTTP on {}? --http or WEIR_HTTP to change it)", http.http))?;
    let status = resp.status();
    let body = resp.bytes().await?;
    let v: serde_json::Value = if body.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&body)
            .with_context(|| format!("{url} answered {status} with no JSON"))?
    };
    if !status.is_success() {
        let msg = v["error"]["message"].as_str().unwrap_or("no message");
        anyhow::bail!("{status}: {msg}");
    }
    Ok(v)
}

fn print_status(v: &serde_json::Value) {
    let state = v["state"].as_str().unwrap_or("?");
    let restarts = v["restarts"].as_u64().unwrap_or(0);
    let mut line = format!(
        "{:<24} {state:<11} restarts {restarts}",
        v["name"].as_str().unwrap_or("?")
    );
    if let Some(e) = v["last_error"].as_str() {
        line.push_str(&format!("  last error: {e}"));
    }
    println!("{line}");
}

pub async fn run(cmd: PipelineCmd) -> Result<()> {
    match cmd {
        PipelineCmd::List(http) => {
            let v = call(reqwest::Method::GET, &http, "/pipelines").await?;
            let list = v["pipelines"].as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                println!("no pipelines");
            }
            for p in &list {
                print_status(p);
            }
            Ok(())
        }
        PipelineCmd::Describe { name, http } => {
            let v = call(reqwest::Method::GET, &http, &format!("/pipelines/{name}")).await?;
            print_status(&v);
            println!(
                "  {:<20} {:<10} {:>12} {:>12} {:>10} {:>10} {:>8}",
                "component", "kind", "received", "sent", "dropped", "errors", "queued"
            );
            for c in v["components"].as_array().cloned().unwrap_or_default() {
                let n = |k: &str| c[k].as_u64().map_or("-".to_string(), |x| x.to_string());
                println!(
                    "  {:<20} {:<10} {:>12} {:>12} {:>10} {:>10} {:>8}",
                    c["name"].as_str().unwrap_or("?"),
                    c["kind"].as_str().unwrap_or("?"),
                    n("received"),
                    n("sent"),
                    n("dropped"),
                    n("errors"),
                    n("queued_batches"),
                );
            }
            Ok(())
        }
        PipelineCmd::Stop { name, http } => {
            call(
                reqwest::Method::POST,
                &http,
                &format!("/pipelines/{name}/stop"),
            )
            .await?;
            eprintln!("pipeline `{name}` stopped");
            Ok(())
        }
        PipelineCmd::Start { name, http } => {
            call(
                reqwest::Method::POST,
                &http,
                &format!("/pipelines/{name}/start"),
            )
            .await?;
            eprintln!("pipeline `{name}` started");
            Ok(())
        }
        PipelineCmd::Reload { name, http } => {
            call(
                reqwest::Method::POST,
                &http,
                &format!("/pipelines/{name}/reload"),
            )
            .await?;
            eprintln!("pipeline `{name}` reloaded");
            Ok(())
        }
        PipelineCmd::Check { files } => {
            for f in files {
                let d = Declaration::from_file(&f)?;
                let p = config::check(&d)?;
                let components = p.components();
                eprintln!(
                    "{}: pipeline `{}` is valid ({} components)",
                    f.display(),
                    p.name(),
                    components.len()
                );
            }
            Ok(())
        }
        PipelineCmd::Run { file, config } => {
            let d = Declaration::from_file(&file)?;
            config::check(&d)?;
            // The server's configuration gives the data directory and the topic defaults.
            let server = crate::config::Config::load(config.as_deref(), std::env::vars())?;
            let (broker, _lock) = if d.uses_topics() {
                let lock = crate::serve::lock_data_dir(&server.data_dir)?;
                let bc = server.broker_config()?;
                let broker = tokio::task::spawn_blocking(move || Broker::open(bc))
                    .await?
                    .context("opening the data directory")?;
                (Some(broker), Some(lock))
            } else {
                (None, None)
            };
            let p = config::build(
                &d,
                &Host::Standalone {
                    broker: broker.clone(),
                    data_dir: server.data_dir.clone(),
                },
            )?;
            let stop = tokio_util::sync::CancellationToken::new();
            let maintenance = broker.clone().map(|b| {
                let stop = stop.clone();
                tokio::spawn(async move { b.run_maintenance(stop.cancelled_owned()).await })
            });
            let run = tokio::spawn({
                let (p, stop) = (p.clone(), stop.clone());
                async move { p.run(stop).await }
            });
            let signalled = tokio::select! {
                _ = crate::serve::shutdown_signal() => true,
                _ = until_finished(&p) => false,
            };
            if signalled {
                stop.cancel();
            }
            run.await?;
            stop.cancel();
            if let Some(m) = maintenance {
                let _ = m.await;
            }
            let status = p.status();
            for c in p.components() {
                tracing::info!(component = %c.name, received = c.stats.received, sent = c.stats.sent,
                    dropped = c.stats.dropped, errors = c.stats.errors, "pipeline component");
            }
            if let Some(b) = broker {
                b.close().await.context("closing the broker")?;
            }
            match (status.state, status.last_error) {
                (
                    weir_pipeline::pipeline::State::Finished
                    | weir_pipeline::pipeline::State::Stopped,
                    _,
                ) => Ok(()),
                (_, Some(e)) => anyhow::bail!("pipeline `{}` failed: {e}", p.name()),
                _ => Ok(()),
            }
        }
    }
}

/// Resolves once the pipeline ended by itself (its sources ended and everything drained).
async fn until_finished(p: &weir_pipeline::Pipeline) {
    loop {
        if matches!(p.status().state, weir_pipeline::pipeline::State::Finished) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
