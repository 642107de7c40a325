use super::*;
use crate::testutil::{pool, report};

#[test]
fn samples_count_rejects_since_the_previous_report() {
    let previous = vec![("a".to_string(), report(40, 0, 10))];
    let collection = Collection {
        reports: vec![
            ("a".into(), report(40, 4, 15)),
            ("new".into(), report(20, 1, 99)),
        ],
        failed: vec![],
    };
    let samples = samples(&collection, &previous);
    assert_eq!(samples[0].rejects_delta, 5);
    assert_eq!(samples[0].queue_depth, 4);
    assert_eq!(samples[0].memory_used_fraction, 0.4);
    assert_eq!(
        samples[1].rejects_delta, 0,
        "first report of a pod counts nothing"
    );
}

#[test]
fn scaling_input_comes_from_the_spec() {
    let pool = pool();
    let input = scaling_input(&pool, 1, vec![], Stabilization::default(), 42);
    assert_eq!((input.current_replicas, input.ready_replicas), (2, 1));
    assert_eq!((input.min_replicas, input.max_replicas), (1, 4));
    assert_eq!((input.up_window_s, input.down_window_s), (30, 300));
    assert_eq!(input.thresholds.memory_pressure_watermark, 0.85);
    assert_eq!(input.now_s, 42);
}

#[test]
fn with_no_telemetry_only_the_bounds_count() {
    let mut pool = pool();
    pool.spec.replicas = 9;
    let held = decide_replicas(&scaling_input(
        &pool,
        0,
        vec![],
        Stabilization::default(),
        0,
    ));
    assert_eq!(held.replicas, 4, "above maxReplicas is corrected at once");
    pool.spec.replicas = 3;
    let held = decide_replicas(&scaling_input(
        &pool,
        0,
        vec![],
        Stabilization::default(),
        0,
    ));
    assert_eq!(
        held.replicas, 3,
        "no telemetry: no change within the bounds"
    );
}
