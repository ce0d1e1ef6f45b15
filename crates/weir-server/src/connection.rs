//! One client connection: reads frames, runs commands (many in flight, up to a window),
//! writes responses and pushes, keeps the connection alive, and ends it cleanly.
//!
//! Memory: an idle connection holds no read buffer (it is released whenever it empties) and
//! no per-request state; the read buffer grows to the size of the frame being read, capped by
//! the maximum frame size, which is checked before anything is allocated.

use std::collections::HashMap;
use std::future::Future;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use credit::CreditBox;
use futures_util::stream::{FuturesUnordered, StreamExt};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use weir_broker::Broker;
use weir_broker::access::ResourceType;
use weir_broker::activity::{Door, PushCounters, PushPolicy};
use weir_broker::broker::OffsetSpec;
use weir_broker::flow::{BudgetPermit, QuotaKind, SMALL_REQUEST_BYTES};
use weir_broker::push::{PushCursor, PushStep};
use weir_wire::messages as msg;
use weir_wire::{Api, ErrorCode, Flags, Frame, FrameHeader, WireError, decode_frame, frame_len};

use crate::ServerConfig;
use crate::command::{self, OutFrame, code_of};
use crate::push_queue::{Offered, Popped, PushQueue, QueuePolicy, QueuedBatch};

/// Most buffer growth per read.
const READ_CHUNK: usize = 64 * 1024;
/// Once memory budget is granted for a large frame, the rest of it must arrive within this
/// long: a sender that trickles it would otherwise hold budget other producers need.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

type InFlight = Pin<Box<dyn std::future::Future<Output = Option<OutFrame>> + Send>>;

/// Most fetches of one connection that wait for records outside its in-flight window.
pub(crate) const MAX_PARKED: usize = 1024;
/// Most such fetches across the server; past it, a waiting fetch keeps its place in its
/// connection's window as any request does.
const MAX_PARKED_TOTAL: usize = 65_536;
/// Process-wide: servers embedded side by side in one process share the cap.
static PARKED_TOTAL: AtomicUsize = AtomicUsize::new(0);

/// A connection's fetches that are waiting for records (long polls), counted apart from its
/// in-flight window: such a fetch holds no data read, only a small future, so a client that
/// reads many partitions through one connection, a long poll each, neither fills the window
/// nor stalls its own other requests behind them (with 64 long polls of a second each in
/// the window, the 65th partition's records waited up to two seconds). A fetch that finds
/// records takes its place in the window again. Bounded per connection ([`MAX_PARKED`]) and
/// across the server ([`MAX_PARKED_TOTAL`]).
#[derive(Debug, Default)]
pub(crate) struct Parked {
    count: AtomicUsize,
}

/// A connection's requests under way. Fetches park while the set is polled (on the
/// connection's own task), so the set tells the connection when one did: it yields
/// `Some(None)` (no frame to write), for which the connection looks at its window again
/// (frames may be waiting for it). Without this, a window closed by fetches not yet parked
/// would stay closed, once they parked, until some request completed. (A wrapper rather than another branch of the
/// connection's `select!`: every byte of that task is paid by each idle connection.)
#[derive(Default)]
struct InFlightSet {
    futures: FuturesUnordered<InFlight>,
    /// Its fetches waiting for records, made at the first fetch.
    parked: Option<Arc<Parked>>,
}

impl InFlightSet {
    fn len(&self) -> usize {
        self.futures.len()
    }

    fn is_empty(&self) -> bool {
        self.futures.is_empty()
    }

    fn push(&mut self, f: InFlight) {
        self.futures.push(f);
    }

    fn parked(&self) -> usize {
        self.parked.as_ref().map_or(0, |p| p.count())
    }
}

impl futures_util::Stream for InFlightSet {
    type Item = Option<OutFrame>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let before = self.parked();
        match self.futures.poll_next_unpin(cx) {
            std::task::Poll::Pending if self.parked() > before => {
                std::task::Poll::Ready(Some(None))
            }
            other => other,
        }
    }
}

/// A parked fetch's place, given back when dropped; an empty one if no place was left.
pub(crate) struct ParkedGuard(Option<Arc<Parked>>);

impl Parked {
    fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    pub(crate) fn park(self: &Arc<Self>) -> ParkedGuard {
        let take = |n: &AtomicUsize, max: usize| {
            n.fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                (c < max).then_some(c + 1)
            })
            .is_ok()
        };
        if !take(&PARKED_TOTAL, MAX_PARKED_TOTAL) {
            return ParkedGuard(None);
        }
        if !take(&self.count, MAX_PARKED) {
            PARKED_TOTAL.fetch_sub(1, Ordering::AcqRel);
            return ParkedGuard(None);
        }
        ParkedGuard(Some(self.clone()))
    }
}

impl Drop for ParkedGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            p.count.fetch_sub(1, Ordering::AcqRel);
            PARKED_TOTAL.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Credits granted to a subscription and not yet taken by its task.
mod credit {
    use std::sync::Mutex;
    use tokio::sync::Notify;

    #[derive(Debug, Default)]
    pub(crate) struct CreditBox {
        pending: Mutex<(u64, u64)>,
        pub notify: Notify,
    }

    impl CreditBox {
        pub fn add(&self, records: u64, bytes: u64) {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            p.0 = p.0.saturating_add(records);
            p.1 = p.1.saturating_add(bytes);
            drop(p);
            self.notify.notify_one();
        }

        pub fn take(&self) -> (u64, u64) {
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
        }
    }
}

#[derive(Debug)]
struct Subscription {
    credit: Arc<CreditBox>,
    task: tokio::task::JoinHandle<()>,
    /// The byte bound of its queue (0 under `CREDIT`), counted against the connection's.
    queue_bytes: u64,
}

/// Queue bounds a request for 0 gets (each capped by the server's maximum).
const DEFAULT_QUEUE_RECORDS: u64 = 10_000;
const DEFAULT_QUEUE_BYTES: u64 = 4 << 20;

/// Most bytes one turn of busy polling reads.
const POLL_READ_BYTES: usize = 4096;

/// Connections busy polling right now, in the whole process.
static POLLING: AtomicUsize = AtomicUsize::new(0);

/// The right to busy poll: at most one connection per two CPUs (and at least one) holds one
/// at a time, so that polling never takes every CPU from the work it waits for.
struct PollTurn;

