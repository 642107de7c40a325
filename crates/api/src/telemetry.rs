//! The telemetry document each sidecar serves at `/v1/telemetry` and the operator collects: the
//! facts (VRAM, queues, measured profiles) that re-planning and autoscaling are decided from.

use crate::model::Precision;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Content type of the `/metrics` pages both processes serve (OpenMetrics text, as the
/// prometheus-client encoder writes it), so operator and sidecar cannot drift apart.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `kind` of the telemetry document.
pub const TELEMETRY_KIND: &str = "SidecarTelemetry";

/// One report from one sidecar process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TelemetryReport {
    /// Always `gpupool.io/v1alpha1`.
    pub api_version: String,
    /// Always `SidecarTelemetry`.
    pub kind: String,
    /// Generation of the config the process runs.
    pub config_generation: i64,
    /// Whether every model is loaded and calibrated (the readiness probe's answer).
    pub ready: bool,
    /// Whether new work is being refused because device memory is above the reject threshold.
    pub circuit_open: bool,
    /// The GPU as NVML sees it; absent when running on the CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceTelemetry>,
    /// The libtorch caching allocator, in this process.
    pub allocator: AllocatorTelemetry,
    /// One entry per configured model.
    pub models: Vec<ModelTelemetry>,
}

impl TelemetryReport {
    /// The pod's memory pressure: the card's used fraction with its own allocator's cache
    /// counted as free ([`DeviceTelemetry::in_use_fraction`]); 0 without a device reading.
    pub fn memory_in_use_fraction(&self) -> f64 {
        self.device
            .as_ref()
            .map_or(0.0, |d| d.in_use_fraction(self.allocator.cached_bytes()))
    }
}

/// Device-wide memory and load, from NVML.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceTelemetry {
    /// Product name, e.g. "NVIDIA H200".
    pub name: String,
    /// Total device memory.
    pub total_bytes: u64,
    /// Device memory in use by all processes.
    pub used_bytes: u64,
    /// Device memory free.
    pub free_bytes: u64,
    /// GPU utilisation over the last sample period, percent.
    pub utilization_percent: u32,
    /// Device memory this process holds, when the driver reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_used_bytes: Option<u64>,
}

impl DeviceTelemetry {
    /// The fraction of the card in use when `cached_bytes` (memory this process's caching
    /// allocator holds for reuse but no tensor occupies) counts as free. Memory pressure and the
    /// circuit breaker read this: the cache serves the process's next batches, and the allocator
    /// never hands it back on its own, so the raw figure would stay at its high-water mark after
    /// every burst and keep a pool scaled out, or its breaker open, for good.
    pub fn in_use_fraction(&self, cached_bytes: u64) -> f64 {
        if self.total_bytes == 0 {
            0.0
        } else {
            self.used_bytes.saturating_sub(cached_bytes) as f64 / self.total_bytes as f64
        }
    }
}

/// The caching allocator's view of this process's memory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AllocatorTelemetry {
    /// Bytes in live tensors.
    pub allocated_bytes: u64,
    /// Bytes the allocator holds from the driver (allocated + cached).
    pub reserved_bytes: u64,
    /// High-water mark of `reserved_bytes` since start.
    pub peak_reserved_bytes: u64,
    /// The process's memory budget (admission never lets reservations pass it).
    pub budget_bytes: u64,
    /// Bytes currently reserved by admission for running batches and loaded weights.
    pub admitted_bytes: u64,
}

impl AllocatorTelemetry {
    /// Bytes the allocator holds for reuse that no live tensor occupies.
    pub fn cached_bytes(&self) -> u64 {
        self.reserved_bytes.saturating_sub(self.allocated_bytes)
    }
}

/// Life-cycle state of a model in a sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase")]
pub enum ModelState {
    /// Being loaded or calibrated.
    Loading,
    /// Loaded, calibrated and serving.
    Ready,
    /// Not loaded now (evicted to make room); loads again on the next request.
    Unloaded,
    /// Could not be loaded; see `reason`.
    Failed,
}

/// Measured cost of one (precision, batch size) on this GPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProfilePoint {
    /// Precision measured.
    pub precision: Precision,
    /// Batch size measured.
    pub batch_size: u32,
    /// Median latency of one batch, milliseconds.
    pub latency_ms: f64,
    /// Peak bytes the batch added above the weights.
    pub peak_bytes: u64,
}

impl ProfilePoint {
    /// Throughput at this point, images per second.
    pub fn images_per_second(&self) -> f64 {
        if self.latency_ms <= 0.0 {
            0.0
        } else {
            f64::from(self.batch_size) * 1000.0 / self.latency_ms
        }
    }
}

/// Counters and gauges of one model in one process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelTelemetry {
    /// Model name.
    pub name: String,
    /// Current state.
    pub state: ModelState,
    /// Whether requests for the model are served now: calibrated and serving, including while
    /// unloaded to make room or being loaded again on demand (requests wait in its queue).
    #[serde(default)]
    pub ready: bool,
    /// Why the model is not ready, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Precision it runs at (after `auto` was resolved).
    pub precision: Precision,
    /// Current batch-size cap (lowered after an out-of-memory error).
    pub batch_cap: u32,
    /// Execution slots.
    pub slots: u32,
    /// Bytes the weights take.
    pub weights_bytes: u64,
    /// Requests waiting for a batch.
    pub queue_depth: u32,
    /// Images in batches running now.
    pub in_flight: u32,
    /// Images answered since start.
    pub images_total: u64,
    /// Batches run since start.
    pub batches_total: u64,
    /// Requests refused (queue full or circuit open) since start.
    pub rejected_total: u64,
    /// CUDA out-of-memory errors recovered from since start.
    pub oom_events_total: u64,
    /// Requests answered with an error after they were queued (the model failed to load, no
    /// memory within the wait, a forward pass failed) since start.
    #[serde(default)]
    pub failed_total: u64,
    /// Median time from enqueue to result over the recent window, milliseconds.
    pub latency_p50_ms: f64,
    /// 99th percentile of the same, milliseconds.
    pub latency_p99_ms: f64,
    /// Images per second over the recent window.
    pub images_per_second: f64,
    /// Calibrated cost per (precision, batch size).
    pub profile: Vec<ProfilePoint>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allocator_cache_counts_as_free_memory() {
        let device = DeviceTelemetry {
            name: "card".into(),
            total_bytes: 100,
            used_bytes: 90,
            free_bytes: 10,
            utilization_percent: 0,
            process_used_bytes: None,
        };
        let report = TelemetryReport {
            api_version: crate::API_VERSION.into(),
            kind: TELEMETRY_KIND.into(),
            config_generation: 1,
            ready: true,
            circuit_open: false,
            device: Some(device.clone()),
            // 80 bytes held, 30 in live tensors: 50 cached after a burst.
            allocator: AllocatorTelemetry {
                allocated_bytes: 30,
                reserved_bytes: 80,
                ..AllocatorTelemetry::default()
            },
            models: Vec::new(),
        };
        assert_eq!(device.in_use_fraction(0), 0.9, "nothing cached: all of it");
        assert_eq!(report.memory_in_use_fraction(), 0.4);
        assert_eq!(device.in_use_fraction(500), 0.0, "never below zero");
        let no_device = TelemetryReport {
            device: None,
            ..report
        };
        assert_eq!(no_device.memory_in_use_fraction(), 0.0);
    }
}
