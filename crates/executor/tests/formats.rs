//! Precision and packaging: explicit reduced precision on the CPU, and AOTInductor packages.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use gpupool_api::telemetry::ModelState;
use gpupool_api::{ModelFormat, Precision};
use gpupool_executor::Engine;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fp16_autocast_of_an_fp32_file_is_close_to_fp32() {
    let path = torchscript("unet_spherohq");
    let mut m = model_config("unet", &path);
    m.precision = Precision::Fp16;
    m.max_batch = 2; // fp16 kernels are slow on the CPU; two batch sizes keep calibration short
    let engine = Engine::start(config(vec![m]), options()).unwrap();
    engine.started().await;
    let t = engine.telemetry();
    assert_eq!(
        (t.models[0].state, t.models[0].precision),
        (ModelState::Ready, Precision::Fp16)
    );
    assert!(t.models[0]
        .profile
        .iter()
        .all(|p| p.precision == Precision::Fp16));
    let im = image(3);
    let got = engine.infer("unet", im.clone()).await.unwrap();
    let diff = max_abs_diff(&got, &direct(&path, &[im])[0]);
    assert!(
        diff > 0.0 && diff < 0.05,
        "fp16 differs from fp32 by {diff} (0: autocast did not apply)"
    );
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aotinductor_package_matches_torchscript() {
    // Compiling a CPU package takes ~30 s once; it is cached in <target>/test-models afterwards.
    let package = match try_export(
        "unet_spherohq",
        "fp32",
        "aotinductor",
        &["--max-batch", "4"],
    ) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("SKIPPED aotinductor_package_matches_torchscript: no CPU AOTInductor package could be made: {e}");
            return;
        }
    };
    let script = torchscript("unet_spherohq");
    let mut m = model_config("unet_aoti", &package);
    m.source.format = ModelFormat::Aotinductor;
    let engine = Engine::start(config(vec![m]), options()).unwrap();
    engine.started().await;
    let t = engine.telemetry();
    let model = &t.models[0];
    assert_eq!(model.state, ModelState::Ready, "{:?}", model.reason);
    assert_eq!(
        model.batch_cap, 4,
        "the package's dynamic batch range caps the batcher"
    );
    assert_eq!(
        model
            .profile
            .iter()
            .map(|p| p.batch_size)
            .collect::<Vec<_>>(),
        vec![1, 2, 4]
    );
    let images: Vec<Vec<f32>> = (10..16).map(image).collect();
    let expected = direct(&script, &images);
    let mut tasks = Vec::new();
    for im in images {
        let e = engine.clone();
        tasks.push(tokio::spawn(async move { e.infer("unet_aoti", im).await }));
    }
    for (t, want) in tasks.into_iter().zip(&expected) {
        let got = t.await.unwrap().unwrap();
        let diff = max_abs_diff(&got, want);
        assert!(diff < 1e-4, "package differs from TorchScript by {diff}");
    }
    engine.shutdown().await;
}

/// A directory holding one package compiled for exactly two images: the batcher's cap becomes 2,
/// and a lone image is padded up to the package's batch with its answer still the model's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_of_fixed_batch_packages_pads_smaller_batches() {
    let package = match try_export(
        "unet_spherohq",
        "fp32",
        "aotinductor",
        &["--max-batch", "2", "--static"],
    ) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("SKIPPED a_directory_of_fixed_batch_packages: no CPU AOTInductor package could be made: {e}");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(&package, dir.path().join("batch-2.pt2")).unwrap();
    let script = torchscript("unet_spherohq");
    let mut m = model_config("unet_static", dir.path());
    m.source.format = ModelFormat::Aotinductor;
    let engine = Engine::start(config(vec![m]), options()).unwrap();
    engine.started().await;
    let t = engine.telemetry();
    let model = &t.models[0];
    assert_eq!(model.state, ModelState::Ready, "{:?}", model.reason);
    assert_eq!(
        model.batch_cap, 2,
        "the package's fixed batch caps the batcher"
    );
    let im = image(21);
    let got = engine
        .infer_detailed("unet_static", im.clone())
        .await
        .unwrap();
    assert_eq!(
        got.batch_size, 1,
        "one image, padded to two inside the engine"
    );
    let diff = max_abs_diff(&got.logits, &direct(&script, &[im])[0]);
    assert!(
        diff < 1e-4,
        "padded package differs from TorchScript by {diff}"
    );
    engine.shutdown().await;
}
