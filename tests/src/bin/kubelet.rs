//! `gpupool-kubelet`: a kubelet stand-in for machines without a kubelet or container engine.
//! See `gpupool_tests::kubelet` for what it does; `--help` for the flags.
//!
//! Exit codes: 0 after a clean SIGTERM/SIGINT shutdown, 1 on a runtime error, 2 on bad flags.

use clap::Parser;
use gpupool_tests::kubelet::{Args, Kubelet};
use std::process::ExitCode;
use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let config = match args.config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("gpupool-kubelet: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&args, config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut message = format!("gpupool-kubelet: {e}");
            let mut source = std::error::Error::source(e.as_ref());
            while let Some(cause) = source {
                message.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            tracing::error!("{message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(
    args: &Args,
    config: gpupool_tests::kubelet::Config,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let client = args.client().await?;
    let kubelet = Kubelet::start(client, config).await?;
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM received"),
        _ = interrupt.recv() => tracing::info!("SIGINT received"),
    }
    kubelet.shutdown().await?;
    Ok(())
}
