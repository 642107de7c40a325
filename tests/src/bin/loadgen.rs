//! `gpupool-loadgen`: closed-loop clients against the segmentation API; prints a JSON report.

use anyhow::{Context, Result};
use clap::Parser;
use gpupool_tests::loadgen::{run, LoadSpec};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Closed-loop load against one or more sidecars.
#[derive(Debug, Parser)]
struct Args {
    /// Base URL of a sidecar (repeat for several).
    #[arg(long = "target", required = true)]
    targets: Vec<String>,
    /// Model per client, round-robin (repeat, e.g. hrnet ×4, cbam_resunet ×2, unet_spherohq ×2).
    #[arg(long = "model", required = true)]
    models: Vec<String>,
    /// Image file sent with every request.
    #[arg(long)]
    image: PathBuf,
    /// Concurrent clients (comma separated for a sweep, e.g. 1,2,4,8).
    #[arg(long, default_value = "8", value_delimiter = ',')]
    clients: Vec<usize>,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Requests per client before timing.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let image =
        std::fs::read(&args.image).with_context(|| format!("reading {}", args.image.display()))?;
    let image = Arc::new(image);
    let mut reports = Vec::new();
    for clients in &args.clients {
        let report = run(LoadSpec {
            targets: args.targets.clone(),
            models: args.models.clone(),
            image: image.clone(),
            file_name: args
                .image
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            clients: *clients,
            duration: Duration::from_secs_f64(args.seconds),
            warmup_requests: args.warmup,
        })
        .await?;
        eprintln!(
            "{clients} clients: {:.1} req/s, p50 {:.1} ms, p99 {:.1} ms, statuses {:?}",
            report.requests_per_second, report.p50_ms, report.p99_ms, report.status_counts
        );
        reports.push(report);
    }
    println!("{}", serde_json::to_string_pretty(&reports)?);
    Ok(())
}
