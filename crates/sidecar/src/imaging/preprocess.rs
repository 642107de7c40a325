//! Turning a decoded image into the model's input tensor: RGB, resized, scaled, normalised.
//!
//! One pass over the image: each input row is read once, resampled horizontally into a small
//! ring of rows (see `resample`), and every output row is normalised straight into its place
//! in the three CHW planes. Scaling to `[0, 1]` and normalising fold into one multiply-add per
//! value: `v * (1 / (max * std)) - mean / std`, where `max` is 255 or 65535. Gray images are
//! resampled once and written to all three planes, which is what converting to RGB first
//! would give.
//!
//! Resize: aspect ratio ignored, PIL's bilinear filter (antialiased when shrinking), as the
//! original service's PIL pipeline did; see `resample` for the exact semantics.

use thiserror::Error;

use super::decode::{DecodedImage, Pixels};
use super::resample::{resample, Sample};

/// The input a model expects: its spatial size and the per-channel normalisation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InputGeometry {
    width: u32,
    height: u32,
    mean: [f32; 3],
    std: [f32; 3],
}

/// Why an [`InputGeometry`] was refused; checked once, at configuration time.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum GeometryError {
    /// A model input needs at least one pixel.
    #[error("model input size {width}x{height} must be at least 1x1")]
    ZeroSize {
        /// Requested width.
        width: u32,
        /// Requested height.
        height: u32,
    },
    /// `3 * width * height` does not fit in memory's address space.
    #[error("model input size {width}x{height} is too large")]
    TooLarge {
        /// Requested width.
        width: u32,
        /// Requested height.
        height: u32,
    },
    /// Normalisation needs finite means and finite, strictly positive standard deviations.
    #[error("normalisation mean {mean:?} / std {std:?} must be finite with std > 0")]
    BadNormalisation {
        /// Requested means.
        mean: [f32; 3],
        /// Requested standard deviations.
        std: [f32; 3],
    },
}

/// The output buffer handed to [`fill_model_input`] does not have `3 * width * height` values.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[error("model input buffer holds {got} values, expected {expected}")]
pub struct BufferSizeMismatch {
    /// `3 * width * height` of the geometry.
    pub expected: usize,
    /// Length of the buffer given.
    pub got: usize,
}

impl InputGeometry {
    /// ImageNet channel means, used by all three spheroid models.
    pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
    /// ImageNet channel standard deviations, used by all three spheroid models.
    pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

    /// Checks and builds a geometry; invalid ones are refused here so that pre-processing
    /// itself cannot fail.
    pub fn new(
        width: u32,
        height: u32,
        mean: [f32; 3],
        std: [f32; 3],
    ) -> Result<Self, GeometryError> {
        if width == 0 || height == 0 {
            return Err(GeometryError::ZeroSize { width, height });
        }
        let fits = (width as usize)
            .checked_mul(height as usize)
            .and_then(|n| n.checked_mul(3))
            .is_some_and(|n| n <= isize::MAX as usize / std::mem::size_of::<f32>());
        if !fits {
            return Err(GeometryError::TooLarge { width, height });
        }
        let good =
            mean.iter().all(|m| m.is_finite()) && std.iter().all(|s| s.is_finite() && *s > 0.0);
        if !good {
            return Err(GeometryError::BadNormalisation { mean, std });
        }
        Ok(InputGeometry {
            width,
            height,
            mean,
            std,
        })
    }

    /// The spheroid models' input: 1024×1024 with ImageNet normalisation (see models.md).
    pub fn spheroid() -> Self {
        InputGeometry {
            width: 1024,
            height: 1024,
            mean: Self::IMAGENET_MEAN,
            std: Self::IMAGENET_STD,
        }
    }

    /// Model input width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Model input height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Per-channel means subtracted after scaling to `[0, 1]`.
    pub fn mean(&self) -> [f32; 3] {
        self.mean
    }

    /// Per-channel standard deviations divided by after subtracting the mean.
    pub fn std(&self) -> [f32; 3] {
        self.std
    }

    /// Number of `f32` values of one input: `3 * width * height`.
    pub fn len(&self) -> usize {
        3 * self.width as usize * self.height as usize
    }

