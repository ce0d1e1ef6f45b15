//! The HTTP listener for axum: `weir-net`'s shared accept loop (admission per source address,
//! the connection gauge) behind axum's `Listener` trait.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use weir_net::{Acceptor, Slot};

/// Admitted connections for axum; refused ones are closed at once (an HTTP client sees the
/// connection reset before any response).
#[derive(Debug)]
pub struct AdmittingListener {
    inner: Acceptor,
}

impl AdmittingListener {
    pub fn new(inner: Acceptor) -> Self {
        Self { inner }
    }
}

/// An admitted connection: its place is held as long as the stream lives.
#[derive(Debug)]
pub struct AdmittedStream {
    stream: TcpStream,
    _slot: Slot,
}

impl axum::serve::Listener for AdmittingListener {
    type Io = AdmittedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.inner.accept().await {
            Some(a) => (
                AdmittedStream {
                    stream: a.stream,
                    _slot: a.slot,
                },
                a.peer,
            ),
            // The shutdown began: axum's graceful shutdown stops calling this at the same
            // signal, so this never resolves.
            None => std::future::pending().await,
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
