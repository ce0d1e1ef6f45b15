//! What weir's front doors share about sockets, written once so that the native, Kafka and
//! HTTP doors cannot drift apart:
//!
//! - [`Shutdown`]: the server's one lifetime, owned by the binary. A cancellation token that
//!   every door watches and a task tracker that every door spawns its connection tasks on.
//!   On SIGTERM the binary begins it; each door stops accepting, each connection stops
//!   reading new requests and answers those it has read; the binary waits for the tracker
//!   (up to a grace period) and only then closes the broker, once. Doors never close what
//!   they share.
//! - [`Acceptor`]: one door's accept loop: accept errors backed off, `TCP_NODELAY`, the
//!   door's connection limit, the broker's admission per source address (count and rate),
//!   the open-connections gauge (`weir_<door>_connections`), and refusal (each door says how it refuses: the native door
//!   answers an error frame first, Kafka and HTTP clients just see the connection close).
//! - [`tls`]: TLS on a listener ([`Tls`]) and the connection type every door reads and writes
//!   ([`Stream`]: plain TCP, or TLS over it); [`secure`] runs a connection's handshake.

pub mod tls;
mod tls_stream;

pub use tls::{Stream, Tls, TlsFiles};

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weir_broker::flow::{Admission, Admitted, Refusal};

/// The server's lifetime: one per process, cloned into every door.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Begins the shutdown: doors stop accepting and connections start draining.
    pub fn begin(&self) {
        self.token.cancel();
    }

    /// Whether the shutdown has begun.
    pub fn is_begun(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once the shutdown has begun.
    pub fn begun(&self) -> impl Future<Output = ()> + Send + 'static {
        self.token.clone().cancelled_owned()
    }

    /// Spawns a task the shutdown waits for: a connection, or a door's own work.
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(task)
    }

    /// Tasks still running.
    pub fn tasks(&self) -> usize {
        self.tracker.len()
    }

    /// Waits up to `grace` for every task spawned through [`Shutdown::spawn`] to end (begin
    /// the shutdown first). Whether they all did.
    pub async fn drain(&self, grace: Duration) -> bool {
        self.tracker.close();
        tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
    }
}

/// How a door turns a refused connection away (it owns the socket until it is done).
pub type Refuse =
    Arc<dyn Fn(TcpStream, &'static str) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// A door's connection limit, shared by its listeners ([`Acceptor::with_shared_limit`]).
#[derive(Debug, Clone)]
pub struct ConnectionLimit {
    places: Arc<Semaphore>,
    max: usize,
}

impl ConnectionLimit {
    /// At most `max` connections at once.
    pub fn new(max: usize) -> Self {
        Self {
            places: Arc::new(Semaphore::new(max)),
            max,
        }
    }
}

/// One door's accept loop.
pub struct Acceptor {
    listener: TcpListener,
    door: &'static str,
    admission: Arc<Admission>,
    shutdown: Shutdown,
    /// The door's connection limit, its size, and the count of connections refused at it.
    limit: Option<(Arc<Semaphore>, usize, metrics::Counter)>,
    refuse: Option<Refuse>,
    open: metrics::Gauge,
    counters: Option<Arc<weir_broker::activity::DoorCounters>>,
}

impl std::fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acceptor")
            .field("door", &self.door)
            .field("listener", &self.listener)
            .finish_non_exhaustive()
    }
}

/// An admitted connection. `slot` holds its place under the door's limit and its admission,
/// and counts it in the door's gauge, until dropped: keep it as long as the connection lives.
#[derive(Debug)]
pub struct Accepted {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub slot: Slot,
}

/// A connection's place: see [`Accepted`].
#[derive(Debug)]
pub struct Slot {
    _permit: Option<OwnedSemaphorePermit>,
    _admitted: Admitted,
    open: metrics::Gauge,
    counters: Option<Arc<weir_broker::activity::DoorCounters>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.decrement(1.0);
        if let Some(c) = &self.counters {
            c.closed();
        }
    }
}

impl Acceptor {
    /// The accept loop of the door called `door` (`native`, `kafka`, `http`: its metrics are
    /// `weir_<door>_connections` and `weir_<door>_connections_refused_total`).
    pub fn new(
        listener: TcpListener,
        door: &'static str,
        admission: Arc<Admission>,
        shutdown: Shutdown,
    ) -> Self {
        Self {
            listener,
            door,
            admission,
            shutdown,
            limit: None,
            refuse: None,
            open: metrics::gauge!(format!("weir_{door}_connections")),
            counters: None,
        }
    }

    /// Counts the door's open connections in `counters` too (the broker's
    /// [`weir_broker::Broker::activity`], which the console reads).
    pub fn with_counters(mut self, counters: Arc<weir_broker::activity::DoorCounters>) -> Self {
        self.counters = Some(counters);
        self
    }

    /// At most `max` connections open at once; more are refused (and counted in
    /// `weir_<door>_connections_refused_total`; refusals by the broker's admission per
    /// address are counted by the broker).
    pub fn with_limit(self, max: usize) -> Self {
        self.with_shared_limit(&ConnectionLimit::new(max))
    }