impl PollTurn {
    fn take() -> Option<PollTurn> {
        static MAX: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        let max = *MAX.get_or_init(|| {
            (std::thread::available_parallelism().map_or(1, |n| n.get()) / 2).max(1)
        });
        POLLING
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| PollTurn)
    }
}

impl Drop for PollTurn {
    fn drop(&mut self) {
        POLLING.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Most bytes of batches in one push frame of a queued subscription.
const PUSH_FRAME_BYTES: u64 = 256 << 10;

pub(crate) struct Connection {
    stream: weir_net::Stream,
    peer: SocketAddr,
    buf: BytesMut,
    broker: Broker,
    config: Arc<ServerConfig>,
    client_id: Option<Arc<str>>,
    in_flight: InFlightSet,
    produce_chain: Option<oneshot::Receiver<()>>,
    /// Its push subscriptions, made at the first: boxed, since most connections have none
    /// and every byte of the connection's task is paid by each idle connection.
    pushes: Option<Box<Pushes>>,
    last_read: Instant,
    last_write: Instant,
    /// The request being dispatched asked for no response.
    silent: bool,
    /// Over a quota: not read until then.
    muted_until: Option<Instant>,
    /// Memory budget held for the large frame being read (see `process_buffer`), and since
    /// when: the frame must then arrive within [`BODY_TIMEOUT`].
    frame_budget: Option<(BudgetPermit, Instant)>,
    /// Waiting for budget for a large frame: the socket is not read meanwhile.
    budget_wait: Option<Pin<Box<dyn Future<Output = BudgetPermit> + Send>>>,
    /// When the last response went out.
    replied_at: Option<Instant>,
    /// The peer sent its latest request within `busy_poll` of the response before it.
    prompt: bool,
    /// Busy polling the socket for the next request until then (see `ServerConfig::busy_poll`).
    poll_until: Option<Instant>,
    /// The server requires authentication: where this connection is with it. Boxed, as
    /// `pushes` is.
    auth: Option<Box<AuthState>>,
    /// What the client may do, made once it is known who it is (its decisions are cached for
    /// the connection's life, until the rules change).
    access: Option<Arc<weir_broker::Access>>,
}

/// A connection's authentication, when the server requires it.
struct AuthState {
    auth: Arc<weir_auth::Auth>,
    /// Set once an Authenticate exchange succeeded.
    principal: Option<weir_auth::Principal>,
    /// The exchange under way, after its first step.
    sasl: Option<weir_auth::Sasl>,
    /// Not authenticated by then: the connection is closed (looked at on the heartbeat tick).
    deadline: Instant,
}

/// Largest frame taken before authentication, when it is required (Hello and SASL messages
/// are small).
const MAX_UNAUTHENTICATED_FRAME: usize = 64 << 10;

/// A connection's push subscriptions and the channel their frames come through.
struct Pushes {
    subs: HashMap<u64, Subscription>,
    next_sub: u64,
    tx: mpsc::Sender<OutFrame>,
    rx: mpsc::Receiver<OutFrame>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Some(p) = self.pushes.as_mut() {
            for (_, s) in p.subs.drain() {
                s.task.abort();
            }
        }
    }
}

enum Input {
    Stop,
    Done(Option<OutFrame>),
    Push(Option<OutFrame>),
    Read(std::io::Result<usize>),
    Budget(BudgetPermit),
    Unmute,
    Tick,
    /// A turn of busy polling went by.
    Poll,
}

impl Connection {
    pub(crate) fn new(
        stream: weir_net::Stream,
        peer: SocketAddr,
        broker: Broker,
        config: Arc<ServerConfig>,
    ) -> Self {
        let now = Instant::now();
        let auth = broker.auth().map(|a| {
            // A verified client certificate authenticates the connection (mutual TLS).
            let principal = stream.peer_name().map(|name| {
                let p = weir_auth::Principal::user(&name);
                a.record("native", "mtls", Some(peer), &Ok(p.clone()));
                p
            });
            Box::new(AuthState {
                auth: Arc::clone(a),
                principal,
                sasl: None,
                deadline: now + a.timeout(),
            })
        });
        Self {
            auth,
            access: None,
            stream,
            peer,
            buf: BytesMut::new(),
            broker,
            config,
            client_id: None,
            in_flight: InFlightSet::default(),
            produce_chain: None,
            pushes: None,
            last_read: now,
            last_write: now,
            silent: false,
            muted_until: None,
            frame_budget: None,
            budget_wait: None,
            replied_at: None,
            prompt: false,
            poll_until: None,
        }
    }

