//! Fixed vectors: plans for the three reference models from their H200 measurements (models.md),
//! estimated plans before any measurement, and every error `plan_pool` can return.

mod common;

use common::*;
use gpupool_api::telemetry::ProfilePoint;
use gpupool_api::{PoolPlan, Precision, Streams};
use gpupool_planner::{plan_pool, reserved_total, MeasuredModel, MeasuredProfiles, PlanError};

fn check_accounting(plan: &PoolPlan) {
    assert!(plan.planned_bytes <= plan.budget_bytes, "{plan:#?}");
    assert_eq!(plan.planned_bytes, reserved_total(&plan.models));
    assert_eq!(
        plan.streams,
        plan.models.iter().map(|m| m.slots).sum::<u32>()
    );
    for m in &plan.models {
        assert_eq!(
            m.reserved_bytes,
            m.weights_bytes + u64::from(m.slots) * m.batch_peak_bytes
        );
        assert_ne!(m.precision, Precision::Auto);
    }
}

fn summary(plan: &PoolPlan) -> Vec<(String, Precision, u32, u32, bool)> {
    plan.models
        .iter()
        .map(|m| {
            (
                m.name.clone(),
                m.precision,
                m.batch_size,
                m.slots,
                m.resident,
            )
        })
        .collect()
}

#[test]
fn fp16_measured_in_22_gib_keeps_all_resident_without_batch_16_everywhere() {
    let spec = pool(reference_models(Precision::Fp16, 16), "24Gi", "2Gi");
    let plan = plan_pool(&spec, &measured(&[Precision::Fp16])).expect("fits");
    println!("{:#?}", summary(&plan));
    assert_eq!(plan.budget_bytes, 22 * GIB);
    assert_eq!(plan.budget_bytes, 23_622_320_128);
    assert_eq!(plan.headroom_bytes, 2 * GIB);
    assert_eq!(plan.card_bytes, 143_771 * MIB);
    check_accounting(&plan);
    assert!(plan
        .models
        .iter()
        .all(|m| m.resident && m.precision == Precision::Fp16));
    assert!(plan.models.iter().any(|m| m.batch_size < 16));
    // Batch 16 everywhere would need 9399 + 21248 + 17152 MiB of peaks alone.
    assert!((9399 + 21248 + 17152) * MIB > plan.budget_bytes);
    // Weights are parameters × 2 bytes; batch peaks are the measured ones.
    let weights: Vec<u64> = plan.models.iter().map(|m| m.weights_bytes).collect();
    assert_eq!(weights, vec![131_692_802, 104_145_346, 62_084_738]);
    for (m, peak16) in plan.models.iter().zip([9399, 21248, 17152]) {
        assert!(m.batch_size <= 16);
        if m.batch_size == 16 {
            assert_eq!(m.batch_peak_bytes, peak16 * MIB);
        }
    }
    assert_eq!(plan.users, 8);
    assert_eq!(plan.per_user_bytes, 22 * GIB / 8);
    assert!(plan.estimated_images_per_second() > 0.0);
}

#[test]
fn auto_with_only_fp16_measured_plans_fp16() {
    let spec = pool(reference_models(Precision::Auto, 16), "24Gi", "2Gi");
    let auto = plan_pool(&spec, &measured(&[Precision::Fp16])).expect("fits");
    let fixed = plan_pool(
        &pool(reference_models(Precision::Fp16, 16), "24Gi", "2Gi"),
        &measured(&[Precision::Fp16]),
    )
    .expect("fits");
    assert_eq!(auto, fixed);
}

#[test]
fn fp32_measured_in_22_gib_shrinks_cbam_batch() {
    let spec = pool(reference_models(Precision::Fp32, 8), "24Gi", "2Gi");
    let plan = plan_pool(&spec, &measured(&[Precision::Fp32])).expect("fits");
    println!("{:#?}", summary(&plan));
    check_accounting(&plan);
    assert!(plan
        .models
        .iter()
        .all(|m| m.resident && m.precision == Precision::Fp32));
    let cbam = plan.model("cbam-resunet").expect("planned");
    assert!(
        74_768 * MIB > plan.budget_bytes,
        "batch 8 alone is over the budget"
    );
    assert!(cbam.batch_size < 8);
    assert_eq!(cbam.weights_bytes, 52_072_673 * 4);
}