    /// As [`Acceptor::with_limit`], the places shared with every other acceptor given the
    /// same `limit`: a door's plain and TLS listeners together.
    pub fn with_shared_limit(mut self, limit: &ConnectionLimit) -> Self {
        let refused = metrics::counter!(format!("weir_{}_connections_refused_total", self.door));
        self.limit = Some((limit.places.clone(), limit.max, refused));
        self
    }

    /// How refused connections are turned away (default: closed at once). Runs as a task of
    /// the shutdown.
    pub fn with_refusal(mut self, refuse: Refuse) -> Self {
        self.refuse = Some(refuse);
        self
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The next admitted connection, or `None` once the shutdown has begun.
    pub async fn accept(&mut self) -> Option<Accepted> {
        loop {
            let (stream, peer) = tokio::select! {
                biased;
                _ = self.shutdown.token.cancelled() => return None,
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(door = self.door, error = %e, "accept failed");
                        tokio::select! {
                            _ = self.shutdown.token.cancelled() => return None,
                            _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
                        }
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let permit = match &self.limit {
                None => None,
                Some((sem, max, refused)) => match sem.clone().try_acquire_owned() {
                    Ok(p) => Some(p),
                    Err(_) => {
                        tracing::warn!(door = self.door, %peer, limit = max, "connection limit reached; refusing");
                        refused.increment(1);
                        self.refuse(stream, "connection limit reached");
                        continue;
                    }
                },
            };
            let admitted = match self.admission.admit(peer.ip()) {
                Ok(a) => a,
                Err(refusal) => {
                    let why = match refusal {
                        Refusal::TooManyFromAddress => "too many connections from this address",
                        Refusal::TooFast => "connections from this address are opened too fast",
                    };
                    tracing::warn!(door = self.door, %peer, why, "refusing a connection");
                    self.refuse(stream, why);
                    continue;
                }
            };
            self.open.increment(1.0);
            if let Some(c) = &self.counters {
                c.opened();
            }
            return Some(Accepted {
                stream,
                peer,
                slot: Slot {
                    _permit: permit,
                    _admitted: admitted,
                    open: self.open.clone(),
                    counters: self.counters.clone(),
                },
            });
        }
    }

    fn refuse(&self, stream: TcpStream, why: &'static str) {
        if let Some(refuse) = &self.refuse {
            self.shutdown.spawn(refuse(stream, why));
        }
    }
}

/// A door's connection made ready to speak: the TLS handshake when the listener has `tls`,
/// under its timeout. `None` (logged, and counted in `weir_<door>_tls_handshake_failures_total`)
/// when the handshake failed: the connection is dropped.
pub async fn secure(
    tls: Option<&Tls>,
    tcp: TcpStream,
    peer: SocketAddr,
    door: &'static str,
) -> Option<Stream> {
    let Some(tls) = tls else {
        return Some(Stream::Plain(tcp));
    };
    match tls.accept(tcp).await {
        Ok(s) => Some(s),
        Err(e) => {
            metrics::counter!(format!("weir_{door}_tls_handshake_failures_total")).increment(1);
            tracing::debug!(door, %peer, error = %e, "TLS handshake failed");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission() -> Arc<Admission> {
        Arc::new(Admission::new(0, 0))
    }

    #[tokio::test]
    async fn accepts_until_the_limit_then_refuses_and_stops_at_shutdown() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = Shutdown::new();
        let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = refused.clone();
        let mut acceptor = Acceptor::new(listener, "test", admission(), shutdown.clone())
            .with_limit(1)
            .with_refusal(Arc::new(move |_stream, why| {
                assert_eq!(why, "connection limit reached");
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Box::pin(async {})
            }));
        let _c1 = TcpStream::connect(addr).await.unwrap();
        let first = acceptor.accept().await.unwrap();
        // The second is refused while the first holds the one place…
        let _c2 = TcpStream::connect(addr).await.unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(300), acceptor.accept()).await;
        assert!(waited.is_err(), "nothing admitted past the limit");
        assert_eq!(refused.load(std::sync::atomic::Ordering::SeqCst), 1);
        // …and a third is accepted once the first ends.
        drop(first);
        let _c3 = TcpStream::connect(addr).await.unwrap();
        let third = acceptor.accept().await.unwrap();
        drop(third);
        shutdown.begin();
        assert!(acceptor.accept().await.is_none());
        assert!(shutdown.drain(Duration::from_secs(5)).await);
    }

    #[tokio::test]
    async fn drain_waits_for_tracked_tasks_up_to_the_grace_period() {
        let shutdown = Shutdown::new();
        let s = shutdown.clone();
        shutdown.spawn(async move { s.begun().await });
        shutdown.spawn(std::future::pending::<()>());
        shutdown.begin();
        assert!(!shutdown.drain(Duration::from_millis(100)).await);
        assert_eq!(shutdown.tasks(), 1);
    }
}
