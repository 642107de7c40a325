//! CPU cost of turning a mask into polygons (`polygons_from_mask`), the part of the segmentation
//! path that stays on the CPU. Prints one JSON line per mask kind: median milliseconds per image
//! and the polygons found.
//!
//!     cargo run --release -p gpupool-sidecar --example postprocess_bench -- [--size 1280x960] [--runs 20]
//!
//! Masks: `clean` (a few dozen filled discs, some with holes: what a trained model gives),
//! `speckled` (the clean mask plus 2 % isolated noise pixels) and `noise` (independent pixels,
//! foreground with probability 0.75: what the random-weight models give, tens of thousands of
//! fragments). Used by bench/cpu_postprocess.sh; figures in docs/benchmarks.md.

use gpupool_sidecar::imaging::{polygons_from_mask, PostprocessOptions};
use std::time::Instant;

fn hash(x: u32, y: u32, salt: u32) -> u32 {
    let mut h =
        x.wrapping_mul(0x9e37_79b9) ^ y.wrapping_mul(0x85eb_ca6b) ^ salt.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 15;
    h = h.wrapping_mul(0x2c1b_3c6d);
    h ^= h >> 12;
    h
}

fn discs(w: u32, h: u32, x: u32, y: u32) -> bool {
    (0..36u32).any(|i| {
        let (cx, cy) = ((i % 6) * w / 6 + w / 12, (i / 6) * h / 6 + h / 12);
        let r = (w.min(h) / 16) as i64;
        let d2 = (i64::from(x) - i64::from(cx)).pow(2) + (i64::from(y) - i64::from(cy)).pow(2);
        d2 <= r * r && (i % 3 != 0 || d2 > (r / 3) * (r / 3))
    })
}

fn mask(kind: &str, w: u32, h: u32) -> Vec<u8> {
    (0..h)
        .flat_map(|y| (0..w).map(move |x| (x, y)))
        .map(|(x, y)| {
            let noise = f64::from(hash(x, y, 7)) / f64::from(u32::MAX);
            u8::from(match kind {
                "clean" => discs(w, h, x, y),
                "speckled" => discs(w, h, x, y) != (noise < 0.02),
                _ => noise < 0.75,
            })
        })
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| args.windows(2).find(|w| w[0] == flag).map(|w| w[1].clone());
    let size = value("--size").unwrap_or_else(|| "1280x960".into());
    let (w, h) = size.split_once('x').ok_or("--size is WxH")?;
    let (w, h): (u32, u32) = (w.parse()?, h.parse()?);
    let runs: usize = value("--runs").map_or(Ok(20), |v| v.parse())?;
    let options = PostprocessOptions::default();
    for kind in ["clean", "speckled", "noise"] {
        let m = mask(kind, w, h);
        let probs: Vec<f32> = m.iter().map(|&v| if v != 0 { 0.9 } else { 0.1 }).collect();
        let mut times = Vec::with_capacity(runs);
        let mut polygons = 0;
        for _ in 0..runs {
            let t = Instant::now();
            polygons = polygons_from_mask(&m, &probs, w, h, &options)?.len();
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        println!(
            "{}",
            serde_json::json!({"mask": kind, "size": size, "median_ms": times[runs / 2], "polygons": polygons, "runs": runs})
        );
    }
    Ok(())
}
