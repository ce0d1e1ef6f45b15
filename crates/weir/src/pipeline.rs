//! `weir pipeline check | run`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use weir_broker::Broker;
use weir_pipeline::config::{self, Declaration, Host};

#[derive(clap::Subcommand, Debug)]
pub enum PipelineCmd {
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

pub async fn run(cmd: PipelineCmd) -> Result<()> {
    match cmd {
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
