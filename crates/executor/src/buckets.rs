//! A model served by several AOTInductor packages, each for its own batch sizes: packages compiled
//! for one fixed batch size run faster than one compiled for a dynamic range (the compiler can
//! specialise every kernel; torch.compile itself loses 37–51 % on these models with a dynamic
//! batch, docs/benchmarks.md), so a model's source may be a directory of packages, and each batch
//! runs on the package that needs the least padding.
//!
//! A package's metadata says what it takes: `max_batch` (the largest batch) and `static` ("true"
//! when it takes exactly `max_batch`, its batch padded up with zero images if smaller).
//!
//! Which package runs a batch of `n` is a [`Route`]: at first the least padding ([`pick`]); once
//! calibration has timed every package at the sizes it takes without padding, the one expected to
//! finish soonest ([`plan_route`]): a fixed batch-8 package padding 6 images may beat a dynamic
//! one running 6 (on the H200, torch.compile ran HRNet 1.6× faster at a static batch of 8 than
//! with a dynamic batch dimension, docs/benchmarks.md).

use crate::cuda::{AotiPackage, ComputeDevice};
use crate::model::FileFacts;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use tch::{Kind, Tensor};

/// What one package accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shape {
    /// Largest batch it takes.
    pub max_batch: usize,
    /// Takes exactly `max_batch` images (smaller batches are padded).
    pub fixed: bool,
}

impl Shape {
    /// Images the package computes for a batch of `n`, if it takes `n` at all.
    pub(crate) fn computed(self, n: usize) -> Option<usize> {
        match (n <= self.max_batch, self.fixed) {
            (false, _) => None,
            (true, true) => Some(self.max_batch),
            (true, false) => Some(n),
        }
    }
}

/// The package for a batch of `n`: the least padding, then a fixed-size one (specialised kernels),
/// then the first listed. `None` when no package takes `n`.
pub(crate) fn pick(shapes: &[Shape], n: usize) -> Option<usize> {
    shapes
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.computed(n).map(|c| (c, !s.fixed, i)))
        .min()
        .map(|(_, _, i)| i)
}

/// One package's measured latency for a batch of `batch` (which it takes without padding).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Timing {
    /// Index of the package.
    pub bucket: usize,
    /// Batch size run.
    pub batch: usize,
    /// Median latency, milliseconds.
    pub latency_ms: f64,
}

/// The latency to expect from package `shape` for a batch of `n`, from its timings: a fixed-size
/// package takes as long whatever the batch it pads; a dynamic one is interpolated linearly
/// between the measured sizes around `n` (below the smallest, the smallest's; above the largest,
/// proportionally more). `None` without timings or when it does not take `n`.
fn expected_ms(shape: Shape, timings: &[(usize, f64)], n: usize) -> Option<f64> {
    shape.computed(n)?;
    if shape.fixed {
        return timings.first().map(|&(_, ms)| ms);
    }
    let below = timings
        .iter()
        .filter(|&&(b, _)| b <= n)
        .max_by_key(|&&(b, _)| b);
    let above = timings
        .iter()
        .filter(|&&(b, _)| b >= n)
        .min_by_key(|&&(b, _)| b);
    match (below, above) {
        (Some(&(b0, ms0)), Some(&(b1, ms1))) if b1 > b0 => {
            Some(ms0 + (ms1 - ms0) * (n - b0) as f64 / (b1 - b0) as f64)
        }
        (Some(&(_, ms)), Some(_)) | (None, Some(&(_, ms))) => Some(ms),
        (Some(&(b0, ms0)), None) => Some(ms0 * n as f64 / b0 as f64),
        (None, None) => None,
    }
}

/// The package for every batch size 1..=`cap` (index `n - 1`): the soonest expected to finish by
/// the timings, then the least padding, then a fixed-size one, then the first listed; by [`pick`]
/// alone for sizes no timed package takes. `None` where no package takes the size.
pub(crate) fn plan_route(shapes: &[Shape], timings: &[Timing], cap: usize) -> Vec<Option<usize>> {
    let per_bucket: Vec<Vec<(usize, f64)>> = (0..shapes.len())
        .map(|b| {
            timings
                .iter()
                .filter(|t| t.bucket == b)
                .map(|t| (t.batch, t.latency_ms))
                .collect()
        })
        .collect();
    (1..=cap)
        .map(|n| {
            shapes
                .iter()
                .enumerate()
                .filter_map(|(i, &s)| {
                    let ms = expected_ms(s, &per_bucket[i], n)?;
                    Some((ms, s.computed(n)?, !s.fixed, i))
                })
                .min_by(|a, b| {
                    a.0.total_cmp(&b.0)
                        .then(a.1.cmp(&b.1))
                        .then(a.2.cmp(&b.2))
                        .then(a.3.cmp(&b.3))
                })
                .map(|(_, _, _, i)| i)
                .or_else(|| pick(shapes, n))
        })
        .collect()
}

