//! The HTTP listener's accept loop with the broker's connection admission: the per-address
//! connection cap and rate apply to HTTP and WebSocket connections as to the other front doors.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use weir_broker::flow::{Admission, Admitted};

/// A `TcpListener` that admits each connection through [`Admission`]; refused ones are closed
/// at once (an HTTP client sees the connection reset before any response).
#[derive(Debug)]
pub struct AdmittingListener {
    inner: TcpListener,
    admission: Arc<Admission>,
}

impl AdmittingListener {
    pub fn new(inner: TcpListener, admission: Arc<Admission>) -> Self {
        Self { inner, admission }
    }
}

/// An admitted connection: its admission slot is held as long as the stream lives.
#[derive(Debug)]
pub struct AdmittedStream {
    stream: TcpStream,
    _admitted: Admitted,
}

impl axum::serve::Listener for AdmittingListener {
    type Io = AdmittedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, addr) = match self.inner.accept().await {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            match self.admission.admit(addr.ip()) {
                Ok(admitted) => {
                    let _ = stream.set_nodelay(true);
                    return (
                        AdmittedStream {
                            stream,
                            _admitted: admitted,
                        },
                        addr,
                    );
                }
                Err(refusal) => {
                    tracing::warn!(peer = %addr, ?refusal, "refusing an HTTP connection");
                    drop(stream);
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

impl AsyncRead for AdmittedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for AdmittedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
