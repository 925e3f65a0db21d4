//! Bearer tokens → the request's principal, with a short cache so a busy
//! client does not cost a database round trip per request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::StatusCode;
use axum::http::request::Parts;
use switchboard_service::ApiError;

use super::AppState;
use crate::store::{Ctx, Principal, token_hash};

/// How long a checked token is trusted before it is checked again (a
/// revoked token stops working within this).
const TTL: Duration = Duration::from_secs(10);
const MAX_ENTRIES: usize = 10_000;

#[derive(Debug, Default)]
pub(crate) struct TokenCache {
    entries: Mutex<HashMap<String, (Principal, Instant)>>,
}

impl TokenCache {
    fn get(&self, hash: &str) -> Option<Principal> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(hash)
            .filter(|(_, at)| at.elapsed() < TTL)
            .map(|(p, _)| p.clone())
    }

    fn put(&self, hash: String, p: Principal) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, (_, at)| at.elapsed() < TTL);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(hash, (p, Instant::now()));
    }
}

/// The authenticated caller; 401 without a valid token.
#[derive(Debug, Clone)]
pub(crate) struct Auth(pub Ctx);

fn unauthorized() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "send Authorization: Bearer <token> with a valid token",
    )
}

pub(crate) async fn principal(state: &AppState, parts: &Parts) -> Result<Principal, ApiError> {
    let token = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= 200)
        .ok_or_else(unauthorized)?;
    let hash = token_hash(token);
    if let Some(p) = state.tokens.get(&hash) {
        return Ok(p);
    }
    let p = state
        .store
        .principal_for_token(token)
        .await
        .map_err(super::store_error)?
        .ok_or_else(unauthorized)?;
    state.tokens.put(hash, p.clone());
    Ok(p)
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let principal = principal(state, parts).await?;
        let remote = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_string());
        Ok(Auth(Ctx { principal, remote }))
    }
}