/// The packages calibration times for a batch of `n`: those that take it without padding, else
/// the one that pads least ([`pick`]); none when no package takes `n`.
pub(crate) fn to_time(shapes: &[Shape], n: usize) -> Vec<usize> {
    let exact: Vec<usize> = (0..shapes.len())
        .filter(|&b| shapes[b].computed(n) == Some(n))
        .collect();
    if exact.is_empty() {
        pick(shapes, n).into_iter().collect()
    } else {
        exact
    }
}

/// Which package runs each batch size; changed once, by calibration, before any slot runs, and
/// read lock-free by every batch.
#[derive(Debug)]
pub(crate) struct Route(Vec<AtomicUsize>);

/// Marks a batch size no package takes.
const NO_PACKAGE: usize = usize::MAX;

impl Route {
    /// The least-padding route for sizes 1..=`cap`.
    pub fn least_padding(shapes: &[Shape], cap: usize) -> Self {
        Route(
            (1..=cap)
                .map(|n| AtomicUsize::new(pick(shapes, n).unwrap_or(NO_PACKAGE)))
                .collect(),
        )
    }

    /// The package for a batch of `n`.
    pub fn get(&self, n: usize) -> Option<usize> {
        let i = self.0.get(n.checked_sub(1)?)?.load(Ordering::Relaxed);
        (i != NO_PACKAGE).then_some(i)
    }

    /// Sends batches of `n` to package `bucket` (calibration times each package this way).
    pub fn set(&self, n: usize, bucket: usize) {
        if let Some(slot) = n.checked_sub(1).and_then(|i| self.0.get(i)) {
            slot.store(bucket, Ordering::Relaxed);
        }
    }

    /// Replaces the whole route (index `n - 1`, as [`plan_route`] gives it).
    pub fn replace(&self, plan: &[Option<usize>]) {
        for (n, bucket) in (1..).zip(plan) {
            self.set(n, bucket.unwrap_or(NO_PACKAGE));
        }
    }
}

/// A loaded package and what it takes.
pub(crate) struct Bucket {
    pub shape: Shape,
    pub package: AotiPackage,
}

/// The `.pt2` files a source names: the file itself, or every package in the directory, by name.
pub(crate) fn package_files(path: &str) -> Result<Vec<String>, String> {
    let p = Path::new(path);
    if !p.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files: Vec<String> = std::fs::read_dir(p)
        .map_err(|e| format!("package directory {path}: {e}"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|f| f.extension().is_some_and(|x| x == "pt2") && f.is_file())
        .map(|f| f.to_string_lossy().into_owned())
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!("package directory {path} holds no .pt2 package"));
    }
    Ok(files)
}

/// Loads every package of `path` onto `device` with `runners` instances each. Returns the buckets,
/// what the files say about themselves (they must agree on precision), and their total size.
pub(crate) fn load(
    path: &str,
    device: ComputeDevice,
    runners: usize,
) -> Result<(Vec<Bucket>, FileFacts, u64), String> {
    let cuda_device = device.cuda_index();
    let mut buckets = Vec::new();
    let mut facts: Option<FileFacts> = None;
    let mut bytes = 0u64;
    for file in package_files(path)? {
        let package = AotiPackage::load(&file, cuda_device, runners)
            .map_err(|e| format!("cannot load AOTInductor package {file}: {e}"))?;
        let these = FileFacts::from_lookup(|key| package.metadata(key).ok().flatten());
        let fixed = package
            .metadata("static")
            .ok()
            .flatten()
            .is_some_and(|v| v.trim() == "true");
        let shape = Shape {
            max_batch: these.max_batch.unwrap_or(1).max(1),
            fixed,
        };
        FileFacts::add_package(&mut facts, these, path, &file)?;
        bytes += std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        buckets.push(Bucket { shape, package });
    }
    let mut facts = facts.unwrap_or_default();
    facts.max_batch = buckets.iter().map(|b| b.shape.max_batch).max();
    Ok((buckets, facts, bytes))
}

