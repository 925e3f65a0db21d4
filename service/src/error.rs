use std::collections::BTreeMap;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An HTTP error with a stable machine-readable code. Internal details go to
/// the log, never into the body.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable, snake_case: `validation_failed`, `not_found`, `payload_too_large`.
    pub code: &'static str,
    /// For people; safe to show.
    pub message: String,
    /// Per-field problems (422).
    pub fields: Option<BTreeMap<String, String>>,
}

/// The body of every error response.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable, snake_case: `validation_failed`, `not_found`, `payload_too_large`, ...
    pub code: String,
    /// For people; safe to show.
    pub message: String,
    /// Per-field problems, for `validation_failed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fields: Option<BTreeMap<String, String>>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            fields: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 422 with what is wrong with each field.
    pub fn validation(fields: BTreeMap<String, String>) -> Self {
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "validation_failed",
            message: "some fields are invalid; see `fields`".into(),
            fields: Some(fields),
        }
    }

    /// 500 or 503; logs `err` and says nothing of it to the client.
    pub fn internal(err: &dyn std::error::Error) -> Self {
        tracing::error!(error = %err, "request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; it has been logged",
        )
    }

    /// 503 for a dependency that may come back (a database, the feed).
    pub fn unavailable(err: &dyn std::error::Error) -> Self {
        tracing::warn!(error = %err, "dependency unavailable");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "temporarily unavailable; retry later",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
                fields: self.fields,
            },
        };
        (self.status, axum::Json(body)).into_response()
    }
}
