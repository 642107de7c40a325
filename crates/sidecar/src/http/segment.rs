//! `POST /api/v1/segment` and `POST /api/v1/batch-segment`: the original service's API, so its
//! clients work unchanged.

use super::multipart::{read_form, DEFAULT_MODEL};
use super::AppState;
use crate::error::ApiError;
use crate::pipeline::SegmentResponse;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, State};
use axum::Json;
use bytes::Bytes;
use futures::stream::{self, StreamExt};
use serde::Serialize;

/// Most images one batch request may carry.
pub const MAX_BATCH_FILES: usize = 64;

/// Images of one batch request processed at once.
pub const IMAGES_IN_FLIGHT: usize = 8;

/// One image in, its polygons out.
pub async fn segment(
    State(state): State<AppState>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Json<SegmentResponse>, ApiError> {
    let mut form = read_form(multipart?, &["file"], state.limits.max_body_bytes).await?;
    let image = match form.files.len() {
        0 => return Err(ApiError::MissingField { field: "file" }),
        1 => form.files.pop().unwrap_or_default(),
        n => {
            return Err(ApiError::InvalidField {
                field: "file",
                message: format!("{n} files sent; use /api/v1/batch-segment for several"),
            })
        }
    };
    let model = form.model.clone().unwrap_or_else(|| DEFAULT_MODEL.into());
    let request = form.request(image, model);
    let response = state.pipeline.segment(request).await?;
    observe(&state, &response);
    Ok(Json(response))
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
    let mut form = read_form(
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
    let model = form.model.clone().unwrap_or_else(|| DEFAULT_MODEL.into());
    // Request-level problems fail the whole request before any image is processed.
    state
        .pipeline
        .check(&form.request(Bytes::new(), model.clone()))?;
    let files = std::mem::take(&mut form.files);
    let runs = files
        .into_iter()
        .map(|image| state.pipeline.segment(form.request(image, model.clone())));
    // A bounded number of images in flight: enough to fill batches, while one request can
    // neither fill its model's queue (refusals would read as overload to the autoscaler) nor
    // hold all its decoded images in memory at once.
    let results: Vec<BatchItem> = stream::iter(runs)
        .buffered(IMAGES_IN_FLIGHT)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .enumerate()
        .map(|(index, result)| match result {
            Ok(r) => {
                observe(&state, &r);
                BatchItem::Ok(Box::new(r))
            }
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

/// Records where an answered request's time went (the stage histogram of `/metrics`).
fn observe(state: &AppState, r: &SegmentResponse) {
    state.metrics.observe_segment(
        &r.model_used,
        r.preprocessing_time,
        r.inference_time,
        r.postprocessing_time,
    );
}
