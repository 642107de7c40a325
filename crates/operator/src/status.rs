//! A pool's status, rebuilt from what one reconcile observed and written with server-side apply
//! to the status subresource (only when it changed).
//!
//! Conditions follow the Kubernetes convention: `lastTransitionTime` moves only when a
//! condition's `status` changes; reason and message may change under it.

use crate::error::Error;
use crate::resources::{selector_string, FIELD_MANAGER};
use gpupool_api::quantity::format_bytes;
use gpupool_api::status::ConditionType;
use gpupool_api::{
    Condition, ConditionStatus, InferencePool, InferencePoolStatus, PoolPlan, TelemetrySummary,
    API_VERSION,
};
use gpupool_planner::PlanError;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};

/// What one reconcile observed about a pool, from which its status is rebuilt.
#[derive(Debug, Clone, Copy)]
pub struct Observation<'a> {
    /// The pool as read at the start of the reconcile.
    pub pool: &'a InferencePool,
    /// The planner's answer for the current spec.
    pub plan: Result<&'a PoolPlan, &'a PlanError>,
    /// The pool's Deployment (as applied now, or as left from an earlier plan), if any.
    pub deployment: Option<&'a Deployment>,
    /// Pods of the pool the scheduler cannot place, and why.
    pub unschedulable: &'a Unschedulable,
    /// The latest telemetry collected from the ready pods; `None` when no pod is ready.
    pub telemetry: Option<&'a TelemetryView>,
    /// When the autoscaler changed replicas in this reconcile (RFC 3339), if it did.
    pub scaled_at: Option<&'a str>,
    /// The time to stamp on conditions that transition now (RFC 3339).
    pub now: &'a str,
}

/// Pending pods the scheduler reported as unschedulable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unschedulable {
    /// How many.
    pub pods: u32,
    /// The scheduler's message for one of them (e.g. "0/2 nodes are available: ...").
    pub message: Option<String>,
}

/// Telemetry as status needs it: the summary plus what the summary type has no field for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TelemetryView {
    /// The summary recorded in `status.telemetry`.
    pub summary: TelemetrySummary,
    /// Device memory in use on the busiest pod, when any pod reports a device.
    pub max_device_used_bytes: Option<u64>,
    /// Problems pods report (failed models, open circuit breakers), one sentence each.
    pub problems: Vec<String>,
}

/// Rebuilds the whole status from an observation and the previous status.
pub fn build(obs: &Observation<'_>) -> InferencePoolStatus {
    let previous = obs.pool.status.clone().unwrap_or_default();
    let name = obs.pool.name_any();
    let generation = obs.pool.metadata.generation;
    // The plan in force: the new one, or (when the spec was rejected) the one the pods still run.
    let plan = match obs.plan {
        Ok(plan) => Some(plan.clone()),
        Err(_) if obs.deployment.is_some() => previous.plan.clone(),
        Err(_) => None,
    };
    let counts = Counts::of(obs.deployment, obs.pool.spec.replicas);
    let wanted = [
        ready(obs, &counts),
        progressing(obs, &counts),
        degraded(obs),
        plan_feasible(obs),
    ];
    let conditions = wanted
        .into_iter()
        .map(|(type_, status, reason, message)| {
            let last_transition_time = previous
                .conditions
                .iter()
                .find(|c| c.type_ == type_ && c.status == status)
                .map_or_else(|| obs.now.to_string(), |c| c.last_transition_time.clone());
            Condition {
                type_,
                status,
                reason: reason.to_string(),
                message,
                last_transition_time,
                observed_generation: generation,
            }
        })
        .collect();
    InferencePoolStatus {
        observed_generation: generation,
        conditions,
        replicas: counts.current,
        ready_replicas: counts.ready,
        selector: Some(selector_string(&name)),
        model_names: Some(
            obs.pool
                .spec
                .models
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>()
                .join(","),
        ),
        vram_used: obs
            .telemetry
            .and_then(|t| t.max_device_used_bytes)
            .map(format_bytes),
        vram_budget: plan
            .as_ref()
            .map(|p| format_bytes(p.budget_bytes + p.headroom_bytes)),
        plan,
        telemetry: obs.telemetry.map(|t| t.summary.clone()),
        last_scale_time: obs
            .scaled_at
            .map(str::to_string)
            .or(previous.last_scale_time),
    }
}

/// Replica counts read from the Deployment.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    desired: i32,
    current: i32,
    ready: i32,
    updated: i32,
    rolled_out: bool,
    stalled: bool,
}

impl Counts {
    fn of(deployment: Option<&Deployment>, desired: i32) -> Self {
        let Some(d) = deployment else {
            return Counts {
                desired,
                ..Counts::default()
            };
        };
        let status = d.status.clone().unwrap_or_default();
        let stalled = status.conditions.iter().flatten().any(|c| {
            c.type_ == "Progressing" && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
        });
        Counts {
            desired: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(desired),
            current: status.replicas.unwrap_or(0),
            ready: status.ready_replicas.unwrap_or(0),
            updated: status.updated_replicas.unwrap_or(0),
            rolled_out: status.observed_generation.unwrap_or(0)
                >= d.metadata.generation.unwrap_or(0),
            stalled,
        }
    }
}

