//! One multiplexed connection: many requests in flight, matched to responses by correlation
//! id; pushes routed to their subscription; the server's pings answered; our own pings sent
//! while the connection is quiet.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot};
use weir_wire::messages as msg;
use weir_wire::{Api, ErrorCode, Flags, Frame, FrameHeader, decode_frame, encode_frame};

use crate::error::{ClientError, Result};
use crate::inbox::Inbox;

/// A push frame for one subscription.
#[derive(Debug)]
pub(crate) struct Pushed {
    pub data: msg::PushData,
    pub records: Bytes,
}

#[derive(Debug, Default)]
struct Shared {
    pending: HashMap<u32, oneshot::Sender<Result<Frame>>>,
    pushes: HashMap<u64, Arc<Inbox>>,
    /// Pushes that arrived before their subscription was registered.
    early: HashMap<u64, Vec<Pushed>>,
}

/// A whole frame waiting for the writer task.
#[derive(Debug)]
struct Outgoing {
    parts: Vec<Bytes>,
}

/// Pushes held for subscriptions not registered yet, across all of them.
const MAX_EARLY_PUSHES: usize = 1024;

#[derive(Debug)]
pub(crate) struct Connection {
    /// Frames go whole into this queue and one task writes them, so a caller that is
    /// cancelled never leaves half a frame on the socket.
    out: mpsc::UnboundedSender<Outgoing>,
    /// Frames handed to the writer task and not yet fully written. While it is zero a caller
    /// may write its frame itself, without a task hop, if the socket takes it whole at once.
    queued: Mutex<usize>,
    /// The socket's write half, for writes without the writer task; `None` over TLS (every
    /// frame goes through the task there).
    write: Option<Arc<OwnedWriteHalf>>,
    shared: Mutex<Shared>,
    next_id: AtomicU32,
    closed: AtomicBool,
    max_frame: usize,
    /// The largest frame the server takes (its hello says), `usize::MAX` until known. A
    /// larger request is refused here: the server would close the connection on it, failing
    /// every other request under way on it.
    server_max_frame: std::sync::atomic::AtomicUsize,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        for h in self.tasks.lock().drain(..) {
            h.abort();
        }
    }
}

