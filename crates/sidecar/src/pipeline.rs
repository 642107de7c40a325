//! One image's way through the sidecar: decode → engine (resize, normalise, model, sigmoid,
//! resize back, threshold, all on the device) → polygons.
//!
//! Each image first reserves the host memory it will hold (from its header, before decoding) in
//! the process-wide [`ImageMemory`], and keeps it until its answer is built. (A request dropped
//! while the engine runs its batch releases it while that batch still holds the pixels: one
//! batch's time at most.)
//!
//! Header parsing, decoding and contour extraction run on tokio's blocking pool, so the async
//! workers keep accepting requests and the batcher keeps the GPU fed while the CPU works on other
//! images.

use crate::backend::{Backend, ModelInfo};
use crate::error::ApiError;
use crate::image_memory::ImageMemory;
use crate::imaging::{
    decode_image, mask_png, polygons_from_mask, read_header, DecodeLimits, Polygon,
    PostprocessOptions,
};
use bytes::Bytes;
use gpupool_executor::RawImageError;
use serde::Serialize;
use std::sync::Arc;
use std::time::Instant;

/// Thresholds the original API accepts.
pub const THRESHOLD_RANGE: std::ops::RangeInclusive<f32> = 0.1..=0.9;
/// Smallest-area filters accepted (pixels²); the default is the original service's
/// [`crate::imaging::MIN_AREA`].
pub const MIN_AREA_RANGE: std::ops::RangeInclusive<f64> = 0.0..=1e12;

/// A validated segmentation request.
#[derive(Debug, Clone)]
pub struct SegmentRequest {
    /// The uploaded file's bytes.
    pub image: Bytes,
    /// The model to run.
    pub model: String,
    /// Probability above which a pixel is foreground.
    pub threshold: f32,
    /// Report holes as internal polygons.
    pub detect_holes: bool,
    /// Outlines enclosing fewer pixels² are dropped.
    pub min_area: f64,
    /// Add the mask to the response as a PNG.
    pub return_mask: bool,
}

/// Width and height of the uploaded image.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ImageSize {
    /// Pixels across.
    pub width: u32,
    /// Pixels down.
    pub height: u32,
}

/// The original service's response to `POST /api/v1/segment`.
#[derive(Debug, Clone, Serialize)]
pub struct SegmentResponse {
    /// Always true (failures are error responses).
    pub success: bool,
    /// The model that ran.
    pub model_used: String,
    /// The threshold applied.
    pub threshold_used: f32,
    /// Size of the uploaded image.
    pub image_size: ImageSize,
    /// Outlines found.
    pub polygons: Vec<Polygon>,
    /// Seconds from receipt to response (server side).
    pub processing_time: f64,
    /// Seconds spent waiting for and running the model.
    pub inference_time: f64,
    /// Seconds spent decoding and resizing.
    pub preprocessing_time: f64,
    /// Seconds spent turning the mask into polygons.
    pub postprocessing_time: f64,
    /// Whether a GPU ran the model.
    pub gpu_enabled: bool,
    /// Size of the batch this image ran in.
    pub batch_size_used: u32,
    /// Set when the result may surprise (e.g. nothing found).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    /// The mask at the image's size as a base64 PNG (255 = foreground), when `return_mask` asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mask_png: Option<String>,
}

/// Runs segmentation requests against a backend.
#[derive(Clone)]
pub struct Pipeline {
    backend: Arc<dyn Backend>,
    limits: DecodeLimits,
    memory: ImageMemory,
}

impl Pipeline {
    /// A pipeline over `backend` refusing images beyond `limits`, its images sharing `memory`.
    pub fn new(backend: Arc<dyn Backend>, limits: DecodeLimits, memory: ImageMemory) -> Self {
        Self {
            backend,
            limits,
            memory,
        }
    }

