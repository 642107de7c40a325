//! The gpupool inference sidecar.
//!
//! It turns uploaded microscope images into model input, hands them to the executor and turns
//! the model's logits back into the polygons of the original service's JSON API. It also speaks
//! the Open Inference Protocol v2, exports Prometheus metrics and the telemetry document the
//! operator scales from, and applies config changes live.

pub mod backend;
pub mod engine_backend;
pub mod error;
pub mod http;
pub mod image_memory;
pub mod imaging;
pub mod metrics;
pub mod pipeline;
pub mod reload;
pub mod settings;
pub mod shutdown;
pub mod tensor;