    /// Serves the connection until the peer leaves, a fatal protocol error, the idle timeout,
    /// or shutdown (after which in-flight requests finish and their responses are written).
    pub(crate) async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut draining = *stop.borrow();
        let heartbeat = self.config.idle_timeout / 3;
        let tick = tokio::time::sleep_until(self.next_tick(heartbeat));
        tokio::pin!(tick);
        loop {
            if draining && self.in_flight.is_empty() {
                break;
            }
            let window_open = self.window_open();
            // Not read while over a quota, or while waiting for memory budget.
            let readable = window_open && self.muted_until.is_none() && self.budget_wait.is_none();
            let muted_until = self.muted_until.unwrap_or_else(Instant::now);
            // Not while the socket must not be read, nor while a large frame's bytes stream in
            // (a polled read could run past the buffer reserved for it): the window ends.
            if self.poll_until.is_some() && !(readable && !draining && self.frame_budget.is_none())
            {
                self.end_poll_window();
            }
            // A turn is held only while waiting below, never across a write: a peer slow to
            // read cannot keep polling from everyone else.
            let turn = self.poll_until.and_then(|_| PollTurn::take());
            let polling = turn.is_some();
            let input = tokio::select! {
                biased;
                r = stop.changed(), if !draining => { let _ = r; Input::Stop }
                out = self.in_flight.next(), if !self.in_flight.is_empty() => Input::Done(out.flatten()),
                out = recv_push(self.pushes.as_mut().map(|p| &mut p.rx)) => Input::Push(out),
                p = async { self.budget_wait.as_mut().expect("guarded").await }, if self.budget_wait.is_some() => Input::Budget(p),
                // Boxed: a timer held inline would enlarge every connection's task, idle ones
                // included, for a state most never enter.
                _ = async { Box::pin(tokio::time::sleep_until(muted_until)).await }, if self.muted_until.is_some() => Input::Unmute,
                r = self.stream.read_buf(&mut self.buf), if !draining && readable => Input::Read(r),
                _ = &mut tick => Input::Tick,
                // Last: it only runs when nothing else is ready, and reschedules the task at
                // once (other tasks run in between), instead of this thread going to sleep.
                _ = tokio::task::yield_now(), if polling => Input::Poll,
            };
            let input = match input {
                Input::Poll => self.poll_socket(),
                other => other,
            };
            drop(turn);
            let is_response = matches!(input, Input::Done(_));
            match input {
                Input::Poll => {
                    if self.poll_until.is_some_and(|t| Instant::now() >= t) {
                        // Not prompt this time: no more polling until it is again.
                        self.prompt = false;
                        self.end_poll_window();
                    }
                }
                Input::Stop => draining = true,
                Input::Budget(permit) => {
                    self.budget_wait = None;
                    self.frame_budget = Some((permit, Instant::now()));
                    self.own_buffer_for_frame();
                    if !draining && !Box::pin(self.process_buffer()).await {
                        break;
                    }
                }
                Input::Unmute => {
                    self.muted_until = None;
                    if !draining && !self.buf.is_empty() && !Box::pin(self.process_buffer()).await {
                        break;
                    }
                }
                Input::Done(out) | Input::Push(out) => {
                    if let Some(out) = out {
                        if !is_response {
                            let bytes = out.records.iter().map(|b| b.len() as u64).sum();
                            self.broker.activity().door(Door::Native).delivered(bytes);
                        }
                        self.mute(out.throttle);
                        if let Err(e) = Box::pin(self.write(out)).await {
                            tracing::debug!(peer = %self.peer, error = %e, "write failed; closing");
                            break;
                        }
                        if is_response {
                            self.replied();
                        }
                    }
                    // Frames that waited for the window may be ready now.
                    if !draining && !self.buf.is_empty() && !Box::pin(self.process_buffer()).await {
                        break;
                    }
                }
                Input::Read(Ok(0)) => break,
                Input::Read(Ok(_)) => {
                    self.last_read = Instant::now();
                    self.prompt = self
                        .replied_at
                        .is_some_and(|t| self.last_read.duration_since(t) <= self.config.busy_poll);
                    if let Some(until) = self.poll_until.take() {
                        let outcome = if self.last_read <= until {
                            "request"
                        } else {
                            "expired"
                        };
                        metrics::counter!("weir_native_busy_polls_total", "outcome" => outcome)
                            .increment(1);
                    }
                    if !Box::pin(self.process_buffer()).await {
                        break;
                    }
                }
                Input::Read(Err(e)) => {
                    tracing::debug!(peer = %self.peer, error = %e, "read failed; closing");
                    break;
                }
                Input::Tick => {
                    let now = Instant::now();
                    if let Some((_, since)) = &self.frame_budget
                        && now.duration_since(*since) >= BODY_TIMEOUT
                    {
                        tracing::info!(peer = %self.peer, "a large request did not arrive in time; closing");
                        break;
                    }
                    // Not idle while we are the ones not reading (over a quota, or waiting for
                    // memory budget): the client's pings sit unread in the socket meanwhile.
                    let held_back = self.muted_until.is_some() || self.budget_wait.is_some();
                    if held_back {
                        self.last_read = now;
                    }
                    if now.duration_since(self.last_read) >= self.config.idle_timeout {
                        tracing::info!(peer = %self.peer, "closing idle connection");
                        break;
                    }
                    if let Some(a) = &self.auth
                        && a.principal.is_none()
                        && now >= a.deadline
                    {
                        tracing::info!(peer = %self.peer, "not authenticated in time; closing");
                        break;
                    }
                    if now.duration_since(self.last_write) >= heartbeat {
                        let ping = OutFrame::new(
                            FrameHeader {
                                api_key: Api::Ping as u16,
                                api_version: 1,
                                correlation_id: 0,
                                flags: Flags(0),
                            },
                            &msg::Ping {},
                            Vec::new(),
                        );
                        if Box::pin(self.write(ping)).await.is_err() {
                            break;
                        }
                    }
                    tick.as_mut().reset(self.next_tick(heartbeat));
                }
            }
        }
        // Bounded: over TLS a shutdown sends close_notify and waits for everything buffered to
        // go out, which a peer that stopped reading (often why the loop ended) never allows.
        let _ = tokio::time::timeout(Duration::from_secs(1), self.stream.shutdown()).await;
    }

    /// The largest frame taken now: before the client has authenticated (when it must),
    /// [`MAX_UNAUTHENTICATED_FRAME`] at most, so that a stranger cannot hold memory budget
    /// with large frames.
    fn max_frame(&self) -> usize {
        match &self.auth {
            Some(a) if a.principal.is_none() => {
                self.config.max_frame_bytes.min(MAX_UNAUTHENTICATED_FRAME)
            }
            _ => self.config.max_frame_bytes,
        }
    }

    /// When to look at the connection's timers next: a heartbeat from now, or sooner, when it
    /// must authenticate, at its deadline.
    fn next_tick(&self, heartbeat: Duration) -> Instant {
        let next = Instant::now() + heartbeat;
        match &self.auth {
            Some(a) if a.principal.is_none() => next.min(a.deadline),
            _ => next,
        }
    }

