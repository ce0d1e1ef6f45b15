//! A Kafka listener and its connections: a 4-byte size, then a request, answered in order
//! (Kafka clients rely on per-connection ordering); produces pipelined so that their syncs
//! overlap, everything else one at a time.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use kafka_protocol::messages::ApiKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::Instrument;
use weir_broker::Broker;
use weir_net::{Acceptor, Shutdown};

use crate::dispatch::{self, Step};
use crate::sasl::{Gate, Session};
use crate::{Advertised, Kafka, MAX_REQUEST_BYTES, Reply};

/// One Kafka listener: its socket, the address Metadata gives the clients that come in on
/// it, and its TLS (none: plain TCP).
#[derive(Debug)]
pub struct Listener {
    pub listener: TcpListener,
    pub advertised: Advertised,
    pub tls: Option<Arc<weir_net::Tls>>,
}

/// Serves the Kafka protocol on `listeners` (one group coordinator and at most
/// `max_connections` connections for all of them; more are closed as they come) until
/// `shutdown` begins: connections and the group clock run as tasks of the shutdown. Once it
/// begins, waiting joins and syncs are answered (retriable), and each connection stops taking
/// requests, answers those it has read and closes; the binary waits for them, then closes the
/// broker.
pub async fn serve(
    listeners: Vec<Listener>,
    broker: Broker,
    max_connections: usize,
    shutdown: Shutdown,
) {
    let limit = weir_net::ConnectionLimit::new(max_connections.max(1));
    let groups = Arc::new(crate::groups::KafkaGroups::new(broker.clone()));
    // The groups' sessions and rebalance timeouts run on the broker's one group clock (its
    // maintenance task), beside the native groups', and the broker's admin views describe
    // them; the broker forgets them once the listener is gone.
    let coordinator: Arc<dyn weir_broker::group::ForeignCoordinator> = groups.clone();
    broker.register_coordinator(Arc::downgrade(&coordinator));
    drop(coordinator);
    let loops = listeners.into_iter().map(|l| {
        let kafka = Arc::new(Kafka {
            broker: broker.clone(),
            advertised: l.advertised,
            groups: groups.clone(),
        });
        accept_loop(l.listener, kafka, l.tls, &limit, shutdown.clone())
    });
    futures::future::join_all(loops).await;
    tracing::info!("Kafka listeners closed: draining connections");
    groups.clear();
}

async fn accept_loop(
    listener: TcpListener,
    kafka: Arc<Kafka>,
    tls: Option<Arc<weir_net::Tls>>,
    limit: &weir_net::ConnectionLimit,
    shutdown: Shutdown,
) {
    let mut acceptor = Acceptor::new(
        listener,
        "kafka",
        kafka.broker.admission().clone(),
        shutdown.clone(),
    )
    .with_shared_limit(limit)
    .with_counters(
        kafka
            .broker
            .activity()
            .door(weir_broker::activity::Door::Kafka)
            .clone(),
    );
    while let Some(accepted) = acceptor.accept().await {
        let kafka = Arc::clone(&kafka);
        let stop = shutdown.begun();
        // The principal is recorded once the client has authenticated (when it must).
        let span = tracing::info_span!(
            "kafka",
            peer = %accepted.peer,
            principal = tracing::field::Empty
        );
        let tls = tls.clone();
        shutdown.spawn(
            async move {
                let weir_net::Accepted {
                    stream,
                    peer,
                    slot: _slot,
                } = accepted;
                let Some(stream) = weir_net::secure(tls.as_deref(), stream, peer, "kafka").await
                else {
                    return;
                };
                if let Err(e) = connection(stream, peer, &kafka, stop).await {
                    tracing::debug!(error = %e, "Kafka connection ended");
                }
            }
            .instrument(span),
        );
    }
}

