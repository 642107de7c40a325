//! From the model's logits to the polygons of the response.
//!
//! Order, as the original service: sigmoid, bilinear resize of the *probabilities* to the
//! original size, threshold (`p > threshold`), contours. The sigmoid runs at model resolution
//! (cheaper than at the original's whenever the original is larger) and the resize is of
//! probabilities, not logits: resizing commutes with neither the sigmoid nor the threshold,
//! so thresholding resized logits would move borders. The resize is the same PIL-style
//! bilinear filter as pre-processing (plain half-pixel bilinear when enlarging, antialiased
//! when shrinking); resampled rows are thresholded as they come, straight into the mask.
//!
//! Confidence of a polygon: the mean probability of the foreground pixels of the 8-connected
//! object it outlines (for a hole, of the object around it). It says how sure the model is of
//! that object alone, unlike a bounding-box mean, which neighbouring objects and background
//! would dilute, and it is cheap: a scanline flood fill from each reported object's border
//! reads only that object's pixels, once.
//!
//! Peak memory is about 9 bytes per original pixel: the probability map (4), the mask (1)
//! and the contour tracer's 4-byte working image.

use image::GrayImage;
use thiserror::Error;

use super::contours::{outlines, ContourRules, Outline, MIN_AREA, MIN_POINTS};
use super::polygon::{Polygon, PolygonClass};
use super::resample::resample;

/// How a probability map becomes polygons; one per request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PostprocessOptions {
    /// A pixel is foreground when its probability is strictly greater than this (the API
    /// validates 0.1..=0.9 before we get here; any value works, NaN gives no foreground).
    pub threshold: f32,
    /// Report holes as `internal` polygons (the API's `detect_holes`); when false only the
    /// objects' outer outlines are reported, as if holes had been filled.
    pub detect_holes: bool,
    /// Contours enclosing less than this many pixels² are dropped (default 50).
    pub min_area: f64,
    /// Contours with fewer vertices after compression are dropped (default 3).
    pub min_points: usize,
}

impl PostprocessOptions {
    /// The API's options with the original service's size filters.
    pub fn new(threshold: f32, detect_holes: bool) -> Self {
        PostprocessOptions {
            threshold,
            detect_holes,
            min_area: MIN_AREA,
            min_points: MIN_POINTS,
        }
    }
}

impl Default for PostprocessOptions {
    /// The API's defaults: threshold 0.5, holes detected.
    fn default() -> Self {
        Self::new(0.5, true)
    }
}

/// Why logits could not be turned into polygons: a mismatch between what the model returned
/// and what the request expects, i.e. a server-side bug, never the client's fault.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum PostprocessError {
    /// The logits slice does not hold `model_w * model_h` values.
    #[error("model output holds {got} logits, expected {expected}")]
    LogitsLength {
        /// `model_w * model_h`.
        expected: usize,
        /// Length received.
        got: usize,
    },
    /// The model or the original size has no pixels.
    #[error("cannot map a {model_w}x{model_h} model output onto a {orig_w}x{orig_h} image")]
    ZeroSize {
        /// Model output width.
        model_w: u32,
        /// Model output height.
        model_h: u32,
        /// Original image width.
        orig_w: u32,
        /// Original image height.
        orig_h: u32,
    },
    /// The original image has 2³² pixels or more (decode limits stop such images far earlier).
    #[error("a {orig_w}x{orig_h} image is too large to post-process")]
    TooLarge {
        /// Original image width.
        orig_w: u32,
        /// Original image height.
        orig_h: u32,
    },
}

