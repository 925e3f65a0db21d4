//! Clients and the client card.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use switchboard_service::{ApiError, ErrorBody, JsonOrForm};
use switchboard_storage::{NewRecord, OwnerChange};
use utoipa::{IntoParams, ToSchema};

use super::{AppState, Auth, PageParams, etag, if_match, raw, store_error};
use crate::store::{Client, ClientFilter, ClientPatch, NewClient};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/clients", get(list_clients).post(create_client))
        .route("/v1/clients/{id}", get(get_client).patch(patch_client))
        .route("/v1/clients/{id}/promote", post(promote_client))
        .route("/v1/clients/{id}/timeline", get(client_timeline))
}

/// Publishes owner changes on the owners topic, for the gateways' routing.
pub(crate) async fn publish_owners(
    state: &AppState,
    changes: &[OwnerChange],
) -> Result<(), ApiError> {
    let Some(feed) = &state.feed else {
        return Ok(());
    };
    let records = changes
        .iter()
        .map(NewRecord::owner)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::internal(&e))?;
    if !records.is_empty() {
        feed.append_batch(records)
            .await
            .map_err(|e| ApiError::unavailable(&e))?;
    }
    Ok(())
}

/// Parses an RFC 3339 time parameter into microseconds.
pub(crate) fn since(field: &str, value: &Option<String>) -> Result<Option<i64>, ApiError> {
    value
        .as_deref()
        .map(|v| {
            time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
                .map(crate::store::micros)
                .map_err(|_| {
                    ApiError::bad_request(
                        "invalid_filter",
                        format!("{field} must be an RFC 3339 time"),
                    )
                })
        })
        .transpose()
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ClientQuery {
    /// `potential` or `current`.
    status: Option<String>,
    /// A user id, or `me`.
    owner: Option<String>,
    /// Only clients updated at or after this time (RFC 3339).
    updated_since: Option<String>,
    /// Search: part of the name, a phone or an email.
    q: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ClientPage {
    items: Vec<Client>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

/// Clients the caller may see, most recently updated first.
#[utoipa::path(get, path = "/v1/clients", params(PageParams, ClientQuery), responses(
    (status = 200, description = "A page of clients", body = ClientPage),
    (status = 400, description = "Bad limit, cursor or filter", body = ErrorBody),
    (status = 401, description = "No valid token", body = ErrorBody),
))]
pub(crate) async fn list_clients(
    State(state): State<AppState>,
    Auth(ctx): Auth,
    Query(page): Query<PageParams>,
    Query(q): Query<ClientQuery>,
) -> Result<Json<ClientPage>, ApiError> {
    let (cursor, limit) = page.parse()?;
    if let Some(s) = &q.status
        && s != "potential"
        && s != "current"
    {
        return Err(ApiError::bad_request(
            "invalid_filter",
            "status must be potential or current",
        ));
    }
    if q.q.as_ref().is_some_and(|s| s.chars().count() > 100) {
        return Err(ApiError::bad_request(
            "invalid_filter",
            "q is at most 100 characters",
        ));
    }
    let filter = ClientFilter {
        status: q.status,
        owner_id: q.owner.map(|o| {
            if o == "me" {
                ctx.principal.user_id.clone()
            } else {
                o
            }
        }),
        updated_since: since("updated_since", &q.updated_since)?,
        q: q.q,
    };
    let (items, next) = state
        .store
        .clients(&ctx, &filter, cursor.as_ref(), limit)
        .await
        .map_err(store_error)?;
    Ok(Json(ClientPage {
        items,
        next_cursor: next.map(|c| c.encode()),
    }))
}

/// Creates a client with its phones and emails (which must be nobody else's).
#[utoipa::path(post, path = "/v1/clients", request_body = NewClient,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retry safe")),
    responses(
        (status = 201, description = "The client", body = Client),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "A manager set owner_id", body = ErrorBody),
        (status = 409, description = "A phone or email belongs to another client", body = ErrorBody),
        (status = 422, description = "Invalid fields", body = ErrorBody),
    )
)]
pub(crate) async fn create_client(
    State(state): State<AppState>,
    Auth(ctx): Auth,
    JsonOrForm(new): JsonOrForm<NewClient>,
) -> Result<impl IntoResponse, ApiError> {
    let (client, owners) = state
        .store
        .create_client(&ctx, &new)
        .await
        .map_err(store_error)?;
    publish_owners(&state, &owners).await?;
    Ok((StatusCode::CREATED, etag(client.version), Json(client)))
}

