// gpupool executor shim: the few libtorch/c10 facilities tch does not expose, behind a C ABI.
//
// Every function catches C++ exceptions and returns a status code; the message of the last failure
// on the calling thread is available through gpupool_last_error. Every function is safe to call on
// a machine without a GPU (or with a shim built without CUDA): CUDA functions then return
// GPUPOOL_ENODEV and change nothing.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#define GPUPOOL_OK 0
#define GPUPOOL_ENODEV 1     // no CUDA device (or shim built without CUDA)
#define GPUPOOL_EXCEPTION 2  // a C++ exception; see gpupool_last_error
#define GPUPOOL_EINVAL 3     // bad argument (null pointer, device index out of range, ...)
#define GPUPOOL_ENOENT 4     // the requested record or key does not exist

namespace gpupool {
void set_last_error(const std::string& message);
}

#define GPUPOOL_GUARD(...)                                            \
  try {                                                               \
    __VA_ARGS__                                                       \
  } catch (const c10::Error& e) {                                     \
    gpupool::set_last_error(e.what_without_backtrace());              \
    return GPUPOOL_EXCEPTION;                                         \
  } catch (const std::exception& e) {                                 \
    gpupool::set_last_error(e.what());                                \
    return GPUPOOL_EXCEPTION;                                         \
  } catch (...) {                                                     \
    gpupool::set_last_error("unknown C++ exception");                 \
    return GPUPOOL_EXCEPTION;                                         \
  }
