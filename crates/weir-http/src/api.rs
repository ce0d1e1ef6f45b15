//! The HTTP routes. [`routes`] is the one table of (method, path, handler): the router is
//! built from it and the OpenAPI test reads it, so the document cannot drift from what is
//! served.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post};
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{Value, json};
use weir_batch::Ring;
use weir_batch::{Batches, Records};
use weir_broker::access::{Operation, Principal, ResourceType};
use weir_broker::activity::Door;
use weir_broker::broker::OffsetSpec;
use weir_broker::topic::{DurabilitySetting, TopicInfo};
use weir_broker::{Access, Broker};

use crate::HttpConfig;
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::records::{self, Format, OwnedRecord, RecordOut};
use crate::ws::hub::Hub;

/// Shared by every handler.
#[derive(Debug, Clone)]
pub struct AppState {
    pub broker: Broker,
    pub config: Arc<HttpConfig>,
    pub hub: Arc<Hub>,
    /// Shutdown began: `/ready` answers 503.
    pub stopping: Arc<AtomicBool>,
    /// Cancelled when shutdown begins: a running CPU profile stops sampling and answers.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Held while a CPU profile runs (one at a time).
    pub profile_lock: crate::debug::ProfileLock,
    /// The console's samples of the server's counters (its task runs in [`crate::serve`]).
    pub sampler: Arc<crate::console::Sampler>,
    /// Key rings by partition count, for routing keyed records.
    rings: Arc<Mutex<HashMap<u32, Arc<Ring>>>>,
}

impl AppState {
    pub fn new(broker: Broker, config: HttpConfig, hub: Arc<Hub>) -> Self {
        Self {
            broker,
            config: Arc::new(config),
            hub,
            stopping: Arc::new(AtomicBool::new(false)),
            shutdown: Default::default(),
            profile_lock: Default::default(),
            sampler: Default::default(),
            rings: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn ring(&self, partitions: u32) -> Arc<Ring> {
        self.rings
            .lock()
            .entry(partitions)
            .or_insert_with(|| Arc::new(Ring::new(partitions)))
            .clone()
    }
}

/// Everything allowed: a server without authentication has no principal to check.
static UNCHECKED: std::sync::LazyLock<Arc<Access>> =
    std::sync::LazyLock::new(|| Arc::new(Access::unchecked(Principal::Anonymous)));

/// What the caller may do: set by [`authenticate`], everything when the server does not
/// authenticate.
#[derive(Debug, Clone)]
pub(crate) struct Caller(pub(crate) Arc<Access>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<Caller>()
            .cloned()
            .unwrap_or_else(|| Caller(Arc::clone(&UNCHECKED))))
    }
}

/// What a route needs of the access control lists: the HTTP door's one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needs {
    /// Nothing (health, readiness, the API's own description).
    Nothing,
    /// `op` on the resource named by the path parameter `param` (`*` for the cluster).
    Check(Operation, ResourceType, &'static str),
    /// Checked by the handler: a listing filtered to what the caller may see, a name in the
    /// body, or each WebSocket subscription.
    Handler,
}

fn needs(method: &str, path: &str) -> Option<Needs> {
    use Operation::*;
    use ResourceType::{Cluster, Group, Pipeline, Topic};
    Some(match (method, path) {
        ("get", "/health" | "/ready" | "/openapi.json") => Needs::Nothing,
        // The console's page and files: what it shows comes from the routes below, checked.
        ("get", "/" | "/console/" | "/console/assets/{file}") => Needs::Nothing,
        ("get", "/console/live") => Needs::Check(Describe, Cluster, "*"),
        ("get", "/stats" | "/metrics") => Needs::Check(Describe, Cluster, "*"),
        ("get", "/debug/pprof/profile" | "/debug/heap") => Needs::Check(Alter, Cluster, "*"),
        ("get", "/topics" | "/groups" | "/ws" | "/pipelines" | "/console/me")
        | ("post", "/topics") => Needs::Handler,
        ("get", "/topics/{topic}") => Needs::Check(Describe, Topic, "topic"),
        ("delete", "/topics/{topic}") => Needs::Check(Delete, Topic, "topic"),
        ("post", "/topics/{topic}/records") => Needs::Check(Write, Topic, "topic"),
        ("get", "/topics/{topic}/keys/{key}")
        | ("get", "/topics/{topic}/partitions/{partition}/records") => {
            Needs::Check(Read, Topic, "topic")
        }
        ("get", "/groups/{group}" | "/groups/{group}/lag") => {
            Needs::Check(Describe, Group, "group")
        }
        // Read on each topic is checked by the handler, as Kafka's OffsetCommit does.
        ("post", "/groups/{group}/offsets") => Needs::Check(Read, Group, "group"),
        ("get", "/pipelines/{pipeline}") => Needs::Check(Describe, Pipeline, "pipeline"),
        (
            "post",
            "/pipelines/{pipeline}/start"
            | "/pipelines/{pipeline}/stop"
            | "/pipelines/{pipeline}/reload",
        ) => Needs::Check(Alter, Pipeline, "pipeline"),
        ("post", "/pipelines/{pipeline}/ingest") => Needs::Check(Write, Pipeline, "pipeline"),
        _ => return None,
    })
}

