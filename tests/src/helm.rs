//! The real Helm engine (Helm v4's Go SDK through helm-python-sdk), driven by
//! `tests/helm/helm.py` in the project's virtual environment.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `helm.py` with `args`; returns its stdout (JSON).
pub fn helm(args: &[&str], kubeconfig: Option<&Path>) -> Result<serde_json::Value> {
    let mut cmd = Command::new(crate::venv_python());
    cmd.arg(crate::repo_root().join("tests/helm/helm.py"))
        .args(args);
    if let Some(k) = kubeconfig {
        cmd.arg("--kubeconfig").arg(k);
    }
    let out = cmd.output().context("running tests/helm/helm.py")?;
    if !out.status.success() {
        bail!(
            "helm {:?} failed: {}",
            args,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).context("helm.py printed no JSON")
}

/// Path of the gpupool chart.
pub fn chart_dir() -> PathBuf {
    crate::repo_root().join("charts/gpupool")
}
