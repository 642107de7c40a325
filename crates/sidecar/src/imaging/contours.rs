//! From a binary mask to the outlines we report: trace, compress, measure, filter, nest.
//!
//! Tracing is imageproc's Suzuki–Abe border following (8-connected foreground, as OpenCV's
//! `findContours`). Its raster scan only starts an outer border at a pixel whose left
//! neighbour is background, so an object touching the image's left edge would come out as a
//! "hole"; the mask handed in therefore carries a one-pixel background frame (the algorithm
//! assumes one), and points are shifted back by one.
//!
//! Nesting follows OpenCV's `RETR_CCOMP`: every outer border is an external polygon without
//! a parent, every hole border is an internal polygon whose parent is the external it
//! perforates. An object inside a hole is an external polygon in its own right.
//! Without hole detection only the top-level outer borders are kept (`RETR_EXTERNAL`); that
//! is exactly the outline filling the holes first would give, without the flood fill.

use image::GrayImage;
use imageproc::contours::{find_contours, BorderType};

use super::polygon::{Point, PolygonType};

/// Smallest area (pixels², shoelace formula over the compressed outline) of a kept contour.
pub const MIN_AREA: f64 = 50.0;
/// Fewest vertices (after compression) of a kept contour.
pub const MIN_POINTS: usize = 3;

/// A kept outline, before it gets an id and a confidence.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Outline {
    /// Vertices in original-image coordinates.
    pub points: Vec<Point>,
    /// External or hole.
    pub kind: PolygonType,
    /// Index in the returned list of the external polygon a hole belongs to.
    pub parent: Option<usize>,
    /// A foreground pixel of the object, in the framed mask's coordinates.
    pub seed: (u32, u32),
}

/// Which contours to keep and how small they may be.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ContourRules {
    /// Keep hole borders (and objects inside holes) instead of external outlines only.
    pub detect_holes: bool,
    /// See [`MIN_AREA`].
    pub min_area: f64,
    /// See [`MIN_POINTS`].
    pub min_points: usize,
}

/// Traces `framed` (non-zero = foreground; its outermost rows and columns must be zero) and
/// returns the outlines to report, parents before their holes, in raster order of their
/// first pixel.
pub(crate) fn outlines(framed: &GrayImage, rules: ContourRules) -> Vec<Outline> {
    let traced = find_contours::<u32>(framed);
    // Index in `kept` of each traced contour, if it was kept.
    let mut kept_at: Vec<Option<usize>> = Vec::with_capacity(traced.len());
    let mut kept = Vec::new();
    for contour in &traced {
        let (kind, parent) = match (contour.border_type, contour.parent) {
            (BorderType::Outer, None) => (PolygonType::External, None),
            (BorderType::Outer, Some(_)) if rules.detect_holes => (PolygonType::External, None),
            // Suzuki–Abe: a hole's parent is the outer border around it, traced earlier.
            (BorderType::Hole, Some(p)) if rules.detect_holes => {
                match kept_at.get(p).copied().flatten() {
                    Some(parent) => (PolygonType::Internal, Some(parent)),
                    None => {
                        kept_at.push(None);
                        continue;
                    }
                }
            }
            _ => {
                kept_at.push(None);
                continue;
            }
        };
        let Some(first) = contour.points.first() else {
            kept_at.push(None);
            continue;
        };
        let points = compress(&contour.points);
        if points.len() < rules.min_points || area(&points) < rules.min_area {
            kept_at.push(None);
            continue;
        }
        kept_at.push(Some(kept.len()));
        kept.push(Outline {
            points: points
                .iter()
                .map(|p| Point {
                    x: p.x.saturating_sub(1),
                    y: p.y.saturating_sub(1),
                })
                .collect(),
            kind,
            parent,
            seed: (first.x, first.y),
        });
    }
    kept
}

/// Drops every vertex that continues the previous step in the same direction, keeping the
/// corners: OpenCV's `CHAIN_APPROX_SIMPLE` for a closed 8-connected chain.
pub(crate) fn compress<T>(chain: &[imageproc::point::Point<T>]) -> Vec<imageproc::point::Point<T>>
where
    T: Copy + Into<i64>,
{
    let n = chain.len();
    if n < 3 {
        return chain.to_vec();
    }
    let step = |a: &imageproc::point::Point<T>, b: &imageproc::point::Point<T>| {
        (b.x.into() - a.x.into(), b.y.into() - a.y.into())
    };
    (0..n)
        .filter(|&i| {
            let prev = &chain[(i + n - 1) % n];
            let next = &chain[(i + 1) % n];
            step(prev, &chain[i]) != step(&chain[i], next)
        })
        .map(|i| chain[i])
        .collect()
}

