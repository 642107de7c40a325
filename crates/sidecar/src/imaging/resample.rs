//! Separable bilinear resampling with PIL's `Image.resize(..., BILINEAR)` semantics.
//!
//! Why PIL: the original service decoded with PIL, and torchvision's `Resize` on PIL images
//! is this same filter, which `torch.nn.functional.interpolate(mode="bilinear",
//! align_corners=False, antialias=True)` reimplements: pixel centres at `i + 0.5`, a
//! triangle filter whose support widens with the scale factor when shrinking (so
//! downscaling averages instead of aliasing), and edge taps renormalised. When enlarging it
//! is the plain half-pixel bilinear of OpenCV's `INTER_LINEAR` and of
//! `interpolate(..., antialias=False)`. The weights are PIL's exactly; we keep `f32`
//! throughout where PIL rounds 8-bit images to integers after each pass, so results differ
//! from PIL by at most about one 8-bit step.
//!
//! Memory: only a ring of horizontally resampled input rows (as many as one output row's
//! vertical filter needs) plus one accumulator row, so each input row is filtered once and
//! the caller receives output rows one at a time to write wherever it wants (CHW planes,
//! a mask...) without a full-size intermediate image.

/// A sample type the resampler reads: converted to `f32` without scaling.
pub(crate) trait Sample: Copy {
    /// The sample as `f32`, in its native range (0..=255, 0..=65535, or as is).
    fn to_f32(self) -> f32;
}

impl Sample for u8 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f32::from(self)
    }
}

impl Sample for u16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f32::from(self)
    }
}

impl Sample for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}

/// The filter taps of one axis: for every output index a start index and its weights.
#[derive(Debug)]
pub(crate) struct Taps {
    starts: Vec<usize>,
    lens: Vec<usize>,
    weights: Vec<f32>,
    stride: usize,
}

impl Taps {
    /// PIL's `precompute_coeffs` for the bilinear filter, with zero weights trimmed.
    pub(crate) fn new(in_size: usize, out_size: usize) -> Self {
        let scale = in_size as f64 / out_size.max(1) as f64;
        let filter_scale = scale.max(1.0);
        let support = filter_scale; // the triangle filter's support is 1
        let stride = (support.ceil() as usize) * 2 + 1;
        let mut taps = Taps {
            starts: Vec::with_capacity(out_size),
            lens: Vec::with_capacity(out_size),
            weights: vec![0.0; out_size * stride],
            stride,
        };
        let mut raw = vec![0.0f64; stride];
        for out in 0..out_size {
            let center = (out as f64 + 0.5) * scale;
            // `as usize` truncates toward zero and saturates negatives at 0, as PIL's
            // `(int)` cast followed by its clamp to 0 does.
            let min = ((center - support + 0.5) as usize).min(in_size);
            let max = ((center + support + 0.5) as usize).min(in_size);
            let count = max.saturating_sub(min).min(stride);
            let mut total = 0.0;
            for (k, w) in raw.iter_mut().enumerate().take(count) {
                let x = ((k + min) as f64 - center + 0.5) / filter_scale;
                *w = (1.0 - x.abs()).max(0.0);
                total += *w;
            }
            let taps_of = &raw[..count];
            let first = taps_of.iter().position(|&w| w != 0.0).unwrap_or(0);
            let last = taps_of.iter().rposition(|&w| w != 0.0).map_or(0, |i| i + 1);
            let len = last.saturating_sub(first);
            let row = &mut taps.weights[out * stride..out * stride + len];
            for (dst, &w) in row.iter_mut().zip(&taps_of[first..last]) {
                *dst = if total != 0.0 {
                    (w / total) as f32
                } else {
                    0.0
                };
            }
            taps.starts.push(min + first);
            taps.lens.push(len);
        }
        taps
    }

    /// The first input index and the weights of output index `i`.
    #[inline(always)]
    pub(crate) fn get(&self, i: usize) -> (usize, &[f32]) {
        let start = i * self.stride;
        (self.starts[i], &self.weights[start..start + self.lens[i]])
    }

    /// The most taps any output index uses.
    fn max_len(&self) -> usize {
        self.lens.iter().copied().max().unwrap_or(0)
    }
}

/// Resamples an interleaved `in_w`×`in_h` image with `C` channels to `out_w`×`out_h`.
///
/// `emit(y, row)` receives every output row in order, `row` holding `out_w * C` interleaved
/// values in the samples' native range. `src` must hold `in_w * in_h * C` samples; a shorter
/// one yields zeros for the missing rows rather than panicking.
pub(crate) fn resample<S: Sample, const C: usize>(
    src: &[S],
    (in_w, in_h): (usize, usize),
    (out_w, out_h): (usize, usize),
    mut emit: impl FnMut(usize, &[f32]),
) {
    let horizontal = Taps::new(in_w, out_w);
    let vertical = Taps::new(in_h, out_h);
    let ring_rows = vertical.max_len().max(1);
    let row_len = out_w * C;
    let mut ring = vec![0.0f32; ring_rows * row_len];
    let mut ring_holds = vec![usize::MAX; ring_rows];
    let mut acc = vec![0.0f32; row_len];
    for y in 0..out_h {
        let (start, weights) = vertical.get(y);
        for input_row in start..start + weights.len() {
            let slot = input_row % ring_rows;
            if ring_holds[slot] != input_row {
                let line = src.get(input_row * in_w * C..(input_row + 1) * in_w * C);
                let dst = &mut ring[slot * row_len..(slot + 1) * row_len];
                filter_row::<S, C>(line.unwrap_or(&[]), &horizontal, dst);
                ring_holds[slot] = input_row;
            }
        }
        acc.fill(0.0);
        for (k, &w) in weights.iter().enumerate() {
            let slot = (start + k) % ring_rows;
            let line = &ring[slot * row_len..(slot + 1) * row_len];
            for (a, &v) in acc.iter_mut().zip(line) {
                *a += w * v;
            }
        }
        emit(y, &acc);
    }
}

