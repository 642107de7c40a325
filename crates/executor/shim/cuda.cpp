// CUDA side of the shim: streams, the caching allocator, device facts. Built without CUDA (no
// GPUPOOL_WITH_CUDA), every function returns GPUPOOL_ENODEV.
#include "shim.h"

#include <ATen/Context.h>
#include <c10/util/Exception.h>

#ifdef GPUPOOL_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>

// Declared here rather than through ATen/cuda/CUDAContextLight.h, whose cuBLAS/cuSPARSE includes
// need CCCL headers (nv/target) that the PyPI CUDA wheels lack. Same declaration, same symbol, in
// libtorch_cuda: referencing it keeps that library linked under --as-needed.
namespace at::cuda {
cudaDeviceProp* getDeviceProperties(c10::DeviceIndex device);
}

namespace {
// Checks the device and initialises libtorch's CUDA state (the caching allocator among it) once,
// as the first CUDA tensor would; the allocator refuses settings before that.
int check_device(int device) {
  int count = static_cast<int>(c10::cuda::device_count());
  if (count <= 0 || !at::hasCUDA()) return GPUPOOL_ENODEV;
  if (device < 0 || device >= count) return GPUPOOL_EINVAL;
  GPUPOOL_GUARD({
    at::globalContext().lazyInitDevice(at::kCUDA);
    return GPUPOOL_OK;
  })
}
}  // namespace
#define GPUPOOL_CHECK_DEVICE(device)          \
  do {                                        \
    int rc_ = check_device(device);           \
    if (rc_ != GPUPOOL_OK) return rc_;        \
  } while (0)
#endif

extern "C" {

// Number of CUDA devices libtorch can use (0 without a GPU, or when libtorch_cuda is not loaded).
int gpupool_cuda_device_count(int* out) {
  if (out == nullptr) return GPUPOOL_EINVAL;
  *out = 0;
#ifdef GPUPOOL_WITH_CUDA
  // Keep libtorch_cuda linked: nothing else references it, so `--as-needed` (after
  // `--gc-sections` dropped unused shim functions) would leave it out, and without its static
  // initialisers libtorch has no CUDA backend. Every engine start reaches this function.
  auto* volatile keep_torch_cuda = &at::cuda::getDeviceProperties;
  (void)keep_torch_cuda;
  GPUPOOL_GUARD({
    if (at::hasCUDA()) *out = static_cast<int>(c10::cuda::device_count());
    return GPUPOOL_OK;
  })
#else
  return GPUPOOL_OK;
#endif
}

// Takes a stream from libtorch's pool for `device`, makes it (and the device) current on this
// thread, and returns its cudaStream_t.
int gpupool_stream_acquire(int device, int high_priority, void** out_handle) {
  if (out_handle == nullptr) return GPUPOOL_EINVAL;
  *out_handle = nullptr;
#ifdef GPUPOOL_WITH_CUDA
  GPUPOOL_CHECK_DEVICE(device);
  GPUPOOL_GUARD({
    auto index = static_cast<c10::DeviceIndex>(device);
    c10::cuda::set_device(index);
    auto stream = c10::cuda::getStreamFromPool(high_priority != 0, index);
    c10::cuda::setCurrentCUDAStream(stream);
    *out_handle = static_cast<void*>(stream.stream());
    return GPUPOOL_OK;
  })
#else
  (void)device;
  (void)high_priority;
  return GPUPOOL_ENODEV;
#endif
}

// The cudaStream_t current on this thread for `device`.
int gpupool_stream_current(int device, void** out_handle) {
  if (out_handle == nullptr) return GPUPOOL_EINVAL;
  *out_handle = nullptr;
#ifdef GPUPOOL_WITH_CUDA
  GPUPOOL_CHECK_DEVICE(device);
  GPUPOOL_GUARD({
    auto stream = c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device));
    *out_handle = static_cast<void*>(stream.stream());
    return GPUPOOL_OK;
  })
#else
  (void)device;
  return GPUPOOL_ENODEV;
