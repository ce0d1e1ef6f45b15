//! Prometheus metrics: the process-wide recorder the crates report to (through the `metrics`
//! facade), and the text the `/metrics` endpoint serves.
//!
//! Naming: `weir_<subsystem>_<name>_<unit>[_total]`. Labels are bounded: API names, front
//! doors, policies; per-topic and per-group series are computed when scraped, from the
//! broker's state, and capped ([`MAX_TOPIC_SERIES`], [`MAX_GROUP_SERIES`]).

use std::fmt::Write;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use weir_broker::Broker;

/// Most topics given their own series; the rest are summed into `topic="_other"`.
pub const MAX_TOPIC_SERIES: usize = 1000;
/// Most consumer groups given a lag series; the rest are summed into `group="_other"`.
pub const MAX_GROUP_SERIES: usize = 1000;

/// Latency buckets in seconds: 50 µs to 5 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the recorder (once per process) and describes the metrics recorded elsewhere.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .expect("buckets are not empty")
                .build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
            }
            describe();
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "weir_broker_produce_batches_total",
        "Record batches appended to partition logs."
    );
    describe_counter!(
        "weir_broker_produce_records_total",
        "Records appended to partition logs."
    );
    describe_counter!(
        "weir_broker_produce_bytes_total",
        Unit::Bytes,
        "Bytes of record batches appended."
    );
    describe_histogram!(
        "weir_broker_produce_duration_seconds",
        Unit::Seconds,
        "Time from a produce reaching the broker core to its acknowledgement (append, and sync where the topic's durability asks for it)."
    );
    describe_counter!(
        "weir_broker_fetch_reads_total",
        "Partition reads answered (one per partition per fetch)."
    );
    describe_counter!(
        "weir_broker_fetch_bytes_total",
        Unit::Bytes,
        "Bytes of record batches returned by fetches."
    );
    describe_counter!(
        "weir_native_requests_total",
        "Native-protocol requests received, by API."
    );
    describe_gauge!(
        "weir_native_connections",
        "Open native-protocol connections."
    );
    describe_counter!(
        "weir_native_connections_refused_total",
        "Native-protocol connections refused at the connection limit."
    );
    describe_counter!(
        "weir_native_busy_polls_total",
        "Busy-polling windows after a response (native.busy_poll_us), by outcome: the next \
         request came within the window, or the window ran out or was cut short."
    );
    describe_counter!(
        "weir_kafka_requests_total",
        "Kafka-protocol requests received, by API."
    );
    describe_gauge!("weir_kafka_connections", "Open Kafka-protocol connections.");
    describe_counter!(
        "weir_kafka_refused_requests_total",
        "Kafka-protocol requests refused before they were handled (the connection closed), by \
         reason: unknown_api, unsupported_version, malformed, unauthenticated."
    );
    describe_counter!(
        "weir_kafka_connections_refused_total",
        "Kafka-protocol connections refused at the connection limit (kafka.max_connections)."
    );
    describe_counter!(
        "weir_auth_attempts_total",
        "Authentications, by door (kafka, native, http), mechanism (PLAIN, SCRAM-SHA-256, \
         SCRAM-SHA-512, token, jwt, mtls, other) and result (ok, failed, malformed, limited)."
    );
    describe_counter!(
        weir_broker::access::METRIC_REFUSALS,
        "Requests the access control lists refused, by resource type (topic, group, cluster, \
         pipeline); a resource left out of a listing counts too."
    );
    {
        use weir_pipeline::stats as p;
        describe_counter!(
            p::METRIC_RECEIVED,
            "Events a pipeline component received (a source: records it read), by pipeline \
             and component."
        );
        describe_counter!(
            p::METRIC_SENT,
            "Events a pipeline component passed on (a sink: wrote), by pipeline and component."
        );
        describe_counter!(
            p::METRIC_DROPPED,
            "Events a pipeline component dropped by design (a filter, a sample, a full buffer \
             with a drop policy), by pipeline and component."
        );
        describe_counter!(
            p::METRIC_ERRORS,
            "Events a pipeline component sent to the dead-letter output, by pipeline and \
             component."
        );
        describe_gauge!(
            p::METRIC_BREAKER_STATE,
            "A pipeline sink's circuit breaker: 0 closed, 1 open (writes held back after \
             repeated failures), 2 half-open (one write let through to probe)."
        );
        describe_counter!(
            p::METRIC_BREAKER_TRANSITIONS,
            "State changes of a pipeline sink's circuit breaker."
        );
    }
    for door in ["native", "kafka", "http"] {
        describe_counter!(
            format!("weir_{door}_tls_handshake_failures_total"),
            "TLS handshakes that failed or timed out on the door's TLS listener."
        );
    }
    describe_gauge!(
        "weir_http_connections",
        "Open HTTP connections (a WebSocket connection until its upgrade)."
    );
    describe_counter!(
        "weir_http_connections_refused_total",
        "HTTP connections refused at the connection limit (http.max_connections)."
    );
}

