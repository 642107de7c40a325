//! Shared fixtures: the three reference models and their H200 measurements from models.md.

#![allow(dead_code)]

use gpupool_api::model::ProfileHint;
use gpupool_api::telemetry::ProfilePoint;
use gpupool_api::{GpuSpec, InferencePoolSpec, ModelSource, ModelSpec, Precision, Streams};
use gpupool_planner::{MeasuredModel, MeasuredProfiles};

pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

/// (name, parameters).
pub const MODELS: [(&str, u64); 3] = [
    ("hrnet", 65_846_401),
    ("cbam-resunet", 52_072_673),
    ("unet", 31_042_369),
];

/// (precision, batch, [images per second; HRNet, CBAM-ResUNet, UNet], [peak MiB; same order]).
pub const H200: [(Precision, u32, [f64; 3], [u64; 3]); 5] = [
    (Precision::Fp16, 1, [31.2, 61.4, 109.3], [804, 6450, 5697]),
    (Precision::Fp16, 8, [104.6, 65.2, 124.2], [2506, 9648, 8576]),
    (
        Precision::Fp16,
        16,
        [112.2, 65.2, 122.9],
        [9399, 21248, 17152],
    ),
    (Precision::Fp32, 1, [25.0, 38.5, 74.8], [627, 2412, 2144]),
    (
        Precision::Fp32,
        8,
        [81.1, 48.5, 85.8],
        [12695, 74768, 17152],
    ),
];

pub fn model(name: &str, parameters: u64, precision: Precision, max_batch: u32) -> ModelSpec {
    ModelSpec {
        name: name.into(),
        source: ModelSource {
            uri: format!("/models/{name}.pt"),
            format: Default::default(),
        },
        input: Default::default(),
        precision,
        max_batch,
        max_queue_delay_ms: 5,
        traffic_share: 1.0,
        pinned: false,
        profile: Some(ProfileHint {
            parameters: Some(parameters),
            activation_per_image: None,
        }),
    }
}

/// The three reference models at one precision.
pub fn reference_models(precision: Precision, max_batch: u32) -> Vec<ModelSpec> {
    MODELS
        .iter()
        .map(|(name, params)| model(name, *params, precision, max_batch))
        .collect()
}

pub fn pool(models: Vec<ModelSpec>, budget: &str, headroom: &str) -> InferencePoolSpec {
    InferencePoolSpec {
        models,
        gpu: GpuSpec {
            memory_budget: budget.into(),
            reserved_headroom: headroom.into(),
            product: Some("NVIDIA-H200".into()),
            streams: Streams::Auto,
            ..GpuSpec::default()
        },
        concurrency: Default::default(),
        replicas: 1,
        scaling: Default::default(),
        pod: Default::default(),
    }
}

/// The H200 measurements of model `index` (0 HRNet, 1 CBAM-ResUNet, 2 UNet) at the precisions
/// given, with the weights each precision loads.
pub fn measured_model(index: usize, precisions: &[Precision]) -> MeasuredModel {
    let params = MODELS[index].1;
    let points = H200
        .iter()
        .filter(|(p, ..)| precisions.contains(p))
        .map(|(precision, batch, ips, peaks)| ProfilePoint {
            precision: *precision,
            batch_size: *batch,
            latency_ms: f64::from(*batch) * 1000.0 / ips[index],
            peak_bytes: peaks[index] * MIB,
        })
        .collect();
    precisions.iter().fold(MeasuredModel::new(points), |m, p| {
        m.with_weights(*p, params * p.bytes_per_element())
    })
}

pub fn measured(precisions: &[Precision]) -> MeasuredProfiles {
    MODELS
        .iter()
        .enumerate()
        .fold(MeasuredProfiles::default(), |all, (i, (name, _))| {
            all.with_model(*name, measured_model(i, precisions))
        })
}