/// Checks a matched route against [`needs`] before its handler runs: 403 `forbidden` when
/// the caller may not. A route missing from the table is refused (and a test keeps the table
/// complete).
async fn authorize(
    caller: Caller,
    matched: Option<axum::extract::MatchedPath>,
    params: Result<axum::extract::RawPathParams, axum::extract::rejection::RawPathParamsRejection>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if !caller.0.is_checked() {
        return next.run(req).await;
    }
    let method = req.method().as_str().to_ascii_lowercase();
    let path = matched.as_ref().map_or("", |m| m.as_str());
    match needs(&method, path) {
        Some(Needs::Nothing | Needs::Handler) => next.run(req).await,
        Some(Needs::Check(op, resource, param)) => {
            let name = match param {
                "*" => Some("*".to_string()),
                _ => params.ok().and_then(|ps| {
                    ps.iter()
                        .find(|(k, _)| *k == param)
                        .map(|(_, v)| v.to_string())
                }),
            };
            match name.map(|n| caller.0.check(op, resource, &n)) {
                Some(Ok(())) => next.run(req).await,
                Some(Err(e)) => ApiError::from(e).into_response(),
                None => {
                    ApiError::bad_request(format!("bad path parameter: {param}")).into_response()
                }
            }
        }
        None => ApiError::new(
            ErrorCode::Forbidden,
            format!("{method} {path} is not in the access table"),
        )
        .into_response(),
    }
}

/// The routes: method, path (axum syntax, the same as OpenAPI's), handler.
pub fn routes() -> Vec<(&'static str, &'static str, MethodRouter<AppState>)> {
    #[allow(unused_mut)]
    let mut routes = vec![
        ("get", "/health", get(health)),
        ("get", "/ready", get(ready)),
        ("get", "/openapi.json", get(openapi)),
        ("get", "/", get(crate::console::root)),
        ("get", "/console/", get(crate::console::index)),
        ("get", "/console/assets/{file}", get(crate::console::asset)),
        ("get", "/console/live", get(crate::console::live)),
        ("get", "/console/me", get(crate::console::me)),
        ("get", "/stats", get(stats)),
        ("get", "/metrics", get(metrics)),
        ("get", "/topics", get(list_topics)),
        ("post", "/topics", post(create_topic)),
        ("get", "/topics/{topic}", get(get_topic)),
        ("delete", "/topics/{topic}", delete(delete_topic)),
        ("post", "/topics/{topic}/records", post(produce)),
        ("get", "/topics/{topic}/keys/{key}", get(latest_by_key)),
        (
            "get",
            "/topics/{topic}/partitions/{partition}/records",
            get(fetch),
        ),
        ("get", "/groups", get(list_groups)),
        ("get", "/groups/{group}", get(get_group)),
        ("post", "/groups/{group}/offsets", post(reset_offsets)),
        ("get", "/groups/{group}/lag", get(crate::console::group_lag)),
        ("get", "/ws", get(websocket)),
        ("get", "/debug/pprof/profile", get(crate::debug::profile)),
        ("get", "/debug/heap", get(crate::debug::heap)),
    ];
    #[cfg(feature = "pipelines")]
    routes.extend([
        ("get", "/pipelines", get(list_pipelines)),
        ("get", "/pipelines/{pipeline}", get(get_pipeline)),
        ("post", "/pipelines/{pipeline}/start", post(start_pipeline)),
        ("post", "/pipelines/{pipeline}/stop", post(stop_pipeline)),
        (
            "post",
            "/pipelines/{pipeline}/reload",
            post(reload_pipeline),
        ),
        ("post", "/pipelines/{pipeline}/ingest", post(ingest)),
    ]);
    routes
}

/// The router of [`routes`], with JSON answers for unknown paths and methods.
#[derive(Debug)]
pub struct Api {
    router: Router,
}

impl Api {
    pub fn into_router(self) -> Router {
        self.router
    }
}

pub fn router(state: AppState) -> Api {
    let mut by_path: BTreeMap<&str, MethodRouter<AppState>> = BTreeMap::new();
    for (_, path, mr) in routes() {
        let merged = match by_path.remove(path) {
            Some(existing) => existing.merge(mr),
            None => mr,
        };
        by_path.insert(path, merged);
    }
    let mut router = Router::new();
    for (path, mr) in by_path {
        router = router.route(path, mr);
    }
    // After routing: the matched route says what it needs of the access control lists.
    let router = router.route_layer(axum::middleware::from_fn(authorize));
    let limit = state.config.max_body_bytes;
    let router = router
        .fallback(|| async {
            ApiError::new(ErrorCode::NotFound, "no such path; see /openapi.json")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                ErrorCode::MethodNotAllowed,
                "this path does not take that method; see /openapi.json",
            )
        })
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                refuse_oversized(limit, req, next)
            },
        ))
        // Outermost: nothing is looked at before the client is known.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authenticate,
        ))
        .with_state(state);
    Api { router }
}

fn json_response(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn ok(body: Value) -> Response {
    json_response(StatusCode::OK, body)
}

fn path<T>(p: Result<Path<T>, PathRejection>) -> ApiResult<T> {
    p.map(|Path(t)| t)
        .map_err(|e| ApiError::bad_request(format!("bad path parameter: {}", e.body_text())))
}

pub(crate) fn query<T>(q: Result<Query<T>, QueryRejection>) -> ApiResult<T> {
    q.map(|Query(t)| t)
        .map_err(|e| ApiError::bad_request(format!("bad query string: {}", e.body_text())))
}

fn body(b: Result<Bytes, BytesRejection>, limit: usize) -> ApiResult<Bytes> {
    b.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("the request body exceeds the limit of {limit} bytes"),
            )
        } else {
            ApiError::bad_request(format!("cannot read the request body: {}", e.body_text()))
        }
    })
}

/// A request whose `Content-Length` is over the body limit is answered 413 before its body is
/// read (the connection then closes: the body is not read past), instead of after the limit's
/// worth of it arrived.
async fn refuse_oversized(
    limit: usize,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared.filter(|&n| n > limit as u64) {
        let mut r = ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("the request body of {len} bytes exceeds the limit of {limit} bytes"),
        )
        .into_response();
        r.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
        return r;
    }
    next.run(req).await
}

