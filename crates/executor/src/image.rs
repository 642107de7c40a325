//! Segmentation jobs: a decoded image in, a mask at the image's own size out, with the
//! per-pixel work done by libtorch on the model's device.
//!
//! Decoding stays on the CPU (it is branchy, sequential work), but resizing to the model's input,
//! normalising, and on the way back the sigmoid, the resize to the original size and the
//! threshold are a few million multiply-adds per image: microseconds on the GPU, tens of
//! milliseconds on a CPU core. Doing them next to the forward pass also shrinks the copies (8-bit
//! pixels up instead of 32-bit floats, an 8-bit mask down) and uses the very kernels PyTorch uses
//! (`interpolate(mode="bilinear", antialias=True)`, Pillow's filter), so a mask computed here
//! agrees with one computed in Python. On the CPU the same libtorch operations run.

use crate::cuda::HostTensor;
use tch::{Device, Kind, Tensor};

/// Interleaved samples of a decoded image, as decoders produce them.
#[derive(Debug, Clone, PartialEq)]
pub enum Samples {
    /// 8 bits per sample (0..=255).
    U8(Vec<u8>),
    /// 16 bits per sample (0..=65535), as microscope cameras write TIFFs.
    U16(Vec<u16>),
}

impl Samples {
    fn len(&self) -> usize {
        match self {
            Samples::U8(v) => v.len(),
            Samples::U16(v) => v.len(),
        }
    }
}

/// The samples where the slot uploads them from: a host tensor, pinned when there is a GPU, so
/// the upload is one asynchronous copy and the slot's thread touches no pixel. 16-bit samples
/// are kept as int16 bit patterns (tch has no uint16 tensors); `RawImage::upload` widens them on
/// the device.
#[derive(Debug)]
enum HostSamples {
    U8(HostTensor<u8>),
    U16(HostTensor<i16>),
}

/// A decoded image to segment: `height` rows of `width` pixels of `channels` interleaved samples.
///
/// Making one copies the samples into (pinned) host memory, so make it where that copy costs
/// nothing that matters: on a blocking pool, not on an async worker or a slot's thread.
#[derive(Debug)]
pub struct RawImage {
    width: u32,
    height: u32,
    channels: u8,
    samples: HostSamples,
}

/// Why a [`RawImage`] could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RawImageError {
    /// Width or height is zero.
    #[error("image is {width}×{height}: both sides must be at least 1 pixel")]
    Empty {
        /// Pixels across.
        width: u32,
        /// Pixels down.
        height: u32,
    },
    /// Only grayscale (1) and RGB (3) are taken.
    #[error("{0} channels: only 1 (grayscale) or 3 (RGB) are supported")]
    Channels(u8),
    /// The sample buffer does not hold width × height × channels samples.
    #[error("{got} samples for a {width}×{height}×{channels} image (expected {expected})")]
    Length {
        /// Pixels across.
        width: u32,
        /// Pixels down.
        height: u32,
        /// Channels.
        channels: u8,
        /// Samples expected.
        expected: usize,
        /// Samples given.
        got: usize,
    },
    /// No host memory for the samples.
    #[error("no host memory for the image's samples")]
    HostMemory(#[source] crate::cuda::ShimError),
}

impl RawImage {
    /// Checks that `samples` holds `width × height × channels` values (1 or 3 channels) and copies
    /// them into host memory the device can read asynchronously.
    pub fn new(
        width: u32,
        height: u32,
        channels: u8,
        samples: &Samples,
    ) -> Result<Self, RawImageError> {
        if width == 0 || height == 0 {
            return Err(RawImageError::Empty { width, height });
        }
        if channels != 1 && channels != 3 {
            return Err(RawImageError::Channels(channels));
        }
        let expected = width as usize * height as usize * usize::from(channels);
        if samples.len() != expected {
            return Err(RawImageError::Length {
                width,
                height,
                channels,
                expected,
                got: samples.len(),
            });
        }
        let host = RawImageError::HostMemory;
        let samples = match samples {
            Samples::U8(v) => HostSamples::U8(HostTensor::from_slice(v).map_err(host)?),
            Samples::U16(v) => {
                HostSamples::U16(HostTensor::from_slice(bytemuck::cast_slice(v)).map_err(host)?)
            }
        };
        Ok(Self {
            width,
            height,
            channels,
            samples,
        })
    }

