//! Async Rust client for weir's native protocol.
//!
//! Layout:
//! - [`Client`] (this file): one multiplexed connection; admin calls, produce, fetch, offsets,
//!   group membership, push subscriptions.
//! - [`producer`]: [`Producer`] — batching by size and linger per partition, key routing with
//!   the protocol's consistent-hash ring, acks, retries that cannot reorder a partition.
//! - [`consumer`]: [`PartitionConsumer`] (an assigned partition from an offset),
//!   [`GroupConsumer`] (a server-assigned group member with commits) and [`Subscription`]
//!   (push with a credit window, or a bounded queue that drops or disconnects).
//! - `connection` (private): the wire, pings, correlation.

mod connection;
pub mod consumer;
pub mod error;
mod inbox;
pub mod producer;
mod tls;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use weir_wire::messages as msg;
use weir_wire::{Api, ErrorCode, Flags, Frame};

pub use consumer::{
    Dropped, FetchLimit, GroupConsumer, OverflowPolicy, PartitionConsumer, PushEvent,
    ReceivedRecord, SubscribeOptions, Subscription,
};
pub use error::{ClientError, Result};
pub use producer::{Producer, ProducerConfig};
pub use tls::{ClientTls, TlsOptions};
pub use weir_auth::Mechanism;
pub use weir_wire::messages;

/// Where to start reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    Earliest,
    Latest,
    Offset(u64),
    Timestamp(i64),
}

/// What a produce returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProduceAck {
    pub partition: u32,
    pub base_offset: u64,
    pub last_offset: u64,
    /// The client is over its produce or request quota: the server will not read this
    /// connection for this many milliseconds (0: within quota).
    pub throttle_ms: u32,
}

/// What a fetch returned: whole record batches.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub batches: Bytes,
    pub high_watermark: u64,
    pub log_start_offset: u64,
}

impl From<msg::ProduceResponse> for ProduceAck {
    fn from(r: msg::ProduceResponse) -> Self {
        ProduceAck {
            partition: r.partition,
            base_offset: r.base_offset,
            last_offset: r.last_offset,
            throttle_ms: r.throttle_ms,
        }
    }
}

/// A connection to a weir server. Cheap to clone; clones share the connection.
///
/// When the connection drops (the server restarted, say), the requests under way on it fail
/// with an I/O error or [`ClientError::Closed`], and the next request dials the server again
/// (once, however many ask at the same time) and goes out on the new connection. Push
/// subscriptions stay with the connection they were opened on and end with it.
#[derive(Debug, Clone)]
pub struct Client {
    link: Arc<Link>,
    timeout: Duration,
    client_id: Arc<str>,
}

/// The server's address and the connection in use, replaced when it drops.
#[derive(Debug)]
struct Link {
    addr: String,
    client_id: Arc<str>,
    tls: Option<ClientTls>,
    credentials: Option<Credentials>,
    current: parking_lot::Mutex<(Arc<connection::Connection>, Pinger)>,
    /// Held while dialing again, so that one caller does; holds when the last dial failed,
    /// and why, so that callers who waited for that dial get its error instead of dialing in
    /// turn.
    redial: tokio::sync::Mutex<Option<(tokio::time::Instant, String)>>,
    /// The current connection's server frame limit, kept here too so that a producer reads
    /// it per record without the lock.
    max_request: std::sync::atomic::AtomicUsize,
}

impl Link {
    fn current(&self) -> Arc<connection::Connection> {
        self.current.lock().0.clone()
    }

    /// The connection, dialed again first if it dropped.
    async fn live(&self, timeout: Duration) -> Result<Arc<connection::Connection>> {
        let conn = self.current();
        if !conn.is_closed() {
            return Ok(conn);
        }
        let asked = tokio::time::Instant::now();
        let mut last_failure = self.redial.lock().await;
        let conn = self.current();
        if !conn.is_closed() {
            return Ok(conn);
        }
        if let Some((at, why)) = &*last_failure
            && *at >= asked
        {
            return Err(ClientError::Connect {
                addr: self.addr.clone(),
                source: std::io::Error::other(why.clone()),
            });
        }
        let dialed = tokio::time::timeout(
            timeout,
            dial(
                &self.addr,
                &self.client_id,
                self.tls.as_ref(),
                self.credentials.as_ref(),
            ),
        )
        .await
        .map_err(|_| ClientError::Timeout(timeout))
        .and_then(|r| r);
        let (conn, pinger) = match dialed {
            Ok(dialed) => dialed,
            Err(e) => {
                *last_failure = Some((tokio::time::Instant::now(), e.to_string()));
                return Err(e);
            }
        };
        tracing::debug!(addr = %self.addr, "connected again");
        let old = std::mem::replace(&mut *self.current.lock(), (conn.clone(), pinger));
        drop(old);
        self.max_request.store(
            conn.server_max_frame(),
            std::sync::atomic::Ordering::Relaxed,
        );
        Ok(conn)
    }
}

