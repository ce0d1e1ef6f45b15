//! OpenTelemetry traces over OTLP/HTTP (protobuf), when configured.
//!
//! The W3C `traceparent` header of a record carries a trace from producer to consumer:
//! - `weir produce` (with `OTEL_EXPORTER_OTLP_ENDPOINT` set) opens a `weir.produce.client`
//!   span for its run and writes that span's `traceparent` into every record it sends;
//! - the server (`[tracing] otlp_endpoint`) opens a `weir.produce` span, child of the record's
//!   context, for each acknowledged batch whose first record carries one (batches without one
//!   cost nothing; the broker does not decompress batches to look);
//! - `weir consume` (with `OTEL_EXPORTER_OTLP_ENDPOINT` set) opens a `weir.consume` span, child
//!   of the record's context, for each record that carries one.
//!
//! Spans go through the SDK's batch processor: a bounded queue and a background thread, so a
//! slow or absent collector drops spans rather than slowing produce.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use anyhow::{Context as _, Result};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{Span, SpanKind, TraceContextExt, Tracer, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use weir_broker::broker::{ProduceEvent, ProduceObserver};
use weir_client::ReceivedRecord;

/// A tracer provider exporting to `endpoint` (an OTLP/HTTP base URL such as
/// `http://127.0.0.1:4318`; `/v1/traces` is appended).
pub fn provider(endpoint: &str, service: &str) -> Result<SdkTracerProvider> {
    let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let exporter = SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url)
        .build()
        .context("building the OTLP span exporter")?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(service.to_string())
                .build(),
        )
        .build())
}

/// The context a `traceparent` value names (empty when it is malformed).
pub fn context_of(traceparent: &str) -> Context {
    let mut carrier = HashMap::new();
    carrier.insert("traceparent".to_string(), traceparent.to_string());
    TraceContextPropagator::new().extract(&carrier)
}

/// The `traceparent` value of the current span of `cx`.
pub fn traceparent_of(cx: &Context) -> Option<String> {
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(cx, &mut carrier);
    carrier.remove("traceparent")
}

/// The server's produce observer: one `weir.produce` span per traced batch.
pub fn broker_observer(provider: &SdkTracerProvider) -> ProduceObserver {
    let tracer = provider.tracer("weir-broker");
    ProduceObserver(Arc::new(move |e: &ProduceEvent<'_>| {
        let Some(tp) = e.traceparent.as_deref() else {
            return;
        };
        let parent = context_of(tp);
        if !parent.span().span_context().is_valid() {
            return;
        }
        let mut span = tracer
            .span_builder("weir.produce")
            .with_kind(SpanKind::Server)
            .with_start_time(e.started)
            .with_attributes(vec![
                KeyValue::new("messaging.system", "weir"),
                KeyValue::new("messaging.operation.type", "publish"),
                KeyValue::new("messaging.destination.name", e.topic.to_string()),
                KeyValue::new(
                    "messaging.destination.partition.id",
                    e.partition.to_string(),
                ),
                KeyValue::new("weir.base_offset", e.base_offset as i64),
                KeyValue::new("weir.last_offset", e.last_offset as i64),
            ])
            .start_with_context(&tracer, &parent);
        span.end_with_timestamp(e.finished);
    }))
}

/// The command-line client's tracer, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
struct CliTracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

static CLI: OnceLock<Option<CliTracing>> = OnceLock::new();

fn cli() -> Option<&'static CliTracing> {
    CLI.get_or_init(|| {
        let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok()?;
        match provider(&endpoint, "weir-cli") {
            Ok(provider) => {
                let tracer = provider.tracer("weir-cli");
                Some(CliTracing { provider, tracer })
            }
            Err(e) => {
                eprintln!("weir: tracing disabled: {e:#}");
                None
            }
        }
    })
    .as_ref()
}

/// Starts the `weir.produce.client` span of a `weir produce` run; returns it with the
/// `traceparent` to put in every record. `None` when tracing is not configured.
pub fn start_produce(topic: &str) -> Option<(opentelemetry_sdk::trace::Span, String)> {
    let t = cli()?;
    let span = t
        .tracer
        .span_builder("weir.produce.client")
        .with_kind(SpanKind::Producer)
        .with_attributes(vec![
            KeyValue::new("messaging.system", "weir"),
            KeyValue::new("messaging.destination.name", topic.to_string()),
        ])
        .start(&t.tracer);
    let cx = Context::new().with_remote_span_context(span.span_context().clone());
    let tp = traceparent_of(&cx)?;
    Some((span, tp))
}

/// A `weir.consume` span for a record that carries a `traceparent` (no-op otherwise).
pub fn consumed(r: &ReceivedRecord) {
    let Some(t) = cli() else { return };
    let Some(tp) = r
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(b"traceparent"))
        .and_then(|(_, v)| v.as_ref())
        .and_then(|v| std::str::from_utf8(v).ok())
    else {
        return;
    };
    let parent = context_of(tp);
    if !parent.span().span_context().is_valid() {
        return;
    }
    let mut span = t
        .tracer
        .span_builder("weir.consume")
        .with_kind(SpanKind::Consumer)
        .with_attributes(vec![
            KeyValue::new("messaging.system", "weir"),
            KeyValue::new("messaging.operation.type", "receive"),
            KeyValue::new("messaging.destination.name", r.topic.to_string()),
            KeyValue::new(
                "messaging.destination.partition.id",
                r.partition.to_string(),
            ),
            KeyValue::new("weir.offset", r.offset as i64),
        ])
        .start_with_context(&t.tracer, &parent);
    span.end();
}

/// Exports what the command-line client recorded (call before exiting).
pub fn flush_cli() {
    if let Some(Some(t)) = CLI.get()
        && let Err(e) = t.provider.shutdown()
    {
        eprintln!("weir: exporting traces failed: {e}");
    }
}
