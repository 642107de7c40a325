//! Connected components of a mask, labelled by runs: each row's runs of member pixels are joined
//! (union-find) with the runs of the row above that touch them, 8-connected or 4-connected.
//!
//! One labelling of the objects serves two consumers: clearing specks (each component's bounding
//! box) and the polygons' confidences (each component's mean probability). Runs are few next to
//! pixels on clean masks, and even on salt-and-pepper noise a run-based pass touches each pixel
//! once, in row order.

use image::GrayImage;

/// A horizontal run of member pixels in one row, `x0..=x1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Run {
    /// Row.
    pub y: u32,
    /// First column.
    pub x0: u32,
    /// Last column (inclusive).
    pub x1: u32,
}

impl Run {
    /// Number of pixels in the run.
    pub fn len(&self) -> usize {
        (self.x1 - self.x0 + 1) as usize
    }
}

/// Bounding box of a component, inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bounds {
    /// Leftmost column.
    pub x0: u32,
    /// Top row.
    pub y0: u32,
    /// Rightmost column.
    pub x1: u32,
    /// Bottom row.
    pub y1: u32,
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

    /// Width in pixels.
    pub fn width(&self) -> f64 {
        f64::from(self.x1 - self.x0 + 1)
    }

    /// Height in pixels.
    pub fn height(&self) -> f64 {
        f64::from(self.y1 - self.y0 + 1)
    }
}

/// The runs of a mask's member pixels in raster order, and for each run the id of its component
/// (the index of the component's first run).
#[derive(Debug, Clone, Default)]
pub(crate) struct Components {
    runs: Vec<Run>,
    roots: Vec<usize>,
}

fn find(parent: &mut [usize], mut i: usize) -> usize {
    while parent[i] != i {
        parent[i] = parent[parent[i]];
        i = parent[i];
    }
    i
}

impl Components {
    /// Labels the pixels of `mask` for which `member` holds; with `diagonal`, pixels touching at a
    /// corner are connected (8-connectivity), else only at an edge (4-connectivity).
    pub fn label(mask: &GrayImage, member: impl Fn(u8) -> bool, diagonal: bool) -> Self {
        let (w, h) = mask.dimensions();
        let raw: &[u8] = mask.as_raw();
        let mut runs: Vec<Run> = Vec::new();
        let mut parent: Vec<usize> = Vec::new();
        let mut above = 0..0; // runs of the previous row
        let reach = u32::from(diagonal);
        for y in 0..h {
            let row = &raw[(y * w) as usize..((y + 1) * w) as usize];
            let start = runs.len();
            // Runs of the row above that end left of the current run can touch no later run.
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
        Components { runs, roots }
    }

    /// Every run with its component id.
    pub fn runs(&self) -> impl Iterator<Item = (&Run, usize)> {
        self.runs.iter().zip(self.roots.iter().copied())
    }

    /// How many ids there are (component ids are below this).
    pub fn id_bound(&self) -> usize {
        self.runs.len()
    }

    /// Per component id, the bounding box of its runs (`None` for indices that are no id).
    pub fn bounds(&self) -> Vec<Option<Bounds>> {
        let mut out: Vec<Option<Bounds>> = vec![None; self.runs.len()];
        for (run, root) in self.runs() {
            let b = Bounds::of(run);
            out[root] = Some(out[root].map_or(b, |o| o.merge(b)));
        }
        out
    }

    /// The component containing pixel (`x`, `y`), if it is a member pixel.
    pub fn id_at(&self, x: u32, y: u32) -> Option<usize> {
        let row_start = self.runs.partition_point(|r| r.y < y);
        let row_end = row_start + self.runs[row_start..].partition_point(|r| r.y == y);
        let i = row_start + self.runs[row_start..row_end].partition_point(|r| r.x1 < x);
        (i < row_end && self.runs[i].x0 <= x).then(|| self.roots[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(rows: &[&str]) -> GrayImage {
        GrayImage::from_fn(rows[0].len() as u32, rows.len() as u32, |x, y| {
            image::Luma([u8::from(rows[y as usize].as_bytes()[x as usize] == b'#')])
        })
    }

    #[test]
    fn diagonal_touch_joins_only_with_8_connectivity() {
        let m = mask(&["#..", ".#.", "..#"]);
        let eight = Components::label(&m, |v| v != 0, true);
        let four = Components::label(&m, |v| v != 0, false);
        let ids = |c: &Components| [(0, 0), (1, 1), (2, 2)].map(|(x, y)| c.id_at(x, y));
        assert_eq!(ids(&eight), [Some(0); 3]);
        assert_eq!(ids(&four), [Some(0), Some(1), Some(2)]);
        assert_eq!(eight.id_at(1, 0), None, "background has no component");
    }

    #[test]
    fn a_u_shape_merges_into_its_first_run_and_has_one_box() {
        // Two arms meet only in the last row: labelling must merge them after the fact.
        let m = mask(&["#..#.", "#..#.", "####.", "....#"]);
        let c = Components::label(&m, |v| v != 0, false);
        assert_eq!(
            c.id_at(3, 0),
            Some(0),
            "the right arm joins the left one's id"
        );
        assert_eq!(
            c.id_at(4, 3),
            Some(5),
            "4-connected: the corner pixel is its own object"
        );
        let b = c.bounds();
        assert_eq!(
            b[0],
            Some(Bounds {
                x0: 0,
                y0: 0,
                x1: 3,
                y1: 2
            })
        );
        assert_eq!(b.iter().flatten().count(), 2);
        let pixels: usize = c
            .runs()
            .filter(|&(_, id)| id == 0)
            .map(|(r, _)| r.len())
            .sum();
        assert_eq!(pixels, 8);
    }

    #[test]
    fn id_at_finds_runs_in_every_position_of_a_row() {
        let m = mask(&["##.#.##", "......."]);
        let c = Components::label(&m, |v| v != 0, true);
        let found: Vec<_> = (0..7).map(|x| c.id_at(x, 0)).collect();
        assert_eq!(
            found,
            [Some(0), Some(0), None, Some(1), None, Some(2), Some(2)]
        );
        assert_eq!(c.id_at(3, 1), None, "an empty row");
        assert_eq!(c.id_at(0, 5), None, "below the last row");
    }
}
