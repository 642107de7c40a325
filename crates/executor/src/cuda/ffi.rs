//! One of the two places with `unsafe` (the other is `host.rs`, the raw copies between Rust
//! slices and host tensors): declarations of the C++ shim (`shim/*.cpp`) and safe wrappers around
//! them.
//!
//! Every wrapper checks its arguments before crossing the boundary, and every shim function catches
//! C++ exceptions and is a harmless error on a machine without a GPU, so nothing here can unwind
//! into Rust or touch memory it was not given.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_void, CString};
use tch::{Device, Kind, Tensor};

const OK: c_int = 0;
const ENODEV: c_int = 1;
const ENOENT: c_int = 4;

extern "C" {
    fn gpupool_last_error(buf: *mut c_char, len: usize) -> usize;
    fn gpupool_tensor_copy(dst: *mut c_void, src: *const c_void, non_blocking: c_int) -> c_int;
    fn gpupool_empty_pinned(
        sizes: *const i64,
        ndim: usize,
        scalar_type: c_int,
        out: *mut *mut c_void,
    ) -> c_int;
    fn gpupool_autocast_enter(device_type: c_int, scalar_type: c_int) -> c_int;
    fn gpupool_autocast_exit(device_type: c_int) -> c_int;
    fn gpupool_set_cudnn_benchmark(enabled: c_int) -> c_int;
    fn gpupool_jit_set_profiling(enabled: c_int) -> c_int;
    fn gpupool_archive_record(
        path: *const c_char,
        name: *const c_char,
        buf: *mut c_char,
        len: usize,
        out_len: *mut usize,
    ) -> c_int;
    fn gpupool_cuda_device_count(out: *mut c_int) -> c_int;
    fn gpupool_stream_acquire(device: c_int, high_priority: c_int, out: *mut *mut c_void) -> c_int;
    fn gpupool_stream_current(device: c_int, out: *mut *mut c_void) -> c_int;
    fn gpupool_stream_synchronize(device: c_int) -> c_int;
    fn gpupool_allocator_stats(
        device: c_int,
        allocated: *mut u64,
        reserved: *mut u64,
        peak_allocated: *mut u64,
        peak_reserved: *mut u64,
    ) -> c_int;
    fn gpupool_allocator_reset_peak(device: c_int) -> c_int;
    fn gpupool_set_memory_fraction(device: c_int, fraction: f64) -> c_int;
    fn gpupool_empty_cache() -> c_int;
    fn gpupool_device_total_memory(device: c_int, out: *mut u64) -> c_int;
    fn gpupool_aoti_load(
        path: *const c_char,
        device_index: c_int,
        num_runners: usize,
        out: *mut *mut c_void,
    ) -> c_int;
    fn gpupool_aoti_run(
        handle: *mut c_void,
        input: *const c_void,
        stream: *mut c_void,
        out: *mut *mut c_void,
    ) -> c_int;
    fn gpupool_aoti_metadata(
        handle: *mut c_void,
        key: *const c_char,
        buf: *mut c_char,
        len: usize,
        out_len: *mut usize,
    ) -> c_int;
    fn gpupool_aoti_free(handle: *mut c_void);
}

/// Why a shim call did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShimError {
    /// There is no usable CUDA device (or the shim was built without CUDA).
    #[error("no CUDA device")]
    NoDevice,
    /// The requested record or metadata key does not exist.
    #[error("not found")]
    NotFound,
    /// libtorch raised an error, or an argument was rejected.
    #[error("{0}")]
    Torch(String),
}

fn last_error() -> String {
    let mut buf = vec![0u8; 4096];
    // SAFETY: buf is valid for buf.len() bytes; the shim writes at most len bytes, NUL-terminated.
    let n = unsafe { gpupool_last_error(buf.as_mut_ptr().cast(), buf.len()) };
    buf.truncate(n.min(buf.len().saturating_sub(1)));
    String::from_utf8_lossy(&buf).into_owned()
}

fn check(rc: c_int) -> Result<(), ShimError> {
    match rc {
        OK => Ok(()),
        ENODEV => Err(ShimError::NoDevice),
        ENOENT => Err(ShimError::NotFound),
        3 => Err(ShimError::Torch(
            "invalid argument to the executor shim".into(),
        )),
        _ => Err(ShimError::Torch(last_error())),
    }
}

fn c_string(s: &str) -> Result<CString, ShimError> {
    CString::new(s).map_err(|_| ShimError::Torch(format!("string contains a NUL byte: {s:?}")))
}

fn device_index(device: usize) -> Result<c_int, ShimError> {
    c_int::try_from(device)
        .map_err(|_| ShimError::Torch(format!("device index {device} too large")))
}

/// Number of CUDA devices libtorch can use (0 on a machine without a GPU).
pub fn cuda_device_count() -> usize {
    let mut n: c_int = 0;
    // SAFETY: n is a valid out-pointer.
    let rc = unsafe { gpupool_cuda_device_count(&mut n) };
    if rc == OK {
        usize::try_from(n).unwrap_or(0)
    } else {
        0
    }
}

