//! Reading the original API's multipart form into validated requests, with every way a form can
//! be wrong turned into a 4xx that names the field.

use crate::error::ApiError;
use crate::imaging::MIN_AREA;
use crate::pipeline::SegmentRequest;
use axum::extract::multipart::{Multipart, MultipartError};
use bytes::Bytes;

/// The fields of a `/segment` or `/batch-segment` form.
#[derive(Debug, Default)]
pub struct SegmentForm {
    /// `file` (segment) or `files`/`files[]` (batch), in order.
    pub files: Vec<Bytes>,
    /// `model`, if given.
    pub model: Option<String>,
    /// `threshold`, if given.
    pub threshold: Option<f32>,
    /// `detect_holes`, if given.
    pub detect_holes: Option<bool>,
    /// `min_area` (pixels²; an extension of the original API), if given.
    pub min_area: Option<f64>,
    /// `return_mask` (an extension: add the mask as a PNG to the response), if given.
    pub return_mask: Option<bool>,
}

impl SegmentForm {
    /// The request for one of the form's images, with the original service's defaults for the
    /// fields not given.
    pub fn request(&self, image: Bytes, model: String) -> SegmentRequest {
        SegmentRequest {
            image,
            model,
            threshold: self.threshold.unwrap_or(DEFAULT_THRESHOLD),
            detect_holes: self.detect_holes.unwrap_or(true),
            min_area: self.min_area.unwrap_or(MIN_AREA),
            return_mask: self.return_mask.unwrap_or(false),
        }
    }
}

/// The original service's default model.
pub const DEFAULT_MODEL: &str = "hrnet";
/// The original service's default threshold.
pub const DEFAULT_THRESHOLD: f32 = 0.5;

fn multipart_error(e: MultipartError, limit: usize) -> ApiError {
    if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::BodyTooLarge { limit }
    } else {
        ApiError::BadMultipart(e.body_text())
    }
}

fn text(bytes: &[u8], field: &'static str) -> Result<String, ApiError> {
    std::str::from_utf8(bytes)
        .map(|s| s.trim().to_string())
        .map_err(|_| ApiError::InvalidField {
            field,
            message: "not UTF-8 text".into(),
        })
}

fn number<T: std::str::FromStr>(bytes: &[u8], field: &'static str) -> Result<T, ApiError> {
    let raw = text(bytes, field)?;
    raw.parse().map_err(|_| ApiError::InvalidField {
        field,
        message: format!("{raw:?} is not a number"),
    })
}

fn boolean(bytes: &[u8], field: &'static str) -> Result<bool, ApiError> {
    let raw = text(bytes, field)?;
    parse_bool(&raw).ok_or_else(|| ApiError::InvalidField {
        field,
        message: format!("{raw:?} is not true or false"),
    })
}

/// Parses a boolean as the original (FastAPI) service did.
fn parse_bool(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// Reads the whole form; `file_fields` are the names accepted for image parts.
pub async fn read_form(
    mut multipart: Multipart,
    file_fields: &[&str],
    body_limit: usize,
) -> Result<SegmentForm, ApiError> {
    let mut form = SegmentForm::default();
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| multipart_error(e, body_limit))?
    {
        let name = field.name().unwrap_or_default().to_string();
        let data = field
            .bytes()
            .await
            .map_err(|e| multipart_error(e, body_limit))?;
        match name.as_str() {
            n if file_fields.contains(&n) => form.files.push(data),
            "model" => form.model = Some(text(&data, "model")?),
            "threshold" => form.threshold = Some(number(&data, "threshold")?),
            "min_area" => form.min_area = Some(number(&data, "min_area")?),
            "detect_holes" => form.detect_holes = Some(boolean(&data, "detect_holes")?),
            "return_mask" => form.return_mask = Some(boolean(&data, "return_mask")?),
            // Unknown fields are ignored, as FastAPI did.
            _ => {}
        }
    }
    Ok(form)
}

#[cfg(test)]
mod tests {
    use super::parse_bool;

    #[test]
    fn booleans_as_fastapi_reads_them() {
        assert_eq!(parse_bool("True"), Some(true));
        assert_eq!(parse_bool("0"), Some(false));
        assert_eq!(parse_bool("maybe"), None);
    }
}
