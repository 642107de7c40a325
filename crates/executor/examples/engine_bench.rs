//! Closed-loop benchmark of the engine alone (no HTTP, no decode): `clients` tasks each submit one
//! image, wait for the answer, submit the next. Prints one JSON report.
//!
//!     engine_bench CONFIG.yaml --clients 1,2,4,8 --seconds 10 [--model NAME ...] [--device cuda]
//!         [--input image|tensor] [--image-size 1280x960] [--each-model] [--mixed-clients N]
//!
//! With `--each-model` the client counts run once per model (that model alone, all models loaded
//! as configured), else once with the clients spread over the `--model`s; `--mixed-clients N`
//! adds one run of N clients spread over the `--model`s (e.g. the seed's 4/2/2 split).
//!
//! `--input image` (the default) sends 8-bit RGB pixels of `--image-size` to `Engine::segment`:
//! what the segmentation API does after decoding (resize, normalise, model, sigmoid, resize back,
//! threshold, all on the device), and gets the mask back. `--input tensor` sends pre-processed
//! float32 CHW images at the model's size to `Engine::infer` and gets logits back (the OIP path).
//!
//! Models are given to clients round-robin (the seed's 4/2/2 split: `--model hrnet` ×4 ...). Each
//! client count in the list is one run on the same engine (a scaling curve without restarts); each
//! run reports its throughput, latency percentiles, batches formed and out-of-memory events.
//! Used by bench/gpu_run.sh; the report includes the allocator's high-water mark and the budget.

