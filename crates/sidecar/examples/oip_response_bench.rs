//! What writing an Open Inference Protocol infer response costs on the CPU: the logits of
//! `--images` 1-channel `--size`² maps written as JSON, the way the sidecar does it
//! (`--way joined`: `tensor::InferResponse`, written straight from the per-image answers) or the way it did
//! before (`--way value`: the logits copied into one `Vec`, made a `serde_json::Value` tree, then
//! written). Prints one JSON line: median milliseconds over `--runs`, the body's bytes, and the
//! heap's high-water mark above the answers themselves while writing one response.
//!
//!     cargo run --release -p gpupool-sidecar --example oip_response_bench -- --way joined
//!
//! Used by bench/cpu_postprocess.sh; figures in docs/benchmarks.md.

use gpupool_sidecar::tensor::{InferResponse, JoinedTensor, OutputTensor};
use serde_json::json;
use std::time::Instant;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

fn arg<T: std::str::FromStr>(args: &[String], flag: &str, default: T) -> Result<T, String> {
    match args.iter().position(|a| a == flag) {
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{flag} takes a value")),
        None => Ok(default),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let way: String = arg(&args, "--way", "joined".to_owned())?;
    let images: usize = arg(&args, "--images", 2)?;
    let size: usize = arg(&args, "--size", 1024)?;
    let runs: usize = arg(&args, "--runs", 5)?;
    // Logit-like values: a smooth field with a fractional part in every value.
    let parts: Vec<Vec<f32>> = (0..images)
        .map(|i| {
            (0..size * size)
                .map(|j| {
                    ((j % size) as f32 * 0.013 - (j / size) as f32 * 0.007 + i as f32).sin() * 6.0
                })
                .collect()
        })
        .collect();
    let shape = [images, 1, size, size];
    let write = || -> Result<Vec<u8>, serde_json::Error> {
        match way.as_str() {
            "value" => {
                let mut data = Vec::with_capacity(images * size * size);
                for p in &parts {
                    data.extend_from_slice(p);
                }
                serde_json::to_vec(&json!({
                    "model_name": "m", "model_version": "1", "id": null,
                    "outputs": [{"name": "logits", "datatype": "FP32", "shape": shape, "data": data}],
                }))
            }
            _ => serde_json::to_vec(&InferResponse {
                model_name: "m",
                model_version: "1",
                id: None,
                outputs: [OutputTensor {
                    name: "logits",
                    datatype: "FP32",
                    shape: shape.map(|d| d as i64),
                    data: JoinedTensor(&parts),
                }],
            }),
        }
    };
    let mut times = Vec::with_capacity(runs);
    let mut body_bytes = 0;
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        body_bytes = write()?.len();
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    // The heap profile is taken separately: timing runs with the plain system allocator.
    let _profiler = dhat::Profiler::builder().testing().build();
    let before = dhat::HeapStats::get().curr_bytes;
    drop(write()?);
    let peak = dhat::HeapStats::get().max_bytes.saturating_sub(before);
    println!(
        "{}",
        json!({
            "way": way, "images": images, "size": size,
            "median_ms": times[times.len() / 2], "body_bytes": body_bytes,
            "peak_heap_bytes": peak,
        })
    );
    Ok(())
}
