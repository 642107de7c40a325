//! The compute device as the engine sees it: CPU or one CUDA device, with the stream, allocator and
//! memory facilities of the C++ shim behind a safe API. On the CPU every operation is a no-op or an
//! empty answer, so the engine runs the same code path in CI and on the GPU.

pub(crate) mod ffi;
mod host;

pub(crate) use ffi::AutocastGuard;
pub use ffi::{AotiPackage, ShimError};
use tch::Device;

/// Allocator counters of the CUDA caching allocator, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AllocatorStats {
    /// Bytes in live tensors.
    pub allocated: u64,
    /// Bytes held from the driver (allocated + cached).
    pub reserved: u64,
    /// High-water mark of `allocated` since the last reset.
    pub peak_allocated: u64,
    /// High-water mark of `reserved` since the last reset.
    pub peak_reserved: u64,
}

impl AllocatorStats {
    /// Bytes held for reuse that no live tensor occupies.
    pub fn cached(&self) -> u64 {
        self.reserved.saturating_sub(self.allocated)
    }
}

/// Where models run: the CPU (tests, CI) or one CUDA device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComputeDevice {
    /// The CPU; no streams, no allocator statistics.
    Cpu,
    /// CUDA device with this index.
    Cuda(usize),
}

impl ComputeDevice {
    /// The first CUDA device when libtorch sees one, else the CPU.
    pub fn detect() -> Self {
        if ffi::cuda_device_count() > 0 {
            ComputeDevice::Cuda(0)
        } else {
            ComputeDevice::Cpu
        }
    }

    /// Number of CUDA devices libtorch can use.
    pub fn cuda_device_count() -> usize {
        ffi::cuda_device_count()
    }

    /// The tch device tensors are placed on.
    pub fn tch(self) -> Device {
        match self {
            ComputeDevice::Cpu => Device::Cpu,
            ComputeDevice::Cuda(i) => Device::Cuda(i),
        }
    }

    /// Whether this is a CUDA device.
    pub fn is_cuda(self) -> bool {
        matches!(self, ComputeDevice::Cuda(_))
    }

    /// The CUDA device's index; `None` on the CPU.
    pub fn cuda_index(self) -> Option<usize> {
        match self {
            ComputeDevice::Cpu => None,
            ComputeDevice::Cuda(i) => Some(i),
        }
    }

    /// Takes a stream from the pool and makes it current on the calling thread (the thread's
    /// execution slot then queues all its work there). Returns the raw stream handle; 0 on the CPU.
    pub fn acquire_stream(self) -> Result<usize, ShimError> {
        match self {
            ComputeDevice::Cpu => Ok(0),
            ComputeDevice::Cuda(i) => ffi::stream_acquire(i, false),
        }
    }

    /// Raw handle of the calling thread's current stream; 0 on the CPU.
    pub fn current_stream(self) -> Result<usize, ShimError> {
        match self {
            ComputeDevice::Cpu => Ok(0),
            ComputeDevice::Cuda(i) => ffi::stream_current(i),
        }
    }

    /// Waits for the calling thread's current stream; nothing to wait for on the CPU.
    pub fn synchronize(self) -> Result<(), ShimError> {
        match self {
            ComputeDevice::Cpu => Ok(()),
            ComputeDevice::Cuda(i) => ffi::stream_synchronize(i),
        }
    }

    /// Caching allocator counters; `None` on the CPU.
    pub fn allocator_stats(self) -> Option<AllocatorStats> {
        match self {
            ComputeDevice::Cpu => None,
            ComputeDevice::Cuda(i) => {
                ffi::allocator_stats(i)
                    .ok()
                    .map(|(a, r, pa, pr)| AllocatorStats {
                        allocated: a,
                        reserved: r,
                        peak_allocated: pa,
                        peak_reserved: pr,
                    })
            }
        }
    }

    /// Resets the allocator's high-water marks (before a calibration run).
    pub fn reset_peak_stats(self) -> Result<(), ShimError> {
        match self {
            ComputeDevice::Cpu => Ok(()),
            ComputeDevice::Cuda(i) => ffi::allocator_reset_peak(i),
        }
    }

    /// Total device memory; `None` on the CPU.
    pub fn total_memory(self) -> Option<u64> {
        match self {
            ComputeDevice::Cpu => None,
            ComputeDevice::Cuda(i) => ffi::device_total_memory(i).ok(),
        }
    }

    /// Caps the process's caching allocator at `budget` bytes (as a fraction of the device), so
    /// libtorch itself refuses to cross the budget even if an estimate was wrong.
    pub fn cap_memory(self, budget: u64) -> Result<Option<f64>, ShimError> {
        let ComputeDevice::Cuda(i) = self else {
            return Ok(None);
        };
        let total = ffi::device_total_memory(i)?;
        if total == 0 {
            return Ok(None);
        }
        let fraction = (budget as f64 / total as f64).clamp(f64::MIN_POSITIVE, 1.0);
        ffi::set_memory_fraction(i, fraction)?;
        Ok(Some(fraction))
    }

    /// Returns cached blocks to the driver (after an eviction or an out-of-memory error).
    pub fn empty_cache(self) {
        if self.is_cuda() {
            let _ = ffi::empty_cache();
        }
    }

    /// Turns cuDNN autotuning on or off (process-wide; only matters on CUDA).
    pub fn set_cudnn_benchmark(self, enabled: bool) -> Result<(), ShimError> {
        if self.is_cuda() {
            ffi::set_cudnn_benchmark(enabled)
        } else {
            Ok(())
        }
    }
}

impl std::fmt::Display for ComputeDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ComputeDevice::Cpu => f.write_str("cpu"),
            ComputeDevice::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// Reads an extra file (`extra/<name>`) stored in a TorchScript archive, without loading the model.
pub(crate) fn torchscript_extra_file(path: &str, name: &str) -> Result<Option<Vec<u8>>, ShimError> {
    ffi::archive_record(path, &format!("extra/{name}"))
}

pub(crate) use ffi::{jit_set_profiling, tensor_copy};
pub(crate) use host::{host_buffer, pin_host_buffers, read_host, write_host, Download, HostTensor};
