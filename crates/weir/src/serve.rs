//! `weir serve`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use weir_broker::Broker;

use crate::config::Config;

pub async fn run(config_path: Option<PathBuf>) -> Result<()> {
    let config = Config::load(config_path.as_deref(), std::env::vars())?;
    init_logging(&config);
    let metrics = crate::metrics::install();
    let broker_config = config.broker_config()?;
    let broker = tokio::task::spawn_blocking(move || Broker::open(broker_config))
        .await?
        .context("opening the data directory")?;
    let tracer = match &config.tracing.otlp_endpoint {
        Some(endpoint) => {
            let provider = crate::otel::provider(endpoint, &config.tracing.service_name)?;
            broker.set_produce_observer(crate::otel::broker_observer(&provider));
            tracing::info!(%endpoint, "exporting traces over OTLP");
            Some(provider)
        }
        None => None,
    };
    let listener = TcpListener::bind(&config.native.listen)
        .await
        .with_context(|| format!("binding the native listener to {}", config.native.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(native = %addr, data_dir = %config.data_dir.display(), "weir is serving");
    // A line scripts and tests can wait for, on stdout whatever the log format.
    println!("weir listening native={addr}");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let kafka = if config.kafka.enabled {
        let listener = TcpListener::bind(&config.kafka.listen)
            .await
            .with_context(|| format!("binding the Kafka listener to {}", config.kafka.listen))?;
        let addr = listener.local_addr()?;
        let advertised = weir_kafka::Advertised {
            host: config
                .kafka
                .advertised_host
                .clone()
                .unwrap_or_else(|| addr.ip().to_string()),
            port: i32::from(addr.port()),
        };
        tracing::info!(kafka = %addr, "serving the Kafka protocol");
        println!("weir listening kafka={addr}");
        let broker = broker.clone();
        let mut rx = stop_rx.clone();
        Some(tokio::spawn(weir_kafka::serve(
            listener,
            broker,
            advertised,
            async move {
                let _ = rx.wait_for(|s| *s).await;
            },
        )))
    } else {
        None
    };
    let http = if config.http.enabled {
        let listener = TcpListener::bind(&config.http.listen)
            .await
            .with_context(|| format!("binding the HTTP listener to {}", config.http.listen))?;
        let addr = listener.local_addr()?;
        tracing::info!(http = %addr, "serving HTTP and WebSocket");
        println!("weir listening http={addr}");
        let broker = broker.clone();
        let mut rx = stop_rx.clone();
        let mut http_config = config.http_config();
        let source = broker.clone();
        http_config.metrics = Some(weir_http::MetricsSource(std::sync::Arc::new(move || {
            crate::metrics::render(&metrics, &source)
        })));
        Some(tokio::spawn(weir_http::serve(
            listener,
            broker,
            http_config,
            async move {
                let _ = rx.wait_for(|s| *s).await;
            },
        )))
    } else {
        None
    };
    let maintenance = {
        let broker = broker.clone();
        let mut rx = stop_rx.clone();
        tokio::spawn(async move {
            broker
                .run_maintenance(async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await
        })
    };
    let shutdown = async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested: finishing in-flight requests");
        let _ = stop_tx.send(true);
    };
    weir_server::run(listener, broker, config.server_config(), shutdown).await?;
    let _ = maintenance.await;
    if let Some(k) = kafka {
        let _ = k.await;
    }
    if let Some(h) = http {
        match h.await {
            Ok(Err(e)) => tracing::error!(error = %e, "HTTP listener failed"),
            Err(e) => tracing::error!(error = %e, "HTTP listener task failed"),
            Ok(Ok(())) => {}
        }
    }
    if let Some(provider) = tracer {
        // Export what is queued; the exporter blocks, so off the runtime's threads.
        let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
    }
    tracing::info!("weir stopped cleanly");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
