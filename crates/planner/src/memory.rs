//! The memory model: bytes a model's weights take, and the peak bytes one running batch adds above
//! them, per precision and batch size.
//!
//! models.md measured on an H200 that real peaks are 5–30× a weights-only estimate and grow with
//! batch size and cuDNN workspace, so the planner prefers measurements and, until it has them,
//! estimates on the safe side:
//!
//! - **Measured** (the pods' calibration for this precision): linear interpolation between measured
//!   batch sizes; below the smallest measured batch, that batch's peak (a smaller batch needs no
//!   more, so this errs on the safe side); above the largest,
//!   linear extrapolation with the steeper of the last segment's slope and the last point's
//!   bytes-per-image; and never below the largest peak measured at or below the batch size. The
//!   curve is therefore non-decreasing in the batch size even when measurements are noisy.
//! - **Hint** (`profile.activationPerImage`, an fp16 figure): `hint × batch`, doubled for fp32.
//! - **Default** (nothing known): a fixed workspace of [`DEFAULT_FIXED_INPUTS`] input images plus
//!   [`DEFAULT_PER_IMAGE_INPUTS`] input images per image in the batch, the per-image part multiplied
//!   by [`DEFAULT_FP32_PER_IMAGE_FACTOR`] at fp32. "Input image" means the fp32 input tensor (12 MiB
//!   at 3×1024×1024). At 1024×1024 this gives 6912 MiB at fp16 batch 1, 17664 MiB at batch 8 and
//!   29952 MiB at batch 16, and 17664 / 103680 MiB at fp32 batch 1 / 8: above every peak measured
//!   for the three reference models (worst: CBAM-ResUNet 6450, 9648, 21248 MiB at fp16 and 2412,
//!   74768 MiB at fp32), so a first plan made before calibration does not run out of memory.

use gpupool_api::{InputSpec, Precision};
use std::collections::BTreeMap;

/// Parameters assumed when the spec gives no `profile.parameters` and nothing was measured: more
/// than any of the reference models (31–66 M), so the first plan errs on the safe side.
pub const DEFAULT_PARAMETERS: u64 = 100_000_000;
/// Default fixed workspace, in fp32 input images (see the module docs for why this size).
pub const DEFAULT_FIXED_INPUTS: u64 = 448;
/// Default activation memory per image at fp16, in fp32 input images.
pub const DEFAULT_PER_IMAGE_INPUTS: u64 = 128;
/// How much more the default per-image activation is at fp32: the measured fp32/fp16 ratio of the
/// per-image adds at batch 8 is 5.1 (HRNet), 7.7 (CBAM-ResUNet) and 2.0 (UNet).
pub const DEFAULT_FP32_PER_IMAGE_FACTOR: u64 = 8;
/// How much more a hinted (fp16) activation is at fp32.
pub const HINT_FP32_FACTOR: u64 = 2;

/// What a memory or speed figure rests on, so plans and errors can say how far to trust it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Basis {
    /// Measured by the pods on this kind of GPU.
    Measured,
    /// From the spec's `profile` hint.
    Hint,
    /// The planner's conservative default.
    Default,
}

impl Basis {
    /// Lowercase word for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Basis::Measured => "measured",
            Basis::Hint => "hinted",
            Basis::Default => "default",
        }
    }
}

/// Bytes the weights take at `precision`, because every reservation starts with them.
///
/// Measured bytes at the same precision win; bytes measured at another precision are scaled by the
/// element-size ratio; then `parameters × bytes per element`; then [`DEFAULT_PARAMETERS`].
pub fn weights_bytes(
    parameters: Option<u64>,
    measured: &BTreeMap<Precision, u64>,
    precision: Precision,
) -> (u64, Basis) {
    let per_element = precision.bytes_per_element();
    if let Some(bytes) = measured.get(&precision) {
        return (*bytes, Basis::Measured);
    }
    if let Some((other, bytes)) = measured
        .iter()
        .find(|(p, b)| **p != Precision::Auto && **b > 0)
    {
        let scaled = u128::from(*bytes) * u128::from(per_element);
        let scaled = scaled.div_ceil(u128::from(other.bytes_per_element()));
        return (saturate(scaled), Basis::Measured);
    }
    match parameters {
        Some(p) => (p.saturating_mul(per_element), Basis::Hint),
        None => (DEFAULT_PARAMETERS * per_element, Basis::Default),
    }
}

/// Peak bytes one running batch adds above the weights, as a function of the batch size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeakCurve {
    /// Calibrated points `(batch size, peak bytes)`, sorted by batch size, one per batch size.
    Measured(Vec<(u32, u64)>),
    /// `fixed + per_image × batch`, from a hint or the default rule.
    Linear {
        /// Bytes any batch needs (workspace).
        fixed_bytes: u64,
        /// Bytes each image of the batch adds.
        per_image_bytes: u64,
        /// Whether this came from a hint or the default rule.
        basis: Basis,
    },
}