#[derive(Debug)]
struct Pinger(tokio::task::JoinHandle<()>);

impl Drop for Pinger {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Requests wait this long for a response unless they wait by design (long polls add their
/// wait to it).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Opens a connection to `addr`, agrees on protocol versions, and starts its pings.
async fn dial(
    addr: &str,
    client_id: &str,
    tls: Option<&ClientTls>,
    credentials: Option<&Credentials>,
) -> Result<(Arc<connection::Connection>, Pinger)> {
    let conn = connection::Connection::open(addr, tls).await?;
    let hello = msg::HelloRequest {
        client_id: client_id.to_string(),
        apis: Api::supported(),
    };
    let (resp, _): (msg::HelloResponse, _) =
        call(&conn, Api::Hello, &hello, &[], DEFAULT_TIMEOUT).await?;
    // Authenticated already when a client certificate names the client (mutual TLS).
    if !resp.auth_mechanisms.is_empty() && resp.principal.is_empty() {
        let Some(credentials) = credentials else {
            return Err(ClientError::Server {
                code: weir_wire::ErrorCode::AuthenticationRequired,
                message: format!(
                    "the server requires authentication ({}): give a user and password",
                    resp.auth_mechanisms.join(", ")
                ),
            });
        };
        authenticate(&conn, credentials, &resp.auth_mechanisms).await?;
    }
    conn.set_server_max_frame(resp.max_frame_bytes);
    let every = Duration::from_millis(u64::from(resp.idle_timeout_ms.max(300)) / 3);
    let weak = Arc::downgrade(&conn);
    let pinger = tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let Some(conn) = weak.upgrade() else { return };
            if conn.is_closed() {
                return;
            }
            let wait = every * 3;
            if let Err(ClientError::Timeout(_)) =
                call::<msg::Ping>(&conn, Api::Ping, &msg::Ping {}, &[], wait).await
            {
                // No answer for that long: the link is gone without a word (a host that
                // crashed, a network cut). The next request dials again.
                conn.fail_all(ClientError::Timeout(wait));
                return;
            }
        }
    });
    Ok((conn, Pinger(pinger)))
}

/// Runs an Authenticate exchange on a new connection.
async fn authenticate(
    conn: &connection::Connection,
    credentials: &Credentials,
    offered: &[String],
) -> Result<()> {
    let mechanism = credentials.mechanism.name();
    if !offered.iter().any(|m| m == mechanism) {
        return Err(ClientError::Invalid(format!(
            "the server offers {} for authentication, not {mechanism}",
            offered.join(", ")
        )));
    }
    let step = |bytes: Vec<u8>| async move {
        let req = msg::AuthenticateRequest {
            mechanism: mechanism.to_string(),
            auth_bytes: bytes,
        };
        let (resp, _): (msg::AuthenticateResponse, _) =
            call(conn, Api::Authenticate, &req, &[], DEFAULT_TIMEOUT).await?;
        Ok::<_, ClientError>(resp)
    };
    let hash = match credentials.mechanism {
        weir_auth::Mechanism::Plain => {
            let message = format!("\0{}\0{}", credentials.user, credentials.password);
            let resp = step(message.into_bytes()).await?;
            return if resp.done {
                Ok(())
            } else {
                Err(ClientError::Protocol(
                    "PLAIN did not end in one step".into(),
                ))
            };
        }
        weir_auth::Mechanism::ScramSha256 => weir_auth::ScramHash::Sha256,
        weir_auth::Mechanism::ScramSha512 => weir_auth::ScramHash::Sha512,
    };
    let mut scram =
        weir_auth::scram_client::ScramClient::new(hash, &credentials.user, &credentials.password);
    let first = step(scram.client_first()).await?;
    // Thousands of hash rounds: off the runtime's threads.
    let (scram, last) = tokio::task::spawn_blocking(move || {
        let last = scram.client_final(&first.auth_bytes);
        (scram, last)
    })
    .await
    .map_err(|e| ClientError::Protocol(format!("SCRAM task failed: {e}")))?;
    let last = last.map_err(|e| ClientError::Protocol(format!("SCRAM: {e}")))?;
    let done = step(last).await?;
    if !done.done {
        return Err(ClientError::Protocol(
            "SCRAM did not end after two steps".into(),
        ));
    }
    scram
        .verify_server(&done.auth_bytes)
        .map_err(|e| ClientError::Protocol(format!("SCRAM: {e}")))
}