    /// Always false: a geometry has at least one pixel. Present because `len` is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Builds the model input for `image`: a CHW `f32` buffer of `geometry.len()` values.
pub fn to_model_input(image: &DecodedImage, geometry: &InputGeometry) -> Vec<f32> {
    let mut out = vec![0.0; geometry.len()];
    write_planes(image, geometry, &mut out);
    out
}

/// Like [`to_model_input`], writing into `out` (e.g. one slot of a batch tensor) instead of
/// allocating.
pub fn fill_model_input(
    image: &DecodedImage,
    geometry: &InputGeometry,
    out: &mut [f32],
) -> Result<(), BufferSizeMismatch> {
    if out.len() != geometry.len() {
        return Err(BufferSizeMismatch {
            expected: geometry.len(),
            got: out.len(),
        });
    }
    write_planes(image, geometry, out);
    Ok(())
}

fn write_planes(image: &DecodedImage, geometry: &InputGeometry, out: &mut [f32]) {
    match &image.pixels {
        Pixels::Gray8(i) => planes::<u8, 1>(i.as_raw(), i.dimensions(), 255.0, geometry, out),
        Pixels::Rgb8(i) => planes::<u8, 3>(i.as_raw(), i.dimensions(), 255.0, geometry, out),
        Pixels::Gray16(i) => planes::<u16, 1>(i.as_raw(), i.dimensions(), 65535.0, geometry, out),
        Pixels::Rgb16(i) => planes::<u16, 3>(i.as_raw(), i.dimensions(), 65535.0, geometry, out),
    }
}

fn planes<S: Sample, const C: usize>(
    src: &[S],
    (in_w, in_h): (u32, u32),
    max: f32,
    geometry: &InputGeometry,
    out: &mut [f32],
) {
    let (w, h) = (geometry.width as usize, geometry.height as usize);
    let plane = w * h;
    let scale: [f32; 3] = std::array::from_fn(|c| 1.0 / (max * geometry.std[c]));
    let offset: [f32; 3] = std::array::from_fn(|c| -geometry.mean[c] / geometry.std[c]);
    resample::<S, C>(src, (in_w as usize, in_h as usize), (w, h), |y, row| {
        for c in 0..3 {
            let from = if C == 1 { 0 } else { c };
            let start = c * plane + y * w;
            let Some(dst) = out.get_mut(start..start + w) else {
                return;
            };
            for (d, px) in dst.iter_mut().zip(row.chunks_exact(C)) {
                *d = px[from] * scale[c] + offset[c];
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imaging::decode::{Gray16Image, Rgb16Image};
    use image::{GrayImage, Luma, Rgb, RgbImage};
    use proptest::prelude::*;

    fn decoded(pixels: Pixels) -> DecodedImage {
        DecodedImage::for_tests(pixels)
    }

    fn geometry(w: u32, h: u32) -> InputGeometry {
        InputGeometry::new(
            w,
            h,
            InputGeometry::IMAGENET_MEAN,
            InputGeometry::IMAGENET_STD,
        )
        .expect("valid geometry")
    }

    fn expected(v: f32, c: usize) -> f32 {
        (v - InputGeometry::IMAGENET_MEAN[c]) / InputGeometry::IMAGENET_STD[c]
    }

    #[test]
    fn constant_colour_normalises_per_channel_in_chw_order() {
        let image = decoded(Pixels::Rgb8(RgbImage::from_pixel(
            30,
            20,
            Rgb([255, 0, 51]),
        )));
        let out = to_model_input(&image, &geometry(8, 4));
        assert_eq!(out.len(), 3 * 8 * 4);
        for (c, v) in [1.0, 0.0, 0.2].into_iter().enumerate() {
            for got in &out[c * 32..(c + 1) * 32] {
                assert!((got - expected(v, c)).abs() < 1e-5, "channel {c}: {got}");
            }
        }
    }

    #[test]
    fn gray_feeds_all_three_channels() {
        let gray = GrayImage::from_fn(9, 7, |x, y| Luma([(x * 20 + y) as u8]));
        let rgb = RgbImage::from_fn(9, 7, |x, y| {
            let v = gray.get_pixel(x, y).0[0];
            Rgb([v, v, v])
        });
        let g = geometry(5, 11);
        let from_gray = to_model_input(&decoded(Pixels::Gray8(gray)), &g);
        let from_rgb = to_model_input(&decoded(Pixels::Rgb8(rgb)), &g);
        for (a, b) in from_gray.iter().zip(&from_rgb) {
            assert!((a - b).abs() < 1e-5);
        }
    }

    #[test]
    fn sixteen_bit_uses_the_full_range() {
        let g = geometry(4, 4);
        let white16 = to_model_input(
            &decoded(Pixels::Gray16(Gray16Image::from_pixel(3, 3, Luma([65535])))),
            &g,
        );
        let white8 = to_model_input(
            &decoded(Pixels::Gray8(GrayImage::from_pixel(3, 3, Luma([255])))),
            &g,
        );
        assert!(white16
            .iter()
            .zip(&white8)
            .all(|(a, b)| (a - b).abs() < 1e-5));
        // 1000/65535 keeps its precision: no rounding to the nearest 8-bit step (3.9 -> 4).
        let dim = to_model_input(
            &decoded(Pixels::Rgb16(Rgb16Image::from_pixel(
                2,
                2,
                Rgb([1000, 1000, 1000]),
            ))),
            &g,
        );
        assert!((dim[0] - expected(1000.0 / 65535.0, 0)).abs() < 1e-5);
    }

    #[test]
    fn fill_checks_the_buffer_length() {
        let image = decoded(Pixels::Gray8(GrayImage::new(2, 2)));
        let g = geometry(3, 3);
        let mut short = vec![0.0; 26];
        assert_eq!(
            fill_model_input(&image, &g, &mut short),
            Err(BufferSizeMismatch {
                expected: 27,
                got: 26
            })
        );
        let mut exact = vec![f32::NAN; 27];
        assert_eq!(fill_model_input(&image, &g, &mut exact), Ok(()));
        assert_eq!(exact, to_model_input(&image, &g));
    }

    #[test]
    fn geometry_is_validated() {
        let (m, s) = (InputGeometry::IMAGENET_MEAN, InputGeometry::IMAGENET_STD);
        assert!(matches!(
            InputGeometry::new(0, 5, m, s),
            Err(GeometryError::ZeroSize { .. })
        ));
        assert!(matches!(
            InputGeometry::new(5, 5, m, [0.2, 0.0, 0.2]),
            Err(GeometryError::BadNormalisation { .. })
        ));
        assert!(matches!(
            InputGeometry::new(5, 5, [f32::NAN, 0.0, 0.0], s),
            Err(GeometryError::BadNormalisation { .. })
        ));
        assert_eq!(
            InputGeometry::new(1024, 1024, m, s),
            Ok(InputGeometry::spheroid())
        );
    }

    fn any_image() -> impl Strategy<Value = DecodedImage> {
        (1u32..48, 1u32..48, 0u8..4, any::<u64>()).prop_map(|(w, h, kind, seed)| {
            let v = move |x: u32, y: u32, c: u64| {
                (seed ^ (u64::from(x) * 0x9e37_79b9 + u64::from(y) * 0x85eb_ca6b + c * 0xc2b2_ae35))
                    .wrapping_mul(0x2545_f491_4f6c_dd1d)
                    >> 40
            };
            let pixels = match kind {
                0 => Pixels::Gray8(GrayImage::from_fn(w, h, |x, y| Luma([v(x, y, 0) as u8]))),
                1 => Pixels::Rgb8(RgbImage::from_fn(w, h, |x, y| {
                    Rgb([v(x, y, 0) as u8, v(x, y, 1) as u8, v(x, y, 2) as u8])
                })),
                2 => Pixels::Gray16(Gray16Image::from_fn(w, h, |x, y| Luma([v(x, y, 0) as u16]))),
                _ => Pixels::Rgb16(Rgb16Image::from_fn(w, h, |x, y| {
                    Rgb([v(x, y, 0) as u16, v(x, y, 1) as u16, v(x, y, 2) as u16])
                })),
            };
            decoded(pixels)
        })
    }

    proptest! {
        #[test]
        fn output_is_always_3hw_and_finite(
            image in any_image(),
            w in 1u32..80,
            h in 1u32..80,
            mean in prop::array::uniform3(0.0f32..1.0),
            std in prop::array::uniform3(0.01f32..1.0),
        ) {
            let g = InputGeometry::new(w, h, mean, std).expect("valid geometry");
            let out = to_model_input(&image, &g);
            prop_assert_eq!(out.len(), 3 * w as usize * h as usize);
            prop_assert!(out.iter().all(|v| v.is_finite()));
            // Resampling is a convex combination: values stay within the normalised range.
            for (c, plane) in out.chunks_exact(out.len() / 3).enumerate() {
                let (lo, hi) = (-mean[c] / std[c], (1.0 - mean[c]) / std[c]);
                prop_assert!(plane.iter().all(|v| *v >= lo - 1e-3 && *v <= hi + 1e-3));
            }
        }
    }
}
