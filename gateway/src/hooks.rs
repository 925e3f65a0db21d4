//! Webhooks of messengers and lead services: `POST /v1/hooks/<name>` (and
//! `/v1/hooks/<name>/<token>` for services that sign nothing). The adapter
//! checks the delivery; a delivery worth keeping is stored in the inbox —
//! on disk, and once per delivery id — before the service gets its answer,
//! so the answer is quick and a crash loses nothing. [`process`] turns
//! stored deliveries into interactions.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use switchboard_adapters::inbox::{Inbox, KEEP_DONE};
use switchboard_adapters::{
    Adapter, AdapterContext, CommandError, HookError, HookRequest, Retries, sleep_or_shutdown,
};

use crate::channels::ByLine;
use switchboard_service::{ApiError, ErrorBody};
use switchboard_storage::NewRecord;

use crate::metrics::WEBHOOKS;

/// The webhook lines of every adapter, by name.
#[derive(Debug, Clone)]
pub struct Hooks {
    lines: Arc<HashMap<String, Hook>>,
    inbox: Inbox,
}

#[derive(Debug)]
struct Hook {
    /// Where deliveries are stored (`telegram:<name>`).
    line: String,
    /// The channel, for metrics.
    channel: String,
    adapter: Arc<dyn Adapter>,
}

impl Hooks {
    pub fn new(adapters: &[Arc<dyn Adapter>], inbox: Inbox) -> Self {
        let mut lines = HashMap::new();
        for a in adapters {
            for (name, line) in a.hooks() {
                let channel = line.split(':').next().unwrap_or_default().to_owned();
                lines.insert(
                    name,
                    Hook {
                        line,
                        channel,
                        adapter: Arc::clone(a),
                    },
                );
            }
        }
        Self {
            lines: Arc::new(lines),
            inbox,
        }
    }
}

/// A delivery from a messenger or lead service to the line `name`
/// (`[[channels]]`): checked as that service signs it, stored once per the
/// service's delivery id, then answered as the service expects (VK: `ok`,
/// a JSON object for others); a retried delivery is answered the same and
/// stored no second time.
#[utoipa::path(
    post,
    path = "/v1/hooks/{name}",
    params(("name" = String, Path, description = "The line's name in `[[channels]]`")),
    request_body(content = Object, content_type = "application/json", description = "The service's own webhook body"),
    responses(
        (status = 200, description = "Verified and stored (or a handshake answered)"),
        (status = 400, description = "Not what the service sends", body = ErrorBody),
        (status = 403, description = "Not signed by the service (signature, secret or token)", body = ErrorBody),
        (status = 404, description = "No line of this name takes webhooks", body = ErrorBody),
        (status = 413, description = "Larger than gateway.max_body_bytes", body = ErrorBody),
        (status = 503, description = "Cannot be stored now; the service retries", body = ErrorBody),
    )
)]
pub(crate) async fn receive(
    State(hooks): State<Hooks>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    take(&hooks, &name, None, &headers, &body).await
}

/// The same for services that sign nothing (JivoSite, Roistat, CoMagic,
/// UIS): the address carries the line's token.
#[utoipa::path(
    post,
    path = "/v1/hooks/{name}/{token}",
    params(
        ("name" = String, Path, description = "The line's name in `[[channels]]`"),
        ("token" = String, Path, description = "The line's `token`"),
    ),
    request_body(content = Object, content_type = "application/json", description = "The service's own webhook body"),
    responses(
        (status = 200, description = "Verified and stored"),
        (status = 400, description = "Not what the service sends", body = ErrorBody),
        (status = 403, description = "Not this line's token", body = ErrorBody),
        (status = 404, description = "No line of this name takes webhooks", body = ErrorBody),
        (status = 413, description = "Larger than gateway.max_body_bytes", body = ErrorBody),
        (status = 503, description = "Cannot be stored now; the service retries", body = ErrorBody),
    )
)]
pub(crate) async fn receive_with_token(
    State(hooks): State<Hooks>,
    Path((name, token)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    take(&hooks, &name, Some(&token), &headers, &body).await
}

async fn take(
    hooks: &Hooks,
    name: &str,
    token: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let Some(hook) = hooks.lines.get(name) else {
        return ApiError::not_found("no webhook line of this name").into_response();
    };
    let count = |outcome: &str| WEBHOOKS.with_label_values(&[&hook.channel, outcome]).inc();
    let req = HookRequest {
        headers,
        token,
        body,
    };
    let accepted = match hook.adapter.accept(name, &req) {
        Ok(a) => a,
        Err(HookError::Forbidden(what)) => {
            count("forbidden");
            tracing::warn!(hook = %name, %what, "webhook refused: not signed");
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "the delivery is not signed as this line expects",
            )
            .into_response();
        }
        Err(HookError::Malformed(why)) => {
            count("malformed");
            return ApiError::bad_request("malformed", why).into_response();
        }
        Err(_) => {
            return ApiError::not_found("no webhook line of this name").into_response();
        }
    };
    if let Some(id) = &accepted.store {
        match hooks.inbox.store(&hook.line, id, body.to_vec()).await {
            Ok(true) => count("stored"),
            Ok(false) => count("duplicate"),
            Err(e) => {
                count("failed");
                return ApiError::unavailable(&e).into_response();
            }
        }
    } else {
        count("answered");
    }
    let reply = accepted.reply;
    (
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK),
        [(CONTENT_TYPE, reply.content_type)],
        reply.body,
    )
        .into_response()
}

