//! Precision and packaging: explicit reduced precision on the CPU, and AOTInductor packages.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use gpupool_api::telemetry::{ModelState, ModelTelemetry};
use gpupool_api::{ModelFormat, Precision};
use gpupool_executor::{AotiPackage, Engine};

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

/// A CPU AOTInductor package of the test UNet exported at fp32 with `flags` (~30 s once, then
/// cached in <target>/test-models), or None with the reason printed when none can be made here.
fn unet_package(flags: &[&str], test: &str) -> Option<std::path::PathBuf> {
    unet_package_at("fp32", flags, test)
}

/// [`unet_package`] at another precision.
fn unet_package_at(precision: &str, flags: &[&str], test: &str) -> Option<std::path::PathBuf> {
    match try_export("unet_spherohq", precision, "aotinductor", flags) {
        Ok(p) => Some(p),
        Err(e) => {
            eprintln!("SKIPPED {test}: no CPU AOTInductor package could be made: {e}");
            None
        }
    }
}

/// A package of the test UNet for batches 1–4 and one compiled for exactly two images.
fn dynamic_and_fixed_packages(test: &str) -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    let dynamic = unet_package(&["--max-batch", "4"], test)?;
    let fixed = unet_package(&["--max-batch", "2", "--static"], test)?;
    Some((dynamic, fixed))
}

/// An engine serving `source` (a package or a directory of them) as `name`, started and Ready.
async fn package_engine(name: &str, source: &std::path::Path) -> (Engine, ModelTelemetry) {
    let mut m = model_config(name, source);
    m.source.format = ModelFormat::Aotinductor;
    let engine = Engine::start(config(vec![m]), options()).unwrap();
    engine.started().await;
    let model = engine.telemetry().models.remove(0);
    assert_eq!(model.state, ModelState::Ready, "{:?}", model.reason);
    (engine, model)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aotinductor_package_matches_torchscript() {
    let Some(package) = unet_package(
        &["--max-batch", "4"],
        "aotinductor_package_matches_torchscript",
    ) else {
        return;
    };
    let script = torchscript("unet_spherohq");
    let (engine, model) = package_engine("unet_aoti", &package).await;
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

/// A dynamic package (batches 1–4) next to one compiled for exactly two images: calibration times
/// both at 2, routes every size by what it measured, and every batch still answers what the
/// TorchScript model does, whichever package ran it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dynamic_and_a_fixed_package_are_routed_by_measurement() {
    let Some((dynamic, fixed)) =
        dynamic_and_fixed_packages("a_dynamic_and_a_fixed_package_are_routed_by_measurement")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(&dynamic, dir.path().join("dynamic-4.pt2")).unwrap();
    std::fs::copy(&fixed, dir.path().join("static-2.pt2")).unwrap();
    let (engine, model) = package_engine("unet_routed", dir.path()).await;
    assert_eq!(model.batch_cap, 4);
    let sizes: Vec<u32> = model.profile.iter().map(|p| p.batch_size).collect();
    assert_eq!(sizes, [1, 2, 4]);
    let script = torchscript("unet_spherohq");
    let images: Vec<Vec<f32>> = (30..37).map(image).collect();
    let expected = direct(&script, &images);
    let tasks: Vec<_> = images
        .into_iter()
        .map(|im| {
            let e = engine.clone();
            tokio::spawn(async move { e.infer_detailed("unet_routed", im).await })
        })
        .collect();
    for (t, want) in tasks.into_iter().zip(&expected) {
        let got = t.await.unwrap().unwrap();
        let diff = max_abs_diff(&got.logits, want);
        assert!(diff < 1e-4, "batch of {} differs by {diff}", got.batch_size);
    }
    engine.shutdown().await;
}

/// Packages loading at the same moment each get their own metadata. libtorch's loader parses a
/// package's metadata into one process-wide object, so without the shim's load lock a load here
/// came back with the other package's `max_batch`, or failed with "No device information found"
/// (which made engines in this file start capped at the wrong batch, or not at all).
#[test]
fn packages_loading_at_once_keep_their_own_metadata() {
    let Some((dynamic, fixed)) =
        dynamic_and_fixed_packages("packages_loading_at_once_keep_their_own_metadata")
    else {
        return;
    };
    let loaders: Vec<_> = (0..8)
        .map(|i| {
            let (path, want) = if i % 2 == 0 {
                (&dynamic, "4")
            } else {
                (&fixed, "2")
            };
            let path = path.display().to_string();
            std::thread::spawn(move || {
                for round in 0..40 {
                    let package = AotiPackage::load(&path, None, 1)
                        .unwrap_or_else(|e| panic!("load {round} of {path}: {e}"));
                    let got = package.metadata("max_batch").unwrap();
                    assert_eq!(got.as_deref(), Some(want), "load {round} of {path}");
                }
            })
        })
        .collect();
    for loader in loaders {
        loader.join().unwrap();
    }
}

/// `auto` precision on a package compiled at bf16: the engine reads the package's precision from
/// its archive before loading, runs it at that precision and says so in telemetry (a package runs
/// only at the precision it was compiled for).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_precision_runs_a_package_at_its_compiled_precision() {
    let test = "auto_precision_runs_a_package_at_its_compiled_precision";
    let Some(package) = unet_package_at("bf16", &["--max-batch", "2"], test) else {
        return;
    };
    let (engine, model) = package_engine("unet_bf16", &package).await;
    assert_eq!(model.precision, Precision::Bf16);
    let script = torchscript("unet_spherohq");
    let expected = direct(&script, &[image(3)]);
    let got = engine.infer("unet_bf16", image(3)).await.unwrap();
    let diff = max_abs_diff(&got, &expected[0]);
    assert!(
        diff < 0.1,
        "bf16 package differs from fp32 TorchScript by {diff}"
    );
    engine.shutdown().await;
}

/// A directory holding one package compiled for exactly two images: the batcher's cap becomes 2,
/// and a lone image is padded up to the package's batch with its answer still the model's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_of_fixed_batch_packages_pads_smaller_batches() {
    let Some(package) = unet_package(
        &["--max-batch", "2", "--static"],
        "a_directory_of_fixed_batch_packages_pads_smaller_batches",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(&package, dir.path().join("batch-2.pt2")).unwrap();
    let script = torchscript("unet_spherohq");
    let (engine, model) = package_engine("unet_static", dir.path()).await;
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