#[test]
fn fp32_cbam_alone_in_8_gib_plans_at_batch_1() {
    let spec = pool(
        vec![model("cbam-resunet", 52_072_673, Precision::Fp32, 8)],
        "10Gi",
        "2Gi",
    );
    let measured = MeasuredProfiles::default()
        .with_model("cbam-resunet", measured_model(1, &[Precision::Fp32]));
    let plan = plan_pool(&spec, &measured).expect("fits");
    println!("{:#?}", summary(&plan));
    assert_eq!(plan.budget_bytes, 8 * GIB);
    check_accounting(&plan);
    let cbam = &plan.models[0];
    assert_eq!(cbam.batch_size, 1, "batch 2 interpolates to ~12.4 GiB");
    assert_eq!(cbam.batch_peak_bytes, 2412 * MIB);
    // 8 users allow up to 4 slots; 4 × 2412 MiB + weights is over 8 GiB, 3 fit.
    assert_eq!(cbam.slots, 3);
    assert!(cbam.resident);
}

#[test]
fn fp32_cbam_alone_in_1_gib_is_infeasible_with_the_exact_shortfall() {
    let spec = pool(
        vec![model("cbam-resunet", 52_072_673, Precision::Fp32, 8)],
        "3Gi",
        "2Gi",
    );
    let measured = MeasuredProfiles::default()
        .with_model("cbam-resunet", measured_model(1, &[Precision::Fp32]));
    let needed = 52_072_673 * 4 + 2412 * MIB;
    assert_eq!(needed, 2_737_456_004);
    match plan_pool(&spec, &measured) {
        Err(err @ PlanError::Infeasible { .. }) => {
            let text = err.to_string();
            let PlanError::Infeasible {
                needed_bytes,
                budget_bytes,
                shortfall_bytes,
                detail,
            } = err
            else {
                unreachable!()
            };
            assert_eq!(needed_bytes, needed);
            assert_eq!(budget_bytes, GIB);
            assert_eq!(shortfall_bytes, needed - GIB);
            assert_eq!(shortfall_bytes, 1_663_714_180);
            assert!(text.contains("2737456004 bytes (2.55Gi)"), "{text}");
            assert!(
                text.contains("short by 1663714180 bytes (1.55Gi)"),
                "{text}"
            );
            assert!(
                detail.starts_with("cbam-resunet: fp32 weights 198.64Mi (measured)"),
                "{detail}"
            );
            assert!(
                detail.contains("peak 2.36Gi (measured) = 2.55Gi (resident)"),
                "{detail}"
            );
        }
        other => panic!("expected Infeasible, got {other:?}"),
    }
}

#[test]
fn unmeasured_models_plan_on_defaults() {
    let mut spec = pool(reference_models(Precision::Auto, 8), "90%", "2Gi");
    spec.models[0].traffic_share = 2.0;
    let plan = plan_pool(&spec, &MeasuredProfiles::default()).expect("fits");
    println!("{:#?}", summary(&plan));
    check_accounting(&plan);
    assert_eq!(plan.budget_bytes, (143_771 * MIB * 9 / 10) - 2 * GIB);
    assert!(plan
        .models
        .iter()
        .all(|m| m.resident && m.precision == Precision::Fp16));
    // Default peaks: 5376 MiB fixed + 1536 MiB per image.
    for m in &plan.models {
        assert_eq!(
            m.batch_peak_bytes,
            (5376 + 1536 * u64::from(m.batch_size)) * MIB
        );
    }
    let hrnet = plan.model("hrnet").expect("planned");
    assert!(hrnet.estimated_images_per_second > plan.models[1].estimated_images_per_second);
}

