//! `GET /v1/calls/{id}/recording`: a call's recording, as written by the
//! gateway (`recording.ready`), with HTTP Range (RFC 9110 §14) so a
//! browser's audio element can seek.

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use switchboard_service::{ApiError, ErrorBody};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::{AppState, Auth, store_error};

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/v1/calls/{id}/recording", get(get_recording))
}

/// One satisfiable byte range of a file of `len` bytes, inclusive, or
/// `Err(())` when the header asks for none that is (416). Several ranges
/// are answered with the first, as a single part.
pub(crate) fn byte_range(value: &str, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        // Another unit: ignore the header (RFC 9110 §14.2).
        return Ok(None);
    };
    let first = spec.split(',').next().unwrap_or("").trim();
    let (start, end) = first.split_once('-').ok_or(())?;
    let (start, end) = (start.trim(), end.trim());
    let range = if start.is_empty() {
        // The last `end` bytes.
        let n: u64 = end.parse().map_err(|_| ())?;
        if n == 0 || len == 0 {
            return Err(());
        }
        (len.saturating_sub(n), len - 1)
    } else {
        let s: u64 = start.parse().map_err(|_| ())?;
        let e: u64 = if end.is_empty() {
            len.saturating_sub(1)
        } else {
            end.parse::<u64>()
                .map_err(|_| ())?
                .min(len.saturating_sub(1))
        };
        if s >= len || e < s {
            return Err(());
        }
        (s, e)
    };
    Ok(Some(range))
}

/// A call's recording (stereo WAV: the customer left, the manager right).
#[utoipa::path(get, path = "/v1/calls/{id}/recording",
    params(("id" = String, Path, description = "The call's id: the conversation of its call events (the caller's Call-ID)")),
    responses(
        (status = 200, description = "The whole recording", content_type = "audio/wav"),
        (status = 206, description = "The byte range asked for with Range", content_type = "audio/wav"),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No recording of this call, or not yours", body = ErrorBody),
        (status = 416, description = "The Range asks for bytes the file does not have"),
    )
)]
pub(crate) async fn get_recording(
    State(state): State<AppState>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let payload = state
        .store
        .recording(&ctx, &id)
        .await
        .map_err(store_error)?;
    let rel = payload["path"].as_str().unwrap_or("");
    // Only a plain relative path under recordings/ is ever served.
    let safe = rel.starts_with("recordings/")
        && std::path::Path::new(rel)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    let Some(data_dir) = state.data_dir.as_ref().filter(|_| safe) else {
        return Err(ApiError::not_found("no recording of this call"));
    };
    let mut file = tokio::fs::File::open(data_dir.join(rel))
        .await
        .map_err(|_| ApiError::not_found("the recording's file is missing"))?;
    let len = file
        .metadata()
        .await
        .map_err(|e| ApiError::internal(&e))?
        .len();
    let etag = payload["sha256"]
        .as_str()
        .and_then(|s| HeaderValue::from_str(&format!("\"{s}\"")).ok());
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(v) => match byte_range(v, len) {
            Ok(r) => r,
            Err(()) => {
                let mut resp = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
                resp.headers_mut().insert(
                    header::CONTENT_RANGE,
                    HeaderValue::from_str(&format!("bytes */{len}"))
                        .unwrap_or(HeaderValue::from_static("bytes */0")),
                );
                return Ok(resp);
            }
        },
        None => None,
    };
    let (status, start, count) = match range {
        Some((s, e)) => (StatusCode::PARTIAL_CONTENT, s, e - s + 1),
        None => (StatusCode::OK, 0, len),
    };
    file.seek(std::io::SeekFrom::Start(start))
        .await
        .map_err(|e| ApiError::internal(&e))?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file.take(count)));
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("audio/wav"));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    if let Some(etag) = etag {
        h.insert(header::ETAG, etag);
    }
    if status == StatusCode::PARTIAL_CONTENT {
        let value = format!("bytes {start}-{}/{len}", start + count - 1);
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::byte_range;

    #[test]
    fn ranges_as_browsers_send_them() {
        assert_eq!(byte_range("bytes=0-", 1000), Ok(Some((0, 999))));
        assert_eq!(byte_range("bytes=100-199", 1000), Ok(Some((100, 199))));
        assert_eq!(byte_range("bytes=900-5000", 1000), Ok(Some((900, 999))));
        assert_eq!(byte_range("bytes=-100", 1000), Ok(Some((900, 999))));
        assert_eq!(byte_range("bytes=-5000", 1000), Ok(Some((0, 999))));
        assert_eq!(byte_range("bytes=0-1, 5-6", 1000), Ok(Some((0, 1))));
        assert_eq!(byte_range("items=0-1", 1000), Ok(None));
        assert_eq!(byte_range("bytes=1000-", 1000), Err(()));
        assert_eq!(byte_range("bytes=5-1", 1000), Err(()));
        assert_eq!(byte_range("bytes=x-", 1000), Err(()));
        assert_eq!(byte_range("bytes=-0", 1000), Err(()));
    }
}
