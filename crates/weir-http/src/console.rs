//! The web console: pages served from files embedded in the binary (`console/` beside this
//! crate's sources: plain HTML, CSS and ES modules, no build step), and one live feed.
//!
//! The live feed (`GET /console/live`, Server-Sent Events) is fed by one [`Sampler`] task per
//! server. Once a second it reads the server's own counters ([`weir_broker::activity`], the
//! WebSocket hub's, the quotas', the produce memory budget, the data directory's disk) into
//! one JSON sample and keeps the last [`HISTORY`] of them. A console that connects gets that
//! history first, then each new sample as it is taken: every console shares the one sample,
//! so a console open costs one small write a second and nothing on the data path. At most
//! [`MAX_FEEDS`] feeds are open at once.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};
use weir_broker::Broker;
use weir_broker::activity::Door;

use crate::error::{ApiError, ErrorCode};
use crate::ws::hub::Hub;

/// Samples kept: 15 minutes at one a second.
pub const HISTORY: usize = 900;
/// Live feeds open at once; more are answered 503.
pub const MAX_FEEDS: usize = 32;
const PERIOD: Duration = Duration::from_secs(1);

/// The console's files, by name under `/console/assets/`: content type and bytes.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../console/app.js"),
    ),
    (
        "chart.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../console/chart.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("../console/style.css"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_bytes!("../console/favicon.svg"),
    ),
];
const INDEX: &[u8] = include_bytes!("../console/index.html");

/// Nothing from elsewhere: no CDN, no inline script, no framing by other sites.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// The samples and the feeds' limit. One per server, in [`crate::api::AppState`].
#[derive(Debug)]
pub struct Sampler {
    history: Mutex<VecDeque<Arc<str>>>,
    /// Bumped after each sample; feeds wait on it.
    taken: watch::Sender<u64>,
    feeds: Arc<Semaphore>,
}

impl Default for Sampler {
    fn default() -> Self {
        Self {
            history: Mutex::new(VecDeque::with_capacity(HISTORY)),
            taken: watch::Sender::new(0),
            feeds: Arc::new(Semaphore::new(MAX_FEEDS)),
        }
    }
}

impl Sampler {
    /// Takes a sample every second until `stop` is cancelled. Run it as a task.
    pub async fn run(
        self: Arc<Self>,
        broker: Broker,
        hub: Arc<Hub>,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let mut tick = tokio::time::interval(PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let sample: Arc<str> = sample(&broker, &hub).to_string().into();
            {
                let mut h = self.history.lock();
                if h.len() == HISTORY {
                    h.pop_front();
                }
                h.push_back(sample);
            }
            self.taken.send_modify(|n| *n += 1);
        }
    }

    fn history(&self) -> Vec<Arc<str>> {
        self.history.lock().iter().cloned().collect()
    }

    fn latest(&self) -> Option<Arc<str>> {
        self.history.lock().back().cloned()
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One reading of the server's counters. Counters are totals since the server started (the
/// console turns them into rates); gauges are as they are now.
fn sample(broker: &Broker, hub: &Hub) -> Value {
    let activity = broker.activity();
    let doors: serde_json::Map<String, Value> = Door::ALL
        .iter()
        .map(|d| (d.name().to_string(), json!(activity.door(*d).read())))
        .collect();
    let ws = hub.stats.snapshot();
    let topics = broker.topics();
    let partitions: usize = topics.iter().map(|t| t.partitions.len()).sum();
    let log_bytes: u64 = topics
        .iter()
        .flat_map(|t| t.partitions.iter())
        .map(|p| p.size_bytes)
        .sum();
    let (free, total) = disk(&broker.config().data_dir);
    let memory = broker.memory();
    json!({
        "t": unix_ms(SystemTime::now()),
        "uptime_s": activity.uptime().as_secs(),
        "doors": doors,
        "ws": {
            "connections": ws.connections_open,
            "subscriptions": ws.subscriptions_open,
            "records_sent": ws.records_sent,
            "dropped": ws.dropped_oldest + ws.conflated,
            "slow_disconnects": ws.disconnected_slow,
        },
        "topics": topics.len(),
        "partitions": partitions,
        "disk": {"log_bytes": log_bytes, "free_bytes": free, "total_bytes": total},
        "throttled": broker.quotas().throttled_total(),
        "throttled_clients": broker.quotas().recently_throttled(Duration::from_secs(60), 20),
        "memory": {
            "produce_in_use": memory.total().saturating_sub(memory.available()),
            "produce_budget": memory.total(),
        },
    })
}

/// Free and total bytes of the filesystem holding `dir`; `None` when it cannot be read.
fn disk(dir: &std::path::Path) -> (Option<u64>, Option<u64>) {
    match rustix::fs::statvfs(dir) {
        Ok(s) => (
            Some(s.f_bavail.saturating_mul(s.f_frsize)),
            Some(s.f_blocks.saturating_mul(s.f_frsize)),
        ),
        Err(_) => (None, None),
    }
}

/// What does not change while the server runs: sent first on every feed.
fn hello(broker: &Broker) -> Value {
    let c = broker.config();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "started_at": unix_ms(broker.activity().started_at()),
        "data_dir": c.data_dir.display().to_string(),
        "authentication": broker.auth().is_some(),
        "quotas": broker.quotas().enabled(),
        "auto_create_topics": c.auto_create_topics,
        "default_topic": c.default_topic,
        "history_s": HISTORY,
        "limits": {
            "quota_default": quota(&broker.quotas().config().default),
            "quota_clients": broker.quotas().config().clients.len(),
            "max_connections_per_ip": c.max_connections_per_ip,
            "connection_rate_per_ip": c.connection_rate_per_ip,
            "produce_memory_bytes": c.produce_memory_bytes,
        },
    })
}

