//! `GET /api/v1/health`, `/api/v1/models`, `/api/v1/status`: the original service's
//! informational endpoints.

use super::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

/// Liveness plus which models can serve; 503 when none can.
pub async fn health(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let backend = state.pipeline.backend();
    let models = backend.models();
    let serving: Vec<&str> = models
        .iter()
        .filter(|m| m.serviceable())
        .map(|m| m.name.as_str())
        .collect();
    let status = if serving.len() == models.len() {
        "healthy"
    } else if serving.is_empty() {
        "unhealthy"
    } else {
        "degraded"
    };
    let code = if serving.is_empty() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (
        code,
        Json(json!({
            "status": status,
            "models_loaded": serving,
            "gpu_available": backend.gpu_enabled(),
            "ready": backend.ready(),
        })),
    )
}

/// The configured models with their geometry, precision and state.
pub async fn models(State(state): State<AppState>) -> Json<Value> {
    let models: Vec<Value> = state
        .pipeline
        .backend()
        .models()
        .into_iter()
        .map(|m| {
            json!({
                "name": m.name,
                "input_size": {"width": m.geometry.width(), "height": m.geometry.height()},
                "precision": m.precision,
                "format": m.format,
                "max_batch": m.max_batch,
                "state": m.state,
                "available": m.serviceable(),
                "reason": m.reason,
            })
        })
        .collect();
    Json(json!({"models": models, "default_model": super::multipart::DEFAULT_MODEL}))
}

/// Server status: device, memory and per-model counters (the telemetry document, summarised).
pub async fn status(State(state): State<AppState>) -> Json<Value> {
    let report = state.pipeline.backend().telemetry();
    Json(json!({
        "status": if report.ready { "ready" } else { "starting" },
        "gpu_enabled": report.device.is_some(),
        "device": report.device,
        "memory": report.allocator,
        "circuit_open": report.circuit_open,
        "models": report.models.iter().map(|m| json!({
            "name": m.name,
            "state": m.state,
            "precision": m.precision,
            "queue_depth": m.queue_depth,
            "in_flight": m.in_flight,
            "images_total": m.images_total,
            "latency_p50_ms": m.latency_p50_ms,
            "latency_p99_ms": m.latency_p99_ms,
        })).collect::<Vec<_>>(),
    }))
}
