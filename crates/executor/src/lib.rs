//! The GPU engine of gpupool: runs the pool's segmentation models on one CUDA device (or the CPU,
//! for tests) through tch/libtorch.
//!
//! - Models: TorchScript archives (tch `CModule`) and AOTInductor `.pt2` packages (through a small
//!   C++ shim), each at a precision (fp16, bf16, fp32, or `auto`: measured at start-up).
//! - Execution: one OS thread per execution slot, owning its CUDA stream; async callers reach it
//!   through a bounded per-model queue and get answers over oneshot channels; a dynamic batcher
//!   closes a batch on size, memory or delay; pinned host buffers and non-blocking copies.
//! - Images: [`Engine::segment`] takes decoded pixels and returns the mask at the image's size;
//!   resizing, normalising, sigmoid and threshold run on the device next to the model.
//! - Memory: a ledger admits weights and each batch's measured peak against the budget, so the
//!   budget is never crossed by construction; the libtorch allocator is capped at the budget too;
//!   models load on demand and the least recently used unpinned ones are unloaded for room.
//! - Resilience: CUDA out-of-memory splits the batch and lowers the batch cap; a circuit breaker
//!   refuses work while device memory (NVML) is above the reject threshold; a model whose file is
//!   missing or broken is Failed while the others serve.
//! - Telemetry: [`gpupool_api::telemetry::TelemetryReport`], from NVML, the allocator and counters.
//!
//! ```no_run
//! # async fn demo(config: gpupool_api::sidecar::SidecarConfig) -> Result<(), Box<dyn std::error::Error>> {
//! use gpupool_executor::{Engine, EngineOptions};
//! let engine = Engine::start(config, EngineOptions::default())?;
//! engine.started().await;
//! let logits = engine.infer("unet_spherohq", vec![0.0; 3 * 1024 * 1024]).await?;
//! assert_eq!(logits.len(), 1024 * 1024);
//! engine.shutdown().await;
//! # Ok(()) }
//! ```
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod admission;
mod batcher;
mod buckets;
mod calibration;
mod circuit;
mod config;
pub mod cuda;
mod engine;
mod error;
mod gate;
mod image;
mod loader;
mod model;
mod nvml;
mod oom;
mod precision;
mod residency;
mod slot;
mod staging;
mod startup;
mod state;
mod stats;
mod telemetry;

pub use config::{CalibrationOptions, DeviceChoice, EngineOptions};
pub use cuda::{AllocatorStats, AotiPackage, ComputeDevice, ShimError};
pub use engine::{Engine, Inference};
pub use error::{EngineError, InferError};
pub use image::{Probabilities, RawImage, RawImageError, Samples, Segmentation};
pub use nvml::{DeviceProbe, ManualProbe, NvmlProbe};