    /// Writes a frame; a peer that does not read for the idle timeout is given up on.
    async fn write(&mut self, out: OutFrame) -> std::io::Result<()> {
        let limit = self.config.idle_timeout;
        match tokio::time::timeout(limit, self.write_frame(out)).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("peer did not read for {limit:?}"),
            )),
        }
    }

    /// Writes a frame and flushes it: over TLS a write may leave encrypted bytes in rustls's
    /// buffer (the socket was full), which only a flush sends; over plain TCP the flush is
    /// free.
    async fn write_frame(&mut self, out: OutFrame) -> std::io::Result<()> {
        self.write_unflushed(out).await?;
        self.stream.flush().await
    }

    async fn write_unflushed(&mut self, out: OutFrame) -> std::io::Result<()> {
        self.last_write = Instant::now();
        if out.records.is_empty() {
            return self.stream.write_all(&out.head).await;
        }
        // One vectored write for header and stored batches, no copy of the batches.
        let mut parts: Vec<bytes::Bytes> = Vec::with_capacity(out.records.len() + 1);
        parts.push(out.head.freeze());
        parts.extend(out.records);
        let mut i = 0;
        while i < parts.len() {
            let slices: Vec<IoSlice<'_>> = parts[i..].iter().map(|b| IoSlice::new(b)).collect();
            let mut n = self.stream.write_vectored(&slices).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            while n > 0 && i < parts.len() {
                let len = parts[i].len();
                if n >= len {
                    n -= len;
                    i += 1;
                } else {
                    parts[i].advance(n);
                    n = 0;
                }
            }
        }
        Ok(())
    }

    /// Stops reading the connection for `throttle` (a quota was exceeded).
    fn mute(&mut self, throttle: Duration) {
        if throttle.is_zero() {
            return;
        }
        let until = Instant::now() + throttle;
        self.muted_until = Some(self.muted_until.map_or(until, |m| m.max(until)));
    }

    /// Handles every whole frame in the buffer. `false` ends the connection.
    async fn process_buffer(&mut self) -> bool {
        // Decode no further than the in-flight window: frames left in the buffer are taken up
        // when a request completes. Nor while muted by a quota.
        while self.window_open() && self.muted_until.is_none() {
            // A large frame is read further, or decoded, only with memory budget in hand:
            // while none is left the socket is not read, and TCP pushes back on the sender.
            if self.frame_budget.is_none()
                && self.budget_wait.is_none()
                && let Ok(Some(total)) = frame_len(&self.buf, self.max_frame())
                && total > SMALL_REQUEST_BYTES
            {
                let budget = self.broker.memory().clone();
                self.budget_wait = Some(Box::pin(async move { budget.acquire(total).await }));
                break;
            }
            if self.budget_wait.is_some() {
                break;
            }
            let max_frame = self.max_frame();
            match decode_frame(&mut self.buf, max_frame) {
                Ok(Some(frame)) => {
                    let budget = self.frame_budget.take().map(|(p, _)| p);
                    if !self.dispatch(frame, budget).await {
                        return false;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(peer = %self.peer, error = %e, "bad frame; closing the connection");
                    let code = match e {
                        WireError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
                        _ => ErrorCode::Malformed,
                    };
                    let header = FrameHeader {
                        api_key: 0,
                        api_version: 0,
                        correlation_id: 0,
                        flags: Flags(0),
                    };
                    let _ = self
                        .write(OutFrame::error(&header, code, e.to_string()))
                        .await;
                    return false;
                }
            }
        }
        if self.buf.is_empty() {
            // Idle connections keep no buffer.
            self.buf = BytesMut::new();
        } else if let Ok(Some(total)) = frame_len(&self.buf, self.max_frame()) {
            // Grow with the data, not with what a header claims: a peer cannot make us hold
            // a whole frame's worth of memory by sending 4 bytes. (A large frame whose budget
            // is held already has room for all of it: `own_buffer_for_frame`.)
            let missing = total.saturating_sub(self.buf.len());
            self.buf.reserve(missing.min(READ_CHUNK));
        } else {
            self.buf.reserve(64);
        }
        true
    }

    /// Whether another request may be taken: fewer than the window's worth are under way,
    /// fetches that wait for records not counted (see [`Parked`]).
    fn window_open(&self) -> bool {
        self.in_flight.len().saturating_sub(self.in_flight.parked()) < self.config.max_in_flight
    }

    /// Runs or schedules one request. `false` ends the connection.
    /// `budget`: memory budget held for a large frame, released when the request is done.
    async fn dispatch(&mut self, frame: Frame, budget: Option<BudgetPermit>) -> bool {
        let h = frame.header;
        if h.flags.has(Flags::RESPONSE) {
            // The only responses a client sends are answers to our pings.
            return true;
        }
        // The sender asked for no answer (errors included): run, and say nothing.
        self.silent = h.flags.has(Flags::NO_RESPONSE);
        let Some(api) = Api::from_key(h.api_key) else {
            tracing::warn!(peer = %self.peer, api_key = h.api_key, "unknown API");
            return self
                .reply(OutFrame::error(
                    &h,
                    ErrorCode::UnknownApi,
                    format!("unknown API key {}", h.api_key),
                ))
                .await;
        };
        let (min, max) = api.versions();
        if h.api_version < min || h.api_version > max {
            return self
                .reply(OutFrame::error(
                    &h,
                    ErrorCode::UnsupportedVersion,
                    format!(
                        "{api:?} version {} is not supported; this server speaks {min} to {max}",
                        h.api_version
                    ),
                ))
                .await;
        }
        metrics::counter!("weir_native_requests_total", "api" => api.name()).increment(1);
        if api == Api::Hello {
            return self.hello(&frame).await;
        }
        let Some(client_id) = self.client_id.clone() else {
            return self
                .reply(OutFrame::error(
                    &h,
                    ErrorCode::HelloRequired,
                    "send Hello first",
                ))
                .await;
        };
        if api == Api::Authenticate {
            return self.authenticate(&frame).await;
        }
        if api != Api::Ping && self.auth.as_ref().is_some_and(|a| a.principal.is_none()) {
            return self
                .reply(OutFrame::error(
                    &h,
                    ErrorCode::AuthenticationRequired,
                    "this server requires authentication: send Authenticate first (Hello's \
                     answer lists the mechanisms)",
                ))
                .await;
        }
        self.mute(
            self.broker
                .quotas()
                .charge(&client_id, QuotaKind::Requests, 1),
        );
        let access = self.access();
        match api {
            Api::Subscribe => {
                let out = self.subscribe(&frame).await;
                self.reply(out).await
            }
            Api::Credit => {
                match msg::CreditRequest::decode(frame.message.clone()) {
                    Ok(c) => match self
                        .pushes
                        .as_ref()
                        .and_then(|p| p.subs.get(&c.subscription_id))
                    {
                        Some(s) => s.credit.add(c.records, c.bytes),
                        None => {
                            return self
                                .reply(OutFrame::error(
                                    &h,
                                    ErrorCode::UnknownSubscription,
                                    format!("no subscription {}", c.subscription_id),
                                ))
                                .await;
                        }
                    },
                    Err(e) => {
                        return self
                            .reply(OutFrame::error(&h, ErrorCode::Malformed, e.to_string()))
                            .await;
                    }
                }
                true
            }
            Api::Unsubscribe => {
                let out = match msg::UnsubscribeRequest::decode(frame.message.clone()) {
                    Ok(u) => match self
                        .pushes
                        .as_mut()
                        .and_then(|p| p.subs.remove(&u.subscription_id))
                    {
                        Some(s) => {
                            s.task.abort();
                            OutFrame::response(&h, &msg::UnsubscribeResponse {})
                        }
                        None => OutFrame::error(
                            &h,
                            ErrorCode::UnknownSubscription,
                            format!("no subscription {}", u.subscription_id),
                        ),
                    },
                    Err(e) => OutFrame::error(&h, ErrorCode::Malformed, e.to_string()),
                };
                self.reply(out).await
            }
            Api::Produce => {
                // Produces on one connection are written in the order they arrived; each waits
                // for the previous one's write (not its sync), so syncs overlap.
                let (done, next) = oneshot::channel::<()>();
                let prev = self.produce_chain.replace(next);
                let broker = self.broker.clone();
                // Nothing else under way or buffered: the connection has nothing to do while
                // this produce syncs (see `PendingProduce::wait_alone`).
                let alone = self.in_flight.is_empty() && self.buf.is_empty();
                self.in_flight.push(Box::pin(async move {
                    if let Some(prev) = prev {
                        let _ = prev.await;
                    }
                    let out =
                        command::produce(&broker, &access, frame, done, &client_id, alone).await;
                    drop(budget);
                    out
                }));
                true
            }
            _ => {
                let broker = self.broker.clone();
                let silent = self.silent;
                // Fetches and heartbeats may wait: they are kept outside the request window
                // while they do.
                let parked = matches!(api, Api::Fetch | Api::Heartbeat).then(|| {
                    self.in_flight
                        .parked
                        .get_or_insert_with(Default::default)
                        .clone()
                });
                self.in_flight.push(Box::pin(async move {
                    let out = command::handle(&broker, &access, frame, &client_id, parked).await;
                    drop(budget);
                    out.filter(|_| !silent)
                }));
                true
            }
        }
    }

    async fn reply(&mut self, out: OutFrame) -> bool {
        if self.silent {
            return true;
        }
        let ok = self.write(out).await.is_ok();
        self.replied();
        ok
    }

    /// One turn of busy polling: reads the socket directly. The runtime's readiness flags
    /// cannot be used: they are set by whichever thread polls the OS for I/O, which may be
    /// another one, asleep in it, which is what polling avoids waiting for. Gives `Read` on
    /// data, end of stream or an error, else `Poll`.
    fn poll_socket(&mut self) -> Input {
        // Room for a small request whole, in the read buffer itself (a local array would
        // enlarge every connection's task, idle ones included); a larger request's rest comes
        // by the usual reads.
        // TLS bytes are not requests: polling is for plain connections (never opened on TLS).
        let weir_net::Stream::Plain(tcp) = &self.stream else {
            return Input::Poll;
        };
        let at = self.buf.len();
        self.buf.resize(at + POLL_READ_BYTES, 0);
        let r = rustix::net::recv(tcp, &mut self.buf[at..], rustix::net::RecvFlags::DONTWAIT);
        let n = r.as_ref().map_or(0, |(n, _)| *n);
        self.buf.truncate(at + n);
        match r {
            Ok(_) => Input::Read(Ok(n)),
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => {
                // Also give this CPU to any other thread waiting for it (the peer, when it
                // runs on this machine): polling must not delay what it waits for.
                std::thread::yield_now();
                Input::Poll
            }
            Err(e) => Input::Read(Err(e.into())),
        }
    }

    /// Moves the large frame at the head of the buffer (its memory budget just granted) into
    /// an allocation of its own, sized for the whole frame: it is then read without regrowing,
    /// and the batch it carries can be stored as it is without keeping other frames' memory
    /// alive. Copies only what has arrived so far.
    fn own_buffer_for_frame(&mut self) {
        let Ok(Some(total)) = frame_len(&self.buf, self.max_frame()) else {
            return;
        };
        let mut own = BytesMut::with_capacity(total.max(self.buf.len()));
        own.extend_from_slice(&self.buf);
        self.buf = own;
    }

    /// A response went out. If the peer answered the previous one promptly, the socket is
    /// busy polled for its next request for up to `busy_poll`: a closed-loop client's next
    /// request then finds this thread awake, not asleep in the kernel (waking a sleeping
    /// thread, and on a virtual machine an idle CPU, costs tens of microseconds). A peer that
    /// is not prompt costs one window, then none until it is prompt again.
    fn replied(&mut self) {
        let now = Instant::now();
        self.replied_at = Some(now);
        // An open window is extended, not counted twice.
        if self.prompt
            && !self.config.busy_poll.is_zero()
            && matches!(self.stream, weir_net::Stream::Plain(_))
        {
            self.poll_until = Some(now + self.config.busy_poll);
        }
    }

    /// Closes the busy-polling window without a request: it ran out, or the connection may not
    /// read for now.
    fn end_poll_window(&mut self) {
        if self.poll_until.take().is_some() {
            metrics::counter!("weir_native_busy_polls_total", "outcome" => "expired").increment(1);
        }
    }

    async fn hello(&mut self, frame: &Frame) -> bool {
        let h = frame.header;
        let req = match msg::HelloRequest::decode(frame.message.clone()) {
            Ok(r) => r,
            Err(e) => {
                return self
                    .reply(OutFrame::error(&h, ErrorCode::Malformed, e.to_string()))
                    .await;
            }
        };
        if req.client_id.len() > 256 {
            return self
                .reply(OutFrame::error(
                    &h,
                    ErrorCode::InvalidRequest,
                    "client id longer than 256 bytes",
                ))
                .await;
        }
        let ours = Api::supported();
        let agreed = weir_wire::negotiate(&ours, &req.apis);
        let missing: Vec<String> = agreed
            .iter()
            .filter(|(api, v)| v.is_none() && matches!(api, Api::Hello | Api::Ping))
            .map(|(api, _)| format!("{api:?}"))
            .collect();
        if !missing.is_empty() {
            return self
                .reply(OutFrame::error(
                    &h,
                    ErrorCode::UnsupportedVersion,
                    format!("no common version for {}", missing.join(", ")),
                ))
                .await;
        }
        self.client_id = Some(Arc::from(if req.client_id.is_empty() {
            "anonymous"
        } else {
            req.client_id.as_str()
        }));
        let out = msg::HelloResponse {
            server_version: env!("CARGO_PKG_VERSION").to_string(),
            apis: ours,
            idle_timeout_ms: self
                .config
                .idle_timeout
                .as_millis()
                .min(u128::from(u32::MAX)) as u32,
            max_frame_bytes: self.config.max_frame_bytes.min(u32::MAX as usize) as u32,
            auth_mechanisms: self.auth.as_ref().map_or_else(Vec::new, |a| {
                a.auth
                    .mechanism_names()
                    .into_iter()
                    .map(String::from)
                    .collect()
            }),
            principal: self
                .auth
                .as_ref()
                .and_then(|a| a.principal.as_ref())
                .map_or_else(String::new, |p| p.to_string()),
        };
        self.reply(OutFrame::response(&h, &out)).await
    }

    /// One step of an Authenticate exchange. A failure is answered AUTHENTICATION_FAILED,
    /// then the connection closes.
    async fn authenticate(&mut self, frame: &Frame) -> bool {
        let h = frame.header;
        let req = match msg::AuthenticateRequest::decode(frame.message.clone()) {
            Ok(r) => r,
            Err(e) => {
                return self
                    .reply(OutFrame::error(&h, ErrorCode::Malformed, e.to_string()))
                    .await;
            }
        };
        let Some(state) = self.auth.as_mut() else {
            return self
                .reply(OutFrame::error(
                    &h,
                    ErrorCode::InvalidRequest,
                    "this server requires no authentication (no [auth] in its configuration)",
                ))
                .await;
        };
        if state.principal.is_some() {
            return self
                .reply(OutFrame::error(
                    &h,
                    ErrorCode::InvalidRequest,
                    "the connection is already authenticated",
                ))
                .await;
        }
        let auth = Arc::clone(&state.auth);
        let started = match state.sasl.take() {
            Some(sasl) if sasl.mechanism().name() == req.mechanism || req.mechanism.is_empty() => {
                Ok(sasl)
            }
            Some(sasl) => Err(weir_auth::AuthError::IllegalState(format!(
                "an exchange with {} is under way, not {:?}",
                sasl.mechanism().name(),
                req.mechanism
            ))),
            None => auth.start(&req.mechanism, Some(self.peer.ip())),
        };
        match auth
            .exchange(
                "native",
                Some(self.peer),
                &req.mechanism,
                started,
                req.auth_bytes,
            )
            .await
        {
            Ok(step) => {
                let (principal, auth_bytes) = match step {
                    weir_auth::Exchanged::Continue(sasl, challenge) => {
                        state.sasl = Some(sasl);
                        (None, challenge)
                    }
                    weir_auth::Exchanged::Done(p, last) => (Some(p), last),
                };
                let out = msg::AuthenticateResponse {
                    auth_bytes,
                    done: principal.is_some(),
                    principal: principal
                        .as_ref()
                        .map_or_else(String::new, |p| p.to_string()),
                };
                if principal.is_some() {
                    state.principal = principal;
                }
                self.reply(OutFrame::response(&h, &out)).await
            }
            Err(e) => {
                let _ = self
                    .reply(OutFrame::error(
                        &h,
                        ErrorCode::AuthenticationFailed,
                        e.to_string(),
                    ))
                    .await;
                false
            }
        }
    }

    /// What the client may do: anonymous (and allowed everything) without authentication,
    /// else the authenticated principal's. Asked only once the client has authenticated.
    fn access(&mut self) -> Arc<weir_broker::Access> {
        let principal = match self.auth.as_ref() {
            None => weir_auth::Principal::Anonymous,
            Some(a) => match &a.principal {
                Some(p) => p.clone(),
                // Not authenticated yet (a Ping may come first): nothing is kept, so that
                // the principal Authenticate proves is the one the connection gets.
                None => {
                    let anonymous = weir_auth::Principal::Anonymous;
                    return Arc::new(self.broker.access(anonymous));
                }
            },
        };
        let broker = &self.broker;
        Arc::clone(
            self.access
                .get_or_insert_with(|| Arc::new(broker.access(principal))),
        )
    }

    async fn subscribe(&mut self, frame: &Frame) -> OutFrame {
        let h = frame.header;
        let req = match msg::SubscribeRequest::decode(frame.message.clone()) {
            Ok(r) => r,
            Err(e) => return OutFrame::error(&h, ErrorCode::Malformed, e.to_string()),
        };
        let read = weir_broker::access::Operation::Read;
        if let Err(e) = self.access().check(read, ResourceType::Topic, &req.topic) {
            return OutFrame::error(&h, code_of(&e), e.to_string());
        }
        if let Some(p) = self.pushes.as_mut() {
            p.subs.retain(|_, s| !s.task.is_finished());
        }
        let subs = self.pushes.as_ref().map(|p| &p.subs);
        if subs.map_or(0, HashMap::len) >= self.config.max_subscriptions_per_connection {
            return OutFrame::error(
                &h,
                ErrorCode::InvalidRequest,
                format!(
                    "at most {} subscriptions per connection",
                    self.config.max_subscriptions_per_connection
                ),
            );
        }
        let queue = match msg::OverflowPolicy::try_from(req.policy) {
            Ok(msg::OverflowPolicy::Credit) => None,
            Ok(p) => {
                let policy = if p == msg::OverflowPolicy::DropOldest {
                    QueuePolicy::DropOldest
                } else {
                    QueuePolicy::Disconnect
                };
                let c = &self.config;
                let pick = |asked: u64, default: u64, max: u64| {
                    if asked == 0 {
                        default.min(max)
                    } else {
                        asked.min(max)
                    }
                };
                let records = pick(
                    req.queue_records,
                    DEFAULT_QUEUE_RECORDS,
                    c.push_queue_max_records,
                );
                let bytes = pick(req.queue_bytes, DEFAULT_QUEUE_BYTES, c.push_queue_max_bytes);
                let used: u64 = subs
                    .into_iter()
                    .flat_map(HashMap::values)
                    .map(|s| s.queue_bytes)
                    .sum();
                if used + bytes > c.push_queue_bytes_per_connection {
                    return OutFrame::error(
                        &h,
                        ErrorCode::InvalidRequest,
                        format!(
                            "this connection's push queues would hold more than {} bytes \
                             (native.push_queue_bytes_per_connection); ask for smaller queues",
                            c.push_queue_bytes_per_connection
                        ),
                    );
                }
                Some(Arc::new(PushQueue::new(policy, records, bytes)))
            }
            Err(_) => {
                return OutFrame::error(
                    &h,
                    ErrorCode::InvalidRequest,
                    format!("unknown overflow policy {}", req.policy),
                );
            }
        };
        use msg::subscribe_request::Start;
        let snapshot = matches!(req.start, Some(Start::Snapshot(_)));
        if snapshot && queue.is_some() {
            return OutFrame::error(
                &h,
                ErrorCode::InvalidRequest,
                "a snapshot subscription uses the CREDIT policy: a queue policy could drop or \
                 end it before every key is delivered"
                    .to_string(),
            );
        }
        let spec = match req.start {
            Some(Start::Earliest(_)) => Some(OffsetSpec::Earliest),
            Some(Start::Latest(_)) | None => Some(OffsetSpec::Latest),
            Some(Start::TimestampMs(ts)) => Some(OffsetSpec::Timestamp(ts)),
            Some(Start::Offset(_) | Start::Snapshot(_)) => None,
        };
        let opened = if snapshot {
            PushCursor::snapshot(self.broker.clone(), &req.topic, req.partition).await
        } else {
            cursor_at(&self.broker, &req, spec).await
        };
        let mut cursor = match opened {
            Ok(c) => c.with_access(self.access()),
            Err(e) => return OutFrame::error(&h, code_of(&e), e.to_string()),
        };
        let (start, live_from) = (cursor.position(), cursor.live_from());
        // Made at the first subscription that succeeds.
        let pushes = self.pushes.get_or_insert_with(|| {
            let (tx, rx) = mpsc::channel(4);
            Box::new(Pushes {
                subs: HashMap::new(),
                next_sub: 1,
                tx,
                rx,
            })
        });
        let id = pushes.next_sub;
        pushes.next_sub += 1;
        let tx = pushes.tx.clone();
        let credit = Arc::new(CreditBox::default());
        let counters = self.broker.activity().push().clone();
        let (task, queue_records, queue_bytes) = match queue {
            None => {
                cursor.grant(req.credit_records, req.credit_bytes);
                let open = counters.opened(PushPolicy::Credit);
                let pushes = push_loop(cursor, id, credit.clone(), tx);
                (
                    tokio::spawn(async move {
                        let _open = open;
                        pushes.await
                    }),
                    0,
                    0,
                )
            }
            Some(q) => {
                let (records, bytes) = (q.max_records(), q.max_bytes());
                let open = counters.opened(q.policy().counted_as());
                let pushes = queued_push(cursor, id, q, tx, counters);
                (
                    tokio::spawn(async move {
                        let _open = open;
                        pushes.await
                    }),
                    records,
                    bytes,
                )
            }
        };
        pushes.subs.insert(
            id,
            Subscription {
                credit,
                task,
                queue_bytes,
            },
        );
        OutFrame::response(
            &h,
            &msg::SubscribeResponse {
                subscription_id: id,
                start_offset: start,
                queue_records,
                queue_bytes,
                live_from: if snapshot { live_from } else { 0 },
            },
        )
    }
}