/// When the server requires authentication: every request but `/health` and `/ready` needs
/// `Authorization: Bearer TOKEN` (an API token of a user, or a JWT), or on `/ws`, for
/// browsers that cannot set headers, `?access_token=TOKEN`. Otherwise 401 with a JSON error
/// and `WWW-Authenticate`. What the principal may do goes into the request's extensions
/// ([`Caller`]), for [`authorize`] and the handlers that filter.
async fn authenticate(
    State(s): State<AppState>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(auth) = s.broker.auth() else {
        return next.run(req).await;
    };
    let path = req.uri().path();
    // The console's page and files are public: it asks for a token itself, and sends it with
    // every request for data.
    if matches!(path, "/health" | "/ready" | "/" | "/console/")
        || path.starts_with("/console/assets/")
    {
        return next.run(req).await;
    }
    let (peer, certificate_name) = req
        .extensions()
        .get::<crate::listener::Peer>()
        .map_or((None, None), |p| (Some(p.addr), p.certificate_name.clone()));
    let from_header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    // A browser's WebSocket and EventSource cannot send headers: those take it in the query.
    let from_query = matches!(path, "/ws" | "/console/live")
        .then(|| req.uri().query())
        .flatten()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("access_token=")));
    let Some(token) = from_header.or(from_query).map(str::to_string) else {
        // A verified client certificate names the client (mutual TLS).
        if let Some(name) = certificate_name {
            let access = s.broker.access(Principal::user(&name));
            req.extensions_mut().insert(Caller(Arc::new(access)));
            return next.run(req).await;
        }
        return unauthenticated(
            "this server requires authentication: send Authorization: Bearer TOKEN (an API \
             token from `weir user token`, or a JWT)",
            false,
        );
    };
    let kind = if token.starts_with(weir_auth::users::TOKEN_PREFIX) {
        "token"
    } else {
        "jwt"
    };
    let outcome = auth.bearer(&token, peer.map(|p| p.ip()));
    auth.record("http", kind, peer, &outcome);
    match outcome {
        Ok(principal) => {
            let access = s.broker.access(principal);
            req.extensions_mut().insert(Caller(Arc::new(access)));
            next.run(req).await
        }
        Err(e) => unauthenticated(&e.to_string(), true),
    }
}

/// 401 with the reason, and the `WWW-Authenticate` challenge (RFC 6750).
fn unauthenticated(message: &str, token_given: bool) -> Response {
    let mut r = ApiError::new(ErrorCode::Unauthenticated, message.to_string()).into_response();
    let challenge = if token_given {
        "Bearer realm=\"weir\", error=\"invalid_token\""
    } else {
        "Bearer realm=\"weir\""
    };
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static(challenge),
    );
    r
}

pub(crate) fn parse_json<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> ApiResult<T> {
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::bad_request(format!("the body is not valid JSON for this endpoint: {e}"))
    })
}

// ---- health ----

async fn health() -> Response {
    ok(json!({"status": "ok"}))
}

async fn ready(State(s): State<AppState>) -> Response {
    if s.stopping.load(Ordering::Acquire) || !s.broker.is_serving() {
        return ApiError::new(ErrorCode::ShuttingDown, "the server is shutting down")
            .into_response();
    }
    ok(json!({"status": "ready"}))
}

async fn openapi() -> Response {
    ok(crate::openapi::document())
}

async fn stats(State(s): State<AppState>) -> Response {
    ok(json!({"ws": s.hub.stats.snapshot()}))
}

