//! The one JSON error shape of the API, `{"error": "<kind>", "detail": "<what went wrong and
//! what to do>"}` (plus `"job"` when the error is about an evaluation job), and the mapping of
//! every failure to its HTTP status.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::batcher::SubmitError;
use crate::preprocess::DecodeError;

/// An error answer. `kind` is a stable machine-readable word; `detail` is for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub detail: String,
    /// Seconds for a `Retry-After` header (load shedding).
    pub retry_after: Option<u32>,
    /// The evaluation job the error is about (a second `POST /evaluate` names the running one).
    pub job: Option<String>,
}

/// The kind of an error response, left in the response extensions for the metrics layer.
#[derive(Debug, Clone, Copy)]
pub struct ErrorKind(pub &'static str);

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    detail: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    job: Option<&'a str>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, detail: impl Into<String>) -> Self {
        ApiError { status, kind, detail: detail.into(), retry_after: None, job: None }
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", detail)
    }

    pub fn too_large(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", detail)
    }

    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", detail)
    }

    pub fn overloaded(detail: impl Into<String>) -> Self {
        ApiError { retry_after: Some(1), ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", detail) }
    }

    /// A decode failure of upload number `which` (for batches), mapped as [`DecodeError`] documents.
    pub fn decode(error: &DecodeError, which: Option<usize>) -> Self {
        let detail = match which {
            Some(i) => format!("image {i}: {error}"),
            None => error.to_string(),
        };
        match error {
            DecodeError::Empty => Self::new(StatusCode::BAD_REQUEST, "empty_image", detail),
            DecodeError::Truncated { .. } | DecodeError::Corrupt { .. } => {
                Self::new(StatusCode::BAD_REQUEST, "bad_image", detail)
            }
            DecodeError::UnsupportedFormat { .. } => {
                Self::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", detail)
            }
            DecodeError::TooManyBytes { .. } | DecodeError::TooManyPixels { .. } | DecodeError::MemoryLimit { .. } => {
                Self::too_large(detail)
            }
        }
    }
}

impl From<SubmitError> for ApiError {
    fn from(error: SubmitError) -> Self {
        match error {
            SubmitError::Full(_) | SubmitError::Closed => ApiError::overloaded(error.to_string()),
            SubmitError::Inference(_) => ApiError::internal(error.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body { error: self.kind, detail: &self.detail, job: self.job.as_deref() };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response.extensions_mut().insert(ErrorKind(self.kind));
        response
    }
}
