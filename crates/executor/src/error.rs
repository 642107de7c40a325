//! Errors of the engine. [`InferError`] is what a request gets back; its variants are chosen so the
//! HTTP layer can map each to one status code ([`InferError::http_status`]). [`EngineError`] is
//! what starting or reconfiguring the engine can fail with.

use std::time::Duration;

/// Why one inference request did not produce logits.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InferError {
    /// No model of that name is configured (HTTP 404).
    #[error("unknown model {0:?}")]
    UnknownModel(String),
    /// The input does not have the model's shape (HTTP 400).
    #[error("model {model:?} takes {expected} floats (3×H×W), got {got}")]
    InvalidInput {
        /// Model name.
        model: String,
        /// Expected number of f32 values.
        expected: usize,
        /// Number given.
        got: usize,
    },
    /// A request parameter is out of range (HTTP 400).
    #[error("request for model {model:?}: {message}")]
    InvalidRequest {
        /// Model name.
        model: String,
        /// What is wrong.
        message: String,
    },
    /// The model's queue is full (HTTP 429).
    #[error("model {model:?} has {depth} requests waiting; try again later")]
    QueueFull {
        /// Model name.
        model: String,
        /// Queue depth when the request was refused.
        depth: usize,
    },
    /// Device memory use is above the reject threshold (HTTP 503 with `Retry-After`).
    #[error(
        "GPU memory use {used_fraction:.3} is above {threshold:.3}; retry after {retry_after:?}"
    )]
    CircuitOpen {
        /// How long the client should wait before retrying.
        retry_after: Duration,
        /// Device memory used fraction that opened the circuit.
        used_fraction: f64,
        /// The configured reject threshold.
        threshold: f64,
    },
    /// The model cannot serve now: it failed to load, or no memory could be found for it (HTTP 503).
    #[error("model {model:?} is not ready: {reason}")]
    ModelNotReady {
        /// Model name.
        model: String,
        /// Why.
        reason: String,
    },
    /// The forward pass failed (HTTP 500).
    #[error("inference with model {model:?} failed: {message}")]
    Inference {
        /// Model name.
        model: String,
        /// libtorch's message.
        message: String,
    },
    /// The engine is shutting down and takes no new work (HTTP 503).
    #[error("the engine is shutting down")]
    ShuttingDown,
}

impl InferError {
    /// The HTTP status code this error maps to.
    pub fn http_status(&self) -> u16 {
        match self {
            InferError::UnknownModel(_) => 404,
            InferError::InvalidInput { .. } | InferError::InvalidRequest { .. } => 400,
            InferError::QueueFull { .. } => 429,
            InferError::CircuitOpen { .. }
            | InferError::ModelNotReady { .. }
            | InferError::ShuttingDown => 503,
            InferError::Inference { .. } => 500,
        }
    }

    /// How long to tell the client to wait (`Retry-After`), for the errors that have one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            InferError::CircuitOpen { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// A short, bounded label: the `error_type` the sidecar answers this error with.
    pub fn kind(&self) -> &'static str {
        match self {
            InferError::UnknownModel(_) => "unknown_model",
            InferError::InvalidInput { .. } => "bad_input",
            InferError::InvalidRequest { .. } => "bad_request",
            InferError::QueueFull { .. } => "queue_full",
            InferError::CircuitOpen { .. } => "gpu_memory_pressure",
            InferError::ModelNotReady { .. } => "model_not_ready",
            InferError::Inference { .. } => "inference_failed",
            InferError::ShuttingDown => "shutting_down",
        }
    }
}

/// Why the engine could not start or take a new config.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The config document is inconsistent.
    #[error(transparent)]
    InvalidConfig(#[from] gpupool_api::sidecar::ConfigDocumentError),
    /// The new config changes fields that only a restart can apply.
    #[error("config generation {generation} changes {what}; the sidecar must restart to apply it")]
    RestartRequired {
        /// Generation of the refused config.
        generation: i64,
        /// Which restart-only fields differ.
        what: String,
    },
    /// The requested device is not usable.
    #[error("device {device}: {message}")]
    Device {
        /// The device asked for.
        device: String,
        /// What went wrong.
        message: String,
    },
    /// A model cannot run as the new config asks (e.g. at a precision its file does not support).
    #[error("model {model:?}: {reason}")]
    Unsupported {
        /// Model name.
        model: String,
        /// Why.
        reason: String,
    },
    /// An OS thread could not be started.
    #[error("could not start thread {name}: {source}")]
    Thread {
        /// Thread name.
        name: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The engine is shutting down.
    #[error("the engine is shutting down")]
    ShuttingDown,
}
