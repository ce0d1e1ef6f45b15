//! weir's native-protocol server.
//!
//! Layout, three layers as in the house style:
//! - [`run`] (this file): accepts connections under a connection limit and shuts down on
//!   request — stop accepting, let every connection finish its in-flight requests, then close
//!   the broker so every log is flushed and marked clean.
//! - `connection`: one connection — frames in, responses and pushes out, pipelining with a
//!   bounded window, heartbeats and the idle timeout.
//! - `command`: one request — a decoded frame applied to the [`Broker`].

mod command;
mod connection;
mod push_queue;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use weir_broker::Broker;
use weir_wire::{ErrorCode, Flags, FrameHeader};

/// Settings of the native listener. Every default is documented on its field.
#[derive(Debug, Clone)]
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
    /// without sending anything. Default 60 s.
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
    /// How long shutdown waits for in-flight requests. Default 10 s.
    pub shutdown_grace: Duration,
    /// After answering a client that sent its request within this long of the previous
    /// answer, poll its socket for the next request for up to this long instead of sleeping
    /// (yielding to other tasks meanwhile): lower latency for closed-loop clients, at the
    /// cost of CPU time while polling. At most one connection per two CPUs (at least one)
    /// polls at a time. Zero turns it off. Default 200 µs.
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
            shutdown_grace: Duration::from_secs(10),
            busy_poll: Duration::from_micros(200),
        }
    }
}

/// Serves the native protocol on `listener` until `shutdown` resolves, then drains
/// connections and closes the broker.
pub async fn run(
    listener: TcpListener,
    broker: Broker,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let config = Arc::new(config);
    let limit = Arc::new(Semaphore::new(config.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let tracker = tokio_util::task::TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::warn!(%peer, limit = config.max_connections, "connection limit reached; refusing");
            metrics::counter!("weir_native_connections_refused_total").increment(1);
            tracker.spawn(refuse(stream, "connection limit reached"));
            continue;
        };
        let admitted = match broker.admission().admit(peer.ip()) {
            Ok(a) => a,
            Err(refusal) => {
                let why = match refusal {
                    weir_broker::flow::Refusal::TooManyFromAddress => {
                        "too many connections from this address"
                    }
                    weir_broker::flow::Refusal::TooFast => {
                        "connections from this address are opened too fast"
                    }
                };
                tracing::warn!(%peer, why, "refusing a connection");
                tracker.spawn(refuse(stream, why));
                continue;
            }
        };
        let conn = connection::Connection::new(stream, peer, broker.clone(), config.clone());
        let stop = stop_rx.clone();
        tracker.spawn(async move {
            let open = metrics::gauge!("weir_native_connections");
            open.increment(1.0);
            conn.run(stop).await;
            open.decrement(1.0);
            drop(permit);
            drop(admitted);
        });
    }
    tracing::info!(
        connections = tracker.len(),
        "shutting down: draining connections"
    );
    let _ = stop_tx.send(true);
    broker.begin_shutdown();
    tracker.close();
    if tokio::time::timeout(config.shutdown_grace, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("connections did not drain within the grace period");
    }
    if let Err(e) = broker.close().await {
        tracing::error!(error = %e, "closing the broker failed");
        return Err(std::io::Error::other(e.to_string()));
    }
    Ok(())
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
