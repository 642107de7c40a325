//! The host-memory budget for images in flight, through the real sidecar: with room for one image
//! at a time, concurrent uploads wait their turn and are all answered; an image that could never
//! fit gets 413 naming the problem, and the sidecar keeps serving.

mod common;

use common::{config, model_at, unet_path_at, Sidecar};
use gpupool_sidecar::imaging::{read_header, DecodeLimits};
use gpupool_tests::images::spheroid_png as png;
use std::sync::Arc;

#[tokio::test]
async fn images_wait_for_host_memory_and_one_too_large_is_refused() {
    // A model slow enough on the CPU that each image holds its memory for a while.
    let cfg = config(vec![model_at("unet", &unet_path_at(256), 8, 256)]);
    let image = png(320, 240);
    let one = read_header(&image, &DecodeLimits::default())
        .expect("header")
        .host_bytes();
    // Room for one such image, not two.
    let budget = one + one / 2;
    let s =
        Arc::new(Sidecar::start(&cfg, &["--max-image-memory-bytes", &budget.to_string()]).await);
    s.wait_ready().await;

    let capacity = s
        .metric("gpupool_sidecar_image_memory_capacity_bytes")
        .await
        .expect("capacity gauge");
    assert!(capacity <= budget as f64 && capacity > one as f64);

    let requests: Vec<_> = (0..6)
        .map(|_| {
            let (s, image) = (Arc::clone(&s), image.clone());
            tokio::spawn(async move { s.segment(image, &[("model", "unet")]).await })
        })
        .collect();
    for r in requests {
        let (status, body) = r.await.expect("request task");
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["image_size"]["width"], 320);
    }
    let waits = s
        .metric("gpupool_sidecar_image_memory_waits_total")
        .await
        .expect("waits counter");
    assert!(
        waits >= 1.0,
        "six concurrent images with room for one: some must have waited"
    );
    assert_eq!(
        s.metric("gpupool_sidecar_image_memory_reserved_bytes")
            .await,
        Some(0.0),
        "every answered image released its memory"
    );

    // Twice the size in each direction: four times the memory, more than the whole budget.
    let (status, body) = s.segment(png(640, 480), &[("model", "unet")]).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error_type"], "image_memory_exceeded", "{body}");
    assert_eq!(body["field"], "file", "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("host memory"),
        "{body}"
    );
    let (status, body) = s.segment(image, &[("model", "unet")]).await;
    assert_eq!(status, 200, "the refusal changed nothing: {body}");
}
