//! Host memory the device copies to and from without blocking: [`HostTensor`], a flat CPU tensor
//! that no other handle shares, readable as a slice, and [`Download`], one the device is still
//! filling. They exist so that pixels and probabilities cross between the slot threads and the
//! rest of the process without a copy on the slot's thread: decoded pixels are copied into a
//! `HostTensor` where they are decoded and go up with one asynchronous copy; probabilities come
//! down into a `Download` and are handed over as they are once the slot's stream has finished.
//!
//! The memory is pinned (page-locked) once an engine in the process runs on a GPU
//! ([`pin_host_buffers`]) and libtorch's pinned pool can supply it, ordinary otherwise (a warning
//! says so once if the pool fails; copies then become synchronous). So an engine on the CPU, even
//! on a GPU host, neither pins memory nor creates a CUDA context for it. That pool
//! rounds each block up to a power of two and keeps freed blocks for reuse rather than giving
//! them back, so the process holds the largest amount it ever had in flight, per size class.
//!
//! One of the two places with `unsafe` (the other is `ffi.rs`): the slice view of a tensor's data
//! and the raw copies between Rust slices and host tensors ([`write_host`], [`read_host`]).
#![allow(unsafe_code)]

use super::ffi::{self, ShimError};
use std::ffi::c_int;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;
use tch::{Device, Kind, Tensor};

/// Element types a host tensor holds, with their `c10::ScalarType` codes: the code is what the
/// shim allocates and the type is what Rust reads, so the two must agree.
///
/// # Safety
/// `SCALAR_TYPE` must be the code of `Self::KIND` (every allocation is checked against `KIND`
/// again before it is read).
pub unsafe trait HostElement: tch::kind::Element + Copy {
    /// The `c10::ScalarType` code.
    const SCALAR_TYPE: c_int;
}

// SAFETY: c10::ScalarType::Byte is 0.
unsafe impl HostElement for u8 {
    const SCALAR_TYPE: c_int = 0;
}

// SAFETY: c10::ScalarType::Short is 2.
unsafe impl HostElement for i16 {
    const SCALAR_TYPE: c_int = 2;
}

// SAFETY: c10::ScalarType::Float is 6.
unsafe impl HostElement for f32 {
    const SCALAR_TYPE: c_int = 6;
}

static PINNED_FALLBACK: Once = Once::new();
static PIN: AtomicBool = AtomicBool::new(false);

/// From now on host buffers are pinned: called when an engine starts on a GPU.
pub(crate) fn pin_host_buffers() {
    PIN.store(true, Ordering::Relaxed);
}

/// A new contiguous CPU tensor of `shape` and element type `T`: pinned if an engine runs on a GPU
/// and the pinned pool can supply it, ordinary memory otherwise.
pub(crate) fn host_buffer<T: HostElement>(shape: &[i64]) -> Result<Tensor, ShimError> {
    let ordinary = || Tensor::f_empty(shape, (T::KIND, Device::Cpu)).map_err(torch_error);
    let tensor = if PIN.load(Ordering::Relaxed) {
        match ffi::empty_pinned(shape, T::SCALAR_TYPE) {
            Ok(t) => t,
            Err(e) => {
                PINNED_FALLBACK.call_once(|| {
                    tracing::warn!(error = %e, "no pinned host memory: host buffers fall back \
                        to ordinary memory, and copies to and from the GPU become synchronous");
                });
                ordinary()?
            }
        }
    } else {
        ordinary()?
    };
    if tensor.kind() != T::KIND || tensor.device() != Device::Cpu || !tensor.is_contiguous() {
        return Err(ShimError::Torch(format!(
            "host buffer came back as {:?} on {:?}, expected contiguous {:?} on the CPU",
            tensor.kind(),
            tensor.device(),
            T::KIND
        )));
    }
    Ok(tensor)
}