type Wanted = (ConditionType, ConditionStatus, &'static str, String);

fn ready(obs: &Observation<'_>, c: &Counts) -> Wanted {
    use ConditionStatus::{False, True};
    let t = ConditionType::Ready;
    if obs.deployment.is_none() {
        return (
            t,
            False,
            "NotDeployed",
            "no pods: the spec has no feasible plan yet".into(),
        );
    }
    if c.desired == 0 {
        return (
            t,
            True,
            "ScaledToZero",
            "the pool is scaled to zero replicas".into(),
        );
    }
    if c.ready >= c.desired && c.updated >= c.desired && c.rolled_out {
        let msg = format!("{} of {} pods ready", c.ready, c.desired);
        return (t, True, "AllReplicasReady", msg);
    }
    let msg = format!("{} of {} pods ready", c.ready.min(c.desired), c.desired);
    (t, False, "ReplicasNotReady", msg)
}

fn progressing(obs: &Observation<'_>, c: &Counts) -> Wanted {
    use ConditionStatus::{False, True};
    let t = ConditionType::Progressing;
    if obs.deployment.is_none() {
        return (
            t,
            False,
            "NotDeployed",
            "nothing to roll out until the plan is feasible".into(),
        );
    }
    if obs.unschedulable.pods > 0 {
        let why = obs
            .unschedulable
            .message
            .as_deref()
            .unwrap_or("no node has a free GPU");
        let msg = format!(
            "{} pod(s) cannot be scheduled: {why}",
            obs.unschedulable.pods
        );
        return (t, True, "WaitingForCapacity", msg);
    }
    if !c.rolled_out || c.updated < c.desired {
        let msg = format!(
            "{} of {} pods run the current template",
            c.updated.min(c.desired),
            c.desired
        );
        return (t, True, "RollingOut", msg);
    }
    if c.current != c.desired {
        let msg = format!("scaling from {} to {} pods", c.current, c.desired);
        return (t, True, "Scaling", msg);
    }
    if c.ready < c.desired {
        let msg = format!("waiting for {} pod(s) to become ready", c.desired - c.ready);
        return (t, True, "WaitingForPods", msg);
    }
    (
        t,
        False,
        "Complete",
        format!("{} pods run the current template", c.desired),
    )
}

fn degraded(obs: &Observation<'_>) -> Wanted {
    use ConditionStatus::{False, True};
    let t = ConditionType::Degraded;
    if let (Err(e), Some(_)) = (obs.plan, obs.deployment) {
        let msg =
            format!("the pods keep serving the previous plan; the current spec was rejected: {e}");
        return (t, True, "ServingPreviousPlan", msg);
    }
    if let Some(problems) = obs.telemetry.map(|t| &t.problems).filter(|p| !p.is_empty()) {
        return (t, True, "PodsReportProblems", problems.join("; "));
    }
    if Counts::of(obs.deployment, 0).stalled {
        return (
            t,
            True,
            "RolloutStalled",
            "the deployment exceeded its progress deadline".into(),
        );
    }
    (t, False, "AsExpected", "no problems reported".into())
}

fn plan_feasible(obs: &Observation<'_>) -> Wanted {
    use ConditionStatus::{False, True};
    let t = ConditionType::PlanFeasible;
    match obs.plan {
        Ok(p) => {
            let msg = format!(
                "{} model(s) plan {} of {} per GPU with {} stream(s) for {} user(s)",
                p.models.len(),
                format_bytes(p.planned_bytes),
                format_bytes(p.budget_bytes),
                p.streams,
                p.users
            );
            (t, True, "PlanFits", msg)
        }
        Err(e) => (t, False, e.reason(), e.to_string()),
    }
}

/// Pods the scheduler marked unschedulable, and its message for the first of them.
pub fn unschedulable(pods: &[Pod]) -> Unschedulable {
    let messages: Vec<Option<String>> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            let status = p.status.as_ref()?;
            let condition = status.conditions.iter().flatten().find(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("Unschedulable")
            })?;
            Some(condition.message.clone())
        })
        .collect();
    Unschedulable {
        pods: u32::try_from(messages.len()).unwrap_or(u32::MAX),
        message: messages.into_iter().flatten().next(),
    }
}

/// The current time as Kubernetes writes it (RFC 3339, whole seconds, UTC).
pub fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Writes `status` to the pool's status subresource with server-side apply, as the only owner
/// of every status field (fields left out are removed).
pub async fn write(
    api: &Api<InferencePool>,
    name: &str,
    status: &InferencePoolStatus,
) -> Result<(), Error> {
    let document = serde_json::json!({
        "apiVersion": API_VERSION,
        "kind": "InferencePool",
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&document),
    )
    .await
    .map_err(Error::WriteStatus)?;
    Ok(())
}

/// The condition of `type_` in a status, if present.
pub fn condition(status: &InferencePoolStatus, type_: ConditionType) -> Option<&Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
#[path = "status_tests.rs"]
mod tests;
