//! Clearing specks before contour tracing: objects and holes too small for their outline to reach
//! the area filter are removed from the mask first, so the tracer never follows them.
//!
//! A traced outline runs through the centres of border pixels. An object's outer outline therefore
//! lies inside the object's bounding box and encloses at most (width − 1) × (height − 1) px²; a
//! hole's outline runs through the object pixels around the hole, inside the hole's bounding box
//! grown by one pixel, and encloses at most (width + 1) × (height + 1) px². Below the minimum area
//! the filter would drop them anyway, so erasing such objects and filling such holes changes no
//! reported polygon. Confidences do not change either: they are means over the objects as
//! labelled before clearing (`super::postprocess`), and filled holes belong to no object.
//!
//! On the salt-and-pepper masks of untrained models (tens of thousands of fragments per image)
//! this is most of the tracing work; on clean masks it costs one pass over the runs of pixels.
//! Objects come labelled 8-connected by the caller (the same labelling rates the polygons);
//! background is labelled here, 4-connected, after the small objects are gone.

use super::components::{Components, Run};
use image::GrayImage;

/// Mask value of a filled hole pixel: foreground to the tracer (any non-zero value is), and
/// apart from the objects' own value so that what was filled can be told.
pub(crate) const FILLED: u8 = 128;

fn paint(mask: &mut GrayImage, run: &Run, value: u8) {
    let w = mask.width();
    let raw: &mut [u8] = mask;
    let row = (run.y * w) as usize;
    raw[row + run.x0 as usize..=row + run.x1 as usize].fill(value);
}

/// Erases objects and fills holes of `framed` (non-zero = foreground, one-pixel background
/// frame) whose outlines cannot enclose `min_area` px² (the module doc says why that is exact).
/// `objects` are the 8-connected components of `framed`'s foreground.
pub(crate) fn clear_specks(framed: &mut GrayImage, objects: &Components, min_area: f64) {
    if min_area <= 0.0 {
        return;
    }
    let boxes = objects.bounds();
    for (run, id) in objects.runs() {
        if let Some(b) = boxes[id] {
            if (b.width() - 1.0) * (b.height() - 1.0) < min_area {
                paint(framed, run, 0);
            }
        }
    }
    let (w, h) = framed.dimensions();
    let background = Components::label(framed, |v| v == 0, false);
    let boxes = background.bounds();
    for (run, id) in background.runs() {
        let Some(b) = boxes[id] else { continue };
        // Background touching the frame is outside every object, not a hole.
        let hole = b.x0 > 0 && b.y0 > 0 && b.x1 < w - 1 && b.y1 < h - 1;
        if hole && (b.width() + 1.0) * (b.height() + 1.0) < min_area {
            paint(framed, run, FILLED);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clear(m: &mut GrayImage, min_area: f64) {
        let objects = Components::label(m, |v| v != 0, true);
        clear_specks(m, &objects, min_area);
    }

    fn framed(rows: &[&str]) -> GrayImage {
        let (w, h) = (rows[0].len() as u32 + 2, rows.len() as u32 + 2);
        GrayImage::from_fn(w, h, |x, y| {
            let inside = x > 0 && y > 0 && x < w - 1 && y < h - 1;
            let on = inside && rows[(y - 1) as usize].as_bytes()[(x - 1) as usize] == b'#';
            image::Luma([if on { 255 } else { 0 }])
        })
    }

    fn rows(mask: &GrayImage) -> Vec<String> {
        (1..mask.height() - 1)
            .map(|y| {
                (1..mask.width() - 1)
                    .map(|x| match mask.get_pixel(x, y)[0] {
                        0 => '.',
                        FILLED => 'o',
                        _ => '#',
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn small_objects_go_and_small_holes_fill_large_ones_stay() {
        let mut m = framed(&[
            "#.........",
            "...######.",
            ".#.#....#.",
            "...#.##.#.",
            "...#....#.",
            "...######.",
            "........##",
        ]);
        clear(&mut m, 4.0);
        assert_eq!(
            rows(&m),
            [
                "..........",
                "...######.",
                "...#....#.",
                "...#....#.",
                "...#....#.",
                "...######.",
                "........##",
            ],
            "the two specks and the 2x1 island ((2-1)x(1-1) = 0 < 4) go; the ring and its 4x3 \
             hole ((4+1)x(3+1) = 20) stay"
        );
    }

    #[test]
    fn a_one_pixel_hole_is_filled_and_marked() {
        let ring = ["#####", "#####", "##.##", "#####", "#####"];
        // The object's box allows (5-1)x(5-1) = 16 px², the hole's (1+1)x(1+1) = 4.
        let mut m = framed(&ring);
        clear(&mut m, 5.0);
        assert_eq!(rows(&m), ["#####", "#####", "##o##", "#####", "#####"]);
        // With no area filter nothing changes.
        let mut m = framed(&ring);
        clear(&mut m, 0.0);
        assert_eq!(rows(&m), ring);
    }

    #[test]
    fn diagonal_neighbours_are_one_object() {
        // A 4x4 staircase: as one 8-connected object its box allows (4-1)x(4-1) = 9 ≥ 9, kept.
        let mut m = framed(&["#...", ".#..", "..#.", "...#"]);
        clear(&mut m, 9.0);
        assert_eq!(rows(&m), ["#...", ".#..", "..#.", "...#"]);
        clear(&mut m, 9.5);
        assert_eq!(rows(&m), ["....", "....", "....", "...."]);
    }
}
