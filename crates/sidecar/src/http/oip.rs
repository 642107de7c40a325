//! The Open Inference Protocol (KServe v2) REST endpoints: health, metadata and tensor inference,
//! so standard clients and gateways can drive the models directly with pre-processed tensors.

use super::segment::IMAGES_IN_FLIGHT;
use super::AppState;
use crate::error::ApiError;
use crate::pipeline::blocking;
use crate::tensor::{FlatTensor, InferResponse, JoinedTensor, OutputTensor};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::stream::{self, StreamExt, TryStreamExt};
use serde::Deserialize;
use serde_json::{json, Value};

/// Most images one OIP request may carry.
pub const MAX_OIP_BATCH: usize = 64;

/// `GET /v2`: server metadata.
pub async fn server_metadata() -> Json<Value> {
    Json(json!({
        "name": "gpupool-sidecar",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": [],
    }))
}

/// `GET /v2/health/live`.
pub async fn live() -> StatusCode {
    StatusCode::OK
}

/// `GET /v2/health/ready`: 200 when every model is ready.
pub async fn ready(State(state): State<AppState>) -> StatusCode {
    if state.is_ready() && state.pipeline.backend().ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// `GET /v2/models/{model}`: name, platform and tensor signatures.
pub async fn model_metadata(
    State(state): State<AppState>,
    Path(model): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let m = state.pipeline.model(&model)?;
    let (w, h) = (
        i64::from(m.geometry.width()),
        i64::from(m.geometry.height()),
    );
    Ok(Json(json!({
        "name": m.name,
        "versions": ["1"],
        "platform": match m.format {
            gpupool_api::ModelFormat::Torchscript => "pytorch_torchscript",
            gpupool_api::ModelFormat::Aotinductor => "pytorch_aotinductor",
        },
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 3, h, w]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 1, h, w]}],
    })))
}

/// `GET /v2/models/{model}/ready`: 200 when the model can serve, 503 with the reason if not.
pub async fn model_ready(
    State(state): State<AppState>,
    Path(model): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let m = state.pipeline.model(&model)?;
    let ready = m.serviceable();
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok((
        code,
        Json(json!({"name": m.name, "ready": ready, "reason": m.reason})),
    ))
}

/// One input tensor of an infer request.
#[derive(Debug, Deserialize)]
pub struct InputTensor {
    /// `[N, 3, H, W]`.
    pub shape: Vec<i64>,
    /// Must be `FP32`.
    pub datatype: String,
    /// Row-major values, flat or nested.
    pub data: FlatTensor,
}

/// An infer request.
#[derive(Debug, Deserialize)]
pub struct InferRequest {
    /// Echoed in the response.
    #[serde(default)]
    pub id: Option<String>,
    /// Exactly one tensor.
    pub inputs: Vec<InputTensor>,
}

/// `POST /v2/models/{model}/infer`: N pre-processed images in, N logit maps out.
pub async fn infer(
    State(state): State<AppState>,
    Path(model): Path<String>,
    body: Result<Json<InferRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::BodyTooLarge {
                limit: state.limits.max_body_bytes,
            }
        } else {
            ApiError::BadJson(rejection.body_text())
        }
    })?;
    let m = state.pipeline.model(&model)?;
    let [input] =
        <[InputTensor; 1]>::try_from(request.inputs).map_err(|inputs| ApiError::InvalidField {
            field: "inputs",
            message: format!("expected exactly one input tensor, got {}", inputs.len()),
        })?;
    if input.datatype != "FP32" {
        return Err(ApiError::InvalidField {
            field: "datatype",
            message: format!("{:?} is not supported; send FP32", input.datatype),
        });
    }
    let (w, h) = (m.geometry.width() as i64, m.geometry.height() as i64);
    let batch = match input.shape.as_slice() {
        [n, 3, hh, ww] if *hh == h && *ww == w && (1..=MAX_OIP_BATCH as i64).contains(n) => {
            *n as usize
        }
        _ => {
            return Err(ApiError::InvalidField {
                field: "shape",
                message: format!(
                    "{:?} does not match [N, 3, {h}, {w}] with 1 <= N <= {MAX_OIP_BATCH}",
                    input.shape
                ),
            })
        }
    };
    let per_image = (3 * h * w) as usize;
    let values = input.data.into_inner();
    if values.len() != batch * per_image {
        return Err(ApiError::InvalidField {
            field: "data",
            message: format!(
                "{} values for shape {:?}, expected {}",
                values.len(),
                input.shape,
                batch * per_image
            ),
        });
    }
    let backend = state.pipeline.backend().clone();
    // As many images in flight as a batch request's (`IMAGES_IN_FLIGHT`): a large request must
    // not fill its model's queue by itself.
    let runs: Vec<_> = values
        .chunks(per_image)
        .map(|image| backend.infer(&m.name, image.to_vec()))
        .collect();
    let results: Vec<_> = stream::iter(runs)
        .buffered(IMAGES_IN_FLIGHT)
        .try_collect()
        .await?;
    // Tens of milliseconds of CPU for a few 1024² maps: written on the blocking pool, not on an
    // async worker.
    let (name, id) = (m.name, request.id);
    let body = blocking(move || {
        serde_json::to_vec(&InferResponse {
            model_name: &name,
            model_version: "1",
            id,
            outputs: [OutputTensor {
                name: "logits",
                datatype: "FP32",
                shape: [batch as i64, 1, h, w],
                data: JoinedTensor(&results),
            }],
        })
    })
    .await?
    .map_err(|e| ApiError::Internal(format!("writing the response: {e}")))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}
