//! weir's HTTP front door: a JSON API over the broker core and WebSocket live push.
//!
//! Layout:
//! - [`serve`] (this file): accepts on `weir-net`'s shared accept loop until the server's
//!   shutdown begins, each connection served by hyper (`listener`: head and idle timeouts),
//!   then lets requests finish, closes WebSocket connections with a going-away frame and waits
//!   for them, up to a grace period.
//! - [`api`]: the HTTP routes — produce, fetch, topics, groups, health, stats — registered
//!   in one place that also records them, so a test can hold them against the OpenAPI
//!   document.
//! - [`openapi`]: the OpenAPI 3 document served at `/openapi.json`.
//! - [`records`]: records between JSON and record batches.
//! - [`debug`]: profiling endpoints (`/debug/pprof/profile`, `/debug/heap`), answered only
//!   when [`HttpConfig::profiling`] is on.
//! - [`ws`]: WebSocket subscriptions: bounded per-subscriber queues with an overflow policy,
//!   one shared reader per watched partition, resume with explicit gap notices.
//! - [`error`]: the JSON error body and its stable codes.
//! - [`console`]: the web console's embedded files and its live feed of the server's
//!   counters (`/console/live`, one sampler task shared by every open console).

// The OpenAPI document is one `json!` literal, deeper than the default limit.
#![recursion_limit = "512"]

pub mod api;
pub mod console;
pub mod debug;
pub mod error;
mod listener;
pub mod openapi;
pub mod records;
pub mod ws;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use weir_broker::Broker;
use weir_broker::activity::Door;
use weir_net::{Acceptor, Shutdown};

pub use error::{ApiError, ErrorCode};
pub use ws::hub::{Hub, WsConfig, WsStats, WsStatsSnapshot};

/// Settings of the HTTP listener, the server's `[http]` section (the listen address and the
/// on/off switch are the binary's; the WebSocket settings, [`WsConfig`], are its `ws_` keys):
/// each key is a field's name (durations with their unit, `max_wait_ms`), unknown keys are
/// refused, and every default is written once, here.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Largest request body. Default 8 MiB.
    pub max_body_bytes: usize,
    /// Longest `max_wait_ms` a fetch may ask for. Default 30 s. Key `max_wait_ms`.
    #[serde(rename = "max_wait_ms", with = "weir_broker::settings::millis")]
    pub max_wait: Duration,
    /// Bytes a fetch returns when it does not say. Default 1 MiB.
    pub default_fetch_bytes: usize,
    /// Largest `max_bytes` a fetch may ask for. Default 16 MiB.
    pub max_fetch_bytes: usize,
    /// How long shutdown waits for WebSocket connections to take their close frame (at
    /// most the server's own grace period). Default 5 s. Key `shutdown_grace_ms`.
    #[serde(rename = "shutdown_grace_ms", with = "weir_broker::settings::millis")]
    pub shutdown_grace: Duration,
    /// A connection that sends no complete request head for this long (from when it opens,
    /// or from its last answer) is closed: it bounds both a request head sent slowly and an
    /// idle keep-alive connection. Default 30 s. Key `idle_timeout_ms`.
    #[serde(rename = "idle_timeout_ms", with = "weir_broker::settings::millis")]
    pub idle_timeout: Duration,
    /// Most HTTP connections open at once (a WebSocket connection counts until its upgrade;
    /// `ws.max_connections` bounds those); more are closed as they come. Default 10,000.
    pub max_connections: usize,
    /// The `ws_` keys of the section (read apart, see the binary's configuration).
    #[serde(skip)]
    pub ws: WsConfig,
    /// What `/metrics` serves before the WebSocket counters (the process's Prometheus text);
    /// `None`: only those counters. Not a setting: the binary gives it.
    #[serde(skip)]
    pub metrics: Option<MetricsSource>,
    /// Serve `/debug/pprof/profile` and `/debug/heap`; off, they answer 404
    /// `profiling_disabled`. Default false.
    pub profiling: bool,
    /// The server's pipelines, for `/pipelines`; `None`: the routes answer as if none were
    /// declared. Not a setting: the binary gives it.
    #[cfg(feature = "pipelines")]
    #[serde(skip)]
    pub pipelines: Option<std::sync::Arc<weir_pipeline::manager::Manager>>,
    /// Name of the process's global allocator, reported by `/debug/heap`. Default `"system"`.
    /// Not a setting: the binary gives it.
    #[serde(skip)]
    pub allocator: &'static str,
    /// Value schemas by topic (`[schemas.TOPIC]`): fetches asked for `schema=true` decode
    /// values with them. Not a setting here: the binary loads them.
    #[serde(skip)]
    pub schemas: Schemas,
}