/// Prometheus text: the process's metrics, then the WebSocket counters.
async fn metrics(State(s): State<AppState>) -> Response {
    use std::fmt::Write;
    let mut out = s
        .config
        .metrics
        .as_ref()
        .map(|m| (m.0)())
        .unwrap_or_default();
    let w = s.hub.stats.snapshot();
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    family(
        "weir_ws_connections",
        "gauge",
        "Open WebSocket connections.",
        &[("", w.connections_open)],
    );
    family(
        "weir_ws_subscriptions",
        "gauge",
        "Open WebSocket subscriptions.",
        &[("", w.subscriptions_open)],
    );
    family(
        "weir_ws_records_sent_total",
        "counter",
        "Records sent to WebSocket subscribers.",
        &[("", w.records_sent)],
    );
    family(
        "weir_ws_dropped_records_total",
        "counter",
        "Records a WebSocket subscriber did not get, by the policy that dropped them.",
        &[
            ("{policy=\"drop_oldest\"}", w.dropped_oldest),
            ("{policy=\"conflate\"}", w.conflated),
        ],
    );
    family(
        "weir_ws_slow_disconnects_total",
        "counter",
        "WebSocket subscribers disconnected for falling behind (policy disconnect).",
        &[("", w.disconnected_slow)],
    );
    family(
        "weir_ws_gaps_total",
        "counter",
        "Gap notices sent to resuming WebSocket clients (retention passed their offsets).",
        &[("", w.gaps)],
    );
    (
        StatusCode::OK,
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

// ---- topics ----

/// A topic as the API shows it, with its value schema when one is declared.
fn topic_json(t: &TopicInfo, schemas: &crate::Schemas) -> Value {
    let schema = schemas
        .get(&t.name)
        .map(|d| json!({"type": "protobuf", "message": d.full_name()}));
    json!({
        "name": t.name,
        "config": t.config,
        "schema": schema,
        "partitions": t.partitions.iter().map(|p| json!({
            "partition": p.partition,
            "log_start_offset": p.log_start_offset,
            "high_watermark": p.high_watermark,
            "size_bytes": p.size_bytes,
        })).collect::<Vec<_>>(),
    })
}

async fn list_topics(State(s): State<AppState>, caller: Caller) -> Response {
    let topics: Vec<Value> = s
        .broker
        .topics()
        .iter()
        .filter(|t| {
            caller
                .0
                .allows(Operation::Describe, ResourceType::Topic, &t.name)
        })
        .map(|t| topic_json(t, &s.config.schemas))
        .collect();
    ok(json!({ "topics": topics }))
}

/// `POST /topics`: a name and any settings to change from the broker's defaults.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTopic {
    name: String,
    partitions: Option<u32>,
    retention_ms: Option<u64>,
    retention_bytes: Option<u64>,
    durability: Option<DurabilitySetting>,
    max_batch_bytes: Option<u32>,
    segment_bytes: Option<u64>,
    timestamp_type: Option<weir_broker::topic::TimestampType>,
    cleanup_policy: Option<weir_broker::CleanupPolicy>,
    delete_retention_ms: Option<u64>,
    min_compaction_lag_ms: Option<u64>,
    max_compaction_lag_ms: Option<u64>,
    min_cleanable_dirty_ratio: Option<f64>,
}

async fn create_topic(
    State(s): State<AppState>,
    caller: Caller,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let b = body(b, s.config.max_body_bytes)?;
    let req: CreateTopic = parse_json(&b)?;
    // The right to create on the cluster, or on the topic itself.
    if !caller.0.allows_cluster(Operation::Create) {
        caller
            .0
            .check(Operation::Create, ResourceType::Topic, &req.name)?;
    }
    let mut config = s.broker.config().default_topic.clone();
    if let Some(p) = req.partitions {
        config.partitions = p;
    }
    if req.retention_ms.is_some() {
        config.retention_ms = req.retention_ms;
    }
    if req.retention_bytes.is_some() {
        config.retention_bytes = req.retention_bytes;
    }
    if let Some(d) = req.durability {
        config.durability = d;
    }
    if let Some(m) = req.max_batch_bytes {
        config.max_batch_bytes = m;
    }
    if let Some(t) = req.timestamp_type {
        config.timestamp_type = t;
    }
    if let Some(p) = req.cleanup_policy {
        config.cleanup_policy = p;
    }
    if let Some(ms) = req.delete_retention_ms {
        config.delete_retention_ms = ms;
    }
    if let Some(ms) = req.min_compaction_lag_ms {
        config.min_compaction_lag_ms = ms;
    }
    if req.max_compaction_lag_ms.is_some() {
        config.max_compaction_lag_ms = req.max_compaction_lag_ms;
    }
    if let Some(r) = req.min_cleanable_dirty_ratio {
        config.min_cleanable_dirty_ratio = weir_broker::DirtyRatio(r);
    }
    if let Some(m) = req.segment_bytes {
        config.segment_bytes = m;
        // A batch cannot be larger than a segment: small segments lower the default limit.
        if req.max_batch_bytes.is_none() {
            config.max_batch_bytes = config
                .max_batch_bytes
                .min(m.min(u64::from(u32::MAX)) as u32);
        }
    }
    let info = s.broker.create_topic(&req.name, Some(config)).await?;
    Ok(json_response(
        StatusCode::CREATED,
        topic_json(&info, &s.config.schemas),
    ))
}

async fn get_topic(
    State(s): State<AppState>,
    p: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    let topic = path(p)?;
    Ok(ok(topic_json(
        &s.broker.topic_info(&topic)?,
        &s.config.schemas,
    )))
}

async fn delete_topic(
    State(s): State<AppState>,
    p: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    let topic = path(p)?;
    s.broker.delete_topic(&topic).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyQuery {
    #[serde(default)]
    format: Format,
}

/// `GET /topics/{topic}/keys/{key}`: the latest record of a key in a compacted topic (the key
/// is the path segment's UTF-8 text).
async fn latest_by_key(
    State(s): State<AppState>,
    p: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<KeyQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let (topic, key) = path(p)?;
    let q = query(q)?;
    let missing = |why: String| ApiError::new(ErrorCode::UnknownKey, why);
    let Some(found) = s.broker.latest_by_key(&topic, key.as_bytes()).await? else {
        return Err(missing(format!("no record has key {key:?} in {topic}")));
    };
    let (h, section) = weir_batch::payload(&found.batch)
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    for rec in weir_batch::Records::with_payload(h, &section) {
        let rec = rec.map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
        if rec.offset as u64 != found.offset {
            continue;
        }
        if rec.value.is_none() {
            return Err(missing(format!(
                "key {key:?} was deleted (a tombstone at offset {} of partition {})",
                found.offset, found.partition
            )));
        }
        let out = RecordOut::new(&topic, found.partition, &rec, q.format, None);
        return Ok(ok(serde_json::to_value(out)
            .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?));
    }
    Err(ApiError::new(
        ErrorCode::Internal,
        format!("offset {} is not in the batch found for it", found.offset),
    ))
}

// ---- produce ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProduceQuery {
    /// Key of the one record of a binary produce.
    key: Option<String>,
    /// Partition of the one record of a binary produce.
    partition: Option<u32>,
}

async fn produce(
    State(s): State<AppState>,
    caller: Caller,
    p: Result<Path<String>, PathRejection>,
    q: Result<Query<ProduceQuery>, QueryRejection>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let topic = path(p)?;
    let q = query(q)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let b = body(b, s.config.max_body_bytes)?;
    let records = records::parse_produce_body(content_type, q.key, q.partition, &b)?;
    if s.broker.produce_creates(&topic) {
        // Write was checked by the route; creating the topic takes the right to create it.
        caller.0.check_create_topic(&topic)?;
        match s.broker.create_topic(&topic, None).await {
            Ok(_) | Err(weir_broker::BrokerError::TopicExists(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let partitions = s.broker.partition_count(&topic).ok_or_else(|| {
        ApiError::new(
            ErrorCode::UnknownTopic,
            format!("topic '{topic}' does not exist"),
        )
    })?;
    // Route every record first, so a bad partition fails the request before anything is
    // written. Keyless records go together to the partition the broker picks.
    let mut groups: BTreeMap<Option<u32>, Vec<usize>> = BTreeMap::new();
    let mut ring = None;
    for (i, r) in records.iter().enumerate() {
        let target = match (r.partition, &r.key) {
            (Some(p), _) if p < partitions => Some(p),
            (Some(p), _) => {
                return Err(ApiError::new(
                    ErrorCode::UnknownPartition,
                    format!(
                        "record {i}: topic '{topic}' has no partition {p} (it has {partitions})"
                    ),
                ));
            }
            (None, Some(k)) => Some(
                ring.get_or_insert_with(|| s.ring(partitions))
                    .partition_for(k),
            ),
            (None, None) => None,
        };
        groups.entry(target).or_default().push(i);
    }
    // Every partition's batch is built and checked against the topic's limit before any is
    // written: a request refused for its content writes nothing.
    let max_batch = s.broker.topic_config(&topic)?.max_batch_bytes as usize;
    let now = records::now_ms();
    let mut batches = Vec::with_capacity(groups.len());
    for (target, indexes) in groups {
        let batch: Vec<&OwnedRecord> = indexes.iter().map(|&i| &records[i]).collect();
        let bytes = records::build_batch(&batch, now);
        if bytes.len() > max_batch {
            let which = target.map_or("its records".to_string(), |p| {
                format!("the records for partition {p}")
            });
            return Err(ApiError::new(
                ErrorCode::RecordTooLarge,
                format!(
                    "{which} make a batch of {} bytes, over topic '{topic}''s max_batch_bytes \
                     of {max_batch}; nothing was written",
                    bytes.len()
                ),
            ));
        }
        batches.push((target, indexes, Bytes::from(bytes)));
    }
    // A failure of the disk can still strike between partitions. Then what was written is
    // answered with what was not (207), as Kafka answers each partition of a produce.
    let mut outcome: Vec<Value> = vec![Value::Null; records.len()];
    let mut written = false;
    let mut failure: Option<ApiError> = None;
    let door = s.broker.activity().door(Door::Http);
    for (target, indexes, bytes) in batches {
        let size = bytes.len() as u64;
        let result = match &failure {
            Some(f) => Err(ApiError::new(
                f.code,
                "not attempted: an earlier partition of the request failed",
            )),
            None => s
                .broker
                .produce(&topic, target, None, bytes)
                .await
                .map_err(ApiError::from),
        };
        match result {
            Ok(r) => {
                written = true;
                door.produced(indexes.len() as u64, size);
                for (n, &i) in indexes.iter().enumerate() {
                    outcome[i] =
                        json!({"partition": r.partition, "offset": r.base_offset + n as u64});
                }
            }
            Err(e) if !written => return Err(e),
            Err(e) => {
                for &i in &indexes {
                    outcome[i] = json!({"partition": target, "error": e.body()["error"]});
                }
                failure.get_or_insert(e);
            }
        }
    }
    match failure {
        None => Ok(ok(json!({"topic": topic, "offsets": outcome}))),
        Some(e) => {
            tracing::warn!(%topic, error = %e, "HTTP produce written in part");
            Ok((
                StatusCode::MULTI_STATUS,
                [(header::CONTENT_TYPE, "application/json")],
                json!({"topic": topic, "offsets": outcome, "error": e.body()["error"]}).to_string(),
            )
                .into_response())
        }
    }
}

// ---- fetch ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FetchQuery {
    offset: Option<u64>,
    timestamp: Option<i64>,
    max_bytes: Option<usize>,
    max_wait_ms: Option<u64>,
    #[serde(default)]
    format: Format,
    /// Decode each value with the topic's schema too (`value_decoded`, or
    /// `value_decode_error` for a value that is not such a message).
    #[serde(default)]
    schema: bool,
}

async fn fetch(
    State(s): State<AppState>,
    p: Result<Path<(String, u32)>, PathRejection>,
    q: Result<Query<FetchQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let (topic, partition) = path(p)?;
    let q = query(q)?;
    let schema = match (q.schema, s.config.schemas.get(&topic)) {
        (false, _) => None,
        (true, Some(d)) => Some(d.clone()),
        (true, None) => {
            return Err(ApiError::bad_request(format!(
                "topic '{topic}' has no schema to decode with (declare one in [schemas.{topic}])"
            )));
        }
    };
    let offset = match (q.offset, q.timestamp) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request("give offset or timestamp, not both"));
        }
        (Some(o), None) => o,
        (None, Some(ts)) => {
            s.broker
                .list_offsets(&topic, partition, OffsetSpec::Timestamp(ts))
                .await?
        }
        (None, None) => {
            s.broker
                .list_offsets(&topic, partition, OffsetSpec::Earliest)
                .await?
        }
    };
    let max_bytes = q
        .max_bytes
        .unwrap_or(s.config.default_fetch_bytes)
        .clamp(1, s.config.max_fetch_bytes);
    let max_wait = Duration::from_millis(q.max_wait_ms.unwrap_or(0)).min(s.config.max_wait);
    let min_bytes = usize::from(!max_wait.is_zero());
    let r = s
        .broker
        .fetch(&topic, partition, offset, max_bytes, min_bytes, max_wait)
        .await?;
    s.broker
        .activity()
        .door(Door::Http)
        .delivered(r.len() as u64);
    let decode = || -> ApiResult<(Vec<Value>, u64)> {
        let mut out = Vec::new();
        let mut next = offset;
        // Record bytes (keys, values, headers) in the answer: compressed batches can hold far
        // more than `max_bytes` once decompressed, so the answer stops at about `max_bytes`
        // (always after at least one record) and `next_offset` says where to go on.
        let mut size = 0usize;
        'chunks: for chunk in &r.chunks {
            for batch in Batches::new(chunk) {
                let (h, bytes) =
                    batch.map_err(|e| ApiError::new(ErrorCode::StorageError, e.to_string()))?;
                if h.is_control() {
                    next = next.max(h.next_offset().max(0) as u64);
                    continue;
                }
                // Compressed batches (from Kafka producers) are decompressed to be shown.
                let section = weir_batch::section(&h, bytes)
                    .map_err(|e| ApiError::new(ErrorCode::StorageError, e.to_string()))?;
                for rec in Records::with_payload(h, &section) {
                    let rec =
                        rec.map_err(|e| ApiError::new(ErrorCode::StorageError, e.to_string()))?;
                    if (rec.offset.max(0) as u64) < offset {
                        continue;
                    }
                    if !out.is_empty() && size >= max_bytes {
                        next = rec.offset.max(0) as u64;
                        break 'chunks;
                    }
                    size += rec.key.map_or(0, <[u8]>::len)
                        + rec.value.map_or(0, <[u8]>::len)
                        + rec
                            .headers
                            .iter()
                            .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len))
                            .sum::<usize>();
                    let mut v = serde_json::to_value(RecordOut::new(
                        &topic, partition, &rec, q.format, None,
                    ))
                    .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
                    if let Some(d) = &schema {
                        match crate::records::decode_message(d, rec.value.unwrap_or_default()) {
                            Ok(decoded) => v["value_decoded"] = decoded,
                            Err(e) => v["value_decode_error"] = Value::String(e),
                        }
                    }
                    out.push(v);
                }
                next = next.max(h.next_offset().max(0) as u64);
            }
        }
        Ok((out, next))
    };
    let compressed = crate::records::any_compressed(&r.chunks);
    let (out, next) = crate::records::decode(&s.broker, compressed, decode).await?;
    Ok(ok(json!({
        "topic": topic,
        "partition": partition,
        "high_watermark": r.high_watermark,
        "log_start_offset": r.log_start_offset,
        "next_offset": next,
        "records": out,
    })))
}

