//! Prometheus metrics, all declared here, named `gpupool_sidecar_<what>_<unit>`, labelled only by
//! bounded values (route template, status code, configured model name).
//!
//! HTTP metrics are recorded as requests happen. Engine metrics are read from the telemetry
//! document at scrape time, so `/metrics` and `/v1/telemetry` can never disagree. For the Gateway
//! API Inference Extension's endpoint picker, the model-server protocol's gauges are exported too:
//! queued requests, running requests and a utilisation ratio (here: device memory in use), under
//! our names and under the names the picker reads by default (`vllm:num_requests_waiting`,
//! `vllm:num_requests_running`, `vllm:gpu_cache_usage_perc`), so it routes to our pods unconfigured.

use gpupool_api::telemetry::TelemetryReport;
use prometheus_client::encoding::{text::encode, DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Labels of the HTTP request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Route template, e.g. `/v2/models/{model}/infer`.
    pub route: String,
    /// HTTP status code.
    pub code: u16,
    /// The error response's `error_type` (`none` for answers that are not errors).
    pub error: &'static str,
}

/// Labels of the request duration histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// Route template.
    pub route: String,
}

/// Labels of the segmentation stage histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    /// Configured model name.
    pub model: String,
    /// `decode` (CPU), `engine` (queue, batch, device pre- and post-processing, model) or
    /// `polygons` (CPU contours).
    pub stage: String,
}