/// A cursor at the start `req` asks for (`spec` resolved, or its offset).
async fn cursor_at(
    broker: &Broker,
    req: &msg::SubscribeRequest,
    spec: Option<OffsetSpec>,
) -> weir_broker::Result<PushCursor> {
    use msg::subscribe_request::Start;
    let start = match (spec, req.start) {
        (Some(spec), _) => broker.list_offsets(&req.topic, req.partition, spec).await?,
        (None, Some(Start::Offset(o))) => o,
        (None, _) => 0,
    };
    PushCursor::new(broker.clone(), &req.topic, req.partition, start)
}

async fn recv_push(rx: Option<&mut mpsc::Receiver<OutFrame>>) -> Option<OutFrame> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn push_frame(
    id: u64,
    hwm: u64,
    end: Option<(ErrorCode, String)>,
    batches: Vec<bytes::Bytes>,
) -> OutFrame {
    let (code, message) = end.map_or((0, String::new()), |(c, m)| (c as u32, m));
    let body = msg::PushData {
        subscription_id: id,
        high_watermark: hwm,
        end_code: code,
        end_message: message,
        ..msg::PushData::default()
    };
    OutFrame::new(PUSH_HEADER, &body, batches)
}

/// Pushes are unsolicited: correlation id 0, PUSH flag.
const PUSH_HEADER: FrameHeader = FrameHeader {
    api_key: Api::Push as u16,
    api_version: 1,
    correlation_id: 0,
    flags: Flags(Flags::PUSH),
};

