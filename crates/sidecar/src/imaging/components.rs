//! Connected components of a mask, labelled by runs: each row's runs of member pixels are joined
//! (union-find) with the runs of the row above that touch them, 8-connected or 4-connected.
//!
//! One labelling of the objects serves two consumers: clearing specks (each component's bounding
//! box) and the polygons' confidences (each component's mean probability). Runs are few next to
//! pixels on clean masks, and even on salt-and-pepper noise a run-based pass touches each pixel
//! once, in row order. Tall masks are labelled in horizontal bands on scoped threads, whose
//! touching rows are joined afterwards; the result is exactly one pass's.

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

/// Most horizontal bands one labelling is split into, each labelled on its own thread: a request's
/// post-processing is on its critical path, and a GPU host has cores to spare beside the requests
/// in flight (8 closed-loop clients keep at most 8 of the H200 host's 16 busy). With two bands on
/// the 2-core build machine a 1280×960 noise mask's polygons took 7 % less time
/// (docs/benchmarks.md); four leave cores to the other requests.
const MAX_BANDS: usize = 4;
/// Fewest rows a band has: below this, a thread costs more than it saves.
const MIN_BAND_ROWS: u32 = 128;

/// Runs and union-find parents (indices into the runs), as labelling builds them.
struct Labelling {
    runs: Vec<Run>,
    parent: Vec<usize>,
}

impl Labelling {
    /// Joins the runs of one row (`below`) with those of the row above (`above`) that touch them:
    /// at an edge, or also at a corner with `reach` 1. The root of a joined set is always its
    /// lowest run index, so labelling in bands gives exactly the sequential result.
    fn join(&mut self, above: std::ops::Range<usize>, below: std::ops::Range<usize>, reach: u32) {
        let mut first = above.start;
        for id in below {
            let run = self.runs[id];
            // Runs of the row above that end left of this run can touch no later run either.
            while first < above.end && self.runs[first].x1 + reach < run.x0 {
                first += 1;
            }
            let touching = self.runs[first..above.end]
                .iter()
                .take_while(|a| a.x0 <= run.x1 + reach)
                .count();
            for j in first..first + touching {
                let (ra, rb) = (find(&mut self.parent, j), find(&mut self.parent, id));
                if ra != rb {
                    self.parent[ra.max(rb)] = ra.min(rb);
                }
            }
        }
    }

    /// Labels rows `rows` of a `w`-wide raster on their own; returns the range of run indices of
    /// their first and last row, for joining with the neighbouring bands.
    fn band(
        raw: &[u8],
        w: u32,
        rows: std::ops::Range<u32>,
        member: &impl Fn(u8) -> bool,
        reach: u32,
    ) -> (Self, std::ops::Range<usize>, std::ops::Range<usize>) {
        let mut out = Labelling {
            runs: Vec::new(),
            parent: Vec::new(),
        };
        let mut above = 0..0;
        let mut first_row = 0..0;
        for y in rows.clone() {
            let row = &raw[(y * w) as usize..((y + 1) * w) as usize];
            let start = out.runs.len();
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
                out.parent.push(out.runs.len());
                out.runs.push(Run { y, x0, x1: x - 1 });
            }
            let this = start..out.runs.len();
            if y == rows.start {
                first_row = this.clone();
            } else {
                out.join(above, this.clone(), reach);
            }
            above = this;
        }
        (out, first_row, above)
    }
}