/// Protobuf message types by topic name.
pub type Schemas =
    std::sync::Arc<std::collections::BTreeMap<String, prost_reflect::MessageDescriptor>>;

/// A source of Prometheus text for `/metrics`.
#[derive(Clone)]
pub struct MetricsSource(pub Arc<dyn Fn() -> String + Send + Sync>);

impl std::fmt::Debug for MetricsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetricsSource")
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 8 << 20,
            max_wait: Duration::from_secs(30),
            default_fetch_bytes: 1 << 20,
            max_fetch_bytes: 16 << 20,
            shutdown_grace: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            ws: WsConfig::default(),
            metrics: None,
            #[cfg(feature = "pipelines")]
            pipelines: None,
            profiling: false,
            allocator: "system",
            schemas: Default::default(),
        }
    }
}

impl HttpConfig {
    /// Checks the settings as a whole; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_body_bytes < 1024 {
            return Err("max_body_bytes must be at least 1024".into());
        }
        if self.idle_timeout < Duration::from_millis(100) || self.max_connections == 0 {
            return Err("idle_timeout_ms must be at least 100 and max_connections positive".into());
        }
        self.ws.validate()
    }
}

/// Serves the HTTP API and `/ws` on `listeners` (each plain or TLS) until `shutdown` begins: every connection is a
/// task of the shutdown. Then each connection answers the request it is in and closes (long
/// polls answer at once: the binary has told the broker it is stopping), and WebSocket clients
/// get a going-away close frame, waited for up to `shutdown_grace`. Run it as a task of the
/// shutdown: the binary waits for it and the connections, then closes the broker.
pub async fn serve(
    listeners: Vec<(TcpListener, Option<Arc<weir_net::Tls>>)>,
    broker: Broker,
    config: HttpConfig,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let hub = Hub::new(broker.clone(), config.ws.clone());
    let sweeper = tokio::spawn(hub.clone().run_sweeper());
    let grace = config.shutdown_grace;
    let idle_timeout = config.idle_timeout;
    // One limit for every listener (plain and TLS) of the door.
    let limit = weir_net::ConnectionLimit::new(config.max_connections.max(1));
    let state = api::AppState::new(broker, config, hub.clone());
    let sampler = tokio::spawn(state.sampler.clone().run(
        state.broker.clone(),
        hub.clone(),
        state.shutdown.clone(),
    ));
    let app = api::router(state.clone()).into_router();
    // One hub and one state for every listener (plain and TLS): WebSocket feeds and counters
    // are shared.
    let loops = listeners.into_iter().map(|(listener, tls)| {
        let mut acceptor = Acceptor::new(
            listener,
            "http",
            state.broker.admission().clone(),
            shutdown.clone(),
        )
        .with_shared_limit(&limit)
        .with_counters(state.broker.activity().door(Door::Http).clone());
        let (app, shutdown) = (app.clone(), shutdown.clone());
        async move {
            while let Some(accepted) = acceptor.accept().await {
                shutdown.spawn(listener::connection(
                    accepted,
                    tls.clone(),
                    app.clone(),
                    idle_timeout,
                    shutdown.begun(),
                ));
            }
        }
    });
    futures::future::join_all(loops).await;
    state
        .stopping
        .store(true, std::sync::atomic::Ordering::Release);
    state.shutdown.cancel();
    hub.shutdown();
    hub.tasks.close();
    if tokio::time::timeout(grace, hub.tasks.wait()).await.is_err() {
        tracing::warn!("WebSocket connections still open after the shutdown grace period");
    }
    sweeper.abort();
    sampler.abort();
    Ok(())
}

/// The committed seeds of fuzz target `target` whose names start with `prefix`, as (path,
/// bytes): the tests that hold each seed to be accepted input read them here. Fails if none.
#[cfg(test)]
pub(crate) fn fuzz_seeds(target: &str, prefix: &str) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut seeds = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        {
            let bytes = std::fs::read(&path).unwrap();
            seeds.push((path, bytes));
        }
    }
    assert!(!seeds.is_empty(), "no seeds {prefix}* in {}", dir.display());
    seeds
}
