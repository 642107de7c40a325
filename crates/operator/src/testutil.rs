//! Fixtures for the unit tests: a stored-looking pool and a plan for it.

use gpupool_api::telemetry::{
    AllocatorTelemetry, DeviceTelemetry, ModelState, ModelTelemetry, TelemetryReport,
    TELEMETRY_KIND,
};
use gpupool_api::{InferencePool, InferencePoolSpec, ModelPlan, PoolPlan, Precision};

/// The fixture pool's uid.
pub const POOL_UID: &str = "0b3c1a52-7d7e-4c8e-9a51-5c3f00d1e001";

/// A pool as the API server would return it: two models, defaults filled in.
pub fn pool() -> InferencePool {
    let spec: InferencePoolSpec = serde_yaml::from_str(
        r#"
replicas: 2
gpu:
  memoryBudget: 24Gi
  reservedHeadroom: 2Gi
  product: NVIDIA-H200
models:
  - name: hrnet
    source: {uri: /models/hrnet.pt}
    precision: fp16
    maxBatch: 8
  - name: unet
    source: {uri: /models/unet.pt}
    maxBatch: 4
"#,
    )
    .expect("fixture spec parses");
    let mut pool = InferencePool::new("spheroid", spec);
    pool.metadata.namespace = Some("vision".into());
    pool.metadata.uid = Some(POOL_UID.into());
    pool.metadata.generation = Some(3);
    pool
}

/// A plan for [`pool`].
pub fn plan() -> PoolPlan {
    let model = |name: &str, batch: u32, slots: u32| ModelPlan {
        name: name.into(),
        precision: Precision::Fp16,
        batch_size: batch,
        slots,
        resident: true,
        weights_bytes: 1 << 30,
        batch_peak_bytes: 2 << 30,
        reserved_bytes: (1 << 30) + u64::from(slots) * (2 << 30),
        estimated_images_per_second: 40.0,
    };
    PoolPlan {
        card_bytes: 141 << 30,
        budget_bytes: 22 << 30,
        headroom_bytes: 2 << 30,
        planned_bytes: 12 << 30,
        users: 8,
        per_user_bytes: (22 << 30) / 8,
        streams: 4,
        models: vec![model("hrnet", 8, 2), model("unet", 4, 2)],
    }
}

/// A telemetry report: one model, `used` of 100 device bytes, `queue` waiting, `rejected` refused.
pub fn report(used: u64, queue: u32, rejected: u64) -> TelemetryReport {
    TelemetryReport {
        api_version: "gpupool.io/v1alpha1".into(),
        kind: TELEMETRY_KIND.into(),
        config_generation: 1,
        ready: true,
        circuit_open: false,
        device: Some(DeviceTelemetry {
            name: "NVIDIA H200".into(),
            total_bytes: 100,
            used_bytes: used,
            free_bytes: 100 - used,
            utilization_percent: 50,
            process_used_bytes: None,
        }),
        // Everything the allocator holds is in live tensors: no cache to count as free.
        allocator: AllocatorTelemetry {
            allocated_bytes: used,
            reserved_bytes: used,
            ..AllocatorTelemetry::default()
        },
        models: vec![ModelTelemetry {
            name: "unet".into(),
            state: ModelState::Ready,
            ready: true,
            reason: None,
            precision: Precision::Fp16,
            batch_cap: 8,
            slots: 2,
            weights_bytes: 10,
            queue_depth: queue,
            in_flight: 0,
            images_total: 0,
            batches_total: 0,
            rejected_total: rejected,
            oom_events_total: 0,
            failed_total: 0,
            latency_p50_ms: 10.0,
            latency_p99_ms: 20.0,
            images_per_second: 30.0,
            profile: vec![],
        }],
    }
}
