//! The one seam between HTTP and the GPU: everything the handlers need from the engine.
//!
//! The sidecar's handlers only see this trait; `crate::engine_backend` implements it on the
//! executor. Keeping it small (models, infer, readiness, telemetry, live config) is what lets the
//! HTTP layer stay thin and the executor evolve without touching routes.

use crate::imaging::InputGeometry;
use futures::future::BoxFuture;
use gpupool_api::sidecar::SidecarConfig;
use gpupool_api::telemetry::{ModelState, TelemetryReport};
use gpupool_api::{ModelFormat, Precision};
use std::time::Duration;

pub use gpupool_executor::{RawImage, Samples, Segmentation};

/// What the HTTP layer knows about one configured model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// Name clients use.
    pub name: String,
    /// Input size and normalisation.
    pub geometry: InputGeometry,
    /// Precision it runs at (resolved once calibrated).
    pub precision: Precision,
    /// File packaging.
    pub format: ModelFormat,
    /// Largest batch the batcher forms.
    pub max_batch: u32,
    /// Loading, ready, unloaded (loads on demand) or failed.
    pub state: ModelState,
    /// Whether its requests are served now (the engine's rule: calibrated and serving, while
    /// unloaded or being loaded again on demand too).
    pub ready: bool,
    /// Why it is not ready, when it is not.
    pub reason: Option<String>,
}

impl ModelInfo {
    /// Whether a request for this model can be served now (unloaded models load on demand).
    pub fn serviceable(&self) -> bool {
        self.ready
    }
}

/// The result of one image's forward pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Inference {
    /// Logits, `height × width` of the model's input size, row-major.
    pub logits: Vec<f32>,
    /// Size of the batch the image ran in.
    pub batch_size: u32,
}

impl AsRef<[f32]> for Inference {
    fn as_ref(&self) -> &[f32] {
        &self.logits
    }
}

/// Why the backend could not answer; each maps to one HTTP status.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BackendError {
    /// No model of that name is configured.
    #[error("unknown model {0:?}")]
    UnknownModel(String),
    /// The model exists but cannot serve (failed to load, still calibrating).
    #[error("model {model:?} is not ready: {reason}")]
    ModelNotReady {
        /// The model.
        model: String,
        /// Why.
        reason: String,
    },
    /// The model's queue is full.
    #[error("model {0:?} is overloaded: its queue is full")]
    QueueFull(String),
    /// Device memory is above the reject threshold.
    #[error("the GPU is above its memory threshold; retry in {}s", retry_after.as_secs())]
    CircuitOpen {
        /// When to retry.
        retry_after: Duration,
    },
    /// The process is draining.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The input tensor does not have the model's shape.
    #[error("input has {got} values, model {model:?} takes {expected}")]
    BadInput {
        /// The model.
        model: String,
        /// Values expected.
        expected: usize,
        /// Values given.
        got: usize,
    },
    /// A request parameter is out of range.
    #[error("{0}")]
    BadRequest(String),
    /// The forward pass failed.
    #[error("inference failed: {0}")]
    Inference(String),
}

/// A live configuration change that could not be applied.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApplyError {
    /// The change touches fields that need a new process (model files, geometry, budget).
    #[error("the new config changes {0}; it takes effect when the pod restarts")]
    NeedsRestart(String),
    /// The document is inconsistent.
    #[error("the new config is invalid: {0}")]
    Invalid(String),
}

/// The engine as the HTTP layer uses it.
pub trait Backend: Send + Sync + 'static {
    /// The configured models, in config order.
    fn models(&self) -> Vec<ModelInfo>;

    /// Runs one pre-processed image (`3 × height × width`, CHW, normalised) through `model`.
    fn infer(
        &self,
        model: &str,
        input: Vec<f32>,
    ) -> BoxFuture<'static, Result<Inference, BackendError>>;

    /// Segments one decoded image with `model`: the mask (`p > threshold`) and probabilities at
    /// the image's own size.
    fn segment(
        &self,
        model: &str,
        image: RawImage,
        threshold: f32,
    ) -> BoxFuture<'static, Result<Segmentation, BackendError>>;

    /// Whether every model is loaded and calibrated.
    fn ready(&self) -> bool;

    /// Whether a GPU executes the models.
    fn gpu_enabled(&self) -> bool;

    /// The current telemetry document.
    fn telemetry(&self) -> TelemetryReport;

    /// Applies a changed config without dropping requests.
    fn apply(&self, config: &SidecarConfig) -> Result<(), ApplyError>;

    /// Stops taking work and waits for what is queued or running to finish.
    fn drain(&self) -> BoxFuture<'static, ()>;

    /// A model by name.
    fn model(&self, name: &str) -> Option<ModelInfo> {
        self.models().into_iter().find(|m| m.name == name)
    }
}
