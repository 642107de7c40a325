//! What the stand-in knows about a pod, rendered as the `PodStatus` the kubelet would write.

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// The state of one container, as the status reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// Not running: being created, backing off, or not supported.
    Waiting {
        /// e.g. `ContainerCreating`, `CrashLoopBackOff`.
        reason: String,
        /// Human-readable detail.
        message: String,
    },
    /// Running since the given time.
    Running(Timestamp),
    /// Ended and not (yet) restarted.
    Terminated(ContainerStateTerminated),
}

/// One container's record.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerRecord {
    /// Container name.
    pub name: String,
    /// Its image.
    pub image: String,
    /// Process id of the running process, if any (reported as `containerID: pid://<pid>`).
    pub pid: Option<u32>,
    /// Current state.
    pub state: State,
    /// How the previous run ended.
    pub last_terminated: Option<ContainerStateTerminated>,
    /// Times restarted.
    pub restart_count: i32,
    /// Readiness verdict.
    pub ready: bool,
    /// Startup verdict.
    pub started: bool,
}

/// A pod's record.
#[derive(Debug, Clone, PartialEq)]
pub struct PodRecord {
    /// `Pending`, `Running`, `Succeeded` or `Failed`.
    pub phase: &'static str,
    /// Pod-level reason (e.g. `UnexpectedAdmissionError`).
    pub reason: Option<String>,
    /// Pod-level message.
    pub message: Option<String>,
    /// The pod's address, once given.
    pub ip: Option<Ipv4Addr>,
    /// The node's address.
    pub host_ip: Ipv4Addr,
    /// When the stand-in took the pod on.
    pub start_time: Timestamp,
    /// Containers, in spec order.
    pub containers: Vec<ContainerRecord>,
    /// Condition type → (status, last transition).
    conditions: BTreeMap<&'static str, (bool, Timestamp)>,
}

impl PodRecord {
    /// A pod just taken on: Pending, no address yet.
    pub fn new(host_ip: Ipv4Addr, containers: Vec<ContainerRecord>) -> Self {
        let now = Timestamp::now();
        Self {
            phase: "Pending",
            reason: None,
            message: None,
            ip: None,
            host_ip,
            start_time: now,
            containers,
            conditions: [("PodScheduled", (true, now))].into(),
        }
    }

    /// Sets condition `kind`, keeping its transition time unless the status changed.
    pub fn set_condition(&mut self, kind: &'static str, status: bool) {
        match self.conditions.get(kind) {
            Some((current, _)) if *current == status => {}
            _ => {
                self.conditions.insert(kind, (status, Timestamp::now()));
            }
        }
    }

    /// Recomputes ContainersReady and Ready from the first container.
    pub fn refresh_readiness(&mut self) {
        let ready = self.containers.first().is_some_and(|c| c.ready);
        self.set_condition("ContainersReady", ready);
        self.set_condition("Ready", ready);
    }

    /// The status to write. `scheduled` is the scheduler's own PodScheduled condition, kept as is.
    pub fn render(&self, scheduled: Option<&PodCondition>) -> PodStatus {
        let conditions =
            self.conditions
                .iter()
                .map(|(kind, (status, at))| match (*kind, scheduled) {
                    ("PodScheduled", Some(c)) => c.clone(),
                    _ => PodCondition {
                        type_: (*kind).into(),
                        status: if *status { "True" } else { "False" }.into(),
                        last_transition_time: Some(Time(*at)),
                        ..PodCondition::default()
                    },
                });
        PodStatus {
            phase: Some(self.phase.into()),
            reason: self.reason.clone(),
            message: self.message.clone(),
            host_ip: Some(self.host_ip.to_string()),
            pod_ip: self.ip.map(|ip| ip.to_string()),
            pod_ips: self.ip.map(|ip| vec![PodIP { ip: ip.to_string() }]),
            start_time: Some(Time(self.start_time)),
            conditions: Some(conditions.collect()),
            container_statuses: Some(self.containers.iter().map(render_container).collect()),
            ..PodStatus::default()
        }
    }
}

