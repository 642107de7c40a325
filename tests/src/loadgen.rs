//! A closed-loop load generator: each client sends one real image, waits for the answer, sends
//! the next. Used by the demo, the end-to-end tests and the GPU benchmarks.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Which API the clients call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `POST /api/v1/segment` (multipart image; decode → polygons).
    Segment,
}

/// What to send, how hard and for how long.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Base URLs of the servers; clients are spread over them round-robin.
    pub targets: Vec<String>,
    /// Models to ask for, spread over the clients round-robin (the seed's 4/2/2 split is
    /// `[a, a, a, a, b, b, c, c]`).
    pub models: Vec<String>,
    /// The encoded image each request carries.
    pub image: Arc<Vec<u8>>,
    /// File name sent with the image (its extension tells the server nothing; bytes do).
    pub file_name: String,
    /// Concurrent clients.
    pub clients: usize,
    /// How long to run after warm-up.
    pub duration: Duration,
    /// Requests each client sends before timing starts.
    pub warmup_requests: usize,
}

/// Results of one run.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// Concurrent clients.
    pub clients: usize,
    /// Seconds measured.
    pub seconds: f64,
    /// Requests answered 2xx.
    pub ok: u64,
    /// Answers by status code (transport errors as 0).
    pub status_counts: BTreeMap<u16, u64>,
    /// Successful requests per second.
    pub requests_per_second: f64,
    /// Latency percentiles of successful requests, milliseconds.
    pub p50_ms: f64,
    /// 90th percentile, milliseconds.
    pub p90_ms: f64,
    /// 99th percentile, milliseconds.
    pub p99_ms: f64,
    /// Slowest, milliseconds.
    pub max_ms: f64,
    /// Successful requests per model.
    pub ok_per_model: BTreeMap<String, u64>,
    /// Where the server spent the time, from the timings each answer carries.
    pub server: StageProfile,
}

/// Median server-side time of each stage of a segmentation request, milliseconds, and the mean
/// batch the images ran in: the profile that says where a run's latency goes.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StageProfile {
    /// Answers that carried timings.
    pub answers: u64,
    /// Decoding the upload (`preprocessing_time`).
    pub decode_p50_ms: f64,
    /// Queue, batch, device pre-processing, model and mask (`inference_time`).
    pub engine_p50_ms: f64,
    /// Contours and confidences on the CPU (`postprocessing_time`).
    pub polygons_p50_ms: f64,
    /// Receipt to response (`processing_time`).
    pub total_p50_ms: f64,
    /// Mean of `batch_size_used`.
    pub mean_batch: f64,
}

/// The timing fields of a segmentation answer (the rest of the body is skipped).
#[derive(Debug, Clone, Copy, Deserialize)]
struct Timings {
    preprocessing_time: f64,
    inference_time: f64,
    postprocessing_time: f64,
    processing_time: f64,
    batch_size_used: u32,
}

impl StageProfile {
    fn of(timings: &[Timings]) -> Self {
        let p50 = |f: fn(&Timings) -> f64| {
            let mut v: Vec<f64> = timings.iter().map(|t| f(t) * 1000.0).collect();
            v.sort_by(f64::total_cmp);
            percentile(&v, 0.5)
        };
        let n = timings.len().max(1) as f64;
        Self {
            answers: timings.len() as u64,
            decode_p50_ms: p50(|t| t.preprocessing_time),
            engine_p50_ms: p50(|t| t.inference_time),
            polygons_p50_ms: p50(|t| t.postprocessing_time),
            total_p50_ms: p50(|t| t.processing_time),
            mean_batch: timings
                .iter()
                .map(|t| f64::from(t.batch_size_used))
                .sum::<f64>()
                / n,
        }
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// One request: the status (0 for a transport error) and, for a 2xx, the answer's timings.
async fn send(
    client: &reqwest::Client,
    target: &str,
    model: &str,
    spec: &LoadSpec,
) -> (u16, Option<Timings>) {
    let part = reqwest::multipart::Part::bytes(spec.image.as_ref().clone())
        .file_name(spec.file_name.clone());
    let form = reqwest::multipart::Form::new()
        .part("file", part)
        .text("model", model.to_string());
    match client
        .post(format!("{target}/api/v1/segment"))
        .multipart(form)
        .send()
        .await
    {
        Ok(response) => {
            let status = response.status().as_u16();
            // Read the whole body: the request is done only when the answer has arrived.
            let body = response.bytes().await;
            let timings = body
                .ok()
                .filter(|_| (200..300).contains(&status))
                .and_then(|b| serde_json::from_slice::<Timings>(&b).ok());
            (status, timings)
        }
        Err(_) => (0, None),
    }
}

/// Runs the load and reports.
pub async fn run(spec: LoadSpec) -> Result<LoadReport> {
    anyhow::ensure!(
        !spec.targets.is_empty() && !spec.models.is_empty() && spec.clients > 0,
        "nothing to do"
    );
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .context("building the HTTP client")?;
    let spec = Arc::new(spec);
    let start = Arc::new(tokio::sync::Barrier::new(spec.clients + 1));
    let mut tasks = Vec::new();
    for i in 0..spec.clients {
        let (client, spec, start) = (client.clone(), spec.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            let target = spec.targets[i % spec.targets.len()].clone();
            let model = spec.models[i % spec.models.len()].clone();
            for _ in 0..spec.warmup_requests {
                send(&client, &target, &model, &spec).await;
            }
            start.wait().await;
            let deadline = Instant::now() + spec.duration;
            let mut samples = Vec::new();
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let (status, timings) = send(&client, &target, &model, &spec).await;
                samples.push((status, t0.elapsed().as_secs_f64() * 1000.0, timings));
                if status == 0 || status == 429 || status == 503 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            (model, samples)
        }));
    }
    start.wait().await;
    let t0 = Instant::now();
    let mut status_counts = BTreeMap::new();
    let mut ok_per_model: BTreeMap<String, u64> = BTreeMap::new();
    let mut latencies = Vec::new();
    let mut timings = Vec::new();
    for task in tasks {
        let (model, samples) = task.await.context("client task")?;
        for (status, ms, t) in samples {
            timings.extend(t);
            *status_counts.entry(status).or_insert(0) += 1;
            if (200..300).contains(&status) {
                latencies.push(ms);
                *ok_per_model.entry(model.clone()).or_insert(0) += 1;
            }
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    Ok(LoadReport {
        clients: spec.clients,
        seconds,
        ok: latencies.len() as u64,
        status_counts,
        requests_per_second: latencies.len() as f64 / seconds,
        p50_ms: percentile(&latencies, 0.50),
        p90_ms: percentile(&latencies, 0.90),
        p99_ms: percentile(&latencies, 0.99),
        max_ms: latencies.last().copied().unwrap_or(0.0),
        ok_per_model,
        server: StageProfile::of(&timings),
    })
}
