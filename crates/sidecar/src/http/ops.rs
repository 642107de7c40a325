//! Operational endpoints: probes, Prometheus metrics, the telemetry document.

use super::AppState;
use crate::error::ApiError;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use gpupool_api::telemetry::TelemetryReport;
use gpupool_api::telemetry::OPENMETRICS_CONTENT_TYPE;

/// Liveness: the process answers.
pub async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: models loaded and calibrated, and not shutting down.
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, &'static str) {
    if !state.is_ready() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down")
    } else if state.pipeline.backend().ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "models not ready")
    }
}

/// Prometheus text exposition.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let report = state.pipeline.backend().telemetry();
    match state.metrics.render(&report) {
        Ok(text) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
            text,
        )
            .into_response(),
        Err(e) => ApiError::Internal(format!("rendering metrics: {e}")).into_response(),
    }
}

/// The telemetry document the operator collects.
pub async fn telemetry(State(state): State<AppState>) -> Json<TelemetryReport> {
    Json(state.pipeline.backend().telemetry())
}

/// JSON 404 for unknown paths.
pub async fn not_found(uri: axum::http::Uri) -> impl IntoResponse {
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({
            "success": false,
            "error": format!("no route for {}", uri.path()),
            "error_type": "not_found",
        })),
    )
}