/// Delivers a subscription within its credit until it ends or the connection goes away.
/// New credit never interrupts a read in progress; it is taken up when the read returns.
async fn push_loop(
    mut cursor: PushCursor,
    id: u64,
    credit: Arc<CreditBox>,
    out: mpsc::Sender<OutFrame>,
) {
    let mut told_need = false;
    loop {
        let (r, b) = credit.take();
        if r > 0 || b > 0 {
            told_need = false;
        }
        cursor.grant(r, b);
        let (cr, cb) = cursor.credit();
        if cr == 0 || cb == 0 {
            credit.notify.notified().await;
            continue;
        }
        match cursor.next().await {
            Ok(PushStep::Data {
                batches,
                high_watermark,
                ..
            }) => {
                if out
                    .send(push_frame(id, high_watermark, None, batches))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Ok(PushStep::SnapshotEnd { live_from }) => {
                let body = msg::PushData {
                    subscription_id: id,
                    snapshot_end: true,
                    live_from,
                    ..msg::PushData::default()
                };
                if out
                    .send(OutFrame::new(PUSH_HEADER, &body, Vec::new()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Ok(PushStep::NeedCredit { records, bytes }) => {
                // The next batch is larger than the credit left: say so once, then wait for
                // more (a batch is never split, and never sent beyond the credit).
                if !told_need {
                    told_need = true;
                    if out.send(need_frame(id, records, bytes)).await.is_err() {
                        return;
                    }
                }
                credit.notify.notified().await;
            }
            Err(e) => {
                let _ = out
                    .send(push_frame(
                        id,
                        0,
                        Some((code_of(&e), e.to_string())),
                        Vec::new(),
                    ))
                    .await;
                return;
            }
        }
    }
}

fn need_frame(id: u64, records: u64, bytes: u64) -> OutFrame {
    let body = msg::PushData {
        subscription_id: id,
        need_records: records,
        need_bytes: bytes,
        ..msg::PushData::default()
    };
    OutFrame::new(PUSH_HEADER, &body, Vec::new())
}

/// A `DROP_OLDEST` or `DISCONNECT` subscription: one future fills the queue from the log as
/// records arrive, never waiting for the socket; the other drains it into the connection's
/// writer, waiting for the socket as long as it takes. Credit is not used.
async fn queued_push(
    cursor: PushCursor,
    id: u64,
    queue: Arc<PushQueue>,
    out: mpsc::Sender<OutFrame>,
    counters: Arc<PushCounters>,
) {
    let fill = fill_queue(cursor, queue.clone(), counters);
    let drain = drain_queue(id, queue, out);
    tokio::pin!(fill, drain);
    tokio::select! {
        () = &mut drain => {}
        // Ended (overflow, topic gone, shutdown): what is queued and the end still go out.
        () = &mut fill => drain.await,
    }
}

async fn fill_queue(mut cursor: PushCursor, queue: Arc<PushQueue>, counters: Arc<PushCounters>) {
    let policy = queue.policy();
    loop {
        // Credit does not bound a queued subscription: the queue does.
        cursor.grant(u64::MAX, u64::MAX);
        let (batches, high_watermark) = match cursor.next().await {
            Ok(PushStep::Data {
                batches,
                high_watermark,
                ..
            }) => (batches, high_watermark),
            // Snapshots are refused under queue policies.
            Ok(PushStep::NeedCredit { .. } | PushStep::SnapshotEnd { .. }) => continue,
            Err(e) => {
                queue.end(code_of(&e), e.to_string());
                return;
            }
        };
        // Reads the hot tail can answer complete at once: without this, a subscriber far
        // behind would keep the worker thread until it caught up.
        tokio::task::consume_budget().await;
        for bytes in batches {
            let Ok(h) = weir_batch::peek(&bytes) else {
                queue.end(ErrorCode::CorruptData, "stored batch unreadable".into());
                return;
            };
            let base = h.base_offset.max(0) as u64;
            let next = h.next_offset().max(0) as u64;
            let b = QueuedBatch {
                bytes,
                base,
                next,
                records: next.saturating_sub(base),
                high_watermark,
            };
            match queue.push(b) {
                Offered::Queued { dropped: 0 } => {}
                Offered::Queued { dropped } => {
                    metrics::counter!("weir_push_dropped_records_total", "policy" => policy.label())
                        .increment(dropped);
                    counters.dropped(policy.counted_as(), dropped);
                }
                Offered::Overflowed { discarded } => {
                    metrics::counter!("weir_push_dropped_records_total", "policy" => policy.label())
                        .increment(discarded);
                    metrics::counter!("weir_push_slow_consumer_ends_total").increment(1);
                    counters.dropped(policy.counted_as(), discarded);
                    counters.slow_end();
                    return;
                }
                Offered::Ended => return,
            }
        }
    }
}

async fn drain_queue(id: u64, queue: Arc<PushQueue>, out: mpsc::Sender<OutFrame>) {
    loop {
        let (frame, last) = match queue.pop(PUSH_FRAME_BYTES).await {
            Popped::Dropped { records, from, to } => (drop_frame(id, records, from, to), false),
            Popped::Data {
                batches,
                high_watermark,
            } => (push_frame(id, high_watermark, None, batches), false),
            Popped::End(code, message) => {
                (push_frame(id, 0, Some((code, message)), Vec::new()), true)
            }
        };
        if out.send(frame).await.is_err() || last {
            return;
        }
    }
}

fn drop_frame(id: u64, records: u64, from: u64, to: u64) -> OutFrame {
    let body = msg::PushData {
        subscription_id: id,
        dropped_records: records,
        skipped_from: from,
        skipped_to: to,
        ..msg::PushData::default()
    };
    OutFrame::new(PUSH_HEADER, &body, Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    /// No more connections busy poll at once than half the CPUs (at least one); a turn given
    /// back can be taken again.
    #[test]
    fn busy_polling_turns_are_capped_at_half_the_cpus() {
        let max = (std::thread::available_parallelism().unwrap().get() / 2).max(1);
        let turns: Vec<PollTurn> = std::iter::from_fn(PollTurn::take).take(max + 1).collect();
        assert_eq!(turns.len(), max);
        assert!(PollTurn::take().is_none());
        drop(turns);
        assert!(PollTurn::take().is_some());
    }

    /// The filler reads the log without anyone draining: the oldest go, the drop is
    /// announced as one range and counted once per policy.
    #[test]
    fn filling_a_queue_nobody_drains_drops_the_oldest_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let _local = metrics::set_default_local_recorder(&recorder);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let broker = Broker::open(weir_broker::BrokerConfig {
                data_dir: dir.path().to_path_buf(),
                ..Default::default()
            })
            .unwrap();
            broker.create_topic("t", None).await.unwrap();
            for _ in 0..50 {
                let mut b = weir_batch::BatchBuilder::new(0);
                for _ in 0..10 {
                    b.push(weir_batch::RecordSpec::value(b"v"));
                }
                broker
                    .produce("t", Some(0), None, bytes::Bytes::from(b.build()))
                    .await
                    .unwrap();
            }
            let cursor = PushCursor::new(broker.clone(), "t", 0, 0).unwrap();
            let q = Arc::new(PushQueue::new(QueuePolicy::DropOldest, 100, 1 << 20));
            // It never ends by itself: it waits for more records.
            let counters = broker.activity().push().clone();
            let filled = tokio::time::timeout(
                Duration::from_millis(300),
                fill_queue(cursor, q.clone(), counters.clone()),
            )
            .await;
            assert!(filled.is_err());
            // The console's count agrees with the metric.
            assert_eq!(
                counters.read().policies[PushPolicy::DropOldest as usize].dropped,
                400
            );
            assert_eq!(
                q.try_pop(1 << 20),
                Some(Popped::Dropped {
                    records: 400,
                    from: 0,
                    to: 400
                })
            );
            assert!(matches!(
                q.try_pop(1 << 20),
                Some(Popped::Data { batches, high_watermark: 500 }) if batches.len() == 10
            ));
            broker.close().await.unwrap();
        });
        let counted: Vec<_> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter(|(k, ..)| k.key().name() == "weir_push_dropped_records_total")
            .map(|(k, _, _, v)| {
                (
                    k.key()
                        .labels()
                        .map(|l| l.value().to_string())
                        .collect::<Vec<_>>(),
                    v,
                )
            })
            .collect();
        assert_eq!(
            counted,
            vec![(vec!["drop_oldest".to_string()], DebugValue::Counter(400))]
        );
    }
}
