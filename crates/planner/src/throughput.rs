//! The throughput model: images per second one model reaches on the whole GPU with a given batch
//! size and number of execution slots.
//!
//! - **Measured** (the pods' calibration for this precision): one slot runs a batch of `b` in the
//!   measured median latency, so it serves `b × 1000 / latency_ms` images per second. Latency is
//!   interpolated linearly between measured batch sizes; below the smallest one it is that batch's
//!   latency (a smaller batch is assumed no faster); above the largest one throughput stays at the
//!   largest batch's (no gain is assumed that was not seen).
//! - **Estimated** (not measured yet): a relative figure. [`ESTIMATED_IMAGES_PER_SECOND`] at fp16,
//!   batch 1, 1024×1024, inversely proportional to the pixel count, ×[`ESTIMATED_FP32_FACTOR`] at
//!   fp32; a batch of `b` is [`batch_speedup`]`(b)` times faster, rising with diminishing returns.
//!   models.md: batch 8 over batch 1 gave 1.1–3.4×, batch 16 over 8 at most 1.07×.
//!
//! Either way, more slots (CUDA streams) help while a batch leaves the GPU idle: [`slot_gain`]
//! grows with diminishing returns up to [`MAX_USEFUL_SLOTS`] and shrinks as batches grow, because
//! models.md measured streams as "a smaller lever" than batching. And a lone slot that cannot find
//! a full batch queued when its batch ends (fewer than two batches' worth of users) leaves the GPU
//! idle while the answers go back and the users send again, and no batch holds more than its
//! slot's share of the users ([`closed_loop_images_per_second`]); a second slot's batch runs
//! meanwhile. Only the relative order of the estimates matters for planning; the pods'
//! measurements replace them.
//!
//! Known bias: the turnaround is charged as if it idled the whole GPU, which it did with one model
//! (where it was measured); in a pool of several models the others' batches may fill it, so there
//! the estimate favours a second slot a little more than it should (a second slot was never
//! measured slower).

use gpupool_api::{InputSpec, Precision};
use std::collections::BTreeMap;

use crate::memory::Basis;

/// Assumed images per second of an unmeasured model at fp16, batch 1, one slot, 1024×1024 input
/// (between the 25–75 images/s the reference models reach at fp32 batch 1 on an H200).
pub const ESTIMATED_IMAGES_PER_SECOND: f64 = 30.0;
/// Assumed speed of fp32 relative to fp16 for unmeasured models (measured at batch 8: 0.69–0.78).
pub const ESTIMATED_FP32_FACTOR: f64 = 0.75;
/// The part of a batch's work assumed not to shrink with batching (Amdahl's law): the estimated
/// speedup of batch `b` is `b / (1 + (b - 1) × 0.25)`, at most 4×.
pub const BATCH_SERIAL_FRACTION: f64 = 0.25;
/// Slots beyond this many add nothing to the estimate, so the planner never plans more per model.
pub const MAX_USEFUL_SLOTS: u32 = 4;

/// Device time a lone slot loses per batch when its batch holds every user of the model: the
/// answers go back and the users' next requests arrive before another batch can start. Measured on
/// the H200 (docs/benchmarks.md, sixth session): one slot of 8 with 8 closed-loop clients took
/// 3.4–3.8 ms per batch more than its calibrated latency, for each of the three models, while two
/// slots of 4 ran at the batch-4 calibration or faster.
pub const TURNAROUND_MS: f64 = 3.5;

/// Images per second of `slots` slots of up to `batch` images serving `users` closed-loop users
/// (each waits for its answer before sending again): a batch never holds more than a slot's share
/// of the users (`users / slots`, rounded up, at least one), and a lone slot waits
/// [`TURNAROUND_MS`] per batch unless a full batch's worth of other users is queued when its batch
/// ends (`users ≥ 2 × batch`); with the batcher's delay it waits for the returning users to fill
/// the batch rather than run it short.
pub fn closed_loop_images_per_second(
    curve: &SpeedCurve,
    batch: u32,
    slots: u32,
    users: u32,
) -> f64 {
    let slots = slots.max(1);
    let filled = batch.clamp(1, users.div_ceil(slots).max(1));
    let rate = curve.images_per_second(filled, slots);
    if slots > 1 || users >= filled.saturating_mul(2) || rate <= 0.0 {
        return rate;
    }
    let images = f64::from(filled);
    images / (images / rate + TURNAROUND_MS / 1000.0)
}

/// Estimated speedup of one batch of `batch` images over `batch` single images, because batching
/// is the main lever and has diminishing returns.
pub fn batch_speedup(batch: u32) -> f64 {
    let b = f64::from(batch.max(1));
    b / (1.0 + (b - 1.0) * BATCH_SERIAL_FRACTION)
}