    /// The backend the pipeline runs on.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Looks a model up, with the 404 that names the available ones.
    pub fn model(&self, name: &str) -> Result<ModelInfo, ApiError> {
        self.backend
            .model(name)
            .ok_or_else(|| ApiError::UnknownModel {
                model: name.to_string(),
                available: self
                    .backend
                    .models()
                    .iter()
                    .map(|m| m.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// Checks what a segmentation request asks before its image is touched: threshold and
    /// minimum area in range, the model known and serving. A batch request checks once for all
    /// its images, so a problem of the whole request fails the whole request (4xx or 503).
    pub fn check(&self, request: &SegmentRequest) -> Result<ModelInfo, ApiError> {
        within("threshold", request.threshold, &THRESHOLD_RANGE)?;
        within("min_area", request.min_area, &MIN_AREA_RANGE)?;
        let model = self.model(&request.model)?;
        if !model.serviceable() {
            return Err(crate::backend::BackendError::ModelNotReady {
                model: model.name.clone(),
                reason: model.reason.clone().unwrap_or_else(|| "loading".into()),
            }
            .into());
        }
        Ok(model)
    }

    /// Segments one image.
    pub async fn segment(&self, request: SegmentRequest) -> Result<SegmentResponse, ApiError> {
        let started = Instant::now();
        // Refuse bad options and unknown or broken models before spending CPU on the image.
        let model = self.check(&request)?;

        let limits = self.limits;
        let image = request.image;
        // The header alone (no pixel decoded yet) says what the image will hold, file included.
        // That much is reserved before decoding and held by each piece of work on the image
        // until the answer is built, so CPU work that outlives a dropped request still counts.
        let header = {
            let image = image.clone();
            blocking(move || read_header(&image, &limits)).await??
        };
        let needed = header
            .host_bytes()
            .saturating_add(u64::try_from(image.len()).unwrap_or(u64::MAX));
        let memory = Arc::new(self.memory.reserve(needed).await?);
        let held = Arc::clone(&memory);
        let raw = blocking(move || {
            let _held = held;
            decode_image(&image, &limits)?
                .into_raw()
                .map_err(|e| match e {
                    // Out of host memory for the samples: a moment's overload, worth a retry.
                    RawImageError::HostMemory(_) => ApiError::Overloaded,
                    e => ApiError::Internal(format!("decoded image: {e}")),
                })
        })
        .await??;
        let size = ImageSize {
            width: raw.width(),
            height: raw.height(),
        };
        let preprocessing_time = started.elapsed().as_secs_f64();

        let inference_started = Instant::now();
        let segmentation = self
            .backend
            .segment(&model.name, raw, request.threshold)
            .await?;
        let inference_time = inference_started.elapsed().as_secs_f64();
        let batch_size_used = segmentation.batch_size;

        let post_started = Instant::now();
        let options = PostprocessOptions::new(request.detect_holes, request.min_area);
        let return_mask = request.return_mask;
        let (polygons, mask_png) = blocking(move || {
            let _held = memory;
            let s = &segmentation;
            let mask = s.mask();
            let polygons =
                polygons_from_mask(&mask, &s.probabilities, s.width, s.height, &options)?;
            let png = return_mask
                .then(|| mask_png(&mask, s.width, s.height))
                .transpose()
                .map_err(|e| ApiError::Internal(format!("encoding the mask: {e}")))?;
            Ok::<_, ApiError>((polygons, png))
        })
        .await??;
        let postprocessing_time = post_started.elapsed().as_secs_f64();

        let warning = polygons
            .is_empty()
            .then(|| "no spheroid found at this threshold".to_string());
        Ok(SegmentResponse {
            success: true,
            model_used: model.name,
            threshold_used: request.threshold,
            image_size: size,
            polygons,
            processing_time: started.elapsed().as_secs_f64(),
            inference_time,
            preprocessing_time,
            postprocessing_time,
            gpu_enabled: self.backend.gpu_enabled(),
            batch_size_used,
            warning,
            mask_png,
        })
    }
}

/// The 400 that names `field` when `value` is outside `range` (NaN is outside every range).
fn within<T: PartialOrd + std::fmt::Display>(
    field: &'static str,
    value: T,
    range: &std::ops::RangeInclusive<T>,
) -> Result<(), ApiError> {
    if range.contains(&value) {
        return Ok(());
    }
    Err(ApiError::InvalidField {
        field,
        message: format!("{value} is outside {}..={}", range.start(), range.end()),
    })
}

/// Runs CPU-heavy work on the blocking pool; a panic there becomes a 500, not a crash.
pub async fn blocking<T, F>(work: F) -> Result<T, ApiError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::Internal(format!("worker task failed: {e}")))
}