#[test]
fn small_card_loads_models_on_demand_or_names_the_shortfall() {
    // A T4 at 90% less 2 GiB is 11776 MiB; unmeasured fp16 models need 6912 MiB + weights each,
    // so only one fits at a time: all three load on demand.
    let mut spec = pool(reference_models(Precision::Fp16, 8), "90%", "2Gi");
    spec.gpu.product = Some("Tesla-T4".into());
    let plan = plan_pool(&spec, &MeasuredProfiles::default()).expect("fits with loading on demand");
    println!("{:#?}", summary(&plan));
    check_accounting(&plan);
    assert_eq!(plan.budget_bytes, 11_776 * MIB);
    assert!(plan
        .models
        .iter()
        .all(|m| !m.resident && m.batch_size == 1 && m.slots == 1));
    let hrnet_reservation = 65_846_401 * 2 + 6912 * MIB;
    assert_eq!(
        plan.planned_bytes, hrnet_reservation,
        "the largest model's area"
    );

    // Pinning UNet keeps it resident beside the area: no longer fits.
    spec.models[2].pinned = true;
    let unet_reservation = 31_042_369 * 2 + 6912 * MIB;
    match plan_pool(&spec, &MeasuredProfiles::default()) {
        Err(PlanError::Infeasible {
            needed_bytes,
            shortfall_bytes,
            detail,
            ..
        }) => {
            assert_eq!(needed_bytes, unet_reservation + hrnet_reservation);
            assert_eq!(shortfall_bytes, needed_bytes - 11_776 * MIB);
            assert_eq!(detail.matches("loaded on demand").count(), 2, "{detail}");
            assert!(
                detail.contains("unet: fp16 weights 59.21Mi (hinted)"),
                "{detail}"
            );
            assert!(
                detail.contains("(default) = 6.81Gi (pinned, resident)"),
                "{detail}"
            );
        }
        other => panic!("expected Infeasible, got {other:?}"),
    }
}

#[test]
fn fallback_keeps_pinned_models_resident() {
    // A 24 GiB budget: all three unmeasured at batch 1 need ~20.5 GiB + weights, fine; at 16 GiB
    // two of them must share an on-demand area, and the pinned one stays.
    let mut spec = pool(reference_models(Precision::Fp16, 8), "18Gi", "2Gi");
    spec.models[0].pinned = true;
    let plan = plan_pool(&spec, &MeasuredProfiles::default()).expect("fits");
    println!("{:#?}", summary(&plan));
    check_accounting(&plan);
    let residency: Vec<bool> = plan.models.iter().map(|m| m.resident).collect();
    assert_eq!(residency, vec![true, false, false]);
    let roomy = plan_pool(
        &pool(reference_models(Precision::Fp16, 8), "24Gi", "2Gi"),
        &MeasuredProfiles::default(),
    )
    .expect("fits");
    assert!(roomy.models.iter().all(|m| m.resident));
    assert!(roomy.estimated_images_per_second() >= plan.estimated_images_per_second());
}

#[test]
fn fixed_streams_bound_the_slots() {
    let mut spec = pool(reference_models(Precision::Fp16, 16), "80Gi", "2Gi");
    spec.concurrency.target_users = 12;
    let free = plan_pool(&spec, &measured(&[Precision::Fp16])).expect("fits");
    spec.gpu.streams = Streams::Count(3);
    let bounded = plan_pool(&spec, &measured(&[Precision::Fp16])).expect("fits");
    check_accounting(&bounded);
    assert!(bounded.streams <= 3);
    assert!(bounded.models.iter().all(|m| m.slots == 1));
    assert!(free.streams >= bounded.streams);
}

