//! The one metrics hook every primitive takes: [`FlowMetrics`]. Names follow
//! `weir_flow_<primitive>_<name>[_total]` and are `&'static str`, so no key or client id can
//! become part of a name (bounded cardinality by construction).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;

use parking_lot::Mutex;

/// Receives counters and gauges. Implement it to bridge to a metrics library; the default
/// methods do nothing.
pub trait FlowMetrics: Send + Sync + Debug {
    /// Adds `value` to the counter `name`.
    fn counter(&self, name: &'static str, value: u64) {
        let _ = (name, value);
    }

    /// Sets the gauge `name` to `value`.
    fn gauge(&self, name: &'static str, value: f64) {
        let _ = (name, value);
    }
}

/// Shared handle to a metrics sink.
pub type Metrics = Arc<dyn FlowMetrics>;

/// Discards everything; the default for every primitive.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopMetrics;

impl FlowMetrics for NoopMetrics {}

/// The no-op sink as a [`Metrics`] handle.
pub fn noop() -> Metrics {
    Arc::new(NoopMetrics)
}

/// Keeps every counter and the last value of every gauge in memory (for tests and debugging).
#[derive(Debug, Default)]
pub struct MemoryMetrics {
    counters: Mutex<BTreeMap<&'static str, u64>>,
    gauges: Mutex<BTreeMap<&'static str, f64>>,
}

impl MemoryMetrics {
    /// An empty recorder.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The counter's total so far (0 if never incremented).
    pub fn counter_value(&self, name: &str) -> u64 {
        self.counters.lock().get(name).copied().unwrap_or(0)
    }

    /// The gauge's last value, if it was ever set.
    pub fn gauge_value(&self, name: &str) -> Option<f64> {
        self.gauges.lock().get(name).copied()
    }

    /// Every name recorded so far.
    pub fn names(&self) -> Vec<&'static str> {
        let mut v: Vec<_> = self.counters.lock().keys().copied().collect();
        v.extend(self.gauges.lock().keys().copied());
        v
    }
}

impl FlowMetrics for MemoryMetrics {
    fn counter(&self, name: &'static str, value: u64) {
        *self.counters.lock().entry(name).or_insert(0) += value;
    }

    fn gauge(&self, name: &'static str, value: f64) {
        self.gauges.lock().insert(name, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_metrics_records() {
        let m = MemoryMetrics::new();
        m.counter("weir_flow_test_total", 2);
        m.counter("weir_flow_test_total", 3);
        m.gauge("weir_flow_test_gauge", 1.5);
        assert_eq!(m.counter_value("weir_flow_test_total"), 5);
        assert_eq!(m.gauge_value("weir_flow_test_gauge"), Some(1.5));
        assert_eq!(m.counter_value("missing"), 0);
        NoopMetrics.counter("x", 1);
    }
}
