//! A model served by several AOTInductor packages, each for its own batch sizes: packages compiled
//! for one fixed batch size run faster than one compiled for a dynamic range (the compiler can
//! specialise every kernel; torch.compile itself loses 37–51 % on these models with a dynamic
//! batch, docs/benchmarks.md), so a model's source may be a directory of packages, and each batch
//! runs on the package that needs the least padding.
//!
//! A package's metadata says what it takes: `max_batch` (the largest batch) and `static` ("true"
//! when it takes exactly `max_batch`, its batch padded up with zero images if smaller).

use crate::cuda::{AotiPackage, ComputeDevice};
use crate::model::FileFacts;
use std::path::Path;
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
    fn computed(self, n: usize) -> Option<usize> {
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
        if let Some(first) = &facts {
            if first.precision != these.precision {
                return Err(format!(
                    "packages in {path} disagree on precision ({:?} and {:?} in {file})",
                    first.precision, these.precision
                ));
            }
        }
        let shape = Shape {
            max_batch: these.max_batch.unwrap_or(1).max(1),
            fixed,
        };
        bytes += std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        facts.get_or_insert(these);
        buckets.push(Bucket { shape, package });
    }
    let mut facts = facts.unwrap_or_default();
    facts.max_batch = buckets.iter().map(|b| b.shape.max_batch).max();
    Ok((buckets, facts, bytes))
}

/// Runs `input` (`[n, …]`) on the bucket that suits `n`, padding it with zero images for a
/// fixed-size package and dropping their outputs.
pub(crate) fn run(buckets: &[Bucket], input: &Tensor, stream: usize) -> Result<Tensor, String> {
    let n = usize::try_from(input.size().first().copied().unwrap_or(0)).unwrap_or(0);
    let shapes: Vec<Shape> = buckets.iter().map(|b| b.shape).collect();
    let bucket = pick(&shapes, n)
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
