//! `POST /api/v1/segment` and `POST /api/v1/batch-segment`: the original service's API, so its
//! clients work unchanged.

use super::multipart::{read_form, DEFAULT_MODEL, DEFAULT_THRESHOLD};
use super::AppState;
use crate::error::ApiError;
use crate::pipeline::{SegmentRequest, SegmentResponse};
use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, State};
use axum::Json;
use futures::future::join_all;
use serde::Serialize;

/// Most images one batch request may carry.
pub const MAX_BATCH_FILES: usize = 64;

/// One image in, its polygons out.
pub async fn segment(
    State(state): State<AppState>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Json<SegmentResponse>, ApiError> {
    let form = read_form(multipart?, &["file"], state.limits.max_body_bytes).await?;
    let image = match form.files.len() {
        0 => return Err(ApiError::MissingField { field: "file" }),
        1 => form.files.into_iter().next().unwrap_or_default(),
        n => {
            return Err(ApiError::InvalidField {
                field: "file",
                message: format!("{n} files sent; use /api/v1/batch-segment for several"),
            })
        }
    };
    let request = SegmentRequest {
        image,
        model: form.model.unwrap_or_else(|| DEFAULT_MODEL.into()),
        threshold: form.threshold.unwrap_or(DEFAULT_THRESHOLD),
        detect_holes: form.detect_holes.unwrap_or(true),
    };
    state.pipeline.segment(request).await.map(Json)
}

/// One entry of a batch response: the result, or why that image failed.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum BatchItem {
    /// The image's result.
    Ok(Box<SegmentResponse>),
    /// That image's error (other images are unaffected).
    Err {
        /// Always false.
        success: bool,
        /// Position of the file in the request.
        index: usize,
        /// What went wrong.
        error: String,
        /// Stable identifier.
        error_type: &'static str,
    },
}

/// The batch response.
#[derive(Debug, Serialize)]
pub struct BatchResponse {
    /// True when every image succeeded.
    pub success: bool,
    /// Images in the request.
    pub total: usize,
    /// Images that succeeded.
    pub successful: usize,
    /// One entry per image, in request order.
    pub results: Vec<BatchItem>,
}

/// Several images in one request; they run concurrently, so they share GPU batches.
pub async fn batch_segment(
    State(state): State<AppState>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Json<BatchResponse>, ApiError> {
    let form = read_form(
        multipart?,
        &["files", "files[]", "file"],
        state.limits.max_body_bytes,
    )
    .await?;
    if form.files.is_empty() {
        return Err(ApiError::MissingField { field: "files" });
    }
    if form.files.len() > MAX_BATCH_FILES {
        return Err(ApiError::InvalidField {
            field: "files",
            message: format!("{} files sent; at most {MAX_BATCH_FILES}", form.files.len()),
        });
    }
    let model = form.model.unwrap_or_else(|| DEFAULT_MODEL.into());
    // Request-level problems fail the whole request before any image is processed.
    state.pipeline.model(&model)?;
    let threshold = form.threshold.unwrap_or(DEFAULT_THRESHOLD);
    let detect_holes = form.detect_holes.unwrap_or(true);
    let runs = form.files.into_iter().map(|image| {
        state.pipeline.segment(SegmentRequest {
            image,
            model: model.clone(),
            threshold,
            detect_holes,
        })
    });
    let results: Vec<BatchItem> = join_all(runs)
        .await
        .into_iter()
        .enumerate()
        .map(|(index, result)| match result {
            Ok(r) => BatchItem::Ok(Box::new(r)),
            Err(e) => BatchItem::Err {
                success: false,
                index,
                error: e.to_string(),
                error_type: e.error_type(),
            },
        })
        .collect();
    let successful = results
        .iter()
        .filter(|r| matches!(r, BatchItem::Ok(_)))
        .count();
    Ok(Json(BatchResponse {
        success: successful == results.len(),
        total: results.len(),
        successful,
        results,
    }))
}
