//! From the mask the engine returns to the polygons of the response.
//!
//! The original service's order is sigmoid, bilinear resize of the *probabilities* to the
//! original size, threshold (`p > threshold`), contours. The first three run on the model's
//! device next to the forward pass (`gpupool_executor::Engine::segment`), which hands back the
//! mask and the probabilities at the original size; what is left here is the sequential part:
//! tracing the contours, filtering and nesting them, and each polygon's confidence. Objects and
//! holes too small to pass the area filter are cleared before tracing (`super::specks`).
//!
//! Confidence of a polygon: the mean probability of the foreground pixels of the 8-connected
//! object it outlines (for a hole, of the object around it). It says how sure the model is of
//! that object alone, unlike a bounding-box mean, which neighbouring objects and background
//! would dilute, and it is cheap: the objects are labelled once by runs (`super::components`),
//! a labelling speck clearing needs anyway, and only the runs of reported objects are summed.
//!
//! Peak memory is about 5 bytes per original pixel beyond the inputs (the framed mask and the
//! contour tracer's 4-byte working image), plus 20 bytes per run of foreground pixels.

use image::GrayImage;
use thiserror::Error;

use super::components::Components;
use super::contours::{outlines, ContourRules, Outline, MIN_AREA, MIN_POINTS};
use super::polygon::{Polygon, PolygonClass};
use super::specks::clear_specks;

/// Which outlines a request keeps; one per request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PostprocessOptions {
    /// Report holes as `internal` polygons (the API's `detect_holes`); when false only the
    /// objects' outer outlines are reported, as if holes had been filled.
    pub detect_holes: bool,
    /// Contours enclosing less than this many pixels² are dropped (default 50).
    pub min_area: f64,
    /// Contours with fewer vertices after compression are dropped (default 3).
    pub min_points: usize,
}

impl PostprocessOptions {
    /// The API's options: holes or not, and the smallest area kept.
    pub fn new(detect_holes: bool, min_area: f64) -> Self {
        PostprocessOptions {
            detect_holes,
            min_area,
            min_points: MIN_POINTS,
        }
    }
}

impl Default for PostprocessOptions {
    /// The original service's: holes detected, contours under 50 px² dropped.
    fn default() -> Self {
        Self::new(true, MIN_AREA)
    }
}

/// Why a mask could not be turned into polygons: a mismatch between what the engine returned
/// and the image, i.e. a server-side bug, never the client's fault.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum PostprocessError {
    /// The mask or the probabilities do not hold `width * height` values.
    #[error(
        "the mask holds {mask} values and the probabilities {probabilities}, expected {expected}"
    )]
    Length {
        /// `width * height`.
        expected: usize,
        /// Mask length received.
        mask: usize,
        /// Probabilities length received.
        probabilities: usize,
    },
    /// The image has no pixels.
    #[error("cannot outline a {width}x{height} image")]
    ZeroSize {
        /// Image width.
        width: u32,
        /// Image height.
        height: u32,
    },
    /// The image has 2³² pixels or more (decode limits stop such images far earlier).
    #[error("a {width}x{height} image is too large to post-process")]
    TooLarge {
        /// Image width.
        width: u32,
        /// Image height.
        height: u32,
    },
}

/// Outlines the foreground of `mask` (`width`×`height`, row-major, non-zero = foreground) and
/// rates each outline by `probabilities` (same layout).
///
/// Polygons come in raster order of their first pixel, so a hole always follows the object
/// it perforates (`parent_id < id`); ids are 1-based positions in the returned list.
pub fn polygons_from_mask(
    mask: &[u8],
    probabilities: &[f32],
    width: u32,
    height: u32,
    options: &PostprocessOptions,
) -> Result<Vec<Polygon>, PostprocessError> {
    if width == 0 || height == 0 {
        return Err(PostprocessError::ZeroSize { width, height });
    }
    if (u64::from(width) + 2) * (u64::from(height) + 2) >= 1 << 32 {
        return Err(PostprocessError::TooLarge { width, height });
    }
    let expected = width as usize * height as usize;
    if mask.len() != expected || probabilities.len() != expected {
        return Err(PostprocessError::Length {
            expected,
            mask: mask.len(),
            probabilities: probabilities.len(),
        });
    }
    let w = width as usize;
    // The mask gets a one-pixel background frame, which contour tracing needs.
    let mut framed = GrayImage::new(width + 2, height + 2);
    {
        let framed_bytes: &mut [u8] = &mut framed;
        for (y, row) in mask.chunks_exact(w).enumerate() {
            let start = (y + 1) * (w + 2) + 1;
            for (m, &v) in framed_bytes[start..start + w].iter_mut().zip(row) {
                *m = if v != 0 { FOREGROUND } else { 0 };
            }
        }
    }
    Ok(polygons_in(framed, probabilities, options, true))
}