fn quota(q: &weir_broker::flow::Quota) -> Value {
    json!({
        "produce_bytes_per_sec": q.produce_bytes_per_sec,
        "fetch_bytes_per_sec": q.fetch_bytes_per_sec,
        "requests_per_sec": q.requests_per_sec,
    })
}

/// `GET /console/live`: a `hello` event, a `history` event (an array of samples, oldest
/// first), then a `sample` event each second, until the client leaves or the server stops.
pub(crate) async fn live(
    axum::extract::State(state): axum::extract::State<crate::api::AppState>,
) -> Response {
    let Ok(permit) = state.sampler.feeds.clone().try_acquire_owned() else {
        return ApiError::new(
            ErrorCode::TooManyConnections,
            format!("{MAX_FEEDS} console feeds are open already"),
        )
        .into_response();
    };
    let sampler = state.sampler.clone();
    let stop = state.shutdown.clone();
    let mut taken = sampler.taken.subscribe();
    taken.mark_unchanged();
    let history = sampler.history();
    let first = [
        Event::default()
            .event("hello")
            .data(hello(&state.broker).to_string()),
        Event::default()
            .event("history")
            .data(format!("[{}]", history.join(","))),
    ];
    let next = futures::stream::unfold(
        (taken, sampler, stop, permit),
        |(mut taken, sampler, stop, permit)| async move {
            tokio::select! {
                _ = stop.cancelled() => None,
                r = taken.changed() => {
                    r.ok()?;
                    let s = sampler.latest()?;
                    let e = Event::default().event("sample").data(&*s);
                    Some((Ok::<_, std::convert::Infallible>(e), (taken, sampler, stop, permit)))
                }
            }
        },
    );
    let stream = futures::StreamExt::chain(
        futures::stream::iter(first.map(Ok::<_, std::convert::Infallible>)),
        next,
    );
    let mut r = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, "no-store".parse().expect("valid"));
    r
}

/// `GET /`: to the console.
pub(crate) async fn root() -> Response {
    (
        StatusCode::TEMPORARY_REDIRECT,
        [(header::LOCATION, "/console/")],
    )
        .into_response()
}

/// `GET /console/`: the console's one page (each view is a `#` route inside it).
pub(crate) async fn index() -> Response {
    file("text/html; charset=utf-8", INDEX)
}

/// `GET /console/assets/{file}`.
pub(crate) async fn asset(
    p: Result<axum::extract::Path<String>, axum::extract::rejection::PathRejection>,
) -> Response {
    let name = match p {
        Ok(axum::extract::Path(n)) => n,
        Err(_) => {
            return ApiError::new(ErrorCode::NotFound, "no such console file").into_response();
        }
    };
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, kind, bytes)) => file(kind, bytes),
        None => {
            ApiError::new(ErrorCode::NotFound, format!("no console file '{name}'")).into_response()
        }
    }
}

fn file(kind: &'static str, bytes: &'static [u8]) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, kind),
            // The files change with the binary: always revalidate (cheap on loopback, and a
            // new version is never mixed with an old one).
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        bytes,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_the_page_names_is_served() {
        let index = std::str::from_utf8(INDEX).unwrap();
        let app = std::str::from_utf8(ASSETS[0].2).unwrap();
        for (name, _, bytes) in ASSETS {
            assert!(!bytes.is_empty(), "{name} is empty");
        }
        // Every `assets/NAME` the page or the app refers to is one of ASSETS.
        for text in [index, app] {
            for (i, _) in text.match_indices("assets/") {
                let rest = &text[i + "assets/".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '-')
                    .collect();
                assert!(
                    ASSETS.iter().any(|(n, _, _)| *n == name),
                    "assets/{name} is referred to but not embedded"
                );
            }
        }
    }
}