#[test]
fn auto_takes_a_precision_that_measured_faster_in_less_memory() {
    use gpupool_api::telemetry::ProfilePoint;
    use gpupool_planner::MeasuredModel;
    let spec = pool(
        vec![model("unet", 31_042_369, Precision::Auto, 8)],
        "24Gi",
        "2Gi",
    );
    let point = |precision, latency_ms, peak_mib: u64| ProfilePoint {
        precision,
        batch_size: 1,
        latency_ms,
        peak_bytes: peak_mib * MIB,
    };
    // fp16 at batch 1 can be slower than fp32 (InstanceNorm, models.md), here also larger.
    let measured = MeasuredProfiles::default().with_model(
        "unet",
        MeasuredModel::new(vec![
            point(Precision::Fp16, 9.0, 5697),
            point(Precision::Fp32, 8.0, 2144),
        ]),
    );
    let plan = plan_pool(&spec, &measured).expect("fits");
    assert_eq!(plan.models[0].precision, Precision::Fp32);
}

#[test]
fn measured_card_replaces_the_product_table() {
    let mut spec = pool(reference_models(Precision::Fp16, 8), "50%", "1Gi");
    spec.gpu.product = None;
    assert!(matches!(
        plan_pool(&spec, &MeasuredProfiles::default()),
        Err(PlanError::InvalidSpec { field, .. }) if field == "gpu.cardMemory"
    ));
    let measured = measured(&[Precision::Fp16]).with_card_bytes(80 * GIB);
    let plan = plan_pool(&spec, &measured).expect("fits");
    assert_eq!((plan.card_bytes, plan.budget_bytes), (80 * GIB, 39 * GIB));
}

fn invalid_field(change: impl FnOnce(&mut gpupool_api::InferencePoolSpec)) -> String {
    let mut spec = pool(reference_models(Precision::Fp16, 8), "24Gi", "2Gi");
    change(&mut spec);
    match plan_pool(&spec, &MeasuredProfiles::default()) {
        Err(PlanError::InvalidSpec { field, .. }) => field,
        other => panic!("expected InvalidSpec, got {other:?}"),
    }
}

#[test]
fn every_invalid_spec_names_its_field() {
    assert_eq!(
        invalid_field(|s| s.gpu.memory_budget = "22GB".into()),
        "gpu.memoryBudget"
    );
    assert_eq!(
        invalid_field(|s| s.gpu.memory_budget = "0%".into()),
        "gpu.memoryBudget"
    );
    assert_eq!(
        invalid_field(|s| s.gpu.reserved_headroom = "-1Gi".into()),
        "gpu.reservedHeadroom"
    );
    assert_eq!(
        invalid_field(|s| s.gpu.reserved_headroom = "24Gi".into()),
        "gpu.reservedHeadroom"
    );
    assert_eq!(
        invalid_field(|s| s.gpu.card_memory = Some("big".into())),
        "gpu.cardMemory"
    );
    assert_eq!(
        invalid_field(|s| {
            s.gpu.memory_budget = "90%".into();
            s.gpu.product = Some("Unknown-GPU".into());
        }),
        "gpu.cardMemory"
    );
    assert_eq!(
        invalid_field(|s| s.gpu.streams = Streams::Count(0)),
        "gpu.streams"
    );
    assert_eq!(
        invalid_field(|s| s.gpu.streams = Streams::Count(65)),
        "gpu.streams"
    );
    assert_eq!(
        invalid_field(|s| s.gpu.streams = Streams::Count(2)),
        "gpu.streams"
    );
    assert_eq!(
        invalid_field(|s| s.models[1].input.std = vec![0.2, 0.0, 0.2]),
        "models[1].input.std"
    );
    assert_eq!(
        invalid_field(|s| s.scaling.min_replicas = 9),
        "scaling.minReplicas"
    );
    assert_eq!(
        invalid_field(|s| s.models[2].name = "hrnet".into()),
        "models[2].name"
    );
    assert_eq!(invalid_field(|s| s.models.clear()), "models");
    assert_eq!(
        invalid_field(|s| s.models[0].max_batch = 0),
        "models[0].maxBatch"
    );
    assert_eq!(
        invalid_field(|s| s.concurrency.target_users = 0),
        "concurrency.targetUsers"
    );
}

