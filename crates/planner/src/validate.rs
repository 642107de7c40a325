//! Checks on the spec that the CRD's schema cannot express (or that a client may have bypassed),
//! made before planning so a bad spec is reported as such, with the field to fix, instead of
//! surfacing as a strange plan.
//!
//! The budget strings are checked where they are resolved (budget.rs).

use crate::infeasible::PlanError;
use gpupool_api::{parse_quantity_bytes, InferencePoolSpec, ModelSpec, Streams};
use std::collections::BTreeSet;

/// Most models one pool may serve (the CRD's limit; also bounds the fallback search).
pub const MAX_MODELS: usize = 16;
/// Largest batch size a model may ask for (the CRD's limit).
pub const MAX_BATCH: u32 = 256;
/// Largest fixed number of CUDA streams (the CRD's limit).
pub const MAX_STREAMS: u32 = 64;
/// Most concurrent users a pod may be planned for (the CRD's limit).
pub const MAX_USERS: u32 = 4096;

/// Checks that a pool's name can also name its Service and label its pods: Kubernetes accepts a
/// custom resource named `seg.v2` or `3d-cells`, but a Service name must be a DNS-1035 label
/// (lowercase letters, digits and '-', starting with a letter, ending with neither '-') and a
/// label value at most 63 characters. Checked before anything is applied, so such a pool gets a
/// condition saying why instead of half its children.
pub fn validate_pool_name(name: &str) -> Result<(), PlanError> {
    let bytes = name.as_bytes();
    let allowed = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
    let ok = !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_lowercase()
        && bytes.iter().all(allowed)
        && bytes.last() != Some(&b'-');
    if ok {
        Ok(())
    } else {
        Err(PlanError::invalid(
            "metadata.name",
            format!(
                "{name:?} cannot name the pool's Service or label its pods: use at most 63 \
                 lowercase letters, digits and '-', starting with a letter and not ending with '-'"
            ),
        ))
    }
}

/// Checks every field the planner relies on, so planning can assume a sane spec.
pub fn validate_spec(spec: &InferencePoolSpec) -> Result<(), PlanError> {
    let count = spec.models.len();
    if count == 0 || count > MAX_MODELS {
        return Err(PlanError::invalid(
            "models",
            format!("a pool serves 1 to {MAX_MODELS} models, not {count}"),
        ));
    }
    let mut names = BTreeSet::new();
    for (i, model) in spec.models.iter().enumerate() {
        if !names.insert(model.name.as_str()) {
            return Err(PlanError::invalid(
                format!("models[{i}].name"),
                format!("duplicate model name {:?}", model.name),
            ));
        }
        validate_model(i, model)?;
    }
    if let Streams::Count(n) = spec.gpu.streams {
        if !(1..=MAX_STREAMS).contains(&n) {
            return Err(PlanError::invalid(
                "gpu.streams",
                format!("must be \"auto\" or a number from 1 to {MAX_STREAMS}, not {n}"),
            ));
        }
        if (n as usize) < count {
            return Err(PlanError::invalid(
                "gpu.streams",
                format!("{n} streams cannot give each of the {count} models a slot"),
            ));
        }
    }
    let users = spec.concurrency.target_users;
    if !(1..=MAX_USERS).contains(&users) {
        return Err(PlanError::invalid(
            "concurrency.targetUsers",
            format!("must be from 1 to {MAX_USERS}, not {users}"),
        ));
    }
    if spec.replicas < 0 {
        return Err(PlanError::invalid("replicas", "must not be negative"));
    }
    validate_scaling(spec)
}