/// Turns one image's logits (`model_w`×`model_h`, row-major) into polygons in the
/// coordinates of the original `orig_w`×`orig_h` image.
///
/// Polygons come in raster order of their first pixel, so a hole always follows the object
/// it perforates (`parent_id < id`); ids are 1-based positions in the returned list.
pub fn extract_polygons(
    logits: &[f32],
    model_w: u32,
    model_h: u32,
    orig_w: u32,
    orig_h: u32,
    options: &PostprocessOptions,
) -> Result<Vec<Polygon>, PostprocessError> {
    if model_w == 0 || model_h == 0 || orig_w == 0 || orig_h == 0 {
        return Err(PostprocessError::ZeroSize {
            model_w,
            model_h,
            orig_w,
            orig_h,
        });
    }
    let expected = model_w as usize * model_h as usize;
    if logits.len() != expected {
        return Err(PostprocessError::LogitsLength {
            expected,
            got: logits.len(),
        });
    }
    let (framed_w, framed_h) = (u64::from(orig_w) + 2, u64::from(orig_h) + 2);
    if framed_w * framed_h >= 1 << 32 {
        return Err(PostprocessError::TooLarge { orig_w, orig_h });
    }
    let (w, h) = (orig_w as usize, orig_h as usize);

    let model_probs: Vec<f32> = logits.iter().map(|&l| sigmoid(l)).collect();
    let mut probs = vec![0.0f32; w * h];
    // The mask has a one-pixel background frame, which contour tracing needs.
    let mut mask = GrayImage::new(orig_w + 2, orig_h + 2);
    {
        let mask_bytes: &mut [u8] = &mut mask;
        let threshold = options.threshold;
        resample::<f32, 1>(
            &model_probs,
            (model_w as usize, model_h as usize),
            (w, h),
            |y, row| {
                probs[y * w..(y + 1) * w].copy_from_slice(row);
                let start = (y + 1) * (w + 2) + 1;
                for (m, &p) in mask_bytes[start..start + w].iter_mut().zip(row) {
                    *m = if p > threshold { FOREGROUND } else { 0 };
                }
            },
        );
    }
    drop(model_probs);

    let rules = ContourRules {
        detect_holes: options.detect_holes,
        min_area: options.min_area,
        min_points: options.min_points,
    };
    let found = outlines(&mask, rules);
    if found.is_empty() {
        return Ok(Vec::new());
    }
    let confidences = confidences(&mut mask, &probs, &found);
    Ok(found
        .into_iter()
        .zip(confidences)
        .enumerate()
        .map(|(i, (outline, confidence))| Polygon {
            id: id_of(i),
            vertices_count: outline.points.len(),
            points: outline.points,
            kind: outline.kind,
            class: PolygonClass::Spheroid,
            confidence,
            parent_id: outline.parent.map(id_of),
        })
        .collect())
}

/// Numerically safe logistic function; NaN logits count as certain background.
#[inline]
fn sigmoid(logit: f32) -> f32 {
    if logit.is_nan() {
        0.0
    } else {
        1.0 / (1.0 + (-logit).exp())
    }
}

/// The 1-based id of the polygon at position `index`.
fn id_of(index: usize) -> u32 {
    u32::try_from(index + 1).unwrap_or(u32::MAX)
}

/// Mask value of a foreground pixel before [`object_mean`] has visited it.
const FOREGROUND: u8 = 255;
/// Mask value of a foreground pixel [`object_mean`] has visited.
const VISITED: u8 = 1;

/// Confidence of every outline: a flood fill of each external's object (each object has
/// exactly one outer border), and for a hole the value of the object around it, its parent.
/// Marks visited pixels in `framed`, so each object pixel is read once.
fn confidences(framed: &mut GrayImage, probs: &[f32], found: &[Outline]) -> Vec<f32> {
    let framed_w = framed.width() as usize;
    let mask: &mut [u8] = framed;
    let mut stack = Vec::new();
    let mut out: Vec<f32> = Vec::with_capacity(found.len());
    for outline in found {
        let value = match outline.parent {
            Some(parent) => out.get(parent).copied().unwrap_or(0.0),
            None => {
                let seed = outline.seed.1 as usize * framed_w + outline.seed.0 as usize;
                object_mean(mask, framed_w, probs, seed, &mut stack)
            }
        };
        out.push(value);
    }
    out
}

