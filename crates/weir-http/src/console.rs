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
/// Addresses listed by their open connections in each sample, most first.
const BUSIEST: usize = 10;

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

/// Each group's lag is sampled this often…
pub const LAG_PERIOD: Duration = Duration::from_secs(5);
/// …and kept for as long as the other samples.
const LAG_POINTS: usize = HISTORY / 5;
/// Most (group, topic) lag series kept; past it, new ones wait for old ones to go.
pub const MAX_LAG_SERIES: usize = 2_000;

/// Consumer groups' lag over time, per (group, topic): the sum over the topic's partitions
/// that the group committed or is assigned, every [`LAG_PERIOD`] for the last 15 minutes.
/// A group that is gone loses its series. At most [`MAX_LAG_SERIES`] series (16 bytes a
/// point, so at most about 6 MB), and as many groups read each time.
#[derive(Debug, Default)]
struct LagHistory {
    series: std::collections::HashMap<(String, String), VecDeque<(u64, u64)>>,
}

/// Groups (the first [`MAX_LAG_SERIES`] by name: a series is a group's topic, so no more
/// could be kept), each with its lag summed by topic.
type LagReading = Vec<(String, std::collections::BTreeMap<String, u64>)>;

fn read_lag(broker: &Broker) -> LagReading {
    broker
        .groups()
        .into_iter()
        .take(MAX_LAG_SERIES)
        .map(|group| {
            let mut by_topic = std::collections::BTreeMap::new();
            for l in broker.group_lag(&group) {
                *by_topic.entry(l.topic).or_default() += l.lag;
            }
            (group, by_topic)
        })
        .collect()
}

impl LagHistory {
    fn add(&mut self, at: u64, reading: LagReading) {
        let present: std::collections::HashSet<&str> =
            reading.iter().map(|(g, _)| g.as_str()).collect();
        self.series.retain(|(g, _), _| present.contains(g.as_str()));
        for (group, by_topic) in &reading {
            for (topic, lag) in by_topic {
                let key = (group.clone(), topic.clone());
                if !self.series.contains_key(&key) && self.series.len() >= MAX_LAG_SERIES {
                    continue;
                }
                let points = self
                    .series
                    .entry(key)
                    .or_insert_with(|| VecDeque::with_capacity(LAG_POINTS));
                if points.len() == LAG_POINTS {
                    points.pop_front();
                }
                points.push_back((at, *lag));
            }
        }
    }

