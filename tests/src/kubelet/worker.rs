//! One task per pod: admit it (GPUs, an address), materialise its volumes, run its first
//! container with restarts and probes, write its status, and on deletion stop it and remove it.

use super::error::Error;
use super::launch::{self, PodPlacement};
use super::podspec::{
    containers, deleting, gpu_request, grace_period, liveness_grace, previous_restart_count,
    ran_before, restart_policy,
};
use super::probe::Probing;
use super::process::{Exit, Process};
use super::status::{terminated, ContainerRecord, PodRecord, State};
use super::volumes::Volumes;
use super::Shared;
use k8s_openapi::api::core::v1::{Container, Pod};
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::Api;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Why a pod's worker stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// `deletionTimestamp` is set: stop gracefully, then delete the pod with grace period 0.
    Deleting,
    /// The pod left the API (or this node): stop, write nothing.
    Gone,
    /// The stand-in is stopping.
    Shutdown,
}

/// The running container and what is known about it.
struct Running {
    process: Process,
    since: Instant,
    readiness: Option<Probing>,
    liveness: Option<Probing>,
    startup: Option<Probing>,
}

/// Runs `pod` until it is deleted, gone, or the stand-in stops.
pub(crate) async fn run(
    shared: Arc<Shared>,
    pod: Pod,
    updates: watch::Receiver<Option<Pod>>,
    shutdown: CancellationToken,
) {
    let mut worker = Worker::new(shared, pod, updates, shutdown);
    let end = worker.live().await;
    worker.finish(end).await;
}

struct Worker {
    shared: Arc<Shared>,
    pod: Pod,
    updates: watch::Receiver<Option<Pod>>,
    shutdown: CancellationToken,
    api: Api<Pod>,
    key: String,
    uid: String,
    dir: PathBuf,
    record: PodRecord,
    written: Option<serde_json::Value>,
    ip: Option<Ipv4Addr>,
    gpus: Vec<u32>,
    volumes: Option<Volumes>,
    running: Option<Running>,
}

impl Worker {
    fn new(
        shared: Arc<Shared>,
        pod: Pod,
        updates: watch::Receiver<Option<Pod>>,
        shutdown: CancellationToken,
    ) -> Self {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let containers = containers(&pod);
        let records = containers.iter().enumerate().map(|(i, c)| {
            let restart_count = previous_restart_count(&pod, &c.name);
            let state = match i {
                0 => waiting("ContainerCreating", ""),
                _ => waiting(
                    "Unsupported",
                    "gpupool-kubelet runs only a pod's first container",
                ),
            };
            ContainerRecord {
                name: c.name.clone(),
                image: c.image.clone().unwrap_or_default(),
                pid: None,
                state,
                last_terminated: None,
                restart_count,
                ready: false,
                started: false,
            }
        });
        Self {
            api: Api::namespaced(shared.client.clone(), &namespace),
            dir: shared.config.pod_dir(&uid),
            record: PodRecord::new(shared.config.host_ip, records.collect()),
            key: format!("{namespace}/{name}"),
            uid,
            shared,
            pod,
            updates,
            shutdown,
            written: None,
            ip: None,
            gpus: Vec::new(),
            volumes: None,
            running: None,
        }
    }

    /// Until the pod ends: admission, volumes, then the container loop.
    async fn live(&mut self) -> End {
        if deleting(&self.pod) {
            return End::Deleting;
        }
        tracing::info!(pod = %self.key, uid = %self.uid, "pod admitted");
        if let Err(reason) = self.admit() {
            tracing::warn!(pod = %self.key, %reason, "pod rejected");
            self.record.phase = "Failed";
            self.record.reason = Some("UnexpectedAdmissionError".into());
            self.record.message = Some(reason);
            self.write_status().await;
            return self.wait_for_end().await;
        }
        self.record.set_condition("Initialized", true);
        self.write_status().await;

        match Volumes::start(
            &self.shared.client,
            &self.shared.config,
            &self.pod,
            &self.dir,
        ) {
            Ok(volumes) => self.volumes = Some(volumes),
            Err(e) => {
                self.set_waiting("CreateContainerConfigError", &e.to_string());
                self.write_status().await;
                return self.wait_for_end().await;
            }
        }
        if let Some(end) = self.wait_for_volumes().await {
            return end;
        }
        self.container_loop().await
    }

