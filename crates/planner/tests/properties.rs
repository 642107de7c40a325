//! Properties every plan and every scaling decision must have, over generated specs and telemetry:
//! plans fit their budget and account for it exactly, more budget never lowers the estimated
//! throughput, the same input gives the same plan, and replica decisions stay within bounds.

mod common;

use common::*;
use gpupool_api::model::ProfileHint;
use gpupool_api::{InferencePoolSpec, Precision, Streams};
use gpupool_planner::scaling::{MAX_STEP_DOWN, MAX_STEP_UP};
use gpupool_planner::{
    decide_replicas, plan_pool, reserved_total, MeasuredProfiles, PlanError, PodSample,
    ScaleDirection, ScalingInput, ScalingThresholds, Stabilization,
};
use proptest::prelude::*;

fn precision() -> impl Strategy<Value = Precision> {
    prop_oneof![
        Just(Precision::Auto),
        Just(Precision::Fp16),
        Just(Precision::Bf16),
        Just(Precision::Fp32)
    ]
}

/// One generated model: which reference model, precision, max batch, share, pinned, hints, and
/// which precisions were measured.
#[derive(Debug, Clone)]
struct GenModel {
    reference: usize,
    precision: Precision,
    max_batch: u32,
    share: f64,
    pinned: bool,
    parameters_hint: bool,
    activation_mib: Option<u32>,
    measured: Vec<Precision>,
}

fn gen_model() -> impl Strategy<Value = GenModel> {
    (
        0usize..3,
        precision(),
        1u32..=32,
        prop_oneof![Just(0.0), 0.1f64..5.0],
        any::<bool>(),
        any::<bool>(),
        proptest::option::of(50u32..4000),
        prop_oneof![
            Just(vec![]),
            Just(vec![Precision::Fp16]),
            Just(vec![Precision::Fp32]),
            Just(vec![Precision::Fp16, Precision::Fp32])
        ],
    )
        .prop_map(
            |(
                reference,
                precision,
                max_batch,
                share,
                pinned,
                parameters_hint,
                activation_mib,
                measured,
            )| {
                GenModel {
                    reference,
                    precision,
                    max_batch,
                    share,
                    pinned,
                    parameters_hint,
                    activation_mib,
                    measured,
                }
            },
        )
}

#[derive(Debug, Clone)]
struct GenPool {
    models: Vec<GenModel>,
    users: u32,
    streams: Option<u32>,
    headroom_mib: u64,
}

fn gen_pool() -> impl Strategy<Value = GenPool> {
    (
        proptest::collection::vec(gen_model(), 1..=4),
        1u32..=24,
        proptest::option::of(4u32..=16),
        prop_oneof![Just(0u64), Just(1024u64), Just(2048u64)],
    )
        .prop_map(|(models, users, streams, headroom_mib)| GenPool {
            models,
            users,
            streams,
            headroom_mib,
        })
}

