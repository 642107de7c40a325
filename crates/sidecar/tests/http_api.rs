//! The sidecar over real HTTP on loopback, with real TorchScript models executed by libtorch on
//! the CPU: the original segmentation API, the Open Inference Protocol, probes, metrics, and every
//! kind of bad input answered with a 4xx JSON body that names the problem.

mod common;

use common::{config, model, model_at, unet_path, unet_path_at, Sidecar, SIZE};
use gpupool_tests::images::{encode, png_header_only, spheroid_png as png, spheroid_rgb};
use serde_json::{json, Value};
use tokio::sync::OnceCell;

static SHARED: OnceCell<Sidecar> = OnceCell::const_new();

/// One sidecar for the read-mostly tests: a good model, a second name for the same file, and a
/// model whose file does not exist.
async fn sidecar() -> &'static Sidecar {
    SHARED
        .get_or_init(|| async {
            let unet = unet_path();
            let cfg = config(vec![
                model("unet_spherohq", &unet, 8),
                model("unet_copy", &unet, 8),
                // Slow enough on a CPU that requests queue while a batch runs.
                model_at("unet_slow", &unet_path_at(256), 8, 256),
                model("broken", std::path::Path::new("/nonexistent/model.pt"), 8),
            ]);
            let s = Sidecar::start(
                &cfg,
                &["--max-body-bytes", "4000000", "--max-pixels", "20000000"],
            )
            .await;
            s.wait_for("/api/v1/health", std::time::Duration::from_secs(120))
                .await;
            // The good models must become servable even though one model never will.
            for _ in 0..600 {
                let (_, models) = s.get_json("/api/v1/models").await;
                let ready = models["models"].as_array().is_some_and(|ms| {
                    ms.iter()
                        .filter(|m| m["name"] != "broken")
                        .all(|m| m["state"] == "Ready")
                });
                if ready {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            // A model is Ready once loaded and calibrated; the pod once start-up has also warmed
            // every slot, a moment later.
            s.wait_ready().await;
            s
        })
        .await
}

/// One bad upload: its name, the bytes, the other form fields, the status and error type expected.
type BadUpload = (
    &'static str,
    Vec<u8>,
    Vec<(&'static str, &'static str)>,
    u16,
    &'static str,
);

fn assert_error(status: u16, body: &Value, expected_status: u16, error_type: &str) {
    assert_eq!(status, expected_status, "{body}");
    assert_eq!(body["success"], json!(false), "{body}");
    assert_eq!(body["error_type"], json!(error_type), "{body}");
    assert!(
        body["error"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

#[tokio::test]
async fn segments_png_jpeg_and_16bit_tiff_with_the_original_fields() {
    let s = sidecar().await;
    let rgb = spheroid_rgb(200, 150);
    let gray16 = image::DynamicImage::ImageLuma16(image::ImageBuffer::from_fn(200, 150, |x, y| {
        image::Luma([rgb.get_pixel(x, y)[0] as u16 * 257])
    }));
    let images = [
        ("png", png(200, 150)),
        (
            "jpeg",
            encode(
                &image::DynamicImage::ImageRgb8(rgb.clone()),
                image::ImageFormat::Jpeg,
            ),
        ),
        ("tiff16", encode(&gray16, image::ImageFormat::Tiff)),
    ];
    for (kind, bytes) in images {
        let (status, body) = s
            .segment(
                bytes,
                &[
                    ("model", "unet_spherohq"),
                    ("threshold", "0.5"),
                    ("detect_holes", "true"),
                ],
            )
            .await;
        assert_eq!(status, 200, "{kind}: {body}");
        assert_eq!(body["success"], json!(true));
        assert_eq!(body["model_used"], json!("unet_spherohq"));
        assert_eq!(body["threshold_used"], json!(0.5));
        assert_eq!(
            body["image_size"],
            json!({"width": 200, "height": 150}),
            "{kind}"
        );
        assert!(body["polygons"].is_array());
        for field in ["processing_time", "inference_time", "preprocessing_time"] {
            assert!(
                body[field].as_f64().is_some_and(|t| t >= 0.0),
                "{kind}: {field} in {body}"
            );
        }
        assert_eq!(body["gpu_enabled"], json!(false));
        assert!(
            body["batch_size_used"]
                .as_u64()
                .is_some_and(|b| (1..=8).contains(&b)),
            "{body}"
        );
        for p in body["polygons"].as_array().into_iter().flatten() {
            assert_eq!(p["class"], json!("spheroid"));
            assert_eq!(
                p["vertices_count"].as_u64(),
                p["points"].as_array().map(|a| a.len() as u64)
            );
        }
    }
}

#[tokio::test]
async fn the_returned_mask_is_what_the_polygons_outline() {
    use base64::Engine as _;
    let s = sidecar().await;
    let (status, plain) = s
        .segment(png(200, 150), &[("model", "unet_spherohq")])
        .await;
    assert_eq!(status, 200, "{plain}");
    assert!(plain.get("mask_png").is_none(), "mask only when asked");
    let (status, body) = s
        .segment(
            png(200, 150),
            &[
                ("model", "unet_spherohq"),
                ("return_mask", "true"),
                ("min_area", "0"),
                ("threshold", "0.5"),
            ],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(body["mask_png"].as_str().expect("mask_png"))
        .expect("base64");
    let mask = image::load_from_memory(&bytes).expect("png").to_luma8();
    assert_eq!(mask.dimensions(), (200, 150));
    assert!(mask.pixels().all(|p| p[0] == 0 || p[0] == 255));
    // Every vertex of every outline (outer borders and hole borders alike) is a foreground pixel.
    let polygons = body["polygons"].as_array().expect("polygons");
    let foreground = mask.pixels().filter(|p| p[0] == 255).count();
    // The test model (seeded weights) finds outlines in this image, so the check below bites.
    assert!(!polygons.is_empty() && foreground > 0, "{body}");
    for p in polygons {
        for q in p["points"].as_array().expect("points") {
            let (x, y) = (q["x"].as_u64().expect("x"), q["y"].as_u64().expect("y"));
            assert_eq!(mask.get_pixel(x as u32, y as u32)[0], 255, "({x}, {y})");
        }
    }
    // min_area 0 keeps at least what the default filter keeps.
    assert!(polygons.len() >= plain["polygons"].as_array().map_or(0, Vec::len));
}

/// The same model file and image through PyTorch (tests/models/reference.py: the pre- and
/// post-processing of models.md) and through the sidecar: the masks must agree.
#[tokio::test]
async fn the_mask_matches_pytorch_on_the_same_file_and_image() {
    use base64::Engine as _;
    let s = sidecar().await;
    let dir = tempfile::tempdir().expect("tempdir");
    // Larger than the model's 64×64 input one way and smaller the other: both resize directions.
    let (image_path, reference) = (dir.path().join("in.png"), dir.path().join("ref.png"));
    std::fs::write(&image_path, png(150, 40)).expect("write image");
    let out = std::process::Command::new(gpupool_tests::venv_python())
        .arg(gpupool_tests::repo_root().join("tests/models/reference.py"))
        .args(["--model-file", unet_path().to_str().expect("utf-8 path")])
        .args(["--image", image_path.to_str().expect("utf-8 path")])
        .args(["--out-mask", reference.to_str().expect("utf-8 path")])
        .args(["--size", &SIZE.to_string(), "--threshold", "0.5"])
        .output()
        .expect("run reference.py");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = image::open(&reference).expect("reference mask").to_luma8();
    let (status, body) = s
        .segment(
            png(150, 40),
            &[("model", "unet_spherohq"), ("return_mask", "true")],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(body["mask_png"].as_str().expect("mask_png"))
        .expect("base64");
    let got = image::load_from_memory(&bytes).expect("png").to_luma8();
    assert_eq!(got.dimensions(), expected.dimensions());
    let (mut both, mut either) = (0u64, 0u64);
    for (a, b) in got.pixels().zip(expected.pixels()) {
        let (a, b) = (a[0] == 255, b[0] == 255);
        both += u64::from(a && b);
        either += u64::from(a || b);
    }
    assert!(
        either > 0,
        "the reference found foreground, so the comparison bites"
    );
    let iou = both as f64 / either as f64;
    assert!(iou >= 0.999, "mask IoU against PyTorch {iou}");
}

#[tokio::test]
async fn batch_segment_answers_each_image_and_isolates_a_bad_one() {
    let s = sidecar().await;
    let form = reqwest::multipart::Form::new()
        .text("model", "unet_spherohq")
        .part(
            "files",
            reqwest::multipart::Part::bytes(png(120, 90)).file_name("a.png"),
        )
        .part(
            "files",
            reqwest::multipart::Part::bytes(b"not an image".to_vec()).file_name("b.png"),
        )
        .part(
            "files",
            reqwest::multipart::Part::bytes(png(80, 80)).file_name("c.png"),
        );
    let (status, body) = s.post_form("/api/v1/batch-segment", form).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["total"], json!(3));
    assert_eq!(body["successful"], json!(2));
    assert_eq!(
        body["results"][1]["error_type"],
        json!("unsupported_format")
    );
    assert_eq!(
        body["results"][2]["image_size"],
        json!({"width": 80, "height": 80})
    );
    // A problem of the whole request (here the threshold) fails the whole request, as it would
    // for one image, and in order: twelve images, more than are in flight at once, keep theirs.
    let form = reqwest::multipart::Form::new()
        .text("model", "unet_spherohq")
        .text("threshold", "0.95")
        .part(
            "files",
            reqwest::multipart::Part::bytes(png(64, 64)).file_name("a.png"),
        );
    let (status, body) = s.post_form("/api/v1/batch-segment", form).await;
    assert_error(status, &body, 400, "invalid_field");
    let mut form = reqwest::multipart::Form::new().text("model", "unet_spherohq");
    for i in 0..12u32 {
        form = form.part(
            "files",
            reqwest::multipart::Part::bytes(png(40 + i, 30)).file_name(format!("{i}.png")),
        );
    }
    let (status, body) = s.post_form("/api/v1/batch-segment", form).await;
    assert_eq!((status, &body["successful"]), (200, &json!(12)), "{body}");
    for i in 0..12u32 {
        assert_eq!(
            body["results"][i as usize]["image_size"],
            json!({"width": 40 + i, "height": 30})
        );
    }
}

#[tokio::test]
async fn bad_uploads_get_4xx_json_naming_the_problem() {
    let s = sidecar().await;
    let ok = png(64, 64);
    let mut truncated = png(300, 300);
    truncated.truncate(truncated.len() / 2);
    // A PNG header claiming 100000 × 100000 pixels: refused from the header, nothing allocated.
    let bomb = png_header_only(100_000, 100_000);
    let zero = png_header_only(0, 64);
    // (case, upload, form fields, expected status, expected error_type)
    let cases: Vec<BadUpload> = vec![
        (
            "empty",
            vec![],
            vec![("model", "unet_spherohq")],
            400,
            "empty_body",
        ),
        (
            "text",
            b"hello, world".to_vec(),
            vec![("model", "unet_spherohq")],
            415,
            "unsupported_format",
        ),
        (
            "truncated",
            truncated,
            vec![("model", "unet_spherohq")],
            400,
            "truncated",
        ),
        (
            "bomb",
            bomb,
            vec![("model", "unet_spherohq")],
            413,
            "too_many_pixels",
        ),
        (
            "zero",
            zero,
            vec![("model", "unet_spherohq")],
            400,
            "zero_size",
        ),
        (
            "unknown model",
            ok.clone(),
            vec![("model", "resnet9000")],
            404,
            "unknown_model",
        ),
        (
            "threshold high",
            ok.clone(),
            vec![("model", "unet_spherohq"), ("threshold", "0.95")],
            400,
            "invalid_field",
        ),
        (
            "threshold text",
            ok.clone(),
            vec![("model", "unet_spherohq"), ("threshold", "half")],
            400,
            "invalid_field",
        ),
        (
            "holes not bool",
            ok.clone(),
            vec![("model", "unet_spherohq"), ("detect_holes", "maybe")],
            400,
            "invalid_field",
        ),
        (
            "min_area negative",
            ok.clone(),
            vec![("model", "unet_spherohq"), ("min_area", "-1")],
            400,
            "invalid_field",
        ),
        (
            "min_area text",
            ok.clone(),
            vec![("model", "unet_spherohq"), ("min_area", "big")],
            400,
            "invalid_field",
        ),
        (
            "return_mask not bool",
            ok.clone(),
            vec![("model", "unet_spherohq"), ("return_mask", "please")],
            400,
            "invalid_field",
        ),
    ];
    for (name, bytes, fields, code, kind) in cases {
        let (status, body) = s.segment(bytes, &fields).await;
        assert_eq!(status, code, "{name}: {body}");
        assert_error(status, &body, code, kind);
    }
    // A form without the file field.
    let form = reqwest::multipart::Form::new().text("model", "unet_spherohq");
    let (status, body) = s.post_form("/api/v1/segment", form).await;
    assert_error(status, &body, 400, "missing_field");
    assert_eq!(body["field"], json!("file"));
    // A body over the 4 MB limit this sidecar was started with.
    let (status, body) = s
        .segment(vec![0u8; 5_000_000], &[("model", "unet_spherohq")])
        .await;
    assert_error(status, &body, 413, "body_too_large");
    // Not multipart at all.
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/segment", s.url))
        .body("plain")
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status().as_u16(), 400);
    let body: Value = r.json().await.expect("JSON body");
    assert_eq!(body["success"], json!(false));
    // The server is unharmed: a good request still works.
    let (status, _) = s.segment(png(64, 64), &[("model", "unet_spherohq")]).await;
    assert_eq!(status, 200);
}

async fn oip(s: &Sidecar, model: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{}/v2/models/{model}/infer", s.url))
        .json(&body)
        .send()
        .await
        .expect("POST");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn open_inference_protocol_infers_and_refuses_bad_tensors() {
    let s = sidecar().await;
    let n = (3 * SIZE * SIZE) as usize;
    let data: Vec<f32> = (0..2 * n)
        .map(|i| ((i % 97) as f32 - 48.0) / 24.0)
        .collect();
    let (status, body) = oip(s, "unet_spherohq", json!({"id": "r1", "inputs": [{"name": "input", "shape": [2, 3, SIZE, SIZE], "datatype": "FP32", "data": data}]})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], json!("r1"));
    assert_eq!(body["outputs"][0]["shape"], json!([2, 1, SIZE, SIZE]));
    let out = body["outputs"][0]["data"].as_array().expect("data");
    assert_eq!(out.len(), 2 * (SIZE * SIZE) as usize);
    // The same image through the copy of the model gives the same logits.
    let first: Vec<f32> = data[..n].to_vec();
    let (_, again) = oip(s, "unet_copy", json!({"inputs": [{"name": "x", "shape": [1, 3, SIZE, SIZE], "datatype": "FP32", "data": first}]})).await;
    let a: Vec<f64> = out[..(SIZE * SIZE) as usize]
        .iter()
        .filter_map(Value::as_f64)
        .collect();
    let b: Vec<f64> = again["outputs"][0]["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(Value::as_f64)
        .collect();
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    assert!(
        diff < 1e-4,
        "same input, same weights, different logits: {diff}"
    );

    let small: Vec<f32> = vec![0.0; n];
    let cases = [
        (
            json!({"inputs": [{"name": "x", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": small}]}),
            400,
            "invalid_field",
        ),
        (
            json!({"inputs": [{"name": "x", "shape": [1, 3, SIZE, SIZE], "datatype": "INT8", "data": small}]}),
            400,
            "invalid_field",
        ),
        (
            json!({"inputs": [{"name": "x", "shape": [1, 3, SIZE, SIZE], "datatype": "FP32", "data": [1.0, 2.0]}]}),
            400,
            "invalid_field",
        ),
        (json!({"inputs": []}), 400, "invalid_field"),
        (
            json!({"inputs": [{"name": "x", "shape": [1, 3, SIZE, SIZE], "datatype": "FP32", "data": ["a"]}]}),
            400,
            "bad_json",
        ),
        (json!({"nothing": true}), 400, "bad_json"),
    ];
    for (body, code, kind) in cases {
        let (status, answer) = oip(s, "unet_spherohq", body).await;
        assert_error(status, &answer, code, kind);
    }
    let (status, answer) = oip(s, "nope", json!({"inputs": []})).await;
    assert_error(status, &answer, 404, "unknown_model");
    // Errors are counted by type.
    let metrics = s.metrics().await;
    let unknown = r#"gpupool_sidecar_http_requests_total{route="/v2/models/{model}/infer",code="404",error="unknown_model"}"#;
    assert!(metrics.contains(unknown), "{unknown} missing from /metrics");
    let (status, meta) = s.get_json("/v2/models/unet_spherohq").await;
    assert_eq!(status, 200);
    assert_eq!(meta["inputs"][0]["shape"], json!([-1, 3, SIZE, SIZE]));
    assert_eq!(s.get_json("/v2/models/unet_spherohq/ready").await.0, 200);
    assert_eq!(s.get_json("/v2/health/live").await.0, 200);
}

#[tokio::test]
async fn a_broken_model_is_not_ready_with_a_reason_and_the_others_serve() {
    let s = sidecar().await;
    let (status, body) = s.get_json("/v2/models/broken/ready").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["reason"]
            .as_str()
            .is_some_and(|r| r.contains("nonexistent")),
        "{body}"
    );
    let (status, body) = s.segment(png(64, 64), &[("model", "broken")]).await;
    assert_error(status, &body, 503, "model_not_ready");
    let (status, _) = s.segment(png(64, 64), &[("model", "unet_copy")]).await;
    assert_eq!(status, 200);
    let (status, health) = s.get_json("/api/v1/health").await;
    assert_eq!(status, 200);
    assert_eq!(health["status"], json!("degraded"));
    // The pod stays ready for the models it serves (every replica has the same files: taking the
    // pod out would stop the pool's good models too); the failure is reported per model.
    assert_eq!(s.get_json("/v2/health/ready").await.0, 200);
    assert_eq!(s.get_json("/readyz").await.0, 200);
    let (_, telemetry) = s.get_json("/v1/telemetry").await;
    let broken = telemetry["models"]
        .as_array()
        .and_then(|models| models.iter().find(|m| m["name"] == "broken"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (&broken["state"], &broken["ready"]),
        (&json!("Failed"), &json!(false)),
        "{broken}"
    );
}

#[tokio::test]
async fn concurrent_requests_share_batches_and_metrics_tell() {
    // The batcher runs a batch as soon as the slot is free and the queue holds as many requests
    // as the previous batch had: requests that arrive while a batch runs share the next one.
    let s = sidecar().await;
    let before = s.get_json("/v1/telemetry").await.1;
    let count = |t: &Value, field: &str| -> u64 {
        t["models"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["name"] == "unet_slow")
            .filter_map(|m| m[field].as_u64())
            .sum()
    };
    let requests = (0..24).map(|_| s.segment(png(64, 64), &[("model", "unet_slow")]));
    for (status, body) in futures::future::join_all(requests).await {
        assert_eq!(status, 200, "{body}");
    }
    let after = s.get_json("/v1/telemetry").await.1;
    let images = count(&after, "imagesTotal") - count(&before, "imagesTotal");
    let batches = count(&after, "batchesTotal") - count(&before, "batchesTotal");
    assert_eq!(images, 24);
    assert!(
        batches < images,
        "24 concurrent requests ran in {batches} batches: no batching"
    );
    let text = s.metrics().await;
    for name in [
        "gpupool_sidecar_http_requests_total",
        "gpupool_sidecar_queue_depth",
        "gpupool_sidecar_num_requests_waiting",
        "gpupool_sidecar_num_requests_running",
        "gpupool_sidecar_gpu_memory_usage_perc",
        "vllm:num_requests_waiting",
        "gpupool_sidecar_images_total{model=\"unet_slow\"}",
        "gpupool_sidecar_segment_stage_duration_seconds_count{model=\"unet_slow\",stage=\"engine\"} 24",
        "gpupool_sidecar_failed_requests_total{model=\"unet_slow\"} 0",
        "gpupool_sidecar_model_ready{model=\"unet_slow\"} 1",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
}
