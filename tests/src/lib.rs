//! Shared fixtures for gpupool's integration and end-to-end tests.
//!
//! Everything here is real: [`ControlPlane`] runs etcd, kube-apiserver, kube-controller-manager and
//! kube-scheduler on loopback (built from source by `tests/controlplane/control-plane.sh`), and
//! tests talk to it with kubectl and kube-rs. Each test works in its own namespace so the suites
//! can share one control plane per test process.

pub mod binaries;
pub mod controlplane;
pub mod helm;
pub mod images;
pub mod kubectl;
pub mod kubelet;
pub mod loadgen;
pub mod models;
pub mod nodes;

pub use controlplane::ControlPlane;
pub use kubectl::{Kubectl, KubectlOutput};

/// Root of the repository (tests are run from anywhere).
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(|| std::path::PathBuf::from("."))
}

/// The project's Python (the venv made by `tests/setup/torch-venv.sh`).
pub fn venv_python() -> std::path::PathBuf {
    let venv = std::env::var_os("GPUPOOL_VENV")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| std::path::PathBuf::from(h).join(".cache/gpupool/venv"))
        })
        .unwrap_or_else(|| std::path::PathBuf::from(".venv"));
    venv.join("bin/python")
}