#[test]
fn the_largest_spec_the_crd_allows_plans() {
    // 16 models, batch up to 256, 4096 users, a whole H200, half of them pinned: the search's
    // worst case stays small (units × candidates × models), and so does the fallback's.
    let models = (0..16)
        .map(|i| {
            let mut m = model(&format!("m{i}"), MODELS[i % 3].1, Precision::Auto, 256);
            m.traffic_share = 1.0 + i as f64;
            m.pinned = i % 2 == 0;
            m
        })
        .collect();
    let mut spec = pool(models, "100%", "0");
    spec.concurrency.target_users = 4096;
    let started = std::time::Instant::now();
    let plan = plan_pool(&spec, &MeasuredProfiles::default()).expect("fits");
    check_accounting(&plan);
    assert_eq!(plan.users, 4096);
    assert!(plan.models.iter().all(|m| m.resident));
    // Small budget: the fallback searches 2^8 residency sets.
    spec.gpu.memory_budget = "70Gi".into();
    let tight = plan_pool(&spec, &MeasuredProfiles::default()).expect("fits on demand");
    check_accounting(&tight);
    assert!(tight.models.iter().any(|m| !m.resident));
    println!("two plans of 16 models in {:?}", started.elapsed());
}

/// One calibrated point: batch size, median milliseconds, peak bytes.
type Point = (u32, f64, u64);

/// The sixth session's calibration of the packages on the H200 (fp16):
/// docs/results/h200-2026-11-29b/measure/engine-budget22.json.
const PACKAGES_H200: [(&str, [Point; 4]); 3] = [
    (
        "hrnet",
        [
            (1, 11.39, 413_138_944),
            (2, 17.92, 853_540_864),
            (4, 21.96, 1_702_887_424),
            (8, 37.07, 3_399_483_392),
        ],
    ),
    (
        "cbam-resunet",
        [
            (1, 11.30, 1_249_902_592),
            (2, 20.72, 2_462_056_448),
            (4, 28.21, 4_917_821_440),
            (8, 55.28, 9_825_157_120),
        ],
    ),
    (
        "unet",
        [
            (1, 6.81, 1_421_869_056),
            (2, 12.80, 2_801_795_072),
            (4, 16.49, 5_593_104_384),
            (8, 33.23, 11_169_431_552),
        ],
    ),
];

#[test]
fn eight_users_never_get_one_slot_of_eight_that_idles_between_batches() {
    // Measured on the H200 with 8 closed-loop clients: one slot of 8 lost ~3.5 ms per batch while
    // the clients turned around; two slots of 4 (the same memory) ran 4–10 % faster.
    for (index, (name, points)) in PACKAGES_H200.iter().enumerate() {
        let spec = pool(
            vec![model(name, MODELS[index].1, Precision::Fp16, 8)],
            "24Gi",
            "2Gi",
        );
        assert_eq!(spec.concurrency.target_users, 8);
        let profile = points
            .iter()
            .map(|(batch, ms, peak)| ProfilePoint {
                precision: Precision::Fp16,
                batch_size: *batch,
                latency_ms: *ms,
                peak_bytes: *peak,
            })
            .collect();
        let measured = MeasuredProfiles::default().with_model(
            *name,
            MeasuredModel::new(profile).with_weights(Precision::Fp16, MODELS[index].1 * 2),
        );
        let plan = plan_pool(&spec, &measured).expect("fits");
        check_accounting(&plan);
        let m = &plan.models[0];
        println!("{name}: {:?}", summary(&plan));
        assert!(m.slots >= 2, "{name}: {:#?}", summary(&plan));
        assert!(
            u64::from(m.batch_size) * u64::from(m.slots) <= 8,
            "no slot waits for users it cannot have"
        );
        // HRNet: two slots of 4, as measured. CBAM-ResUNet and UNet get four slots of one: the
        // slot model's estimated gain for four concurrent batches of one (1.875×, not measured on
        // these models) outweighs their batch-4 profiles, with or without the turnaround.
        if *name == "hrnet" {
            assert_eq!((m.batch_size, m.slots), (4, 2));
        }
    }
}
