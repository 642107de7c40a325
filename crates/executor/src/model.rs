//! A model loaded onto the device at one precision, ready to run a batch: a TorchScript module
//! (tch `CModule`) or AOTInductor packages (through the shim; a directory of them serves several
//! batch sizes, `crate::buckets`). Also reads what an exported file says about itself
//! (precision, input size) without loading it.

use crate::buckets::{self, Bucket, Route, Shape};
use crate::cuda::{self, AutocastGuard, ComputeDevice};
use crate::oom::ForwardFailure;
use crate::precision::{self, PrecisionMode};
use gpupool_api::{ModelFormat, Precision};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use tch::{CModule, Kind, Tensor};

/// What an exported file records about itself (`gpupool.json` / package metadata).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FileFacts {
    /// Precision the file was exported at.
    pub precision: Option<Precision>,
    /// Input side (height = width) it was exported for.
    pub size: Option<u32>,
    /// Largest batch the file accepts (AOTInductor packages with a dynamic batch dimension).
    pub max_batch: Option<usize>,
}

impl FileFacts {
    /// Reads the facts from a key lookup (TorchScript's JSON or a package's metadata).
    pub(crate) fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        Self {
            precision: get("precision").as_deref().and_then(precision::parse),
            size: get("size").and_then(|s| s.trim().parse().ok()),
            max_batch: get("max_batch").and_then(|s| s.trim().parse().ok()),
        }
    }

    /// Adds what package `file` of directory `path` says to what the earlier ones said: the
    /// packages of one model must agree on precision; the largest batch is the largest any takes.
    pub(crate) fn add_package(
        combined: &mut Option<FileFacts>,
        these: FileFacts,
        path: &str,
        file: &str,
    ) -> Result<(), String> {
        match combined {
            None => *combined = Some(these),
            Some(first) if first.precision != these.precision => {
                return Err(format!(
                    "packages in {path} disagree on precision ({:?} and {:?} in {file})",
                    first.precision, these.precision
                ))
            }
            Some(first) => first.max_batch = first.max_batch.max(these.max_batch),
        }
        Ok(())
    }
}

/// Checks that a model file exists and reads its self-description without loading it: the
/// `gpupool.json` extra file of a TorchScript archive, the metadata of an AOTInductor package, or
/// of every package in a directory of them (which must agree on precision).
pub(crate) fn inspect(path: &str, format: ModelFormat) -> Result<FileFacts, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("model file {path}: {e}"))?;
    if format == ModelFormat::Aotinductor && meta.is_dir() {
        let mut combined: Option<FileFacts> = None;
        for file in buckets::package_files(path)? {
            FileFacts::add_package(&mut combined, package_facts(&file)?, path, &file)?;
        }
        return Ok(combined.unwrap_or_default());
    }
    if !meta.is_file() {
        return Err(format!("model file {path} is not a regular file"));
    }
    if format == ModelFormat::Aotinductor {
        return package_facts(path);
    }
    match cuda::torchscript_extra_file(path, "gpupool.json") {
        Ok(Some(json)) => Ok(facts_from_json(&json)),
        Ok(None) => Ok(FileFacts::default()),
        Err(e) => Err(format!(
            "model file {path} is not a readable TorchScript archive: {e}"
        )),
    }
}

/// Suffix of the archive entry in which torch records a package's compile-time metadata.
const PACKAGE_METADATA_SUFFIX: &str = "wrapper_metadata.json";

/// What an AOTInductor package says about itself, read from its archive (a zip file holding the
/// metadata it was compiled with as JSON) without loading its shared library: `auto` precision
/// must know a package's precision before choosing what to load.
fn package_facts(path: &str) -> Result<FileFacts, String> {
    use std::io::Read;
    let not_a_package = |e: &dyn std::fmt::Display| {
        format!("model file {path} is not a readable AOTInductor package: {e}")
    };
    let file = std::fs::File::open(path).map_err(|e| format!("model file {path}: {e}"))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| not_a_package(&e))?;
    let entry = archive
        .file_names()
        .find(|n| n.ends_with(PACKAGE_METADATA_SUFFIX))
        .map(str::to_owned);
    let Some(entry) = entry else {
        return Ok(FileFacts::default());
    };
    let mut json = Vec::new();
    archive
        .by_name(&entry)
        .map_err(|e| not_a_package(&e))?
        .read_to_end(&mut json)
        .map_err(|e| not_a_package(&e))?;
    Ok(facts_from_json(&json))
}

