//! One error type for every HTTP failure: it decides the status code, the JSON body and the
//! metric label together, so they cannot drift apart.

use crate::backend::BackendError;
use crate::imaging::{DecodeError, PostprocessError};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::time::Duration;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The upload is not a usable image.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A required multipart field or JSON member is absent.
    #[error("missing field {field:?}")]
    MissingField {
        /// The field.
        field: &'static str,
    },
    /// A field is present but its value is not acceptable.
    #[error("invalid {field:?}: {message}")]
    InvalidField {
        /// The field.
        field: &'static str,
        /// What is wrong and what is allowed.
        message: String,
    },
    /// The multipart body itself is malformed (or was cut short).
    #[error("malformed multipart body: {0}")]
    BadMultipart(String),
    /// The body is over the size limit.
    #[error("request body is larger than the limit of {limit} bytes")]
    BodyTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// A JSON body could not be parsed.
    #[error("malformed JSON body: {0}")]
    BadJson(String),
    /// No such model.
    #[error("unknown model {model:?}; available: {available}")]
    UnknownModel {
        /// The model asked for.
        model: String,
        /// The configured models, comma separated.
        available: String,
    },
    /// The engine refused or failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The image alone needs more host memory than the process gives all images in flight.
    #[error(transparent)]
    ImageMemory(#[from] crate::image_memory::ImageMemoryError),
    /// Too many requests in flight in this process.
    #[error("the server is at its concurrency limit; retry shortly")]
    Overloaded,
    /// Post-processing failed (a mismatch between model output and request: a server bug).
    #[error("post-processing failed: {0}")]
    Postprocess(#[from] PostprocessError),
    /// A CPU task panicked or was cancelled.
    #[error("internal error: {0}")]
    Internal(String),
}

/// An error response's `error_type`, kept in the response's extensions so the request metrics
/// can count errors by type without parsing bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorType(pub &'static str);

/// The JSON body of every error response.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    /// Always false (the original API's clients test `success`).
    pub success: bool,
    /// A sentence for people.
    pub error: String,
    /// A stable identifier for programs (also the `error` label of the request counter).
    pub error_type: &'static str,
    /// The request field at fault, when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<&'static str>,
}

impl From<axum::extract::multipart::MultipartRejection> for ApiError {
    fn from(rejection: axum::extract::multipart::MultipartRejection) -> Self {
        ApiError::BadMultipart(rejection.body_text())
    }
}

impl ApiError {
    /// HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Decode(
                DecodeError::TooManyPixels { .. } | DecodeError::TooMuchMemory { .. },
            )
            | ApiError::ImageMemory(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Decode(DecodeError::UnsupportedFormat) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Decode(_)
            | ApiError::MissingField { .. }
            | ApiError::InvalidField { .. }
            | ApiError::BadMultipart(_)
            | ApiError::BadJson(_) => StatusCode::BAD_REQUEST,
            ApiError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnknownModel { .. } | ApiError::Backend(BackendError::UnknownModel(_)) => {
                StatusCode::NOT_FOUND
            }
            ApiError::Backend(BackendError::BadInput { .. } | BackendError::BadRequest(_)) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::Overloaded | ApiError::Backend(BackendError::QueueFull(_)) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::Backend(
                BackendError::ModelNotReady { .. }
                | BackendError::CircuitOpen { .. }
                | BackendError::ShuttingDown,
            ) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Backend(BackendError::Inference(_))
            | ApiError::Postprocess(_)
            | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Stable identifier for the body's `error_type` and the request counter's `error` label.
    pub fn error_type(&self) -> &'static str {
        match self {
            ApiError::Decode(e) => e.error_type(),
            ApiError::ImageMemory(_) => "image_memory_exceeded",
            ApiError::MissingField { .. } => "missing_field",
            ApiError::InvalidField { .. } => "invalid_field",
            ApiError::BadMultipart(_) => "bad_multipart",
            ApiError::BodyTooLarge { .. } => "body_too_large",
            ApiError::BadJson(_) => "bad_json",
            ApiError::UnknownModel { .. } | ApiError::Backend(BackendError::UnknownModel(_)) => {
                "unknown_model"
            }
            ApiError::Backend(BackendError::ModelNotReady { .. }) => "model_not_ready",
            ApiError::Backend(BackendError::QueueFull(_)) => "queue_full",
            ApiError::Backend(BackendError::CircuitOpen { .. }) => "gpu_memory_pressure",
            ApiError::Backend(BackendError::ShuttingDown) => "shutting_down",
            ApiError::Backend(BackendError::BadInput { .. }) => "bad_input",
            ApiError::Backend(BackendError::BadRequest(_)) => "bad_request",
            ApiError::Backend(BackendError::Inference(_)) => "inference_failed",
            ApiError::Overloaded => "overloaded",
            ApiError::Postprocess(_) => "postprocess_failed",
            ApiError::Internal(_) => "internal",
        }
    }

    fn field(&self) -> Option<&'static str> {
        match self {
            ApiError::MissingField { field } | ApiError::InvalidField { field, .. } => Some(field),
            ApiError::Decode(_) | ApiError::ImageMemory(_) => Some("file"),
            ApiError::UnknownModel { .. } => Some("model"),
            _ => None,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::Backend(BackendError::CircuitOpen { retry_after }) => Some(*retry_after),
            ApiError::Overloaded
            | ApiError::Backend(BackendError::QueueFull(_))
            | ApiError::Backend(BackendError::ModelNotReady { .. })
            | ApiError::Backend(BackendError::ShuttingDown) => Some(Duration::from_secs(1)),
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %self, error_type = self.error_type(), "request failed");
        }
        let body = ErrorBody {
            success: false,
            error: self.to_string(),
            error_type: self.error_type(),
            field: self.field(),
        };
        let retry_after = self.retry_after();
        let error_type = ErrorType(body.error_type);
        let mut response = (status, axum::Json(body)).into_response();
        response.extensions_mut().insert(error_type);
        if let Some(after) = retry_after {
            let secs = after.as_secs().max(1).to_string();
            if let Ok(value) = HeaderValue::from_str(&secs) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_client_error_is_4xx_and_named() {
        let cases: Vec<ApiError> = vec![
            ApiError::Decode(DecodeError::EmptyBody),
            ApiError::MissingField { field: "file" },
            ApiError::InvalidField {
                field: "threshold",
                message: "must be 0.1..0.9".into(),
            },
            ApiError::BadMultipart("cut".into()),
            ApiError::BodyTooLarge { limit: 10 },
            ApiError::UnknownModel {
                model: "x".into(),
                available: "a".into(),
            },
            ApiError::Overloaded,
            ApiError::ImageMemory(crate::image_memory::ImageMemoryError {
                needed_bytes: 2,
                capacity_bytes: 1,
            }),
        ];
        for e in cases {
            assert!(e.status().is_client_error(), "{e}: {}", e.status());
            assert!(!e.error_type().is_empty());
        }
    }

    #[test]
    fn circuit_open_is_503_with_retry_after() {
        let e = ApiError::Backend(BackendError::CircuitOpen {
            retry_after: Duration::from_secs(3),
        });
        let response = e.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
    }
}
