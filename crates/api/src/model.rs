//! One model of a pool: where its weights come from, what input it takes, how it may run.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Numeric precision of a model's weights and activations on the GPU.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Let the sidecar measure and pick the fastest precision that the model supports.
    Auto,
    /// Half precision (IEEE fp16) weights.
    Fp16,
    /// bfloat16 weights.
    Bf16,
    /// Full precision.
    Fp32,
}

impl Precision {
    /// Bytes per weight element; `Auto` is planned as the widest candidate (fp32) until measured.
    pub fn bytes_per_element(self) -> u64 {
        match self {
            Precision::Fp16 | Precision::Bf16 => 2,
            Precision::Fp32 | Precision::Auto => 4,
        }
    }

    /// The lowercase name used in documents and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Auto => "auto",
            Precision::Fp16 => "fp16",
            Precision::Bf16 => "bf16",
            Precision::Fp32 => "fp32",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a model file is packaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ModelFormat {
    /// A TorchScript archive (`torch.jit.save`), run eagerly by libtorch.
    #[default]
    Torchscript,
    /// An AOTInductor package (`.pt2`), compiled for one GPU architecture.
    Aotinductor,
}

/// Where a model's file is and how it is packaged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelSource {
    /// Path of the model file inside the pod (for example on a mounted volume), or a `file://` URI.
    #[schemars(length(min = 1, max = 4096))]
    pub uri: String,
    /// Packaging of the file.
    #[serde(default)]
    pub format: ModelFormat,
}

/// The tensor a model takes: size and per-channel normalisation of RGB input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InputSpec {
    /// Width in pixels the image is resized to.
    #[serde(default = "default_side")]
    #[schemars(range(min = 8, max = 8192))]
    pub width: u32,
    /// Height in pixels the image is resized to.
    #[serde(default = "default_side")]
    #[schemars(range(min = 8, max = 8192))]
    pub height: u32,
    /// Per-channel mean subtracted after scaling to [0, 1] (R, G, B).
    #[serde(default = "default_mean")]
    #[schemars(length(min = 3, max = 3))]
    pub mean: Vec<f64>,
    /// Per-channel standard deviation divided by after the mean (R, G, B); each must be > 0.
    #[serde(default = "default_std")]
    #[schemars(length(min = 3, max = 3))]
    pub std: Vec<f64>,
}

fn default_side() -> u32 {
    1024
}
fn default_mean() -> Vec<f64> {
    vec![0.485, 0.456, 0.406]
}
fn default_std() -> Vec<f64> {
    vec![0.229, 0.224, 0.225]
}

impl Default for InputSpec {
    fn default() -> Self {
        Self {
            width: default_side(),
            height: default_side(),
            mean: default_mean(),
            std: default_std(),
        }
    }
}

impl InputSpec {
    /// Bytes of one fp32 input image (3 channels).
    pub fn input_bytes(&self) -> u64 {
        3 * u64::from(self.width) * u64::from(self.height) * 4
    }
}

/// Memory facts about a model that the planner uses before the pods have measured it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProfileHint {
    /// Number of parameters (weights bytes = parameters × bytes per element).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub parameters: Option<u64>,
    /// Peak activation memory one image adds at fp16, as a quantity (e.g. "1.2Gi").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"))]
    pub activation_per_image: Option<String>,
}

/// One model served by the pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelSpec {
    /// Name clients use to pick the model (`model` field of the segmentation API, OIP model name).
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([a-z0-9_-]*[a-z0-9])?$")
    )]
    pub name: String,
    /// The model file.
    pub source: ModelSource,
    /// Input geometry and normalisation.
    #[serde(default)]
    pub input: InputSpec,
    /// Precision to run at; `auto` lets the sidecar measure and choose.
    #[serde(default = "default_precision")]
    pub precision: Precision,
    /// Largest batch the dynamic batcher may form for this model.
    #[serde(default = "default_max_batch")]
    #[schemars(range(min = 1, max = 256))]
    pub max_batch: u32,
    /// Longest a batch waits to fill once a slot is free to run it, in milliseconds.
    #[serde(default = "default_max_queue_delay_ms")]
    #[schemars(range(min = 0, max = 10000))]
    pub max_queue_delay_ms: u32,
    /// Relative share of the pool's traffic this model receives (weights are normalised).
    #[serde(default = "default_share")]
    #[schemars(range(min = 0.0, max = 1000.0))]
    pub traffic_share: f64,
    /// Keep the model loaded even when the memory budget needs room.
    #[serde(default)]
    pub pinned: bool,
    /// Memory facts for planning before the sidecar has measured the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<ProfileHint>,
}

fn default_precision() -> Precision {
    Precision::Auto
}
fn default_max_batch() -> u32 {
    8
}
fn default_max_queue_delay_ms() -> u32 {
    5
}
fn default_share() -> f64 {
    1.0
}
