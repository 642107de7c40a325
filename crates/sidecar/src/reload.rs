//! Live config: the mounted ConfigMap file is polled (the kubelet swaps it atomically through a
//! symlink, which inotify watches miss), and changes the engine can apply in place are applied
//! without dropping a request. A change that needs a restart is logged and reported, and the
//! running config stays; the operator rolls the pods for those through the template checksum.

use crate::backend::{ApplyError, Backend};
use gpupool_api::sidecar::SidecarConfig;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Reads and checks a config document.
pub fn load_config(path: &std::path::Path) -> Result<SidecarConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse_config(path, &text)
}

/// Checks the config document `text`, read from `path` (named in the error).
fn parse_config(path: &std::path::Path, text: &str) -> Result<SidecarConfig, String> {
    SidecarConfig::from_yaml(text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Polls `path` every `interval` and applies changed documents to `backend` until cancelled.
pub async fn watch_config(
    path: PathBuf,
    mut current: SidecarConfig,
    backend: Arc<dyn Backend>,
    interval: Duration,
    cancel: CancellationToken,
) {
    // Nothing seen yet: the first tick parses the file and compares the document with `current`,
    // so a change made between start-up's read and this watcher's start is applied, not missed.
    let mut last_text = String::new();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let Ok(text) = tokio::fs::read_to_string(&path).await else {
            continue; // mid-swap or briefly absent: try again next tick
        };
        if text == last_text {
            continue;
        }
        // Parse the text just read (a second read could catch the file mid-swap and lose it).
        let parsed = parse_config(&path, &text);
        last_text = text;
        let next = match parsed {
            Ok(next) => next,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring invalid config change; keeping the running config");
                continue;
            }
        };
        if next == current {
            continue;
        }
        match backend.apply(&next) {
            Ok(()) => {
                tracing::info!(generation = next.generation, "applied config change live");
                current = next;
            }
            Err(ApplyError::NeedsRestart(what)) => {
                tracing::warn!(%what, "config change needs a restart; keeping the running config");
            }
            Err(e) => tracing::warn!(error = %e, "config change refused"),
        }
    }
}
