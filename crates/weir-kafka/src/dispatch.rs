//! From a decoded request to its answer: which APIs and versions are served, the request's
//! context (client, quotas), the one match that hands each request to its module in
//! [`crate::api`], and the encoding of what the module returns.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::Encodable;
use weir_broker::Access;
use weir_broker::access::{Operation, Principal, ResourceType};
use weir_broker::flow::QuotaKind;

use crate::api::produce::ProduceInFlight;
use crate::api::{
    acls, alter_configs, api_versions, consumer_group_heartbeat, create_partitions, create_topics,
    delete_groups, delete_records, delete_topics, describe_cluster, describe_configs,
    describe_groups, describe_producers, describe_topic_partitions, fetch, find_coordinator,
    heartbeat, init_producer_id, join_group, leave_group, list_groups, list_offsets, metadata,
    offset_commit, offset_delete, offset_fetch, offset_for_leader_epoch, produce, sync_group,
};
use crate::decode::{Decoded, decode_request, frame_client_id, refused_request};
use crate::{Kafka, Reply, code, legacy};

/// The APIs and versions advertised; every one is served. Each runs from Kafka 3.9's lowest
/// version (those below the `kafka-protocol` crate's are read by [`crate::legacy`]) to the
/// newest the crate knows, except Produce below v3 and Fetch below v4, which carry message
/// formats 0 and 1 (removed in Kafka 4 too).
/// SaslHandshake and SaslAuthenticate are advertised only when the server requires
/// authentication (see [`crate::sasl`]); CreateAcls, DescribeAcls and DeleteAcls only when it
/// authorizes requests by ACLs (see [`crate::api::acls`]).
/// The ACL APIs run from v1: Kafka 4 removed v0.
/// Transactions (AddPartitionsToTxn, EndTxn, …) and the KIP-848 consumer group protocol
/// (ConsumerGroupHeartbeat) are not advertised: clients then keep to idempotent producers and
/// the classic JoinGroup/SyncGroup protocol.
pub(crate) const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 13),
    (ApiKey::Fetch, 4, 18),
    (ApiKey::ListOffsets, 0, 10),
    (ApiKey::Metadata, 0, 13),
    (ApiKey::OffsetCommit, 0, 9),
    (ApiKey::OffsetFetch, 0, 9),
    (ApiKey::FindCoordinator, 0, 6),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::DescribeGroups, 0, 6),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::CreateTopics, 0, 7),
    (ApiKey::DeleteTopics, 0, 6),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::InitProducerId, 0, 5),
    (ApiKey::OffsetForLeaderEpoch, 0, 4),
    (ApiKey::DescribeConfigs, 0, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::DescribeCluster, 0, 2),
    (ApiKey::DescribeProducers, 0, 0),
    (ApiKey::DescribeTopicPartitions, 0, 0),
    (ApiKey::ConsumerGroupHeartbeat, 0, 1),
    (ApiKey::SaslHandshake, 0, 1),
    (ApiKey::SaslAuthenticate, 0, 2),
    (ApiKey::CreateAcls, 1, 3),
    (ApiKey::DescribeAcls, 1, 3),
    (ApiKey::DeleteAcls, 1, 3),
];

/// Whether `api` is one of authentication's, advertised only when it is required.
pub(crate) fn is_sasl(api: ApiKey) -> bool {
    matches!(api, ApiKey::SaslHandshake | ApiKey::SaslAuthenticate)
}

/// Whether `api` manages access control lists, advertised only when the server has them.
pub(crate) fn is_acl(api: ApiKey) -> bool {
    matches!(
        api,
        ApiKey::CreateAcls | ApiKey::DescribeAcls | ApiKey::DeleteAcls
    )
}

/// Which of the APIs offered only with security are advertised.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Offered {
    /// SaslHandshake and SaslAuthenticate: the server requires authentication.
    pub(crate) sasl: bool,
    /// CreateAcls, DescribeAcls, DeleteAcls: the server authorizes requests by ACLs.
    pub(crate) acls: bool,
}

impl Offered {
    pub(crate) fn of(broker: &weir_broker::Broker) -> Self {
        let auth = broker.auth();
        Self {
            sasl: auth.is_some(),
            acls: auth.and_then(|a| a.acls()).is_some(),
        }
    }

    /// Whether `api` is advertised.
    pub(crate) fn offers(self, api: ApiKey) -> bool {
        (self.sasl || !is_sasl(api)) && (self.acls || !is_acl(api))
    }
}

/// The versions of `api` served, if it is.
pub(crate) fn range(api: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED
        .iter()
        .find(|(k, _, _)| *k == api)
        .map(|(_, min, max)| (*min, *max))
}

