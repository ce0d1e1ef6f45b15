//! OpenTelemetry across processes: `weir produce` opens a span and puts its `traceparent` in
//! the records, the server's span for the append is its child, and so is `weir consume`'s span
//! for each record. All three export over OTLP/HTTP to a collector this test runs.

use crate::common;

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Server, cli, run};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

#[derive(Debug, Clone)]
struct Seen {
    service: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
}

/// An OTLP/HTTP trace receiver on 127.0.0.1: decodes every export into `Seen` spans.
fn collector(rt: &tokio::runtime::Runtime) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let store = seen.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let store = store.clone();
            async move {
                let req = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                let mut out = store.lock().unwrap();
                for rs in req.resource_spans {
                    let service = rs
                        .resource
                        .iter()
                        .flat_map(|r| &r.attributes)
                        .find(|a| a.key == "service.name")
                        .and_then(|a| a.value.as_ref())
                        .map(|v| format!("{:?}", v.value))
                        .unwrap_or_default();
                    for ss in rs.scope_spans {
                        for s in ss.spans {
                            out.push(Seen {
                                service: service.clone(),
                                name: s.name,
                                trace_id: s.trace_id,
                                span_id: s.span_id,
                                parent_span_id: s.parent_span_id,
                            });
                        }
                    }
                }
                axum::http::StatusCode::OK
            }
        }),
    );
    rt.spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), seen)
}

fn weir(args: &[&str], addr: &str, otlp: &str, stdin: &str) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
    cmd.args(args)
        .env("WEIR_ADDR", addr)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", otlp);
    run(cmd, stdin)
}

#[test]
fn a_traceparent_links_producer_broker_and_consumer_spans() {
    spans_link_up("none");
}

/// The broker finds the trace context in a compressed batch too (it decompresses it once, to
/// check its records).
#[test]
fn a_traceparent_in_a_compressed_batch_links_the_spans() {
    spans_link_up("zstd");
}

fn spans_link_up(compression: &str) {
    let rt = common::rt();
    let (otlp, seen) = collector(&rt);
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            ("WEIR_TRACING__OTLP_ENDPOINT", &otlp),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    let (ok, _, err) = cli(&server.addr, &["topic", "create", "traced"], "");
    assert!(ok, "{err}");
    let (ok, _, err) = weir(
        &["produce", "traced", "--compression", compression],
        &server.addr,
        &otlp,
        "hello\nworld\n",
    );
    assert!(ok, "{err}");
    let (ok, out, err) = weir(
        &[
            "consume",
            "traced",
            "--from",
            "beginning",
            "--output",
            "json",
        ],
        &server.addr,
        &otlp,
        "",
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("traceparent"),
        "records carry the header: {out}"
    );

    let deadline = Instant::now() + Duration::from_secs(15);
    let spans = loop {
        let spans = seen.lock().unwrap().clone();
        let has = |n: &str| spans.iter().any(|s| s.name == n);
        if has("weir.produce.client") && has("weir.produce") && has("weir.consume") {
            break spans;
        }
        assert!(Instant::now() < deadline, "spans seen: {spans:#?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let producer = spans
        .iter()
        .find(|s| s.name == "weir.produce.client")
        .unwrap();
    assert!(producer.service.contains("weir-cli"), "{producer:?}");
    let broker: Vec<&Seen> = spans.iter().filter(|s| s.name == "weir.produce").collect();
    let consumer: Vec<&Seen> = spans.iter().filter(|s| s.name == "weir.consume").collect();
    assert_eq!(
        consumer.len(),
        2,
        "one consume span per record: {consumer:#?}"
    );
    for s in broker.iter().chain(&consumer) {
        assert_eq!(s.trace_id, producer.trace_id, "same trace: {s:?}");
        assert_eq!(
            s.parent_span_id, producer.span_id,
            "child of the producer: {s:?}"
        );
    }
    assert!(
        broker.iter().all(|s| s.service.contains("\"weir\"")),
        "{broker:?}"
    );
    server.stop();
}
