//! The sidecar config document: what the operator writes into the pool's ConfigMap and each pod
//! reads from its mounted file. Versioned like a Kubernetes object (`apiVersion`, `kind`).
//!
//! Some fields apply live (batch sizes, slots, delays, thresholds); others need the process to
//! restart (which models, their files and input geometry, the memory budget). [`RestartKey`] is the
//! part that needs a restart: the operator hashes it into the pod template so that only those
//! changes roll the pods, and the sidecar compares it to say when a reload cannot apply.

use crate::model::{InputSpec, ModelSource, Precision};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `kind` of the sidecar config document.
pub const SIDECAR_CONFIG_KIND: &str = "SidecarConfig";
/// File name of the document inside the ConfigMap and the mounted directory.
pub const SIDECAR_CONFIG_FILE: &str = "sidecar.yaml";

/// The whole config of one sidecar process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SidecarConfig {
    /// Always `gpupool.io/v1alpha1`.
    pub api_version: String,
    /// Always `SidecarConfig`.
    pub kind: String,
    /// Name of the pool the config belongs to.
    pub pool: String,
    /// `metadata.generation` of the pool this config was made from.
    pub generation: i64,
    /// Hard cap on GPU memory for the whole process (the allocator's limit and admission budget).
    pub memory_budget_bytes: u64,
    /// Number of CUDA streams (execution slots) in the process.
    pub streams: u32,
    /// Admission and back-pressure thresholds.
    pub admission: AdmissionConfig,
    /// The models, in spec order.
    pub models: Vec<SidecarModelConfig>,
}

/// Thresholds for refusing work before the GPU is overwhelmed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionConfig {
    /// Device memory in use (fraction of the card; this process's allocator cache counts as free)
    /// above which new work is refused with 503.
    pub reject_above: f64,
    /// Device memory use above which the pod reports memory pressure (the operator scales out).
    pub memory_pressure_watermark: f64,
    /// Requests that may wait per model before new ones are refused with 429.
    pub max_queue_per_model: u32,
}

/// One model as the sidecar runs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SidecarModelConfig {
    /// Model name.
    pub name: String,
    /// The model file.
    pub source: ModelSource,
    /// Input geometry and normalisation.
    pub input: InputSpec,
    /// Precision to run at; `auto` means measure at start-up and pick the fastest.
    pub precision: Precision,
    /// Largest batch the batcher may form.
    pub max_batch: u32,
    /// Execution slots (concurrent batches) for this model.
    pub slots: u32,
    /// Longest a batch waits to fill once a slot is free to run it, in milliseconds.
    pub max_queue_delay_ms: u32,
    /// Whether the model must stay loaded.
    pub resident: bool,
}

/// The part of a [`SidecarConfig`] that a running process cannot apply without restarting.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RestartKey<'a> {
    /// The memory budget (the allocator's cap is set once per process).
    pub memory_budget_bytes: u64,
    /// Models by name with their file and input geometry.
    pub models: Vec<(&'a str, &'a ModelSource, &'a InputSpec)>,
}

impl SidecarConfig {
    /// The fields whose change requires a new process.
    pub fn restart_key(&self) -> RestartKey<'_> {
        RestartKey {
            memory_budget_bytes: self.memory_budget_bytes,
            models: self
                .models
                .iter()
                .map(|m| (m.name.as_str(), &m.source, &m.input))
                .collect(),
        }
    }

    /// Whether moving from `self` to `next` can be applied live.
    pub fn can_apply_live(&self, next: &SidecarConfig) -> bool {
        self.restart_key() == next.restart_key()
    }

    /// Reads a config document from YAML (or JSON, a subset), checking its `apiVersion` and `kind`.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigDocumentError> {
        let config: SidecarConfig = serde_yaml::from_str(text)?;
        if config.api_version != crate::API_VERSION || config.kind != SIDECAR_CONFIG_KIND {
            return Err(ConfigDocumentError::WrongType {
                api_version: config.api_version,
                kind: config.kind,
            });
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks invariants a well-formed document must hold.
    pub fn validate(&self) -> Result<(), ConfigDocumentError> {
        let invalid = |msg: String| Err(ConfigDocumentError::Invalid(msg));
        if self.models.is_empty() {
            return invalid("models: at least one model is required".into());
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, m) in self.models.iter().enumerate() {
            if !names.insert(m.name.as_str()) {
                return invalid(format!("models[{i}].name: duplicate model {:?}", m.name));
            }
            if m.max_batch == 0 || m.slots == 0 {
                return invalid(format!(
                    "models[{i}]: maxBatch and slots must be at least 1"
                ));
            }
            if m.input.mean.len() != 3
                || m.input.std.len() != 3
                || m.input.std.iter().any(|s| *s <= 0.0)
            {
                return invalid(format!(
                    "models[{i}].input: mean and std need 3 values, std > 0"
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.admission.reject_above)
            || !(0.0..=1.0).contains(&self.admission.memory_pressure_watermark)
        {
            return invalid("admission: thresholds must be fractions in [0, 1]".into());
        }
        Ok(())
    }

    /// Writes the document as YAML.
    pub fn to_yaml(&self) -> Result<String, ConfigDocumentError> {
        Ok(serde_yaml::to_string(self)?)
    }
}

/// Why a sidecar config document could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigDocumentError {
    /// Not YAML of the expected shape.
    #[error("sidecar config is not a valid document: {0}")]
    Syntax(#[from] serde_yaml::Error),
    /// Some other kind of document.
    #[error(
        "expected apiVersion gpupool.io/v1alpha1 kind SidecarConfig, got {api_version} {kind}"
    )]
    WrongType {
        /// The document's apiVersion.
        api_version: String,
        /// The document's kind.
        kind: String,
    },
    /// Well-formed but inconsistent.
    #[error("sidecar config is invalid: {0}")]
    Invalid(String),
}