// ---- groups ----

#[cfg(feature = "pipelines")]
fn unknown_pipeline(name: &str) -> ApiError {
    ApiError::new(
        ErrorCode::UnknownPipeline,
        format!("no pipeline named '{name}'"),
    )
}

#[cfg(feature = "pipelines")]
fn pipelines(s: &AppState) -> Option<&Arc<weir_pipeline::manager::Manager>> {
    s.config.pipelines.as_ref()
}

#[cfg(feature = "pipelines")]
async fn list_pipelines(State(s): State<AppState>, caller: Caller) -> Response {
    let mut list = pipelines(&s).map(|m| m.list()).unwrap_or_default();
    list.retain(|p| {
        caller
            .0
            .allows(Operation::Describe, ResourceType::Pipeline, &p.name)
    });
    ok(json!({"pipelines": list}))
}

#[cfg(feature = "pipelines")]
async fn get_pipeline(
    State(s): State<AppState>,
    p: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    let name = path(p)?;
    let detail = pipelines(&s)
        .and_then(|m| m.describe(&name))
        .ok_or_else(|| unknown_pipeline(&name))?;
    Ok(ok(json!(detail)))
}

#[cfg(feature = "pipelines")]
fn managed(e: weir_pipeline::manager::ManageError) -> ApiError {
    use weir_pipeline::manager::ManageError;
    match e {
        ManageError::Unknown(name) => unknown_pipeline(&name),
        ManageError::Invalid(why) => ApiError::new(ErrorCode::InvalidConfig, why),
    }
}

