//! Host-side staging of one execution slot: a batch of pre-processed images is written into a
//! host tensor (pinned on a GPU), copied to the device without blocking on the slot's stream, run,
//! and its logits copied back (again without blocking) into a second host tensor; one
//! synchronisation per run. The buffers are reused from batch to batch, so the hot path allocates
//! no host memory. Segmentation jobs skip the float staging: their decoded pixels go up as they
//! are and their foreground probabilities come back at the image's size (`crate::image`), copied
//! into pinned host tensors without blocking, like the logits.

use crate::cuda::{self, ComputeDevice, Download, HostTensor};
use crate::image::{self, DeviceNormalisation, Normalisation, Probabilities, RawImage};
use crate::model::LoadedModel;
use crate::oom::ForwardFailure;
use crate::state::ModelEntry;
use std::ops::Range;
use tch::{Kind, Tensor};

/// What one image of a batch is, as far as staging is concerned.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Staged<'a> {
    /// A pre-processed float image written with [`Stager::stage`]; its logits are read back.
    Tensor,
    /// A decoded image, pre- and post-processed on the device; its probabilities are read back.
    Image {
        /// The pixels.
        image: &'a RawImage,
    },
}

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
    norm: Normalisation,
    /// `norm` on the device, made at the first decoded image.
    device_norm: Option<DeviceNormalisation>,
    buffers: Option<Buffers>,
    /// Per decoded image of the last batch, its probabilities on the host (pinned on a GPU, the
    /// copy queued on the slot's stream), until [`Stager::take_probabilities`].
    probabilities: Vec<Option<HostTensor<f32>>>,
}

fn other(e: impl std::fmt::Display) -> ForwardFailure {
    ForwardFailure::Other(e.to_string())
}

fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Stager {
    /// Staging for `entry`'s input size and normalisation, on a stream the calling thread made
    /// current (`stream` is its raw handle, 0 on the CPU).
    pub fn new(device: ComputeDevice, stream: usize, entry: &ModelEntry) -> Self {
        Self {
            device,
            stream,
            height: entry.height,
            width: entry.width,
            norm: entry.norm,
            device_norm: None,
            buffers: None,
            probabilities: Vec::new(),
        }
    }

    /// Makes room for batches of `n` images.
    pub fn reserve(&mut self, n: usize) -> Result<(), ForwardFailure> {
        if self.buffers.as_ref().is_some_and(|b| b.capacity >= n) {
            return Ok(());
        }
        let (h, w) = (to_i64(self.height), to_i64(self.width));
        let input = cuda::host_buffer::<f32>(&[to_i64(n), 3, h, w]).map_err(other)?;
        let output = cuda::host_buffer::<f32>(&[to_i64(n), h * w]).map_err(other)?;
        self.buffers = Some(Buffers {
            input,
            output,
            capacity: n,
        });
        Ok(())
    }

    fn buffers(&mut self) -> Result<&mut Buffers, ForwardFailure> {
        self.buffers.as_mut().ok_or_else(not_allocated)
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
        cuda::write_host(&mut b.input, i * len, image).map_err(other)
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

    /// Runs staged float images `range` through `model` and leaves their logits in the output
    /// buffer. Returns once the results are on the host.
    pub fn run(&mut self, model: &LoadedModel, range: Range<usize>) -> Result<(), ForwardFailure> {
        self.run_batch(model, range, &[])
    }

    /// Runs images `range` of a batch whose images are `kinds` (missing entries are
    /// [`Staged::Tensor`]): logits of float images go to the output buffer ([`Stager::read`]),
    /// probabilities of decoded ones are kept for [`Stager::take_probabilities`]. Returns once all
    /// are on the host.
    pub fn run_batch(
        &mut self,
        model: &LoadedModel,
        range: Range<usize>,
        kinds: &[Staged<'_>],
    ) -> Result<(), ForwardFailure> {
        let kind_of = |i: usize| kinds.get(i).copied().unwrap_or(Staged::Tensor);
        if range.clone().all(|i| matches!(kind_of(i), Staged::Tensor)) {
            return self.run_tensors(model, range);
        }
        let (device, stream, h, w) = (self.device, self.stream, self.height, self.width);
        if self.device_norm.is_none() {
            self.device_norm = Some(
                self.norm
                    .on(device.tch())
                    .map_err(ForwardFailure::classify)?,
            );
        }
        let Some(norm) = self.device_norm.as_ref() else {
            return Err(ForwardFailure::Other(
                "normalisation not on the device".into(),
            ));
        };
        let b = holding(&self.buffers, &range)?;
        let parts = range
            .clone()
            .map(|i| match kind_of(i) {
                Staged::Tensor => b
                    .input
                    .f_narrow(0, to_i64(i), 1)
                    .and_then(|t| t.f_to_device_(device.tch(), Kind::Float, true, false)),
                Staged::Image { image, .. } => {
                    image::to_model_input(image, device.tch(), (h, w), norm)
                }
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(ForwardFailure::classify)?;
        let input = Tensor::f_cat(&parts, 0).map_err(ForwardFailure::classify)?;
        drop(parts);
        let out = model.forward(&input, stream)?;
        drop(input);
        check_shape(&out, range.len(), h, w)?;
        if self.probabilities.len() < range.end {
            self.probabilities.resize_with(range.end, || None);
        }
        // Until the stream has finished, probabilities stay in downloads nobody can read; an
        // error before then leaves none of this batch's behind.
        self.probabilities[range.clone()].fill_with(|| None);
        let mut downloads = Vec::new();
        for (j, i) in range.enumerate() {
            let item = out
                .f_narrow(0, to_i64(j), 1)
                .map_err(ForwardFailure::classify)?;
            match kind_of(i) {
                Staged::Tensor => {
                    let b = holding(&self.buffers, &(i..i + 1))?;
                    let mut host = b.output.f_narrow(0, to_i64(i), 1).map_err(other)?;
                    let flat = item
                        .f_reshape([1, to_i64(h * w)])
                        .map_err(ForwardFailure::classify)?;
                    cuda::tensor_copy(&mut host, &flat, device.is_cuda())
                        .map_err(ForwardFailure::classify)?;
                }
                Staged::Image { image } => {
                    let probs = image::to_probabilities(&item, image.width(), image.height())
                        .map_err(ForwardFailure::classify)?;
                    // Allocation apart from the copy: running out of host memory is not the
                    // device's out-of-memory that `classify` would split the batch for.
                    let mut download = Download::alloc(probs.numel()).map_err(other)?;
                    download
                        .fill(&probs, device.is_cuda())
                        .map_err(ForwardFailure::classify)?;
                    downloads.push((i, download));
                }
            }
        }
        device.synchronize().map_err(ForwardFailure::classify)?;
        for (i, download) in downloads {
            self.probabilities[i] = Some(download.finish().map_err(ForwardFailure::classify)?);
        }
        Ok(())
    }

    /// Takes the probabilities of decoded image `i` (after [`Stager::run_batch`]), as they are:
    /// no copy on the slot's thread.
    pub fn take_probabilities(&mut self, i: usize) -> Result<Probabilities, ForwardFailure> {
        self.probabilities
            .get_mut(i)
            .and_then(Option::take)
            .ok_or_else(|| {
                ForwardFailure::Other(format!("no probabilities were computed for image {i}"))
            })
            .map(Probabilities::new)
    }

    fn run_tensors(
        &mut self,
        model: &LoadedModel,
        range: Range<usize>,
    ) -> Result<(), ForwardFailure> {
        let (device, stream, h, w) = (self.device, self.stream, self.height, self.width);
        let (start, len) = (to_i64(range.start), to_i64(range.len()));
        let b = holding(&self.buffers, &range)?;
        let host_in = b.input.f_narrow(0, start, len).map_err(other)?;
        let input = if device.is_cuda() {
            host_in
                .f_to_device_(device.tch(), Kind::Float, true, false)
                .map_err(other)?
        } else {
            host_in
        };
        let out = model.forward(&input, stream)?;
        check_shape(&out, range.len(), h, w)?;
        let flat = out.f_reshape([len, to_i64(h * w)]).map_err(other)?;
        let mut host_out = b.output.f_narrow(0, start, len).map_err(other)?;
        cuda::tensor_copy(&mut host_out, &flat, device.is_cuda())
            .map_err(ForwardFailure::classify)?;
        device.synchronize().map_err(ForwardFailure::classify)
    }

    /// Copies the logits of image `i` (after [`Stager::run`]).
    pub fn read(&self, i: usize) -> Result<Vec<f32>, ForwardFailure> {
        let len = self.height * self.width;
        let b = holding(&self.buffers, &(i..i + 1))?;
        let mut out = vec![0f32; len];
        cuda::read_host(&b.output, i * len, &mut out).map_err(other)?;
        Ok(out)
    }
}

fn not_allocated() -> ForwardFailure {
    ForwardFailure::Other("staging buffers not allocated".into())
}

/// The buffers, if they are allocated and hold images `range`.
fn holding<'a>(
    buffers: &'a Option<Buffers>,
    range: &Range<usize>,
) -> Result<&'a Buffers, ForwardFailure> {
    let b = buffers.as_ref().ok_or_else(not_allocated)?;
    if range.end > b.capacity {
        return Err(ForwardFailure::Other(format!(
            "range {range:?} beyond staged capacity {}",
            b.capacity
        )));
    }
    Ok(b)
}

/// The model must answer `[n, 1, h, w]` logits (any shape with `n` rows and `h × w` per row).
fn check_shape(out: &Tensor, n: usize, h: usize, w: usize) -> Result<(), ForwardFailure> {
    let size = out.size();
    if size.first() != Some(&to_i64(n)) || out.numel() != n * h * w {
        return Err(ForwardFailure::Other(format!(
            "model returned shape {size:?}, expected [{n}, 1, {h}, {w}] logits"
        )));
    }
    Ok(())
}
