//! The planner of gpupool: pure functions, no I/O, that decide how a pool's models share a GPU and
//! how many pods the pool needs.
//!
//! - [`plan_pool`] turns an `InferencePool` spec plus what the pods measured ([`MeasuredProfiles`])
//!   into a [`PoolPlan`](gpupool_api::PoolPlan): per model the precision, batch size, execution
//!   slots and residency, within a hard memory budget — or a [`PlanError`] that names the invalid
//!   field or the shortfall in bytes.
//! - [`decide_replicas`] turns the pods' telemetry into a replica count, with stabilisation windows
//!   and hysteresis.
//! - [`per_user_budget`] and [`fits`] are the plain accounting both of them and hand checks use.
//!
//! Everything is deterministic: the same inputs give the same outputs, so re-planning with nothing
//! new writes nothing new and triggers no reconcile. No kube, tokio or tch here: the operator and
//! the executor both link this crate.
//!
//! One file per idea: `budget` (card memory and budget), `accounting` (sums), `memory` (weights and
//! batch peaks), `throughput` (images per second), `profile` (estimated and measured model
//! profiles), `partition` (users, slots, batch sizes), `search` (the optimisation and why it is
//! monotone), `plan` (the top level), `validate` (spec checks), `infeasible` (the error),
//! `scaling` (autoscaling).

pub mod accounting;
pub mod budget;
pub mod infeasible;
pub mod memory;
pub mod partition;
pub mod plan;
pub mod profile;
pub mod scaling;
mod search;
pub mod throughput;
pub mod validate;

pub use accounting::{fits, per_user_budget, Fit, Reservation};
pub use budget::{known_card_bytes, resolve_budget, Budget, CardSource, KNOWN_CARDS_MIB};
pub use infeasible::PlanError;
pub use memory::{Basis, PeakCurve};
pub use partition::split_users;
pub use plan::{plan_pool, reserved_total};
pub use profile::{
    profile_model, resolve_precision, MeasuredModel, MeasuredProfiles, ModelProfile,
};
pub use scaling::{
    decide_replicas, PodSample, ScaleDecision, ScaleDirection, ScalingInput, ScalingThresholds,
    Stabilization,
};
pub use search::{GRAIN_BYTES, MAX_UNITS, NON_RESIDENT_FACTOR};
pub use throughput::SpeedCurve;
pub use validate::{validate_pool_name, validate_spec};