/// Takes a stream from libtorch's pool, makes it current on this thread; returns its raw handle.
pub fn stream_acquire(device: usize, high_priority: bool) -> Result<usize, ShimError> {
    let mut handle: *mut c_void = std::ptr::null_mut();
    // SAFETY: handle is a valid out-pointer.
    check(unsafe {
        gpupool_stream_acquire(
            device_index(device)?,
            c_int::from(high_priority),
            &mut handle,
        )
    })?;
    Ok(handle as usize)
}

/// The raw handle (`cudaStream_t`) of this thread's current stream.
pub fn stream_current(device: usize) -> Result<usize, ShimError> {
    let mut handle: *mut c_void = std::ptr::null_mut();
    // SAFETY: handle is a valid out-pointer.
    check(unsafe { gpupool_stream_current(device_index(device)?, &mut handle) })?;
    Ok(handle as usize)
}

/// Waits for the work queued on this thread's current stream.
pub fn stream_synchronize(device: usize) -> Result<(), ShimError> {
    // SAFETY: plain value argument.
    check(unsafe { gpupool_stream_synchronize(device_index(device)?) })
}

/// Raw allocator counters: (allocated, reserved, peak allocated, peak reserved).
pub fn allocator_stats(device: usize) -> Result<(u64, u64, u64, u64), ShimError> {
    let (mut a, mut r, mut pa, mut pr) = (0u64, 0u64, 0u64, 0u64);
    // SAFETY: four valid out-pointers.
    check(unsafe {
        gpupool_allocator_stats(device_index(device)?, &mut a, &mut r, &mut pa, &mut pr)
    })?;
    Ok((a, r, pa, pr))
}

/// Resets the allocator's high-water marks.
pub fn allocator_reset_peak(device: usize) -> Result<(), ShimError> {
    // SAFETY: plain value argument.
    check(unsafe { gpupool_allocator_reset_peak(device_index(device)?) })
}

/// Caps the caching allocator at `fraction` of the device's memory.
pub fn set_memory_fraction(device: usize, fraction: f64) -> Result<(), ShimError> {
    // SAFETY: plain value arguments; the shim rejects fractions outside (0, 1].
    check(unsafe { gpupool_set_memory_fraction(device_index(device)?, fraction) })
}

/// Returns cached, unused blocks to the driver.
pub fn empty_cache() -> Result<(), ShimError> {
    // SAFETY: no arguments.
    check(unsafe { gpupool_empty_cache() })
}

/// Total memory of the device in bytes.
pub fn device_total_memory(device: usize) -> Result<u64, ShimError> {
    let mut total = 0u64;
    // SAFETY: valid out-pointer.
    check(unsafe { gpupool_device_total_memory(device_index(device)?, &mut total) })?;
    Ok(total)
}

/// Sets cuDNN benchmark mode for the process.
pub fn set_cudnn_benchmark(enabled: bool) -> Result<(), ShimError> {
    // SAFETY: plain value argument.
    check(unsafe { gpupool_set_cudnn_benchmark(c_int::from(enabled)) })
}

/// Chooses TorchScript's executor, process-wide: profiling + fusion (libtorch's default) or the
/// legacy executor without fusion.
pub fn jit_set_profiling(enabled: bool) -> Result<(), ShimError> {
    // SAFETY: plain value argument.
    check(unsafe { gpupool_jit_set_profiling(c_int::from(enabled)) })
}

/// `dst.copy_(src, non_blocking)`.
pub fn tensor_copy(dst: &mut Tensor, src: &Tensor, non_blocking: bool) -> Result<(), ShimError> {
    // SAFETY: both pointers are live at::Tensor objects owned by the borrowed tch tensors.
    check(unsafe {
        gpupool_tensor_copy(
            dst.as_mut_ptr().cast(),
            src.as_ptr().cast(),
            c_int::from(non_blocking),
        )
    })
}

/// A new CPU tensor of `shape` whose elements are `c10::ScalarType` `scalar_type`, in pinned
/// (page-locked) memory where there is CUDA, so copies to and from the GPU can run
/// asynchronously; ordinary memory where there is none.
pub fn empty_pinned(shape: &[i64], scalar_type: c_int) -> Result<Tensor, ShimError> {
    let mut out: *mut c_void = std::ptr::null_mut();
    // SAFETY: shape is valid for shape.len() elements; out is a valid out-pointer.
    check(unsafe { gpupool_empty_pinned(shape.as_ptr(), shape.len(), scalar_type, &mut out) })?;
    if out.is_null() {
        return Err(ShimError::Torch(
            "pinned allocation returned no tensor".into(),
        ));
    }
    // SAFETY: out is a heap-allocated at::Tensor that we now own, as tch's own constructors return.
    Ok(unsafe { Tensor::from_ptr(out.cast()) })
}

fn device_type_code(device: Device) -> c_int {
    if device.is_cuda() {
        1
    } else {
        0
    }
}

/// Enables autocast at `kind` on this thread until dropped.
pub struct AutocastGuard {
    device_type: c_int,
}