impl PeakCurve {
    /// A curve through measured `(batch, peak)` points; `None` when no point has a batch size of at
    /// least 1. Repeated batch sizes keep the largest peak (the conservative reading).
    pub fn measured(points: impl IntoIterator<Item = (u32, u64)>) -> Option<Self> {
        let mut by_batch: BTreeMap<u32, u64> = BTreeMap::new();
        for (batch, peak) in points {
            if batch >= 1 {
                let slot = by_batch.entry(batch).or_insert(peak);
                *slot = (*slot).max(peak);
            }
        }
        if by_batch.is_empty() {
            None
        } else {
            Some(Self::Measured(by_batch.into_iter().collect()))
        }
    }

    /// The estimate used when this precision has not been measured (see the module docs).
    /// `activation_per_image` is the spec's fp16 hint in bytes.
    pub fn estimated(
        precision: Precision,
        input: &InputSpec,
        activation_per_image: Option<u64>,
    ) -> Self {
        let fp32 = matches!(precision, Precision::Fp32 | Precision::Auto);
        match activation_per_image {
            Some(hint) => Self::Linear {
                fixed_bytes: 0,
                per_image_bytes: if fp32 {
                    hint.saturating_mul(HINT_FP32_FACTOR)
                } else {
                    hint
                },
                basis: Basis::Hint,
            },
            None => {
                let input_bytes = input.input_bytes();
                let factor = if fp32 {
                    DEFAULT_FP32_PER_IMAGE_FACTOR
                } else {
                    1
                };
                Self::Linear {
                    fixed_bytes: input_bytes.saturating_mul(DEFAULT_FIXED_INPUTS),
                    per_image_bytes: input_bytes
                        .saturating_mul(DEFAULT_PER_IMAGE_INPUTS)
                        .saturating_mul(factor),
                    basis: Basis::Default,
                }
            }
        }
    }

    /// What the curve rests on.
    pub fn basis(&self) -> Basis {
        match self {
            Self::Measured(_) => Basis::Measured,
            Self::Linear { basis, .. } => *basis,
        }
    }

    /// Peak bytes a batch of `batch` images adds above the weights (batch 0 is read as 1).
    pub fn bytes(&self, batch: u32) -> u64 {
        let batch = batch.max(1);
        match self {
            Self::Linear {
                fixed_bytes,
                per_image_bytes,
                ..
            } => fixed_bytes.saturating_add(per_image_bytes.saturating_mul(u64::from(batch))),
            Self::Measured(points) => measured_peak(points, batch),
        }
    }
}

/// Interpolates sorted, de-duplicated points as the module docs describe.
fn measured_peak(points: &[(u32, u64)], batch: u32) -> u64 {
    let Some(&(first_batch, first_peak)) = points.first() else {
        return 0;
    };
    if batch <= first_batch {
        return first_peak;
    }
    let mut running_max = first_peak;
    for pair in points.windows(2) {
        let ((b0, p0), (b1, p1)) = (pair[0], pair[1]);
        if batch <= b1 {
            let rise = i128::from(p1) - i128::from(p0);
            let step = i128::from(batch - b0);
            let span = i128::from(b1 - b0);
            let interpolated = i128::from(p0) + div_ceil_signed(rise * step, span);
            return running_max.max(saturate_signed(interpolated));
        }
        running_max = running_max.max(p1);
    }
    // Above the largest measured batch: extrapolate with the steeper slope.
    let (last_batch, last_peak) = points[points.len() - 1];
    let beyond = u128::from(batch - last_batch);
    let by_average = (u128::from(last_peak) * beyond).div_ceil(u128::from(last_batch));
    let by_segment = match points.len() {
        n if n >= 2 => {
            let (b0, p0) = points[n - 2];
            let rise = u128::from(last_peak.saturating_sub(p0));
            (rise * beyond).div_ceil(u128::from(last_batch - b0))
        }
        _ => 0,
    };
    saturate(u128::from(running_max) + by_average.max(by_segment))
}

fn div_ceil_signed(numerator: i128, denominator: i128) -> i128 {
    let quotient = numerator / denominator;
    if numerator % denominator > 0 {
        quotient + 1
    } else {
        quotient
    }
}

fn saturate(value: u128) -> u64 {
    u64::try_from(value).unwrap_or(u64::MAX)
}

