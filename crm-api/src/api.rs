//! The REST API (`/v1/...`) and its OpenAPI 3.1 document.

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use switchboard_service::{ApiError, ErrorBody};
use switchboard_storage::{Campaign, Channel, Contact, Interaction, Kind};
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::cursor::Cursor;
use crate::store::{ContactRow, Filter, Page, Store, StoreError};

const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 200;

#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "Switchboard CRM API",
        version = "1",
        description = "Clients, contacts and everything that happened with them, as read from the feed."
    ),
    paths(list_interactions, contact_timeline),
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

pub(crate) fn routes(store: Store) -> Router {
    Router::new()
        .route("/v1/interactions", get(list_interactions))
        .route("/v1/contacts/{key}/timeline", get(contact_timeline))
        .route(
            "/v1/openapi.json",
            get(|| async {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    openapi_json(),
                )
            }),
        )
        .with_state(store)
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
    fn parse(&self) -> Result<(Option<Cursor>, u32), ApiError> {
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

fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Database { .. } => ApiError::unavailable(&e),
        _ => ApiError::internal(&e),
    }
}

fn raw_items(page: Page) -> Result<(Vec<Box<RawValue>>, Option<String>), ApiError> {
    let items = page
        .items
        .into_iter()
        .map(RawValue::from_string)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::internal(&e))?;
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

/// Every interaction the CRM has, newest first.
#[utoipa::path(
    get,
    path = "/v1/interactions",
    params(PageParams, InteractionFilter),
    responses(
        (status = 200, description = "A page of interactions", body = InteractionPage),
        (status = 400, description = "Bad limit, cursor or filter", body = ErrorBody),
    )
)]
pub(crate) async fn list_interactions(
    State(store): State<Store>,
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
    let page = store
        .interactions(&filter, cursor.as_ref(), limit)
        .await
        .map_err(store_error)?;
    let (items, next_cursor) = raw_items(page)?;
    Ok(Json(InteractionPage { items, next_cursor }))
}

/// A contact's card: who they are and everything that happened, newest first.
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
        (status = 404, description = "No such contact", body = ErrorBody),
    )
)]
pub(crate) async fn contact_timeline(
    State(store): State<Store>,
    Path(key): Path<String>,
    Query(page): Query<PageParams>,
) -> Result<impl IntoResponse, ApiError> {
    let (cursor, limit) = page.parse()?;
    let contact = store
        .contact(&key)
        .await
        .map_err(store_error)?
        .ok_or_else(|| ApiError::not_found("no contact with this key"))?;
    let filter = Filter {
        contact_key: Some(key),
        ..Filter::default()
    };
    let page = store
        .interactions(&filter, cursor.as_ref(), limit)
        .await
        .map_err(store_error)?;
    let (items, next_cursor) = raw_items(page)?;
    Ok((
        StatusCode::OK,
        Json(Timeline {
            contact,
            items,
            next_cursor,
        }),
    ))
}