    /// Pixels across.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Pixels down.
    pub fn height(&self) -> u32 {
        self.height
    }

    fn pixels(&self) -> usize {
        self.width as usize * self.height as usize
    }

    /// Upper bound of the device memory its pre- and post-processing use at once, beyond the
    /// batch's measured peak: the uploaded samples, their float copy and its resized, normalised
    /// result on the way in; probabilities, their resized copy and the mask on the way out.
    pub(crate) fn scratch_bytes(&self, model_pixels: usize) -> u64 {
        let c = usize::from(self.channels);
        let sample = match self.samples {
            HostSamples::U8(_) => 1,
            HostSamples::U16(_) => 2 + 4, // uploaded as int16, widened to int32 (see `upload`)
        };
        let inward = self.pixels() * c * (sample + 4 + 4) + model_pixels * 3 * 4 * 2;
        let outward = model_pixels * 4 + self.pixels() * (4 + 4 + 1);
        inward.max(outward) as u64
    }

    /// The samples as a float tensor of sample values (not yet scaled), `[channels, height,
    /// width]`, on `device`, and the largest sample value (255 or 65535).
    fn upload(&self, device: Device) -> Result<(Tensor, f64), tch::TchError> {
        let (h, w, c) = (
            i64::from(self.height),
            i64::from(self.width),
            i64::from(self.channels),
        );
        // From pinned memory the copy is asynchronous on the slot's stream (libtorch keeps the
        // pinned block from reuse until it has run, even if the request is dropped first).
        let non_blocking = device.is_cuda();
        let (hwc, max) = match &self.samples {
            HostSamples::U8(t) => (t.to_device_as(device, Kind::Float, non_blocking)?, 255.0),
            // The int16 bit patterns become int32 on the device, where masking off the sign
            // extension restores 0..65535 exactly: half the bytes of floats over the bus, and no
            // widening pass on the host.
            HostSamples::U16(t) => (
                t.to_device_as(device, Kind::Int, non_blocking)?
                    .f_bitwise_and_(0xFFFF)?
                    .f_to_kind(Kind::Float)?,
                65535.0,
            ),
        };
        Ok((hwc.f_view([h, w, c])?.f_permute([2, 0, 1])?, max))
    }
}

/// Mean and standard deviation of each RGB channel, as the model was trained with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Normalisation {
    pub mean: [f64; 3],
    pub std: [f64; 3],
}

/// A [`Normalisation`] as `[1, 3, 1, 1]` float tensors on one device: made once per slot, not
/// uploaded again for every image.
pub(crate) struct DeviceNormalisation {
    mean: Tensor,
    std: Tensor,
}

impl Normalisation {
    /// The normalisation's tensors on `device`.
    pub fn on(&self, device: Device) -> Result<DeviceNormalisation, tch::TchError> {
        let put = |v: [f64; 3]| {
            Tensor::f_from_slice(&v.map(|x| x as f32))?
                .f_to(device)?
                .f_view([1, 3, 1, 1])
        };
        Ok(DeviceNormalisation {
            mean: put(self.mean)?,
            std: put(self.std)?,
        })
    }
}

fn resize(x: &Tensor, height: i64, width: i64) -> Result<Tensor, tch::TchError> {
    let size = x.size();
    if size[size.len() - 2..] == [height, width] {
        return Ok(x.shallow_clone());
    }
    // What torch.nn.functional.interpolate(mode="bilinear", antialias=True) calls.
    x.f_internal_upsample_bilinear2d_aa([height, width], false, None, None)
}