/// Checks that `t` is a contiguous CPU tensor of `T::KIND` holding elements `offset..offset + len`.
fn check_host<T: HostElement>(t: &Tensor, offset: usize, len: usize) -> Result<(), ShimError> {
    if t.device() != Device::Cpu || t.kind() != T::KIND || !t.is_contiguous() {
        return Err(ShimError::Torch(format!(
            "expected a contiguous {:?} CPU tensor, got {:?} on {:?}",
            T::KIND,
            t.kind(),
            t.device()
        )));
    }
    let numel = t.numel();
    match offset.checked_add(len) {
        Some(end) if end <= numel => Ok(()),
        _ => Err(ShimError::Torch(format!(
            "range {offset}+{len} outside a tensor of {numel} elements"
        ))),
    }
}

/// Copies `src` into the contiguous CPU tensor `dst` of `T`s starting at element `offset`.
///
/// The caller owns `dst`'s storage and makes sure no asynchronous copy reads it meanwhile (slots
/// synchronise their stream before refilling a buffer).
pub(crate) fn write_host<T: HostElement>(
    dst: &mut Tensor,
    offset: usize,
    src: &[T],
) -> Result<(), ShimError> {
    check_host::<T>(dst, offset, src.len())?;
    let base = dst.data_ptr().cast::<T>();
    // SAFETY: checked above: CPU, T::KIND (whose layout is T's, HostElement), contiguous,
    // offset + len within numel; data_ptr points at the first element of this view, and src
    // cannot alias a tensor we hold mutably.
    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), base.add(offset), src.len()) };
    Ok(())
}

/// Copies `dst.len()` elements out of the contiguous CPU tensor `src` of `T`s from element
/// `offset`.
pub(crate) fn read_host<T: HostElement>(
    src: &Tensor,
    offset: usize,
    dst: &mut [T],
) -> Result<(), ShimError> {
    check_host::<T>(src, offset, dst.len())?;
    let base = src.data_ptr().cast::<T>();
    // SAFETY: checked above, as in write_host.
    unsafe { std::ptr::copy_nonoverlapping(base.add(offset), dst.as_mut_ptr(), dst.len()) };
    Ok(())
}

fn torch_error(e: tch::TchError) -> ShimError {
    ShimError::Torch(e.to_string())
}

fn as_i64(len: usize) -> Result<i64, ShimError> {
    i64::try_from(len).map_err(|_| ShimError::Torch(format!("{len} elements are too many")))
}

/// A flat, contiguous CPU tensor of `T`s that no other handle shares, readable as a slice.
pub struct HostTensor<T: HostElement> {
    /// Made here, never shallow-cloned or handed out, and written only before it is wrapped (or,
    /// for a [`Download`], before [`Download::finish`]), so a slice borrowed from `&self` sees no
    /// writes.
    tensor: Tensor,
    element: PhantomData<T>,
}

impl<T: HostElement> HostTensor<T> {
    /// A copy of `src`.
    pub fn from_slice(src: &[T]) -> Result<Self, ShimError> {
        let mut tensor = host_buffer::<T>(&[as_i64(src.len())?])?;
        write_host(&mut tensor, 0, src)?;
        Ok(Self {
            tensor,
            element: PhantomData,
        })
    }

    /// A new tensor on `device` holding these elements converted to `kind`: from pinned memory
    /// the copy to a GPU is asynchronous on the current stream (libtorch keeps a freed pinned
    /// block from reuse until the copies queued on it have run, so dropping `self` early is
    /// safe). Never this tensor's own storage, even on the CPU.
    pub fn to_device_as(
        &self,
        device: Device,
        kind: Kind,
        non_blocking: bool,
    ) -> Result<Tensor, tch::TchError> {
        if device == Device::Cpu {
            self.tensor.f_to_dtype(kind, false, true)
        } else {
            self.tensor
                .f_to_device_(device, T::KIND, non_blocking, false)?
                .f_to_kind(kind)
        }
    }

    /// The elements.
    pub fn as_slice(&self) -> &[T] {
        let len = self.tensor.numel();
        if len == 0 {
            return &[];
        }
        // SAFETY: a contiguous CPU tensor of `len` elements of T::KIND (checked by host_buffer),
        // whose layout is T's; no other handle to its storage exists and nothing writes to it
        // while `self` is borrowed (see the field's doc).
        unsafe { std::slice::from_raw_parts(self.tensor.data_ptr().cast::<T>(), len) }
    }
}

