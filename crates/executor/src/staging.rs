//! Host-side staging of one execution slot: a batch is written into a host tensor (pinned on a
//! GPU), copied to the device without blocking on the slot's stream, run, and its logits copied
//! back (again without blocking) into a second host tensor; one synchronisation per run. The
//! buffers are reused from batch to batch, so the hot path allocates no host memory.

use crate::cuda::{self, ComputeDevice};
use crate::model::LoadedModel;
use crate::oom::ForwardFailure;
use std::ops::Range;
use tch::{Kind, Tensor};

struct Buffers {
    input: Tensor,
    output: Tensor,
    capacity: usize,
}

/// Staging buffers and stream of one slot (or of the calibration thread).
pub(crate) struct Stager {
    device: ComputeDevice,
    stream: usize,
    height: usize,
    width: usize,
    buffers: Option<Buffers>,
}

fn other(e: impl std::fmt::Display) -> ForwardFailure {
    ForwardFailure::Other(e.to_string())
}

fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Stager {
    /// Buffers for `height`×`width` images, on a stream the calling thread made current (`stream`
    /// is its raw handle, 0 on the CPU).
    pub fn new(device: ComputeDevice, stream: usize, height: usize, width: usize) -> Self {
        Self {
            device,
            stream,
            height,
            width,
            buffers: None,
        }
    }

    fn host_tensor(&self, shape: &[i64]) -> Result<Tensor, ForwardFailure> {
        if self.device.is_cuda() {
            cuda::empty_pinned(shape).map_err(other)
        } else {
            Tensor::f_empty(shape, (Kind::Float, tch::Device::Cpu)).map_err(other)
        }
    }

    /// Makes room for batches of `n` images.
    pub fn reserve(&mut self, n: usize) -> Result<(), ForwardFailure> {
        if self.buffers.as_ref().is_some_and(|b| b.capacity >= n) {
            return Ok(());
        }
        let (h, w) = (to_i64(self.height), to_i64(self.width));
        let input = self.host_tensor(&[to_i64(n), 3, h, w])?;
        let output = self.host_tensor(&[to_i64(n), h * w])?;
        self.buffers = Some(Buffers {
            input,
            output,
            capacity: n,
        });
        Ok(())
    }

    fn buffers(&mut self) -> Result<&mut Buffers, ForwardFailure> {
        self.buffers
            .as_mut()
            .ok_or_else(|| ForwardFailure::Other("staging buffers not allocated".into()))
    }

    /// Writes image `i` of the batch.
    pub fn stage(&mut self, i: usize, image: &[f32]) -> Result<(), ForwardFailure> {
        let len = 3 * self.height * self.width;
        if image.len() != len {
            return Err(ForwardFailure::Other(format!(
                "image has {} floats, expected {len}",
                image.len()
            )));
        }
        let b = self.buffers()?;
        cuda::write_f32(&mut b.input, i * len, image).map_err(other)
    }

    /// Fills images 0..n with a fixed pseudo-random pattern (calibration and warm-up input).
    pub fn stage_synthetic(&mut self, n: usize) -> Result<(), ForwardFailure> {
        self.reserve(n)?;
        let len = 3 * self.height * self.width;
        let mut state = 0x2545_f491_u32;
        let image: Vec<f32> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state as f32 / u32::MAX as f32) * 4.0 - 2.0
            })
            .collect();
        for i in 0..n {
            self.stage(i, &image)?;
        }
        Ok(())
    }

    /// Runs images `range` through `model` and leaves their logits in the output buffer. Returns
    /// once the results are on the host.
    pub fn run(&mut self, model: &LoadedModel, range: Range<usize>) -> Result<(), ForwardFailure> {
        let (device, stream, h, w) = (self.device, self.stream, self.height, self.width);
        let (start, len) = (to_i64(range.start), to_i64(range.len()));
        let b = self.buffers()?;
        if range.end > b.capacity {
            return Err(ForwardFailure::Other(format!(
                "range {range:?} beyond staged capacity {}",
                b.capacity
            )));
        }
        let host_in = b.input.f_narrow(0, start, len).map_err(other)?;
        let input = if device.is_cuda() {
            host_in
                .f_to_device_(device.tch(), Kind::Float, true, false)
                .map_err(other)?
        } else {
            host_in
        };
        let out = model.forward(&input, stream)?;
        let size = out.size();
        let expected = range.len() * h * w;
        if size.first() != Some(&len) || out.numel() != expected {
            return Err(ForwardFailure::Other(format!(
                "model returned shape {size:?}, expected [{len}, 1, {h}, {w}] logits"
            )));
        }
        let flat = out.f_reshape([len, to_i64(h * w)]).map_err(other)?;
        let mut host_out = b.output.f_narrow(0, start, len).map_err(other)?;
        cuda::tensor_copy(&mut host_out, &flat, device.is_cuda())
            .map_err(|e| ForwardFailure::classify(e.to_string()))?;
        device
            .synchronize()
            .map_err(|e| ForwardFailure::classify(e.to_string()))
    }

    /// Copies the logits of image `i` (after [`Stager::run`]).
    pub fn read(&self, i: usize) -> Result<Vec<f32>, ForwardFailure> {
        let len = self.height * self.width;
        let b = self
            .buffers
            .as_ref()
            .ok_or_else(|| ForwardFailure::Other("staging buffers not allocated".into()))?;
        let mut out = vec![0f32; len];
        cuda::read_f32(&b.output, i * len, &mut out).map_err(other)?;
        Ok(out)
    }
}