fn build(pool_def: &GenPool, budget_mib: u64) -> (InferencePoolSpec, MeasuredProfiles) {
    let mut measured = MeasuredProfiles::default();
    let models = pool_def
        .models
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let (base, parameters) = MODELS[g.reference];
            let name = format!("{base}-{i}");
            let mut m = model(&name, parameters, g.precision, g.max_batch);
            m.traffic_share = g.share;
            m.pinned = g.pinned;
            m.profile = Some(ProfileHint {
                parameters: g.parameters_hint.then_some(parameters),
                activation_per_image: g.activation_mib.map(|a| format!("{a}Mi")),
            });
            if !g.measured.is_empty() {
                measured = std::mem::take(&mut measured)
                    .with_model(name.clone(), measured_model(g.reference, &g.measured));
            }
            m
        })
        .collect();
    let mut spec = pool(
        models,
        &format!("{}Mi", budget_mib + pool_def.headroom_mib),
        &format!("{}Mi", pool_def.headroom_mib),
    );
    spec.concurrency.target_users = pool_def.users;
    spec.gpu.streams = match pool_def.streams {
        Some(n) => Streams::Count(n),
        None => Streams::Auto,
    };
    (spec, measured)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn plans_never_exceed_their_budget(pool_def in gen_pool(), budget_mib in 256u64..60_000) {
        let (spec, measured) = build(&pool_def, budget_mib);
        match plan_pool(&spec, &measured) {
            Ok(plan) => {
                prop_assert_eq!(plan.budget_bytes, budget_mib * MIB);
                prop_assert!(plan.planned_bytes <= plan.budget_bytes);
                prop_assert_eq!(plan.planned_bytes, reserved_total(&plan.models));
                if plan.models.iter().all(|m| m.resident) {
                    prop_assert_eq!(
                        plan.planned_bytes,
                        plan.models.iter().map(|m| m.reserved_bytes).sum::<u64>()
                    );
                }
                prop_assert_eq!(plan.streams, plan.models.iter().map(|m| m.slots).sum::<u32>());
                if let Streams::Count(n) = spec.gpu.streams {
                    prop_assert!(plan.streams <= n);
                }
                prop_assert_eq!(plan.models.len(), spec.models.len());
                for (m, s) in plan.models.iter().zip(&spec.models) {
                    prop_assert_eq!(&m.name, &s.name);
                    prop_assert_ne!(m.precision, Precision::Auto);
                    if s.precision != Precision::Auto {
                        prop_assert_eq!(m.precision, s.precision);
                    }
                    prop_assert!(m.batch_size >= 1 && m.batch_size <= s.max_batch);
                    prop_assert!(m.slots >= 1);
                    prop_assert!(!s.pinned || m.resident);
                    prop_assert_eq!(
                        m.reserved_bytes,
                        m.weights_bytes + u64::from(m.slots) * m.batch_peak_bytes
                    );
                    prop_assert!(m.estimated_images_per_second >= 0.0);
                }
            }
            Err(PlanError::Infeasible { needed_bytes, budget_bytes, shortfall_bytes, .. }) => {
                prop_assert_eq!(budget_bytes, budget_mib * MIB);
                prop_assert!(needed_bytes > budget_bytes);
                prop_assert_eq!(shortfall_bytes, needed_bytes - budget_bytes);
            }
            Err(other) => prop_assert!(false, "unexpected {other}"),
        }
    }

    #[test]
    fn more_budget_never_lowers_throughput(
        pool_def in gen_pool(),
        small_mib in 256u64..40_000,
        extra_mib in prop_oneof![0u64..64, 0u64..40_000],
    ) {
        let (small_spec, measured) = build(&pool_def, small_mib);
        let (large_spec, _) = build(&pool_def, small_mib + extra_mib);
        let small = plan_pool(&small_spec, &measured);
        let large = plan_pool(&large_spec, &measured);
        match (&small, &large) {
            (Ok(s), Ok(l)) => prop_assert!(
                l.estimated_images_per_second() >= s.estimated_images_per_second(),
                "{} MiB: {} img/s; {} MiB: {} img/s",
                small_mib, s.estimated_images_per_second(),
                small_mib + extra_mib, l.estimated_images_per_second()
            ),
            (Ok(_), Err(e)) => prop_assert!(false, "more budget became infeasible: {e}"),
            (Err(PlanError::Infeasible { .. }), _) => {}
            (Err(e), _) => prop_assert!(false, "unexpected {e}"),
        }
    }

    #[test]
    fn throughput_never_falls_over_a_budget_sweep(pool_def in gen_pool(), step_mib in 97u64..1500) {
        let mut best_so_far: Option<f64> = None;
        for i in 0..40u64 {
            let budget_mib = 256 + i * step_mib;
            let (spec, measured) = build(&pool_def, budget_mib);
            match plan_pool(&spec, &measured) {
                Ok(plan) => {
                    let rate = plan.estimated_images_per_second();
                    if let Some(previous) = best_so_far {
                        prop_assert!(rate >= previous, "{budget_mib} MiB: {rate} < {previous}");
                    }
                    best_so_far = Some(rate);
                }
                Err(PlanError::Infeasible { .. }) => {
                    prop_assert!(best_so_far.is_none(), "{budget_mib} MiB infeasible after a plan");
                }
                Err(e) => prop_assert!(false, "unexpected {e}"),
            }
        }
    }

    #[test]
    fn the_same_input_gives_the_same_plan(pool_def in gen_pool(), budget_mib in 256u64..60_000) {
        let (spec, measured) = build(&pool_def, budget_mib);
        let first = plan_pool(&spec, &measured);
        let again = plan_pool(&spec.clone(), &measured.clone());
        prop_assert_eq!(first, again);
    }
}

