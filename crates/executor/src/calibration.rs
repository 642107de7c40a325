//! Start-up calibration: for each model, precision candidate and batch size (1, 2, 4, …, max), the
//! median latency of a few synchronised runs after warm-up and the peak memory the batch adds
//! above the weights (allocator high-water mark on a GPU; the estimate on the CPU, which has no
//! allocator statistics). The profile feeds admission (peak per batch size), the choice of
//! precision for `auto`, and telemetry.

use crate::config::CalibrationOptions;
use crate::cuda::ComputeDevice;
use crate::model::LoadedModel;
use crate::oom::ForwardFailure;
use crate::staging::Stager;
use crate::state::with_headroom;
use crate::stats::median;
use gpupool_api::telemetry::ProfilePoint;
use gpupool_api::Precision;
use std::collections::BTreeMap;
use std::time::Instant;

/// Batch sizes to measure up to `max`: powers of two, then `max` itself.
pub(crate) fn batch_sizes(max: usize) -> Vec<usize> {
    let mut sizes = Vec::new();
    let mut b = 1;
    while b < max {
        sizes.push(b);
        b *= 2;
    }
    if max >= 1 {
        sizes.push(max);
    }
    sizes
}

/// Peak bytes of a batch of `n` at `precision` from measured points: the smallest measured batch of
/// at least `n` (peaks grow with batch size, so that is an upper bound), or linear extrapolation
/// from the largest measured one. `None` when that precision was not measured.
pub(crate) fn peak_for(points: &[ProfilePoint], precision: Precision, n: usize) -> Option<u64> {
    let mut measured: Vec<&ProfilePoint> =
        points.iter().filter(|p| p.precision == precision).collect();
    measured.sort_by_key(|p| p.batch_size);
    if let Some(p) = measured.iter().find(|p| p.batch_size as usize >= n) {
        return Some(p.peak_bytes);
    }
    let last = measured.last()?;
    let b = u64::from(last.batch_size.max(1));
    Some(last.peak_bytes.saturating_mul(n as u64).div_ceil(b))
}

/// The precision with the best throughput at any measured batch size whose weights plus peak (with
/// headroom) fit the budget; ties go to less memory. `None` if nothing fits.
pub(crate) fn choose(
    points: &[ProfilePoint],
    weights: &BTreeMap<Precision, u64>,
    budget: u64,
    headroom: f64,
) -> Option<Precision> {
    points
        .iter()
        .filter(|p| {
            let w = weights.get(&p.precision).copied().unwrap_or(0);
            w.saturating_add(with_headroom(p.peak_bytes, headroom)) <= budget
        })
        .max_by(|a, b| {
            a.images_per_second()
                .total_cmp(&b.images_per_second())
                .then_with(|| b.peak_bytes.cmp(&a.peak_bytes))
        })
        .map(|p| p.precision)
}

/// Measures one (precision, batch size): `warmup` untimed runs, then the median of `iterations`
/// timed, synchronised runs and the memory they added. `estimate` is the peak to report where
/// there are no allocator statistics (the CPU); `record_peak` is called just before the
/// allocator's peak statistics are reset, so the process's high-water mark keeps the warm-up's.
pub(crate) fn measure(
    stager: &mut Stager,
    model: &LoadedModel,
    device: ComputeDevice,
    n: usize,
    options: CalibrationOptions,
    estimate: u64,
    record_peak: &dyn Fn(),
) -> Result<ProfilePoint, ForwardFailure> {
    stager.stage_synthetic(n)?;
    for _ in 0..options.warmup {
        stager.run(model, 0..n)?;
    }
    // Measure on a clean cache, after warm-up (cuDNN autotuning tries large workspaces): the
    // growth of both live bytes and bytes held from the driver (segment rounding included).
    // The process's high-water mark, warm-up included, is recorded before the reset loses it.
    record_peak();
    device.empty_cache();
    let _ = device.reset_peak_stats();
    let base = device.allocator_stats();
    let mut times = Vec::new();
    for _ in 0..options.iterations.max(1) {
        let start = Instant::now();
        stager.run(model, 0..n)?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    let peak_bytes = match (base, device.allocator_stats()) {
        (Some(base), Some(after)) => after
            .peak_allocated
            .saturating_sub(base.allocated)
            .max(after.peak_reserved.saturating_sub(base.reserved)),
        _ => estimate,
    };
    Ok(ProfilePoint {
        precision: model.precision,
        batch_size: u32::try_from(n).unwrap_or(u32::MAX),
        latency_ms: median(&times),
        peak_bytes,
    })
}

/// The peak to expect for batch `n` given the points measured so far at this precision (doubling
/// batch size roughly doubles activations), or `estimate` before any.
pub(crate) fn predict_next(measured: &[ProfilePoint], n: usize, estimate: u64) -> u64 {
    match measured.last() {
        Some(last) => {
            let b = u64::from(last.batch_size.max(1));
            last.peak_bytes
                .saturating_mul(n as u64)
                .div_ceil(b)
                .max(last.peak_bytes)
        }
        None => estimate,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Precision::*;

    fn point(
        precision: Precision,
        batch_size: u32,
        latency_ms: f64,
        peak_bytes: u64,
    ) -> ProfilePoint {
        ProfilePoint {
            precision,
            batch_size,
            latency_ms,
            peak_bytes,
        }
    }

    #[test]
    fn sizes_double_up_to_max() {
        assert_eq!(batch_sizes(8), vec![1, 2, 4, 8]);
        assert_eq!(batch_sizes(6), vec![1, 2, 4, 6]);
        assert_eq!(batch_sizes(1), vec![1]);
        assert!(batch_sizes(0).is_empty());
    }

    #[test]
    fn peaks_are_looked_up_conservatively_and_extrapolated() {
        let pts = vec![
            point(Fp16, 1, 1.0, 100),
            point(Fp16, 2, 1.5, 180),
            point(Fp16, 4, 2.0, 350),
        ];
        assert_eq!(peak_for(&pts, Fp16, 1), Some(100));
        assert_eq!(peak_for(&pts, Fp16, 3), Some(350));
        assert_eq!(peak_for(&pts, Fp16, 8), Some(700));
        assert_eq!(peak_for(&pts, Fp32, 1), None);
        assert_eq!(predict_next(&pts, 8, 5), 700);
        assert_eq!(predict_next(&[], 8, 5), 5);
    }

    #[test]
    fn picks_the_fastest_precision_that_fits() {
        let pts = vec![
            point(Fp32, 8, 100.0, 500),  // 80 img/s
            point(Fp16, 8, 60.0, 300),   // 133 img/s
            point(Fp16, 16, 100.0, 900), // 160 img/s but does not fit
            point(Bf16, 8, 61.0, 300),
        ];
        let weights = BTreeMap::from([(Fp32, 200), (Fp16, 100), (Bf16, 100)]);
        assert_eq!(choose(&pts, &weights, 1000, 0.0), Some(Fp16));
        assert_eq!(choose(&pts, &weights, 1100, 0.0), Some(Fp16));
        assert_eq!(choose(&pts, &weights, 350, 0.0), None);
    }
}
