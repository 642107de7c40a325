//! The engine on the CPU with real TorchScript models (exported by tests/models/export.py).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use gpupool_api::telemetry::ModelState;
use gpupool_api::Precision;
use gpupool_executor::{Engine, InferError, ManualProbe};
use std::sync::Arc;
use std::time::Duration;

async fn started(
    config: gpupool_api::sidecar::SidecarConfig,
    options: gpupool_executor::EngineOptions,
) -> Engine {
    let engine = Engine::start(config, options).unwrap();
    tokio::time::timeout(Duration::from_secs(120), engine.started())
        .await
        .expect("start-up took too long");
    engine
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_match_the_module_run_directly() {
    let path = torchscript("unet_spherohq");
    let engine = started(config(vec![model_config("unet", &path)]), options()).await;
    assert!(engine.ready());
    let images: Vec<Vec<f32>> = (0..6).map(image).collect();
    let expected = direct(&path, &images);
    let answers = infer_all(&engine, "unet", images.clone()).await;
    for (got, want) in answers.into_iter().zip(&expected) {
        let got = got.unwrap();
        assert_eq!(got.len(), (SIZE * SIZE) as usize);
        assert!(
            max_abs_diff(&got, want) < 1e-4,
            "differs by {}",
            max_abs_diff(&got, want)
        );
    }
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_batches() {
    let path = torchscript("unet_spherohq");
    let mut m = model_config("unet", &path);
    m.max_queue_delay_ms = 50;
    m.slots = 1;
    let engine = started(config(vec![m]), options()).await;
    let n = 40;
    let answers = infer_all(&engine, "unet", (0..n).map(image).collect()).await;
    assert!(answers.iter().all(Result::is_ok));
    let t = engine.telemetry();
    let unet = &t.models[0];
    assert_eq!(unet.images_total, u64::from(n));
    assert!(
        unet.batches_total < unet.images_total,
        "{} batches for {} images",
        unet.batches_total,
        unet.images_total
    );
    assert!(unet.latency_p50_ms > 0.0 && unet.latency_p99_ms >= unet.latency_p50_ms);
    assert!(unet.images_per_second > 0.0);
    // The answer says how large a batch it ran in.
    let e = engine.clone();
    let detailed: Vec<_> = (0..8)
        .map(|i| {
            let e = e.clone();
            tokio::spawn(async move { e.infer_detailed("unet", image(i)).await })
        })
        .collect();
    let mut largest = 0;
    for d in detailed {
        largest = largest.max(d.await.unwrap().unwrap().batch_size);
    }
    assert!(largest > 1, "eight concurrent requests ran one at a time");
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_and_corrupt_files_fail_only_their_model() {
    let good = torchscript("unet_spherohq");
    let corrupt = models_dir().join("corrupt.pt");
    std::fs::write(&corrupt, b"this is not a TorchScript archive").unwrap();
    let missing = models_dir().join("does-not-exist.pt");
    let cfg = config(vec![
        model_config("missing", &missing),
        model_config("good", &good),
        model_config("corrupt", &corrupt),
    ]);
    let engine = started(cfg, options()).await;
    assert!(
        engine.ready(),
        "failed models leave the pod serving the good one"
    );
    assert!(engine.model_ready("good"));
    assert!(!engine.model_ready("missing") && !engine.model_ready("corrupt"));
    let t = engine.telemetry();
    for (name, path) in [("missing", &missing), ("corrupt", &corrupt)] {
        let m = t.models.iter().find(|m| m.name == name).unwrap();
        assert_eq!(m.state, ModelState::Failed);
        let reason = m.reason.clone().unwrap();
        assert!(
            reason.contains(&path.display().to_string()),
            "{name}: {reason}"
        );
        let err = engine.infer(name, image(0)).await.unwrap_err();
        assert!(matches!(err, InferError::ModelNotReady { .. }), "{err:?}");
        assert_eq!(err.http_status(), 503);
        assert!(!engine.model_ready(name));
    }
    assert!(engine.infer("good", image(1)).await.is_ok());
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_with_their_status() {
    let path = torchscript("unet_spherohq");
    let engine = started(config(vec![model_config("unet", &path)]), options()).await;
    let err = engine.infer("nope", image(0)).await.unwrap_err();
    assert_eq!((err.http_status(), err.kind()), (404, "unknown_model"));
    let err = engine.infer("unet", vec![0.0; 10]).await.unwrap_err();
    assert_eq!(err.http_status(), 400);
    engine.shutdown().await;
    let err = engine.infer("unet", image(0)).await.unwrap_err();
    assert_eq!(err, InferError::ShuttingDown);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_is_refused_with_429() {
    let path = torchscript("unet_spherohq");
    let mut m = model_config("unet", &path);
    m.max_queue_delay_ms = 1000;
    m.max_batch = 64;
    m.slots = 1;
    let mut cfg = config(vec![m]);
    cfg.admission.max_queue_per_model = 2;
    let engine = started(cfg, options()).await;
    let (a, b) = (engine.clone(), engine.clone());
    let first = tokio::spawn(async move { a.infer("unet", image(0)).await });
    let second = tokio::spawn(async move { b.infer("unet", image(1)).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let err = engine.infer("unet", image(2)).await.unwrap_err();
    assert!(
        matches!(err, InferError::QueueFull { depth: 2, .. }),
        "{err:?}"
    );
    assert_eq!(err.http_status(), 429);
    assert!(first.await.unwrap().is_ok() && second.await.unwrap().is_ok());
    assert_eq!(engine.telemetry().models[0].rejected_total, 1);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_breaker_refuses_work_while_memory_is_high() {
    let path = torchscript("unet_spherohq");
    let probe = Arc::new(ManualProbe::new());
    probe.set_used_fraction(0.99, 80 << 30);
    let mut opts = options();
    opts.probe = Some(probe.clone());
    opts.retry_after = Duration::from_secs(3);
    let engine = started(config(vec![model_config("unet", &path)]), opts).await;
    let err = engine.infer("unet", image(0)).await.unwrap_err();
    assert!(matches!(err, InferError::CircuitOpen { .. }), "{err:?}");
    assert_eq!(
        (err.http_status(), err.retry_after()),
        (503, Some(Duration::from_secs(3)))
    );
    let t = engine.telemetry();
    assert!(t.circuit_open);
    assert_eq!(
        t.device.unwrap().used_bytes,
        (0.99 * (80u64 << 30) as f64) as u64
    );
    probe.set_used_fraction(0.5, 80 << 30);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(engine.infer("unet", image(0)).await.is_ok());
    assert!(!engine.telemetry().circuit_open);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_has_the_calibrated_profile() {
    let path = torchscript("unet_spherohq");
    let engine = started(config(vec![model_config("unet", &path)]), options()).await;
    let t = engine.telemetry();
    assert!(t.ready && !t.circuit_open && t.device.is_none());
    assert_eq!(t.allocator.budget_bytes, 4 << 30);
    let m = &t.models[0];
    assert_eq!(
        (m.state, m.precision, m.batch_cap, m.slots),
        (ModelState::Ready, Precision::Fp32, 8, 2)
    );
    let sizes: Vec<u32> = m.profile.iter().map(|p| p.batch_size).collect();
    assert_eq!(sizes, vec![1, 2, 4, 8]);
    assert!(m
        .profile
        .iter()
        .all(|p| p.latency_ms > 0.0 && p.peak_bytes > 0));
    assert_eq!(m.weights_bytes, 486_553 * 4, "parameters × 4 bytes");
    assert!(t.allocator.admitted_bytes >= m.weights_bytes);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_requests_are_dropped_before_running() {
    let path = torchscript("unet_spherohq");
    let mut m = model_config("unet", &path);
    m.max_queue_delay_ms = 300;
    m.slots = 1;
    let engine = started(config(vec![m]), options()).await;
    let gone =
        tokio::time::timeout(Duration::from_millis(20), engine.infer("unet", image(0))).await;
    assert!(gone.is_err(), "the caller gave up");
    assert!(engine.infer("unet", image(1)).await.is_ok());
    let t = engine.telemetry();
    assert_eq!(
        (t.models[0].images_total, t.models[0].batches_total),
        (1, 1)
    );
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_queued_requests() {
    let path = torchscript("unet_spherohq");
    let mut m = model_config("unet", &path);
    m.max_queue_delay_ms = 5000;
    m.max_batch = 64;
    let engine = started(config(vec![m]), options()).await;
    let pending: Vec<_> = (0..10)
        .map(|i| {
            let e = engine.clone();
            tokio::spawn(async move { e.infer("unet", image(i)).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let start = std::time::Instant::now();
    engine.shutdown().await;
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "shutdown does not wait out the queue delay"
    );
    for p in pending {
        assert!(p.await.unwrap().is_ok());
    }
}

/// Sends all images at once (one task each) and returns the answers in order.
async fn infer_all(
    engine: &Engine,
    model: &str,
    images: Vec<Vec<f32>>,
) -> Vec<Result<Vec<f32>, InferError>> {
    let handles: Vec<_> = images
        .into_iter()
        .map(|im| {
            let (e, m) = (engine.clone(), model.to_owned());
            tokio::spawn(async move { e.infer(&m, im).await })
        })
        .collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

/// A decoded image whose pre- and post-processing can never fit the memory budget is refused at
/// once with a 400 that says so, never run over budget; a small one on the same engine is
/// segmented, with the mask at its own size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_processing_memory_is_admitted_with_the_batch() {
    use gpupool_executor::{RawImage, Samples};
    let path = torchscript("unet_spherohq");
    let mut cfg = config(vec![model_config("unet", &path)]);
    cfg.memory_budget_bytes = 96 << 20;
    let mut opts = options();
    opts.memory_wait = Duration::from_millis(300);
    let engine = started(cfg, opts).await;
    assert!(engine.ready(), "{:?}", engine.telemetry().models[0].reason);

    let small = RawImage::new(90, 70, 3, &Samples::U8(vec![200; 90 * 70 * 3])).unwrap();
    let seg = engine.segment("unet", small, 0.5).await.unwrap();
    assert_eq!((seg.width, seg.height), (90, 70));
    let mask = seg.mask();
    assert_eq!((mask.len(), seg.probabilities.len()), (90 * 70, 90 * 70));
    assert!(mask.iter().all(|&m| m <= 1));
    assert!(seg
        .probabilities
        .iter()
        .zip(&mask)
        .all(|(&p, &m)| (p > 0.5) == (m == 1)));

    // 3000×3000 RGB: ~240 MB of resizing scratch against a 96 MiB budget.
    let huge = RawImage::new(3000, 3000, 3, &Samples::U8(vec![7; 3000 * 3000 * 3])).unwrap();
    let err = engine.segment("unet", huge, 0.5).await.unwrap_err();
    assert!(
        matches!(&err, InferError::InvalidRequest { message, .. } if message.contains("3000×3000")),
        "{err:?}"
    );
    assert_eq!(err.http_status(), 400);
    let t = engine.telemetry();
    assert!(t.allocator.admitted_bytes <= t.allocator.budget_bytes);
    // The engine still serves afterwards.
    let again = RawImage::new(64, 64, 1, &Samples::U8(vec![9; 64 * 64])).unwrap();
    assert!(engine.segment("unet", again, 0.5).await.is_ok());
    let err = engine
        .segment(
            "unet",
            RawImage::new(4, 4, 1, &Samples::U8(vec![0; 16])).unwrap(),
            1.5,
        )
        .await
        .unwrap_err();
    assert_eq!((err.http_status(), err.kind()), (400, "bad_request"));
    engine.shutdown().await;
}

/// Float tensors (OIP) and decoded images (segmentation) for the same model share batches; each
/// gets its own kind of answer, and the tensor's logits are those of the module run directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tensors_and_images_share_a_batch() {
    use gpupool_executor::{RawImage, Samples};
    let path = torchscript("unet_spherohq");
    let mut m = model_config("unet", &path);
    m.max_queue_delay_ms = 300;
    m.slots = 1;
    let engine = started(config(vec![m]), options()).await;
    let im = image(5);
    let expected = direct(&path, std::slice::from_ref(&im));
    let (a, b) = (engine.clone(), engine.clone());
    let tensor = tokio::spawn(async move { a.infer_detailed("unet", im).await });
    let pixels = RawImage::new(50, 30, 1, &Samples::U16(vec![40_000; 50 * 30])).unwrap();
    let segment = tokio::spawn(async move { b.segment("unet", pixels, 0.5).await });
    let (tensor, segment) = (
        tensor.await.unwrap().unwrap(),
        segment.await.unwrap().unwrap(),
    );
    assert_eq!(
        (tensor.batch_size, segment.batch_size),
        (2, 2),
        "one batch of two"
    );
    assert!(max_abs_diff(&tensor.logits, &expected[0]) < 1e-4);
    assert_eq!(
        (segment.width, segment.height, segment.mask().len()),
        (50, 30, 1500)
    );
    engine.shutdown().await;
}
