//! The HTTP door's connections: `weir-net`'s shared accept loop (admission per source address,
//! the connection gauge), each connection served by hyper's HTTP/1 with a timer.
//!
//! Why not `axum::serve`: it gives hyper no timer, so no timeout applies while a request head
//! arrives. A client that opened a connection and sent half a request, or went quiet between
//! requests, was held for good (about 36 KB each; 14,600 of them held 550 MB). Here hyper's
//! header-read timeout runs from the moment a connection waits for a request head (when it
//! opens, and after each answer) until the head is complete, so one setting bounds both a
//! slow head and an idle keep-alive connection.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use weir_net::Accepted;

/// The client's address, in every request's extensions (authentication limits failures per
/// address).
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    pub(crate) addr: std::net::SocketAddr,
    /// The name a verified client certificate gives (mutual TLS).
    pub(crate) certificate_name: Option<std::sync::Arc<str>>,
}

/// Serves one admitted connection until it closes, its head or idle timeout passes, or the
/// shutdown begins (then the request in progress is answered and the connection closed).
pub(crate) async fn connection(
    accepted: Accepted,
    tls: Option<std::sync::Arc<weir_net::Tls>>,
    app: Router,
    idle_timeout: Duration,
    begun: impl Future<Output = ()>,
) {
    let Accepted { stream, peer, slot } = accepted;
    let Some(stream) = weir_net::secure(tls.as_deref(), stream, peer, "http").await else {
        return;
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(idle_timeout);
    // Each request carries the connection's peer.
    let certificate_name: Option<std::sync::Arc<str>> = stream.peer_name().map(Into::into);
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(Peer {
                addr: peer,
                certificate_name: certificate_name.clone(),
            });
            tower_service::Service::call(&mut app.clone(), req)
        });
    let conn = builder
        .serve_connection(TokioIo::new(stream), service)
        // WebSocket upgrades: the upgraded socket goes on as a hub task of its own.
        .with_upgrades();
    tokio::pin!(conn, begun);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = &mut begun => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "HTTP connection ended");
    }
    drop(slot);
}
