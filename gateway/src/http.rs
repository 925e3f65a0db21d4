//! HTTP endpoints for the site and for services that call us.

use axum::Extension;
use axum::extract::Path;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, Method, StatusCode};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Serialize;
use switchboard_adapters::widget::LeadForm;
use switchboard_service::{ApiError, BodyLimit, ErrorBody, JsonOrForm};
use tower_http::cors::{AllowOrigin, CorsLayer};
use utoipa::{OpenApi, ToSchema};

use crate::Gateway;
use crate::dispatch::ManagerView;
use crate::metrics::LEADS;
use switchboard_storage::state::Presence;

#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "Switchboard gateway",
        version = "1",
        description = "Endpoints the company's site and external services call: the lead form, the chat widget, webhooks of messengers and lead services, managers' presence."
    ),
    paths(
        widget_lead,
        list_managers,
        set_presence,
        crate::hooks::receive,
        crate::hooks::receive_with_token,
        crate::chat::script,
        crate::chat::connect
    ),
    components(schemas(
        LeadForm,
        LeadAccepted,
        ErrorBody,
        ManagerList,
        PresenceChange,
        ManagerView
    ))
)]
pub struct ApiDoc;

/// The gateway's OpenAPI document as served and checked in.
pub fn openapi_json() -> String {
    switchboard_service::openapi_json(ApiDoc::openapi())
}

pub(crate) fn routes(gateway: &Gateway) -> Router {
    let origins = &gateway.config.cors_allowed_origins;
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    let cors = CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::POST])
        .allow_headers([CONTENT_TYPE]);
    let leads = Router::new()
        .route("/v1/leads/widget", post(widget_lead))
        // JsonOrForm enforces the limit itself and answers 413 cleanly.
        .layer(Extension(BodyLimit(gateway.config.max_body_bytes)))
        .layer(DefaultBodyLimit::disable())
        .layer(cors);
    let mut router = Router::new().merge(leads);
    if let Some(hooks) = &gateway.hooks {
        // Services retry what we refuse; bodies are read within the limit
        // (413 beyond it, before anything larger is buffered).
        router = router.merge(
            Router::new()
                .route("/v1/hooks/{name}", post(crate::hooks::receive))
                .route(
                    "/v1/hooks/{name}/{token}",
                    post(crate::hooks::receive_with_token),
                )
                .layer(DefaultBodyLimit::max(gateway.config.max_body_bytes))
                .with_state(hooks.clone()),
        );
    }
    if let Some(chat) = &gateway.chat {
        router = router.merge(
            Router::new()
                .route("/widget.js", get(crate::chat::script))
                .route("/v1/chat/{line}/ws", get(crate::chat::connect))
                .with_state(chat.clone()),
        );
    }
    router
        .route("/v1/managers", get(list_managers))
        .route("/v1/managers/{id}/presence", put(set_presence))
        .route(
            "/v1/openapi.json",
            get(|| async { ([(CONTENT_TYPE, "application/json")], openapi_json()) }),
        )
        .with_state(gateway.clone())
}

/// The lead is in the feed.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct LeadAccepted {
    /// The `lead.received` interaction's id.
    id: String,
    /// The contact the lead belongs to, for `GET /v1/contacts/{key}/timeline`.
    contact_key: String,
}

/// The site's lead form ("call me back"): becomes a `lead.received`
/// interaction once it is durably in the feed.
#[utoipa::path(
    post,
    path = "/v1/leads/widget",
    request_body(content(
        (LeadForm = "application/json"),
        (LeadForm = "application/x-www-form-urlencoded"),
    )),
    responses(
        (status = 202, description = "Accepted: the lead is in the feed", body = LeadAccepted),
        (status = 400, description = "The body cannot be decoded", body = ErrorBody),
        (status = 413, description = "The body is larger than gateway.max_body_bytes", body = ErrorBody),
        (status = 415, description = "Neither JSON nor a form", body = ErrorBody),
        (status = 422, description = "Some fields are invalid; `error.fields` says which and why", body = ErrorBody),
        (status = 503, description = "The feed cannot take it now; retry", body = ErrorBody),
    )
)]
pub(crate) async fn widget_lead(
    State(gateway): State<Gateway>,
    JsonOrForm(form): JsonOrForm<LeadForm>,
) -> Result<(StatusCode, Json<LeadAccepted>), ApiError> {
    let ev = form.into_interaction(gateway.country).map_err(|fields| {
        LEADS.with_label_values(&["widget", "invalid"]).inc();
        ApiError::validation(fields)
    })?;
    gateway.feed.publish(&ev).await.map_err(|e| {
        LEADS.with_label_values(&["widget", "failed"]).inc();
        ApiError::unavailable(&e)
    })?;
    LEADS.with_label_values(&["widget", "accepted"]).inc();
    tracing::info!(id = %ev.id, channel = "widget", "lead accepted");
    Ok((
        StatusCode::ACCEPTED,
        Json(LeadAccepted {
            id: ev.id.to_string(),
            contact_key: ev.contact.key,
        }),
    ))
}

/// Managers with their presence and load.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ManagerList {
    items: Vec<ManagerView>,
}

/// `{"presence": "online"}`: `online`, `away`, `do_not_disturb` or `offline`.
#[derive(Debug, serde::Deserialize, Serialize, ToSchema)]
pub(crate) struct PresenceChange {
    presence: String,
}

/// Every configured manager, with presence, phone registration and load.
#[utoipa::path(
    get,
    path = "/v1/managers",
    responses(
        (status = 200, description = "The managers", body = ManagerList),
        (status = 503, description = "The routing state store is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn list_managers(
    State(gateway): State<Gateway>,
) -> Result<Json<ManagerList>, ApiError> {
    let items = match &gateway.dispatcher {
        Some(d) => d.managers().await.map_err(|e| ApiError::unavailable(&e))?,
        None => Vec::new(),
    };
    Ok(Json(ManagerList { items }))
}

/// Sets a manager's presence; work waiting for someone is decided again.
#[utoipa::path(
    put,
    path = "/v1/managers/{id}/presence",
    params(("id" = String, Path, description = "Manager id from `[[routing.managers]]`")),
    request_body(content = PresenceChange, content_type = "application/json"),
    responses(
        (status = 200, description = "Presence set", body = PresenceChange),
        (status = 404, description = "No such manager", body = ErrorBody),
        (status = 422, description = "Not a presence", body = ErrorBody),
        (status = 503, description = "The routing state store is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn set_presence(
    State(gateway): State<Gateway>,
    Path(id): Path<String>,
    JsonOrForm(change): JsonOrForm<PresenceChange>,
) -> Result<Json<PresenceChange>, ApiError> {
    let Some(presence) = Presence::parse(&change.presence) else {
        return Err(ApiError::validation(
            [(
                "presence".to_owned(),
                "must be online, away, do_not_disturb or offline".to_owned(),
            )]
            .into(),
        ));
    };
    let known = match &gateway.dispatcher {
        Some(d) => d
            .set_presence(&id, presence)
            .await
            .map_err(|e| ApiError::unavailable(&e))?,
        None => false,
    };
    if !known {
        return Err(ApiError::not_found(
            "no manager with this id in [[routing.managers]]",
        ));
    }
    tracing::info!(manager = %id, presence = presence.as_str(), "presence set");
    Ok(Json(change))
}