/// Deliveries processed in one go (one feed append, one inbox update).
const BATCH: usize = 512;

/// Turns stored deliveries into interactions, oldest first, until
/// shutdown. A delivery that may work later (a file server down) stops the
/// line of work and is retried with backoff; one that never will is marked
/// rejected.
pub(crate) async fn process(lines: Arc<ByLine>, ctx: AdapterContext) {
    let inbox = ctx.inbox.clone();
    tokio::spawn(prune(inbox.clone(), ctx.shutdown.clone()));
    let mut retries = Retries::default();
    loop {
        let mark = inbox.last_stored();
        let batch = match inbox.pending(BATCH).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "inbox unreadable");
                if sleep_or_shutdown(&ctx.shutdown, Duration::from_secs(1)).await {
                    return;
                }
                continue;
            }
        };
        if batch.is_empty() {
            tokio::select! {
                () = ctx.shutdown.cancelled() => return,
                () = inbox.changed_after(mark) => {}
            }
            continue;
        }
        let mut records = Vec::new();
        let mut done = Vec::new();
        let mut stalled = None;
        for d in &batch {
            let Some(adapter) = lines.get(&d.line) else {
                tracing::warn!(line = %d.line, delivery = %d.id, "delivery for a line no longer configured");
                done.push((d.seq, "no_line"));
                continue;
            };
            match adapter.process(d, &ctx).await {
                Ok(events) => {
                    for ev in &events {
                        match NewRecord::interaction(ev) {
                            Ok(r) => records.push(r),
                            Err(e) => tracing::error!(error = %e, "interaction not serialisable"),
                        }
                    }
                    done.push((
                        d.seq,
                        if events.is_empty() {
                            "ignored"
                        } else {
                            "published"
                        },
                    ));
                }
                Err(CommandError::Rejected(why)) => {
                    tracing::warn!(line = %d.line, delivery = %d.id, %why, "delivery rejected");
                    done.push((d.seq, "rejected"));
                }
                Err(e) => {
                    stalled = Some(e);
                    break;
                }
            }
        }
        if !records.is_empty()
            && let Err(e) = ctx.feed.append_batch(records).await
        {
            tracing::warn!(error = %e, "feed unavailable; deliveries stay in the inbox");
            if sleep_or_shutdown(&ctx.shutdown, retries.next_wait()).await {
                return;
            }
            continue;
        }
        if let Err(e) = inbox.done(done).await {
            tracing::warn!(error = %e, "inbox not updated; deliveries will be processed again");
        }
        if let Some(e) = stalled {
            let wait = retries.next_wait();
            tracing::warn!(error = %e, retry_in = ?wait, "delivery failed; retrying");
            if sleep_or_shutdown(&ctx.shutdown, wait).await {
                return;
            }
        } else {
            retries.reset();
        }
    }
}

/// Forgets processed deliveries after [`KEEP_DONE`], hourly.
async fn prune(inbox: Inbox, shutdown: tokio_util::sync::CancellationToken) {
    loop {
        match inbox.prune(KEEP_DONE).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(forgotten = n, "old webhook deliveries pruned"),
            Err(e) => tracing::warn!(error = %e, "inbox not pruned"),
        }
        if sleep_or_shutdown(&shutdown, Duration::from_secs(3600)).await {
            return;
        }
    }
}