fn saturate_signed(value: i128) -> u64 {
    if value <= 0 {
        0
    } else {
        saturate(value.unsigned_abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn weights_prefer_measured_then_scaled_then_parameters_then_default() {
        let none = BTreeMap::new();
        assert_eq!(
            weights_bytes(Some(65_846_401), &none, Precision::Fp16),
            (131_692_802, Basis::Hint)
        );
        assert_eq!(
            weights_bytes(Some(52_072_673), &none, Precision::Fp32),
            (208_290_692, Basis::Hint)
        );
        assert_eq!(
            weights_bytes(None, &none, Precision::Bf16),
            (200_000_000, Basis::Default)
        );
        let measured = BTreeMap::from([(Precision::Fp16, 62_084_738)]);
        assert_eq!(
            weights_bytes(Some(1), &measured, Precision::Fp16),
            (62_084_738, Basis::Measured)
        );
        assert_eq!(
            weights_bytes(Some(1), &measured, Precision::Fp32),
            (124_169_476, Basis::Measured)
        );
    }

    #[test]
    fn measured_curve_interpolates_between_points() {
        // CBAM-ResUNet fp16: batch 1, 8, 16.
        let curve = PeakCurve::measured([(1, 6450 * MIB), (8, 9648 * MIB), (16, 21248 * MIB)])
            .expect("points");
        assert_eq!(curve.bytes(1), 6450 * MIB);
        assert_eq!(curve.bytes(8), 9648 * MIB);
        assert_eq!(curve.bytes(16), 21248 * MIB);
        // Batch 4 is 3/7 of the way from 6450 to 9648 MiB.
        assert_eq!(curve.bytes(4), 6450 * MIB + (3 * 3198 * MIB).div_ceil(7));
        assert_eq!(curve.bytes(12), (9648 + 5800) * MIB);
        assert_eq!(curve.basis(), Basis::Measured);
    }

    #[test]
    fn measured_curve_below_and_above_the_measured_range() {
        let curve = PeakCurve::measured([(4, 4000), (8, 6000)]).expect("points");
        assert_eq!(
            curve.bytes(1),
            4000,
            "below the smallest point: that point's peak"
        );
        assert_eq!(curve.bytes(0), 4000);
        // Last segment slope 500/image; last average 750/image: the steeper wins.
        assert_eq!(curve.bytes(10), 6000 + 2 * 750);
        let single = PeakCurve::measured([(1, 627)]).expect("point");
        assert_eq!(single.bytes(8), 627 * 8, "one point: proportional");
    }

    #[test]
    fn measured_curve_never_decreases_with_noisy_points() {
        let curve =
            PeakCurve::measured([(1, 100), (2, 50), (4, 200), (4, 150), (0, 9)]).expect("points");
        assert_eq!(
            curve,
            PeakCurve::Measured(vec![(1, 100), (2, 50), (4, 200)])
        );
        let values: Vec<u64> = (1..=12).map(|b| curve.bytes(b)).collect();
        assert!(values.windows(2).all(|w| w[0] <= w[1]), "{values:?}");
        assert_eq!(
            curve.bytes(2),
            100,
            "never below a smaller batch's measured peak"
        );
        assert!(PeakCurve::measured([(0, 5)]).is_none());
    }

    #[test]
    fn hint_scales_by_batch_and_doubles_for_fp32() {
        let input = InputSpec::default();
        let fp16 = PeakCurve::estimated(Precision::Fp16, &input, Some(300 * MIB));
        assert_eq!(fp16.bytes(8), 2400 * MIB);
        let fp32 = PeakCurve::estimated(Precision::Fp32, &input, Some(300 * MIB));
        assert_eq!(fp32.bytes(8), 4800 * MIB);
        assert_eq!(fp32.basis(), Basis::Hint);
    }

    #[test]
    fn default_rule_covers_every_reference_measurement() {
        let input = InputSpec::default();
        assert_eq!(input.input_bytes(), 12 * MIB);
        let fp16 = PeakCurve::estimated(Precision::Fp16, &input, None);
        let fp32 = PeakCurve::estimated(Precision::Fp32, &input, None);
        assert_eq!(fp16.bytes(1), 6912 * MIB);
        assert_eq!(fp16.bytes(8), 17664 * MIB);
        assert_eq!(fp16.bytes(16), 29952 * MIB);
        assert_eq!(fp32.bytes(1), 17664 * MIB);
        assert_eq!(fp32.bytes(8), 103680 * MIB);
        // models.md, H200: (precision curve, batch, [HRNet, CBAM-ResUNet, UNet] MiB).
        let table = [
            (&fp16, 1, [804, 6450, 5697]),
            (&fp16, 8, [2506, 9648, 8576]),
            (&fp16, 16, [9399, 21248, 17152]),
            (&fp32, 1, [627, 2412, 2144]),
            (&fp32, 8, [12695, 74768, 17152]),
        ];
        for (curve, batch, peaks) in table {
            for peak in peaks {
                assert!(
                    curve.bytes(batch) >= peak * MIB,
                    "batch {batch}: {peak} MiB"
                );
            }
        }
        assert_eq!(fp16.basis(), Basis::Default);
    }
}
