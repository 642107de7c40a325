//! Graceful shutdown: on SIGTERM (or Ctrl-C) readiness goes false at once so the Service stops
//! routing here; after `settle` (time for endpoints to propagate) new work is refused with 503;
//! the server stops accepting connections and waits for in-flight requests; the engine drains
//! its queues. The caller bounds the whole drain (HTTP and engine) with one deadline, which starts
//! when `draining` is notified.

use crate::http::AppState;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::Notify;

/// Resolves when SIGTERM or SIGINT arrives.
pub async fn termination_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Waits for a termination signal, then walks readiness and admission down; notifies `draining`
/// and returns when the server should stop accepting connections.
pub async fn begin_shutdown(state: AppState, settle: Duration, draining: &Notify) {
    termination_signal().await;
    tracing::info!(
        settle_ms = settle.as_millis() as u64,
        "termination signal: readiness off"
    );
    state.ready.store(false, Ordering::SeqCst);
    tokio::time::sleep(settle).await;
    state.accepting.store(false, Ordering::SeqCst);
    tracing::info!("refusing new work; draining in-flight requests");
    draining.notify_one();
}