use gpupool_api::sidecar::SidecarConfig;
use gpupool_executor::{DeviceChoice, Engine, EngineOptions, RawImage, Samples};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn arg_values(args: &[String], flag: &str) -> Vec<String> {
    args.windows(2)
        .filter(|w| w[0] == flag)
        .map(|w| w[1].clone())
        .collect()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let path = args
        .get(1)
        .ok_or("usage: engine_bench CONFIG.yaml [--clients N] [--seconds S] [--model M ...]")?;
    let config = SidecarConfig::from_yaml(&std::fs::read_to_string(path)?)?;
    let client_counts: Vec<usize> = arg_values(&args, "--clients")
        .first()
        .map_or("8", String::as_str)
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let seconds: f64 = arg_values(&args, "--seconds")
        .first()
        .map_or(Ok(10.0), |v| v.parse())?;
    let device = match arg_values(&args, "--device").first().map(String::as_str) {
        Some("cpu") => DeviceChoice::Cpu,
        Some("cuda") => DeviceChoice::Cuda(0),
        _ => DeviceChoice::Auto,
    };
    let input = match arg_values(&args, "--input").first().map(String::as_str) {
        None | Some("image") => {
            let size = arg_values(&args, "--image-size")
                .first()
                .cloned()
                .unwrap_or_else(|| "1280x960".into());
            let (w, h) = size.split_once('x').ok_or("--image-size is WxH")?;
            Input::Image(w.parse()?, h.parse()?)
        }
        Some("tensor") => Input::Tensor,
        Some(other) => return Err(format!("--input {other}: image or tensor").into()),
    };
    let mut models = arg_values(&args, "--model");
    if models.is_empty() {
        models = config.models.iter().map(|m| m.name.clone()).collect();
    }
    let sizes: BTreeMap<String, usize> = config
        .models
        .iter()
        .map(|m| {
            (
                m.name.clone(),
                3 * m.input.width as usize * m.input.height as usize,
            )
        })
        .collect();
    let options = EngineOptions {
        device,
        ..EngineOptions::default()
    };
    let t0 = Instant::now();
    let engine = Engine::start(config.clone(), options)?;
    engine.started().await;
    let startup_s = t0.elapsed().as_secs_f64();
    if !engine.ready() {
        eprintln!(
            "engine not ready: {}",
            serde_json::to_string(&engine.telemetry())?
        );
        return Err("engine did not become ready".into());
    }
    // --each-model: the client list once per model, alone; otherwise once with clients spread
    // round-robin over the models.
    let mixed_clients: Option<usize> = arg_values(&args, "--mixed-clients")
        .first()
        .map(|v| v.parse())
        .transpose()?;
    let mut groups: Vec<(Vec<String>, Vec<usize>)> = if args.iter().any(|a| a == "--each-model") {
        let mut unique = models.clone();
        unique.dedup();
        unique
            .into_iter()
            .map(|m| (vec![m], client_counts.clone()))
            .collect()
    } else {
        vec![(models.clone(), client_counts.clone())]
    };
    if let Some(n) = mixed_clients {
        groups.push((models, vec![n]));
    }
    let mut runs = Vec::new();
    for (group, counts) in &groups {
        for &clients in counts {
            let mut run = closed_loop(&engine, group, &sizes, input, clients, seconds).await?;
            eprintln!(
                "{group:?} {clients} clients: {:.1} img/s, p99 {:.0} ms",
                run["images_per_second"], run["p99_ms"]
            );
            run["models"] = serde_json::json!(group);
            runs.push(run);
        }
    }
    let telemetry = engine.telemetry();
    let report = serde_json::json!({
        "input": match input {
            Input::Image(w, h) => format!("image {w}x{h} RGB8"),
            Input::Tensor => "tensor".to_owned(),
        },
        "startup_seconds": startup_s,
        "budget_bytes": telemetry.allocator.budget_bytes,
        "peak_reserved_bytes": telemetry.allocator.peak_reserved_bytes,
        "runs": runs,
        "models": telemetry.models,
        "device": telemetry.device,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    engine.shutdown().await;
    Ok(())
}

/// Per model: (images, batches, out-of-memory events) so far, to report what one run added.
fn counters(engine: &Engine) -> BTreeMap<String, (u64, u64, u64)> {
    engine
        .telemetry()
        .models
        .iter()
        .map(|m| {
            (
                m.name.clone(),
                (m.images_total, m.batches_total, m.oom_events_total),
            )
        })
        .collect()
}

/// What each client sends.
#[derive(Debug, Clone, Copy)]
enum Input {
    /// 8-bit RGB pixels of this width and height, to `Engine::segment`.
    Image(u32, u32),
    /// Float32 CHW at the model's size, to `Engine::infer`.
    Tensor,
}

/// One request of a client: its answer's arrival is all that is measured.
async fn request(engine: &Engine, model: &str, input: &Job) -> bool {
    match input {
        Job::Image(w, h, samples) => {
            // Made on the blocking pool, as the sidecar does after decoding: it copies the
            // pixels into pinned memory.
            let (w, h, samples) = (*w, *h, samples.clone());
            let image = tokio::task::spawn_blocking(move || RawImage::new(w, h, 3, &samples)).await;
            match image {
                Ok(Ok(image)) => engine.segment(model, image, 0.5).await.is_ok(),
                Ok(Err(e)) => {
                    eprintln!("image: {e}");
                    false
                }
                Err(e) => {
                    eprintln!("image task: {e}");
                    false
                }
            }
        }
        Job::Tensor(x) => engine.infer(model, x.clone()).await.is_ok(),
    }
}

/// A client's prepared input.
enum Job {
    /// The pixels, copied into a new image per request as a decoder would hand them over.
    Image(u32, u32, Samples),
    Tensor(Vec<f32>),
}

/// Deterministic input for client `i` (pixels or normalised-looking floats in about [-2, 2]).
fn job_for(input: Input, len: usize, i: usize) -> Result<Job, Box<dyn std::error::Error>> {
    Ok(match input {
        Input::Image(w, h) => {
            let n = w as usize * h as usize * 3;
            let pixels = (0..n).map(|j| ((j * 7919 + i * 13) % 251) as u8).collect();
            Job::Image(w, h, Samples::U8(pixels))
        }
        Input::Tensor => Job::Tensor(
            (0..len)
                .map(|j| ((j * 7919 + i) % 1000) as f32 / 250.0 - 2.0)
                .collect(),
        ),
    })
}

/// One closed-loop run: `clients` tasks, each submitting its model's input and waiting for the answer.
async fn closed_loop(
    engine: &Engine,
    models: &[String],
    sizes: &BTreeMap<String, usize>,
    input: Input,
    clients: usize,
    seconds: f64,
) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(clients + 1));
    let mut tasks = Vec::new();
    for i in 0..clients {
        let engine = engine.clone();
        let model = models[i % models.len()].clone();
        let len = *sizes.get(&model).ok_or("unknown model")?;
        let start = start.clone();
        let job = job_for(input, len, i)?;
        tasks.push(tokio::spawn(async move {
            for _ in 0..2 {
                request(&engine, &model, &job).await;
            }
            start.wait().await;
            let deadline = Instant::now() + Duration::from_secs_f64(seconds);
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                if request(&engine, &model, &job).await {
                    latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                } else {
                    errors += 1;
                }
            }
            (model, latencies, errors)
        }));
    }
    start.wait().await;
    let before = counters(engine);
    let t_start = Instant::now();
    let mut all = Vec::new();
    let mut per_model: BTreeMap<String, u64> = BTreeMap::new();
    let mut errors = 0;
    for task in tasks {
        let (model, latencies, e) = task.await?;
        *per_model.entry(model).or_default() += latencies.len() as u64;
        all.extend(latencies);
        errors += e;
    }
    let elapsed = t_start.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    let after = counters(engine);
    let batches: BTreeMap<&String, serde_json::Value> = after
        .iter()
        .map(|(name, &(images, batches, ooms))| {
            let (i0, b0, o0) = before.get(name).copied().unwrap_or_default();
            let (di, db) = (images - i0, batches - b0);
            let mean = if db == 0 { 0.0 } else { di as f64 / db as f64 };
            (
                name,
                serde_json::json!({"images": di, "batches": db, "mean_batch": mean, "oom_events": ooms - o0}),
            )
        })
        .collect();
    Ok(serde_json::json!({
        "clients": clients,
        "seconds": elapsed,
        "images": all.len(),
        "errors": errors,
        "images_per_second": all.len() as f64 / elapsed,
        "per_model_images_per_second": per_model.iter().map(|(m, n)| (m.clone(), *n as f64 / elapsed)).collect::<BTreeMap<_, _>>(),
        "p50_ms": percentile(&all, 0.5),
        "p99_ms": percentile(&all, 0.99),
        "batches": batches,
        "oom_events": after.values().map(|v| v.2).sum::<u64>() - before.values().map(|v| v.2).sum::<u64>(),
    }))
}