/// Outlines of the framed mask (with `clear`, specks cleared first: the property test below checks
/// that this changes nothing but the time taken).
fn polygons_in(
    mut framed: GrayImage,
    probabilities: &[f32],
    options: &PostprocessOptions,
    clear: bool,
) -> Vec<Polygon> {
    let objects = Components::label(&framed, |v| v != 0, true);
    if clear {
        clear_specks(&mut framed, &objects, options.min_area);
    }
    let rules = ContourRules {
        detect_holes: options.detect_holes,
        min_area: options.min_area,
        min_points: options.min_points,
    };
    let found = outlines(&framed, rules);
    if found.is_empty() {
        return Vec::new();
    }
    let confidences = confidences(&objects, framed.width(), probabilities, &found);
    found
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
        .collect()
}

/// The 1-based id of the polygon at position `index`.
fn id_of(index: usize) -> u32 {
    u32::try_from(index + 1).unwrap_or(u32::MAX)
}

/// Mask value of a foreground pixel in the framed mask.
const FOREGROUND: u8 = 255;

/// Confidence of every outline: for an external one the mean probability of the object whose
/// border it traces (its seed is one of the object's pixels), for a hole its parent's. Only the
/// runs of reported objects are read from `probs` (unframed, so shifted by the frame).
fn confidences(objects: &Components, framed_w: u32, probs: &[f32], found: &[Outline]) -> Vec<f32> {
    let width = (framed_w - 2) as usize;
    let ids: Vec<Option<usize>> = found
        .iter()
        .map(|o| match o.parent {
            Some(_) => None,
            None => objects.id_at(o.seed.0, o.seed.1),
        })
        .collect();
    // Per object id: (sum, count); only objects some outline asks for are summed.
    let mut wanted: Vec<Option<(f64, usize)>> = vec![None; objects.id_bound()];
    for id in ids.iter().flatten() {
        wanted[*id] = Some((0.0, 0));
    }
    for (run, id) in objects.runs() {
        if let Some((sum, count)) = &mut wanted[id] {
            let start = (run.y as usize - 1) * width + (run.x0 as usize - 1);
            *sum += probs[start..start + run.len()]
                .iter()
                .map(|&p| f64::from(p))
                .sum::<f64>();
            *count += run.len();
        }
    }
    let mut out: Vec<f32> = Vec::with_capacity(found.len());
    for (outline, id) in found.iter().zip(ids) {
        let value = match (outline.parent, id.and_then(|id| wanted[id])) {
            (Some(parent), _) => out.get(parent).copied().unwrap_or(0.0),
            (None, Some((sum, count))) if count > 0 => (sum / count as f64) as f32,
            (None, _) => 0.0,
        };
        out.push(value);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imaging::polygon::{Point, PolygonType};
    use proptest::strategy::Strategy;

    /// Mask (`p > 0.5`) and probabilities of a `w`x`h` image with `p(x, y)` per pixel.
    fn segmented(w: u32, h: u32, p: impl Fn(u32, u32) -> f32) -> (Vec<u8>, Vec<f32>) {
        let probs: Vec<f32> = (0..h)
            .flat_map(|y| (0..w).map(move |x| (x, y)))
            .map(|(x, y)| p(x, y))
            .collect();
        (probs.iter().map(|&v| u8::from(v > 0.5)).collect(), probs)
    }

    fn outline(
        w: u32,
        h: u32,
        p: impl Fn(u32, u32) -> f32,
        options: &PostprocessOptions,
    ) -> Vec<Polygon> {
        let (mask, probs) = segmented(w, h, p);
        polygons_from_mask(&mask, &probs, w, h, options).expect("valid input")
    }

    fn ring(x: u32, y: u32) -> f32 {
        let d2 = (x as f32 - 64.0).powi(2) + (y as f32 - 48.0).powi(2);
        if (400.0..=1764.0).contains(&d2) {
            0.99
        } else {
            0.01
        }
    }

    #[test]
    fn ring_gives_an_external_and_its_hole() {
        let polygons = outline(128, 96, ring, &PostprocessOptions::default());
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
        // The outer ring spans 2*42 pixels each way.
        let span = |f: fn(&Point) -> u32| {
            let v: Vec<u32> = outer.points.iter().map(f).collect();
            v.iter().max().copied().unwrap_or(0) - v.iter().min().copied().unwrap_or(0)
        };
        assert!((span(|p| p.x) as i64 - 84).abs() <= 1, "{}", span(|p| p.x));
        assert!((span(|p| p.y) as i64 - 84).abs() <= 1, "{}", span(|p| p.y));
        for p in &polygons {
            assert_eq!(p.vertices_count, p.points.len());
            assert!((p.confidence - 0.99).abs() < 1e-6, "{}", p.confidence);
        }
        let filled = outline(128, 96, ring, &PostprocessOptions::new(false, MIN_AREA));
        assert_eq!(filled, polygons[..1]);
    }

    #[test]
    fn tiny_blobs_are_dropped_unless_asked_for() {
        let blob = |size: u32| {
            move |x: u32, y: u32| {
                if x >= 10 && y >= 10 && x < 10 + size && y < 10 + size {
                    0.9
                } else {
                    0.1
                }
            }
        };
        let options = PostprocessOptions::default();
        // 6x6 pixels: outline area 25 < 50.
        assert!(outline(40, 40, blob(6), &options).is_empty());
        // Kept with a smaller minimum area.
        assert_eq!(
            outline(40, 40, blob(6), &PostprocessOptions::new(true, 0.0)).len(),
            1
        );
        // 10x10 pixels: outline area 81.
        let kept = outline(40, 40, blob(10), &options);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].vertices_count, 4);
        // A single pixel or a straight line has fewer than 3 vertices, whatever the area rule.
        assert!(outline(40, 40, blob(1), &PostprocessOptions::new(true, 0.0)).is_empty());
    }

    #[test]
    fn confidence_is_the_mean_probability_of_each_object() {
        let two = |x: u32, y: u32| match (x, y) {
            (2..=11, 2..=11) => 0.7,
            (20..=29, 2..=11) => 0.95,
            _ => 0.05,
        };
        let polygons = outline(32, 16, two, &PostprocessOptions::default());
        assert_eq!(polygons.len(), 2);
        assert!((polygons[0].confidence - 0.7).abs() < 1e-6);
        assert!((polygons[1].confidence - 0.95).abs() < 1e-6);
    }

    #[test]
    fn confidence_follows_8_connectivity_through_odd_shapes() {
        // A comb (teeth joined at the bottom, so the fill must climb back up every tooth)
        // plus a square touching it only at a corner; probabilities vary per pixel.
        let shape = |x: u32, y: u32| {
            let comb = (2..30).contains(&x) && (2..20).contains(&y) && (x % 4 < 2 || y >= 17);
            let diagonal = (30..38).contains(&x) && (20..28).contains(&y);
            if comb || diagonal {
                0.55 + ((x * 7 + y * 3) % 5) as f32 * 0.1
            } else {
                0.02
            }
        };
        let (mask, probs) = segmented(40, 30, shape);
        let polygons = polygons_from_mask(&mask, &probs, 40, 30, &PostprocessOptions::default())
            .expect("valid input");
        assert_eq!(polygons.len(), 1, "{polygons:?}");
        let foreground: Vec<f64> = probs
            .iter()
            .map(|&v| f64::from(v))
            .filter(|&p| p > 0.5)
            .collect();
        let mean = foreground.iter().sum::<f64>() / foreground.len() as f64;
        assert!((f64::from(polygons[0].confidence) - mean).abs() < 1e-6);
    }

    #[test]
    fn edges_are_outlined() {
        let all = outline(40, 20, |_, _| 0.6, &PostprocessOptions::default());
        assert_eq!(all.len(), 1);
        let mut corners = all[0].points.clone();
        corners.sort_by_key(|p| (p.y, p.x));
        let expected = [(0, 0), (39, 0), (0, 19), (39, 19)].map(|(x, y)| Point { x, y });
        assert_eq!(corners, expected);
        assert!((all[0].confidence - 0.6).abs() < 1e-6);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]
        /// Clearing specks before tracing changes no polygon and no confidence, whatever the mask,
        /// the area filter and the hole setting.
        #[test]
        fn clearing_specks_changes_nothing_reported(
            (w, h, cells) in (1u32..28, 1u32..22).prop_flat_map(|(w, h)| {
                (proptest::prelude::Just(w), proptest::prelude::Just(h),
                 proptest::collection::vec(0u8..=255, (w * h) as usize))
            }),
            density in 1u8..=254,
            min_area in 0.0f64..40.0,
            detect_holes: bool,
        ) {
            let mask: Vec<u8> = cells.iter().map(|&c| u8::from(c < density)).collect();
            let probs: Vec<f32> = cells.iter().map(|&c| f32::from(c) / 255.0).collect();
            let options = PostprocessOptions::new(detect_holes, min_area);
            let mut framed = GrayImage::new(w + 2, h + 2);
            for (i, &m) in mask.iter().enumerate() {
                let (x, y) = (i as u32 % w, i as u32 / w);
                framed.put_pixel(x + 1, y + 1, image::Luma([if m != 0 { FOREGROUND } else { 0 }]));
            }
            let plain = polygons_in(framed.clone(), &probs, &options, false);
            let cleared = polygons_in(framed, &probs, &options, true);
            proptest::prop_assert_eq!(&plain, &cleared);
            for p in &cleared {
                let expected = match p.parent_id {
                    None => object_mean(&mask, &probs, w, h, p.points[0]),
                    Some(parent) => f64::from(cleared[parent as usize - 1].confidence),
                };
                proptest::prop_assert!((f64::from(p.confidence) - expected).abs() < 1e-6);
            }
        }
    }

    /// Test oracle: the mean of `probs` over the 8-connected object of `mask` containing `at`, by
    /// a plain breadth-first search.
    fn object_mean(mask: &[u8], probs: &[f32], w: u32, h: u32, at: Point) -> f64 {
        let (w, h) = (w as i64, h as i64);
        let mut seen = vec![false; mask.len()];
        let mut todo = std::collections::VecDeque::from([(i64::from(at.x), i64::from(at.y))]);
        let (mut sum, mut count) = (0.0, 0);
        while let Some((x, y)) = todo.pop_front() {
            let i = (y * w + x) as usize;
            if x < 0 || y < 0 || x >= w || y >= h || seen[i] || mask[i] == 0 {
                continue;
            }
            seen[i] = true;
            sum += f64::from(probs[i]);
            count += 1;
            for (dx, dy) in (-1..=1).flat_map(|dx| (-1..=1).map(move |dy| (dx, dy))) {
                todo.push_back((x + dx, y + dy));
            }
        }
        sum / f64::from(count)
    }

    /// The bounds speck clearing relies on are tight for rectangles: sweep the area filter across
    /// each rectangle's outline area, for solid rectangles and for rectangular holes.
    #[test]
    fn clearing_specks_is_exact_at_the_edge_of_the_area_filter() {
        let frame = |w: u32, h: u32, on: &dyn Fn(u32, u32) -> bool| {
            GrayImage::from_fn(w + 2, h + 2, |x, y| {
                let inside = x > 0 && y > 0 && x <= w && y <= h;
                image::Luma([if inside && on(x - 1, y - 1) {
                    FOREGROUND
                } else {
                    0
                }])
            })
        };
        for (rw, rh) in (1..7).flat_map(|a| (1..7).map(move |b| (a, b))) {
            // A solid rw×rh rectangle, and a 2-pixel-thick block with an rw×rh hole.
            let solid = frame(rw + 2, rh + 2, &|x, y| {
                (1..=rw).contains(&x) && (1..=rh).contains(&y)
            });
            let holed = frame(rw + 4, rh + 4, &|x, y| {
                !((2..rw + 2).contains(&x) && (2..rh + 2).contains(&y))
            });
            for framed in [solid, holed] {
                let probs: Vec<f32> =
                    vec![0.7; ((framed.width() - 2) * (framed.height() - 2)) as usize];
                for half_px2 in 0..100 {
                    let options = PostprocessOptions::new(true, f64::from(half_px2) / 2.0);
                    let plain = polygons_in(framed.clone(), &probs, &options, false);
                    let cleared = polygons_in(framed.clone(), &probs, &options, true);
                    assert_eq!(plain, cleared, "{rw}x{rh}, min_area {}", options.min_area);
                }
            }
        }
    }

    #[test]
    fn inconsistent_sizes_are_errors() {
        let options = PostprocessOptions::default();
        assert_eq!(
            polygons_from_mask(&[0; 15], &[0.0; 16], 4, 4, &options),
            Err(PostprocessError::Length {
                expected: 16,
                mask: 15,
                probabilities: 16
            })
        );
        assert!(matches!(
            polygons_from_mask(&[], &[], 0, 4, &options),
            Err(PostprocessError::ZeroSize { .. })
        ));
        assert!(matches!(
            polygons_from_mask(&[], &[], 70_000, 70_000, &options),
            Err(PostprocessError::TooLarge { .. })
        ));
    }
}