/// Throughput gain of `slots` concurrent batches of `batch` images over one: 1, 1.5, 1.75, 1.875
/// for 1–4 slots at batch 1 (each extra stream fills half of what the last left idle), divided
/// down as batches grow (`1 + (gain - 1) / batch`), and flat beyond [`MAX_USEFUL_SLOTS`].
pub fn slot_gain(slots: u32, batch: u32) -> f64 {
    let useful = slots.clamp(1, MAX_USEFUL_SLOTS);
    let at_batch_one = 2.0 - 0.5f64.powi(useful as i32 - 1);
    1.0 + (at_batch_one - 1.0) / f64::from(batch.max(1))
}

/// Images per second of one model as a function of batch size and slots.
#[derive(Debug, Clone, PartialEq)]
pub enum SpeedCurve {
    /// Calibrated `(batch size, median latency ms)`, sorted by batch size, one per batch size.
    Measured(Vec<(u32, f64)>),
    /// Relative estimate: one slot's images per second at batch 1.
    Estimated {
        /// Images per second at batch 1 with one slot.
        batch_one_images_per_second: f64,
    },
}

impl SpeedCurve {
    /// A curve through measured `(batch, latency_ms)` points; points with batch 0 or a latency that
    /// is not a positive finite number are ignored; `None` if none is left. Repeated batch sizes
    /// keep the slowest latency.
    pub fn measured(points: impl IntoIterator<Item = (u32, f64)>) -> Option<Self> {
        let mut by_batch: BTreeMap<u32, f64> = BTreeMap::new();
        for (batch, latency) in points {
            if batch >= 1 && latency.is_finite() && latency > 0.0 {
                let slot = by_batch.entry(batch).or_insert(latency);
                *slot = slot.max(latency);
            }
        }
        if by_batch.is_empty() {
            None
        } else {
            Some(Self::Measured(by_batch.into_iter().collect()))
        }
    }

    /// The relative estimate for a model not measured at `precision` (see the module docs).
    pub fn estimated(precision: Precision, input: &InputSpec) -> Self {
        let pixels = f64::from(input.width.max(1)) * f64::from(input.height.max(1));
        let precision_factor = match precision {
            Precision::Fp32 | Precision::Auto => ESTIMATED_FP32_FACTOR,
            Precision::Fp16 | Precision::Bf16 => 1.0,
        };
        Self::Estimated {
            batch_one_images_per_second: ESTIMATED_IMAGES_PER_SECOND
                * (1024.0 * 1024.0 / pixels)
                * precision_factor,
        }
    }

    /// What the curve rests on.
    pub fn basis(&self) -> Basis {
        match self {
            Self::Measured(_) => Basis::Measured,
            Self::Estimated { .. } => Basis::Default,
        }
    }

    /// Images per second with `slots` concurrent batches of `batch` images.
    pub fn images_per_second(&self, batch: u32, slots: u32) -> f64 {
        let batch = batch.max(1);
        let one_slot = match self {
            Self::Estimated {
                batch_one_images_per_second,
            } => batch_one_images_per_second * batch_speedup(batch),
            Self::Measured(points) => measured_rate(points, batch),
        };
        one_slot * slot_gain(slots, batch)
    }
}

