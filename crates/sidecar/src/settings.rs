//! Command-line settings, parsed and checked before any port is bound or model loaded.

use crate::http::HttpLimits;
use crate::imaging::DecodeLimits;
use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Which device runs the models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceChoice {
    /// The GPU when one is visible, else the CPU.
    Auto,
    /// The first CUDA device; fail if there is none.
    Cuda,
    /// The CPU (tests, development).
    Cpu,
}

/// `gpupool-sidecar`: serves a pool's models over HTTP on one GPU.
#[derive(Debug, Clone, Parser)]
#[command(version, about)]
pub struct Settings {
    /// The sidecar config document (mounted from the pool's ConfigMap); re-read when it changes.
    #[arg(long, env = "GPUPOOL_CONFIG")]
    pub config: PathBuf,
    /// Address to serve on.
    #[arg(long, env = "GPUPOOL_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Device to run on.
    #[arg(long, env = "GPUPOOL_DEVICE", value_enum, default_value = "auto")]
    pub device: DeviceChoice,
    /// Largest request body, bytes.
    #[arg(long, env = "GPUPOOL_MAX_BODY_BYTES", default_value_t = 64 << 20)]
    pub max_body_bytes: usize,
    /// Largest image accepted, pixels (checked from the header, before decoding).
    #[arg(long, env = "GPUPOOL_MAX_PIXELS", default_value_t = DecodeLimits::DEFAULT_MAX_PIXELS)]
    pub max_pixels: u64,
    /// Host memory all images in flight may hold together, bytes: file, decoded pixels, upload
    /// copies and post-processing buffers, reserved from each file's header before decoding.
    /// When it is spent further images wait; one needing more than all of it gets 413. Default:
    /// half of `--memory-limit-bytes` when that is known, else 4 GiB.
    #[arg(long, env = "GPUPOOL_MAX_IMAGE_MEMORY_BYTES", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_image_memory_bytes: Option<u64>,
    /// The container's memory limit, bytes (the operator's pods pass it through the downward
    /// API): the default image-memory budget is half of it.
    #[arg(long, env = "GPUPOOL_MEMORY_LIMIT_BYTES")]
    pub memory_limit_bytes: Option<u64>,
    /// Requests processed at once before new ones get 429.
    #[arg(long, env = "GPUPOOL_MAX_IN_FLIGHT", default_value_t = 256)]
    pub max_in_flight: usize,
    /// How often the config file is checked for changes, milliseconds.
    #[arg(long, env = "GPUPOOL_RELOAD_INTERVAL_MS", default_value_t = 1000)]
    pub reload_interval_ms: u64,
    /// Longest the drain after a termination signal may take, seconds, counted from when new
    /// work is refused: in-flight HTTP requests, then what the engine still holds.
    #[arg(long, env = "GPUPOOL_DRAIN_SECONDS", default_value_t = 25)]
    pub drain_seconds: u64,
    /// After SIGTERM, how long readiness is off before new work is refused (endpoint propagation).
    #[arg(long, env = "GPUPOOL_SHUTDOWN_SETTLE_MS", default_value_t = 0)]
    pub shutdown_settle_ms: u64,
    /// Calibration iterations per (precision, batch size) at start-up.
    #[arg(long, env = "GPUPOOL_CALIBRATION_ITERS", default_value_t = 3)]
    pub calibration_iters: u32,
    /// Threads of libtorch's CPU pool. Default: one on a GPU (the models run on the device, and
    /// an idle pool spinning on every core slows the decoding and tracing beside it), libtorch's
    /// own default on the CPU (which `OMP_NUM_THREADS`, set to 1 on the operator's pods, caps).
    #[arg(long, env = "GPUPOOL_TORCH_CPU_THREADS", value_parser = clap::value_parser!(u32).range(1..))]
    pub torch_cpu_threads: Option<u32>,
    /// Log as JSON lines (for log collectors) instead of text.
    #[arg(long, env = "GPUPOOL_LOG_JSON", default_value_t = false)]
    pub log_json: bool,
    /// Exit when the process with this PID is gone: for a supervisor that runs the sidecar as its
    /// child outside Kubernetes (a test harness, a local run), so an orphan never keeps the GPU.
    #[arg(long, env = "GPUPOOL_PARENT_PID")]
    pub parent_pid: Option<u32>,
}

impl Settings {
    /// The image-memory budget when neither it nor the memory limit is given.
    pub const DEFAULT_IMAGE_MEMORY_BYTES: u64 = 4 << 30;

    /// Limits at the HTTP door.
    pub fn http_limits(&self) -> HttpLimits {
        HttpLimits {
            max_body_bytes: self.max_body_bytes,
            max_in_flight: self.max_in_flight,
        }
    }

    /// Limits on decoding.
    pub fn decode_limits(&self) -> DecodeLimits {
        DecodeLimits {
            max_pixels: self.max_pixels,
            max_alloc_bytes: self
                .max_pixels
                .saturating_mul(crate::imaging::ImageHeader::WIDEST_BYTES_PER_PIXEL),
        }
    }

    /// The host-memory budget for images in flight: `--max-image-memory-bytes`, else half the
    /// container's memory limit, else [`Self::DEFAULT_IMAGE_MEMORY_BYTES`].
    pub fn image_memory_bytes(&self) -> u64 {
        self.max_image_memory_bytes
            .or(self.memory_limit_bytes.map(|limit| limit / 2))
            .unwrap_or(Self::DEFAULT_IMAGE_MEMORY_BYTES)
    }

    /// Interval between config checks.
    pub fn reload_interval(&self) -> Duration {
        Duration::from_millis(self.reload_interval_ms.max(50))
    }

    /// Drain deadline on shutdown.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_seconds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Settings, clap::Error> {
        Settings::try_parse_from(["gpupool-sidecar", "--config", "c.yaml"].iter().chain(args))
    }

    #[test]
    fn image_memory_is_the_flag_else_half_the_limit_else_the_default() {
        let budget = |args: &[&str]| parse(args).map(|s| s.image_memory_bytes()).ok();
        assert_eq!(budget(&[]), Some(Settings::DEFAULT_IMAGE_MEMORY_BYTES));
        assert_eq!(budget(&["--memory-limit-bytes", "8000"]), Some(4000));
        assert_eq!(
            budget(&[
                "--memory-limit-bytes",
                "8000",
                "--max-image-memory-bytes",
                "100"
            ]),
            Some(100)
        );
        assert!(
            parse(&["--max-image-memory-bytes", "0"]).is_err(),
            "an empty budget would refuse every image"
        );
    }
}
