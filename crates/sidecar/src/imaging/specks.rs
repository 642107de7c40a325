//! Clearing specks before contour tracing: objects and holes too small for their outline to reach
//! the area filter are removed from the mask first, so the tracer never follows them.
//!
//! A traced outline runs through the centres of border pixels. An object's outer outline therefore
//! lies inside the object's bounding box and encloses at most (width − 1) × (height − 1) px²; a
//! hole's outline runs through the object pixels around the hole, inside the hole's bounding box
//! grown by one pixel, and encloses at most (width + 1) × (height + 1) px². Below the minimum area
//! the filter would drop them anyway, so erasing such objects and filling such holes changes no
//! reported polygon. Filled hole pixels get their own value, which the tracer sees as foreground
//! but the confidence's flood fill does not, so confidences do not change either.
//!
//! On the salt-and-pepper masks of untrained models (tens of thousands of fragments per image)
//! this is most of the tracing work; on clean masks it costs one pass over the pixels.
//!
//! Both passes label connected components by runs: each row's runs of member pixels are joined
//! (union-find) with the runs of the row above that touch them, 8-connected for objects and
//! 4-connected for background, and each component's bounding box is the union of its runs'.

use image::GrayImage;

/// Mask value of a filled hole pixel: foreground for the tracer, not part of any object.
pub(crate) const FILLED: u8 = 128;

/// A horizontal run of member pixels in one row, `x0..=x1`.
#[derive(Debug, Clone, Copy)]
struct Run {
    y: u32,
    x0: u32,
    x1: u32,
}

/// Bounding box of a component, inclusive.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    x0: u32,
    y0: u32,
    x1: u32,
    y1: u32,
}

impl Bounds {
    fn of(r: &Run) -> Self {
        Bounds {
            x0: r.x0,
            y0: r.y,
            x1: r.x1,
            y1: r.y,
        }
    }

    fn merge(self, o: Bounds) -> Self {
        Bounds {
            x0: self.x0.min(o.x0),
            y0: self.y0.min(o.y0),
            x1: self.x1.max(o.x1),
            y1: self.y1.max(o.y1),
        }
    }

    fn width(&self) -> f64 {
        f64::from(self.x1 - self.x0 + 1)
    }

    fn height(&self) -> f64 {
        f64::from(self.y1 - self.y0 + 1)
    }
}

fn find(parent: &mut [usize], mut i: usize) -> usize {
    while parent[i] != i {
        parent[i] = parent[parent[i]];
        i = parent[i];
    }
    i
}

/// The runs of pixels for which `member` holds, and for each run the root of its component.
fn components(
    mask: &GrayImage,
    member: impl Fn(u8) -> bool,
    diagonal: bool,
) -> (Vec<Run>, Vec<usize>) {
    let (w, h) = mask.dimensions();
    let raw: &[u8] = mask.as_raw();
    let mut runs: Vec<Run> = Vec::new();
    let mut parent: Vec<usize> = Vec::new();
    let mut above = 0..0; // runs of the previous row
    let reach = u32::from(diagonal);
    for y in 0..h {
        let row = &raw[(y * w) as usize..((y + 1) * w) as usize];
        let start = runs.len();
        // Runs of the row above that end left of the current run can touch no later run either.
        let mut first = above.start;
        let mut x = 0u32;
        while x < w {
            if !member(row[x as usize]) {
                x += 1;
                continue;
            }
            let x0 = x;
            while x < w && member(row[x as usize]) {
                x += 1;
            }
            let run = Run { y, x0, x1: x - 1 };
            let id = runs.len();
            runs.push(run);
            parent.push(id);
            while first < above.end && runs[first].x1 + reach < run.x0 {
                first += 1;
            }
            let touching = runs[first..above.end]
                .iter()
                .take_while(|a| a.x0 <= run.x1 + reach)
                .count();
            for j in first..first + touching {
                let (ra, rb) = (find(&mut parent, j), find(&mut parent, id));
                if ra != rb {
                    parent[ra.max(rb)] = ra.min(rb);
                }
            }
        }
        above = start..runs.len();
    }
    let roots = (0..runs.len()).map(|i| find(&mut parent, i)).collect();
    (runs, roots)
}

/// Per component root, the bounding box of its runs.
fn bounds(runs: &[Run], roots: &[usize]) -> Vec<Option<Bounds>> {
    let mut out: Vec<Option<Bounds>> = vec![None; runs.len()];
    for (run, &root) in runs.iter().zip(roots) {
        let b = Bounds::of(run);
        out[root] = Some(out[root].map_or(b, |o| o.merge(b)));
    }
    out
}

fn paint(mask: &mut GrayImage, run: &Run, value: u8) {
    let w = mask.width();
    let raw: &mut [u8] = mask;
    let row = (run.y * w) as usize;
    raw[row + run.x0 as usize..=row + run.x1 as usize].fill(value);
}

/// Erases objects and fills holes of `framed` (non-zero = foreground, one-pixel background
/// frame) whose outlines cannot enclose `min_area` px² (the module doc says why that is exact).
pub(crate) fn clear_specks(framed: &mut GrayImage, min_area: f64) {
    if min_area <= 0.0 {
        return;
    }
    let (runs, roots) = components(framed, |v| v != 0, true);
    let boxes = bounds(&runs, &roots);
    for (run, &root) in runs.iter().zip(&roots) {
        if let Some(b) = boxes[root] {
            if (b.width() - 1.0) * (b.height() - 1.0) < min_area {
                paint(framed, run, 0);
            }
        }
    }
    let (w, h) = framed.dimensions();
    let (runs, roots) = components(framed, |v| v == 0, false);
    let boxes = bounds(&runs, &roots);
    for (run, &root) in runs.iter().zip(&roots) {
        let Some(b) = boxes[root] else { continue };
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
        clear_specks(&mut m, 4.0);
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
        clear_specks(&mut m, 5.0);
        assert_eq!(rows(&m), ["#####", "#####", "##o##", "#####", "#####"]);
        // With no area filter nothing changes.
        let mut m = framed(&ring);
        clear_specks(&mut m, 0.0);
        assert_eq!(rows(&m), ring);
    }

    #[test]
    fn diagonal_neighbours_are_one_object() {
        // A 4x4 staircase: as one 8-connected object its box allows (4-1)x(4-1) = 9 ≥ 9, kept.
        let mut m = framed(&["#...", ".#..", "..#.", "...#"]);
        clear_specks(&mut m, 9.0);
        assert_eq!(rows(&m), ["#...", ".#..", "..#.", "...#"]);
        clear_specks(&mut m, 9.5);
        assert_eq!(rows(&m), ["....", "....", "....", "...."]);
    }
}
