//! The `InferencePool` custom resource: a set of image models served from GPU pods, planned to
//! share each GPU's memory and scaled from the pods' telemetry.

use crate::model::ModelSpec;
use crate::quantity::{BUDGET_PATTERN, QUANTITY_PATTERN};
use crate::status::InferencePoolStatus;
use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::BTreeMap;

/// Desired state of an `InferencePool`.
// Several `printcolumn(...)` entries are how kube-derive spells several columns.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "gpupool.io",
    version = "v1alpha1",
    kind = "InferencePool",
    namespaced,
    shortname = "gpool",
    category = "gpupool",
    status = "InferencePoolStatus",
    doc = "A pool of GPU pods serving image models, planned to share each GPU's memory",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "Pods ready"
    ),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        json_path = ".spec.replicas",
        description = "Pods wanted"
    ),
    printcolumn(
        name = "Models",
        type_ = "string",
        json_path = ".status.modelNames",
        description = "Models served"
    ),
    printcolumn(
        name = "VRAM-Used",
        type_ = "string",
        json_path = ".status.vramUsed",
        description = "Device memory in use on the busiest pod"
    ),
    printcolumn(
        name = "VRAM-Budget",
        type_ = "string",
        json_path = ".status.vramBudget",
        description = "Memory budget per GPU"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct InferencePoolSpec {
    /// The models the pool serves (at least one).
    #[schemars(length(min = 1, max = 16))]
    pub models: Vec<ModelSpec>,
    /// The GPU each pod gets and how its memory may be used.
    #[serde(default)]
    pub gpu: GpuSpec,
    /// How many concurrent users each pod is planned for.
    #[serde(default)]
    pub concurrency: ConcurrencySpec,
    /// Number of pods (one GPU each). The scale subresource sets this field.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
    /// Telemetry-driven scaling of replicas and concurrency.
    #[serde(default)]
    pub scaling: ScalingSpec,
    /// Overrides for the pods the operator creates.
    #[serde(default)]
    pub pod: PodOverrides,
}

fn default_replicas() -> i32 {
    1
}

/// Execution streams per pod: `auto` (as many as the plan's slots) or a fixed count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Streams {
    /// A fixed number of CUDA streams.
    Count(u32),
    /// Let the planner choose (the sum of the models' slots).
    #[default]
    #[serde(with = "auto_literal")]
    Auto,
}

mod auto_literal {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("auto")
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<(), D::Error> {
        let value = String::deserialize(d)?;
        if value == "auto" {
            Ok(())
        } else {
            Err(D::Error::custom(format!(
                "streams must be \"auto\" or a number, not {value:?}"
            )))
        }
    }
}

impl JsonSchema for Streams {
    fn schema_name() -> Cow<'static, str> {
        "Streams".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        // int-or-string is the only mixed type a structural schema allows; the operator checks the
        // string is "auto" and the number is in range, and reports a condition if not.
        schemars::json_schema!({
            "description": "CUDA streams per pod: \"auto\" or a number from 1 to 64",
            "x-kubernetes-int-or-string": true
        })
    }
}

/// The GPU each pod asks for, and its memory budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GpuSpec {
    /// Memory the pool may use on each GPU: a quantity ("22Gi") or a share of the card ("90%").
    #[serde(default = "default_budget")]
    #[schemars(regex(pattern = BUDGET_PATTERN))]
    pub memory_budget: String,
    /// Memory kept free inside the budget for the CUDA context, workspaces and fragmentation.
    #[serde(default = "default_headroom")]
    #[schemars(regex(pattern = QUANTITY_PATTERN))]
    pub reserved_headroom: String,
    /// Total memory of the card; needed when the budget is a percentage and the product is not
    /// one the planner knows. Pods replace it with what NVML reports once they run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = QUANTITY_PATTERN))]
    pub card_memory: Option<String>,
    /// CUDA streams per pod.
    #[serde(default)]
    pub streams: Streams,
    /// GPU product to schedule on, matched against the `nvidia.com/gpu.product` node label
    /// (e.g. "NVIDIA-H200").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub product: Option<String>,
    /// Extended resource name the pods request one of.
    #[serde(default = "default_resource_name")]
    #[schemars(length(min = 1, max = 253))]
    pub resource_name: String,
}