/// A user and password to authenticate with, to a server that requires it.
#[derive(Clone)]
pub struct Credentials {
    pub user: String,
    pub password: String,
    /// Default SCRAM-SHA-512 (the password never crosses the wire).
    pub mechanism: weir_auth::Mechanism,
}

impl Credentials {
    /// `user` and `password`, with SCRAM-SHA-512.
    pub fn new(user: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            user: user.into(),
            password: password.into(),
            mechanism: weir_auth::Mechanism::ScramSha512,
        }
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("mechanism", &self.mechanism)
            .finish_non_exhaustive()
    }
}

/// How to connect: TLS, and who to authenticate as.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    pub tls: Option<ClientTls>,
    pub credentials: Option<Credentials>,
}

impl Client {
    /// Connects to `addr` (`host:port`) and agrees on protocol versions.
    pub async fn connect(addr: &str, client_id: &str) -> Result<Client> {
        Self::connect_with(addr, client_id, None).await
    }

    /// Connects over TLS (to the server's `native.tls_listen`), checking the server's
    /// certificate against `addr`'s host (a DNS name or an IP address).
    pub async fn connect_tls(addr: &str, client_id: &str, tls: ClientTls) -> Result<Client> {
        Self::connect_with(addr, client_id, Some(tls)).await
    }

    /// [`Client::connect`], or [`Client::connect_tls`] when `tls` is given.
    pub async fn connect_with(
        addr: &str,
        client_id: &str,
        tls: Option<ClientTls>,
    ) -> Result<Client> {
        let options = ConnectOptions {
            tls,
            credentials: None,
        };
        Self::connect_options(addr, client_id, options).await
    }

    /// Connects as `options` say: over TLS, authenticated (again at every redial).
    pub async fn connect_options(
        addr: &str,
        client_id: &str,
        options: ConnectOptions,
    ) -> Result<Client> {
        let ConnectOptions { tls, credentials } = options;
        let client_id: Arc<str> = Arc::from(client_id);
        // Bounded like a redial: a server that accepts and never answers (or never finishes
        // a TLS handshake) must not hold the caller for good.
        let current = tokio::time::timeout(
            DEFAULT_TIMEOUT,
            dial(addr, &client_id, tls.as_ref(), credentials.as_ref()),
        )
        .await
        .map_err(|_| ClientError::Timeout(DEFAULT_TIMEOUT))??;
        let max_request = std::sync::atomic::AtomicUsize::new(current.0.server_max_frame());
        Ok(Client {
            link: Arc::new(Link {
                addr: addr.to_string(),
                client_id: client_id.clone(),
                tls,
                credentials,
                current: parking_lot::Mutex::new(current),
                redial: tokio::sync::Mutex::new(None),
                max_request,
            }),
            timeout: DEFAULT_TIMEOUT,
            client_id,
        })
    }