/// The sidecar's metrics registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Family<RouteLabels, Histogram>,
    stages: Family<StageLabels, Histogram>,
    latest: Arc<Mutex<Option<TelemetryReport>>>,
    render_lock: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Declares every metric.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "gpupool_sidecar_http_requests",
            "HTTP requests answered, by route, status code and error type",
            requests.clone(),
        );
        let durations = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 14))
        });
        registry.register(
            "gpupool_sidecar_http_request_duration_seconds",
            "Time from request to response, by route",
            durations.clone(),
        );
        let stages = Family::<StageLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 16))
        });
        registry.register(
            "gpupool_sidecar_segment_stage_duration_seconds",
            "Where a segmentation request's time goes, by model and stage: decode, engine, polygons",
            stages.clone(),
        );
        let latest = Arc::new(Mutex::new(None));
        registry.register_collector(Box::new(TelemetryCollector {
            latest: latest.clone(),
        }));
        Self {
            registry,
            requests,
            durations,
            stages,
            latest,
            render_lock: Mutex::new(()),
        }
    }

    /// The registry, for parts of the process that declare their own metrics before serving.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Records one answered request (`error`: its `error_type`, if it is an error response).
    pub fn observe_request(
        &self,
        route: &str,
        code: u16,
        error: Option<&'static str>,
        elapsed: Duration,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_string(),
                code,
                error: error.unwrap_or("none"),
            })
            .inc();
        self.durations
            .get_or_create(&RouteLabels {
                route: route.to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Records the stages of one answered segmentation request, in seconds.
    pub fn observe_segment(&self, model: &str, decode: f64, engine: f64, polygons: f64) {
        for (stage, seconds) in [
            ("decode", decode),
            ("engine", engine),
            ("polygons", polygons),
        ] {
            self.stages
                .get_or_create(&StageLabels {
                    model: model.to_string(),
                    stage: stage.to_string(),
                })
                .observe(seconds);
        }
    }

    /// The exposition text, with engine metrics taken from `report`.
    pub fn render(&self, report: &TelemetryReport) -> Result<String, std::fmt::Error> {
        let _one_at_a_time = self.render_lock.lock().unwrap_or_else(|p| p.into_inner());
        *self.latest.lock().unwrap_or_else(|p| p.into_inner()) = Some(report.clone());
        let mut text = String::new();
        encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// Reads engine metrics from the telemetry document at scrape time.
#[derive(Debug)]
struct TelemetryCollector {
    latest: Arc<Mutex<Option<TelemetryReport>>>,
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: f64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

/// Emits one metric with a value per model.
fn per_model<T>(
    encoder: &mut DescriptorEncoder,
    report: &TelemetryReport,
    name: &str,
    help: &str,
    kind: MetricType,
    value: impl Fn(&gpupool_api::telemetry::ModelTelemetry) -> T,
) -> Result<(), std::fmt::Error>
where
    T: Into<f64>,
{
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    for model in &report.models {
        let labels = [("model", model.name.as_str())];
        let v: f64 = value(model).into();
        let encoder = family.encode_family(&labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(v).encode(encoder)?,
            _ => ConstGauge::new(v).encode(encoder)?,
        }
    }
    Ok(())
}

impl prometheus_client::collector::Collector for TelemetryCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let guard = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        let Some(report) = guard.as_ref() else {
            return Ok(());
        };
        let e = &mut encoder;
        use MetricType::{Counter as C, Gauge as G};
        per_model(
            e,
            report,
            "gpupool_sidecar_queue_depth",
            "Requests waiting for a batch",
            G,
            |m| m.queue_depth,
        )?;
        per_model(
            e,
            report,
            "gpupool_sidecar_in_flight_images",
            "Images in running batches",
            G,
            |m| m.in_flight,
        )?;
        per_model(
            e,
            report,
            "gpupool_sidecar_images",
            "Images answered",
            C,
            |m| m.images_total as f64,
        )?;
        per_model(
            e,
            report,
            "gpupool_sidecar_batches",
            "Batches run",
            C,
            |m| m.batches_total as f64,
        )?;
        per_model(
            e,
            report,
            "gpupool_sidecar_rejected",
            "Requests refused (queue full or memory circuit open)",
            C,
            |m| m.rejected_total as f64,
        )?;
        per_model(
            e,
            report,
            "gpupool_sidecar_oom_events",
            "CUDA out-of-memory errors recovered from",
            C,
            |m| m.oom_events_total as f64,
        )?;
        per_model(
            e,
            report,
            "gpupool_sidecar_failed_requests",
            "Requests answered with an error after they were queued (load failure, no memory in time, failed forward pass)",
            C,
            |m| m.failed_total as f64,
        )?;
        per_model(
            e,
            report,
            "gpupool_sidecar_batch_size_cap",
            "Current batch-size cap",
            G,
            |m| m.batch_cap,
        )?;
        per_model(
            e,
            report,
            "gpupool_sidecar_latency_p50_seconds",
            "Median enqueue-to-result time over the recent window",
            G,
            |m| m.latency_p50_ms / 1000.0,
        )?;
        per_model(
            e,
            report,
            "gpupool_sidecar_latency_p99_seconds",
            "99th percentile enqueue-to-result time over the recent window",
            G,
            |m| m.latency_p99_ms / 1000.0,
        )?;
        per_model(
            e,
            report,
            "gpupool_sidecar_throughput_images_per_second",
            "Images per second over the recent window",
            G,
            |m| m.images_per_second,
        )?;
        per_model(
            e,
            report,
            "gpupool_sidecar_model_ready",
            "1 when the model's requests are served (loaded, or loaded again on demand)",
            G,
            |m| u8::from(m.ready),
        )?;

        let waiting: u32 = report.models.iter().map(|m| m.queue_depth).sum();
        let running: u32 = report.models.iter().map(|m| m.in_flight).sum();
        let memory = if report.device.is_some() {
            report.memory_in_use_fraction()
        } else {
            let a = &report.allocator;
            if a.budget_bytes == 0 {
                0.0
            } else {
                a.reserved_bytes as f64 / a.budget_bytes as f64
            }
        };
        for (name, value) in [
            ("gpupool_sidecar_num_requests_waiting", f64::from(waiting)),
            ("vllm:num_requests_waiting", f64::from(waiting)),
            ("gpupool_sidecar_num_requests_running", f64::from(running)),
            ("vllm:num_requests_running", f64::from(running)),
            ("gpupool_sidecar_gpu_memory_usage_perc", memory),
            ("vllm:gpu_cache_usage_perc", memory),
        ] {
            gauge(
                e,
                name,
                "Model-server protocol gauge (Gateway API Inference Extension)",
                value,
            )?;
        }
        let a = &report.allocator;
        gauge(
            e,
            "gpupool_sidecar_allocator_allocated_bytes",
            "Bytes in live tensors",
            a.allocated_bytes as f64,
        )?;
        gauge(
            e,
            "gpupool_sidecar_allocator_reserved_bytes",
            "Bytes the caching allocator holds",
            a.reserved_bytes as f64,
        )?;
        gauge(
            e,
            "gpupool_sidecar_allocator_peak_reserved_bytes",
            "High-water mark of reserved bytes",
            a.peak_reserved_bytes as f64,
        )?;
        gauge(
            e,
            "gpupool_sidecar_memory_budget_bytes",
            "The process's memory budget",
            a.budget_bytes as f64,
        )?;
        gauge(
            e,
            "gpupool_sidecar_admitted_bytes",
            "Bytes reserved by admission for weights and running batches",
            a.admitted_bytes as f64,
        )?;
        gauge(
            e,
            "gpupool_sidecar_circuit_open",
            "1 while new work is refused for memory pressure",
            f64::from(u8::from(report.circuit_open)),
        )?;
        if let Some(d) = &report.device {
            gauge(
                e,
                "gpupool_sidecar_gpu_memory_total_bytes",
                "Device memory",
                d.total_bytes as f64,
            )?;
            gauge(
                e,
                "gpupool_sidecar_gpu_memory_used_bytes",
                "Device memory in use (all processes)",
                d.used_bytes as f64,
            )?;
            gauge(
                e,
                "gpupool_sidecar_gpu_utilization_ratio",
                "GPU busy fraction over NVML's sample period",
                f64::from(d.utilization_percent) / 100.0,
            )?;
        }
        Ok(())
    }
}
