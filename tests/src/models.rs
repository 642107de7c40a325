//! Small real models for CPU tests: the same architectures as production (tests/models), exported
//! as TorchScript by the project's own export script, cached under the target dir and re-exported
//! only when the script or the architectures change.

use anyhow::{bail, Context, Result};
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::process::Command;

/// What to export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TinyModel<'a> {
    /// Registry name: `hrnet`, `cbam_resunet` or `unet_spherohq`.
    pub name: &'a str,
    /// Input side in pixels (multiple of 32; HRNet needs at least 64).
    pub size: u32,
    /// Channel width (64 is full size; 8 is tiny).
    pub width: u32,
    /// `fp32`, `fp16` or `bf16`.
    pub precision: &'a str,
}

impl<'a> TinyModel<'a> {
    /// A tiny fp32 model of `name` at `size`×`size`.
    pub fn new(name: &'a str, size: u32) -> Self {
        Self {
            name,
            size,
            width: 8,
            precision: "fp32",
        }
    }

    /// Exports the model once and returns the file's path.
    pub fn path(&self) -> Result<PathBuf> {
        let root = crate::repo_root();
        let mut hasher = DefaultHasher::new();
        for source in ["tests/models/export.py", "tests/models/spheroid.py"] {
            std::fs::read(root.join(source))
                .with_context(|| format!("reading {source}"))?
                .hash(&mut hasher);
        }
        self.hash(&mut hasher);
        let dir = root.join("target/test-models");
        std::fs::create_dir_all(&dir)?;
        let file = dir.join(format!(
            "{}-s{}-w{}-{}-{:016x}.pt",
            self.name,
            self.size,
            self.width,
            self.precision,
            hasher.finish()
        ));
        if file.exists() {
            return Ok(file);
        }
        // Export under a unique name, then rename: concurrent test processes never see half a file.
        let partial = file.with_extension(format!("partial-{}", std::process::id()));
        let out = Command::new(crate::venv_python())
            .arg(root.join("tests/models/export.py"))
            .args(["--model", self.name, "--precision", self.precision])
            .args([
                "--size",
                &self.size.to_string(),
                "--width",
                &self.width.to_string(),
            ])
            .args([
                "--format",
                "torchscript",
                "--device",
                "cpu",
                "--seed",
                "0",
                "--out",
            ])
            .arg(&partial)
            .output()
            .context("running tests/models/export.py")?;
        if !out.status.success() {
            bail!(
                "exporting {:?} failed: {}",
                self,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::fs::rename(&partial, &file)?;
        Ok(file)
    }
}