/// Snake-case names of the APIs, as metrics label them.
pub(crate) fn api_name(api: ApiKey) -> &'static str {
    match api {
        ApiKey::Produce => "produce",
        ApiKey::Fetch => "fetch",
        ApiKey::ListOffsets => "list_offsets",
        ApiKey::Metadata => "metadata",
        ApiKey::OffsetCommit => "offset_commit",
        ApiKey::OffsetFetch => "offset_fetch",
        ApiKey::FindCoordinator => "find_coordinator",
        ApiKey::JoinGroup => "join_group",
        ApiKey::Heartbeat => "heartbeat",
        ApiKey::LeaveGroup => "leave_group",
        ApiKey::SyncGroup => "sync_group",
        ApiKey::ApiVersions => "api_versions",
        ApiKey::CreateTopics => "create_topics",
        ApiKey::DeleteTopics => "delete_topics",
        ApiKey::DescribeConfigs => "describe_configs",
        ApiKey::InitProducerId => "init_producer_id",
        ApiKey::DescribeGroups => "describe_groups",
        ApiKey::ListGroups => "list_groups",
        ApiKey::DeleteGroups => "delete_groups",
        ApiKey::OffsetDelete => "offset_delete",
        ApiKey::DeleteRecords => "delete_records",
        ApiKey::DescribeCluster => "describe_cluster",
        ApiKey::OffsetForLeaderEpoch => "offset_for_leader_epoch",
        ApiKey::AlterConfigs => "alter_configs",
        ApiKey::CreatePartitions => "create_partitions",
        ApiKey::IncrementalAlterConfigs => "incremental_alter_configs",
        ApiKey::DescribeProducers => "describe_producers",
        ApiKey::DescribeTopicPartitions => "describe_topic_partitions",
        ApiKey::ConsumerGroupHeartbeat => "consumer_group_heartbeat",
        ApiKey::SaslHandshake => "sasl_handshake",
        ApiKey::SaslAuthenticate => "sasl_authenticate",
        ApiKey::CreateAcls => "create_acls",
        ApiKey::DescribeAcls => "describe_acls",
        ApiKey::DeleteAcls => "delete_acls",
        _ => "other",
    }
}

/// Everything allowed: requests handled without a connection on a server that does not
/// authenticate (tests).
static UNCHECKED: std::sync::LazyLock<Arc<Access>> =
    std::sync::LazyLock::new(|| Arc::new(Access::unchecked(Principal::Anonymous)));

/// What an API module sees of its request besides the request itself.
pub(crate) struct Ctx<'a> {
    pub(crate) kafka: &'a Kafka,
    /// What the client may do.
    pub(crate) access: Arc<Access>,
    pub(crate) version: i16,
    pub(crate) client_id: String,
    /// The client's address, when the request came over a connection.
    pub(crate) peer: Option<std::net::SocketAddr>,
    /// How long the client is to be throttled: the longest any quota charged asks.
    pub(crate) throttle: Duration,
}

impl Ctx<'_> {
    /// Whether the client may do `op` to the resource (see [`Access`]).
    pub(crate) fn allows(&self, op: Operation, resource: ResourceType, name: &str) -> bool {
        self.access.allows(op, resource, name)
    }

    /// [`Ctx::allows`] as the broker's refusal, for the door's error table.
    pub(crate) fn check(
        &self,
        op: Operation,
        resource: ResourceType,
        name: &str,
    ) -> Result<(), weir_broker::BrokerError> {
        self.access.check(op, resource, name)
    }

    /// Charges the client's `kind` quota `amount`; over it, the client is throttled.
    pub(crate) fn charge(&mut self, kind: QuotaKind, amount: u64) {
        let wait = self
            .kafka
            .broker
            .quotas()
            .charge(&self.client_id, kind, amount);
        self.throttle = self.throttle.max(wait);
    }
}

pub(crate) fn throttle_ms(d: Duration) -> i32 {
    d.as_millis().min(i32::MAX as u128) as i32
}

/// A request decoded and ready to handle.
pub(crate) struct Request {
    pub(crate) api: ApiKey,
    /// The client's address (set by the connection; `None` sans socket).
    pub(crate) peer: Option<std::net::SocketAddr>,
    /// What the client may do (set by the connection; `None` sans socket: everything).
    pub(crate) access: Option<Arc<Access>>,
    pub(crate) version: i16,
    pub(crate) header: RequestHeader,
    pub(crate) body: RequestKind,
    frame_len: usize,
}

impl Request {
    /// The request, as from `peer`, who may do what `access` allows.
    pub(crate) fn from(self, peer: std::net::SocketAddr, access: Option<Arc<Access>>) -> Self {
        Self {
            peer: Some(peer),
            access,
            ..self
        }
    }
}