impl<T: HostElement> std::fmt::Debug for HostTensor<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostTensor")
            .field("kind", &T::KIND)
            .field("len", &self.tensor.numel())
            .finish()
    }
}

/// A host tensor the device may still be copying into: readable only through
/// [`Download::finish`], which waits for the copy first.
pub struct Download<T: HostElement> {
    host: HostTensor<T>,
    /// The CUDA device whose current stream the copy was queued on, if any.
    device: Option<usize>,
}

impl<T: HostElement> Download<T> {
    /// Room for `len` elements. Apart from [`Download::fill`] so that running out of host memory
    /// is not taken for the device running out of its own.
    pub fn alloc(len: usize) -> Result<Self, ShimError> {
        Ok(Self {
            host: HostTensor {
                tensor: host_buffer::<T>(&[as_i64(len)?])?,
                element: PhantomData,
            },
            device: None,
        })
    }

    /// Queues the copy of `src` (any shape with as many elements, element type `T`) on the
    /// calling thread's current stream, without waiting when `non_blocking`.
    pub fn fill(&mut self, src: &Tensor, non_blocking: bool) -> Result<(), ShimError> {
        let len = self.host.tensor.numel();
        if src.kind() != T::KIND || src.numel() != len {
            return Err(ShimError::Torch(format!(
                "cannot copy {} {:?} elements into a host tensor of {len} {:?}",
                src.numel(),
                src.kind(),
                T::KIND
            )));
        }
        let flat = src.f_reshape([as_i64(len)?]).map_err(torch_error)?;
        ffi::tensor_copy(&mut self.host.tensor, &flat, non_blocking)?;
        if let Device::Cuda(i) = src.device() {
            self.device = Some(i);
        }
        Ok(())
    }

    /// Waits for the copy (the calling thread's current stream, which must be the one `fill` ran
    /// on) and hands the tensor over.
    pub fn finish(self) -> Result<HostTensor<T>, ShimError> {
        if let Some(device) = self.device {
            ffi::stream_synchronize(device)?;
        }
        Ok(self.host)
    }
}

impl<T: HostElement> std::fmt::Debug for Download<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Download")
            .field("host", &self.host)
            .field("device", &self.device)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_tensors_hold_what_was_written() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(HostTensor::from_slice(&bytes).unwrap().as_slice(), bytes);
        let shorts = [i16::MIN, -1, 0, 1, i16::MAX];
        assert_eq!(HostTensor::from_slice(&shorts).unwrap().as_slice(), shorts);
        assert!(HostTensor::<f32>::from_slice(&[])
            .unwrap()
            .as_slice()
            .is_empty());
    }

    #[test]
    fn uploads_convert_and_never_share_the_host_storage() {
        let host = HostTensor::from_slice(&[1u8, 2, 250]).unwrap();
        let mut up = host.to_device_as(Device::Cpu, Kind::Uint8, false).unwrap();
        let _ = up.f_add_scalar_(1).unwrap();
        assert_eq!(
            host.as_slice(),
            [1, 2, 250],
            "the copy was written, not the host tensor"
        );
        let floats = host.to_device_as(Device::Cpu, Kind::Float, false).unwrap();
        assert_eq!(Vec::<f32>::try_from(&floats).unwrap(), [1.0, 2.0, 250.0]);
    }

    #[test]
    fn downloads_flatten_any_layout_and_check_kind_and_size() {
        // A transposed (non-contiguous) 2×3 view: its elements in row-major order of the view.
        let src = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0])
            .view([3, 2])
            .tr();
        let mut d = Download::<f32>::alloc(6).unwrap();
        d.fill(&src, false).unwrap();
        assert_eq!(
            d.finish().unwrap().as_slice(),
            [1.0, 3.0, 5.0, 2.0, 4.0, 6.0]
        );
        let wrong_kind = Download::<u8>::alloc(6).unwrap().fill(&src, false);
        assert!(wrong_kind.unwrap_err().to_string().contains("Uint8"));
        let wrong_size = Download::<f32>::alloc(5).unwrap().fill(&src, false);
        assert!(wrong_size.unwrap_err().to_string().contains("of 5"));
    }
}
