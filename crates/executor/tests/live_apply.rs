//! Live reconfiguration under load: nothing is dropped, and restart-only changes are refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use gpupool_api::Precision;
use gpupool_executor::{Engine, EngineError};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_under_load_drops_nothing() {
    let path = torchscript("unet_spherohq");
    let base = config(vec![model_config("unet", &path)]);
    let engine = Engine::start(base.clone(), options()).unwrap();
    engine.started().await;

    let load = {
        let e = engine.clone();
        tokio::spawn(async move {
            let mut tasks = Vec::new();
            for i in 0..150 {
                let e = e.clone();
                tasks.push(tokio::spawn(async move { e.infer("unet", image(i)).await }));
                if i % 10 == 9 {
                    tokio::time::sleep(Duration::from_millis(15)).await;
                }
            }
            let mut ok = 0;
            for t in tasks {
                t.await.unwrap().unwrap();
                ok += 1;
            }
            ok
        })
    };
    let variants = [
        (4, 3, 1, true),
        (16, 1, 30, false),
        (2, 4, 0, false),
        (8, 2, 10, false),
    ];
    for (generation, (max_batch, slots, delay, resident)) in (2..).zip(variants) {
        tokio::time::sleep(Duration::from_millis(60)).await;
        let mut next = base.clone();
        next.generation = generation;
        next.streams = slots;
        next.admission.max_queue_per_model = 200;
        let m = &mut next.models[0];
        (m.max_batch, m.slots, m.max_queue_delay_ms, m.resident) =
            (max_batch, slots, delay, resident);
        engine.apply(next).unwrap();
        let t = engine.telemetry();
        assert_eq!(t.config_generation, generation);
        assert_eq!(
            (t.models[0].batch_cap, t.models[0].slots),
            (max_batch, slots)
        );
    }
    assert_eq!(load.await.unwrap(), 150);
    assert_eq!(engine.telemetry().models[0].images_total, 150);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn precision_changes_live() {
    let path = torchscript("unet_spherohq");
    let base = config(vec![model_config("unet", &path)]);
    let engine = Engine::start(base.clone(), options()).unwrap();
    engine.started().await;
    let im = image(7);
    let want = &direct(&path, std::slice::from_ref(&im))[0];
    let mut next = base.clone();
    next.generation = 2;
    next.models[0].precision = Precision::Fp16; // fp32 file: autocast to fp16
    engine.apply(next).unwrap();
    let got = engine.infer("unet", im).await.unwrap();
    let diff = max_abs_diff(&got, want);
    assert!(
        diff > 0.0 && diff < 0.05,
        "fp16 differs from fp32 by {diff}"
    );
    assert_eq!(engine.telemetry().models[0].precision, Precision::Fp16);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_only_changes_are_refused() {
    let path = torchscript("unet_spherohq");
    let base = config(vec![model_config("unet", &path)]);
    let engine = Engine::start(base.clone(), options()).unwrap();
    let mut budget = base.clone();
    budget.memory_budget_bytes /= 2;
    let err = engine.apply(budget).unwrap_err();
    assert!(
        matches!(&err, EngineError::RestartRequired { what, .. } if what.contains("memoryBudgetBytes")),
        "{err}"
    );
    let mut moved = base.clone();
    moved.models[0].source.uri = "/elsewhere/unet.pt".into();
    let err = engine.apply(moved).unwrap_err();
    assert!(err.to_string().contains("models[unet].source"), "{err}");
    let mut invalid = base.clone();
    invalid.models[0].slots = 0;
    assert!(matches!(
        engine.apply(invalid),
        Err(EngineError::InvalidConfig(_))
    ));
    assert_eq!(engine.config(), base, "refused configs change nothing");
    engine.shutdown().await;
}
