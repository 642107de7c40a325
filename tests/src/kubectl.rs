//! kubectl, as a person would use it against the test control plane.

use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A kubectl invocation bound to one kubeconfig.
#[derive(Debug, Clone)]
pub struct Kubectl {
    kubeconfig: PathBuf,
}

/// What one kubectl run printed and whether it succeeded.
#[derive(Debug, Clone)]
pub struct KubectlOutput {
    /// Exit status was zero.
    pub success: bool,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Kubectl {
    /// kubectl using `kubeconfig`.
    pub fn new(kubeconfig: &Path) -> Self {
        Self {
            kubeconfig: kubeconfig.to_path_buf(),
        }
    }

    /// Runs kubectl with `args`, feeding `stdin` if given.
    pub fn run_with_input(&self, args: &[&str], stdin: Option<&str>) -> Result<KubectlOutput> {
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting kubectl")?;
        if let Some(mut pipe) = child.stdin.take() {
            if let Some(input) = stdin {
                pipe.write_all(input.as_bytes())?;
            }
        }
        let out = child.wait_with_output()?;
        Ok(KubectlOutput {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr)
                .lines()
                .filter(|l| !l.contains("version difference between client"))
                .collect::<Vec<_>>()
                .join("\n"),
        })
    }

    /// Runs kubectl with `args`.
    pub fn run(&self, args: &[&str]) -> Result<KubectlOutput> {
        self.run_with_input(args, None)
    }

    /// Runs kubectl and fails unless it succeeded; returns stdout.
    pub fn run_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.run(args)?;
        if !out.success {
            bail!("kubectl {} failed: {}", args.join(" "), out.stderr);
        }
        Ok(out.stdout)
    }

    /// `kubectl apply -f -` of a YAML document in `namespace`.
    pub fn apply(&self, namespace: &str, yaml: &str) -> Result<KubectlOutput> {
        self.run_with_input(&["-n", namespace, "apply", "-f", "-"], Some(yaml))
    }
}
