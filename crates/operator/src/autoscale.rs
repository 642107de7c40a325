//! Autoscaling: the pods' telemetry goes to the planner's `decide_replicas` (which owns the
//! rules: bounds, stabilisation windows, hysteresis), and a new replica count is written to
//! `spec.replicas` through the pool's scale subresource under its own field manager, as an HPA
//! would. The resulting generation change makes the next reconcile roll the Deployment.

use crate::error::Error;
use crate::events::ReplicaChange;
use crate::state::{PoolKey, Registry};
use crate::telemetry::{Collection, Telemetry};
use gpupool_api::telemetry::TelemetryReport;
use gpupool_api::InferencePool;
use gpupool_planner::{decide_replicas, PodSample, ScalingInput, ScalingThresholds, Stabilization};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};

/// Field manager of the autoscaler's writes of `spec.replicas` (through the scale subresource),
/// apart from the operator's own so that `managedFields` shows who changed replicas.
pub const AUTOSCALER_FIELD_MANAGER: &str = "gpupool-autoscaler";

/// The planner's view of each report; requests refused are counted since the same pod's
/// previous report (`previous`), or as none for a pod seen for the first time.
pub fn samples(collection: &Collection, previous: &[(String, TelemetryReport)]) -> Vec<PodSample> {
    let rejected = |r: &TelemetryReport| {
        r.models
            .iter()
            .fold(0u64, |n, m| n.saturating_add(m.rejected_total))
    };
    collection
        .reports
        .iter()
        .map(|(pod, report)| {
            let before = previous
                .iter()
                .find(|(p, _)| p == pod)
                .map(|(_, r)| rejected(r));
            PodSample {
                memory_used_fraction: report.memory_in_use_fraction(),
                queue_depth: report
                    .models
                    .iter()
                    .fold(0u32, |n, m| n.saturating_add(m.queue_depth)),
                // A restarted pod's counter starts again from zero: count nothing then.
                rejects_delta: before.map_or(0, |b| rejected(report).saturating_sub(b)),
                circuit_open: report.circuit_open,
            }
        })
        .collect()
}

/// The input of the planner's replica decision for `pool`.
pub fn scaling_input(
    pool: &InferencePool,
    ready_replicas: i32,
    samples: Vec<PodSample>,
    stabilization: Stabilization,
    now_s: u64,
) -> ScalingInput {
    let scaling = &pool.spec.scaling;
    ScalingInput {
        current_replicas: pool.spec.replicas,
        min_replicas: scaling.min_replicas,
        max_replicas: scaling.max_replicas,
        ready_replicas,
        samples,
        thresholds: ScalingThresholds::from_spec(scaling),
        stabilization,
        now_s,
        up_window_s: u64::from(scaling.scale_up_stabilization_seconds),
        down_window_s: u64::from(scaling.scale_down_stabilization_seconds),
    }
}

/// Asks the planner for a replica count and writes it through the scale subresource; returns the
/// change, if any.
///
/// Decided on fresh telemetry (a cached sample must not count twice) or, with no pod
/// reporting, on the bounds alone (`minReplicas`/`maxReplicas` are enforced at once).
pub async fn autoscale(
    api: &Api<InferencePool>,
    pool: &InferencePool,
    deployment: Option<&Deployment>,
    telemetry: Option<&Telemetry>,
    memory: &Registry,
    key: &PoolKey,
) -> Result<Option<ReplicaChange>, Error> {
    if !pool.spec.scaling.enabled || telemetry.is_some_and(|t| !t.fresh) {
        return Ok(None);
    }
    let ready = deployment
        .and_then(|d| d.status.as_ref())
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    let samples = telemetry.map(|t| t.samples.clone()).unwrap_or_default();
    let stabilization = memory.with(key, |m| m.stabilization);
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let decision = decide_replicas(&scaling_input(pool, ready, samples, stabilization, now_s));
    memory.with(key, |m| m.stabilization = decision.stabilization);
    let from = pool.spec.replicas;
    if decision.replicas == from {
        tracing::debug!(reason = %decision.reason, "replicas held");
        return Ok(None);
    }
    let patch = serde_json::json!({ "spec": { "replicas": decision.replicas } });
    let params = PatchParams {
        field_manager: Some(AUTOSCALER_FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    api.patch_scale(&pool.name_any(), &params, &Patch::Merge(&patch))
        .await
        .map_err(Error::Scale)?;
    tracing::info!(from, to = decision.replicas, reason = %decision.reason, "autoscaled the pool");
    Ok(Some(ReplicaChange {
        from,
        to: decision.replicas,
        why: Some(decision.reason),
    }))
}

#[cfg(test)]
#[path = "autoscale_tests.rs"]
mod tests;