/// Facts from a JSON object of string (or number) values; anything unreadable counts as absent.
fn facts_from_json(json: &[u8]) -> FileFacts {
    let value: serde_json::Value = serde_json::from_slice(json).unwrap_or(serde_json::Value::Null);
    FileFacts::from_lookup(|key| {
        value.get(key).map(|v| match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    })
}

enum Runner {
    /// TorchScript applies autocast in a graph optimisation pass: the graph executor's
    /// (thread-local) optimisation flag must stay on (libtorch's default), or autocast silently
    /// runs at fp32.
    Script {
        module: CModule,
        mode: PrecisionMode,
    },
    /// One or more AOTInductor packages (`crate::buckets`).
    Packages {
        /// The packages, each with what it takes.
        buckets: Vec<Bucket>,
        /// Which package runs each batch size.
        route: Route,
    },
}

/// A model on the device, at one precision.
pub(crate) struct LoadedModel {
    /// The precision it runs at.
    pub precision: Precision,
    /// Bytes its weights take on the device.
    pub weights_bytes: u64,
    /// Largest batch the file accepts, when it says.
    pub max_batch: Option<usize>,
    runner: Runner,
    device: ComputeDevice,
}

fn tch_call<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|_| format!("libtorch failed while {what}"))
}

impl LoadedModel {
    /// Loads `path` onto `device` to run at the concrete `precision`. `facts` is what [`inspect`]
    /// read; `runners` is how many slots may run it at once (AOTInductor model instances).
    pub fn load(
        path: &str,
        format: ModelFormat,
        device: ComputeDevice,
        precision: Precision,
        facts: &FileFacts,
        runners: usize,
    ) -> Result<Self, String> {
        match format {
            ModelFormat::Torchscript => Self::load_script(path, device, precision, facts),
            ModelFormat::Aotinductor => Self::load_package(path, device, precision, runners),
        }
    }

    fn load_script(
        path: &str,
        device: ComputeDevice,
        precision: Precision,
        facts: &FileFacts,
    ) -> Result<Self, String> {
        let mode = precision::mode_for(precision, facts.precision, ModelFormat::Torchscript)?;
        let mut module = CModule::load_on_device(Path::new(path), device.tch())
            .map_err(|e| format!("cannot load TorchScript model {path}: {e}"))?;
        module
            .f_set_eval()
            .map_err(|e| format!("cannot load TorchScript model {path}: {e}"))?;
        if let PrecisionMode::CastWeights(kind) = mode {
            tch_call("casting the weights", || {
                module.to(device.tch(), kind, false)
            })?;
        }
        let weights_bytes = module
            .named_parameters()
            .map_err(|e| format!("cannot read the parameters of {path}: {e}"))?
            .iter()
            .map(|(_, t)| {
                let elt = t.f_kind().map(Kind::elt_size_in_bytes).unwrap_or(4);
                (t.numel() * elt) as u64
            })
            .sum();
        Ok(Self {
            precision,
            weights_bytes,
            max_batch: facts.max_batch,
            runner: Runner::Script { module, mode },
            device,
        })
    }

    fn load_package(
        path: &str,
        device: ComputeDevice,
        precision: Precision,
        runners: usize,
    ) -> Result<Self, String> {
        let (packages, facts, weights_bytes) = buckets::load(path, device, runners)?;
        precision::mode_for(precision, facts.precision, ModelFormat::Aotinductor)?;
        Ok(Self {
            precision: facts.precision.unwrap_or(precision),
            weights_bytes,
            max_batch: facts.max_batch,
            runner: Runner::Packages {
                route: Route::least_padding(
                    &packages.iter().map(|b| b.shape).collect::<Vec<_>>(),
                    facts.max_batch.unwrap_or(1),
                ),
                buckets: packages,
            },
            device,
        })
    }

    /// Whether this is an AOTInductor package (fixed precision and batch range).
    pub fn is_package(&self) -> bool {
        matches!(self.runner, Runner::Packages { .. })
    }

    /// What each package takes, in route order (empty for a TorchScript module).
    pub fn package_shapes(&self) -> Vec<Shape> {
        match &self.runner {
            Runner::Packages { buckets, .. } => buckets.iter().map(|b| b.shape).collect(),
            Runner::Script { .. } => Vec::new(),
        }
    }

    /// Which package runs each batch size (packages only).
    pub fn route(&self) -> Option<&Route> {
        match &self.runner {
            Runner::Packages { route, .. } => Some(route),
            Runner::Script { .. } => None,
        }
    }

