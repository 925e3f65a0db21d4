use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Named readiness checks; `/readyz` is 200 only when all pass.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    checks: Arc<RwLock<BTreeMap<String, Result<(), String>>>>,
}

impl Readiness {
    /// Sets one check's state; `Err` carries why it is not ready.
    pub fn set(&self, check: &str, state: Result<(), String>) {
        let mut checks = self.checks.write().unwrap_or_else(|p| p.into_inner());
        match checks.get_mut(check) {
            Some(s) => *s = state,
            None => {
                checks.insert(check.to_owned(), state);
            }
        }
    }

    /// Re-evaluates one check every `every` until `stop` fires.
    pub fn probe<F, Fut>(
        &self,
        check: &'static str,
        every: Duration,
        stop: CancellationToken,
        probe: F,
    ) where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), String>> + Send,
    {
        let readiness = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(every) => {}
                }
                readiness.set(check, probe().await);
            }
        });
    }

    pub fn is_ready(&self) -> bool {
        let checks = self.checks.read().unwrap_or_else(|p| p.into_inner());
        checks.values().all(Result::is_ok)
    }

    fn report(&self) -> (bool, serde_json::Value) {
        let checks = self.checks.read().unwrap_or_else(|p| p.into_inner());
        let ready = checks.values().all(Result::is_ok);
        let detail: serde_json::Map<String, serde_json::Value> = checks
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Ok(()) => "ok".to_owned(),
                    Err(why) => why.clone(),
                };
                (k.clone(), serde_json::Value::String(v))
            })
            .collect();
        (
            ready,
            serde_json::json!({
                "status": if ready { "ready" } else { "not_ready" },
                "checks": detail,
            }),
        )
    }
}

/// `/healthz` (the process answers), `/readyz` (it can do its work) and
/// `/metrics` (Prometheus text exposition of the process-wide registry).
pub fn ops_router(readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let readiness = readiness.clone();
                async move {
                    let (ready, body) = readiness.report();
                    let status = if ready {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    (status, axum::Json(body))
                }
            }),
        )
        .route("/metrics", get(metrics))
}

async fn metrics() -> impl IntoResponse {
    let families = prometheus::gather();
    let mut text = String::new();
    match prometheus::TextEncoder::new().encode_utf8(&families, &mut text) {
        Ok(()) => (
            StatusCode::OK,
            [(CONTENT_TYPE, prometheus::TEXT_FORMAT)],
            text,
        ),
        Err(e) => {
            tracing::error!(error = %e, "metrics encoding failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(CONTENT_TYPE, "text/plain")],
                String::new(),
            )
        }
    }
}

/// A service's whole router: its API, the ops routes, a JSON 404 for
/// everything else, and request metrics labelled with `service`.
pub fn service_router(service: &'static str, api: Router, readiness: Readiness) -> Router {
    api.merge(ops_router(readiness))
        .fallback(|| async { crate::ApiError::not_found("no such endpoint") })
        .layer(axum::middleware::from_fn_with_state(
            service,
            crate::metrics::track,
        ))
}

/// An OpenAPI document as the services serve and check it in: version 3.1,
/// pretty-printed.
pub fn openapi_json(mut doc: utoipa::openapi::OpenApi) -> String {
    doc.openapi = utoipa::openapi::OpenApiVersion::Version31;
    doc.to_pretty_json().unwrap_or_default()
}

/// For tests: whether the checked-in document at `path` is `generated`.
/// With `UPDATE_OPENAPI` set, rewrites it first.
pub fn openapi_is_checked_in(path: &std::path::Path, generated: &str) -> bool {
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        let _ = std::fs::write(path, generated);
    }
    std::fs::read_to_string(path).is_ok_and(|text| text == generated)
}

/// Serves `router` on `listener` until `shutdown` fires, then stops
/// accepting and lets in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await })
    .await
}