/// Horizontal pass over one input row into `dst` (`out_w * C` values).
#[inline(always)]
fn filter_row<S: Sample, const C: usize>(line: &[S], taps: &Taps, dst: &mut [f32]) {
    for (x, out) in dst.chunks_exact_mut(C).enumerate() {
        let (start, weights) = taps.get(x);
        let mut sum = [0.0f32; C];
        let pixels = line
            .get(start * C..(start + weights.len()) * C)
            .unwrap_or(&[]);
        for (&w, px) in weights.iter().zip(pixels.chunks_exact(C)) {
            for c in 0..C {
                sum[c] += w * px[c].to_f32();
            }
        }
        out.copy_from_slice(&sum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<const C: usize>(src: &[f32], input: (usize, usize), output: (usize, usize)) -> Vec<f32> {
        let mut out = vec![f32::NAN; output.0 * output.1 * C];
        resample::<f32, C>(src, input, output, |y, row| {
            out[y * row.len()..(y + 1) * row.len()].copy_from_slice(row);
        });
        out
    }

    #[test]
    fn weights_sum_to_one_and_stay_in_bounds() {
        for (i, o) in [
            (1, 1),
            (1, 7),
            (7, 1),
            (10, 3),
            (3, 10),
            (1024, 1000),
            (999, 1024),
        ] {
            let taps = Taps::new(i, o);
            for x in 0..o {
                let (start, w) = taps.get(x);
                assert!(start + w.len() <= i, "{i}->{o} at {x}");
                let sum: f32 = w.iter().sum();
                assert!((sum - 1.0).abs() < 1e-5, "{i}->{o} at {x}: {sum}");
            }
        }
    }

    #[test]
    fn same_size_is_identity() {
        let src: Vec<f32> = (0..5 * 4 * 3).map(|v| v as f32).collect();
        assert_eq!(run::<3>(&src, (5, 4), (5, 4)), src);
    }

    #[test]
    fn enlarging_matches_half_pixel_bilinear() {
        // torch: interpolate([[0, 10]], size=4, mode="linear", align_corners=False)
        // = [0, 2.5, 7.5, 10]
        assert_eq!(
            run::<1>(&[0.0, 10.0], (2, 1), (4, 1)),
            vec![0.0, 2.5, 7.5, 10.0]
        );
    }

    #[test]
    fn shrinking_averages_like_pil() {
        // Pillow 12: Image.fromarray(np.float32([[0, 4, 8, 12]]), "F").resize((2, 1), BILINEAR)
        let out = run::<1>(&[0.0, 4.0, 8.0, 12.0], (4, 1), (2, 1));
        assert_close(&out, &[2.857143, 9.142858]);
    }

    #[test]
    fn matches_pil_in_two_dimensions() {
        // Pillow 12, mode "F", a[y][x] = (3x + 11y) % 17 on 7x5, resized with BILINEAR.
        let src: Vec<f32> = (0..5)
            .flat_map(|y| (0..7).map(move |x| ((x * 3 + y * 11) % 17) as f32))
            .collect();
        let shrunk = [
            4.41071, 7.75000, 9.37500, 8.94643, 6.08333, 6.92857, 7.61310, 8.41667, 6.30357,
            11.33929, 7.25000, 8.41071,
        ];
        assert_close(&run::<1>(&src, (7, 5), (3, 4)), &shrunk);
        let grown = run::<1>(&src, (7, 5), (11, 8));
        // First and last rows of Pillow's 11x8 result.
        let first = [
            0.00000, 1.36364, 3.27273, 5.18182, 7.09091, 9.00000, 10.90909, 12.81818, 14.72727,
            7.36364, 1.00000,
        ];
        let last = [
            10.00000, 11.36364, 13.27273, 15.18182, 10.90909, 2.00000, 3.90909, 5.81818, 7.72727,
            9.63636, 11.00000,
        ];
        assert_close(&grown[..11], &first);
        assert_close(&grown[77..], &last);
        assert_close(&grown[29..32], &[6.44318, 8.35227, 10.26136]);
    }

    fn assert_close(got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() < 1e-4, "index {i}: got {g}, want {w}");
        }
    }

    #[test]
    fn constant_image_stays_constant_in_both_directions() {
        let src = vec![0.25f32; 13 * 17];
        for out in [(5, 3), (40, 41), (13, 17), (1, 1)] {
            let resized = run::<1>(&src, (13, 17), out);
            assert!(resized.iter().all(|v| (v - 0.25).abs() < 1e-6), "{out:?}");
        }
    }

    #[test]
    fn short_source_does_not_panic() {
        let out = run::<1>(&[1.0; 3], (4, 4), (2, 2));
        assert_eq!(out.len(), 4);
    }
}