/// One client, with its `ETag`.
#[utoipa::path(get, path = "/v1/clients/{id}", params(("id" = String, Path, description = "Client id")), responses(
    (status = 200, description = "The client", body = Client),
    (status = 401, description = "No valid token", body = ErrorBody),
    (status = 404, description = "No such client, or not yours", body = ErrorBody),
))]
pub(crate) async fn get_client(
    State(state): State<AppState>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let client = state.store.client(&ctx, &id).await.map_err(store_error)?;
    Ok((etag(client.version), Json(client)))
}

/// Changes a client; needs `If-Match` with the `ETag` last read.
#[utoipa::path(patch, path = "/v1/clients/{id}", request_body = ClientPatch,
    params(
        ("id" = String, Path, description = "Client id"),
        ("If-Match" = String, Header, description = "The ETag of the version being changed"),
    ),
    responses(
        (status = 200, description = "The changed client", body = Client),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "A manager set owner_id", body = ErrorBody),
        (status = 404, description = "No such client, or not yours", body = ErrorBody),
        (status = 412, description = "The client changed since it was read", body = ErrorBody),
        (status = 428, description = "If-Match missing", body = ErrorBody),
    )
)]
pub(crate) async fn patch_client(
    State(state): State<AppState>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonOrForm(patch): JsonOrForm<ClientPatch>,
) -> Result<impl IntoResponse, ApiError> {
    let version = if_match(&headers)?;
    let (client, owners) = state
        .store
        .patch_client(&ctx, &id, version, &patch)
        .await
        .map_err(store_error)?;
    publish_owners(&state, &owners).await?;
    Ok((etag(client.version), Json(client)))
}

/// Makes a potential client a current one, keeping its whole history.
#[utoipa::path(post, path = "/v1/clients/{id}/promote", params(("id" = String, Path, description = "Client id")), responses(
    (status = 200, description = "The client, now current", body = Client),
    (status = 401, description = "No valid token", body = ErrorBody),
    (status = 404, description = "No such client, or not yours", body = ErrorBody),
    (status = 409, description = "Already a current client", body = ErrorBody),
))]
pub(crate) async fn promote_client(
    State(state): State<AppState>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let client = state.store.promote(&ctx, &id).await.map_err(store_error)?;
    Ok((etag(client.version), Json(client)))
}

/// One entry of the client card.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CardEntry {
    id: String,
    /// RFC 3339.
    at: String,
    /// `interaction`, `client.created`, `client.promoted`, `deal.created`,
    /// `deal.stage_changed`, `task.created`, `task.done`, `ticket.opened`,
    /// `ticket.updated`, `note`, `attachment`.
    kind: String,
    /// The interaction, deal, task, ticket, note or attachment id.
    ref_id: String,
    /// The interaction envelope, or the record as it was then.
    #[schema(value_type = Object)]
    data: Box<RawValue>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CardPage {
    items: Vec<CardEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

/// The client card: calls, emails, messages, leads, deals, tasks, tickets,
/// notes and files, newest first.
#[utoipa::path(get, path = "/v1/clients/{id}/timeline",
    params(("id" = String, Path, description = "Client id"), PageParams),
    responses(
        (status = 200, description = "A page of the card", body = CardPage),
        (status = 400, description = "Bad limit or cursor", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such client, or not yours", body = ErrorBody),
    )
)]
pub(crate) async fn client_timeline(
    State(state): State<AppState>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
    Query(page): Query<PageParams>,
) -> Result<Json<CardPage>, ApiError> {
    let (cursor, limit) = page.parse()?;
    let (items, next) = state
        .store
        .timeline(&ctx, &id, cursor.as_ref(), limit)
        .await
        .map_err(store_error)?;
    let items = items
        .into_iter()
        .map(|i| {
            Ok(CardEntry {
                id: i.id,
                at: crate::store::rfc3339(i.at).map_err(|e| ApiError::internal(&e))?,
                kind: i.kind,
                ref_id: i.ref_id,
                data: raw(i.body)?,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    Ok(Json(CardPage {
        items,
        next_cursor: next.map(|c| c.encode()),
    }))
}
