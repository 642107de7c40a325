//! The C++ shim through the public device API: on a machine without a GPU every CUDA call is a
//! clean error or no-op; on a GPU machine the same test checks streams and allocator statistics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use gpupool_executor::{ComputeDevice, ShimError};

#[test]
fn cuda_calls_are_safe_without_a_gpu_and_work_with_one() {
    let count = ComputeDevice::cuda_device_count();
    let cuda = ComputeDevice::Cuda(0);
    if count == 0 {
        assert_eq!(ComputeDevice::detect(), ComputeDevice::Cpu);
        assert_eq!(cuda.acquire_stream(), Err(ShimError::NoDevice));
        assert_eq!(cuda.current_stream(), Err(ShimError::NoDevice));
        assert_eq!(cuda.synchronize(), Err(ShimError::NoDevice));
        assert_eq!(cuda.reset_peak_stats(), Err(ShimError::NoDevice));
        assert_eq!(cuda.cap_memory(1 << 30), Err(ShimError::NoDevice));
        assert!(cuda.allocator_stats().is_none());
        assert!(cuda.total_memory().is_none());
        cuda.empty_cache();
        assert!(cuda.set_cudnn_benchmark(true).is_ok());
        eprintln!("no CUDA device: checked that the shim's CUDA functions fail cleanly");
        return;
    }
    assert_eq!(ComputeDevice::detect(), cuda);
    let total = cuda.total_memory().unwrap();
    assert!(total > 0);
    let stream = cuda.acquire_stream().unwrap();
    assert_ne!(stream, 0, "a pool stream, not the default stream");
    assert_eq!(cuda.current_stream().unwrap(), stream);
    let t = tch::Tensor::ones([1024, 1024], (tch::Kind::Float, tch::Device::Cuda(0)));
    cuda.synchronize().unwrap();
    let stats = cuda.allocator_stats().unwrap();
    assert!(
        stats.allocated >= 4 << 20
            && stats.reserved >= stats.allocated
            && stats.peak_allocated >= stats.allocated
    );
    drop(t);
    cuda.reset_peak_stats().unwrap();
    assert!(cuda.cap_memory(total / 2).unwrap().is_some());
    cuda.empty_cache();
}

#[test]
fn cpu_device_needs_no_shim() {
    let cpu = ComputeDevice::Cpu;
    assert_eq!(cpu.acquire_stream(), Ok(0));
    assert!(cpu.synchronize().is_ok());
    assert_eq!(cpu.cap_memory(1 << 30), Ok(None));
    assert!(cpu.allocator_stats().is_none());
}
