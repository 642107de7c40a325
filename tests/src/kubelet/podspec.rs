//! What the stand-in reads from a pod's spec and earlier status.

use k8s_openapi::api::core::v1::{Container, ContainerState, Pod};
use std::time::Duration;

pub(crate) fn containers(pod: &Pod) -> Vec<Container> {
    pod.spec
        .as_ref()
        .map(|s| s.containers.clone())
        .unwrap_or_default()
}

pub(crate) fn deleting(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

pub(crate) fn restart_policy(pod: &Pod) -> &str {
    let policy = pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref());
    policy.unwrap_or("Always")
}

pub(crate) fn ran_before(pod: &Pod, container: &str) -> bool {
    let statuses = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref());
    let found = statuses.into_iter().flatten().find(|c| c.name == container);
    // The API server always returns `lastState: {}`, so look inside.
    let terminated =
        |s: &Option<ContainerState>| s.as_ref().is_some_and(|s| s.terminated.is_some());
    let running = |s: &Option<ContainerState>| s.as_ref().is_some_and(|s| s.running.is_some());
    found.is_some_and(|c| terminated(&c.last_state) || terminated(&c.state) || running(&c.state))
}

pub(crate) fn previous_restart_count(pod: &Pod, container: &str) -> i32 {
    let statuses = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref());
    let found = statuses.into_iter().flatten().find(|c| c.name == container);
    found.map(|c| c.restart_count).unwrap_or(0)
}

/// How long a deleted pod gets: `deletionGracePeriodSeconds`, else the spec's, else 30 s.
pub(crate) fn grace_period(pod: &Pod) -> Duration {
    let spec = pod
        .spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds);
    let secs = pod
        .metadata
        .deletion_grace_period_seconds
        .or(spec)
        .unwrap_or(30);
    Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

pub(crate) fn liveness_grace(pod: &Pod, container: &Container) -> Duration {
    let probe = container.liveness_probe.as_ref();
    match probe.and_then(|p| p.termination_grace_period_seconds) {
        Some(secs) => Duration::from_secs(u64::try_from(secs).unwrap_or(0)),
        None => {
            let spec = pod
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds);
            Duration::from_secs(u64::try_from(spec.unwrap_or(30)).unwrap_or(0))
        }
    }
}

/// `nvidia.com/gpu` the pod's containers ask for (limits, else requests), summed.
pub(crate) fn gpu_request(pod: &Pod) -> u32 {
    let count = |c: &Container| -> u32 {
        let res = c.resources.as_ref();
        let limit = res
            .and_then(|r| r.limits.as_ref())
            .and_then(|l| l.get("nvidia.com/gpu"));
        let request = res
            .and_then(|r| r.requests.as_ref())
            .and_then(|l| l.get("nvidia.com/gpu"));
        limit
            .or(request)
            .and_then(|q| q.0.parse().ok())
            .unwrap_or(0)
    };
    containers(pod).iter().map(count).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        serde_yaml::from_str(yaml).expect("pod yaml")
    }

    #[test]
    fn gpus_are_summed_over_containers_from_limits_or_requests() {
        let p = pod(r#"
metadata: {name: p}
spec:
  containers:
  - {name: a, resources: {limits: {nvidia.com/gpu: "2"}}}
  - {name: b, resources: {requests: {nvidia.com/gpu: "1"}}}
  - {name: c}
"#);
        assert_eq!(gpu_request(&p), 3);
    }

    #[test]
    fn the_deletion_grace_period_wins_over_the_spec() {
        let mut p =
            pod("metadata: {name: p}\nspec: {terminationGracePeriodSeconds: 7, containers: []}");
        assert_eq!(grace_period(&p), Duration::from_secs(7));
        p.metadata.deletion_grace_period_seconds = Some(1);
        assert_eq!(grace_period(&p), Duration::from_secs(1));
        assert_eq!(
            grace_period(&pod("metadata: {name: p}")),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn an_empty_last_state_is_not_an_earlier_run() {
        let fresh = pod(r#"
metadata: {name: p}
status:
  containerStatuses:
  - {name: c, image: i, imageID: "", ready: false, restartCount: 0, lastState: {}, state: {waiting: {reason: ContainerCreating}}}
"#);
        assert!(!ran_before(&fresh, "c"));
        let stopped = pod(r#"
metadata: {name: p}
status:
  containerStatuses:
  - {name: c, image: i, imageID: "", ready: false, restartCount: 4, state: {terminated: {exitCode: 0}}}
"#);
        assert!(ran_before(&stopped, "c"));
        assert_eq!(previous_restart_count(&stopped, "c"), 4);
    }
}