    /// A group's series, by topic, for the topics `seen` lets through.
    fn of(&self, group: &str, seen: impl Fn(&str) -> bool) -> Vec<(String, Vec<(u64, u64)>)> {
        let mut out: Vec<(String, Vec<(u64, u64)>)> = self
            .series
            .iter()
            .filter(|((g, t), _)| g == group && seen(t))
            .map(|((_, t), p)| (t.clone(), p.iter().copied().collect()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

/// The samples and the feeds' limit. One per server, in [`crate::api::AppState`].
#[derive(Debug)]
pub struct Sampler {
    history: Mutex<VecDeque<Arc<str>>>,
    lag: Mutex<LagHistory>,
    /// Bumped after each sample; feeds wait on it.
    taken: watch::Sender<u64>,
    feeds: Arc<Semaphore>,
}

impl Default for Sampler {
    fn default() -> Self {
        Self {
            history: Mutex::new(VecDeque::with_capacity(HISTORY)),
            lag: Mutex::default(),
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
        let lag_every = (LAG_PERIOD.as_secs() / PERIOD.as_secs()).max(1);
        for n in 0u64.. {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            if n % lag_every == 0 {
                // Read outside the lock: a reader of the history never waits on the broker.
                let reading = read_lag(&broker);
                self.lag.lock().add(unix_ms(SystemTime::now()), reading);
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

    /// `group`'s lag over the last 15 minutes, by topic, for the topics `seen` lets through.
    pub(crate) fn lag_of(
        &self,
        group: &str,
        seen: impl Fn(&str) -> bool,
    ) -> Vec<(String, Vec<(u64, u64)>)> {
        self.lag.lock().of(group, seen)
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
        "connections": broker.admission().read(BUSIEST),
        "push": activity.push().read(),
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

/// `GET /console/me`: who the caller is and which of the console's sections she may see, so
/// that the page offers only those. Every request is still checked on its own: this only
/// spares her sections that would answer 403 or show nothing.
pub(crate) async fn me(caller: crate::api::Caller) -> Response {
    use weir_broker::access::{Operation::*, ResourceType::*};
    let a = &caller.0;
    let cluster = a.allows_cluster(Describe);
    let topics = a.allows_some(Describe, Topic);
    let body = json!({
        "principal": a.principal().to_string(),
        "checked": a.is_checked(),
        "sees": {
            "overview": cluster,
            "topics": topics,
            "messages": a.allows_some(Read, Topic),
            "groups": cluster || a.allows_some(Describe, Group),
            "flow": cluster,
            "pipelines": a.allows_some(Describe, Pipeline),
        },
        "may": {
            "create_topics": a.allows_cluster(Create) || a.allows_some(Create, Topic),
            "delete_topics": a.allows_some(Delete, Topic),
            "produce": a.allows_some(Write, Topic),
            "reset_offsets": a.allows_some(Read, Group),
            "operate_pipelines": a.allows_some(Alter, Pipeline),
        },
    });
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body.to_string(),
    )
        .into_response()
}

/// `GET /groups/{group}/lag`: the group's lag over the last 15 minutes, by topic, sampled
/// every [`LAG_PERIOD`] (topics the caller may not describe left out).
pub(crate) async fn group_lag(
    axum::extract::State(state): axum::extract::State<crate::api::AppState>,
    caller: crate::api::Caller,
    axum::extract::Path(group): axum::extract::Path<String>,
) -> Response {
    use weir_broker::access::{Operation, ResourceType};
    let seen = |t: &str| caller.0.allows(Operation::Describe, ResourceType::Topic, t);
    let topics: Vec<Value> = state
        .sampler
        .lag_of(&group, seen)
        .into_iter()
        .map(|(topic, points)| json!({"topic": topic, "points": points}))
        .collect();
    (
        [(header::CONTENT_TYPE, "application/json")],
        json!({"period_s": LAG_PERIOD.as_secs(), "topics": topics}).to_string(),
    )
        .into_response()
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
    fn lag_history_is_kept_per_group_and_topic_and_bounded() {
        let reading = |groups: &[(&str, &[(&str, u64)])]| -> LagReading {
            groups
                .iter()
                .map(|(g, ts)| {
                    let by: std::collections::BTreeMap<String, u64> =
                        ts.iter().map(|(t, l)| (t.to_string(), *l)).collect();
                    (g.to_string(), by)
                })
                .collect()
        };
        let mut h = LagHistory::default();
        for i in 0..(LAG_POINTS as u64 + 5) {
            h.add(
                i,
                reading(&[("g", &[("a", i), ("b", 1)]), ("h", &[("a", 7)])]),
            );
        }
        let g = h.of("g", |_| true);
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].0, "a");
        assert_eq!(g[0].1.len(), LAG_POINTS, "only the last 15 minutes");
        assert_eq!(g[0].1.first(), Some(&(5, 5)));
        assert_eq!(
            g[0].1.last(),
            Some(&(LAG_POINTS as u64 + 4, LAG_POINTS as u64 + 4))
        );
        assert_eq!(
            h.of("g", |t| t != "a").len(),
            1,
            "a topic not seen is left out"
        );
        // A group that is gone loses its series.
        h.add(1_000, reading(&[("g", &[("a", 0)])]));
        assert!(h.of("h", |_| true).is_empty());
        // New series wait once the cap is reached.
        let many: Vec<(String, std::collections::BTreeMap<String, u64>)> = (0..MAX_LAG_SERIES + 10)
            .map(|i| {
                (
                    format!("g{i}"),
                    [("t".to_string(), 1)].into_iter().collect(),
                )
            })
            .collect();
        h.add(2_000, many);
        assert_eq!(h.series.len(), MAX_LAG_SERIES);
    }

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