/// Mean of `probs` over the 8-connected foreground object containing `seed`, by scanline
/// flood fill. `mask` has a background frame, so neighbours of a foreground pixel are
/// always inside it.
fn object_mean(
    mask: &mut [u8],
    framed_w: usize,
    probs: &[f32],
    seed: usize,
    stack: &mut Vec<usize>,
) -> f32 {
    let width = framed_w - 2;
    let (mut sum, mut count) = (0.0f64, 0usize);
    stack.clear();
    stack.push(seed);
    while let Some(i) = stack.pop() {
        if mask.get(i) != Some(&FOREGROUND) {
            continue;
        }
        let (mut left, mut right) = (i, i);
        while mask[left - 1] == FOREGROUND {
            left -= 1;
        }
        while mask[right + 1] == FOREGROUND {
            right += 1;
        }
        mask[left..=right].fill(VISITED);
        let (x, y) = (left % framed_w, left / framed_w);
        let run = (y - 1) * width + (x - 1);
        sum += probs[run..=run + (right - left)]
            .iter()
            .map(|&p| f64::from(p))
            .sum::<f64>();
        count += right - left + 1;
        // 8-connectivity: the rows above and below, one pixel wider on each side.
        for row_start in [left - framed_w - 1, left + framed_w - 1] {
            let row_end = row_start + (right - left) + 2;
            let mut j = row_start;
            while j <= row_end {
                if mask[j] == FOREGROUND {
                    stack.push(j);
                    while j <= row_end && mask[j] == FOREGROUND {
                        j += 1;
                    }
                } else {
                    j += 1;
                }
            }
        }
    }
    if count == 0 {
        0.0
    } else {
        (sum / count as f64) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imaging::polygon::{Point, PolygonType};

    /// Logits of `w`x`h` with `value(x, y)` per pixel.
    fn logits(w: u32, h: u32, value: impl Fn(u32, u32) -> f32) -> Vec<f32> {
        (0..h)
            .flat_map(|y| (0..w).map(move |x| (x, y)))
            .map(|(x, y)| value(x, y))
            .collect()
    }

    fn ring(x: u32, y: u32) -> f32 {
        let d2 = (x as f32 - 32.0).powi(2) + (y as f32 - 32.0).powi(2);
        if (100.0..=576.0).contains(&d2) {
            8.0
        } else {
            -8.0
        }
    }

    #[test]
    fn ring_gives_an_external_and_a_hole_at_the_original_size() {
        let polygons = extract_polygons(
            &logits(64, 64, ring),
            64,
            64,
            128,
            96,
            &PostprocessOptions::default(),
        )
        .expect("valid input");
        assert_eq!(polygons.len(), 2, "{polygons:?}");
        let (outer, hole) = (&polygons[0], &polygons[1]);
        assert_eq!(
            (outer.id, outer.kind, outer.parent_id),
            (1, PolygonType::External, None)
        );
        assert_eq!(
            (hole.id, hole.kind, hole.parent_id),
            (2, PolygonType::Internal, Some(1))
        );
        for p in polygons.iter().flat_map(|p| &p.points) {
            assert!(p.x < 128 && p.y < 96, "{p:?}");
        }
        // Scaled 2x horizontally, 1.5x vertically: the outer ring spans about 2*48 by 1.5*48.
        let span = |f: fn(&Point) -> u32| {
            let v: Vec<u32> = outer.points.iter().map(f).collect();
            v.iter().max().copied().unwrap_or(0) - v.iter().min().copied().unwrap_or(0)
        };
        assert!((span(|p| p.x) as i64 - 96).abs() <= 3, "{}", span(|p| p.x));
        assert!((span(|p| p.y) as i64 - 72).abs() <= 3, "{}", span(|p| p.y));
        for p in &polygons {
            assert_eq!(p.vertices_count, p.points.len());
            assert!(
                p.confidence > 0.5 && p.confidence <= 1.0,
                "{}",
                p.confidence
            );
        }
        assert_eq!(outer.confidence, hole.confidence);

        let filled = PostprocessOptions::new(0.5, false);
        let outer_only =
            extract_polygons(&logits(64, 64, ring), 64, 64, 128, 96, &filled).expect("valid input");
        assert_eq!(outer_only, polygons[..1]);
    }

    #[test]
    fn tiny_blobs_are_dropped() {
        let blob = |size: u32| {
            move |x: u32, y: u32| {
                if x >= 10 && y >= 10 && x < 10 + size && y < 10 + size {
                    5.0
                } else {
                    -5.0
                }
            }
        };
        let options = PostprocessOptions::default();
        // 6x6 pixels: outline area 25 < 50.
        assert!(
            extract_polygons(&logits(40, 40, blob(6)), 40, 40, 40, 40, &options)
                .expect("valid input")
                .is_empty()
        );
        // 10x10 pixels: outline area 81.
        let kept = extract_polygons(&logits(40, 40, blob(10)), 40, 40, 40, 40, &options)
            .expect("valid input");
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].vertices_count, 4);
    }

    #[test]
    fn confidence_is_the_mean_probability_of_each_object() {
        let two = |x: u32, y: u32| match (x, y) {
            (2..=11, 2..=11) => 2.0,
            (20..=29, 2..=11) => 5.0,
            _ => -5.0,
        };
        let polygons = extract_polygons(
            &logits(32, 16, two),
            32,
            16,
            32,
            16,
            &PostprocessOptions::default(),
        )
        .expect("valid input");
        assert_eq!(polygons.len(), 2);
        assert!((polygons[0].confidence - sigmoid(2.0)).abs() < 1e-6);
        assert!((polygons[1].confidence - sigmoid(5.0)).abs() < 1e-6);
    }

    #[test]
    fn confidence_follows_8_connectivity_through_odd_shapes() {
        // A comb (teeth joined at the bottom, so the fill must climb back up every tooth)
        // plus a square touching it only at a corner; logits vary per pixel.
        let shape = |x: u32, y: u32| {
            let comb = (2..30).contains(&x) && (2..20).contains(&y) && (x % 4 < 2 || y >= 17);
            let diagonal = (30..38).contains(&x) && (20..28).contains(&y);
            if comb || diagonal {
                0.5 + ((x * 7 + y * 3) % 5) as f32
            } else {
                -4.0
            }
        };
        let l = logits(40, 30, shape);
        let polygons = extract_polygons(&l, 40, 30, 40, 30, &PostprocessOptions::default())
            .expect("valid input");
        assert_eq!(polygons.len(), 1, "{polygons:?}");
        let foreground: Vec<f64> = l
            .iter()
            .map(|&v| f64::from(sigmoid(v)))
            .filter(|&p| p > 0.5)
            .collect();
        let mean = foreground.iter().sum::<f64>() / foreground.len() as f64;
        assert!((f64::from(polygons[0].confidence) - mean).abs() < 1e-6);
    }

    #[test]
    fn threshold_is_strict_and_edges_are_outlined() {
        let half = logits(20, 10, |_, _| 0.0); // probability exactly 0.5 everywhere
        let strict = extract_polygons(&half, 20, 10, 20, 10, &PostprocessOptions::new(0.5, true));
        assert_eq!(strict, Ok(vec![]));
        let all = extract_polygons(&half, 20, 10, 40, 20, &PostprocessOptions::new(0.4, true))
            .expect("valid input");
        assert_eq!(all.len(), 1);
        let mut corners = all[0].points.clone();
        corners.sort_by_key(|p| (p.y, p.x));
        let expected = [(0, 0), (39, 0), (0, 19), (39, 19)].map(|(x, y)| Point { x, y });
        assert_eq!(corners, expected);
        assert!((all[0].confidence - 0.5).abs() < 1e-6);
    }

    #[test]
    fn shrinking_and_bad_logits_work() {
        let polygons = extract_polygons(
            &logits(64, 64, ring),
            64,
            64,
            32,
            40,
            &PostprocessOptions::default(),
        )
        .expect("valid input");
        assert_eq!(polygons.len(), 2);
        let nan = vec![f32::NAN; 16];
        assert_eq!(
            extract_polygons(&nan, 4, 4, 8, 8, &PostprocessOptions::default()),
            Ok(vec![])
        );
    }

    #[test]
    fn inconsistent_sizes_are_errors() {
        let options = PostprocessOptions::default();
        assert_eq!(
            extract_polygons(&[0.0; 15], 4, 4, 8, 8, &options),
            Err(PostprocessError::LogitsLength {
                expected: 16,
                got: 15
            })
        );
        assert!(matches!(
            extract_polygons(&[], 0, 4, 8, 8, &options),
            Err(PostprocessError::ZeroSize { .. })
        ));
        assert!(matches!(
            extract_polygons(&[0.0; 16], 4, 4, 70_000, 70_000, &options),
            Err(PostprocessError::TooLarge { .. })
        ));
    }
}
