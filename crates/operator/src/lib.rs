//! The gpupool operator: reconciles `InferencePool`s into a plan, the sidecar pods that run it,
//! and a status that says how it goes; scales pools from the pods' telemetry.
//!
//! One module per concern:
//! - [`config`]: the command line, checked before anything starts;
//! - [`controller`]: the kube-runtime controller and the reconcile;
//! - [`resources`]: the children (ConfigMap, Deployment, Service, PDB), built purely from a plan;
//! - [`status`]: status and conditions rebuilt from what was observed;
//! - [`events`]: events, only for what changed;
//! - [`telemetry`]: the pods' telemetry and its summary; [`autoscale`]: replicas from it;
//! - [`leader`]: leader election on a Lease;
//! - [`compat`]: discovery and fallbacks for older API servers;
//! - [`metrics`] and [`http`]: Prometheus metrics and the health/metrics server;
//! - [`state`]: what is remembered per pool between reconciles; [`error`]: the error type.

pub mod autoscale;
pub mod compat;
pub mod config;
pub mod controller;
pub mod error;
pub mod events;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod resources;
pub mod state;
pub mod status;
pub mod telemetry;

#[cfg(test)]
mod testutil;
