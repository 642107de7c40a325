//! Device memory readings behind a small trait: NVML (through nvml-wrapper) on a GPU machine, a
//! settable probe in tests. The circuit breaker and telemetry only see [`DeviceProbe`].

use gpupool_api::telemetry::DeviceTelemetry;
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::Nvml;
use parking_lot::Mutex;

/// A source of device memory and load readings.
pub trait DeviceProbe: Send + Sync {
    /// The device now; `None` when it cannot be read (no GPU, no driver).
    fn sample(&self) -> Option<DeviceTelemetry>;
}

/// Reads one GPU through NVML.
pub struct NvmlProbe {
    nvml: Nvml,
    /// How to find the device: by index or by UUID (when `CUDA_VISIBLE_DEVICES` names UUIDs).
    selector: Selector,
    pid: u32,
}

enum Selector {
    Index(u32),
    Uuid(String),
}

impl NvmlProbe {
    /// Opens NVML for CUDA device `cuda_index` (mapped through `CUDA_VISIBLE_DEVICES`, since NVML
    /// numbers all GPUs of the machine); `None` when NVML is not available.
    pub fn open(cuda_index: usize) -> Option<Self> {
        let nvml = Nvml::init().ok()?;
        let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
        let selector = nvml_selector(visible.as_deref(), cuda_index)?;
        let probe = Self {
            nvml,
            selector,
            pid: std::process::id(),
        };
        probe.sample()?;
        Some(probe)
    }
}

/// Which NVML device CUDA device `cuda_index` is, given `CUDA_VISIBLE_DEVICES`.
fn nvml_selector(visible: Option<&str>, cuda_index: usize) -> Option<Selector> {
    let Some(list) = visible.map(str::trim).filter(|v| !v.is_empty()) else {
        return u32::try_from(cuda_index).ok().map(Selector::Index);
    };
    let entry = list.split(',').nth(cuda_index)?.trim();
    match entry.parse::<u32>() {
        Ok(i) => Some(Selector::Index(i)),
        Err(_) => Some(Selector::Uuid(entry.to_owned())),
    }
}

impl DeviceProbe for NvmlProbe {
    fn sample(&self) -> Option<DeviceTelemetry> {
        let device = match &self.selector {
            Selector::Index(i) => self.nvml.device_by_index(*i).ok()?,
            Selector::Uuid(u) => self.nvml.device_by_uuid(u.as_str()).ok()?,
        };
        let memory = device.memory_info().ok()?;
        let utilization_percent = device.utilization_rates().map(|u| u.gpu).unwrap_or(0);
        let process_used_bytes = device.running_compute_processes().ok().and_then(|procs| {
            procs
                .iter()
                .find(|p| p.pid == self.pid)
                .and_then(|p| match p.used_gpu_memory {
                    UsedGpuMemory::Used(bytes) => Some(bytes),
                    UsedGpuMemory::Unavailable => None,
                })
        });
        Some(DeviceTelemetry {
            name: device.name().unwrap_or_else(|_| "unknown GPU".to_owned()),
            total_bytes: memory.total,
            used_bytes: memory.used,
            free_bytes: memory.free,
            utilization_percent,
            process_used_bytes,
        })
    }
}

/// A probe whose readings are set by hand: for tests and for running the circuit breaker on a
/// machine without NVML.
#[derive(Default)]
pub struct ManualProbe {
    reading: Mutex<Option<DeviceTelemetry>>,
}

impl ManualProbe {
    /// A probe that reports nothing until a reading is set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reports a device of `total` bytes with `fraction` of it used.
    pub fn set_used_fraction(&self, fraction: f64, total: u64) {
        let used = (fraction.clamp(0.0, 1.0) * total as f64) as u64;
        *self.reading.lock() = Some(DeviceTelemetry {
            name: "manual probe".to_owned(),
            total_bytes: total,
            used_bytes: used,
            free_bytes: total.saturating_sub(used),
            utilization_percent: 0,
            process_used_bytes: None,
        });
    }

    /// Reports exactly this reading (or none).
    pub fn set(&self, reading: Option<DeviceTelemetry>) {
        *self.reading.lock() = reading;
    }
}

impl DeviceProbe for ManualProbe {
    fn sample(&self) -> Option<DeviceTelemetry> {
        self.reading.lock().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visible_devices_map_cuda_to_nvml_indices() {
        assert!(matches!(nvml_selector(None, 1), Some(Selector::Index(1))));
        assert!(matches!(
            nvml_selector(Some("3,5"), 1),
            Some(Selector::Index(5))
        ));
        assert!(
            matches!(nvml_selector(Some("GPU-abc"), 0), Some(Selector::Uuid(u)) if u == "GPU-abc")
        );
        assert!(nvml_selector(Some("3"), 1).is_none());
    }

    #[test]
    fn manual_probe_reports_what_was_set() {
        let p = ManualProbe::new();
        assert!(p.sample().is_none());
        p.set_used_fraction(0.5, 1000);
        let s = p.sample().unwrap();
        assert_eq!((s.used_bytes, s.free_bytes), (500, 500));
    }
}
