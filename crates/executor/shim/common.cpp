// Device-independent parts of the shim: last-error reporting, tensor copies, autocast, and reading
// a record (extra file) out of a TorchScript archive without loading the model.
#include "shim.h"

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <caffe2/serialize/inline_container.h>
#include <c10/util/Exception.h>
#include <torch/csrc/jit/codegen/fuser/interface.h>
#include <torch/csrc/jit/passes/tensorexpr_fuser.h>
#include <torch/csrc/jit/runtime/graph_executor.h>

#include <cstring>

namespace gpupool {
namespace {
thread_local std::string last_error;
}
void set_last_error(const std::string& message) { last_error = message; }
}  // namespace gpupool

extern "C" {

// Copies the last error message of this thread into buf (NUL-terminated, truncated to len) and
// returns the full message length.
size_t gpupool_last_error(char* buf, size_t len) {
  const std::string& msg = gpupool::last_error;
  if (buf != nullptr && len > 0) {
    size_t n = msg.size() < len - 1 ? msg.size() : len - 1;
    std::memcpy(buf, msg.data(), n);
    buf[n] = '\0';
  }
  return msg.size();
}

// dst.copy_(src, non_blocking); both are at::Tensor* as tch holds them.
int gpupool_tensor_copy(void* dst, const void* src, int non_blocking) {
  if (dst == nullptr || src == nullptr) return GPUPOOL_EINVAL;
  GPUPOOL_GUARD({
    auto* d = static_cast<at::Tensor*>(dst);
    const auto* s = static_cast<const at::Tensor*>(src);
    d->copy_(*s, non_blocking != 0);
    return GPUPOOL_OK;
  })
}

// A new CPU tensor of the given shape and c10::ScalarType code in page-locked (pinned) memory, as a
// heap at::Tensor* owned by the caller (tch frees it). Without a CUDA device it is ordinary memory.
int gpupool_empty_pinned(const int64_t* sizes, size_t ndim, int scalar_type, void** out) {
  if (sizes == nullptr || out == nullptr) return GPUPOOL_EINVAL;
  *out = nullptr;
  GPUPOOL_GUARD({
    auto options = at::TensorOptions()
                       .dtype(static_cast<at::ScalarType>(scalar_type))
                       .device(at::kCPU)
                       .pinned_memory(at::hasCUDA());
    *out = new at::Tensor(at::empty(c10::IntArrayRef(sizes, ndim), options));
    return GPUPOOL_OK;
  })
}

// Enables autocast on this thread for device_type (0 = CPU, 1 = CUDA) with the given scalar type
// (c10::ScalarType code: 5 = Half, 15 = BFloat16).
int gpupool_autocast_enter(int device_type, int scalar_type) {
  GPUPOOL_GUARD({
    auto dt = device_type == 1 ? at::kCUDA : at::kCPU;
    at::autocast::set_autocast_dtype(dt, static_cast<at::ScalarType>(scalar_type));
    at::autocast::set_autocast_enabled(dt, true);
    at::autocast::increment_nesting();
    return GPUPOOL_OK;
  })
}

// Disables autocast on this thread for device_type and drops its cast cache.
int gpupool_autocast_exit(int device_type) {
  GPUPOOL_GUARD({
    auto dt = device_type == 1 ? at::kCUDA : at::kCPU;
    at::autocast::set_autocast_enabled(dt, false);
    if (at::autocast::decrement_nesting() <= 0) at::autocast::clear_cache();
    return GPUPOOL_OK;
  })
}

// Chooses how TorchScript graphs run, process-wide, for executors created afterwards: 1 = libtorch's
// default (profiling executor, fusion compiled per shape); 0 = the legacy executor without fusion,
// which still runs the graph passes (autocast among them) but compiles nothing per shape.
int gpupool_jit_set_profiling(int enabled) {
  GPUPOOL_GUARD({
    bool on = enabled != 0;
    torch::jit::getExecutorMode() = on;
    torch::jit::getProfilingMode() = on;
    torch::jit::setTensorExprFuserEnabled(on);
    torch::jit::overrideCanFuseOnGPU(on);
    return GPUPOOL_OK;
  })
}

// Sets cuDNN benchmark mode (autotuning per input shape), process-wide.
int gpupool_set_cudnn_benchmark(int enabled) {
  GPUPOOL_GUARD({
    at::globalContext().setBenchmarkCuDNN(enabled != 0);
    return GPUPOOL_OK;
  })
}

// Reads record `name` (e.g. "extra/gpupool.json") of the TorchScript archive at `path` into buf.
// *out_len receives the record size; the copy is truncated to len.
int gpupool_archive_record(const char* path, const char* name, char* buf, size_t len, size_t* out_len) {
  if (path == nullptr || name == nullptr || out_len == nullptr) return GPUPOOL_EINVAL;
  GPUPOOL_GUARD({
    caffe2::serialize::PyTorchStreamReader reader{std::string(path)};
    if (!reader.hasRecord(name)) return GPUPOOL_ENOENT;
    auto record = reader.getRecord(name);
    const auto& data = std::get<0>(record);
    size_t size = std::get<1>(record);
    *out_len = size;
    if (buf != nullptr && len > 0) std::memcpy(buf, data.get(), size < len ? size : len);
    return GPUPOOL_OK;
  })
}

}  // extern "C"
