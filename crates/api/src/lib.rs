//! The one shared vocabulary of gpupool.
//!
//! Everything that crosses a process boundary is defined here, as plain serde + schemars types:
//! - [`InferencePool`], the custom resource people apply (group `gpupool.io`, version `v1alpha1`,
//!   short name `gpool`), with its spec and status;
//! - [`plan`], the memory plan the planner makes and the operator records in status and config;
//! - [`sidecar`], the config document the operator pushes into pods;
//! - [`telemetry`], the document each pod reports back.
//!
//! No I/O happens in this crate: it is linked by the operator (which never links libtorch) and by
//! the sidecar (which never talks to the API server).

pub mod model;
pub mod plan;
pub mod pool;
pub mod quantity;
pub mod sidecar;
pub mod status;
pub mod telemetry;

pub use model::{InputSpec, ModelFormat, ModelSource, ModelSpec, Precision};
pub use plan::{ModelPlan, PoolPlan};
pub use pool::{
    ConcurrencySpec, GpuSpec, InferencePool, InferencePoolSpec, PodOverrides, PullPolicy,
    ScalingSpec, Streams,
};
pub use quantity::{parse_quantity_bytes, MemoryAmount, QuantityError};
pub use status::{Condition, ConditionStatus, InferencePoolStatus, TelemetrySummary};

/// The API group of every gpupool resource and document.
pub const GROUP: &str = "gpupool.io";
/// The version of the `InferencePool` resource and of the sidecar documents.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` as it appears in documents: `gpupool.io/v1alpha1`.
pub const API_VERSION: &str = "gpupool.io/v1alpha1";