#endif
}

// Waits for all work queued on this thread's current stream of `device`.
int gpupool_stream_synchronize(int device) {
#ifdef GPUPOOL_WITH_CUDA
  GPUPOOL_CHECK_DEVICE(device);
  GPUPOOL_GUARD({
    c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device)).synchronize();
    return GPUPOOL_OK;
  })
#else
  (void)device;
  return GPUPOOL_ENODEV;
#endif
}

// Caching-allocator statistics of `device` (aggregate pool): bytes in live tensors, bytes held from
// the driver, and their high-water marks since the last reset.
int gpupool_allocator_stats(int device, uint64_t* allocated, uint64_t* reserved, uint64_t* peak_allocated,
                            uint64_t* peak_reserved) {
  if (allocated == nullptr || reserved == nullptr || peak_allocated == nullptr || peak_reserved == nullptr)
    return GPUPOOL_EINVAL;
  *allocated = *reserved = *peak_allocated = *peak_reserved = 0;
#ifdef GPUPOOL_WITH_CUDA
  GPUPOOL_CHECK_DEVICE(device);
  GPUPOOL_GUARD({
    auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(static_cast<c10::DeviceIndex>(device));
    auto agg = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    *allocated = static_cast<uint64_t>(stats.allocated_bytes[agg].current);
    *reserved = static_cast<uint64_t>(stats.reserved_bytes[agg].current);
    *peak_allocated = static_cast<uint64_t>(stats.allocated_bytes[agg].peak);
    *peak_reserved = static_cast<uint64_t>(stats.reserved_bytes[agg].peak);
    return GPUPOOL_OK;
  })
#else
  (void)device;
  return GPUPOOL_ENODEV;
#endif
}

// Resets the high-water marks of `device`'s allocator statistics.
int gpupool_allocator_reset_peak(int device) {
#ifdef GPUPOOL_WITH_CUDA
  GPUPOOL_CHECK_DEVICE(device);
  GPUPOOL_GUARD({
    c10::cuda::CUDACachingAllocator::resetPeakStats(static_cast<c10::DeviceIndex>(device));
    return GPUPOOL_OK;
  })
#else
  (void)device;
  return GPUPOOL_ENODEV;
#endif
}

// Caps this process's caching allocator on `device` at fraction × total memory.
int gpupool_set_memory_fraction(int device, double fraction) {
  if (!(fraction > 0.0 && fraction <= 1.0)) return GPUPOOL_EINVAL;
#ifdef GPUPOOL_WITH_CUDA
  GPUPOOL_CHECK_DEVICE(device);
  GPUPOOL_GUARD({
    c10::cuda::CUDACachingAllocator::setMemoryFraction(fraction, static_cast<c10::DeviceIndex>(device));
    return GPUPOOL_OK;
  })
#else
  (void)device;
  return GPUPOOL_ENODEV;
#endif
}

// Returns cached, unused blocks to the driver.
int gpupool_empty_cache(void) {
#ifdef GPUPOOL_WITH_CUDA
  GPUPOOL_CHECK_DEVICE(0);
  GPUPOOL_GUARD({
    c10::cuda::CUDACachingAllocator::emptyCache();
    return GPUPOOL_OK;
  })
#else
  return GPUPOOL_ENODEV;
#endif
}

// Total memory of `device` in bytes. Calls into libtorch_cuda, which also keeps that library linked.
int gpupool_device_total_memory(int device, uint64_t* out) {
  if (out == nullptr) return GPUPOOL_EINVAL;
  *out = 0;
#ifdef GPUPOOL_WITH_CUDA
  GPUPOOL_CHECK_DEVICE(device);
  GPUPOOL_GUARD({
    *out = static_cast<uint64_t>(at::cuda::getDeviceProperties(static_cast<c10::DeviceIndex>(device))->totalGlobalMem);
    return GPUPOOL_OK;
  })
#else
  (void)device;
  return GPUPOOL_ENODEV;
#endif
}

}  // extern "C"