    /// This client (sharing the connection) with requests waiting `timeout` for a response
    /// (default [`DEFAULT_TIMEOUT`]; long polls add their wait to it).
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    /// The client id sent in Hello.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The largest request the server takes (the frame limit its hello gave), `usize::MAX`
    /// if it gave none. A larger request is refused here, before it is sent.
    pub fn max_request_bytes(&self) -> usize {
        self.link
            .max_request
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn call<R: Message + Default>(&self, api: Api, req: &impl Message) -> Result<R> {
        let conn = self.link.live(self.timeout).await?;
        Ok(call(&conn, api, req, &[], self.timeout).await?.0)
    }

    /// Round trip with no effect.
    pub async fn ping(&self) -> Result<()> {
        self.call::<msg::Ping>(Api::Ping, &msg::Ping {})
            .await
            .map(|_| ())
    }

    pub async fn create_topic(
        &self,
        name: &str,
        config: msg::TopicConfig,
    ) -> Result<msg::TopicConfig> {
        let r: msg::CreateTopicResponse = self
            .call(
                Api::CreateTopic,
                &msg::CreateTopicRequest {
                    name: name.to_string(),
                    config: Some(config),
                },
            )
            .await?;
        Ok(r.config.unwrap_or_default())
    }

    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        self.call::<msg::DeleteTopicResponse>(
            Api::DeleteTopic,
            &msg::DeleteTopicRequest {
                name: name.to_string(),
            },
        )
        .await
        .map(|_| ())
    }

    /// Metadata of the named topics, or of all topics if `topics` is empty.
    pub async fn metadata(&self, topics: &[&str]) -> Result<Vec<msg::TopicMetadata>> {
        let r: msg::MetadataResponse = self
            .call(
                Api::Metadata,
                &msg::MetadataRequest {
                    topics: topics.iter().map(|t| t.to_string()).collect(),
                },
            )
            .await?;
        Ok(r.topics)
    }

    /// Appends one record batch (build it with `weir_batch::BatchBuilder`). Routed to
    /// `partition` if given, else by `key`, else round robin.
    pub async fn produce(
        &self,
        topic: &str,
        partition: Option<u32>,
        key: Option<&[u8]>,
        batch: Bytes,
    ) -> Result<ProduceAck> {
        let conn = self.link.live(self.timeout).await?;
        self.start_produce(&conn, topic, partition, key, batch)?
            .await
    }

    /// A producer id, for batches of an idempotent producer (`BatchBuilder::producer`, an
    /// epoch from 0, per-partition sequence numbers from 0): the server writes each such batch once
    /// however often it is sent, and refuses one whose sequence does not follow the last
    /// written (`OutOfOrderSequence`). [`Producer`] does this by itself.
    pub async fn init_producer(&self) -> Result<i64> {
        let r: msg::InitProducerResponse = self
            .call(Api::InitProducer, &msg::InitProducerRequest {})
            .await?;
        Ok(r.producer_id)
    }

    /// [`Client::produce`] to an explicit partition, in two steps: the request is sent at once,
    /// behind every request sent before it on this connection (the call never waits), and the
    /// future returned waits for its answer. So batches started one after another reach the
    /// server in that order, as an idempotent producer with several batches under way needs.
    /// It does not dial again: on a connection that dropped it fails at once.
    pub fn produce_sent(
        &self,
        topic: &str,
        partition: u32,
        batch: Bytes,
    ) -> Result<impl std::future::Future<Output = Result<ProduceAck>> + Send + 'static + use<>>
    {
        self.start_produce(&self.link.current(), topic, Some(partition), None, batch)
    }

    /// Sends a produce request on `conn` at once; the future waits for its answer.
    fn start_produce(
        &self,
        conn: &Arc<connection::Connection>,
        topic: &str,
        partition: Option<u32>,
        key: Option<&[u8]>,
        batch: Bytes,
    ) -> Result<impl std::future::Future<Output = Result<ProduceAck>> + Send + 'static + use<>>
    {
        let req = msg::ProduceRequest {
            topic: topic.to_string(),
            partition,
            key: key.map(<[u8]>::to_vec),
            acks: msg::Acks::Durable as i32,
        };
        let sent = conn.start(Api::Produce, &req, &[batch])?;
        let (conn, timeout) = (conn.clone(), self.timeout);
        Ok(async move {
            let frame = conn.answer(sent, timeout).await?;
            let (r, _): (msg::ProduceResponse, _) = decode_response(Api::Produce, frame)?;
            Ok(ProduceAck::from(r))
        })
    }

    /// Appends one record batch without waiting for, or getting, any answer.
    pub async fn produce_no_ack(
        &self,
        topic: &str,
        partition: Option<u32>,
        key: Option<&[u8]>,
        batch: Bytes,
    ) -> Result<()> {
        let req = msg::ProduceRequest {
            topic: topic.to_string(),
            partition,
            key: key.map(<[u8]>::to_vec),
            acks: msg::Acks::None as i32,
        };
        self.link
            .live(self.timeout)
            .await?
            .send(Api::Produce, &req, &[batch])
    }

