//! weir's native-protocol server.
//!
//! Layout, three layers as in the house style:
//! - [`serve`] (this file): accepts connections (`weir-net`'s shared accept loop, under the
//!   connection limit) until the server's shutdown begins, then tells every connection to
//!   finish its in-flight requests. The binary owns the shutdown: it waits for the connections
//!   and closes the broker.
//! - `connection`: one connection — frames in, responses and pushes out, pipelining with a
//!   bounded window, heartbeats and the idle timeout.
//! - `command`: one request — a decoded frame applied to the [`Broker`].

mod command;
mod connection;
mod push_queue;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use weir_broker::Broker;
use weir_broker::activity::Door;
use weir_net::{Acceptor, Shutdown};
use weir_wire::{ErrorCode, Flags, FrameHeader};

/// Settings of the native listener, the server's `[native]` section (the listen address is
/// the binary's): each key is a field's name (durations with their unit: `idle_timeout_ms`,
/// `busy_poll_us`), unknown keys are refused, and every default is written once, here.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Most simultaneous connections; more are answered with CONNECTION_LIMIT and closed.
    /// Default 10,000.
    pub max_connections: usize,
    /// Requests in flight per connection; when reached, the connection is not read until one
    /// completes, so TCP pushes back on the client. Default 64.
    pub max_in_flight: usize,
    /// Largest frame accepted. Default 16 MiB.
    pub max_frame_bytes: usize,
    /// A connection silent for this long is closed; the server pings after a third of it
    /// without sending anything. Default 60 s. Key `idle_timeout_ms`.
    #[serde(rename = "idle_timeout_ms", with = "weir_broker::settings::millis")]
    pub idle_timeout: Duration,
    /// Push subscriptions per connection. Default 1,024.
    pub max_subscriptions_per_connection: usize,
    /// Most records a `DROP_OLDEST`/`DISCONNECT` subscription may ask its queue to hold;
    /// larger requests are capped. A request for 0 gets `min(10,000, this)`. Default 100,000.
    pub push_queue_max_records: u64,
    /// Most bytes of record batches such a queue may hold; larger requests are capped. A
    /// request for 0 gets `min(4 MiB, this)`. Default 16 MiB.
    pub push_queue_max_bytes: u64,
    /// The sum of the byte bounds of one connection's queues; a subscription that would pass
    /// it is refused (INVALID_REQUEST). Default 256 MiB.
    pub push_queue_bytes_per_connection: u64,
    /// After answering a client that sent its request within this long of the previous
    /// answer, poll its socket for the next request for up to this long instead of sleeping
    /// (yielding to other tasks meanwhile): lower latency for closed-loop clients, at the
    /// cost of CPU time while polling. At most one connection per two CPUs (at least one)
    /// polls at a time. Zero turns it off; at most 1 ms. Default 200 µs. Key `busy_poll_us`.
    #[serde(rename = "busy_poll_us", with = "weir_broker::settings::micros")]
    pub busy_poll: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_in_flight: 64,
            max_frame_bytes: weir_wire::DEFAULT_MAX_FRAME_BYTES,
            idle_timeout: Duration::from_secs(60),
            max_subscriptions_per_connection: 1024,
            push_queue_max_records: 100_000,
            push_queue_max_bytes: 16 << 20,
            push_queue_bytes_per_connection: 256 << 20,
            busy_poll: Duration::from_micros(200),
        }
    }
}

impl ServerConfig {
    /// Checks the settings as a whole; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_connections == 0 || self.max_in_flight == 0 {
            return Err("max_connections and max_in_flight must be positive".into());
        }
        if self.max_frame_bytes < 1024 {
            return Err("max_frame_bytes must be at least 1024".into());
        }
        if self.busy_poll > Duration::from_millis(1) {
            return Err("busy_poll_us must be at most 1000 (0 turns busy polling off)".into());
        }
        if self.max_subscriptions_per_connection == 0
            || self.push_queue_max_records == 0
            || self.push_queue_max_bytes == 0
        {
            return Err(
                "max_subscriptions_per_connection, push_queue_max_records and \
                 push_queue_max_bytes must be positive"
                    .into(),
            );
        }
        if self.push_queue_bytes_per_connection < self.push_queue_max_bytes {
            return Err(
                "push_queue_bytes_per_connection must be at least push_queue_max_bytes".into(),
            );
        }
        if self.idle_timeout < Duration::from_millis(300) {
            return Err("idle_timeout_ms must be at least 300".into());
        }
        Ok(())
    }
}

/// Serves the native protocol on `listeners` (each TLS when it has a [`weir_net::Tls`]: the
/// handshake runs in the connection's task, under the TLS handshake timeout), under one
/// connection limit, until `shutdown` begins: connections are spawned on the shutdown's
/// tracker, and once it begins each one stops reading, answers what it has read and ends.
/// The caller (the binary) waits for them, then closes the broker.
pub async fn serve(
    listeners: Vec<(TcpListener, Option<Arc<weir_net::Tls>>)>,
    broker: Broker,
    config: ServerConfig,
    shutdown: Shutdown,
) {
    let config = Arc::new(config);
    let limit = weir_net::ConnectionLimit::new(config.max_connections);
    // Connections watch this (a watch receiver is smaller than a cancellation future, and
    // idle connections are many).
    let (stop_tx, stop_rx) = watch::channel(false);
    let loops = listeners.into_iter().map(|(listener, tls)| {
        let mut acceptor = Acceptor::new(
            listener,
            "native",
            broker.admission().clone(),
            shutdown.clone(),
        )
        .with_shared_limit(&limit)
        .with_counters(broker.activity().door(Door::Native).clone())
        .with_refusal(Arc::new(|stream, why| Box::pin(refuse(stream, why))));
        let (broker, config, shutdown, stop_rx) = (
            broker.clone(),
            config.clone(),
            shutdown.clone(),
            stop_rx.clone(),
        );
        async move {
            while let Some(accepted) = acceptor.accept().await {
                let stop = stop_rx.clone();
                let (broker, config, tls) = (broker.clone(), config.clone(), tls.clone());
                shutdown.spawn(async move {
                    let weir_net::Accepted { stream, peer, slot } = accepted;
                    let Some(stream) =
                        weir_net::secure(tls.as_deref(), stream, peer, "native").await
                    else {
                        return;
                    };
                    let conn = connection::Connection::new(stream, peer, broker, config);
                    conn.run(stop).await;
                    drop(slot);
                });
            }
        }
    });
    futures_util::future::join_all(loops).await;
    tracing::info!(
        tasks = shutdown.tasks(),
        "native listener closed: draining connections"
    );
    let _ = stop_tx.send(true);
}

async fn refuse(mut stream: tokio::net::TcpStream, why: &'static str) {
    use tokio::io::AsyncWriteExt;
    let header = FrameHeader {
        api_key: 0,
        api_version: 0,
        correlation_id: 0,
        flags: Flags(0),
    };
    let out = command::OutFrame::error(&header, ErrorCode::ConnectionLimit, why);
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&out.head)).await;
    let _ = stream.shutdown().await;
}