    /// Runs one batch: `input` is float32 NCHW on the device; returns float32 logits on the device.
    /// Work is queued on the calling thread's current stream (`stream` is its raw handle).
    pub fn forward(&self, input: &Tensor, stream: usize) -> Result<Tensor, ForwardFailure> {
        let out = tch::no_grad(|| match &self.runner {
            Runner::Script {
                module,
                mode: PrecisionMode::Native,
                ..
            } => module
                .forward_ts(&[input])
                .map_err(ForwardFailure::classify),
            Runner::Script {
                module,
                mode: PrecisionMode::CastWeights(kind),
                ..
            } => {
                let x = input.f_to_kind(*kind).map_err(ForwardFailure::classify)?;
                module.forward_ts(&[x]).map_err(ForwardFailure::classify)
            }
            Runner::Script {
                module,
                mode: PrecisionMode::Autocast(kind),
                ..
            } => {
                let _autocast = AutocastGuard::enter(self.device.tch(), *kind)
                    .map_err(|e| ForwardFailure::Other(e.to_string()))?;
                module
                    .forward_ts(&[input])
                    .map_err(ForwardFailure::classify)
            }
            Runner::Packages { buckets, route } => {
                buckets::run(buckets, route, input, stream).map_err(ForwardFailure::classify)
            }
        })?;
        if out.f_kind().map_err(ForwardFailure::classify)? == Kind::Float {
            Ok(out)
        } else {
            out.f_to_kind(Kind::Float).map_err(ForwardFailure::classify)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_parse_strings_and_numbers() {
        let f = FileFacts::from_lookup(|k| match k {
            "precision" => Some("fp16".into()),
            "size" => Some("64".into()),
            _ => None,
        });
        assert_eq!(
            f,
            FileFacts {
                precision: Some(Precision::Fp16),
                size: Some(64),
                max_batch: None
            }
        );
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let err = inspect("/nonexistent/model.pt", ModelFormat::Torchscript).unwrap_err();
        assert!(err.contains("/nonexistent/model.pt"), "{err}");
    }

    /// Writes a zip laid out like a package: the compiled library and the metadata JSON.
    fn package(path: &Path, metadata: &str) {
        use std::io::Write;
        let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
        let stored =
            zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Stored);
        zip.start_file("m/data/aotinductor/model/abc.wrapper.so", stored)
            .unwrap();
        zip.write_all(b"\x7fELF").unwrap();
        zip.start_file("m/data/aotinductor/model/abc.wrapper_metadata.json", stored)
            .unwrap();
        zip.write_all(metadata.as_bytes()).unwrap();
        zip.finish().unwrap();
    }

    #[test]
    fn package_metadata_is_read_without_loading_so_auto_knows_the_precision() {
        let dir = tempfile::tempdir().unwrap();
        let dynamic = dir.path().join("dynamic.pt2");
        let fixed = dir.path().join("fixed-8.pt2");
        package(
            &dynamic,
            r#"{"precision": "fp16", "size": "1024", "max_batch": "16"}"#,
        );
        package(
            &fixed,
            r#"{"precision": "fp16", "size": "1024", "max_batch": "8", "static": "true"}"#,
        );
        let aoti = ModelFormat::Aotinductor;
        let facts = inspect(fixed.to_str().unwrap(), aoti).unwrap();
        assert_eq!(
            facts,
            FileFacts {
                precision: Some(Precision::Fp16),
                size: Some(1024),
                max_batch: Some(8)
            }
        );
        let all = inspect(dir.path().to_str().unwrap(), aoti).unwrap();
        assert_eq!(
            (all.precision, all.max_batch),
            (Some(Precision::Fp16), Some(16))
        );
        assert_eq!(
            precision::candidates(Precision::Auto, all.precision, aoti, true),
            [Precision::Fp16],
            "auto runs a package at the precision it was compiled for"
        );
        package(&fixed, r#"{"precision": "bf16", "max_batch": "8"}"#);
        let err = inspect(dir.path().to_str().unwrap(), aoti).unwrap_err();
        assert!(err.contains("disagree on precision"), "{err}");
        std::fs::write(&fixed, b"not a zip").unwrap();
        let err = inspect(fixed.to_str().unwrap(), aoti).unwrap_err();
        assert!(err.contains("not a readable AOTInductor package"), "{err}");
    }
}