#[cfg(feature = "pipelines")]
async fn start_pipeline(
    State(s): State<AppState>,
    p: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    let name = path(p)?;
    let m = pipelines(&s).ok_or_else(|| unknown_pipeline(&name))?;
    m.start_one(&name).await.map_err(managed)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(feature = "pipelines")]
async fn stop_pipeline(
    State(s): State<AppState>,
    p: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    let name = path(p)?;
    let m = pipelines(&s).ok_or_else(|| unknown_pipeline(&name))?;
    m.stop(&name).await.map_err(managed)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(feature = "pipelines")]
async fn reload_pipeline(
    State(s): State<AppState>,
    p: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    let name = path(p)?;
    let m = pipelines(&s).ok_or_else(|| unknown_pipeline(&name))?;
    m.reload(&name).await.map_err(managed)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(feature = "pipelines")]
/// Feeds a pipeline's http source: one event per line, answered once delivered.
async fn ingest(
    State(s): State<AppState>,
    p: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    use weir_pipeline::connect::http::IngestError;
    let name = path(p)?;
    let pipeline = pipelines(&s)
        .and_then(|m| m.get(&name))
        .ok_or_else(|| unknown_pipeline(&name))?;
    let point = pipeline.ingest_point().ok_or_else(|| {
        ApiError::new(
            ErrorCode::UnknownPipeline,
            format!("pipeline '{name}' has no http source"),
        )
    })?;
    let body = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    match point.ingest(body).await {
        Ok(done) => Ok(ok(json!(done))),
        Err(IngestError::Busy) => {
            let mut r = ApiError::new(ErrorCode::PipelineBusy, IngestError::Busy.to_string())
                .into_response();
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            Ok(r)
        }
        Err(e @ IngestError::NotRunning) => {
            Err(ApiError::new(ErrorCode::PipelineNotRunning, e.to_string()))
        }
        Err(e @ IngestError::NotDelivered) => {
            Err(ApiError::new(ErrorCode::NotDelivered, e.to_string()))
        }
        Err(e @ IngestError::Timeout(_)) => {
            Err(ApiError::new(ErrorCode::DeliveryTimeout, e.to_string()))
        }
        Err(IngestError::BadRequest(why)) => Err(ApiError::bad_request(why)),
    }
}

async fn list_groups(State(s): State<AppState>, caller: Caller) -> Response {
    let every = caller.0.allows_cluster(Operation::Describe);
    let mut groups = s.broker.groups();
    groups.retain(|g| every || caller.0.allows(Operation::Describe, ResourceType::Group, g));
    ok(json!({ "groups": groups }))
}

