//! The memory plan: how a pool's models share one GPU. Made by `gpupool-planner`, recorded in the
//! pool's status and carried to the pods in the sidecar config.

use crate::model::Precision;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How one model runs on each GPU of the pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelPlan {
    /// The model's name, as in the spec.
    pub name: String,
    /// The concrete precision chosen (never `auto`).
    pub precision: Precision,
    /// Batch size the batcher may form (the cap; smaller batches run when traffic is light).
    pub batch_size: u32,
    /// Execution slots: batches of this model that may run at once, each on its own CUDA stream.
    pub slots: u32,
    /// Whether the model's weights stay loaded; non-resident models load on demand (LRU).
    pub resident: bool,
    /// Bytes the weights take at the chosen precision.
    pub weights_bytes: u64,
    /// Peak bytes one running batch adds above the weights.
    pub batch_peak_bytes: u64,
    /// Bytes reserved for this model: weights plus `slots` × batch peak.
    pub reserved_bytes: u64,
    /// Throughput the plan expects from this model on one GPU, images per second.
    pub estimated_images_per_second: f64,
}

/// The whole plan for one GPU of the pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolPlan {
    /// Total memory of the card the plan was made for.
    pub card_bytes: u64,
    /// Memory the pool may use: the configured budget less the reserved headroom.
    pub budget_bytes: u64,
    /// Memory kept free for the CUDA context, cuDNN workspaces and fragmentation.
    pub headroom_bytes: u64,
    /// Sum of the models' reservations; never above `budget_bytes`.
    pub planned_bytes: u64,
    /// Concurrent users the plan is sized for.
    pub users: u32,
    /// Budget per concurrent user (`budget_bytes / users`).
    pub per_user_bytes: u64,
    /// CUDA streams in the sidecar: the sum of all models' slots.
    pub streams: u32,
    /// One entry per model, in spec order.
    pub models: Vec<ModelPlan>,
}

impl PoolPlan {
    /// The plan for one model, by name.
    pub fn model(&self, name: &str) -> Option<&ModelPlan> {
        self.models.iter().find(|m| m.name == name)
    }

    /// Estimated throughput of the whole GPU, images per second.
    pub fn estimated_images_per_second(&self) -> f64 {
        self.models
            .iter()
            .map(|m| m.estimated_images_per_second)
            .sum()
    }
}
