// AOTInductor packages (.pt2) through torch::inductor::AOTIModelPackageLoader.
#include "shim.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

namespace {
struct AotiPackage {
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader;
};

// The loader's constructor parses the package's metadata into a function-local static JSON object
// (load_json_file in model_package_loader.cpp) and copies it out afterwards, so two packages
// loading at once can each end up with the other's metadata, or none ("No device information
// found"). Loads are rare and slow anyway; one at a time per process costs nothing that matters.
std::mutex& load_mutex() {
  static std::mutex m;
  return m;
}
}  // namespace

extern "C" {

// Loads the package at `path`. device_index -1 runs it where it was compiled for (CPU packages),
// otherwise on that CUDA device. num_runners model instances allow that many concurrent runs.
int gpupool_aoti_load(const char* path, int device_index, size_t num_runners, void** out) {
  if (path == nullptr || out == nullptr || num_runners == 0) return GPUPOOL_EINVAL;
  *out = nullptr;
  GPUPOOL_GUARD({
    auto package = std::make_unique<AotiPackage>();
    std::lock_guard<std::mutex> one_load_at_a_time(load_mutex());
    package->loader = std::make_unique<torch::inductor::AOTIModelPackageLoader>(
        std::string(path), "model", false, num_runners, static_cast<c10::DeviceIndex>(device_index));
    *out = package.release();
    return GPUPOOL_OK;
  })
}

// Runs the package on one input tensor (an at::Tensor* as tch holds it), on `stream` (a
// cudaStream_t, or null for the current stream / CPU). *out receives a new at::Tensor* holding the
// first output, owned by the caller (tch frees it).
int gpupool_aoti_run(void* handle, const void* input, void* stream, void** out) {
  if (handle == nullptr || input == nullptr || out == nullptr) return GPUPOOL_EINVAL;
  *out = nullptr;
  GPUPOOL_GUARD({
    auto* package = static_cast<AotiPackage*>(handle);
    std::vector<at::Tensor> inputs{*static_cast<const at::Tensor*>(input)};
    auto outputs = package->loader->run(inputs, stream);
    if (outputs.empty()) {
      gpupool::set_last_error("AOTInductor package returned no outputs");
      return GPUPOOL_EXCEPTION;
    }
    *out = new at::Tensor(std::move(outputs[0]));
    return GPUPOOL_OK;
  })
}

// Copies metadata value `key` of the package into buf (truncated to len); *out_len is its length.
int gpupool_aoti_metadata(void* handle, const char* key, char* buf, size_t len, size_t* out_len) {
  if (handle == nullptr || key == nullptr || out_len == nullptr) return GPUPOOL_EINVAL;
  GPUPOOL_GUARD({
    auto* package = static_cast<AotiPackage*>(handle);
    auto metadata = package->loader->get_metadata();
    auto it = metadata.find(key);
    if (it == metadata.end()) return GPUPOOL_ENOENT;
    const std::string& value = it->second;
    *out_len = value.size();
    if (buf != nullptr && len > 0) std::memcpy(buf, value.data(), value.size() < len ? value.size() : len);
    return GPUPOOL_OK;
  })
}

// Frees a package returned by gpupool_aoti_load (null is ignored).
void gpupool_aoti_free(void* handle) {
  try {
    delete static_cast<AotiPackage*>(handle);
  } catch (...) {
  }
}

}  // extern "C"