async fn get_group(
    State(s): State<AppState>,
    caller: Caller,
    p: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    // Topics the caller may not describe are left out of assignments and offsets.
    let seen = |t: &str| caller.0.allows(Operation::Describe, ResourceType::Topic, t);
    let group = path(p)?;
    if !s.broker.groups().contains(&group) {
        return Err(ApiError::new(
            ErrorCode::UnknownGroup,
            format!("group '{group}' has no members and no committed offsets"),
        ));
    }
    let desc = s.broker.describe_group(&group);
    let members: Vec<Value> = desc
        .as_ref()
        .map(|d| {
            d.members
                .iter()
                .map(|m| {
                    let assignment: BTreeMap<&str, &Vec<u32>> = m
                        .assignment
                        .iter()
                        .filter(|(t, _)| seen(t))
                        .map(|(t, ps)| (t.as_str(), ps))
                        .collect();
                    let topics: Vec<&String> = m.topics.iter().filter(|t| seen(t)).collect();
                    json!({
                        "member_id": m.member_id,
                        "client_id": m.client_id,
                        "topics": topics,
                        "session_timeout_ms": m.session_timeout.as_millis() as u64,
                        "assignment": assignment,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let offsets: Vec<Value> = s
        .broker
        .group_lag(&group)
        .iter()
        .filter(|l| seen(&l.topic))
        .map(|l| {
            json!({
                "topic": l.topic,
                "partition": l.partition,
                "committed": l.committed,
                "high_watermark": l.high_watermark,
                "lag": l.lag,
            })
        })
        .collect();
    Ok(ok(json!({
        "group": group,
        "protocol": desc.as_ref().map(|d| d.protocol.name()),
        "generation": desc.as_ref().map_or(0, |d| d.generation),
        "members": members,
        "offsets": offsets,
    })))
}

/// `POST /groups/{group}/offsets`: where a group with no members starts reading again.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetOffsets {
    topic: String,
    /// Every partition of the topic when absent.
    partitions: Option<Vec<u32>>,
    to: ResetTo,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum ResetTo {
    Earliest,
    Latest,
    /// The first offset whose timestamp is at or after this (ms since the epoch); the end
    /// when none is.
    Timestamp(i64),
}

async fn reset_offsets(
    State(s): State<AppState>,
    caller: Caller,
    p: Result<Path<String>, PathRejection>,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let group = path(p)?;
    let b = body(b, s.config.max_body_bytes)?;
    let req: ResetOffsets = serde_json::from_slice(&b)
        .map_err(|e| ApiError::bad_request(format!("bad reset request: {e}")))?;
    caller
        .0
        .check(Operation::Read, ResourceType::Topic, &req.topic)?;
    let partitions = s.broker.partition_count(&req.topic).ok_or_else(|| {
        ApiError::new(
            ErrorCode::UnknownTopic,
            format!("topic '{}' does not exist", req.topic),
        )
    })?;
    // Each partition once, whatever the list repeats: at most the topic's partitions.
    let chosen: std::collections::BTreeSet<u32> = match req.partitions {
        Some(ps) => ps.into_iter().collect(),
        None => (0..partitions).collect(),
    };
    if let Some(p) = chosen.iter().find(|p| **p >= partitions) {
        return Err(ApiError::new(
            ErrorCode::UnknownPartition,
            format!(
                "topic '{}' has no partition {p} (it has {partitions})",
                req.topic
            ),
        ));
    }
    // Checked again just before the commit; a member joining in between reads from where the
    // reset put it, as if it had joined just after.
    let still_empty = || {
        let empty = s
            .broker
            .describe_group(&group)
            .is_none_or(|d| d.members.is_empty());
        empty.then_some(()).ok_or_else(|| {
            ApiError::new(
                ErrorCode::GroupNotEmpty,
                format!("group '{group}' has members: stop them first, then reset its offsets"),
            )
        })
    };
    still_empty()?;
    let spec = match req.to {
        ResetTo::Earliest => OffsetSpec::Earliest,
        ResetTo::Latest => OffsetSpec::Latest,
        ResetTo::Timestamp(ts) => OffsetSpec::Timestamp(ts),
    };
    let mut offsets = Vec::with_capacity(chosen.len());
    for p in chosen {
        let o = s.broker.list_offsets(&req.topic, p, spec).await?;
        offsets.push((req.topic.clone(), p, o));
    }
    still_empty()?;
    s.broker.commit(&group, None, offsets.clone()).await?;
    tracing::info!(%group, topic = %req.topic, ?spec, "offsets reset over HTTP");
    Ok(ok(json!({
        "group": group,
        "offsets": offsets.iter().map(|(t, p, o)| json!({"topic": t, "partition": p, "offset": o})).collect::<Vec<_>>(),
    })))
}

// ---- websocket ----

async fn websocket(State(s): State<AppState>, caller: Caller, ws: WebSocketUpgrade) -> Response {
    let hub = s.hub.clone();
    let c = &s.hub.config;
    let Ok(permit) = hub.connection_slots.clone().try_acquire_owned() else {
        return ApiError::new(
            ErrorCode::TooManyConnections,
            format!(
                "the server holds its limit of {} WebSocket connections",
                c.max_connections
            ),
        )
        .into_response();
    };
    let max = c.max_message_bytes;
    ws
        // Small buffers keep idle connections cheap: the read buffer is allocated up front,
        // and the write buffer only gathers the frames of one wake-up (flushed at once).
        .read_buffer_size(c.read_buffer_bytes)
        .write_buffer_size(c.write_buffer_bytes)
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| {
            let tasks = hub.tasks.clone();
            tasks.track_future(async move {
                crate::ws::run_connection(socket, hub, caller.0).await;
                drop(permit);
            })
        })
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;
    use weir_broker::BrokerConfig;

    use super::*;

    async fn call(app: &Router, method: &str, uri: &str, body: &str) -> (StatusCode, Value) {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// A broker in `dir` and the router on it.
    fn app(dir: &std::path::Path) -> (Broker, Router) {
        let broker = Broker::open(BrokerConfig {
            data_dir: dir.to_path_buf(),
            ..BrokerConfig::default()
        })
        .unwrap();
        let hub = Hub::new(broker.clone(), Default::default());
        let app = router(AppState::new(broker.clone(), HttpConfig::default(), hub)).into_router();
        (broker, app)
    }

    #[test]
    fn every_route_says_what_it_needs_of_the_access_control_lists() {
        for (method, path, _) in routes() {
            let needs = needs(method, path);
            assert!(
                needs.is_some(),
                "{method} {path} is not in the access table"
            );
            // A resource named by a path parameter names one the route has.
            if let Some(Needs::Check(_, _, param)) = needs
                && param != "*"
            {
                assert!(
                    path.contains(&format!("{{{param}}}")),
                    "{method} {path}: {param}"
                );
            }
        }
        // Only the open few need nothing: health, the API's description, and the console's
        // page and files (which hold no data: that comes from the checked routes).
        let open: Vec<_> = routes()
            .into_iter()
            .filter(|(m, p, _)| needs(m, p) == Some(Needs::Nothing))
            .map(|(_, p, _)| p)
            .collect();
        assert_eq!(
            open,
            [
                "/health",
                "/ready",
                "/openapi.json",
                "/",
                "/console/",
                "/console/assets/{file}"
            ]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keyed_records_land_where_the_ring_puts_them_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let (broker, app) = app(dir.path());
        let (s, _) = call(&app, "POST", "/topics", r#"{"name":"t","partitions":4}"#).await;
        assert_eq!(s, StatusCode::CREATED);
        let records: Vec<Value> = (0..20)
            .map(|i| json!({"key": format!("k{}", i % 5), "value": i.to_string()}))
            .collect();
        let (s, body) = call(
            &app,
            "POST",
            "/topics/t/records",
            &json!({ "records": records }).to_string(),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{body}");
        let ring = Ring::new(4);
        let mut next = [0u64; 4];
        for (i, o) in body["offsets"].as_array().unwrap().iter().enumerate() {
            let p = ring.partition_for(format!("k{}", i % 5).as_bytes());
            assert_eq!(o["partition"], p, "record {i}");
            // Offsets within a partition follow request order.
            assert_eq!(o["offset"], next[p as usize]);
            next[p as usize] += 1;
        }
        let mut values = Vec::new();
        for p in 0..4 {
            let (s, body) = call(
                &app,
                "GET",
                &format!("/topics/t/partitions/{p}/records"),
                "",
            )
            .await;
            assert_eq!(s, StatusCode::OK);
            for r in body["records"].as_array().unwrap() {
                values.push(r["value"].as_str().unwrap().parse::<u32>().unwrap());
            }
        }
        values.sort();
        assert_eq!(values, (0..20).collect::<Vec<_>>());
        broker.close().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_disk_that_fills_between_partitions_is_answered_207_with_what_was_written() {
        let disk = weir_log::MemStorage::new();
        let broker = Broker::open(BrokerConfig {
            data_dir: "/data".into(),
            storage: std::sync::Arc::new(disk.clone()),
            preallocate_bytes: 0,
            ..BrokerConfig::default()
        })
        .unwrap();
        let hub = Hub::new(broker.clone(), Default::default());
        let app = router(AppState::new(broker.clone(), HttpConfig::default(), hub)).into_router();
        let (s, body) = call(&app, "POST", "/topics", r#"{"name":"t","partitions":2}"#).await;
        assert_eq!(s, StatusCode::CREATED, "{body}");
        // Room for partition 0's batch (about 1 KB), not for partition 1's as well.
        disk.set_capacity(Some(disk.used_bytes() + 1500));
        let v = "x".repeat(1000);
        let req = json!({"records": [
            {"value": v, "partition": 0},
            {"value": v, "partition": 1},
            {"value": "second for 0", "partition": 0},
        ]});
        let (s, body) = call(&app, "POST", "/topics/t/records", &req.to_string()).await;
        assert_eq!(s, StatusCode::MULTI_STATUS, "{body}");
        assert_eq!(body["error"]["code"], "storage_full", "{body}");
        let offsets = body["offsets"].as_array().unwrap();
        assert_eq!(offsets[0], json!({"partition": 0, "offset": 0}));
        assert_eq!(offsets[2], json!({"partition": 0, "offset": 1}));
        assert_eq!(offsets[1]["partition"], 1);
        assert_eq!(offsets[1]["error"]["code"], "storage_full", "{body}");
        // What it says was written is there, and nothing else.
        for (p, end) in [(0, 2), (1, 0)] {
            assert_eq!(
                broker
                    .list_offsets("t", p, weir_broker::broker::OffsetSpec::Latest)
                    .await
                    .unwrap(),
                end,
                "partition {p}"
            );
        }
        // A disk that filled before anything was written: a plain 507, nothing written.
        let (s, body) = call(&app, "POST", "/topics/t/records", &req.to_string()).await;
        assert_eq!(s, StatusCode::INSUFFICIENT_STORAGE, "{body}");
        broker.close().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_with_one_partition_over_the_limit_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (broker, app) = app(dir.path());
        let (s, body) = call(
            &app,
            "POST",
            "/topics",
            r#"{"name":"t","partitions":2,"max_batch_bytes":1024}"#,
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{body}");
        // Partition 0's batch fits, partition 1's does not: the request is refused whole.
        let big = "x".repeat(2000);
        let req = json!({"records": [
            {"value": "small", "partition": 0},
            {"value": big, "partition": 1},
        ]});
        let (s, body) = call(&app, "POST", "/topics/t/records", &req.to_string()).await;
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
        assert_eq!(body["error"]["code"], "record_too_large");
        for p in 0..2 {
            assert_eq!(
                broker
                    .list_offsets("t", p, weir_broker::broker::OffsetSpec::Latest)
                    .await
                    .unwrap(),
                0,
                "partition {p} untouched"
            );
        }
        broker.close().await.unwrap();
    }
}