fn default_budget() -> String {
    "90%".into()
}
fn default_headroom() -> String {
    "2Gi".into()
}
fn default_resource_name() -> String {
    "nvidia.com/gpu".into()
}

impl Default for GpuSpec {
    fn default() -> Self {
        Self {
            memory_budget: default_budget(),
            reserved_headroom: default_headroom(),
            card_memory: None,
            streams: Streams::Auto,
            product: None,
            resource_name: default_resource_name(),
        }
    }
}

/// Concurrency the plan is sized for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConcurrencySpec {
    /// Concurrent users (requests in flight) each pod should serve without queueing.
    #[serde(default = "default_users")]
    #[schemars(range(min = 1, max = 4096))]
    pub target_users: u32,
}

fn default_users() -> u32 {
    8
}

impl Default for ConcurrencySpec {
    fn default() -> Self {
        Self {
            target_users: default_users(),
        }
    }
}

/// Thresholds for telemetry-driven scaling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalingSpec {
    /// Whether the operator changes replicas from telemetry (otherwise `replicas` is left alone).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Fewest pods autoscaling may leave.
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub min_replicas: i32,
    /// Most pods autoscaling may create.
    #[serde(default = "default_max_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Device memory in use (fraction of the card; a pod's own allocator cache counts as free)
    /// above which the pool scales out.
    #[serde(default = "default_watermark")]
    #[schemars(range(min = 0.1, max = 1.0))]
    pub memory_pressure_watermark: f64,
    /// Device memory in use (as for the watermark) above which pods refuse new work with 503
    /// (circuit breaker).
    #[serde(default = "default_reject_above")]
    #[schemars(range(min = 0.1, max = 1.0))]
    pub reject_above: f64,
    /// Queued requests per pod above which the pool scales out.
    #[serde(default = "default_queue_target")]
    #[schemars(range(min = 1, max = 100000))]
    pub target_queue_per_replica: u32,
    /// How long a scale-out signal must persist before acting, seconds.
    #[serde(default = "default_up_window")]
    #[schemars(range(min = 0, max = 3600))]
    pub scale_up_stabilization_seconds: u32,
    /// How long a scale-in signal must persist before acting, seconds.
    #[serde(default = "default_down_window")]
    #[schemars(range(min = 0, max = 86400))]
    pub scale_down_stabilization_seconds: u32,
}

fn default_true() -> bool {
    true
}
fn default_min_replicas() -> i32 {
    1
}
fn default_max_replicas() -> i32 {
    4
}
fn default_watermark() -> f64 {
    0.85
}
fn default_reject_above() -> f64 {
    0.90
}
fn default_queue_target() -> u32 {
    16
}
fn default_up_window() -> u32 {
    30
}
fn default_down_window() -> u32 {
    300
}

impl Default for ScalingSpec {
    fn default() -> Self {
        Self {
            enabled: default_true(),
            min_replicas: default_min_replicas(),
            max_replicas: default_max_replicas(),
            memory_pressure_watermark: default_watermark(),
            reject_above: default_reject_above(),
            target_queue_per_replica: default_queue_target(),
            scale_up_stabilization_seconds: default_up_window(),
            scale_down_stabilization_seconds: default_down_window(),
        }
    }
}

/// Overrides for the pods the operator creates.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodOverrides {
    /// Sidecar image (defaults to the operator's configured image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub image: Option<String>,
    /// Image pull policy: Always, IfNotPresent or Never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
    /// Extra resource requests and limits for the sidecar container (the GPU is always added).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Tolerations, e.g. for tainted GPU nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Node labels the pods must match, in addition to the GPU product.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Volumes holding the model files, mounted read-only at /models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_volume_claim: Option<String>,
}

/// When the kubelet pulls the sidecar image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PullPolicy {
    /// Pull on every start.
    Always,
    /// Pull when absent.
    IfNotPresent,
    /// Never pull.
    Never,
}

impl PullPolicy {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}