fn validate_model(i: usize, model: &ModelSpec) -> Result<(), PlanError> {
    let field = |name: &str| format!("models[{i}].{name}");
    if model.name.is_empty() || model.name.len() > 63 {
        return Err(PlanError::invalid(
            field("name"),
            "must be 1 to 63 characters",
        ));
    }
    if !(1..=MAX_BATCH).contains(&model.max_batch) {
        return Err(PlanError::invalid(
            field("maxBatch"),
            format!("must be from 1 to {MAX_BATCH}, not {}", model.max_batch),
        ));
    }
    if !(model.traffic_share.is_finite() && model.traffic_share >= 0.0) {
        return Err(PlanError::invalid(
            field("trafficShare"),
            format!(
                "must be a number of at least 0, not {}",
                model.traffic_share
            ),
        ));
    }
    let input = &model.input;
    if !(8..=8192).contains(&input.width) || !(8..=8192).contains(&input.height) {
        return Err(PlanError::invalid(
            field("input"),
            format!(
                "width and height must be 8 to 8192, not {}×{}",
                input.width, input.height
            ),
        ));
    }
    if input.mean.len() != 3 || input.mean.iter().any(|m| !m.is_finite()) {
        return Err(PlanError::invalid(
            field("input.mean"),
            "needs 3 finite values (R, G, B)",
        ));
    }
    if input.std.len() != 3 || input.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
        return Err(PlanError::invalid(
            field("input.std"),
            "needs 3 values (R, G, B), each greater than 0",
        ));
    }
    if let Some(hint) = &model.profile {
        if hint.parameters == Some(0) {
            return Err(PlanError::invalid(
                field("profile.parameters"),
                "must be at least 1",
            ));
        }
        if let Some(text) = &hint.activation_per_image {
            parse_quantity_bytes(text).map_err(|e| {
                PlanError::invalid(field("profile.activationPerImage"), e.to_string())
            })?;
        }
    }
    Ok(())
}

