//! The HTTP face: routes, shared state and the limits applied at the door.

mod info;
mod multipart;
mod oip;
mod ops;
mod segment;

use crate::error::{ApiError, ErrorType};
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Semaphore;

/// Limits enforced before any work is done for a request.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Largest request body accepted, bytes.
    pub max_body_bytes: usize,
    /// Requests processed at once; more get 429 at once rather than queueing without bound.
    pub max_in_flight: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: 64 << 20,
            max_in_flight: 256,
        }
    }
}

/// State every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The segmentation pipeline (and through it the backend).
    pub pipeline: Pipeline,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// False once shutdown has begun: readiness fails so the Service stops sending traffic.
    pub ready: Arc<AtomicBool>,
    /// False once the settle period after the signal has passed: new work gets 503.
    pub accepting: Arc<AtomicBool>,
    /// Admission at the door.
    pub in_flight: Arc<Semaphore>,
    /// The limits in force.
    pub limits: HttpLimits,
}

impl AppState {
    /// State over `pipeline` with `limits`.
    pub fn new(pipeline: Pipeline, metrics: Arc<Metrics>, limits: HttpLimits) -> Self {
        Self {
            pipeline,
            metrics,
            ready: Arc::new(AtomicBool::new(true)),
            accepting: Arc::new(AtomicBool::new(true)),
            in_flight: Arc::new(Semaphore::new(limits.max_in_flight)),
            limits,
        }
    }

    /// Whether the process still takes new work.
    pub fn is_accepting(&self) -> bool {
        self.accepting.load(Ordering::SeqCst)
    }

    /// Whether readiness probes should pass (false from the termination signal on).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && self.is_accepting()
    }
}

/// Every route of the sidecar.
pub fn router(state: AppState) -> Router {
    let work = Router::new()
        .route("/api/v1/segment", post(segment::segment))
        .route("/api/v1/batch-segment", post(segment::batch_segment))
        .route("/v2/models/{model}/infer", post(oip::infer))
        .route_layer(middleware::from_fn_with_state(state.clone(), admit));
    Router::new()
        .merge(work)
        .route("/api/v1/health", get(info::health))
        .route("/api/v1/models", get(info::models))
        .route("/api/v1/status", get(info::status))
        .route("/v2", get(oip::server_metadata))
        .route("/v2/health/live", get(oip::live))
        .route("/v2/health/ready", get(oip::ready))
        .route("/v2/models/{model}", get(oip::model_metadata))
        .route("/v2/models/{model}/ready", get(oip::model_ready))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/v1/telemetry", get(ops::telemetry))
        .fallback(ops::not_found)
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(DefaultBodyLimit::max(state.limits.max_body_bytes))
        .with_state(state)
}

/// Back-pressure at the door: a permit per request for its whole life, 429 when none is left,
/// 503 once shutdown has begun.
async fn admit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if !state.is_accepting() {
        return ApiError::Backend(crate::backend::BackendError::ShuttingDown).into_response();
    }
    match state.in_flight.clone().try_acquire_owned() {
        Ok(_permit) => next.run(request).await,
        Err(_) => ApiError::Overloaded.into_response(),
    }
}

/// Counts and times every request by route template, status and error type.
async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let started = Instant::now();
    let response = next.run(request).await;
    let error = response.extensions().get::<ErrorType>().map(|e| e.0);
    state
        .metrics
        .observe_request(&route, response.status().as_u16(), error, started.elapsed());
    response
}
