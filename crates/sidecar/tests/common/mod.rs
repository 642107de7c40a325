//! A real sidecar process on loopback, serving tiny real models on the CPU.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use gpupool_api::sidecar::{AdmissionConfig, SidecarConfig, SidecarModelConfig};
use gpupool_api::{InputSpec, ModelFormat, ModelSource, Precision};
use gpupool_tests::models::TinyModel;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Input side of the test models.
pub const SIZE: u32 = 64;

/// One model entry of a test config, at the test models' input size.
pub fn model(name: &str, path: &Path, max_batch: u32) -> SidecarModelConfig {
    model_at(name, path, max_batch, SIZE)
}

/// One model entry of a test config for a model taking `size`×`size` input.
pub fn model_at(name: &str, path: &Path, max_batch: u32, size: u32) -> SidecarModelConfig {
    SidecarModelConfig {
        name: name.into(),
        source: ModelSource {
            uri: path.to_string_lossy().into_owned(),
            format: ModelFormat::Torchscript,
        },
        input: InputSpec {
            width: size,
            height: size,
            ..InputSpec::default()
        },
        precision: Precision::Fp32,
        max_batch,
        slots: 1,
        max_queue_delay_ms: 20,
        resident: true,
    }
}

/// A config with `models`.
pub fn config(models: Vec<SidecarModelConfig>) -> SidecarConfig {
    SidecarConfig {
        api_version: gpupool_api::API_VERSION.into(),
        kind: gpupool_api::sidecar::SIDECAR_CONFIG_KIND.into(),
        pool: "test".into(),
        generation: 1,
        memory_budget_bytes: 8 << 30,
        streams: models.len() as u32,
        admission: AdmissionConfig {
            reject_above: 0.95,
            memory_pressure_watermark: 0.85,
            max_queue_per_model: 256,
        },
        models,
    }
}

/// The test UNet's file (a tiny real architecture, exported by the project's script).
pub fn unet_path() -> PathBuf {
    unet_path_at(SIZE)
}

/// The test UNet exported for `size`×`size` input (larger is slower: 256 takes tens of
/// milliseconds per image on a CPU core).
pub fn unet_path_at(size: u32) -> PathBuf {
    TinyModel::new("unet_spherohq", size)
        .path()
        .expect("export unet")
}

/// A running sidecar; killed when dropped.
pub struct Sidecar {
    pub child: Child,
    pub url: String,
    pub config_path: PathBuf,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Sidecar {
    /// Starts the binary with `config` and `extra` flags; waits until /healthz answers.
    pub async fn start(config: &SidecarConfig, extra: &[&str]) -> Sidecar {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("sidecar.yaml");
        std::fs::write(&config_path, config.to_yaml().expect("yaml")).expect("write config");
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("sidecar.log")).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_gpupool-sidecar"))
            .arg("--config")
            .arg(&config_path)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--device", "cpu"])
            .args(["--reload-interval-ms", "100", "--calibration-iters", "1"])
            // Shared fixtures live in statics, which are never dropped: the sidecar must not
            // outlive the test binary that started it.
            .args(["--parent-pid", &std::process::id().to_string()])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start sidecar");
        let sidecar = Sidecar {
            child,
            url: format!("http://127.0.0.1:{port}"),
            config_path,
            _dir: dir,
        };
        sidecar.wait_for("/healthz", Duration::from_secs(30)).await;
        sidecar
    }

    /// Log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("sidecar.log")).unwrap_or_default()
    }

    /// Waits until `path` answers 200.
    pub async fn wait_for(&self, path: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let client = reqwest::Client::new();
        loop {
            let answer = client
                .get(format!("{}{path}", self.url))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if answer.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{path} never answered 200:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the models are loaded and calibrated.
    pub async fn wait_ready(&self) {
        self.wait_for("/readyz", Duration::from_secs(120)).await;
    }

    /// GET `path`, parsed as JSON, with the status.
    pub async fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let r = reqwest::get(format!("{}{path}", self.url))
            .await
            .expect("GET");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// GET /metrics: the Prometheus text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.url))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// The value of the sample named exactly `series` (name and labels) in `/metrics`, if any.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        self.metrics().await.lines().find_map(|line| {
            let value = line.strip_prefix(series)?.strip_prefix(' ')?;
            value.split_whitespace().next()?.parse().ok()
        })
    }

    /// POST /api/v1/segment with `image` and extra text fields.
    pub async fn segment(
        &self,
        image: Vec<u8>,
        fields: &[(&str, &str)],
    ) -> (u16, serde_json::Value) {
        let mut form = reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(image).file_name("image"),
        );
        for (k, v) in fields {
            form = form.text(k.to_string(), v.to_string());
        }
        self.post_form("/api/v1/segment", form).await
    }

    /// POST a multipart form, parsed as JSON, with the status.
    pub async fn post_form(
        &self,
        path: &str,
        form: reqwest::multipart::Form,
    ) -> (u16, serde_json::Value) {
        let r = reqwest::Client::new()
            .post(format!("{}{path}", self.url))
            .multipart(form)
            .send()
            .await
            .expect("POST");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
