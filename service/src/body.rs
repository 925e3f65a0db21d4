use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use serde::de::DeserializeOwned;

use crate::ApiError;

/// A request body decoded from JSON or `application/x-www-form-urlencoded`,
/// read within the route's `DefaultBodyLimit`. Oversized bodies get 413,
/// undecodable ones 400, other media types 415 — all with the error body.
#[derive(Debug)]
pub struct JsonOrForm<T>(pub T);

impl<S, T> FromRequest<S> for JsonOrForm<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let media = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
            .unwrap_or_default();
        let json = match media.as_str() {
            "application/json" => true,
            "application/x-www-form-urlencoded" => false,
            _ => {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    "send application/json or application/x-www-form-urlencoded",
                ));
            }
        };
        let bytes = Bytes::from_request(req, state).await.map_err(|e| match e {
            BytesRejection::FailedToBufferBody(ref inner)
                if inner.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "the request body is larger than this endpoint accepts",
                )
            }
            other => ApiError::bad_request("invalid_body", other.body_text()),
        })?;
        let value = if json {
            serde_json::from_slice(&bytes)
                .map_err(|e| ApiError::bad_request("invalid_json", format!("the body is not valid JSON for this endpoint: {e}")))?
        } else {
            serde_urlencoded::from_bytes(&bytes)
                .map_err(|e| ApiError::bad_request("invalid_form", format!("the form cannot be decoded: {e}")))?
        };
        Ok(Self(value))
    }
}