/// Decodes a request (without its size prefix), or says how to answer one that could not be:
/// the v0 ApiVersions answer for a client newer than us (listing the SASL APIs if `sasl`), or a
/// close (counted and logged).
pub(crate) fn take(frame: Bytes, offered: Offered) -> Result<Request, Reply> {
    let frame_len = frame.len();
    // Kept to say whose request was refused, and let go of right after decoding, so that a
    // produce's records can still become the only view of the request (see `produce`).
    let whole = frame.clone();
    let decoded = decode_request(frame);
    let refused_by = match &decoded {
        Err(_) => frame_client_id(&whole),
        Ok(_) => String::new(),
    };
    drop(whole);
    match decoded {
        Ok(Decoded::Request {
            api,
            version,
            header,
            request,
        }) => Ok(Request {
            api,
            peer: None,
            access: None,
            version,
            header,
            body: request,
            frame_len,
        }),
        // A strict v0 answer any client understands: the error and our ranges.
        Ok(Decoded::ApiVersionsTooNew { correlation_id }) => Err(Reply::Response(
            api_versions::reply(correlation_id, 0, code::UNSUPPORTED_VERSION, offered),
        )),
        Err(e) => {
            refused_request(&e, refused_by);
            Err(Reply::Close)
        }
    }
}

/// A request taken as far as it goes without waiting for a sync.
pub(crate) enum Step {
    /// Answered (or to be closed on), and the client's throttle time.
    Done(Reply, Duration),
    /// A produce whose batches are written, to be answered once they are durable.
    Syncing(ProduceInFlight, Duration),
}

/// Handles one decoded request; a produce returns once its batches are written, so that the
/// connection can read and write its next requests while the syncs are under way.
pub(crate) async fn step(kafka: &Kafka, request: Request) -> Step {
    let Request {
        api,
        peer,
        access,
        version,
        header,
        body: request,
        frame_len,
    } = request;
    metrics::counter!("weir_kafka_requests_total", "api" => api_name(api)).increment(1);
    let mut cx = Ctx {
        kafka,
        access: access.unwrap_or_else(|| match kafka.broker.auth() {
            // Without a connection, nobody has proven who they are.
            Some(_) => Arc::new(kafka.broker.access(Principal::Anonymous)),
            None => Arc::clone(&UNCHECKED),
        }),
        version,
        client_id: header.client_id.as_deref().unwrap_or("").to_string(),
        peer,
        throttle: Duration::ZERO,
    };
    cx.charge(QuotaKind::Requests, 1);
    let correlation = header.correlation_id;
    // The header's strings are views of the request's memory: let go of them, so that a
    // produce's records can become the only view left.
    drop(header);
    // The response is built in place: size prefix (patched at the end), header, body, so that
    // records are copied once, into this buffer.
    let mut body = BytesMut::new();
    body.put_i32(0);
    let header = ResponseHeader::default().with_correlation_id(correlation);
    if let Err(e) = header.encode(&mut body, api.response_header_version(version)) {
        return Step::Done(unanswerable(api, version, &e), cx.throttle);
    }
    let response: ResponseKind = match request {
        RequestKind::ApiVersions(_) => {
            let offered = Offered::of(&kafka.broker);
            let reply = api_versions::reply(correlation, version, code::NONE, offered);
            return Step::Done(Reply::Response(reply), cx.throttle);
        }
        RequestKind::Produce(r) => {
            let in_flight = produce::handle(&mut cx, r, frame_len, body).await;
            return Step::Syncing(in_flight, cx.throttle);
        }
        RequestKind::Fetch(r) => {
            let answer = fetch::handle(&mut cx, r).await;
            let reply = match fetch::encode(body, version, throttle_ms(cx.throttle), answer) {
                Some(pieces) => Reply::Parts(pieces),
                None => unanswerable(api, version, &"a Fetch answer too large to encode"),
            };
            return Step::Done(reply, cx.throttle);
        }
        RequestKind::Metadata(r) => metadata::handle(&mut cx, r).await.into(),
        RequestKind::ListOffsets(r) => list_offsets::handle(&mut cx, r).await.into(),
        RequestKind::CreateTopics(r) => create_topics::handle(&mut cx, r).await.into(),
        RequestKind::DeleteTopics(r) => delete_topics::handle(&mut cx, r).await.into(),
        RequestKind::DescribeConfigs(r) => describe_configs::handle(&mut cx, r).await.into(),
        RequestKind::FindCoordinator(r) => find_coordinator::handle(&mut cx, r).await.into(),
        RequestKind::JoinGroup(r) => join_group::handle(&mut cx, r).await.into(),
        RequestKind::SyncGroup(r) => sync_group::handle(&mut cx, r).await.into(),
        RequestKind::Heartbeat(r) => heartbeat::handle(&mut cx, r).await.into(),
        RequestKind::LeaveGroup(r) => leave_group::handle(&mut cx, r).await.into(),
        RequestKind::OffsetCommit(r) => offset_commit::handle(&mut cx, r).await.into(),
        RequestKind::OffsetFetch(r) => offset_fetch::handle(&mut cx, r).await.into(),
        RequestKind::InitProducerId(r) => init_producer_id::handle(&mut cx, r).await.into(),
        RequestKind::DescribeGroups(r) => describe_groups::handle(&mut cx, r).await.into(),
        RequestKind::ListGroups(r) => list_groups::handle(&mut cx, r).await.into(),
        RequestKind::DeleteGroups(r) => delete_groups::handle(&mut cx, r).await.into(),
        RequestKind::OffsetDelete(r) => offset_delete::handle(&mut cx, r).await.into(),
        RequestKind::DeleteRecords(r) => delete_records::handle(&mut cx, r).await.into(),
        RequestKind::DescribeCluster(r) => describe_cluster::handle(&mut cx, r).await.into(),
        RequestKind::OffsetForLeaderEpoch(r) => {
            offset_for_leader_epoch::handle(&mut cx, r).await.into()
        }
        RequestKind::AlterConfigs(r) => alter_configs::handle(&mut cx, r).await.into(),
        RequestKind::IncrementalAlterConfigs(r) => {
            alter_configs::handle_incremental(&mut cx, r).await.into()
        }
        RequestKind::CreatePartitions(r) => create_partitions::handle(&mut cx, r).await.into(),
        RequestKind::DescribeProducers(r) => describe_producers::handle(&mut cx, r).await.into(),
        RequestKind::DescribeTopicPartitions(r) => {
            describe_topic_partitions::handle(&mut cx, r).await.into()
        }
        RequestKind::CreateAcls(r) => acls::create(&mut cx, r).await.into(),
        RequestKind::DescribeAcls(r) => acls::describe(&mut cx, r).await.into(),
        RequestKind::DeleteAcls(r) => acls::delete(&mut cx, r).await.into(),
        RequestKind::ConsumerGroupHeartbeat(r) => {
            consumer_group_heartbeat::handle(&mut cx, r).await.into()
        }
        r @ (RequestKind::SaslHandshake(_) | RequestKind::SaslAuthenticate(_)) => {
            crate::sasl::out_of_place(&r, kafka.broker.auth().map(|a| &**a))
                .expect("a SASL request")
        }
        _ => {
            let reason = "advertised but not dispatched (a bug)";
            return Step::Done(unanswerable(api, version, &reason), cx.throttle);
        }
    };
    Step::Done(finish_body(body, api, version, &response), cx.throttle)
}

