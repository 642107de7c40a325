//! Watches the pods bound to this node and keeps one worker per pod.

use super::worker;
use super::Shared;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

struct WorkerHandle {
    updates: watch::Sender<Option<Pod>>,
    task: JoinHandle<()>,
}

/// Runs until `shutdown`, then waits for every pod worker to stop its pod.
pub(crate) async fn run(shared: Arc<Shared>, shutdown: CancellationToken) {
    let node = shared.config.node_name.clone();
    let api: Api<Pod> = Api::all(shared.client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut events = watcher(api, config).default_backoff().boxed();
    let mut workers: HashMap<String, WorkerHandle> = HashMap::new();
    let mut listed: HashSet<String> = HashSet::new();
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => break,
            event = events.next() => event,
        };
        match event {
            None => break,
            Some(Err(e)) => tracing::warn!(error = %e, "watching pods of node {node}"),
            Some(Ok(Event::Init)) => listed.clear(),
            Some(Ok(Event::InitApply(pod))) => {
                listed.insert(uid(&pod));
                apply(&shared, &shutdown, &mut workers, pod);
            }
            Some(Ok(Event::InitDone)) => {
                for (uid, w) in &workers {
                    if !listed.contains(uid) {
                        w.updates.send_replace(None);
                    }
                }
            }
            Some(Ok(Event::Apply(pod))) => apply(&shared, &shutdown, &mut workers, pod),
            Some(Ok(Event::Delete(pod))) => {
                if let Some(w) = workers.get(&uid(&pod)) {
                    w.updates.send_replace(None);
                }
            }
        }
        workers.retain(|_, w| !w.task.is_finished());
    }
    tracing::info!(pods = workers.len(), "stopping pods");
    for (_, w) in workers {
        let _ = w.task.await;
    }
}

fn uid(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

fn apply(
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
    workers: &mut HashMap<String, WorkerHandle>,
    pod: Pod,
) {
    let uid = uid(&pod);
    if let Some(w) = workers.get(&uid) {
        w.updates.send_replace(Some(pod));
        return;
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    let terminal = matches!(phase, Some("Succeeded" | "Failed"));
    if terminal && pod.metadata.deletion_timestamp.is_none() {
        return;
    }
    let (updates, rx) = watch::channel(Some(pod.clone()));
    let task = tokio::spawn(worker::run(shared.clone(), pod, rx, shutdown.child_token()));
    workers.insert(uid, WorkerHandle { updates, task });
}