/// A Kafka connection that sends nothing this long is closed (Kafka's
/// `connections.max.idle.ms` default).
const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Once a request's size is read (and memory budget granted for it), its body must arrive
/// within this long.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// A response the client does not take within this long closes its connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest request taken before the client has authenticated, when it must (Kafka's
/// `sasl.server.max.receive.size` default): SASL messages are small, and a stranger must not
/// hold the memory budget with large requests.
const MAX_UNAUTHENTICATED_BYTES: usize = 512 << 10;

/// Requests read ahead of the one being handled, per connection. Kafka answers a connection's
/// requests in order, one at a time; reading the next few while one is handled overlaps the
/// socket reads with the appends. Bounds a connection's buffered requests to this many times
/// [`MAX_REQUEST_BYTES`].
const READ_AHEAD: usize = 2;

/// Writes `pieces` in order with vectored writes.
async fn write_pieces(
    writer: &mut (impl tokio::io::AsyncWrite + Unpin),
    mut pieces: Vec<Bytes>,
) -> std::io::Result<()> {
    let mut i = 0;
    while i < pieces.len() {
        let slices: Vec<std::io::IoSlice<'_>> = pieces[i..]
            .iter()
            .take(64)
            .map(|b| std::io::IoSlice::new(b))
            .collect();
        let mut n = writer.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 && i < pieces.len() {
            let len = pieces[i].len();
            if n >= len {
                n -= len;
                i += 1;
            } else {
                bytes::Buf::advance(&mut pieces[i], n);
                n = 0;
            }
        }
    }
    Ok(())
}

/// Produce requests of one connection that may await their syncs at once (librdkafka keeps up
/// to five in flight when idempotent, more otherwise). Past this many the connection takes no
/// new request until the oldest is answered.
const MAX_SYNCING: usize = 8;

/// An answer in the making: the reply and the client's throttle time.
type Answer<'a> = std::pin::Pin<Box<dyn Future<Output = (Reply, Duration)> + Send + 'a>>;

/// Writes one reply. Over a quota, the connection then takes no new request until
/// `muted_until` (the read-ahead full, the socket is not read either), as a Kafka broker
/// mutes the channel; answers to requests already taken still go out. The throttle times of
/// pipelined requests overlap (the latest deadline wins), they do not add up.
async fn answer(
    writer: &mut (impl tokio::io::AsyncWrite + Unpin),
    reply: Reply,
    throttle: Duration,
    muted_until: &mut Option<tokio::time::Instant>,
) -> std::io::Result<()> {
    // Flushed: over TLS a write may leave encrypted bytes in rustls's buffer (the socket was
    // full), which only a flush sends; over plain TCP the flush is free.
    let written = match reply {
        Reply::Response(r) => {
            tokio::time::timeout(WRITE_TIMEOUT, async {
                writer.write_all(&r).await?;
                writer.flush().await
            })
            .await
        }
        Reply::Parts(pieces) => {
            tokio::time::timeout(WRITE_TIMEOUT, async {
                write_pieces(writer, pieces).await?;
                writer.flush().await
            })
            .await
        }
        Reply::Silent => Ok(Ok(())),
        Reply::Close => return Err(std::io::Error::other("request not understood")),
    };
    match written {
        Ok(r) => r?,
        Err(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client did not read its response",
            ));
        }
    }
    if !throttle.is_zero() {
        let until = tokio::time::Instant::now() + throttle;
        *muted_until = Some(muted_until.map_or(until, |m| m.max(until)));
    }
    Ok(())
}

async fn connection(
    stream: weir_net::Stream,
    peer: std::net::SocketAddr,
    kafka: &Kafka,
    stop: impl Future<Output = ()>,
) -> std::io::Result<()> {
    // A verified client certificate authenticates the connection.
    let session = Session::new(kafka.broker.auth().cloned(), Some(peer), stream.peer_name());
    // Plain TCP splits into owned halves (no lock between them); TLS through tokio's split.
    match stream {
        weir_net::Stream::Plain(tcp) => {
            let (reader, writer) = tcp.into_split();
            run(reader, writer, peer, kafka, session, stop).await
        }
        tls => {
            let (reader, writer) = tokio::io::split(tls);
            run(reader, writer, peer, kafka, session, stop).await
        }
    }
}