impl Components {
    /// Labels the pixels of `mask` for which `member` holds; with `diagonal`, pixels touching at a
    /// corner are connected (8-connectivity), else only at an edge (4-connectivity). A tall mask is
    /// labelled in horizontal bands on scoped threads ([`MAX_BANDS`]), then the bands' touching
    /// rows are joined: the result is the same as one pass's.
    pub fn label(mask: &GrayImage, member: impl Fn(u8) -> bool + Sync, diagonal: bool) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let bands = MAX_BANDS
            .min(cores)
            .min((mask.height() / MIN_BAND_ROWS).max(1) as usize);
        Self::label_in_bands(mask, member, diagonal, bands)
    }

    /// [`Components::label`] in `bands` horizontal bands (at least one).
    fn label_in_bands(
        mask: &GrayImage,
        member: impl Fn(u8) -> bool + Sync,
        diagonal: bool,
        bands: usize,
    ) -> Self {
        let (w, h) = mask.dimensions();
        let raw: &[u8] = mask.as_raw();
        let reach = u32::from(diagonal);
        let bands = bands.max(1);
        let edges: Vec<u32> = (0..=bands)
            .map(|i| (i as u64 * u64::from(h) / bands as u64) as u32)
            .collect();
        let labelled: Vec<_> = std::thread::scope(|scope| {
            let member = &member;
            let handles: Vec<_> = edges
                .windows(2)
                .skip(1)
                .map(|e| {
                    let rows = e[0]..e[1];
                    scope.spawn(move || Labelling::band(raw, w, rows, member, reach))
                })
                .collect();
            let first = Labelling::band(raw, w, edges[0]..edges[1], member, reach);
            std::iter::once(first)
                .chain(handles.into_iter().map(|h| {
                    h.join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                }))
                .collect()
        });
        // The first band's runs and parents stay where they are; the others follow, renumbered,
        // and each is joined to the one above at their touching rows.
        let mut parts = labelled.into_iter();
        let Some((mut all, _, mut above)) = parts.next() else {
            return Self::default();
        };
        let shift = |rows: std::ops::Range<usize>, by: usize| rows.start + by..rows.end + by;
        for (band, first_row, last_row) in parts {
            let offset = all.runs.len();
            all.runs.extend(band.runs);
            all.parent
                .extend(band.parent.into_iter().map(|p| p + offset));
            all.join(above, shift(first_row, offset), reach);
            above = shift(last_row, offset);
        }
        let roots = (0..all.runs.len())
            .map(|i| find(&mut all.parent, i))
            .collect();
        Components {
            runs: all.runs,
            roots,
        }
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
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn bands_label_exactly_as_one_pass(
            w in 1u32..40,
            h in 1u32..300,
            bands in 2usize..6,
            density in 0.05f64..0.95,
            seed in any::<u64>(),
            diagonal in any::<bool>(),
        ) {
            let mut state = seed | 1;
            let mask = GrayImage::from_fn(w, h, |_, _| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                image::Luma([u8::from((state % 1000) as f64 / 1000.0 < density)])
            });
            let banded = Components::label_in_bands(&mask, |v| v != 0, diagonal, bands);
            let one = Components::label_in_bands(&mask, |v| v != 0, diagonal, 1);
            prop_assert_eq!(&banded.runs, &one.runs);
            prop_assert_eq!(&banded.roots, &one.roots);
        }
    }

    #[test]
    fn an_object_spanning_every_band_is_one_component() {
        // A vertical bar through all bands, and a zigzag crossing each band edge at a corner: one
        // component each with 8-connectivity; the zigzag falls apart with 4.
        let (w, h) = (8, 4 * MIN_BAND_ROWS + 3);
        let mask = GrayImage::from_fn(w, h, |x, y| {
            image::Luma([u8::from(x == 0 || x == 2 + y % 2)])
        });
        let eight = Components::label_in_bands(&mask, |v| v != 0, true, MAX_BANDS);
        let four = Components::label_in_bands(&mask, |v| v != 0, false, MAX_BANDS);
        let ids = |c: &Components| {
            let mut ids: Vec<usize> = c.runs().map(|(_, id)| id).collect();
            ids.sort_unstable();
            ids.dedup();
            ids.len()
        };
        assert_eq!(ids(&eight), 2, "the bar and the zigzag");
        assert_eq!(
            ids(&four),
            1 + h as usize,
            "the bar, and every zigzag step alone"
        );
    }

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
