//! What the operator observed about a pool: conditions, replica counts for the scale subresource,
//! the plan in force and a summary of the pods' telemetry.

use crate::plan::PoolPlan;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Observed state of an `InferencePool`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InferencePoolStatus {
    /// The `metadata.generation` this status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Progressing, Degraded and PlanFeasible.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Pods of the pool (for the scale subresource).
    #[serde(default)]
    pub replicas: i32,
    /// Pods ready to serve.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Label selector of the pool's pods, as a string (for the scale subresource and HPA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Model names, comma separated (for `kubectl get`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_names: Option<String>,
    /// Device memory in use on the busiest pod, human readable (for `kubectl get`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vram_used: Option<String>,
    /// The memory budget per GPU, human readable (for `kubectl get`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vram_budget: Option<String>,
    /// The plan in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<PoolPlan>,
    /// Summary of the latest telemetry from the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telemetry: Option<TelemetrySummary>,
    /// When the autoscaler last changed the replica count (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<String>,
}

/// The kinds of condition a pool reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum ConditionType {
    /// All desired pods are ready and serving the current plan.
    Ready,
    /// A rollout or scale is under way.
    Progressing,
    /// Pods report failures (models not loading, out-of-memory, circuit open).
    Degraded,
    /// The spec's models fit the memory budget; if False, the message names the shortfall.
    PlanFeasible,
}

/// Truth value of a condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ConditionStatus {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// Not known yet.
    Unknown,
}

/// One condition, in the shape Kubernetes tools display.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Which condition.
    #[serde(rename = "type")]
    pub type_: ConditionType,
    /// Whether it holds.
    pub status: ConditionStatus,
    /// One CamelCase word for machines.
    pub reason: String,
    /// A sentence for people.
    pub message: String,
    /// When `status` last changed (RFC 3339).
    pub last_transition_time: String,
    /// The generation the condition was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Aggregate of the pods' telemetry, as last collected.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TelemetrySummary {
    /// Pods that answered the last collection.
    pub pods_reporting: u32,
    /// Highest device memory in use among the pods, fraction of the card (each pod's allocator
    /// cache counted as free, as the circuit breaker and the watermark read it).
    pub max_memory_used_fraction: f64,
    /// Highest allocator reservation among the pods, bytes.
    pub max_reserved_bytes: u64,
    /// Requests waiting, summed over pods and models.
    pub queue_depth: u32,
    /// Images per second, summed over pods.
    pub images_per_second: f64,
    /// Requests refused, summed over pods, since they started.
    pub rejected_total: u64,
    /// Out-of-memory events, summed over pods, since they started.
    pub oom_events_total: u64,
    /// When it was collected (RFC 3339).
    pub collected_at: String,
}