/// Runs `input` (`[n, …]`) on the bucket `route` gives for `n`, padding it with zero images for a
/// fixed-size package and dropping their outputs.
pub(crate) fn run(
    buckets: &[Bucket],
    route: &Route,
    input: &Tensor,
    stream: usize,
) -> Result<Tensor, String> {
    let n = usize::try_from(input.size().first().copied().unwrap_or(0)).unwrap_or(0);
    let bucket = route
        .get(n)
        .and_then(|i| buckets.get(i))
        .ok_or_else(|| format!("no package takes a batch of {n}"))?;
    let computed = bucket.shape.computed(n).unwrap_or(n);
    if computed == n {
        return bucket.package.run(input, stream).map_err(|e| e.to_string());
    }
    let mut pad_shape = input.size();
    pad_shape[0] = i64::try_from(computed - n).unwrap_or(0);
    let torch = |e: tch::TchError| e.to_string();
    let pad = Tensor::f_zeros(&pad_shape, (Kind::Float, input.device())).map_err(torch)?;
    let padded = Tensor::f_cat(&[input, &pad], 0).map_err(torch)?;
    let out = bucket
        .package
        .run(&padded, stream)
        .map_err(|e| e.to_string())?;
    out.f_narrow(0, 0, i64::try_from(n).unwrap_or(0))
        .map_err(torch)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DYNAMIC_16: Shape = Shape {
        max_batch: 16,
        fixed: false,
    };
    const FIXED_8: Shape = Shape {
        max_batch: 8,
        fixed: true,
    };
    const FIXED_1: Shape = Shape {
        max_batch: 1,
        fixed: true,
    };

    #[test]
    fn least_padding_then_fixed_size_wins() {
        let shapes = [DYNAMIC_16, FIXED_8, FIXED_1];
        assert_eq!(
            pick(&shapes, 1),
            Some(2),
            "batch of one: the fixed-1 package"
        );
        assert_eq!(
            pick(&shapes, 5),
            Some(0),
            "5 on the dynamic one rather than padded to 8"
        );
        assert_eq!(
            pick(&shapes, 8),
            Some(1),
            "8: no padding either way, fixed wins"
        );
        assert_eq!(pick(&shapes, 12), Some(0));
        assert_eq!(pick(&shapes, 17), None);
    }

    fn timing(bucket: usize, batch: usize, latency_ms: f64) -> Timing {
        Timing {
            bucket,
            batch,
            latency_ms,
        }
    }

    #[test]
    fn measured_latency_routes_each_size_to_the_soonest_package() {
        // A dynamic 1–16 package and a fixed batch-8 one: the fixed one runs 8 images in 38 ms,
        // the dynamic one 1 in 19, 2 in 20, 4 in 30 and 8 in 60 (shapes like the H200's).
        let shapes = [DYNAMIC_16, FIXED_8];
        let timings = [
            timing(0, 1, 19.0),
            timing(0, 2, 20.0),
            timing(0, 4, 30.0),
            timing(0, 8, 60.0),
            timing(1, 8, 38.0),
        ];
        let route = plan_route(&shapes, &timings, 16);
        // 5 on the dynamic one: 30 + (60 − 30) / 4 = 37.5 ms < 38; from 6 on (45 ms) padding to 8
        // pays; above 8 only the dynamic one takes the batch.
        let dynamic = Some(0);
        let fixed = Some(1);
        assert_eq!(
            route[..8],
            [dynamic, dynamic, dynamic, dynamic, dynamic, fixed, fixed, fixed]
        );
        assert_eq!(route[8..], [dynamic; 8]);
    }

    #[test]
    fn calibration_times_every_package_that_runs_a_size_unpadded() {
        let shapes = [DYNAMIC_16, FIXED_8, FIXED_1];
        assert_eq!(to_time(&shapes, 1), [0, 2]);
        assert_eq!(to_time(&shapes, 8), [0, 1]);
        assert_eq!(to_time(&shapes, 5), [0]);
        assert_eq!(
            to_time(&[FIXED_8], 4),
            [0],
            "padded when nothing else takes it"
        );
        assert!(to_time(&[FIXED_8], 9).is_empty());
    }

    #[test]
    fn without_timings_the_route_is_the_least_padding() {
        let shapes = [DYNAMIC_16, FIXED_8, FIXED_1];
        let planned = plan_route(&shapes, &[], 17);
        let least: Vec<_> = (1..=17).map(|n| pick(&shapes, n)).collect();
        assert_eq!(planned, least);
        assert_eq!(planned[16], None, "nothing takes 17");
        let route = Route::least_padding(&shapes, 16);
        assert_eq!(
            (route.get(1), route.get(8), route.get(5)),
            (Some(2), Some(1), Some(0))
        );
        assert_eq!((route.get(0), route.get(17)), (None, None));
        route.replace(&plan_route(&shapes, &[timing(1, 8, 1.0)], 16));
        assert_eq!(
            route.get(5),
            Some(1),
            "the timed fixed package now takes 5, padded"
        );
        assert_eq!(route.get(12), Some(0));
    }

    #[test]
    fn a_lone_fixed_package_pads_everything_up() {
        assert_eq!(pick(&[FIXED_8], 3), Some(0));
        assert_eq!(FIXED_8.computed(3), Some(8));
        assert_eq!(pick(&[FIXED_8], 9), None);
    }

    #[test]
    fn a_file_is_its_own_package_list_and_an_empty_directory_is_an_error() {
        assert_eq!(
            package_files("/some/model.pt2"),
            Ok(vec!["/some/model.pt2".to_owned()])
        );
        let dir = std::env::temp_dir().join(format!("gpupool-buckets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("notes.txt"), b"x").unwrap();
        let err = package_files(dir.to_str().unwrap()).unwrap_err();
        assert!(err.contains("holds no .pt2"), "{err}");
        std::fs::write(dir.join("b8.pt2"), b"x").unwrap();
        std::fs::write(dir.join("b1.pt2"), b"x").unwrap();
        let files = package_files(dir.to_str().unwrap()).unwrap();
        assert!(files[0].ends_with("b1.pt2") && files[1].ends_with("b8.pt2"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
