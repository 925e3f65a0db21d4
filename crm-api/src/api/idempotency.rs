//! `Idempotency-Key` on POST: the first response to a key is kept, per
//! user, and a retry with the same key and body gets it again instead of
//! acting twice; a different body with a used key is refused.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use switchboard_service::ApiError;

use super::AppState;

/// Bodies above this are not replayable (uploads); they pass through.
const MAX_KEPT_BODY: usize = 1024 * 1024;

pub(crate) async fn layer(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if req.method() != Method::POST {
        return next.run(req).await;
    }
    let Some(key) = req
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
    else {
        return next.run(req).await;
    };
    if key.is_empty() || key.len() > 200 {
        return ApiError::bad_request(
            "invalid_idempotency_key",
            "Idempotency-Key must be 1 to 200 characters",
        )
        .into_response();
    }
    let (parts, body) = req.into_parts();
    let principal = match super::auth::principal(&state, &parts).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let Ok(bytes) = axum::body::to_bytes(body, MAX_KEPT_BODY).await else {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "bodies sent with Idempotency-Key are limited to 1 MiB",
        )
        .into_response();
    };
    let mut hasher = Sha256::new();
    hasher.update(parts.uri.path().as_bytes());
    hasher.update([0]);
    hasher.update(&bytes);
    let request_hash = hex::encode(hasher.finalize());
    match state
        .store
        .idempotent_response(&principal.user_id, &key)
        .await
    {
        Ok(Some((hash, status, body))) => {
            if hash != request_hash {
                return ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "idempotency_key_reused",
                    "this Idempotency-Key was used for a different request",
                )
                .into_response();
            }
            let status = StatusCode::from_u16(u16::try_from(status).unwrap_or(200))
                .unwrap_or(StatusCode::OK);
            let mut resp = (
                status,
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response();
            resp.headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            return resp;
        }
        Ok(None) => {}
        Err(e) => return super::store_error(e).into_response(),
    }
    let resp = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    if resp.status().is_server_error() {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_KEPT_BODY).await else {
        return ApiError::internal(&std::io::Error::other("response too large to keep"))
            .into_response();
    };
    let text = String::from_utf8_lossy(&bytes).into_owned();
    if let Err(e) = state
        .store
        .keep_idempotent_response(
            &principal.user_id,
            &key,
            &request_hash,
            i64::from(parts.status.as_u16()),
            &text,
        )
        .await
    {
        tracing::warn!(error = %e, "idempotent response not kept");
    }
    Response::from_parts(parts, Body::from(bytes))
}