/// The model input for `image`: resized to `height × width` (bilinear, antialiased when
/// shrinking, like Pillow), scaled to 0..1, grayscale repeated to three channels, normalised;
/// `[1, 3, H, W]` float on `device` (the one `norm` lives on). The operations and their order are
/// those of tests/models/reference.py, so on the same device the result is the same to the bit.
pub(crate) fn to_model_input(
    image: &RawImage,
    device: Device,
    (height, width): (usize, usize),
    norm: &DeviceNormalisation,
) -> Result<Tensor, tch::TchError> {
    let (h, w) = (height as i64, width as i64);
    let (chw, max) = image.upload(device)?;
    let resized = resize(&chw.f_unsqueeze(0)?, h, w)?.f_div_scalar(max)?;
    let rgb = if image.channels == 1 {
        resized.f_expand([1, 3, h, w], false)?
    } else {
        resized
    };
    rgb.f_sub(&norm.mean)?.f_div(&norm.std)?.f_contiguous()
}

/// Foreground probabilities of one image, row-major, as they came back from the device: the
/// host tensor the slot copied them into (pinned on a GPU), handed over without another copy.
/// Reads as a `[f32]`.
#[derive(Debug)]
pub struct Probabilities(HostTensor<f32>);

impl Probabilities {
    /// Wraps probabilities already on the host.
    pub(crate) fn new(host: HostTensor<f32>) -> Self {
        Self(host)
    }

    /// A copy of `values` (tests and callers that build a [`Segmentation`] themselves).
    pub fn from_slice(values: &[f32]) -> Result<Self, crate::cuda::ShimError> {
        HostTensor::from_slice(values).map(Self)
    }
}

impl std::ops::Deref for Probabilities {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        self.0.as_slice()
    }
}

