//! A real sidecar process on loopback, serving tiny real models on the CPU.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use gpupool_api::sidecar::{AdmissionConfig, SidecarConfig, SidecarModelConfig};
use gpupool_api::{InputSpec, ModelFormat, ModelSource, Precision};
use gpupool_tests::models::TinyModel;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Input side of the test models.
pub const SIZE: u32 = 64;

/// One model entry of a test config.
pub fn model(name: &str, path: &Path, max_batch: u32) -> SidecarModelConfig {
    SidecarModelConfig {
        name: name.into(),
        source: ModelSource {
            uri: path.to_string_lossy().into_owned(),
            format: ModelFormat::Torchscript,
        },
        input: InputSpec {
            width: SIZE,
            height: SIZE,
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

/// The three test models' files (tiny real architectures, exported by the project's script).
pub fn unet_path() -> PathBuf {
    TinyModel::new("unet_spherohq", SIZE)
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

/// A synthetic microscope-like image: bright discs on a dark background.
pub fn spheroid_rgb(width: u32, height: u32) -> image::RgbImage {
    image::RgbImage::from_fn(width, height, |x, y| {
        let d1 = ((x as f32 - width as f32 * 0.3).powi(2)
            + (y as f32 - height as f32 * 0.4).powi(2))
        .sqrt();
        let d2 = ((x as f32 - width as f32 * 0.7).powi(2)
            + (y as f32 - height as f32 * 0.6).powi(2))
        .sqrt();
        let r = width.min(height) as f32 * 0.18;
        let v = if d1 < r || d2 < r { 200 } else { 20 };
        image::Rgb([v, v, v])
    })
}

/// Encodes an image in `format`.
pub fn encode(img: &image::DynamicImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).expect("encode");
    out.into_inner()
}

/// A PNG of the synthetic image.
pub fn png(width: u32, height: u32) -> Vec<u8> {
    encode(
        &image::DynamicImage::ImageRgb8(spheroid_rgb(width, height)),
        image::ImageFormat::Png,
    )
}

/// A PNG that is only a signature, a valid IHDR claiming `width` × `height`, an empty IDAT and IEND: what a
/// decompression bomb's header looks like before any pixel data.
pub fn png_header_only(width: u32, height: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let crc = crc32(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB, deflate, no filter, no interlace
    chunk(&mut out, b"IHDR", &ihdr);
    // An empty zlib stream: decoders read up to the first IDAT before reporting the header.
    chunk(
        &mut out,
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    chunk(&mut out, b"IEND", &[]);
    out
}
