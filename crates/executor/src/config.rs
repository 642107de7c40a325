//! What the engine is configured with: the operator's [`SidecarConfig`] (models, budget, slots,
//! thresholds) plus process-local [`EngineOptions`] (device, calibration effort, sampling), and the
//! per-model settings derived from them that may change live.

use crate::cuda::ComputeDevice;
use crate::nvml::DeviceProbe;
use gpupool_api::sidecar::SidecarModelConfig;
use gpupool_api::Precision;
use std::sync::Arc;
use std::time::Duration;

/// Which device the engine runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// CUDA device 0 when libtorch sees a GPU, else the CPU.
    #[default]
    Auto,
    /// The CPU, even when a GPU is present.
    Cpu,
    /// This CUDA device; starting fails when it is not there.
    Cuda(usize),
}

/// How much effort start-up calibration spends per (precision, batch size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CalibrationOptions {
    /// Untimed runs before measuring (cuDNN autotuning, lazy initialisation).
    pub warmup: u32,
    /// Timed runs; the median is recorded.
    pub iterations: u32,
}

impl Default for CalibrationOptions {
    fn default() -> Self {
        Self {
            warmup: 2,
            iterations: 5,
        }
    }
}

/// Process-local options that the sidecar's config document does not carry.
#[derive(Clone)]
pub struct EngineOptions {
    /// Device to run on.
    pub device: DeviceChoice,
    /// Calibration effort.
    pub calibration: CalibrationOptions,
    /// Peak bytes one image is assumed to add before calibration has measured it (and on the CPU,
    /// where there are no allocator statistics). `None`: 64 × the image's input bytes.
    pub activation_bytes_per_image: Option<u64>,
    /// Extra fraction added to measured peaks when admitting a batch (allocator rounding, cuDNN
    /// workspace variation between runs).
    pub peak_headroom: f64,
    /// How often device memory is sampled for the circuit breaker and telemetry.
    pub sample_interval: Duration,
    /// `Retry-After` returned while the circuit is open.
    pub retry_after: Duration,
    /// Longest a batch waits for memory (or a model load) before its requests fail with 503.
    pub memory_wait: Duration,
    /// Window over which latency percentiles and throughput are computed.
    pub latency_window: Duration,
    /// Enable cuDNN benchmark mode (autotuning per shape; shapes are fixed per model and batch).
    pub cudnn_benchmark: bool,
    /// Run TorchScript with libtorch's default profiling executor, which compiles fused kernels
    /// per input shape (process-wide). Off by default: the legacy executor without fusion is used
    /// instead. On the H200, profiling + fusion cost ~2 s on the first call of every new batch
    /// shape (CBAM-ResUNet under autocast) for no steady-state gain over the legacy executor
    /// (9–10 ms both); with dynamic batching those first calls land on requests.
    pub torchscript_profiling: bool,
    /// Before a slot serves, run every batch size up to the cap once on its thread (cuDNN's
    /// autotuning is per thread), so no request pays autotuning for a new shape.
    pub warm_all_batch_sizes: bool,
    /// Threads of libtorch's intra-op CPU pool (process-wide). `None`: one on a GPU, whose model
    /// work is all on the device (a pool of one spinning thread per core competes with the
    /// decoding and contour tracing beside it: on the H200 host `OMP_NUM_THREADS=1` made HTTP
    /// 8–15 % faster, docs/benchmarks.md; the operator's pods set that variable, which OpenMP
    /// reads before this can apply), and libtorch's default (one per core) on the CPU. The setting
    /// stays for the process: a later engine that leaves it `None` on the CPU keeps what an
    /// earlier one set.
    pub cpu_threads: Option<usize>,
    /// Source of device memory readings; `None` uses NVML when it is available.
    pub probe: Option<Arc<dyn DeviceProbe>>,
}

impl EngineOptions {
    /// The intra-op thread count to set on `device`, or `None` to leave libtorch's default.
    pub(crate) fn cpu_threads_for(&self, device: ComputeDevice) -> Option<usize> {
        match self.cpu_threads {
            Some(n) => Some(n.max(1)),
            None if device.is_cuda() => Some(1),
            None => None,
        }
    }
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            device: DeviceChoice::Auto,
            calibration: CalibrationOptions::default(),
            activation_bytes_per_image: None,
            peak_headroom: 0.10,
            sample_interval: Duration::from_millis(250),
            retry_after: Duration::from_secs(1),
            memory_wait: Duration::from_secs(30),
            latency_window: Duration::from_secs(30),
            cudnn_benchmark: true,
            torchscript_profiling: false,
            warm_all_batch_sizes: true,
            cpu_threads: None,
            probe: None,
        }
    }
}

impl std::fmt::Debug for EngineOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineOptions")
            .field("device", &self.device)
            .field("calibration", &self.calibration)
            .field(
                "activation_bytes_per_image",
                &self.activation_bytes_per_image,
            )
            .field("peak_headroom", &self.peak_headroom)
            .field("sample_interval", &self.sample_interval)
            .field("retry_after", &self.retry_after)
            .field("memory_wait", &self.memory_wait)
            .field("latency_window", &self.latency_window)
            .field("cudnn_benchmark", &self.cudnn_benchmark)
            .field("torchscript_profiling", &self.torchscript_profiling)
            .field("warm_all_batch_sizes", &self.warm_all_batch_sizes)
            .field("cpu_threads", &self.cpu_threads)
            .field("probe", &self.probe.is_some())
            .finish()
    }
}

/// The settings of one model that `apply` may change while it serves.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LiveSettings {
    pub precision: Precision,
    pub max_batch: usize,
    pub slots: usize,
    pub max_queue_delay: Duration,
    pub resident: bool,
}

impl LiveSettings {
    pub fn from_config(m: &SidecarModelConfig) -> Self {
        Self {
            precision: m.precision,
            max_batch: usize::try_from(m.max_batch).unwrap_or(usize::MAX).max(1),
            slots: usize::try_from(m.slots).unwrap_or(1).max(1),
            max_queue_delay: Duration::from_millis(u64::from(m.max_queue_delay_ms)),
            resident: m.resident,
        }
    }
}

/// `file://` URIs and plain paths both name a local file.
pub(crate) fn local_path(uri: &str) -> &str {
    uri.strip_prefix("file://").unwrap_or(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_threads_default_to_one_on_a_gpu_and_are_left_alone_on_the_cpu() {
        let default = EngineOptions::default();
        assert_eq!(default.cpu_threads_for(ComputeDevice::Cuda(0)), Some(1));
        assert_eq!(default.cpu_threads_for(ComputeDevice::Cpu), None);
        for (asked, set) in [(4, 4), (0, 1)] {
            let options = EngineOptions {
                cpu_threads: Some(asked),
                ..EngineOptions::default()
            };
            assert_eq!(options.cpu_threads_for(ComputeDevice::Cuda(0)), Some(set));
            assert_eq!(options.cpu_threads_for(ComputeDevice::Cpu), Some(set));
        }
    }

    #[test]
    fn file_uris_become_paths() {
        assert_eq!(local_path("file:///models/a.pt"), "/models/a.pt");
        assert_eq!(local_path("/models/a.pt"), "/models/a.pt");
    }
}