impl AutocastGuard {
    /// Enables autocast for `device`'s type with `kind` (Half or BFloat16) on this thread.
    pub fn enter(device: Device, kind: Kind) -> Result<Self, ShimError> {
        let scalar = match kind {
            Kind::Half => 5,
            Kind::BFloat16 => 15,
            other => {
                return Err(ShimError::Torch(format!(
                    "autocast to {other:?} is not supported"
                )))
            }
        };
        let device_type = device_type_code(device);
        // SAFETY: plain value arguments.
        check(unsafe { gpupool_autocast_enter(device_type, scalar) })?;
        Ok(Self { device_type })
    }
}

impl Drop for AutocastGuard {
    fn drop(&mut self) {
        // SAFETY: plain value argument; failure leaves autocast as it was, which drop cannot report.
        let _ = unsafe { gpupool_autocast_exit(self.device_type) };
    }
}

/// Reads record `name` (e.g. `extra/gpupool.json`) from a TorchScript archive; `None` if absent.
pub fn archive_record(path: &str, name: &str) -> Result<Option<Vec<u8>>, ShimError> {
    let (cpath, cname) = (c_string(path)?, c_string(name)?);
    let mut len = 0usize;
    // SAFETY: strings are NUL-terminated; a null buffer with length 0 only queries the size.
    match check(unsafe {
        gpupool_archive_record(
            cpath.as_ptr(),
            cname.as_ptr(),
            std::ptr::null_mut(),
            0,
            &mut len,
        )
    }) {
        Err(ShimError::NotFound) => return Ok(None),
        other => other?,
    }
    let mut buf = vec![0u8; len];
    let mut got = 0usize;
    // SAFETY: buf is valid for buf.len() bytes and the shim copies at most that many.
    check(unsafe {
        gpupool_archive_record(
            cpath.as_ptr(),
            cname.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut got,
        )
    })?;
    buf.truncate(got.min(buf.len()));
    Ok(Some(buf))
}

/// A loaded AOTInductor package (`torch::inductor::AOTIModelPackageLoader`).
pub struct AotiPackage {
    handle: *mut c_void,
}

// SAFETY: the loader is used from several slot threads; its run() goes through
// AOTIModelContainer, which hands each concurrent call its own model instance under a mutex, and
// get_metadata() only reads a map filled at construction.
unsafe impl Send for AotiPackage {}
// SAFETY: see above.
unsafe impl Sync for AotiPackage {}

impl AotiPackage {
    /// Loads the package; `cuda_device` None runs it on the CPU it was compiled for.
    pub fn load(path: &str, cuda_device: Option<usize>, runners: usize) -> Result<Self, ShimError> {
        let cpath = c_string(path)?;
        let index = match cuda_device {
            Some(d) => device_index(d)?,
            None => -1,
        };
        let mut handle: *mut c_void = std::ptr::null_mut();
        // SAFETY: NUL-terminated path, valid out-pointer.
        check(unsafe { gpupool_aoti_load(cpath.as_ptr(), index, runners.max(1), &mut handle) })?;
        if handle.is_null() {
            return Err(ShimError::Torch(
                "AOTInductor loader returned no package".into(),
            ));
        }
        Ok(Self { handle })
    }

    /// Runs the package on `input` on the stream with raw handle `stream` (0 = current / CPU).
    pub fn run(&self, input: &Tensor, stream: usize) -> Result<Tensor, ShimError> {
        let mut out: *mut c_void = std::ptr::null_mut();
        // SAFETY: handle is live (freed only in Drop); input is a live at::Tensor; the stream
        // handle came from stream_acquire/stream_current (or is null).
        check(unsafe {
            gpupool_aoti_run(
                self.handle,
                input.as_ptr().cast(),
                stream as *mut c_void,
                &mut out,
            )
        })?;
        if out.is_null() {
            return Err(ShimError::Torch(
                "AOTInductor run returned no tensor".into(),
            ));
        }
        // SAFETY: out is a heap-allocated at::Tensor that we now own, exactly as tch's own
        // functions return tensors; tch frees it on drop.
        Ok(unsafe { Tensor::from_ptr(out.cast()) })
    }

    /// A metadata value recorded in the package (`aot_inductor.metadata`), if present.
    pub fn metadata(&self, key: &str) -> Result<Option<String>, ShimError> {
        let ckey = c_string(key)?;
        let mut buf = vec![0u8; 4096];
        let mut len = 0usize;
        // SAFETY: live handle, NUL-terminated key, buffer valid for its length.
        match check(unsafe {
            gpupool_aoti_metadata(
                self.handle,
                ckey.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut len,
            )
        }) {
            Err(ShimError::NotFound) => return Ok(None),
            other => other?,
        }
        buf.truncate(len.min(buf.len()));
        Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
    }
}

impl Drop for AotiPackage {
    fn drop(&mut self) {
        // SAFETY: handle came from gpupool_aoti_load and is freed exactly once.
        unsafe { gpupool_aoti_free(self.handle) }
    }
}