/// Encodes `response` after `body` (size prefix placeholder and response header) and patches
/// the size prefix.
pub(crate) fn finish_body(
    mut body: BytesMut,
    api: ApiKey,
    version: i16,
    response: &ResponseKind,
) -> Reply {
    if legacy::covers(api, version) {
        if let Err(e) = legacy::encode(api, version, response, &mut body) {
            return unanswerable(api, version, &e);
        }
    } else if let Err(e) = response.encode(&mut body, version) {
        return unanswerable(api, version, &e);
    }
    match i32::try_from(body.len() - 4) {
        Ok(len) => {
            body[..4].copy_from_slice(&len.to_be_bytes());
            Reply::Response(body.freeze())
        }
        Err(_) => unanswerable(api, version, &"a response over 2 GiB"),
    }
}

/// A response that cannot be encoded: the connection is closed, as for a request that cannot
/// be decoded, and the reason logged (it is weir's fault, not the client's).
fn unanswerable(api: ApiKey, version: i16, reason: &dyn std::fmt::Display) -> Reply {
    tracing::warn!(?api, version, %reason, "Kafka response could not be encoded; closing");
    Reply::Close
}

/// Handles one request (without its size prefix): the response (size prefix included),
/// silence (produce with acks=0), or a request that cannot be understood.
pub async fn handle(kafka: &Kafka, frame: Bytes) -> Reply {
    handle_throttled(kafka, frame).await.0
}

/// [`handle`], and how long the client is to be throttled: it went over a quota, its
/// response carries `throttle_time_ms`, and its connection is not read for that long.
pub async fn handle_throttled(kafka: &Kafka, frame: Bytes) -> (Reply, Duration) {
    match take(frame, Offered::of(&kafka.broker)) {
        Err(reply) => (reply, Duration::ZERO),
        Ok(request) => complete(kafka, request).await,
    }
}

/// [`step`], and for a produce the wait for its syncs too.
pub(crate) async fn complete(kafka: &Kafka, request: Request) -> (Reply, Duration) {
    match step(kafka, request).await {
        Step::Done(reply, throttle) => (reply, throttle),
        Step::Syncing(in_flight, throttle) => (in_flight.finish(kafka).await, throttle),
    }
}