    /// Whole batches from `offset`; waits up to `max_wait` for `min_bytes`.
    pub async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: u32,
        min_bytes: u32,
        max_wait: Duration,
    ) -> Result<Fetched> {
        let req = msg::FetchRequest {
            topic: topic.to_string(),
            partition,
            offset,
            max_bytes,
            min_bytes,
            max_wait_ms: max_wait.as_millis().min(u128::from(u32::MAX)) as u32,
        };
        let conn = self.link.live(self.timeout).await?;
        let (r, records): (msg::FetchResponse, _) =
            call(&conn, Api::Fetch, &req, &[], self.timeout + max_wait).await?;
        Ok(Fetched {
            batches: records,
            high_watermark: r.high_watermark,
            log_start_offset: r.log_start_offset,
        })
    }

    /// Resolves a start position to an offset.
    pub async fn list_offsets(&self, topic: &str, partition: u32, at: Start) -> Result<u64> {
        use msg::list_offsets_request::Spec;
        let spec = match at {
            Start::Earliest => Spec::Earliest(true),
            Start::Latest => Spec::Latest(true),
            Start::Timestamp(ts) => Spec::TimestampMs(ts),
            Start::Offset(o) => return Ok(o),
        };
        let r: msg::ListOffsetsResponse = self
            .call(
                Api::ListOffsets,
                &msg::ListOffsetsRequest {
                    topic: topic.to_string(),
                    partition,
                    spec: Some(spec),
                },
            )
            .await?;
        Ok(r.offset)
    }

    pub async fn join_group(&self, req: msg::JoinGroupRequest) -> Result<msg::JoinGroupResponse> {
        self.call(Api::JoinGroup, &req).await
    }

    pub async fn heartbeat(&self, group: &str, member_id: &str, generation: u64) -> Result<()> {
        self.heartbeat_wait(group, member_id, generation, Duration::ZERO)
            .await
    }

    /// A heartbeat the server holds up to `wait` (capped below the client's timeout) while
    /// the member is current, answering `RebalanceInProgress` the moment its group
    /// rebalances. A server that does not hold heartbeats answers at once.
    pub async fn heartbeat_wait(
        &self,
        group: &str,
        member_id: &str,
        generation: u64,
        wait: Duration,
    ) -> Result<()> {
        let wait = wait.min(self.timeout / 2);
        self.call::<msg::HeartbeatResponse>(
            Api::Heartbeat,
            &msg::HeartbeatRequest {
                group: group.to_string(),
                member_id: member_id.to_string(),
                generation,
                max_wait_ms: wait.as_millis().min(u128::from(u32::MAX)) as u32,
            },
        )
        .await
        .map(|_| ())
    }

    pub async fn leave_group(&self, group: &str, member_id: &str) -> Result<()> {
        self.call::<msg::LeaveGroupResponse>(
            Api::LeaveGroup,
            &msg::LeaveGroupRequest {
                group: group.to_string(),
                member_id: member_id.to_string(),
            },
        )
        .await
        .map(|_| ())
    }

    /// Commits offsets (the next offset to read, per partition). `member` is
    /// `(member_id, generation)` for a group member; `None` commits without fencing.
    pub async fn commit(
        &self,
        group: &str,
        member: Option<(&str, u64)>,
        offsets: &[(String, u32, u64)],
    ) -> Result<()> {
        let (member_id, generation) = member.unwrap_or(("", 0));
        self.call::<msg::CommitOffsetsResponse>(
            Api::CommitOffsets,
            &msg::CommitOffsetsRequest {
                group: group.to_string(),
                member_id: member_id.to_string(),
                generation,
                offsets: offsets
                    .iter()
                    .map(|(topic, partition, offset)| msg::PartitionOffset {
                        topic: topic.clone(),
                        partition: *partition,
                        offset: *offset,
                    })
                    .collect(),
            },
        )
        .await
        .map(|_| ())
    }

    /// Committed offsets; partitions without one resolve to earliest or latest.
    pub async fn fetch_offsets(
        &self,
        group: &str,
        partitions: &[(String, u32)],
        reset_earliest: bool,
    ) -> Result<Vec<(String, u32, u64)>> {
        let mut by_topic: Vec<msg::TopicPartitions> = Vec::new();
        for (t, p) in partitions {
            match by_topic.iter_mut().find(|tp| &tp.topic == t) {
                Some(tp) => tp.partitions.push(*p),
                None => by_topic.push(msg::TopicPartitions {
                    topic: t.clone(),
                    partitions: vec![*p],
                }),
            }
        }
        let reset = if reset_earliest {
            msg::ResetPolicy::ResetEarliest
        } else {
            msg::ResetPolicy::ResetLatest
        };
        let r: msg::FetchOffsetsResponse = self
            .call(
                Api::FetchOffsets,
                &msg::FetchOffsetsRequest {
                    group: group.to_string(),
                    partitions: by_topic,
                    reset: reset as i32,
                },
            )
            .await?;
        Ok(r.offsets
            .into_iter()
            .map(|o| (o.topic, o.partition, o.offset))
            .collect())
    }

    pub async fn list_groups(&self) -> Result<Vec<String>> {
        let r: msg::ListGroupsResponse = self
            .call(Api::ListGroups, &msg::ListGroupsRequest {})
            .await?;
        Ok(r.groups)
    }

    pub async fn describe_group(&self, group: &str) -> Result<msg::DescribeGroupResponse> {
        self.call(
            Api::DescribeGroup,
            &msg::DescribeGroupRequest {
                group: group.to_string(),
            },
        )
        .await
    }

    /// Subscribes to pushes from one partition, with a credit window of `window_records`
    /// records and `window_bytes` bytes (at least one batch's worth); the window is re-granted
    /// as batches are taken with [`Subscription::next`], each time half of it is used.
    pub async fn subscribe(
        &self,
        topic: &str,
        partition: u32,
        start: Start,
        window_records: u64,
        window_bytes: u64,
    ) -> Result<Subscription> {
        let opts = SubscribeOptions {
            window_records,
            window_bytes,
            ..SubscribeOptions::default()
        };
        Subscription::open(self.clone(), topic, partition, Some(start), opts).await
    }

    /// Subscribes to a snapshot of one partition of a compacted topic, then its live records:
    /// first the latest record of every key (tombstoned keys left out, in offset order), then
    /// [`PushEvent::SnapshotEnd`], then every record from where the snapshot ended, with no
    /// gap and no duplicate. Credit-based: the server refuses the queue policies, which could
    /// drop part of the snapshot.
    pub async fn subscribe_snapshot(
        &self,
        topic: &str,
        partition: u32,
        opts: SubscribeOptions,
    ) -> Result<Subscription> {
        Subscription::open(self.clone(), topic, partition, None, opts).await
    }

    /// Subscribes to pushes from one partition under an [`OverflowPolicy`]: `Credit` (as
    /// [`Client::subscribe`]), or a bounded queue that drops the oldest records
    /// (`DropOldest`, announced as [`PushEvent::Dropped`]) or ends the subscription with
    /// `SLOW_CONSUMER` (`Disconnect`) when the subscriber falls behind.
    pub async fn subscribe_with(
        &self,
        topic: &str,
        partition: u32,
        start: Start,
        opts: SubscribeOptions,
    ) -> Result<Subscription> {
        Subscription::open(self.clone(), topic, partition, Some(start), opts).await
    }

    /// The connection, dialed again first if it dropped.
    pub(crate) async fn connection(&self) -> Result<Arc<connection::Connection>> {
        self.link.live(self.timeout).await
    }
}

/// Sends a request and decodes its response, turning error frames into `ClientError::Server`.
pub(crate) async fn call<R: Message + Default>(
    conn: &connection::Connection,
    api: Api,
    req: &impl Message,
    records: &[Bytes],
    timeout: Duration,
) -> Result<(R, Bytes)> {
    decode_response(api, conn.call(api, req, records, timeout).await?)
}

/// A response frame's message (and records), or the error it carries.
fn decode_response<R: Message + Default>(api: Api, frame: Frame) -> Result<(R, Bytes)> {
    if frame.header.flags.has(Flags::ERROR) {
        let e = msg::ErrorResponse::decode(frame.message)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        return Err(ClientError::Server {
            code: ErrorCode::from_u32(e.code),
            message: e.message,
        });
    }
    let r = R::decode(frame.message)
        .map_err(|e| ClientError::Protocol(format!("cannot decode {api:?} response: {e}")))?;
    Ok((r, frame.records))
}
