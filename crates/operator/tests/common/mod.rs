//! Shared pieces of the operator's integration tests: the real operator binary as a child
//! process, pools written as YAML, and polling until the cluster agrees.

#![allow(dead_code)] // each test binary uses a different part

use anyhow::{bail, Context, Result};
use gpupool_api::InferencePool;
use gpupool_tests::ControlPlane;
use k8s_openapi::api::apps::v1::Deployment;
use kube::{Api, Client};
use std::fs::File;
use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The operator binary this package builds.
pub const OPERATOR: &str = env!("CARGO_BIN_EXE_gpupool-operator");

/// A running `gpupool-operator` process, killed when dropped.
pub struct Operator {
    child: Child,
    log: PathBuf,
    /// Its Lease identity.
    pub identity: String,
}

impl Operator {
    /// Starts the operator watching `namespace` only, with its Lease in that namespace and a
    /// short lease (5 s), plus `extra` flags (later flags win).
    pub fn start(
        cp: &ControlPlane,
        namespace: &str,
        identity: &str,
        extra: &[&str],
    ) -> Result<Self> {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("operator-logs");
        std::fs::create_dir_all(&dir)?;
        let log = dir.join(format!("{namespace}-{identity}.log"));
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(OPERATOR)
            .env("KUBECONFIG", cp.kubeconfig())
            .env("RUST_LOG", "info,kube=warn")
            .args(["--namespace", namespace, "--lease-namespace", namespace])
            .args(["--identity", identity, "--http-addr", "127.0.0.1:0"])
            .args(["--sidecar-image", "gpupool/sidecar:test"])
            .args([
                "--lease-duration",
                "5s",
                "--renew-deadline",
                "3s",
                "--retry-period",
                "1s",
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting gpupool-operator")?;
        Ok(Self {
            child,
            log,
            identity: identity.to_string(),
        })
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Log lines of finished reconciles.
    pub fn reconciles(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("\"message\":\"reconciled\""))
            .count()
    }

    /// The address its HTTP server bound.
    pub fn http_addr(&self) -> Option<String> {
        self.log().lines().find_map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).ok()?;
            (v["fields"]["message"] == "gpupool-operator starting")
                .then(|| v["fields"]["addr"].as_str().map(str::to_string))
                .flatten()
        })
    }

    /// Whether it has exited, and how.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGKILL, as a node failure would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for the exit.
    pub fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        Ok(self.child.wait()?)
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if self.exited().is_none() {
            self.kill();
        }
    }
}

/// Polls `probe` every 250 ms until it yields `Some`, failing after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match probe().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        if Instant::now() > deadline {
            match last_error {
                Some(e) => bail!("timed out waiting for {what}; last error: {e:#}"),
                None => bail!("timed out waiting for {what}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A pool of one small model (feasible in a 24Gi budget), for GPU `product`.
pub fn pool_yaml(name: &str, product: &str, replicas: i32, extra_spec: &str) -> String {
    format!(
        r#"apiVersion: gpupool.io/v1alpha1
kind: InferencePool
metadata:
  name: {name}
spec:
  replicas: {replicas}
  gpu:
    memoryBudget: 24Gi
    reservedHeadroom: 2Gi
    cardMemory: 80Gi
    product: {product}
  models:
  - name: unet
    source: {{uri: /models/unet.pt}}
    precision: fp16
    maxBatch: 8
    input: {{width: 256, height: 256}}
    profile: {{parameters: 31000000}}
{extra_spec}"#
    )
}

/// Applies a document with kubectl in `namespace`, failing with kubectl's message.
pub fn apply(cp: &ControlPlane, namespace: &str, yaml: &str) -> Result<()> {
    let out = cp.kubectl().apply(namespace, yaml)?;
    if !out.success {
        bail!("kubectl apply failed: {}", out.stderr);
    }
    Ok(())
}

/// The pool, read fresh.
pub async fn pool(client: &Client, namespace: &str, name: &str) -> Result<InferencePool> {
    Ok(Api::<InferencePool>::namespaced(client.clone(), namespace)
        .get(name)
        .await?)
}

/// Waits for the pool's Deployment.
pub async fn deployment(client: &Client, namespace: &str, name: &str) -> Result<Deployment> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    eventually(Duration::from_secs(60), "the pool's Deployment", || {
        let api = api.clone();
        async move { Ok(api.get_opt(name).await?) }
    })
    .await
}

/// The pod template's restart checksum annotation.
pub fn checksum(d: &Deployment) -> String {
    d.spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get("gpupool.io/restart-checksum").cloned())
        .unwrap_or_default()
}

/// Sets the first model's `maxBatch` of pool `name` the way a user would: `kubectl patch`.
pub fn set_max_batch(cp: &ControlPlane, namespace: &str, name: &str, value: u32) -> Result<()> {
    let patch = format!(r#"[{{"op":"replace","path":"/spec/models/0/maxBatch","value":{value}}}]"#);
    cp.kubectl().run_ok(&[
        "-n",
        namespace,
        "patch",
        "gpool",
        name,
        "--type=json",
        "-p",
        &patch,
    ])?;
    Ok(())
}

/// How many `K` in `namespace` match `params`.
pub async fn count<K>(
    client: &Client,
    namespace: &str,
    params: &kube::api::ListParams,
) -> Result<usize>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    Ok(Api::<K>::namespaced(client.clone(), namespace)
        .list(params)
        .await?
        .items
        .len())
}