fn render_container(c: &ContainerRecord) -> ContainerStatus {
    let state = match &c.state {
        State::Waiting { reason, message } => ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.clone()),
                message: Some(message.clone()).filter(|m| !m.is_empty()),
            }),
            ..ContainerState::default()
        },
        State::Running(at) => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(Time(*at)),
            }),
            ..ContainerState::default()
        },
        State::Terminated(t) => ContainerState {
            terminated: Some(t.clone()),
            ..ContainerState::default()
        },
    };
    ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone(),
        image_id: format!("gpupool-kubelet://{}", c.image),
        container_id: c.pid.map(|pid| format!("pid://{pid}")),
        ready: c.ready,
        started: Some(c.started),
        restart_count: c.restart_count,
        state: Some(state),
        last_state: c.last_terminated.clone().map(|t| ContainerState {
            terminated: Some(t),
            ..ContainerState::default()
        }),
        ..ContainerStatus::default()
    }
}

/// A terminated state from an exit code and times.
pub fn terminated(
    code: i32,
    signal: Option<i32>,
    started: Option<Timestamp>,
    finished: Timestamp,
    pid: Option<u32>,
    reason: Option<&str>,
) -> ContainerStateTerminated {
    let default_reason = if code == 0 { "Completed" } else { "Error" };
    ContainerStateTerminated {
        exit_code: code,
        signal,
        reason: Some(reason.unwrap_or(default_reason).into()),
        started_at: started.map(Time),
        finished_at: Some(Time(finished)),
        container_id: pid.map(|pid| format!("pid://{pid}")),
        message: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container() -> ContainerRecord {
        ContainerRecord {
            name: "c".into(),
            image: "img".into(),
            pid: Some(42),
            state: State::Running(Timestamp::now()),
            last_terminated: None,
            restart_count: 1,
            ready: true,
            started: true,
        }
    }

    #[test]
    fn a_ready_running_pod_renders_like_the_kubelets() {
        let mut pod = PodRecord::new(Ipv4Addr::LOCALHOST, vec![container()]);
        pod.phase = "Running";
        pod.ip = Some(Ipv4Addr::new(127, 0, 1, 1));
        pod.set_condition("Initialized", true);
        pod.refresh_readiness();
        let status = pod.render(None);
        let json = serde_json::to_value(&status).expect("serialises");
        assert_eq!(json["phase"], "Running");
        assert_eq!(json["podIP"], "127.0.1.1");
        assert_eq!(json["podIPs"][0]["ip"], "127.0.1.1");
        assert_eq!(json["hostIP"], "127.0.0.1");
        let cs = &json["containerStatuses"][0];
        assert_eq!(
            (cs["ready"].as_bool(), cs["restartCount"].as_i64()),
            (Some(true), Some(1))
        );
        assert_eq!(cs["containerID"], "pid://42");
        assert!(cs["state"]["running"]["startedAt"].is_string());
        let conditions: Vec<(String, String)> = status
            .conditions
            .iter()
            .flatten()
            .map(|c| (c.type_.clone(), c.status.clone()))
            .collect();
        for kind in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
            assert!(
                conditions.contains(&(kind.into(), "True".into())),
                "{conditions:?}"
            );
        }
    }

    #[test]
    fn transition_times_move_only_on_change() {
        let mut pod = PodRecord::new(Ipv4Addr::LOCALHOST, vec![container()]);
        pod.set_condition("Ready", true);
        let first = pod.conditions["Ready"].1;
        std::thread::sleep(std::time::Duration::from_millis(5));
        pod.set_condition("Ready", true);
        assert_eq!(pod.conditions["Ready"].1, first);
        pod.set_condition("Ready", false);
        assert_ne!(pod.conditions["Ready"].1, first);
    }
}
