//! The REST API (`/v1/...`) and its OpenAPI 3.1 document.
//!
//! Every route but the OpenAPI document needs `Authorization: Bearer
//! <token>`. Records others own answer 404, exactly like records that do
//! not exist, so ids are never confirmed; 403 is for what the caller may see
//! but not do (a manager setting an owner).

mod auth;
mod clients;
mod idempotency;
mod recordings;
mod records;
mod users;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use switchboard_service::{ApiError, ErrorBody};
use switchboard_storage::{Campaign, Channel, Contact, FeedLog, Interaction, Kind};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};

use crate::cursor::Cursor;
use crate::store::{ContactRow, Filter, Page, Store, StoreError};
pub(crate) use auth::Auth;

const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 200;

/// What every handler shares.
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    pub store: Store,
    /// Where owner changes and commands are written.
    pub feed: Option<FeedLog>,
    pub tokens: Arc<auth::TokenCache>,
    /// Attachment files (content-addressed) live here.
    pub files: std::path::PathBuf,
    /// The gateway's data directory, whose `recordings/` calls are served
    /// from; `None`: recordings are not served by this process.
    pub data_dir: Option<std::path::PathBuf>,
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        openapi.security = Some(vec![utoipa::openapi::security::SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
    }
}

#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "Switchboard CRM API",
        version = "1",
        description = "Clients, contacts, deals, tasks, tickets and everything that happened with them. \
Authenticate with `Authorization: Bearer <token>` (`switchboard crm-admin token`)."
    ),
    modifiers(&BearerAuth),
    paths(
        list_interactions,
        contact_timeline,
        users::me,
        users::list_users,
        users::create_user,
        users::create_token,
        users::revoke_tokens,
        clients::list_clients,
        clients::create_client,
        clients::get_client,
        clients::patch_client,
        clients::promote_client,
        clients::client_timeline,
        records::list_pipelines,
        records::create_pipeline,
        records::list_contact_persons,
        records::create_contact_person,
        records::create_deal,
        records::list_deals,
        records::get_deal,
        records::patch_deal,
        records::deal_history,
        records::create_task,
        records::list_tasks,
        records::get_task,
        records::patch_task,
        records::create_ticket,
        records::list_tickets,
        records::get_ticket,
        records::patch_ticket,
        records::log_ticket_time,
        records::create_note,
        records::upload_attachment,
        records::get_attachment,
        records::reply,
        records::place_call,
        records::audit_log,
        recordings::get_recording,
    ),
    components(schemas(
        Interaction,
        Contact,
        Campaign,
        Kind,
        Channel,
        ContactRow,
        InteractionPage,
        Timeline,
        ErrorBody
    ))
)]
pub struct ApiDoc;

/// The OpenAPI document as served and checked in.
pub fn openapi_json() -> String {
    switchboard_service::openapi_json(ApiDoc::openapi())
}

pub(crate) fn routes(state: AppState) -> Router {
    Router::new()
        .route("/v1/interactions", get(list_interactions))
        .route("/v1/contacts/{key}/timeline", get(contact_timeline))
        .merge(users::routes())
        .merge(clients::routes())
        .merge(records::routes())
        .merge(recordings::routes())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            idempotency::layer,
        ))
        .route(
            "/v1/openapi.json",
            get(|| async {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    openapi_json(),
                )
            }),
        )
        .with_state(state)
}

/// Page parameters shared by list endpoints.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct PageParams {
    /// Items per page, 1 to 200 (default 50).
    limit: Option<u32>,
    /// `next_cursor` from the previous page.
    cursor: Option<String>,
}

impl PageParams {
    pub(crate) fn parse(&self) -> Result<(Option<Cursor>, u32), ApiError> {
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(ApiError::bad_request(
                "invalid_limit",
                format!("limit must be between 1 and {MAX_LIMIT}"),
            ));
        }
        let cursor = match &self.cursor {
            None => None,
            Some(c) => Some(Cursor::decode(c).ok_or_else(|| {
                ApiError::bad_request("invalid_cursor", "cursor is not one this API returned")
            })?),
        };
        Ok((cursor, limit))
    }
}

/// Maps store outcomes to HTTP.
pub(crate) fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound => ApiError::not_found("no such record"),
        StoreError::Forbidden { reason } => {
            ApiError::new(StatusCode::FORBIDDEN, "forbidden", reason)
        }
        StoreError::Stale { current } => ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "precondition_failed",
            format!("the record changed; its ETag is now \"{current}\""),
        ),
        StoreError::Conflict { what } => ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("{what}: already exists"),
        ),
        StoreError::Invalid { field, reason } => {
            ApiError::validation(BTreeMap::from([(field.to_owned(), reason)]))
        }
        StoreError::Database { .. } => ApiError::unavailable(&e),
        _ => ApiError::internal(&e),
    }
}