impl PartialEq for Probabilities {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

/// A segmented image: foreground probabilities at the image's own size, row-major, and the
/// threshold that makes its mask.
#[derive(Debug, PartialEq)]
pub struct Segmentation {
    /// Pixels across (the uploaded image's).
    pub width: u32,
    /// Pixels down.
    pub height: u32,
    /// Foreground probability of each pixel.
    pub probabilities: Probabilities,
    /// Probability above which a pixel is foreground.
    pub threshold: f32,
    /// How many images the forward pass that produced it ran (after any out-of-memory split).
    pub batch_size: u32,
}

impl Segmentation {
    /// The foreground mask: 1 where the probability is above the threshold, else 0 — the
    /// comparison PyTorch makes (float32 against the threshold as float32), made here on the
    /// CPU, by whoever needs the mask, off the slot's thread.
    pub fn mask(&self) -> Vec<u8> {
        self.probabilities
            .iter()
            .map(|&p| u8::from(p > self.threshold))
            .collect()
    }
}

/// Sigmoid and resize to `width × height` (bilinear, antialiased when shrinking): the original
/// service's post-processing up to the threshold, for one image's `[1, 1, H, W]` logits. Returns
/// the probabilities, flat and row-major, on the logits' device; the threshold is applied on the
/// CPU ([`Segmentation::mask`]), so only the probabilities cross the bus.
pub(crate) fn to_probabilities(
    logits: &Tensor,
    width: u32,
    height: u32,
) -> Result<Tensor, tch::TchError> {
    resize(
        &logits.f_to_kind(Kind::Float)?.f_sigmoid()?,
        i64::from(height),
        i64::from(width),
    )?
    .f_flatten(0, -1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMAGENET: Normalisation = Normalisation {
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
    };

    /// The model input for `image` at `size`, computed on the CPU with ImageNet normalisation.
    fn on_cpu(image: &RawImage, size: (usize, usize)) -> Tensor {
        to_model_input(image, Device::Cpu, size, &IMAGENET.on(Device::Cpu).unwrap()).unwrap()
    }

    #[test]
    fn raw_images_are_checked() {
        assert_eq!(
            RawImage::new(0, 4, 3, &Samples::U8(vec![])).unwrap_err(),
            RawImageError::Empty {
                width: 0,
                height: 4
            }
        );
        assert_eq!(
            RawImage::new(2, 2, 4, &Samples::U8(vec![0; 16])).unwrap_err(),
            RawImageError::Channels(4)
        );
        assert!(matches!(
            RawImage::new(2, 2, 3, &Samples::U8(vec![0; 11])),
            Err(RawImageError::Length {
                expected: 12,
                got: 11,
                ..
            })
        ));
    }

    #[test]
    fn uniform_image_normalises_to_the_expected_constant() {
        // A flat 8-bit gray image of value 255 at any size: every pixel of channel c becomes
        // (1 - mean[c]) / std[c] after resizing (resizing a constant keeps it).
        let image = RawImage::new(37, 21, 1, &Samples::U8(vec![255; 37 * 21])).unwrap();
        let x = on_cpu(&image, (16, 24));
        assert_eq!(x.size(), [1, 3, 16, 24]);
        for c in 0..3 {
            let expected = (1.0 - IMAGENET.mean[c]) / IMAGENET.std[c];
            let plane = x.get(0).get(c as i64);
            let (lo, hi) = (plane.min().double_value(&[]), plane.max().double_value(&[]));
            assert!((lo - expected).abs() < 1e-5 && (hi - expected).abs() < 1e-5);
        }
    }

    #[test]
    fn every_sixteen_bit_value_is_uploaded_exactly() {
        // All 65536 values, the upper half of which are negative as int16 bit patterns.
        let samples: Vec<u16> = (0..=u16::MAX).collect();
        let image = RawImage::new(256, 256, 1, &Samples::U16(samples.clone())).unwrap();
        let (chw, max) = image.upload(Device::Cpu).unwrap();
        assert_eq!(
            (chw.size(), chw.kind(), max),
            (vec![1, 256, 256], Kind::Float, 65535.0)
        );
        let got = Vec::<f32>::try_from(chw.flatten(0, -1)).unwrap();
        let want: Vec<f32> = samples.iter().map(|&s| f32::from(s)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn sixteen_bit_and_rgb_keep_channel_order() {
        // Left half red at full 16-bit scale, right half blue at half scale.
        let (w, h) = (8u32, 4u32);
        let mut samples = Vec::new();
        for _ in 0..h {
            for x in 0..w {
                samples.extend(if x < 4 { [65535, 0, 0] } else { [0, 0, 32768] });
            }
        }
        let image = RawImage::new(w, h, 3, &Samples::U16(samples)).unwrap();
        let x = on_cpu(&image, (4, 8));
        let at = |c: i64, col: i64| x.double_value(&[0, c, 0, col]);
        let norm = |v: f64, c: usize| (v - IMAGENET.mean[c]) / IMAGENET.std[c];
        assert!((at(0, 0) - norm(1.0, 0)).abs() < 1e-5);
        assert!((at(2, 0) - norm(0.0, 2)).abs() < 1e-5);
        assert!((at(2, 7) - norm(32768.0 / 65535.0, 2)).abs() < 1e-5);
    }

    #[test]
    fn mask_is_thresholded_probability_at_the_original_size() {
        // Logits: left half +4 (p ≈ 0.982), right half -4; shrunk to 6×3.
        let logits = Tensor::from_slice(
            &(0..64)
                .map(|i| if i % 8 < 4 { 4.0f32 } else { -4.0 })
                .collect::<Vec<_>>(),
        )
        .view([1, 1, 8, 8]);
        let probs = to_probabilities(&logits, 6, 3).unwrap();
        let segmentation = |threshold| Segmentation {
            width: 6,
            height: 3,
            probabilities: Probabilities::from_slice(&Vec::<f32>::try_from(&probs).unwrap())
                .unwrap(),
            threshold,
            batch_size: 1,
        };
        let s = segmentation(0.5);
        assert_eq!(s.probabilities.len(), 18);
        let mask = s.mask();
        for row in mask.chunks(6) {
            assert_eq!(row, [1, 1, 1, 0, 0, 0]);
        }
        assert!((s.probabilities[0] - 0.982).abs() < 1e-3);
        // A higher threshold than every probability leaves nothing.
        assert!(segmentation(0.99).mask().iter().all(|&m| m == 0));
    }
}
