use std::time::Duration;

use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use bytes::BytesMut;
use futures::StreamExt;
use serde::de::DeserializeOwned;

use crate::ApiError;

/// The largest body a route accepts; add it with
/// `axum::Extension(BodyLimit(n))`. Without it, 64 KiB.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// After a body turns out too large, how much more of it is read and thrown
/// away so the client sees the 413 instead of a reset connection (what
/// nginx calls a lingering close), and for how long at most.
const DRAIN_BYTES: usize = 32 * 1024 * 1024;
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// A request body decoded from JSON or `application/x-www-form-urlencoded`,
/// read within the route's [`BodyLimit`]. Oversized bodies get 413 (never
/// buffered beyond the limit), undecodable ones 400, other media types 415 —
/// all with the error body.
#[derive(Debug)]
pub struct JsonOrForm<T>(pub T);

impl<S, T> FromRequest<S> for JsonOrForm<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let media = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
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
        let limit = req
            .extensions()
            .get::<BodyLimit>()
            .map_or(64 * 1024, |l| l.0);
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let bytes = read_limited(req, limit, declared).await?;
        let value = if json {
            serde_json::from_slice(&bytes).map_err(|e| {
                ApiError::bad_request(
                    "invalid_json",
                    format!("the body is not valid JSON for this endpoint: {e}"),
                )
            })?
        } else {
            serde_urlencoded::from_bytes(&bytes).map_err(|e| {
                ApiError::bad_request("invalid_form", format!("the form cannot be decoded: {e}"))
            })?
        };
        Ok(Self(value))
    }
}

async fn read_limited(
    req: Request,
    limit: usize,
    declared: Option<u64>,
) -> Result<BytesMut, ApiError> {
    let too_large_error = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body is larger than this endpoint accepts ({limit} bytes)"),
        )
    };
    let mut too_large = declared.is_some_and(|n| n > limit as u64);
    let mut buf = BytesMut::new();
    let mut total = 0usize;
    let mut stream = req.into_body().into_data_stream();
    let drain_until = tokio::time::Instant::now() + DRAIN_TIME;
    loop {
        let next = if too_large {
            match tokio::time::timeout_at(drain_until, stream.next()).await {
                Ok(next) => next,
                Err(_) => break,
            }
        } else {
            stream.next().await
        };
        let Some(chunk) = next else { break };
        let chunk = match chunk {
            Ok(c) => c,
            Err(_) if too_large => break,
            Err(e) => {
                return Err(ApiError::bad_request(
                    "invalid_body",
                    format!("the body could not be read: {e}"),
                ));
            }
        };
        total = total.saturating_add(chunk.len());
        if !too_large && total > limit {
            too_large = true;
            buf = BytesMut::new();
        }
        if too_large {
            if total > DRAIN_BYTES {
                break;
            }
            continue;
        }
        buf.extend_from_slice(&chunk);
    }
    if too_large {
        return Err(too_large_error());
    }
    Ok(buf)
}