/// Area enclosed by a closed polygon (shoelace formula), as OpenCV's `contourArea`.
pub(crate) fn area<T>(polygon: &[imageproc::point::Point<T>]) -> f64
where
    T: Copy + Into<i64>,
{
    let n = polygon.len();
    let twice: i64 = (0..n)
        .map(|i| {
            let (a, b) = (&polygon[i], &polygon[(i + 1) % n]);
            a.x.into() * b.y.into() - b.x.into() * a.y.into()
        })
        .sum();
    twice.unsigned_abs() as f64 / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Luma;
    use imageproc::point::Point as Pt;

    const ALL: ContourRules = ContourRules {
        detect_holes: true,
        min_area: MIN_AREA,
        min_points: MIN_POINTS,
    };

    /// A framed mask of `w`x`h` with `fg(x, y)` (unframed coordinates) as foreground.
    fn framed(w: u32, h: u32, fg: impl Fn(u32, u32) -> bool) -> GrayImage {
        GrayImage::from_fn(w + 2, h + 2, |x, y| {
            let inside = x >= 1 && y >= 1 && x <= w && y <= h;
            Luma([if inside && fg(x - 1, y - 1) { 255 } else { 0 }])
        })
    }

    fn square(x0: u32, y0: u32, size: u32) -> impl Fn(u32, u32) -> bool {
        move |x, y| x >= x0 && y >= y0 && x < x0 + size && y < y0 + size
    }

    #[test]
    fn square_compresses_to_its_four_corners() {
        let found = outlines(&framed(30, 30, square(5, 7, 10)), ALL);
        assert_eq!(found.len(), 1);
        let mut corners = found[0].points.clone();
        corners.sort_by_key(|p| (p.y, p.x));
        let pts = |v: &[(u32, u32)]| v.iter().map(|&(x, y)| Point { x, y }).collect::<Vec<_>>();
        assert_eq!(corners, pts(&[(5, 7), (14, 7), (5, 16), (14, 16)]));
        assert_eq!(found[0].kind, PolygonType::External);
    }

    #[test]
    fn objects_touching_every_edge_are_external() {
        let found = outlines(&framed(20, 20, |_, _| true), ALL);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].kind, PolygonType::External);
        assert!(found[0].points.contains(&Point { x: 0, y: 0 }));
        assert!(found[0].points.contains(&Point { x: 19, y: 19 }));
    }

    #[test]
    fn ring_gives_an_external_and_an_internal_child() {
        let ring = |x: u32, y: u32| {
            let d2 = (x as i64 - 30).pow(2) + (y as i64 - 30).pow(2);
            (100..=400).contains(&d2)
        };
        let found = outlines(&framed(60, 60, ring), ALL);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].kind, PolygonType::External);
        assert_eq!(found[0].parent, None);
        assert_eq!(found[1].kind, PolygonType::Internal);
        assert_eq!(found[1].parent, Some(0));

        let no_holes = ContourRules {
            detect_holes: false,
            ..ALL
        };
        let outer_only = outlines(&framed(60, 60, ring), no_holes);
        assert_eq!(outer_only, found[..1]);
    }

    #[test]
    fn island_in_a_hole_is_its_own_external() {
        let shape = |x: u32, y: u32| {
            let in_square = |s: u32, size: u32| x >= s && y >= s && x < s + size && y < s + size;
            (in_square(0, 40) && !in_square(8, 24)) || in_square(14, 12)
        };
        let found = outlines(&framed(40, 40, shape), ALL);
        let kinds: Vec<_> = found.iter().map(|o| (o.kind, o.parent)).collect();
        assert_eq!(
            kinds,
            [
                (PolygonType::External, None),
                (PolygonType::Internal, Some(0)),
                (PolygonType::External, None)
            ]
        );
        let no_holes = ContourRules {
            detect_holes: false,
            ..ALL
        };
        assert_eq!(outlines(&framed(40, 40, shape), no_holes).len(), 1);
    }

    #[test]
    fn small_objects_and_lines_are_dropped() {
        // 7x7 square: outline area 36 < 50. A 1-pixel line: 2 vertices, area 0.
        let shapes = |x: u32, y: u32| square(2, 2, 7)(x, y) || (y == 20 && (5..35).contains(&x));
        assert!(outlines(&framed(40, 30, shapes), ALL).is_empty());
        // 9x9 square: outline area 64 >= 50 is kept.
        assert_eq!(outlines(&framed(40, 30, square(2, 2, 9)), ALL).len(), 1);
    }

    #[test]
    fn holes_of_dropped_objects_are_dropped_too() {
        let shape = |x: u32, y: u32| square(0, 0, 12)(x, y) && !square(2, 2, 8)(x, y);
        let rules = ContourRules {
            min_area: 1000.0,
            ..ALL
        };
        assert!(outlines(&framed(12, 12, shape), rules).is_empty());
    }

    #[test]
    fn compression_and_area() {
        let chain: Vec<Pt<u32>> = [(0, 0), (1, 0), (2, 0), (2, 1), (2, 2), (1, 1)]
            .iter()
            .map(|&(x, y)| Pt::new(x, y))
            .collect();
        let compressed = compress(&chain);
        assert_eq!(
            compressed,
            vec![Pt::new(0, 0), Pt::new(2, 0), Pt::new(2, 2)]
        );
        assert_eq!(area(&compressed), 2.0);
        assert_eq!(area(&chain), 2.0);
        assert_eq!(compress(&chain[..2]), chain[..2].to_vec());
    }
}