fn sample() -> impl Strategy<Value = PodSample> {
    (
        0.0f64..1.0,
        0u32..200,
        prop_oneof![Just(0u64), 0u64..5],
        any::<bool>(),
    )
        .prop_map(
            |(memory_used_fraction, queue_depth, rejects_delta, circuit_open)| PodSample {
                memory_used_fraction,
                queue_depth,
                rejects_delta,
                circuit_open: circuit_open && rejects_delta > 2,
            },
        )
}

fn scaling_input() -> impl Strategy<Value = ScalingInput> {
    (
        (0i32..10, 1i32..12, -2i32..20, 0i32..20),
        proptest::collection::vec(sample(), 0..8),
        (0.3f64..0.9, 1u32..64),
        (
            proptest::option::of(0u64..2000),
            proptest::option::of(0u64..2000),
            0u64..2000,
        ),
        (0u64..600, 0u64..600),
    )
        .prop_map(
            |(
                (min, span, current, ready),
                samples,
                (watermark, queue),
                (up, down, now),
                (uw, dw),
            )| {
                ScalingInput {
                    current_replicas: current,
                    min_replicas: min,
                    max_replicas: min + span,
                    ready_replicas: ready,
                    samples,
                    thresholds: ScalingThresholds {
                        memory_pressure_watermark: watermark,
                        target_queue_per_replica: queue,
                        reject_above: (watermark + 0.05).min(1.0),
                    },
                    stabilization: Stabilization {
                        up_since_s: up,
                        down_since_s: down,
                    },
                    now_s: now,
                    up_window_s: uw,
                    down_window_s: dw,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn replicas_stay_within_bounds_and_steps(input in scaling_input()) {
        let d = decide_replicas(&input);
        prop_assert!(d.replicas >= input.min_replicas && d.replicas <= input.max_replicas, "{d:?}");
        let current = input.current_replicas;
        if current >= input.min_replicas && current <= input.max_replicas {
            prop_assert!(d.replicas - current <= MAX_STEP_UP);
            prop_assert!(current - d.replicas <= MAX_STEP_DOWN);
        }
        let expected = match d.replicas.cmp(&current.max(0)) {
            std::cmp::Ordering::Greater => ScaleDirection::Up,
            std::cmp::Ordering::Less => ScaleDirection::Down,
            std::cmp::Ordering::Equal => ScaleDirection::Hold,
        };
        prop_assert_eq!(d.direction, expected);
        prop_assert!(!d.reason.is_empty());
    }

    #[test]
    fn pressure_never_scales_in(input in scaling_input()) {
        let pressured = input
            .samples
            .iter()
            .any(|s| s.memory_used_fraction > input.thresholds.memory_pressure_watermark || s.circuit_open);
        let d = decide_replicas(&input);
        if pressured && input.current_replicas <= input.max_replicas {
            prop_assert_ne!(d.direction, ScaleDirection::Down);
        }
    }

    #[test]
    fn decisions_are_pure(input in scaling_input()) {
        prop_assert_eq!(decide_replicas(&input), decide_replicas(&input.clone()));
    }
}