async fn run(
    mut reader: impl tokio::io::AsyncRead + Unpin + Send,
    mut writer: impl tokio::io::AsyncWrite + Unpin + Send,
    peer: std::net::SocketAddr,
    kafka: &Kafka,
    mut session: Session,
    stop: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let (tx, mut rx) =
        tokio::sync::mpsc::channel::<(Bytes, weir_broker::flow::BudgetPermit)>(READ_AHEAD);
    let budget = kafka.broker.memory().clone();
    // Set by the handler once the client has authenticated (before it answers, so the
    // client's next request, sent after the answer, is read with the full limit).
    let authenticated = std::sync::atomic::AtomicBool::new(session.is_authenticated());
    let authenticated = &authenticated;
    let read = async move {
        tokio::pin!(stop);
        loop {
            let mut len = [0u8; 4];
            // A connection silent this long is closed (Kafka's connections.max.idle.ms). At
            // shutdown no new request is started: the handler answers those read, then the
            // connection closes, and the client retries elsewhere or later.
            let next = tokio::time::timeout(IDLE_TIMEOUT, reader.read_exact(&mut len));
            let read = tokio::select! {
                biased;
                _ = &mut stop => return Ok(()),
                r = next => r,
            };
            match read {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return Ok(()),
                Err(_) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "idle connection closed",
                    ));
                }
            }
            let len = i32::from_be_bytes(len);
            let max = if authenticated.load(std::sync::atomic::Ordering::Acquire) {
                MAX_REQUEST_BYTES
            } else {
                MAX_UNAUTHENTICATED_BYTES
            };
            if len < 0 || len as usize > max {
                return Err(std::io::Error::other(format!(
                    "request of {len} bytes refused (at most {max} now)"
                )));
            }
            let len = len as usize;
            // A large request is read only with memory budget in hand: while none is left,
            // the socket is not read and TCP pushes back on the producer.
            let permit = budget.acquire(len).await;
            // Exactly its size, budget in hand: read without regrowing and copying, and a
            // batch kept in place holds no slack (a buffer grown by doubling could be twice
            // the request). A size prefix whose body never comes holds the budget, not
            // memory: untouched capacity is address space, and the body times out below.
            let mut frame = Vec::with_capacity(len);
            // Budget granted, the body must arrive promptly: a sender that trickles it would
            // otherwise hold the budget for as long as it likes.
            tokio::time::timeout(
                BODY_TIMEOUT,
                (&mut reader).take(len as u64).read_to_end(&mut frame),
            )
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("a {len}-byte request did not arrive within {BODY_TIMEOUT:?}"),
                )
            })??;
            if frame.len() < len {
                return Ok(());
            }
            if tx.send((Bytes::from(frame), permit)).await.is_err() {
                // The handler stopped (it closed the connection).
                return Ok(());
            }
        }
    };
    let auth_deadline = kafka
        .broker
        .auth()
        .map(|a| tokio::time::Instant::now() + a.timeout());
    let handle_all = async {
        // Produce requests whose batches are written, awaiting their syncs, oldest first. Their
        // answers go out in request order, but the appends of consecutive produces overlap
        // their syncs (and share them: group commit), as a client's pipelined produces do on
        // the native protocol.
        let mut syncing: FuturesOrdered<Answer<'_>> = FuturesOrdered::new();
        let mut reading = true;
        let mut muted_until = None;
        let mut access: Option<Arc<weir_broker::Access>> = None;
        loop {
            let frame = tokio::select! {
                biased;
                Some((reply, throttle)) = syncing.next(), if !syncing.is_empty() => {
                    answer(&mut writer, reply, throttle, &mut muted_until).await?;
                    continue;
                }
                _ = tokio::time::sleep_until(muted_until.unwrap_or_else(tokio::time::Instant::now)),
                    if muted_until.is_some() => {
                    muted_until = None;
                    continue;
                }
                // A client that does not authenticate in time gives its connection back (once
                // nothing more is read, at shutdown, the connection just ends).
                _ = tokio::time::sleep_until(auth_deadline.unwrap_or_else(tokio::time::Instant::now)),
                    if auth_deadline.is_some() && reading && !session.is_authenticated() => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "not authenticated in time",
                    ));
                }
                f = rx.recv(), if reading && muted_until.is_none() && syncing.len() < MAX_SYNCING => f,
                else => return Ok(()),
            };
            let Some((frame, permit)) = frame else {
                reading = false;
                continue;
            };
            // Only produce data is held for the whole request; other requests (a JoinGroup
            // can wait minutes) give their budget back once read.
            // After a v0 SaslHandshake, the exchange's messages come as bare frames.
            if session.expects_raw() {
                drop(permit);
                let reply = session.raw_step(frame).await;
                authenticated.store(
                    session.is_authenticated(),
                    std::sync::atomic::Ordering::Release,
                );
                answer(&mut writer, reply, Duration::ZERO, &mut muted_until).await?;
                continue;
            }
            // What the client may do, decided once it is known who it is; its decisions are
            // cached for the connection's life (until the rules change).
            if access.is_none() {
                access = session
                    .principal()
                    .map(|p| Arc::new(kafka.broker.access(p.clone())));
            }
            let taken = dispatch::take(frame, dispatch::Offered::of(&kafka.broker))
                .map(|r| r.from(peer, access.clone()));
            // Until the client has authenticated, authentication answers (or refuses) all
            // but ApiVersions; no produce is in flight then.
            let taken = match taken {
                Ok(request) if !session.is_authenticated() => match session.gate(request).await {
                    Gate::Pass(request) => Ok(request),
                    Gate::Answer { reply, close } => {
                        drop(permit);
                        authenticated.store(
                            session.is_authenticated(),
                            std::sync::atomic::Ordering::Release,
                        );
                        answer(&mut writer, reply, Duration::ZERO, &mut muted_until).await?;
                        if close {
                            return Ok(());
                        }
                        continue;
                    }
                },
                taken => taken,
            };
            let taken = match taken {
                Ok(request) if request.api == ApiKey::Produce => {
                    match dispatch::step(kafka, request).await {
                        Step::Syncing(in_flight, throttle) => {
                            syncing.push_back(Box::pin(async move {
                                let reply = in_flight.finish(kafka).await;
                                drop(permit);
                                (reply, throttle)
                            }))
                        }
                        Step::Done(reply, throttle) => {
                            drop(permit);
                            syncing.push_back(Box::pin(std::future::ready((reply, throttle))));
                        }
                    }
                    continue;
                }
                taken => taken,
            };
            drop(permit);
            // Anything else is handled once every produce before it is answered: requests
            // other than produce see the connection as strictly one request at a time.
            while let Some((reply, throttle)) = syncing.next().await {
                answer(&mut writer, reply, throttle, &mut muted_until).await?;
            }
            // Read while the connection was not muted, it waits out a mute those answers set.
            if let Some(until) = muted_until.take() {
                tokio::time::sleep_until(until).await;
            }
            let (reply, throttle) = match taken {
                Ok(request) => dispatch::complete(kafka, request).await,
                // A request not understood closes the connection: nothing read after it is
                // handled.
                Err(reply) => (reply, Duration::ZERO),
            };
            answer(&mut writer, reply, throttle, &mut muted_until).await?;
        }
    };
    // The handler finishes what was read before the reader stopped (the reader's end drops
    // its sender); a handler error, or a request it cannot understand, ends both at once.
    tokio::pin!(read, handle_all);
    let mut read_result = None;
    loop {
        tokio::select! {
            r = &mut read, if read_result.is_none() => read_result = Some(r),
            h = &mut handle_all => return h.and(read_result.unwrap_or(Ok(()))),
        }
    }
}
