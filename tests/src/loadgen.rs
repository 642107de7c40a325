//! A closed-loop load generator: each client sends one real image, waits for the answer, sends
//! the next. Used by the demo, the end-to-end tests and the GPU benchmarks.

use anyhow::{Context, Result};
use serde::Serialize;
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
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

async fn send(client: &reqwest::Client, target: &str, model: &str, spec: &LoadSpec) -> u16 {
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
            let _ = response.bytes().await;
            status
        }
        Err(_) => 0,
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
                let status = send(&client, &target, &model, &spec).await;
                samples.push((status, t0.elapsed().as_secs_f64() * 1000.0));
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
    for task in tasks {
        let (model, samples) = task.await.context("client task")?;
        for (status, ms) in samples {
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
    })
}
