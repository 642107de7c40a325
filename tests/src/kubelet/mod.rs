//! A kubelet stand-in: makes one Node real on a machine with no kubelet and no container engine.
//!
//! [`Kubelet::start`] registers a Node (capacity `cpu: 16`, `memory: 128Gi`, `pods: 110`,
//! `nvidia.com/gpu: N`; labels `kubernetes.io/hostname`, `nvidia.com/gpu.product`,
//! `nvidia.com/gpu.memory` in MiB, `nvidia.com/gpu.count`), keeps its Ready condition and its Lease
//! in `kube-node-lease` fresh, and runs every pod the scheduler binds to it:
//!
//! - each pod gets its own loopback address from the [`PodCidr`] (`127.0.1.1`, `127.0.1.2`, …),
//!   so many pods can bind the same container port; and its GPU indices, as the device plugin
//!   would hand them out;
//! - its ConfigMap and Secret volumes are written under `<state>/pods/<uid>/volumes/<name>/` and
//!   rewritten atomically on every change, in the kubelet's own `..data` symlink layout;
//! - its first container runs as a local process: the executable comes from the image through
//!   [`ImageCommands`]; arguments and environment are described in [`launch`]; stdout and stderr
//!   go to [`Config::log_path`]; the pid is in `<state>/pods/<uid>/<container>.pid` and in the
//!   container status as `containerID: pid://<pid>`;
//! - status is written through the status subresource: phase, `podIP`/`podIPs`, `hostIP`,
//!   `startTime`, container statuses and the PodScheduled/Initialized/ContainersReady/Ready
//!   conditions; readiness, liveness and startup probes (HTTP GET, TCP) run every
//!   [`Config::probe_period`]; exited or liveness-failed processes are restarted per the pod's
//!   restart policy with exponential backoff, counting `restartCount`;
//! - on deletion: SIGTERM, up to the pod's grace period, SIGKILL, then the pod is deleted with
//!   grace period 0 and its directory removed.
//!
//! [`Kubelet::shutdown`] stops every pod's process (leaving the pods in the API, NotReady) and
//! marks the Node NotReady or deletes it ([`OnExit`]). The `gpupool-kubelet` binary wraps this.

mod atomic;
mod cli;
mod config;
mod env;
mod error;
mod ipam;
pub mod launch;
mod node;
mod pods;
mod podspec;
mod probe;
mod process;
mod quantity;
mod status;
mod volumes;
mod worker;

pub use atomic::{write_payload, FileContent, Payload};
pub use cli::Args;
pub use config::{default_state_dir, parse_duration, Config, ImageCommands, OnExit};
pub use env::expand;
pub use error::{Error, Result};
pub use ipam::{GpuAllocator, Ipam, PodCidr};
pub use probe::{http_get, HttpResponse};

use kube::Client;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What the pod workers share.
pub(crate) struct Shared {
    client: Client,
    config: Config,
    ipam: Mutex<Ipam>,
    gpus: Mutex<GpuAllocator>,
}

impl Shared {
    fn ipam(&self) -> MutexGuard<'_, Ipam> {
        self.ipam
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn gpus(&self) -> MutexGuard<'_, GpuAllocator> {
        self.gpus
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A running stand-in. Dropping it stops its pods in the background (call [`Kubelet::shutdown`]
/// to wait for that and to update the Node).
pub struct Kubelet {
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Kubelet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kubelet")
            .field("node", &self.shared.config.node_name)
            .finish_non_exhaustive()
    }
}

impl Kubelet {
    /// Registers the Node (Ready) and starts the heartbeat and the pod watch; returns once the
    /// Node is registered.
    pub async fn start(client: Client, config: Config) -> Result<Self> {
        let pods_dir = config.state_dir.join("pods");
        std::fs::create_dir_all(&pods_dir).map_err(|e| Error::io("creating", &pods_dir, e))?;
        let ready_since = node::register(&client, &config).await?;
        tracing::info!(
            node = %config.node_name,
            gpus = config.gpus,
            pod_cidr = %config.pod_cidr,
            state_dir = %config.state_dir.display(),
            "kubelet stand-in started"
        );
        let shared = Arc::new(Shared {
            ipam: Mutex::new(Ipam::new(config.pod_cidr)),
            gpus: Mutex::new(GpuAllocator::new(config.gpus)),
            client,
            config,
        });
        let shutdown = CancellationToken::new();
        let heartbeat = node::heartbeat(
            shared.client.clone(),
            shared.config.clone(),
            ready_since,
            shutdown.clone(),
        );
        let tasks = vec![
            tokio::spawn(heartbeat),
            tokio::spawn(pods::run(shared.clone(), shutdown.clone())),
        ];
        Ok(Self {
            shared,
            shutdown,
            tasks,
        })
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// Stops every pod's process (each within its grace period), then marks the Node NotReady
    /// or deletes it.
    pub async fn shutdown(mut self) -> Result<()> {
        tracing::info!(node = %self.shared.config.node_name, "kubelet stand-in stopping");
        self.shutdown.cancel();
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        node::on_exit(&self.shared.client, &self.shared.config).await
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
