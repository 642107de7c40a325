//! The operator's Prometheus metrics, all declared here; labels are bounded enums, never object
//! names.

use crate::error::ErrorKind;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::fmt::Write;
use std::time::Instant;

/// Labels of `gpupool_operator_reconcile_errors_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ErrorLabels {
    /// What failed (a closed set; see [`ErrorKind`]).
    pub error: ErrorKind,
}

impl EncodeLabelValue for ErrorKind {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// All metrics of the operator and the registry they are exposed from.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Reconciles started (`gpupool_operator_reconcile_total`).
    pub reconciles: Counter,
    /// Reconciles failed, by error kind (`gpupool_operator_reconcile_errors_total`).
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    /// Reconcile duration (`gpupool_operator_reconcile_duration_seconds`).
    pub reconcile_duration: Histogram,
    /// Pods whose telemetry could not be collected (`gpupool_operator_telemetry_errors_total`).
    pub telemetry_errors: Counter,
    /// 1 while this process reconciles: it holds the leader Lease, or runs without leader
    /// election (`gpupool_operator_leader`).
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let reconciles = Counter::default();
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        // 5 ms to ~20 s.
        let reconcile_duration = Histogram::new(exponential_buckets(0.005, 2.0, 13));
        let telemetry_errors = Counter::default();
        let leader = Gauge::default();
        registry.register(
            "gpupool_operator_reconcile",
            "Reconciles of InferencePools started",
            reconciles.clone(),
        );
        registry.register(
            "gpupool_operator_reconcile_errors",
            "Reconciles of InferencePools that failed, by what failed",
            reconcile_errors.clone(),
        );
        registry.register(
            "gpupool_operator_reconcile_duration_seconds",
            "Time one reconcile of an InferencePool took",
            reconcile_duration.clone(),
        );
        registry.register(
            "gpupool_operator_telemetry_errors",
            "Ready pods whose telemetry could not be collected",
            telemetry_errors.clone(),
        );
        registry.register(
            "gpupool_operator_leader",
            "1 while this process reconciles (holds the leader Lease, or runs without election)",
            leader.clone(),
        );
        Self {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            telemetry_errors,
            leader,
        }
    }

    /// Counts a reconcile and returns a timer that records its duration when dropped.
    pub fn reconcile_started(&self) -> ReconcileTimer<'_> {
        self.reconciles.inc();
        ReconcileTimer {
            histogram: &self.reconcile_duration,
            start: Instant::now(),
        }
    }

    /// Counts a failed reconcile.
    pub fn reconcile_failed(&self, kind: ErrorKind) {
        self.reconcile_errors
            .get_or_create(&ErrorLabels { error: kind })
            .inc();
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// Records a reconcile's duration when dropped (so early returns and errors count too).
#[derive(Debug)]
pub struct ReconcileTimer<'a> {
    histogram: &'a Histogram,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_names_with_bounded_labels() {
        let metrics = Metrics::new();
        drop(metrics.reconcile_started());
        metrics.reconcile_failed(ErrorKind::Infeasible);
        let text = metrics.render().expect("renders");
        assert!(
            text.contains("gpupool_operator_reconcile_total 1"),
            "{text}"
        );
        assert!(
            text.contains("gpupool_operator_reconcile_errors_total{error=\"infeasible\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("gpupool_operator_reconcile_duration_seconds_count 1"),
            "{text}"
        );
        assert!(text.contains("gpupool_operator_leader 0"), "{text}");
    }
}