/// The metrics text: everything recorded, then the broker's state as gauges.
pub fn render(handle: &PrometheusHandle, broker: &Broker) -> String {
    let mut out = handle.render();
    render_broker(&mut out, broker);
    out
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn render_broker(out: &mut String, broker: &Broker) {
    let topics = broker.topics();
    let mut sizes: Vec<(String, u64, u64, usize)> = Vec::new();
    let mut other = (0u64, 0u64, 0usize);
    for (i, t) in topics.iter().enumerate() {
        let size: u64 = t.partitions.iter().map(|p| p.size_bytes).sum();
        let records: u64 = t
            .partitions
            .iter()
            .map(|p| p.high_watermark.saturating_sub(p.log_start_offset))
            .sum();
        if i < MAX_TOPIC_SERIES {
            sizes.push((escape(&t.name), size, records, t.partitions.len()));
        } else {
            other.0 += size;
            other.1 += records;
            other.2 += t.partitions.len();
        }
    }
    if topics.len() > MAX_TOPIC_SERIES {
        sizes.push(("_other".into(), other.0, other.1, other.2));
    }
    let _ = writeln!(out, "# HELP weir_broker_topics Topics.");
    let _ = writeln!(out, "# TYPE weir_broker_topics gauge");
    let _ = writeln!(out, "weir_broker_topics {}", topics.len());
    let families = [
        (
            "weir_log_size_bytes",
            "Bytes of a topic's partition logs on disk.",
        ),
        (
            "weir_log_records",
            "Records retained in a topic's partitions (high watermark minus log start).",
        ),
        ("weir_topic_partitions", "Partitions of a topic."),
    ];
    for (k, (name, help)) in families.iter().enumerate() {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for (topic, size, records, parts) in &sizes {
            let v = match k {
                0 => *size,
                1 => *records,
                _ => *parts as u64,
            };
            let _ = writeln!(out, "{name}{{topic=\"{topic}\"}} {v}");
        }
    }
    let _ = writeln!(
        out,
        "# HELP weir_group_lag_records Records between a consumer group's committed offsets and the high watermarks, summed over its partitions."
    );
    let _ = writeln!(out, "# TYPE weir_group_lag_records gauge");
    let groups = broker.groups();
    let mut other_lag = 0u64;
    for (i, g) in groups.iter().enumerate() {
        let lag: u64 = broker.group_lag(g).iter().map(|l| l.lag).sum();
        if i < MAX_GROUP_SERIES {
            let _ = writeln!(
                out,
                "weir_group_lag_records{{group=\"{}\"}} {lag}",
                escape(g)
            );
        } else {
            other_lag += lag;
        }
    }
    if groups.len() > MAX_GROUP_SERIES {
        let _ = writeln!(
            out,
            "weir_group_lag_records{{group=\"_other\"}} {other_lag}"
        );
    }
}