/// `ETag: "<version>"`.
pub(crate) fn etag(version: i64) -> [(axum::http::HeaderName, HeaderValue); 1] {
    [(
        axum::http::header::ETAG,
        HeaderValue::from_str(&format!("\"{version}\""))
            .unwrap_or(HeaderValue::from_static("\"0\"")),
    )]
}

/// The version `If-Match` names; a PATCH without it is refused (428) so no
/// update is lost.
pub(crate) fn if_match(headers: &HeaderMap) -> Result<i64, ApiError> {
    let value = headers.get(axum::http::header::IF_MATCH).ok_or_else(|| {
        ApiError::new(
            StatusCode::PRECONDITION_REQUIRED,
            "precondition_required",
            "send If-Match with the ETag of the record you read",
        )
    })?;
    value
        .to_str()
        .ok()
        .map(|v| v.trim().trim_start_matches("W/").trim_matches('"'))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_if_match",
                "If-Match must be an ETag this API returned",
            )
        })
}

/// Filters of `GET /v1/interactions`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct InteractionFilter {
    /// Only this contact's interactions.
    contact_key: Option<String>,
    /// Only this kind, e.g. `lead.received`.
    kind: Option<String>,
    /// Only this channel, e.g. `widget`.
    channel: Option<String>,
}

/// A page of interactions, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct InteractionPage {
    #[schema(value_type = Vec<Interaction>)]
    items: Vec<Box<RawValue>>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

/// A contact and its interactions, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Timeline {
    contact: ContactRow,
    #[schema(value_type = Vec<Interaction>)]
    items: Vec<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

pub(crate) fn raw(text: String) -> Result<Box<RawValue>, ApiError> {
    RawValue::from_string(text).map_err(|e| ApiError::internal(&e))
}

fn raw_items(page: Page) -> Result<(Vec<Box<RawValue>>, Option<String>), ApiError> {
    let items = page
        .items
        .into_iter()
        .map(raw)
        .collect::<Result<Vec<_>, _>>()?;
    Ok((items, page.next.map(|c| c.encode())))
}

/// Checks a filter value against the names serde knows for `T`.
fn known<T: serde::de::DeserializeOwned>(
    field: &str,
    value: &Option<String>,
) -> Result<(), ApiError> {
    match value {
        Some(v) if serde_json::from_value::<T>(serde_json::Value::String(v.clone())).is_err() => {
            Err(ApiError::bad_request(
                "invalid_filter",
                format!("{field} {v:?} is not one this API knows"),
            ))
        }
        _ => Ok(()),
    }
}

/// Interactions of the clients the caller may see, newest first.
#[utoipa::path(
    get,
    path = "/v1/interactions",
    params(PageParams, InteractionFilter),
    responses(
        (status = 200, description = "A page of interactions", body = InteractionPage),
        (status = 400, description = "Bad limit, cursor or filter", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
    )
)]
pub(crate) async fn list_interactions(
    State(state): State<AppState>,
    Auth(ctx): Auth,
    Query(page): Query<PageParams>,
    Query(filter): Query<InteractionFilter>,
) -> Result<impl IntoResponse, ApiError> {
    let (cursor, limit) = page.parse()?;
    known::<Kind>("kind", &filter.kind)?;
    known::<Channel>("channel", &filter.channel)?;
    let filter = Filter {
        contact_key: filter.contact_key,
        kind: filter.kind,
        channel: filter.channel,
    };
    let page = state
        .store
        .interactions(&ctx, &filter, cursor.as_ref(), limit)
        .await
        .map_err(store_error)?;
    let (items, next_cursor) = raw_items(page)?;
    Ok(Json(InteractionPage { items, next_cursor }))
}

/// A contact key's card: the identity and its interactions, newest first.
#[utoipa::path(
    get,
    path = "/v1/contacts/{key}/timeline",
    params(
        ("key" = String, Path, description = "Contact key, e.g. `tel:+79161234567` or `email:ivan@example.com`"),
        PageParams,
    ),
    responses(
        (status = 200, description = "The contact and a page of its timeline", body = Timeline),
        (status = 400, description = "Bad limit or cursor", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such contact, or not yours", body = ErrorBody),
    )
)]
pub(crate) async fn contact_timeline(
    State(state): State<AppState>,
    Auth(ctx): Auth,
    Path(key): Path<String>,
    Query(page): Query<PageParams>,
) -> Result<impl IntoResponse, ApiError> {
    let (cursor, limit) = page.parse()?;
    let contact = state
        .store
        .contact(&ctx, &key)
        .await
        .map_err(store_error)?
        .ok_or_else(|| ApiError::not_found("no contact with this key"))?;
    let filter = Filter {
        contact_key: Some(key),
        ..Filter::default()
    };
    let page = state
        .store
        .interactions(&ctx, &filter, cursor.as_ref(), limit)
        .await
        .map_err(store_error)?;
    let (items, next_cursor) = raw_items(page)?;
    Ok(Json(Timeline {
        contact,
        items,
        next_cursor,
    }))
}
