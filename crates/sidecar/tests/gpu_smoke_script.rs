//! `bench/gpu_smoke.py`, the check the H200 run relies on (issue #4's acceptance: the sidecar's
//! masks against PyTorch's on the same TorchScript file and image), run here on the CPU against a
//! real sidecar serving the three architectures, tiny and fp32. The script must pass, and what it
//! reports must say the two agree exactly; a script bug found here costs no device time.

mod common;

use common::{config, model, Sidecar, SIZE};
use gpupool_tests::images::spheroid_png as png;
use gpupool_tests::models::TinyModel;
use gpupool_tests::{repo_root, venv_python};
use serde_json::Value;

const MODELS: [&str; 3] = ["hrnet", "cbam_resunet", "unet_spherohq"];

#[tokio::test]
async fn the_gpu_smoke_script_passes_against_the_sidecar_on_the_cpu() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The script finds `<model>.<precision>.pt` in one directory.
    let configs = MODELS
        .iter()
        .map(|name| {
            let exported = TinyModel::new(name, SIZE).path().expect("export");
            let file = dir.path().join(format!("{name}.fp32.pt"));
            std::fs::copy(exported, &file).expect("copy model");
            model(name, &file, 4)
        })
        .collect();
    let s = Sidecar::start(&config(configs), &[]).await;
    s.wait_ready().await;
    // Larger than the models' input both ways: the segment path resizes down and back up.
    let image = dir.path().join("spheroids.png");
    std::fs::write(&image, png(200, 150)).expect("write image");
    let report = dir.path().join("smoke.json");
    let path = |p: &std::path::Path| p.to_str().expect("utf-8 path").to_owned();
    let out = std::process::Command::new(venv_python())
        .arg(repo_root().join("bench/gpu_smoke.py"))
        .args(["--url", &s.url, "--models-dir", &path(dir.path())])
        .args(["--image", &path(&image), "--precision", "fp32"])
        .args(["--models", &MODELS.join(","), "--size", &SIZE.to_string()])
        .args(["--device", "cpu", "--out", &path(&report)])
        .output()
        .expect("run bench/gpu_smoke.py");
    assert!(
        out.status.success(),
        "gpu_smoke.py failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("json");
    assert_eq!(results.len(), MODELS.len());
    for r in &results {
        assert!(
            r["foreground_fraction"].as_f64().unwrap_or(0.0) > 0.0,
            "PyTorch finds foreground, so the comparison bites: {r}"
        );
        assert_eq!(r["oip_max_abs_logit_diff"].as_f64(), Some(0.0), "{r}");
        assert_eq!(r["segment_mask_iou"].as_f64(), Some(1.0), "{r}");
        assert_eq!(r["segment_polygons"], r["pytorch_polygons"], "{r}");
        assert_eq!(r["image_size"], serde_json::json!([200, 150]), "{r}");
    }
}
