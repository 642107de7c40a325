//! CPU cost of the segmentation path's first stage: upload bytes to the pixels the engine takes
//! (`decode_image` then `into_raw`). Prints one JSON line per file: median milliseconds.
//!
//!     cargo run --release -p gpupool-sidecar --example decode_bench -- FILE... [--runs 21]
//!
//! Used by bench/cpu_postprocess.sh with the images of bench/make_image.py; figures in
//! docs/benchmarks.md.

use gpupool_sidecar::imaging::{decode_image, DecodeLimits};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runs: usize = match args.iter().position(|a| a == "--runs") {
        Some(i) => args.get(i + 1).ok_or("--runs takes a number")?.parse()?,
        None => 21,
    };
    let files = args
        .iter()
        .enumerate()
        .filter(|&(i, a)| a != "--runs" && (i == 0 || args[i - 1] != "--runs"))
        .map(|(_, a)| a);
    let limits = DecodeLimits::default();
    for file in files {
        let bytes = std::fs::read(file)?;
        let mut times = Vec::with_capacity(runs);
        let mut size = (0, 0);
        for _ in 0..runs.max(1) {
            let t = Instant::now();
            let raw = decode_image(&bytes, &limits)?.into_raw()?;
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            size = (raw.width(), raw.height());
        }
        times.sort_by(f64::total_cmp);
        println!(
            "{}",
            serde_json::json!({"file": file, "bytes": bytes.len(), "size": format!("{}x{}", size.0, size.1), "median_ms": times[times.len() / 2], "runs": times.len()})
        );
    }
    Ok(())
}
