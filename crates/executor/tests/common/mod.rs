//! Test fixture: small segmentation models exported once by `tests/models/export.py` (with the
//! torch venv of `tests/setup/torch-venv.sh`) into `<target>/test-models/`, and config builders.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use gpupool_api::sidecar::{AdmissionConfig, SidecarConfig, SidecarModelConfig};
use gpupool_api::{InputSpec, ModelFormat, ModelSource, Precision};
use gpupool_executor::{CalibrationOptions, DeviceChoice, EngineOptions};
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

/// Input side of the test models.
pub const SIZE: u32 = 64;
/// Channel width of the test models (full models use 64).
pub const WIDTH: u32 = 8;

static EXPORT_LOCK: Mutex<()> = Mutex::new(());

/// `<target>/test-models`, found from the test binary's own path (`<target>/debug/deps/...`).
pub fn models_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target = exe.ancestors().nth(3).unwrap().to_path_buf();
    target.join("test-models")
}

/// The venv python: `$GPUPOOL_VENV/bin/python` or `~/.cache/gpupool/venv/bin/python`.
pub fn venv_python() -> PathBuf {
    let venv = std::env::var_os("GPUPOOL_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/gpupool/venv")
        });
    venv.join("bin/python")
}

/// `tests/models/export.py` of this checkout; for a test binary carried to another machine, the
/// repository that holds the binary's target directory.
fn export_script() -> PathBuf {
    let built_in = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/models/export.py");
    if built_in.is_file() {
        return built_in;
    }
    models_dir().join("../../tests/models/export.py")
}

/// A hash of the export script and the architectures: cached files are re-exported when they change.
fn sources_hash() -> u64 {
    let mut hasher = DefaultHasher::new();
    for source in ["export.py", "spheroid.py"] {
        let path = export_script().with_file_name(source);
        std::fs::read(&path).unwrap_or_default().hash(&mut hasher);
    }
    hasher.finish()
}

/// Exports (once; later runs reuse the file) `model` with the given settings and returns its path,
/// or why the export failed (e.g. no C++ compiler for an AOTInductor package).
pub fn try_export(
    model: &str,
    precision: &str,
    format: &str,
    extra: &[&str],
) -> Result<PathBuf, String> {
    let suffix = if format == "aotinductor" { "pt2" } else { "pt" };
    let tag = extra.join("").replace("--", "-").replace(' ', "");
    let hash = sources_hash();
    let path = models_dir().join(format!(
        "{model}-s{SIZE}-w{WIDTH}-{precision}{tag}-{hash:016x}.{suffix}"
    ));
    let _guard = EXPORT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if path.is_file() {
        return Ok(path);
    }
    std::fs::create_dir_all(models_dir()).unwrap();
    // Export to a temporary name and rename, so a concurrent test binary never sees half a file.
    let tmp = path.with_extension(format!("{}.{suffix}", std::process::id()));
    let size = SIZE.to_string();
    let width = WIDTH.to_string();
    let output = Command::new(venv_python())
        .arg(export_script())
        .args([
            "--model",
            model,
            "--size",
            &size,
            "--width",
            &width,
            "--precision",
            precision,
        ])
        .args([
            "--format", format, "--device", "cpu", "--seed", "0", "--out",
        ])
        .arg(&tmp)
        .args(extra)
        .output()
        .map_err(|e| format!("running {}: {e}", venv_python().display()))?;
    if !output.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!(
            "export of {model} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    std::fs::rename(&tmp, &path).unwrap();
    Ok(path)
}

/// A TorchScript test model (fp32), exported on first use.
pub fn torchscript(model: &str) -> PathBuf {
    try_export(model, "fp32", "torchscript", &[]).unwrap()
}

/// One model entry of a config.
pub fn model_config(name: &str, path: &Path) -> SidecarModelConfig {
    SidecarModelConfig {
        name: name.to_owned(),
        source: ModelSource {
            uri: path.display().to_string(),
            format: ModelFormat::Torchscript,
        },
        input: InputSpec {
            width: SIZE,
            height: SIZE,
            ..InputSpec::default()
        },
        precision: Precision::Auto,
        max_batch: 8,
        slots: 2,
        max_queue_delay_ms: 10,
        resident: false,
    }
}

/// A sidecar config with these models and a generous budget.
pub fn config(models: Vec<SidecarModelConfig>) -> SidecarConfig {
    SidecarConfig {
        api_version: gpupool_api::API_VERSION.to_owned(),
        kind: gpupool_api::sidecar::SIDECAR_CONFIG_KIND.to_owned(),
        pool: "test".to_owned(),
        generation: 1,
        memory_budget_bytes: 4 << 30,
        streams: 4,
        admission: AdmissionConfig {
            reject_above: 0.95,
            memory_pressure_watermark: 0.85,
            max_queue_per_model: 256,
        },
        models,
    }
}

/// Options for quick CPU tests.
pub fn options() -> EngineOptions {
    EngineOptions {
        device: DeviceChoice::Cpu,
        calibration: CalibrationOptions {
            warmup: 1,
            iterations: 2,
        },
        sample_interval: Duration::from_millis(20),
        memory_wait: Duration::from_secs(10),
        ..EngineOptions::default()
    }
}

/// A deterministic pseudo-random image of `SIZE`×`SIZE`.
pub fn image(seed: u32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(2_654_435_761).max(1);
    (0..3 * SIZE * SIZE)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state as f32 / u32::MAX as f32) * 4.0 - 2.0
        })
        .collect()
}

/// Runs `path` directly through tch (batch of the given images) and returns per-image logits.
pub fn direct(path: &Path, images: &[Vec<f32>]) -> Vec<Vec<f32>> {
    let module = tch::CModule::load(path).unwrap();
    let flat: Vec<f32> = images.concat();
    let s = i64::from(SIZE);
    let input = tch::Tensor::from_slice(&flat).reshape([images.len() as i64, 3, s, s]);
    let out = tch::no_grad(|| module.forward_ts(&[input])).unwrap();
    let out: Vec<f32> = Vec::try_from(out.flatten(0, -1)).unwrap();
    out.chunks((SIZE * SIZE) as usize)
        .map(<[f32]>::to_vec)
        .collect()
}

/// Largest absolute difference between two equally long vectors.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