fn validate_scaling(spec: &InferencePoolSpec) -> Result<(), PlanError> {
    let s = &spec.scaling;
    if s.min_replicas < 0 {
        return Err(PlanError::invalid(
            "scaling.minReplicas",
            "must not be negative",
        ));
    }
    if s.max_replicas < 1 {
        return Err(PlanError::invalid(
            "scaling.maxReplicas",
            "must be at least 1",
        ));
    }
    if s.min_replicas > s.max_replicas {
        return Err(PlanError::invalid(
            "scaling.minReplicas",
            format!(
                "minReplicas {} is more than maxReplicas {}",
                s.min_replicas, s.max_replicas
            ),
        ));
    }
    let fraction = |v: f64| v.is_finite() && v > 0.0 && v <= 1.0;
    if !fraction(s.memory_pressure_watermark) {
        return Err(PlanError::invalid(
            "scaling.memoryPressureWatermark",
            "must be a fraction in (0, 1]",
        ));
    }
    if !fraction(s.reject_above) {
        return Err(PlanError::invalid(
            "scaling.rejectAbove",
            "must be a fraction in (0, 1]",
        ));
    }
    if s.memory_pressure_watermark > s.reject_above {
        return Err(PlanError::invalid(
            "scaling.memoryPressureWatermark",
            format!(
                "{} is above rejectAbove {}: pods would refuse work before the pool scales out",
                s.memory_pressure_watermark, s.reject_above
            ),
        ));
    }
    if s.target_queue_per_replica == 0 {
        return Err(PlanError::invalid(
            "scaling.targetQueuePerReplica",
            "must be at least 1",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_names_must_fit_a_service_and_a_label() {
        for good in ["spheroid", "seg-v2", "a", &"a".repeat(63)] {
            assert_eq!(validate_pool_name(good), Ok(()), "{good}");
        }
        for bad in ["seg.v2", "3d-cells", "seg-", "Seg", "", &"a".repeat(64)] {
            let err = validate_pool_name(bad).expect_err(bad);
            assert!(
                matches!(&err, PlanError::InvalidSpec { field, .. } if field == "metadata.name"),
                "{bad}: {err:?}"
            );
        }
    }
    use gpupool_api::model::ProfileHint;
    use gpupool_api::{ModelSource, Precision};

    fn model(name: &str) -> ModelSpec {
        ModelSpec {
            name: name.into(),
            source: ModelSource {
                uri: format!("/models/{name}.pt"),
                format: Default::default(),
            },
            input: Default::default(),
            precision: Precision::Auto,
            max_batch: 8,
            max_queue_delay_ms: 5,
            traffic_share: 1.0,
            pinned: false,
            profile: None,
        }
    }

    fn spec() -> InferencePoolSpec {
        InferencePoolSpec {
            models: vec![model("hrnet"), model("unet")],
            gpu: Default::default(),
            concurrency: Default::default(),
            replicas: 1,
            scaling: Default::default(),
            pod: Default::default(),
        }
    }

    fn field_after(change: impl FnOnce(&mut InferencePoolSpec)) -> String {
        let mut s = spec();
        change(&mut s);
        match validate_spec(&s) {
            Err(PlanError::InvalidSpec { field, .. }) => field,
            other => panic!("expected InvalidSpec, got {other:?}"),
        }
    }

    #[test]
    fn a_sane_spec_passes() {
        assert_eq!(validate_spec(&spec()), Ok(()));
    }

    #[test]
    fn model_list_errors() {
        assert_eq!(field_after(|s| s.models.clear()), "models");
        assert_eq!(
            field_after(|s| s.models = (0..17).map(|i| model(&format!("m{i}"))).collect()),
            "models"
        );
        assert_eq!(
            field_after(|s| s.models[1].name = "hrnet".into()),
            "models[1].name"
        );
        assert_eq!(
            field_after(|s| s.models[0].name = String::new()),
            "models[0].name"
        );
    }

    #[test]
    fn model_field_errors() {
        assert_eq!(
            field_after(|s| s.models[0].max_batch = 0),
            "models[0].maxBatch"
        );
        assert_eq!(
            field_after(|s| s.models[0].max_batch = 257),
            "models[0].maxBatch"
        );
        assert_eq!(
            field_after(|s| s.models[1].traffic_share = -1.0),
            "models[1].trafficShare"
        );
        assert_eq!(
            field_after(|s| s.models[1].traffic_share = f64::NAN),
            "models[1].trafficShare"
        );
        assert_eq!(
            field_after(|s| s.models[0].input.width = 0),
            "models[0].input"
        );
        assert_eq!(
            field_after(|s| s.models[0].input.mean = vec![0.5]),
            "models[0].input.mean"
        );
        assert_eq!(
            field_after(|s| s.models[0].input.std[2] = 0.0),
            "models[0].input.std"
        );
        assert_eq!(
            field_after(|s| s.models[0].input.std[1] = -0.2),
            "models[0].input.std"
        );
        assert_eq!(
            field_after(|s| s.models[0].profile = Some(ProfileHint {
                parameters: Some(0),
                activation_per_image: None
            })),
            "models[0].profile.parameters"
        );
        assert_eq!(
            field_after(|s| {
                s.models[1].profile = Some(ProfileHint {
                    parameters: None,
                    activation_per_image: Some("lots".into()),
                })
            }),
            "models[1].profile.activationPerImage"
        );
    }

    #[test]
    fn streams_users_and_replicas_errors() {
        assert_eq!(
            field_after(|s| s.gpu.streams = Streams::Count(0)),
            "gpu.streams"
        );
        assert_eq!(
            field_after(|s| s.gpu.streams = Streams::Count(65)),
            "gpu.streams"
        );
        assert_eq!(
            field_after(|s| s.gpu.streams = Streams::Count(1)),
            "gpu.streams"
        );
        assert_eq!(
            field_after(|s| s.concurrency.target_users = 0),
            "concurrency.targetUsers"
        );
        assert_eq!(
            field_after(|s| s.concurrency.target_users = 4097),
            "concurrency.targetUsers"
        );
        assert_eq!(field_after(|s| s.replicas = -1), "replicas");
        let mut ok = spec();
        ok.gpu.streams = Streams::Count(2);
        assert_eq!(validate_spec(&ok), Ok(()));
    }

    #[test]
    fn scaling_errors() {
        assert_eq!(
            field_after(|s| s.scaling.min_replicas = 5),
            "scaling.minReplicas"
        );
        assert_eq!(
            field_after(|s| s.scaling.min_replicas = -1),
            "scaling.minReplicas"
        );
        assert_eq!(
            field_after(|s| s.scaling.max_replicas = 0),
            "scaling.maxReplicas"
        );
        assert_eq!(
            field_after(|s| s.scaling.memory_pressure_watermark = 0.0),
            "scaling.memoryPressureWatermark"
        );
        assert_eq!(
            field_after(|s| s.scaling.memory_pressure_watermark = 0.95),
            "scaling.memoryPressureWatermark"
        );
        assert_eq!(
            field_after(|s| s.scaling.reject_above = 1.5),
            "scaling.rejectAbove"
        );
        assert_eq!(
            field_after(|s| s.scaling.target_queue_per_replica = 0),
            "scaling.targetQueuePerReplica"
        );
    }
}