fn measured_rate(points: &[(u32, f64)], batch: u32) -> f64 {
    let rate = |b: u32, latency: f64| f64::from(b) * 1000.0 / latency;
    let Some(&(first_batch, first_latency)) = points.first() else {
        return 0.0;
    };
    if batch <= first_batch {
        return rate(batch, first_latency);
    }
    for pair in points.windows(2) {
        let ((b0, l0), (b1, l1)) = (pair[0], pair[1]);
        if batch <= b1 {
            let t = f64::from(batch - b0) / f64::from(b1 - b0);
            return rate(batch, l0 + (l1 - l0) * t);
        }
    }
    let (last_batch, last_latency) = points[points.len() - 1];
    rate(last_batch, last_latency)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_slot_holding_every_user_pays_the_turnaround() {
        // HRNet on the H200: batch 4 in 22.0 ms, batch 8 in 37.1 ms (sixth session).
        let curve = SpeedCurve::measured([(4, 22.0), (8, 37.1)]).expect("points");
        let rate = |batch, slots, users| closed_loop_images_per_second(&curve, batch, slots, users);
        let one_of_eight = rate(8, 1, 8);
        assert!((one_of_eight - 8000.0 / (37.1 + TURNAROUND_MS)).abs() < 1e-9);
        // Two slots of 4 for the same 8 users: the turnaround hides behind the other slot.
        assert_eq!(rate(4, 2, 8), curve.images_per_second(4, 2));
        assert!(rate(4, 2, 8) > one_of_eight);
        // A full batch of other users queued meanwhile: the next batch starts at once.
        assert_eq!(rate(8, 1, 16), curve.images_per_second(8, 1));
        // Fewer than that: the next batch waits for returning users too.
        assert_eq!(rate(4, 1, 6), rate(4, 1, 4));
        assert!(rate(4, 1, 7) < curve.images_per_second(4, 1));
    }

    #[test]
    fn batches_hold_at_most_a_slots_share_of_the_users() {
        let curve = SpeedCurve::measured([(1, 10.0), (4, 22.0), (8, 37.1)]).expect("points");
        let rate = |batch, slots, users| closed_loop_images_per_second(&curve, batch, slots, users);
        // Two slots of 8 for 8 users fill batches of 4, as two slots of 4 do.
        assert_eq!(rate(8, 2, 8), rate(4, 2, 8));
        // Three users never make a batch of 8: it runs as a batch of 3, turnaround included.
        assert_eq!(rate(8, 1, 3), rate(3, 1, 3));
        assert!(rate(8, 1, 3) < curve.images_per_second(8, 1));
        assert!(rate(1, 4, 2) > 0.0, "more slots than users still serve");
    }

    #[test]
    fn batching_helps_with_diminishing_returns() {
        assert_eq!(batch_speedup(1), 1.0);
        let gains: Vec<f64> = [1, 2, 4, 8, 16, 256]
            .iter()
            .map(|b| batch_speedup(*b))
            .collect();
        assert!(gains.windows(2).all(|w| w[1] > w[0]), "{gains:?}");
        assert!(gains.iter().all(|g| *g < 4.0));
        assert!((batch_speedup(8) - 8.0 / 2.75).abs() < 1e-12);
    }

    #[test]
    fn slots_help_little_and_stop_at_four() {
        assert_eq!(slot_gain(1, 1), 1.0);
        assert_eq!(slot_gain(2, 1), 1.5);
        assert_eq!(slot_gain(4, 1), 1.875);
        assert_eq!(slot_gain(9, 1), slot_gain(4, 1));
        assert_eq!(slot_gain(2, 8), 1.0 + 0.5 / 8.0);
        assert_eq!(slot_gain(0, 0), 1.0);
    }

    #[test]
    fn measured_rate_follows_latency() {
        // UNet fp16: 109.3 img/s at batch 1, 124.2 at batch 8, 122.9 at batch 16.
        let curve = SpeedCurve::measured([
            (1, 1000.0 / 109.3),
            (8, 8000.0 / 124.2),
            (16, 16000.0 / 122.9),
        ])
        .expect("points");
        assert!((curve.images_per_second(8, 1) - 124.2).abs() < 1e-9);
        assert!((curve.images_per_second(16, 1) - 122.9).abs() < 1e-9);
        assert_eq!(
            curve.images_per_second(32, 1),
            curve.images_per_second(16, 1)
        );
        let mid = curve.images_per_second(4, 1);
        assert!(mid > 109.3 && mid < 124.2, "{mid}");
        assert_eq!(curve.basis(), Basis::Measured);
    }

    #[test]
    fn measured_rate_below_the_smallest_batch_is_proportional() {
        let curve = SpeedCurve::measured([(4, 40.0), (0, 1.0), (2, f64::NAN), (8, -1.0)])
            .expect("one valid point");
        assert_eq!(curve, SpeedCurve::Measured(vec![(4, 40.0)]));
        assert_eq!(curve.images_per_second(1, 1), 25.0);
        assert_eq!(curve.images_per_second(4, 1), 100.0);
        assert!(SpeedCurve::measured([(1, 0.0)]).is_none());
    }

    #[test]
    fn estimate_scales_with_pixels_and_precision() {
        let small = InputSpec {
            width: 512,
            height: 512,
            ..InputSpec::default()
        };
        let big = SpeedCurve::estimated(Precision::Fp16, &InputSpec::default());
        assert_eq!(big.images_per_second(1, 1), ESTIMATED_IMAGES_PER_SECOND);
        assert_eq!(
            SpeedCurve::estimated(Precision::Fp16, &small).images_per_second(1, 1),
            4.0 * ESTIMATED_IMAGES_PER_SECOND
        );
        assert_eq!(
            SpeedCurve::estimated(Precision::Fp32, &InputSpec::default()).images_per_second(1, 1),
            ESTIMATED_IMAGES_PER_SECOND * ESTIMATED_FP32_FACTOR
        );
        assert_eq!(big.basis(), Basis::Default);
    }
}