impl Connection {
    pub(crate) async fn open(
        addr: &str,
        tls: Option<&crate::tls::ClientTls>,
    ) -> Result<Arc<Connection>> {
        let connect_err = |e| ClientError::Connect {
            addr: addr.to_string(),
            source: e,
        };
        let stream = TcpStream::connect(addr).await.map_err(connect_err)?;
        stream.set_nodelay(true).map_err(ClientError::Io)?;
        let Some(tls) = tls else {
            let (read, write) = stream.into_split();
            let write = Arc::new(write);
            return Ok(Self::start_tasks(
                read,
                Some(write.clone()),
                move |rx, weak| write_loop(write, rx, weak),
            ));
        };
        // The name checked against the server's certificate: the address's host part (an
        // IP address or a DNS name).
        let host = addr
            .rsplit_once(':')
            .map_or(addr, |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']');
        let name = rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| {
            ClientError::Invalid(format!(
                "{host:?} cannot be checked against a certificate: {e}"
            ))
        })?;
        let tls = tokio_rustls::TlsConnector::from(tls.0.clone())
            .connect(name, stream)
            .await
            .map_err(connect_err)?;
        let (read, write) = tokio::io::split(tls);
        Ok(Self::start_tasks(read, None, move |rx, weak| {
            stream_write_loop(write, rx, weak)
        }))
    }

    /// The connection, its reader task on `read` and its writer task (`writer`).
    fn start_tasks<W>(
        read: impl AsyncRead + Unpin + Send + 'static,
        write: Option<Arc<OwnedWriteHalf>>,
        writer: impl FnOnce(mpsc::UnboundedReceiver<Outgoing>, std::sync::Weak<Connection>) -> W,
    ) -> Arc<Connection>
    where
        W: std::future::Future<Output = Result<()>> + Send + 'static,
    {
        let (out, out_rx) = mpsc::unbounded_channel();
        let conn = Arc::new(Connection {
            out,
            queued: Mutex::new(0),
            write,
            shared: Mutex::new(Shared::default()),
            next_id: AtomicU32::new(1),
            closed: AtomicBool::new(false),
            max_frame: 256 << 20,
            server_max_frame: std::sync::atomic::AtomicUsize::new(usize::MAX),
            tasks: Mutex::new(Vec::new()),
        });
        let weak = Arc::downgrade(&conn);
        let reader = tokio::spawn(async move {
            let err = read_loop(read, weak.clone()).await;
            if let Some(conn) = weak.upgrade() {
                conn.fail_all(err);
            }
        });
        let weak = Arc::downgrade(&conn);
        let writing = writer(out_rx, weak.clone());
        let writer = tokio::spawn(async move {
            if let Err(e) = writing.await {
                if let Some(conn) = weak.upgrade() {
                    conn.fail_all(e);
                }
            }
        });
        conn.tasks.lock().extend([reader, writer]);
        conn
    }

    /// Marks the connection closed and fails every request waiting on it.
    pub(crate) fn fail_all(&self, err: ClientError) {
        self.closed.store(true, Ordering::Release);
        let mut s = self.shared.lock();
        for (_, tx) in s.pending.drain() {
            let _ = tx.send(Err(err.clone_lossy()));
        }
        for (_, inbox) in s.pushes.drain() {
            inbox.close();
        }
    }

    /// Records the server's frame limit from its hello. One below 1 KiB (0: not given; a weir
    /// server takes at least that) is not believed: it would refuse even pings.
    pub(crate) fn set_server_max_frame(&self, max: u32) {
        if max >= 1024 {
            self.server_max_frame.store(max as usize, Ordering::Relaxed);
        }
    }

    /// The server's frame limit, `usize::MAX` until known.
    pub(crate) fn server_max_frame(&self) -> usize {
        self.server_max_frame.load(Ordering::Relaxed)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Sends a whole frame: directly when nothing is queued and the socket takes it at once
    /// (no await, so a cancelled caller can never leave half a frame), else through the writer
    /// task, in order. Never blocks.
    fn enqueue(&self, head: BytesMut, records: &[Bytes]) -> Result<()> {
        // The frame's length field counts all but itself.
        let len = head.len() - 4 + records.iter().map(Bytes::len).sum::<usize>();
        let max = self.server_max_frame.load(Ordering::Relaxed);
        if len > max {
            return Err(ClientError::Invalid(format!(
                "a request of {len} bytes is over the server's frame limit of {max} bytes"
            )));
        }
        let mut parts = Vec::with_capacity(records.len() + 1);
        parts.push(head.freeze());
        parts.extend(records.iter().cloned());
        let mut queued = self.queued.lock();
        if let Some(write) = self.write.as_ref().filter(|_| *queued == 0) {
            let slices: Vec<std::io::IoSlice<'_>> =
                parts.iter().map(|p| std::io::IoSlice::new(p)).collect();
            match write.try_write_vectored(&slices) {
                Ok(n) => {
                    advance(&mut parts, n);
                    if parts.is_empty() {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(ClientError::Io(e)),
            }
        }
        // The rest goes behind everything already queued; the count keeps later callers from
        // writing around it.
        *queued += 1;
        self.out
            .send(Outgoing { parts })
            .map_err(|_| ClientError::Closed)
    }

    /// Sends a request and waits for its response frame.
    pub(crate) async fn call(
        &self,
        api: Api,
        req: &impl Message,
        records: &[Bytes],
        timeout: Duration,
    ) -> Result<Frame> {
        let sent = self.start(api, req, records)?;
        self.answer(sent, timeout).await
    }

    /// Sends a request at once, behind those sent before it (never waits); [`Self::answer`]
    /// waits for its response.
    pub(crate) fn start(&self, api: Api, req: &impl Message, records: &[Bytes]) -> Result<Sent> {
        if self.is_closed() {
            return Err(ClientError::Closed);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            // Checked again under the lock `fail_all` drains under (after marking the
            // connection closed): a request is never left waiting on a failed connection.
            let mut shared = self.shared.lock();
            if self.is_closed() {
                return Err(ClientError::Closed);
            }
            shared.pending.insert(id, tx);
        }
        let mut head = BytesMut::new();
        let len = records.iter().map(Bytes::len).sum();
        encode_frame(header(api, id, 0), req, len, &mut head);
        if let Err(e) = self.enqueue(head, records) {
            self.shared.lock().pending.remove(&id);
            return Err(e);
        }
        Ok(Sent { id, rx })
    }

    /// The response to a request [`Self::start`] sent, within `timeout`.
    pub(crate) async fn answer(&self, sent: Sent, timeout: Duration) -> Result<Frame> {
        let Sent { id, rx } = sent;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ClientError::Closed),
            Err(_) => {
                self.shared.lock().pending.remove(&id);
                Err(ClientError::Timeout(timeout))
            }
        }
    }

    /// Queues a frame that gets no response (or whose response nobody waits for).
    pub(crate) fn send(&self, api: Api, req: &impl Message, records: &[Bytes]) -> Result<()> {
        if self.is_closed() {
            return Err(ClientError::Closed);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut head = BytesMut::new();
        let len = records.iter().map(Bytes::len).sum();
        encode_frame(header(api, id, Flags::NO_RESPONSE), req, len, &mut head);
        self.enqueue(head, records)
    }

    pub(crate) fn register_push(&self, id: u64, inbox: Arc<Inbox>) {
        let mut s = self.shared.lock();
        let early = s.early.remove(&id).unwrap_or_default();
        for p in early {
            inbox.put(p);
        }
        if self.is_closed() {
            inbox.close();
        }
        s.pushes.insert(id, inbox);
    }

    pub(crate) fn unregister_push(&self, id: u64) {
        // Pushes still on their way for it are dropped (they land in `early`, capped).
        let mut s = self.shared.lock();
        if let Some(inbox) = s.pushes.remove(&id) {
            inbox.close();
        }
        s.early.remove(&id);
    }
}

/// A request on its way: its correlation id and where its response arrives.
#[derive(Debug)]
pub(crate) struct Sent {
    id: u32,
    rx: oneshot::Receiver<Result<Frame>>,
}

fn header(api: Api, id: u32, flags: u16) -> FrameHeader {
    FrameHeader {
        api_key: api as u16,
        api_version: api.versions().1,
        correlation_id: id,
        flags: Flags(flags),
    }
}

/// Drops the first `n` bytes of `parts`.
fn advance(parts: &mut Vec<Bytes>, mut n: usize) {
    let mut done = 0;
    for p in parts.iter_mut() {
        if n >= p.len() {
            n -= p.len();
            done += 1;
        } else {
            bytes::Buf::advance(p, n);
            break;
        }
    }
    parts.drain(..done);
}

async fn write_loop(
    write: Arc<OwnedWriteHalf>,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    conn: std::sync::Weak<Connection>,
) -> Result<()> {
    while let Some(mut o) = rx.recv().await {
        while !o.parts.is_empty() {
            write.writable().await.map_err(ClientError::Io)?;
            let slices: Vec<std::io::IoSlice<'_>> =
                o.parts.iter().map(|p| std::io::IoSlice::new(p)).collect();
            match write.try_write_vectored(&slices) {
                Ok(n) => advance(&mut o.parts, n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(ClientError::Io(e)),
            }
        }
        match conn.upgrade() {
            Some(c) => *c.queued.lock() -= 1,
            None => return Ok(()),
        }
    }
    Ok(())
}

/// The writer task over TLS (or any stream): frames in order, flushed when the queue is empty.
async fn stream_write_loop(
    mut write: impl AsyncWrite + Unpin,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    conn: std::sync::Weak<Connection>,
) -> Result<()> {
    while let Some(o) = rx.recv().await {
        for part in &o.parts {
            write.write_all(part).await.map_err(ClientError::Io)?;
        }
        if rx.is_empty() {
            write.flush().await.map_err(ClientError::Io)?;
        }
        match conn.upgrade() {
            Some(c) => *c.queued.lock() -= 1,
            None => return Ok(()),
        }
    }
    Ok(())
}

async fn read_loop(
    mut read: impl AsyncRead + Unpin,
    conn: std::sync::Weak<Connection>,
) -> ClientError {
    let mut buf = BytesMut::with_capacity(8 * 1024);
    loop {
        let max = match conn.upgrade() {
            Some(c) => c.max_frame,
            None => return ClientError::Closed,
        };
        loop {
            match decode_frame(&mut buf, max) {
                Ok(Some(frame)) => {
                    let Some(c) = conn.upgrade() else {
                        return ClientError::Closed;
                    };
                    if let Err(e) = route(&c, frame).await {
                        return e;
                    }
                }
                Ok(None) => {
                    // Room for the rest of a large frame in one step, not by doubling copies.
                    if let Ok(Some(total)) = weir_wire::frame_len(&buf, max) {
                        buf.reserve(total.saturating_sub(buf.len()));
                    }
                    break;
                }
                Err(e) => return ClientError::Wire(e),
            }
        }
        match read.read_buf(&mut buf).await {
            Ok(0) => return ClientError::Closed,
            Ok(_) => {}
            Err(e) => return ClientError::Io(e),
        }
    }
}

async fn route(conn: &Connection, frame: Frame) -> Result<()> {
    let h = frame.header;
    // A server error not tied to a request (connection limit, bad frame): the server closes.
    if h.flags.has(Flags::ERROR) && h.correlation_id == 0 {
        let e = msg::ErrorResponse::decode(frame.message).unwrap_or_default();
        return Err(ClientError::Server {
            code: ErrorCode::from_u32(e.code),
            message: e.message,
        });
    }
    if h.flags.has(Flags::PUSH) {
        let data = msg::PushData::decode(frame.message.clone())
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let id = data.subscription_id;
        let pushed = Pushed {
            data,
            records: frame.records,
        };
        let mut s = conn.shared.lock();
        match s.pushes.get(&id) {
            // Bounded by the credit, or by the subscription's queue bounds.
            Some(inbox) => inbox.put(pushed),
            None => {
                let held: usize = s.early.values().map(Vec::len).sum();
                if held < MAX_EARLY_PUSHES {
                    s.early.entry(id).or_default().push(pushed);
                } else {
                    tracing::warn!(
                        subscription = id,
                        "dropping a push for an unknown subscription"
                    );
                }
            }
        }
        return Ok(());
    }
    if h.flags.has(Flags::RESPONSE) {
        if let Some(tx) = conn.shared.lock().pending.remove(&h.correlation_id) {
            let _ = tx.send(Ok(frame));
        }
        return Ok(());
    }
    if h.api_key == Api::Ping as u16 {
        let mut head = BytesMut::new();
        encode_frame(
            FrameHeader {
                flags: Flags(Flags::RESPONSE),
                ..h
            },
            &msg::Ping {},
            0,
            &mut head,
        );
        conn.enqueue(head, &[])?;
    }
    Ok(())
}
