//! A real Kubernetes control plane for tests, started once per test process.
//!
//! The first test that asks for it runs `control-plane.sh up` into a fresh directory under the
//! cargo target dir, and a watchdog shell tears it down when the test process exits (the Rust
//! test harness runs no destructors for statics). Tests that must stop the API server get a
//! private instance instead, dropped with the test.

use crate::kubectl::Kubectl;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// One running control plane: its directory (logs, certs, data) and kubeconfig.
#[derive(Debug)]
pub struct ControlPlane {
    dir: PathBuf,
    kubeconfig: PathBuf,
    private: bool,
}

static SHARED: OnceLock<ControlPlane> = OnceLock::new();
static NAMESPACES: AtomicU32 = AtomicU32::new(0);

fn script() -> PathBuf {
    crate::repo_root().join("tests/controlplane/control-plane.sh")
}

fn state_root() -> PathBuf {
    std::env::var_os("CARGO_TARGET_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::repo_root().join("target/tmp"))
        .join("controlplanes")
}

impl ControlPlane {
    /// The control plane shared by every test of this process, with gpupool's CRDs installed.
    ///
    /// Panics (failing the test with the script's output) if it cannot start: without it no
    /// integration test means anything.
    pub fn shared() -> &'static ControlPlane {
        SHARED.get_or_init(|| match Self::start(false) {
            Ok(cp) => cp,
            Err(e) => panic!("cannot start the local control plane: {e:#}"),
        })
    }

    /// A control plane of the calling test's own, torn down when dropped.
    pub fn private() -> Result<ControlPlane> {
        Self::start(true)
    }

    fn start(private: bool) -> Result<ControlPlane> {
        let dir = state_root().join(format!("cp-{}-{}", std::process::id(), private as u8));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let out = Command::new("bash")
            .arg(script())
            .arg("up")
            .arg(&dir)
            .stdin(Stdio::null())
            .output()
            .context("running control-plane.sh up")?;
        if !out.status.success() {
            bail!(
                "control-plane.sh up failed: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if !private {
            spawn_watchdog(&dir)?;
        }
        let cp = ControlPlane {
            kubeconfig: dir.join("kubeconfig"),
            dir,
            private,
        };
        cp.install_crds()?;
        Ok(cp)
    }

    /// Path of the admin kubeconfig.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Directory holding logs (`logs/*.log`), certificates and data.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A kubectl bound to this control plane.
    pub fn kubectl(&self) -> Kubectl {
        Kubectl::new(&self.kubeconfig)
    }

    /// A kube-rs client for this control plane.
    pub async fn client(&self) -> Result<kube::Client> {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// Applies `crds/` and waits until the API server serves the InferencePool resource.
    pub fn install_crds(&self) -> Result<()> {
        let crds = crate::repo_root().join("crds");
        self.kubectl()
            .run_ok(&["apply", "-f", &crds.to_string_lossy()])?;
        self.kubectl().run_ok(&[
            "wait",
            "--for=condition=Established",
            "--timeout=30s",
            "crd/inferencepools.gpupool.io",
        ])?;
        Ok(())
    }

    /// Creates a namespace no other test uses, named after `prefix`.
    pub fn namespace(&self, prefix: &str) -> Result<String> {
        let n = NAMESPACES.fetch_add(1, Ordering::SeqCst);
        let name = format!("{prefix}-{}-{n}", std::process::id());
        self.kubectl().run_ok(&["create", "namespace", &name])?;
        // Pods need the namespace's default service account, which a controller creates.
        for _ in 0..100 {
            if self
                .kubectl()
                .run(&["-n", &name, "get", "serviceaccount", "default"])?
                .success
            {
                return Ok(name);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        bail!("namespace {name} never got its default service account")
    }

    /// Stops the API server, waits `pause`, starts it again and waits until it is ready.
    pub fn restart_apiserver(&self, pause: std::time::Duration) -> Result<()> {
        let out = Command::new("bash")
            .arg(script())
            .arg("restart-apiserver")
            .arg(&self.dir)
            .arg(pause.as_secs().to_string())
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!(
                "restart-apiserver failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    fn down(&self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("down")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .status();
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if self.private {
            self.down();
        }
    }
}

/// Tears the shared control plane down once this test process is gone.
fn spawn_watchdog(dir: &Path) -> Result<()> {
    let watch = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; bash '{script}' down '{dir}'",
        pid = std::process::id(),
        script = script().display(),
        dir = dir.display()
    );
    Command::new("setsid")
        .arg("bash")
        .arg("-c")
        .arg(watch)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the control-plane watchdog")?;
    Ok(())
}
