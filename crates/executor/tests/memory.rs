//! Memory budget on the CPU with real models: the ledger is never crossed, models are unloaded
//! least-recently-used to make room and loaded again on demand, pinned models stay.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use gpupool_api::telemetry::ModelState;
use gpupool_executor::{Engine, EngineOptions, InferError};
use std::time::Duration;

/// Budget that holds either model with a full batch, never both.
const BUDGET: u64 = 4_500_000;

fn tight_options() -> EngineOptions {
    EngineOptions {
        activation_bytes_per_image: Some(100_000),
        memory_wait: Duration::from_millis(500),
        ..options()
    }
}

fn two_models(a_resident: bool) -> gpupool_api::sidecar::SidecarConfig {
    let mut a = model_config("a", &torchscript("unet_spherohq"));
    a.resident = a_resident;
    let b = model_config("b", &torchscript("cbam_resunet"));
    let mut cfg = config(vec![a, b]);
    cfg.memory_budget_bytes = BUDGET;
    cfg
}

fn state(engine: &Engine, name: &str) -> ModelState {
    engine
        .telemetry()
        .models
        .iter()
        .find(|m| m.name == name)
        .unwrap()
        .state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_take_turns_when_the_budget_holds_one() {
    let engine = Engine::start(two_models(false), tight_options()).unwrap();
    engine.started().await;
    assert!(engine.ready(), "{:?}", engine.telemetry().models);
    assert_eq!(
        (state(&engine, "a"), state(&engine, "b")),
        (ModelState::Unloaded, ModelState::Ready)
    );

    // A watcher checks the ledger while both models are used concurrently.
    let watcher = {
        let e = engine.clone();
        tokio::spawn(async move {
            let mut max_admitted = 0;
            while !e.telemetry().models.iter().all(|m| m.images_total >= 12) {
                let t = e.telemetry();
                assert!(t.allocator.admitted_bytes <= t.allocator.budget_bytes);
                max_admitted = max_admitted.max(t.allocator.admitted_bytes);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            max_admitted
        })
    };
    let mut tasks = Vec::new();
    for i in 0..24 {
        let e = engine.clone();
        let model = if i % 2 == 0 { "a" } else { "b" };
        tasks.push(tokio::spawn(async move { e.infer(model, image(i)).await }));
        if i % 6 == 5 {
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let max_admitted = tokio::time::timeout(Duration::from_secs(10), watcher)
        .await
        .unwrap()
        .unwrap();
    assert!(max_admitted > 0 && max_admitted <= BUDGET);
    let states = [state(&engine, "a"), state(&engine, "b")];
    assert!(
        states.contains(&ModelState::Ready) && states.contains(&ModelState::Unloaded),
        "{states:?}"
    );
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_model_is_never_unloaded() {
    let engine = Engine::start(two_models(true), tight_options()).unwrap();
    engine.started().await;
    let t = engine.telemetry();
    let b = t.models.iter().find(|m| m.name == "b").unwrap();
    assert_eq!(b.state, ModelState::Failed, "b cannot fit next to pinned a");
    assert!(
        b.reason.as_deref().unwrap_or("").contains("budget"),
        "{:?}",
        b.reason
    );
    assert_eq!(state(&engine, "a"), ModelState::Ready);
    assert!(engine.infer("a", image(0)).await.is_ok());
    engine.shutdown().await;
}

/// A slot waiting for memory does not hold one of the engine's `streams`: with a single stream,
/// a pinned model's request is answered while another model waits to load into room that the
/// pinned one never gives up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_waiting_for_memory_does_not_hold_the_only_stream() {
    let mut cfg = two_models(false);
    cfg.streams = 1;
    cfg.models[1].resident = true;
    let options = EngineOptions {
        memory_wait: Duration::from_secs(3),
        ..tight_options()
    };
    let engine = Engine::start(cfg, options).unwrap();
    engine.started().await;
    assert_eq!(
        (state(&engine, "a"), state(&engine, "b")),
        (ModelState::Unloaded, ModelState::Ready),
        "a was calibrated, then unloaded for pinned b"
    );
    let waiting = {
        let e = engine.clone();
        tokio::spawn(async move { e.infer("a", image(1)).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    engine.infer("b", image(2)).await.unwrap();
    assert!(
        !waiting.is_finished(),
        "b must be answered while a still waits for memory, not after it gives up"
    );
    let refused = waiting.await.unwrap().unwrap_err();
    assert!(
        matches!(refused, InferError::ModelNotReady { .. }),
        "{refused:?}"
    );
    engine.shutdown().await;
}

/// Under steady traffic to one model, a request for another that needs it unloaded is still
/// served: the busy model's slots wait for the gate holding nothing, so between its batches it
/// is idle and can make room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_model_still_makes_room_for_another() {
    let mut cfg = two_models(false);
    cfg.streams = 1;
    let options = EngineOptions {
        memory_wait: Duration::from_secs(5),
        ..tight_options()
    };
    let engine = Engine::start(cfg, options).unwrap();
    engine.started().await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let busy: Vec<_> = (0..4)
        .map(|i| {
            let (e, stop) = (engine.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    e.infer("b", image(i)).await.unwrap();
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let answered = engine.infer("a", image(9)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for b in busy {
        b.await.unwrap();
    }
    assert!(answered.is_ok(), "{answered:?}");
    engine.shutdown().await;
}