    /// Takes the pod's GPUs and address; the reason if it cannot.
    fn admit(&mut self) -> Result<(), String> {
        let want = gpu_request(&self.pod);
        let gpus = self.shared.gpus().allocate(want);
        self.gpus =
            gpus.ok_or_else(|| format!("the node has fewer than {want} free nvidia.com/gpu"))?;
        let preferred = self.pod.status.as_ref().and_then(|s| s.pod_ip.as_deref());
        let ip = self
            .shared
            .ipam()
            .allocate(preferred.and_then(|ip| ip.parse().ok()));
        let ip = ip.map_err(|e| e.to_string())?;
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| Error::io("creating", &self.dir, e).to_string())?;
        tracing::info!(pod = %self.key, %ip, gpus = ?self.gpus, "pod address and GPUs assigned");
        self.ip = Some(ip);
        self.record.ip = Some(ip);
        Ok(())
    }

    async fn wait_for_volumes(&mut self) -> Option<End> {
        loop {
            let volumes = self.volumes.as_mut()?;
            if volumes.is_ready() {
                return None;
            }
            let pending = volumes.pending().join(", ");
            self.set_waiting("ContainerCreating", &format!("waiting for {pending}"));
            self.write_status().await;
            let volumes = self.volumes.as_mut()?;
            tokio::select! {
                _ = volumes.wait_ready() => return None,
                end = next_event(&mut self.updates, &self.shutdown, &mut self.pod) => {
                    if end.is_some() { return end; }
                }
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
    }

    async fn wait_for_end(&mut self) -> End {
        loop {
            if let Some(end) = next_event(&mut self.updates, &self.shutdown, &mut self.pod).await {
                return end;
            }
        }
    }

    /// Starts, probes and restarts the first container until the pod ends.
    async fn container_loop(&mut self) -> End {
        let Some(container) = containers(&self.pod).into_iter().next() else {
            self.set_waiting("CreateContainerConfigError", "the pod has no containers");
            self.write_status().await;
            return self.wait_for_end().await;
        };
        let policy = restart_policy(&self.pod).to_string();
        let config = &self.shared.config;
        let (base_backoff, max_backoff) = (config.restart_backoff, config.max_restart_backoff);
        let mut backoff = base_backoff;
        let mut next_start = Some(Instant::now());
        // A pod this node ran before (the stand-in was restarted) counts its next start as a restart.
        let mut first_start = !ran_before(&self.pod, &container.name);
        let mut tick = tokio::time::interval(self.shared.config.probe_period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let start_at = next_start.unwrap_or_else(Instant::now);
            tokio::select! {
                end = next_event(&mut self.updates, &self.shutdown, &mut self.pod) => {
                    if let Some(end) = end { return end; }
                }
                exit = wait_running(&mut self.running) => {
                    let ran = self.running.take().map(|r| r.since.elapsed()).unwrap_or_default();
                    if ran > 2 * max_backoff {
                        backoff = base_backoff;
                    }
                    next_start = self.exited(exit, None, &policy, &mut backoff);
                }
                _ = tokio::time::sleep_until(start_at), if next_start.is_some() && self.running.is_none() => {
                    next_start = None;
                    match self.start(&container, first_start).await {
                        Ok(()) => first_start = false,
                        Err(e) => {
                            tracing::warn!(pod = %self.key, error = %e, "cannot start container");
                            let reason = match e {
                                Error::NoExecutable { .. } => "ErrImagePull",
                                Error::ContainerConfig { .. } => "CreateContainerConfigError",
                                _ => "RunContainerError",
                            };
                            self.set_waiting(reason, &e.to_string());
                            next_start = Some(Instant::now() + backoff);
                            backoff = (backoff * 2).min(max_backoff);
                        }
                    }
                }
                _ = tick.tick() => {
                    if self.probe().await {
                        let grace = liveness_grace(&self.pod, &container);
                        if let Some(mut running) = self.running.take() {
                            let exit = running.process.stop(grace).await;
                            next_start = self.exited(exit, Some("LivenessProbeFailed"), &policy, &mut backoff);
                        }
                    }
                }
            }
            self.record.refresh_readiness();
            self.write_status().await;
        }
    }

    /// Starts the container's process.
    async fn start(&mut self, container: &Container, first: bool) -> Result<(), Error> {
        let (Some(ip), Some(volumes)) = (self.ip, self.volumes.as_ref()) else {
            return Ok(());
        };
        let config = &self.shared.config;
        let image = container.image.clone().unwrap_or_default();
        let program = config.images.resolve(&image)?;
        let (namespace, name) = self.key.split_once('/').unwrap_or(("", ""));
        let log = config.log_path(namespace, name, &self.uid, &container.name);
        let placement = PodPlacement {
            pod: &self.pod,
            ip,
            host_ip: config.host_ip,
            pod_dir: &self.dir,
            volumes: volumes.paths(),
            gpus: &self.gpus,
            set_cuda_visible_devices: config.set_cuda_visible_devices,
        };
        let launch =
            launch::build(&self.shared.client, &placement, container, program, log).await?;
        let process = Process::spawn(&container.name, &launch)?;
        let pid = process.pid();
        let pid_file = self.dir.join(format!("{}.pid", container.name));
        if let Err(e) = std::fs::write(&pid_file, format!("{pid}\n")) {
            tracing::warn!(error = %e, "cannot write {}", pid_file.display());
        }
        tracing::info!(pod = %self.key, container = %container.name, pid, program = %launch.program.display(), args = ?launch.args, "container started");
        let period = config.probe_period;
        let readiness = Probing::new(&container.readiness_probe, container, ip, period, false);
        let startup = Probing::new(&container.startup_probe, container, ip, period, false);
        let liveness = Probing::new(&container.liveness_probe, container, ip, period, true);
        let record = self.first_container();
        if let Some(c) = record {
            c.state = State::Running(process.started_at);
            c.pid = Some(pid);
            c.started = startup.is_none();
            c.ready = c.started && readiness.is_none();
            if !first {
                c.restart_count += 1;
            }
        }
        self.record.phase = "Running";
        self.running = Some(Running {
            process,
            since: Instant::now(),
            readiness,
            liveness,
            startup,
        });
        Ok(())
    }

    /// Records an exit; returns when to start again, if the restart policy says to.
    fn exited(
        &mut self,
        exit: Exit,
        reason: Option<&str>,
        policy: &str,
        backoff: &mut Duration,
    ) -> Option<Instant> {
        let restart = match policy {
            "Never" => false,
            "OnFailure" => exit.code != 0 || reason.is_some(),
            _ => true,
        };
        tracing::info!(pod = %self.key, code = exit.code, signal = ?exit.signal, ?reason, restart, "container exited");
        let delay = *backoff;
        *backoff = (*backoff * 2).min(self.shared.config.max_restart_backoff);
        let c = self.first_container()?;
        let started = match &c.state {
            State::Running(at) => Some(*at),
            _ => None,
        };
        let term = terminated(
            exit.code,
            exit.signal,
            started,
            exit.finished_at,
            c.pid,
            reason,
        );
        c.ready = false;
        c.started = false;
        c.pid = None;
        if restart {
            c.last_terminated = Some(term);
            let message = format!("back-off {delay:?} restarting failed container {}", c.name);
            c.state = waiting("CrashLoopBackOff", &message);
            Some(Instant::now() + delay)
        } else {
            c.state = State::Terminated(term);
            self.record.phase = if exit.code == 0 {
                "Succeeded"
            } else {
                "Failed"
            };
            None
        }
    }

    /// Runs the due probes; returns whether liveness (or startup) failed for good.
    async fn probe(&mut self) -> bool {
        let Some(running) = self.running.as_mut() else {
            return false;
        };
        let since = running.since.elapsed();
        let mut started = self.record.containers.first().is_some_and(|c| c.started);
        let mut ready = self.record.containers.first().is_some_and(|c| c.ready);
        let mut kill = false;
        if let (false, Some(startup)) = (started, running.startup.as_mut()) {
            if startup.run(since).await == Some(true) {
                started = true;
            }
            kill = !started && startup.state.failed_out();
        }
        if started {
            if let Some(readiness) = running.readiness.as_mut() {
                if let Some(verdict) = readiness.run(since).await {
                    tracing::info!(pod = %self.key, ready = verdict, "readiness changed");
                    ready = verdict;
                }
            } else {
                ready = true;
            }
            if let Some(liveness) = running.liveness.as_mut() {
                kill |= liveness.run(since).await == Some(false);
            }
        }
        if let Some(c) = self.first_container() {
            c.started = started;
            c.ready = ready && !kill;
        }
        if kill {
            tracing::warn!(pod = %self.key, "liveness probe failed; restarting the container");
        }
        kill
    }

    /// Stops the container, writes the last status, deletes the pod if asked, cleans up.
    async fn finish(mut self, end: End) {
        let grace = grace_period(&self.pod);
        if let Some(mut running) = self.running.take() {
            tracing::info!(pod = %self.key, ?end, ?grace, "stopping container");
            let exit = running.process.stop(grace).await;
            let reason = (end == End::Shutdown).then_some("KubeletStopped");
            if let Some(c) = self.first_container() {
                let started = Some(running.process.started_at);
                let term = terminated(
                    exit.code,
                    exit.signal,
                    started,
                    exit.finished_at,
                    c.pid,
                    reason,
                );
                c.state = State::Terminated(term);
                c.pid = None;
            }
        }
        for c in &mut self.record.containers {
            c.ready = false;
        }
        self.record.refresh_readiness();
        if end != End::Gone {
            self.write_status().await;
        }
        if end == End::Deleting {
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(self.uid.clone()),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            let name = self.pod.metadata.name.clone().unwrap_or_default();
            match self.api.delete(&name, &params).await {
                Ok(_) => tracing::info!(pod = %self.key, "pod deleted"),
                Err(e) => tracing::info!(pod = %self.key, error = %e, "final delete did not apply"),
            }
        }
        self.volumes = None;
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(error = %e, "cannot remove {}", self.dir.display());
            }
        }
        if let Some(ip) = self.ip.take() {
            self.shared.ipam().release(ip);
        }
        self.shared.gpus().release(&self.gpus);
        tracing::info!(pod = %self.key, ?end, "pod worker done");
    }

    fn first_container(&mut self) -> Option<&mut ContainerRecord> {
        self.record.containers.first_mut()
    }

    fn set_waiting(&mut self, reason: &str, message: &str) {
        if let Some(c) = self.first_container() {
            c.state = waiting(reason, message);
        }
    }

    /// Writes the status if it changed since the last successful write.
    async fn write_status(&mut self) {
        let scheduled = self.pod.status.as_ref().and_then(|s| {
            let conditions = s.conditions.iter().flatten();
            conditions
                .into_iter()
                .find(|c| c.type_ == "PodScheduled")
                .cloned()
        });
        let status = self.record.render(scheduled.as_ref());
        let Ok(json) = serde_json::to_value(&status) else {
            return;
        };
        if self.written.as_ref() == Some(&json) {
            return;
        }
        let name = self.pod.metadata.name.clone().unwrap_or_default();
        let patch = Patch::Strategic(serde_json::json!({ "status": json }));
        match self
            .api
            .patch_status(&name, &PatchParams::default(), &patch)
            .await
        {
            Ok(_) => self.written = Some(json),
            Err(e) => tracing::warn!(pod = %self.key, error = %e, "cannot write pod status"),
        }
    }
}

/// The next change that ends the pod, or `None` for one that does not.
async fn next_event(
    updates: &mut watch::Receiver<Option<Pod>>,
    shutdown: &CancellationToken,
    pod: &mut Pod,
) -> Option<End> {
    tokio::select! {
        _ = shutdown.cancelled() => Some(End::Shutdown),
        changed = updates.changed() => {
            if changed.is_err() {
                return Some(End::Shutdown);
            }
            match updates.borrow_and_update().clone() {
                None => Some(End::Gone),
                Some(latest) => {
                    *pod = latest;
                    deleting(pod).then_some(End::Deleting)
                }
            }
        }
    }
}

async fn wait_running(running: &mut Option<Running>) -> Exit {
    match running {
        Some(r) => r.process.wait().await,
        None => std::future::pending().await,
    }
}

fn waiting(reason: &str, message: &str) -> State {
    State::Waiting {
        reason: reason.into(),
        message: message.into(),
    }
}
