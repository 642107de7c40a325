//! `gpupool-sidecar`: wiring only. Tracing, then settings and the config document parsed and
//! checked before any port is bound (a bad config exits with status 2), then the engine, then the
//! HTTP server, the config watcher and graceful shutdown.

use clap::Parser;
use gpupool_sidecar::engine_backend::EngineBackend;
use gpupool_sidecar::http::{router, AppState};
use gpupool_sidecar::image_memory::ImageMemory;
use gpupool_sidecar::imaging::ImageHeader;
use gpupool_sidecar::metrics::Metrics;
use gpupool_sidecar::pipeline::Pipeline;
use gpupool_sidecar::reload::{load_config, watch_config};
use gpupool_sidecar::settings::Settings;
use gpupool_sidecar::shutdown::begin_shutdown;
use std::future::IntoFuture;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let settings = Settings::parse();
    init_tracing(settings.log_json);
    let config = match load_config(&settings.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("gpupool-sidecar: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(parent) = settings.parent_pid {
        exit_with_parent(parent);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gpupool-sidecar: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(settings, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "sidecar stopped");
            ExitCode::FAILURE
        }
    }
}

/// Exits the process once `parent` is gone (`--parent-pid`), checking `/proc` every second; where
/// there is no `/proc` it says so and does nothing.
fn exit_with_parent(parent: u32) {
    if !std::path::Path::new("/proc/self").exists() {
        tracing::warn!(parent, "no /proc here: --parent-pid is ignored");
        return;
    }
    let path = std::path::PathBuf::from(format!("/proc/{parent}"));
    let watcher = std::thread::Builder::new()
        .name("gpupool-parent-watch".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_secs(1));
            if !path.exists() {
                tracing::warn!(parent, "parent process gone; exiting");
                std::process::exit(0);
            }
        });
    if let Err(e) = watcher {
        tracing::warn!(parent, error = %e, "cannot watch the parent process");
    }
}

async fn serve(
    settings: Settings,
    config: gpupool_api::sidecar::SidecarConfig,
) -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind(settings.listen).await?;
    let backend = Arc::new(EngineBackend::start(config.clone(), &settings)?);
    tracing::info!(listen = %settings.listen, device = %backend.device(), pool = %config.pool, "serving");
    let image_memory = ImageMemory::new(settings.image_memory_bytes());
    let largest = ImageHeader::largest_host_bytes(settings.max_pixels);
    if largest > image_memory.capacity_bytes() {
        tracing::warn!(
            image_memory = image_memory.capacity_bytes(),
            largest_image = largest,
            "--max-image-memory-bytes is below what an image at --max-pixels needs; such images get 413"
        );
    }
    let mut metrics = Metrics::new();
    image_memory.register(metrics.registry_mut());
    let state = AppState::new(
        Pipeline::new(backend.clone(), settings.decode_limits(), image_memory),
        Arc::new(metrics),
        settings.http_limits(),
    );
    let cancel = CancellationToken::new();
    let watcher = tokio::spawn(watch_config(
        settings.config.clone(),
        config,
        backend.clone(),
        settings.reload_interval(),
        cancel.clone(),
    ));
    let settle = Duration::from_millis(settings.shutdown_settle_ms);
    let draining = Arc::new(Notify::new());
    let signalled = Arc::clone(&draining);
    let server = axum::serve(listener, router(state.clone()))
        .with_graceful_shutdown(async move { begin_shutdown(state, settle, &signalled).await })
        .into_future();
    tokio::pin!(server);
    // One deadline for the whole drain, from the moment new work is refused: in-flight HTTP
    // requests first, then what the engine still holds.
    let deadline = tokio::select! {
        served = &mut server => {
            served?;
            tokio::time::Instant::now() + settings.drain_timeout()
        }
        () = draining.notified() => {
            let deadline = tokio::time::Instant::now() + settings.drain_timeout();
            match tokio::time::timeout_at(deadline, &mut server).await {
                Ok(served) => served?,
                Err(_) => tracing::warn!("in-flight requests did not finish within the drain deadline; closing their connections"),
            }
            deadline
        }
    };
    cancel.cancel();
    let _ = watcher.await;
    if tokio::time::timeout_at(deadline, backend.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("engine did not drain within the deadline");
    }
    tracing::info!("stopped");
    Ok(())
}
