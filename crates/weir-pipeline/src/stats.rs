//! Per-component counters: kept as atomics for `GET /pipelines/NAME`, and reported through
//! the `metrics` facade as `weir_pipeline_component_*` with the pipeline and component names
//! as labels (bounded: both come from the configuration).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use metrics::Counter;
use serde::Serialize;

/// Metric: events a component received (a source: records it read, decoded or not).
pub const METRIC_RECEIVED: &str = "weir_pipeline_component_received_events_total";
/// Metric: events a component passed on (a source: read; a sink: written).
pub const METRIC_SENT: &str = "weir_pipeline_component_sent_events_total";
/// Metric: events dropped by design (filter, abort, full buffer with a drop policy).
pub const METRIC_DROPPED: &str = "weir_pipeline_component_dropped_events_total";
/// Metric: events sent to the dead-letter output.
pub const METRIC_ERRORS: &str = "weir_pipeline_component_errors_total";
/// Metric (gauge): a sink's circuit breaker, 0 closed, 1 open, 2 half-open (`weir-flow`'s
/// state codes).
pub const METRIC_BREAKER_STATE: &str = "weir_pipeline_sink_breaker_state";
/// Metric: a sink's circuit breaker changing state.
pub const METRIC_BREAKER_TRANSITIONS: &str = "weir_pipeline_sink_breaker_transitions_total";

/// Counters of one component.
#[derive(Debug)]
pub struct ComponentStats {
    /// What the component is retrying now (a sink whose writes fail for a while), and
    /// since when (ms since the epoch); cleared when it succeeds.
    pub retrying: parking_lot::Mutex<Option<(String, u64)>>,
    pub received: AtomicU64,
    pub sent: AtomicU64,
    pub dropped: AtomicU64,
    pub errors: AtomicU64,
    m_received: Counter,
    m_sent: Counter,
    m_dropped: Counter,
    m_errors: Counter,
    labels: [(&'static str, String); 2],
}

/// What [`ComponentStats`] held at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StatsSnapshot {
    pub received: u64,
    pub sent: u64,
    pub dropped: u64,
    pub errors: u64,
}

impl ComponentStats {
    pub fn new(pipeline: &str, component: &str) -> Arc<Self> {
        let labels = [
            ("pipeline", pipeline.to_string()),
            ("component", component.to_string()),
        ];
        Arc::new(Self {
            retrying: parking_lot::Mutex::new(None),
            received: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            m_received: metrics::counter!(METRIC_RECEIVED, &labels),
            m_sent: metrics::counter!(METRIC_SENT, &labels),
            m_dropped: metrics::counter!(METRIC_DROPPED, &labels),
            m_errors: metrics::counter!(METRIC_ERRORS, &labels),
            labels,
        })
    }

    /// Where a sink's circuit breaker reports its state and transitions: this component's
    /// `weir_pipeline_sink_breaker_*` metrics.
    pub fn breaker_metrics(&self) -> weir_flow::metrics::Metrics {
        Arc::new(BreakerMetrics {
            state: metrics::gauge!(METRIC_BREAKER_STATE, &self.labels),
            transitions: metrics::counter!(METRIC_BREAKER_TRANSITIONS, &self.labels),
        })
    }

    pub fn received(&self, n: u64) {
        self.received.fetch_add(n, Ordering::Relaxed);
        self.m_received.increment(n);
    }

    pub fn sent(&self, n: u64) {
        self.sent.fetch_add(n, Ordering::Relaxed);
        self.m_sent.increment(n);
    }

    pub fn dropped(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
        self.m_dropped.increment(n);
    }

    pub fn errors(&self, n: u64) {
        self.errors.fetch_add(n, Ordering::Relaxed);
        self.m_errors.increment(n);
    }

    /// Records that the component retries after `error`; true the first time (to log it).
    pub fn retry(&self, error: &str) -> bool {
        let mut r = self.retrying.lock();
        let first = r.is_none();
        let since = r
            .as_ref()
            .map(|(_, at)| *at)
            .unwrap_or_else(|| crate::event::now_ms().max(0) as u64);
        *r = Some((error.to_string(), since));
        first
    }

    /// The component's retries are over.
    pub fn recovered(&self) {
        self.retrying.lock().take();
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            received: l(&self.received),
            sent: l(&self.sent),
            dropped: l(&self.dropped),
            errors: l(&self.errors),
        }
    }
}

/// A sink's circuit breaker's metrics, under the component's labels.
#[derive(Debug)]
struct BreakerMetrics {
    state: metrics::Gauge,
    transitions: Counter,
}

impl weir_flow::metrics::FlowMetrics for BreakerMetrics {
    fn counter(&self, name: &'static str, value: u64) {
        if name == weir_flow::breaker::METRIC_TRANSITIONS {
            self.transitions.increment(value);
        }
    }

    fn gauge(&self, name: &'static str, value: f64) {
        if name == weir_flow::breaker::METRIC_STATE {
            self.state.set(value);
        }
    }
}
