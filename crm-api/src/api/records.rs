//! Deals, tasks, tickets, notes, attachments, the audit log, and acting
//! through the gateway (replies, click-to-call) by Commands on the feed.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use switchboard_service::{ApiError, ErrorBody, JsonOrForm};
use switchboard_storage::{
    Channel, Command, CommandKind, Contact, ContactKey, Interaction, NewRecord,
};
use utoipa::{IntoParams, ToSchema};

use super::clients::since;
use super::{AppState, Auth, PageParams, etag, if_match, store_error};
use crate::store::{
    Attachment, AuditEntry, ContactPerson, Ctx, Deal, DealFilter, DealPatch, NewContactPerson,
    NewDeal, NewPipeline, NewTask, NewTicket, Note, Pipeline, Role, StageChange, Task, TaskFilter,
    TaskPatch, Ticket, TicketPatch,
};

/// Largest attachment accepted.
const MAX_ATTACHMENT: usize = 20 * 1024 * 1024;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/pipelines", get(list_pipelines).post(create_pipeline))
        .route(
            "/v1/clients/{id}/contact-persons",
            get(list_contact_persons).post(create_contact_person),
        )
        .route("/v1/deals", get(list_deals).post(create_deal))
        .route("/v1/deals/{id}", get(get_deal).patch(patch_deal))
        .route("/v1/deals/{id}/history", get(deal_history))
        .route("/v1/tasks", get(list_tasks).post(create_task))
        .route("/v1/tasks/{id}", get(get_task).patch(patch_task))
        .route("/v1/tickets", get(list_tickets).post(create_ticket))
        .route("/v1/tickets/{id}", get(get_ticket).patch(patch_ticket))
        .route("/v1/tickets/{id}/time", post(log_ticket_time))
        .route("/v1/clients/{id}/notes", post(create_note))
        .route(
            "/v1/clients/{id}/attachments",
            post(upload_attachment).layer(axum::extract::DefaultBodyLimit::max(MAX_ATTACHMENT)),
        )
        .route("/v1/attachments/{id}", get(get_attachment))
        .route("/v1/conversations/{id}/replies", post(reply))
        .route("/v1/calls", post(place_call))
        .route("/v1/audit/{entity}/{id}", get(audit_log))
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PipelineList {
    items: Vec<Pipeline>,
}

/// Sales scenarios with their stages.
#[utoipa::path(get, path = "/v1/pipelines", responses(
    (status = 200, description = "Pipelines", body = PipelineList),
    (status = 401, description = "No valid token", body = ErrorBody),
))]
pub(crate) async fn list_pipelines(
    State(state): State<AppState>,
    Auth(_ctx): Auth,
) -> Result<Json<PipelineList>, ApiError> {
    Ok(Json(PipelineList {
        items: state.store.pipelines().await.map_err(store_error)?,
    }))
}

/// Adds a sales scenario (administrators).
#[utoipa::path(post, path = "/v1/pipelines", request_body = NewPipeline, responses(
    (status = 201, description = "The pipeline", body = Pipeline),
    (status = 401, description = "No valid token", body = ErrorBody),
    (status = 403, description = "Administrators only", body = ErrorBody),
    (status = 409, description = "A pipeline with this name exists", body = ErrorBody),
    (status = 422, description = "Invalid stages", body = ErrorBody),
))]
pub(crate) async fn create_pipeline(
    State(state): State<AppState>,
    Auth(ctx): Auth,
    JsonOrForm(new): JsonOrForm<NewPipeline>,
) -> Result<impl IntoResponse, ApiError> {
    if ctx.principal.role != Role::Admin {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "administrators only",
        ));
    }
    let p = state
        .store
        .create_pipeline(&ctx, &new)
        .await
        .map_err(store_error)?;
    Ok((StatusCode::CREATED, Json(p)))
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ContactPersonList {
    items: Vec<ContactPerson>,
}

/// The client's contact persons.
#[utoipa::path(get, path = "/v1/clients/{id}/contact-persons", params(("id" = String, Path, description = "Client id")), responses(
    (status = 200, description = "Contact persons", body = ContactPersonList),
    (status = 401, description = "No valid token", body = ErrorBody),
    (status = 404, description = "No such client, or not yours", body = ErrorBody),
))]
pub(crate) async fn list_contact_persons(
    State(state): State<AppState>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
) -> Result<Json<ContactPersonList>, ApiError> {
    Ok(Json(ContactPersonList {
        items: state
            .store
            .contact_persons(&ctx, &id)
            .await
            .map_err(store_error)?,
    }))
}

/// Adds a contact person; their phones and emails will identify the client.
#[utoipa::path(post, path = "/v1/clients/{id}/contact-persons", request_body = NewContactPerson,
    params(("id" = String, Path, description = "Client id")),
    responses(
        (status = 201, description = "The contact person", body = ContactPerson),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such client, or not yours", body = ErrorBody),
        (status = 409, description = "A phone or email belongs to another client", body = ErrorBody),
        (status = 422, description = "Invalid fields", body = ErrorBody),
    )
)]
pub(crate) async fn create_contact_person(
    State(state): State<AppState>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
    JsonOrForm(new): JsonOrForm<NewContactPerson>,
) -> Result<impl IntoResponse, ApiError> {
    let p = state
        .store
        .create_contact_person(&ctx, &id, &new)
        .await
        .map_err(store_error)?;
    Ok((StatusCode::CREATED, Json(p)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct DealQuery {
    /// A user id, or `me`.
    owner: Option<String>,
    stage_id: Option<String>,
    /// `open`, `won` or `lost`.
    status: Option<String>,
    client_id: Option<String>,
    /// RFC 3339.
    updated_since: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DealPage {
    items: Vec<Deal>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

fn me(ctx: &Ctx, owner: Option<String>) -> Option<String> {
    owner.map(|o| {
        if o == "me" {
            ctx.principal.user_id.clone()
        } else {
            o
        }
    })
}

/// Deals the caller may see, most recently updated first.
#[utoipa::path(get, path = "/v1/deals", params(PageParams, DealQuery), responses(
    (status = 200, description = "A page of deals", body = DealPage),
    (status = 400, description = "Bad limit, cursor or filter", body = ErrorBody),
    (status = 401, description = "No valid token", body = ErrorBody),
))]
pub(crate) async fn list_deals(
    State(state): State<AppState>,
    Auth(ctx): Auth,
    Query(page): Query<PageParams>,
    Query(q): Query<DealQuery>,
) -> Result<Json<DealPage>, ApiError> {
    let (cursor, limit) = page.parse()?;
    let filter = DealFilter {
        owner_id: me(&ctx, q.owner),
        stage_id: q.stage_id,
        status: q.status,
        client_id: q.client_id,
        updated_since: since("updated_since", &q.updated_since)?,
    };
    let (items, next) = state
        .store
        .deals(&ctx, &filter, cursor.as_ref(), limit)
        .await
        .map_err(store_error)?;
    Ok(Json(DealPage {
        items,
        next_cursor: next.map(|c| c.encode()),
    }))
}

/// Opens a deal for a client in the first stage of a pipeline.
#[utoipa::path(post, path = "/v1/deals", request_body = NewDeal,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retry safe")),
    responses(
        (status = 201, description = "The deal", body = Deal),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "A manager set owner_id", body = ErrorBody),
        (status = 422, description = "Invalid fields (an unknown or foreign client too)", body = ErrorBody),
    )
)]
pub(crate) async fn create_deal(
    State(state): State<AppState>,
    Auth(ctx): Auth,
    JsonOrForm(new): JsonOrForm<NewDeal>,
) -> Result<impl IntoResponse, ApiError> {
    let deal = state
        .store
        .create_deal(&ctx, &new)
        .await
        .map_err(store_error)?;
    Ok((StatusCode::CREATED, etag(deal.version), Json(deal)))
}

/// One deal, with its `ETag`.
#[utoipa::path(get, path = "/v1/deals/{id}", params(("id" = String, Path, description = "Deal id")), responses(
    (status = 200, description = "The deal", body = Deal),
    (status = 401, description = "No valid token", body = ErrorBody),
    (status = 404, description = "No such deal, or not yours", body = ErrorBody),
))]
pub(crate) async fn get_deal(
    State(state): State<AppState>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let deal = state.store.deal(&ctx, &id).await.map_err(store_error)?;
    Ok((etag(deal.version), Json(deal)))
}

/// Changes a deal or moves it to another stage; needs `If-Match`.
#[utoipa::path(patch, path = "/v1/deals/{id}", request_body = DealPatch,
    params(
        ("id" = String, Path, description = "Deal id"),
        ("If-Match" = String, Header, description = "The ETag of the version being changed"),
    ),
    responses(
        (status = 200, description = "The changed deal", body = Deal),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "A manager set owner_id", body = ErrorBody),
        (status = 404, description = "No such deal, or not yours", body = ErrorBody),
        (status = 412, description = "The deal changed since it was read", body = ErrorBody),
        (status = 422, description = "Invalid fields", body = ErrorBody),
        (status = 428, description = "If-Match missing", body = ErrorBody),
    )
)]
pub(crate) async fn patch_deal(
    State(state): State<AppState>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonOrForm(patch): JsonOrForm<DealPatch>,
) -> Result<impl IntoResponse, ApiError> {
    let version = if_match(&headers)?;
    let deal = state
        .store
        .patch_deal(&ctx, &id, version, &patch)
        .await
        .map_err(store_error)?;
    // A closed deal may have queued its report to a lead service; it goes
    // out now, or with the consumer's next turn if the feed cannot take it.
    if let Some(feed) = state.feed.as_ref().filter(|_| deal.status != "open") {
        crate::consumer::send_queued_commands(&state.store, feed).await;
    }
    Ok((etag(deal.version), Json(deal)))
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct StageHistory {
    items: Vec<StageChange>,
}

/// The deal's moves between stages, oldest first.
#[utoipa::path(get, path = "/v1/deals/{id}/history", params(("id" = String, Path, description = "Deal id")), responses(
    (status = 200, description = "Stage history", body = StageHistory),
    (status = 401, description = "No valid token", body = ErrorBody),
    (status = 404, description = "No such deal, or not yours", body = ErrorBody),
))]
pub(crate) async fn deal_history(
    State(state): State<AppState>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
) -> Result<Json<StageHistory>, ApiError> {
    Ok(Json(StageHistory {
        items: state
            .store
            .deal_history(&ctx, &id)
            .await
            .map_err(store_error)?,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct TaskQuery {
    /// A user id, or `me`.
    owner: Option<String>,
    done: Option<bool>,
    /// RFC 3339: only tasks due before this.
    due_before: Option<String>,
    client_id: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TaskPage {
    items: Vec<Task>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

/// Tasks and calendar entries the caller may see.
#[utoipa::path(get, path = "/v1/tasks", params(PageParams, TaskQuery), responses(
    (status = 200, description = "A page of tasks", body = TaskPage),
    (status = 400, description = "Bad limit, cursor or filter", body = ErrorBody),
    (status = 401, description = "No valid token", body = ErrorBody),
))]
pub(crate) async fn list_tasks(
    State(state): State<AppState>,
    Auth(ctx): Auth,
    Query(page): Query<PageParams>,
    Query(q): Query<TaskQuery>,
) -> Result<Json<TaskPage>, ApiError> {
    let (cursor, limit) = page.parse()?;
    let filter = TaskFilter {
        owner_id: me(&ctx, q.owner),
        done: q.done,
        due_before: since("due_before", &q.due_before)?,
        client_id: q.client_id,
    };
    let (items, next) = state
        .store
        .tasks(&ctx, &filter, cursor.as_ref(), limit)
        .await
        .map_err(store_error)?;
    Ok(Json(TaskPage {
        items,
        next_cursor: next.map(|c| c.encode()),
    }))
}

/// Creates a task or a calendar entry, optionally for a client or deal.
#[utoipa::path(post, path = "/v1/tasks", request_body = NewTask,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retry safe")),
    responses(
        (status = 201, description = "The task", body = Task),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "A manager assigned someone else", body = ErrorBody),
        (status = 422, description = "Invalid fields", body = ErrorBody),
    )
)]
pub(crate) async fn create_task(
    State(state): State<AppState>,
    Auth(ctx): Auth,
    JsonOrForm(new): JsonOrForm<NewTask>,
) -> Result<impl IntoResponse, ApiError> {
    let task = state
        .store
        .create_task(&ctx, &new)
        .await
        .map_err(store_error)?;
    Ok((StatusCode::CREATED, etag(task.version), Json(task)))
}

/// One task, with its `ETag`.
#[utoipa::path(get, path = "/v1/tasks/{id}", params(("id" = String, Path, description = "Task id")), responses(
    (status = 200, description = "The task", body = Task),
    (status = 401, description = "No valid token", body = ErrorBody),
    (status = 404, description = "No such task, or not yours", body = ErrorBody),
))]
pub(crate) async fn get_task(
    State(state): State<AppState>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let task = state.store.task(&ctx, &id).await.map_err(store_error)?;
    Ok((etag(task.version), Json(task)))
}

/// Changes a task (`done: true` completes it); needs `If-Match`.
#[utoipa::path(patch, path = "/v1/tasks/{id}", request_body = TaskPatch,
    params(
        ("id" = String, Path, description = "Task id"),
        ("If-Match" = String, Header, description = "The ETag of the version being changed"),
    ),
    responses(
        (status = 200, description = "The changed task", body = Task),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "A manager assigned someone else", body = ErrorBody),
        (status = 404, description = "No such task, or not yours", body = ErrorBody),
        (status = 412, description = "The task changed since it was read", body = ErrorBody),
        (status = 428, description = "If-Match missing", body = ErrorBody),
    )
)]
pub(crate) async fn patch_task(
    State(state): State<AppState>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonOrForm(patch): JsonOrForm<TaskPatch>,
) -> Result<impl IntoResponse, ApiError> {
    let version = if_match(&headers)?;
    let task = state
        .store
        .patch_task(&ctx, &id, version, &patch)
        .await
        .map_err(store_error)?;
    Ok((etag(task.version), Json(task)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct TicketQuery {
    /// `open`, `pending`, `solved` or `closed`.
    status: Option<String>,
    /// A user id, or `me`.
    owner: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TicketPage {
    items: Vec<Ticket>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

/// Support tickets the caller may see.
#[utoipa::path(get, path = "/v1/tickets", params(PageParams, TicketQuery), responses(
    (status = 200, description = "A page of tickets", body = TicketPage),
    (status = 400, description = "Bad limit or cursor", body = ErrorBody),
    (status = 401, description = "No valid token", body = ErrorBody),
))]
pub(crate) async fn list_tickets(
    State(state): State<AppState>,
    Auth(ctx): Auth,
    Query(page): Query<PageParams>,
    Query(q): Query<TicketQuery>,
) -> Result<Json<TicketPage>, ApiError> {
    let (cursor, limit) = page.parse()?;
    let owner = me(&ctx, q.owner);
    let (items, next) = state
        .store
        .tickets(&ctx, &q.status, &owner, cursor.as_ref(), limit)
        .await
        .map_err(store_error)?;
    Ok(Json(TicketPage {
        items,
        next_cursor: next.map(|c| c.encode()),
    }))
}

/// Opens a support ticket; its SLA level sets when it is due.
#[utoipa::path(post, path = "/v1/tickets", request_body = NewTicket,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retry safe")),
    responses(
        (status = 201, description = "The ticket", body = Ticket),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "A manager set owner_id", body = ErrorBody),
        (status = 422, description = "Invalid fields", body = ErrorBody),
    )
)]
pub(crate) async fn create_ticket(
    State(state): State<AppState>,
    Auth(ctx): Auth,
    JsonOrForm(new): JsonOrForm<NewTicket>,
) -> Result<impl IntoResponse, ApiError> {
    let ticket = state
        .store
        .create_ticket(&ctx, &new)
        .await
        .map_err(store_error)?;
    Ok((StatusCode::CREATED, etag(ticket.version), Json(ticket)))
}

/// One ticket, with its `ETag`.
#[utoipa::path(get, path = "/v1/tickets/{id}", params(("id" = String, Path, description = "Ticket id")), responses(
    (status = 200, description = "The ticket", body = Ticket),
    (status = 401, description = "No valid token", body = ErrorBody),
    (status = 404, description = "No such ticket, or not yours", body = ErrorBody),
))]
pub(crate) async fn get_ticket(
    State(state): State<AppState>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let ticket = state.store.ticket(&ctx, &id).await.map_err(store_error)?;
    Ok((etag(ticket.version), Json(ticket)))
}

/// Changes a ticket; needs `If-Match`.
#[utoipa::path(patch, path = "/v1/tickets/{id}", request_body = TicketPatch,
    params(
        ("id" = String, Path, description = "Ticket id"),
        ("If-Match" = String, Header, description = "The ETag of the version being changed"),
    ),
    responses(
        (status = 200, description = "The changed ticket", body = Ticket),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "A manager set owner_id", body = ErrorBody),
        (status = 404, description = "No such ticket, or not yours", body = ErrorBody),
        (status = 412, description = "The ticket changed since it was read", body = ErrorBody),
        (status = 428, description = "If-Match missing", body = ErrorBody),
    )
)]
pub(crate) async fn patch_ticket(
    State(state): State<AppState>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonOrForm(patch): JsonOrForm<TicketPatch>,
) -> Result<impl IntoResponse, ApiError> {
    let version = if_match(&headers)?;
    let ticket = state
        .store
        .patch_ticket(&ctx, &id, Some(version), &patch, 0)
        .await
        .map_err(store_error)?;
    Ok((etag(ticket.version), Json(ticket)))
}

/// `POST /v1/tickets/{id}/time`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TimeSpent {
    /// 1 to 1440.
    minutes: i64,
}

/// Adds time spent on a ticket.
#[utoipa::path(post, path = "/v1/tickets/{id}/time", request_body = TimeSpent,
    params(("id" = String, Path, description = "Ticket id")),
    responses(
        (status = 200, description = "The ticket", body = Ticket),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such ticket, or not yours", body = ErrorBody),
        (status = 422, description = "Minutes out of range", body = ErrorBody),
    )
)]
pub(crate) async fn log_ticket_time(
    State(state): State<AppState>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
    JsonOrForm(t): JsonOrForm<TimeSpent>,
) -> Result<impl IntoResponse, ApiError> {
    if !(1..=1440).contains(&t.minutes) {
        return Err(ApiError::validation(
            [("minutes".to_owned(), "must be 1 to 1440".to_owned())].into(),
        ));
    }
    let ticket = state
        .store
        .patch_ticket(&ctx, &id, None, &TicketPatch::default(), t.minutes)
        .await
        .map_err(store_error)?;
    Ok((etag(ticket.version), Json(ticket)))
}

/// `POST /v1/clients/{id}/notes`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewNote {
    body: String,
    #[serde(default)]
    deal_id: Option<String>,
}

/// Adds a note to the client card.
#[utoipa::path(post, path = "/v1/clients/{id}/notes", request_body = NewNote,
    params(("id" = String, Path, description = "Client id")),
    responses(
        (status = 201, description = "The note", body = Note),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such client, or not yours", body = ErrorBody),
        (status = 422, description = "Invalid fields", body = ErrorBody),
    )
)]
pub(crate) async fn create_note(
    State(state): State<AppState>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
    JsonOrForm(new): JsonOrForm<NewNote>,
) -> Result<impl IntoResponse, ApiError> {
    let note = state
        .store
        .create_note(&ctx, &id, &new.body, new.deal_id.as_deref())
        .await
        .map_err(store_error)?;
    Ok((StatusCode::CREATED, Json(note)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct UploadQuery {
    /// The file's name as the user sees it.
    filename: String,
}

/// Attaches a file (the request body, with its `Content-Type`) to a client;
/// stored by its SHA-256, at most 20 MiB.
#[utoipa::path(post, path = "/v1/clients/{id}/attachments",
    params(("id" = String, Path, description = "Client id"), UploadQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 201, description = "The attachment", body = Attachment),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such client, or not yours", body = ErrorBody),
        (status = 413, description = "Larger than 20 MiB", body = ErrorBody),
        (status = 422, description = "Empty file or bad name", body = ErrorBody),
    )
)]
pub(crate) async fn upload_attachment(
    State(state): State<AppState>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
    Query(q): Query<UploadQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    // Check access before writing anything to disk.
    state.store.client(&ctx, &id).await.map_err(store_error)?;
    if body.is_empty() {
        return Err(ApiError::validation(
            [("body".to_owned(), "the file is empty".to_owned())].into(),
        ));
    }
    // Kept only if it can be sent back as a header and looks like a type.
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 200 && v.contains('/') && header::HeaderValue::from_str(v).is_ok())
        .unwrap_or("application/octet-stream")
        .to_owned();
    let sha = hex::encode(Sha256::digest(&body));
    let path = state.files.join(&sha[..2]).join(&sha);
    if !path.exists() {
        let dir = path
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default();
        let tmp = dir.join(format!(".{sha}.part"));
        let write = async {
            tokio::fs::create_dir_all(&dir).await?;
            tokio::fs::write(&tmp, &body).await?;
            tokio::fs::rename(&tmp, &path).await
        };
        write.await.map_err(|e| ApiError::internal(&e))?;
    }
    let size = i64::try_from(body.len()).unwrap_or(i64::MAX);
    let a = state
        .store
        .create_attachment(&ctx, &id, &q.filename, &content_type, size, &sha)
        .await
        .map_err(store_error)?;
    Ok((StatusCode::CREATED, Json(a)))
}

/// Downloads an attachment.
#[utoipa::path(get, path = "/v1/attachments/{id}", params(("id" = String, Path, description = "Attachment id")), responses(
    (status = 200, description = "The file", content_type = "application/octet-stream"),
    (status = 401, description = "No valid token", body = ErrorBody),
    (status = 404, description = "No such attachment, or not yours", body = ErrorBody),
))]
pub(crate) async fn get_attachment(
    State(state): State<AppState>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let a = state
        .store
        .attachment(&ctx, &id)
        .await
        .map_err(store_error)?;
    let bytes = tokio::fs::read(state.files.join(&a.sha256[..2]).join(&a.sha256))
        .await
        .map_err(|e| ApiError::internal(&e))?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                header::HeaderValue::from_str(&a.content_type)
                    .unwrap_or(header::HeaderValue::from_static("application/octet-stream")),
            ),
            (
                header::CONTENT_DISPOSITION,
                content_disposition(&a.filename),
            ),
        ],
        bytes,
    ))
}

/// `attachment` with the name as ASCII (for old clients) and as UTF-8
/// (RFC 6266 / 5987), so any name can be sent.
fn content_disposition(filename: &str) -> header::HeaderValue {
    let ascii: String = filename
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let encoded: String = filename
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    header::HeaderValue::from_str(&format!(
        "attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}"
    ))
    .unwrap_or(header::HeaderValue::from_static("attachment"))
}

/// A command accepted for the gateway.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Accepted {
    /// The Command's id; its outcome comes back as interactions.
    command_id: String,
}

async fn send_command(
    state: &AppState,
    ctx: &Ctx,
    cmd: &Command,
    what: &str,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let feed = state.feed.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "this CRM API has no feed to act through",
        )
    })?;
    feed.append(NewRecord::command(cmd).map_err(|e| ApiError::internal(&e))?)
        .await
        .map_err(|e| ApiError::unavailable(&e))?;
    state
        .store
        .audit_action(
            ctx,
            what,
            "command",
            &cmd.id.to_string(),
            serde_json::to_value(cmd).unwrap_or_default(),
        )
        .await
        .map_err(store_error)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            command_id: cmd.id.to_string(),
        }),
    ))
}

/// `POST /v1/conversations/{id}/replies`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewReply {
    /// What the manager writes; may be empty when a template is named.
    #[serde(default)]
    text: String,
    /// A letter template of the line (email: `email.templates_dir`), filled
    /// with `data`, the contact and the mailbox.
    #[serde(default)]
    template: Option<String>,
    /// Values for the template (an object: a price list, an offer's items).
    #[serde(default)]
    #[schema(value_type = Object)]
    data: Option<serde_json::Value>,
    /// Files of the client's card to attach (ids from
    /// `POST /v1/clients/{id}/attachments`).
    #[serde(default)]
    attachment_ids: Vec<String>,
}

/// Replies in a conversation (or to one interaction) on its channel: the
/// gateway sends it and the sent message comes back as `message.sent`.
#[utoipa::path(post, path = "/v1/conversations/{id}/replies", request_body = NewReply,
    params(
        ("id" = String, Path, description = "Conversation id, or the id of the interaction to answer"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes a retry safe"),
    ),
    responses(
        (status = 202, description = "Handed to the gateway", body = Accepted),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such conversation, or not yours", body = ErrorBody),
        (status = 422, description = "Empty text without a template, data not an object, or an unknown file", body = ErrorBody),
    )
)]
pub(crate) async fn reply(
    State(state): State<AppState>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
    JsonOrForm(r): JsonOrForm<NewReply>,
) -> Result<impl IntoResponse, ApiError> {
    let templated = r.template.as_deref().is_some_and(|t| !t.trim().is_empty());
    if (!templated && r.text.trim().is_empty()) || r.text.chars().count() > 20_000 {
        return Err(ApiError::validation(
            [(
                "text".to_owned(),
                "must be 1 to 20000 characters (or empty with a template)".to_owned(),
            )]
            .into(),
        ));
    }
    if r.data.as_ref().is_some_and(|d| !d.is_object()) {
        return Err(ApiError::validation(
            [("data".to_owned(), "must be an object".to_owned())].into(),
        ));
    }
    if r.attachment_ids.len() > 20 {
        return Err(ApiError::validation(
            [("attachment_ids".to_owned(), "at most 20 files".to_owned())].into(),
        ));
    }
    let mut files = Vec::new();
    for id in &r.attachment_ids {
        match state.store.attachment(&ctx, id).await {
            Ok(a) => files.push(serde_json::json!({
                "sha256": a.sha256, "name": a.filename, "content_type": a.content_type,
            })),
            Err(crate::store::StoreError::NotFound) => {
                return Err(ApiError::validation(
                    [("attachment_ids".to_owned(), format!("no such file: {id}"))].into(),
                ));
            }
            Err(e) => return Err(store_error(e)),
        }
    }
    let head = state
        .store
        .conversation_head(&ctx, &id)
        .await
        .map_err(store_error)?;
    let head: Interaction = serde_json::from_str(&head).map_err(|e| ApiError::internal(&e))?;
    let line = head
        .payload
        .get("line")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    let cmd = Command {
        v: switchboard_storage::envelope::VERSION,
        id: uuid::Uuid::now_v7(),
        issued_at: time::OffsetDateTime::now_utc(),
        kind: CommandKind::MessageSend,
        channel: head.channel,
        target: format!("{}:{line}", head.channel.as_str()),
        contact: head.contact.clone(),
        manager: ctx.principal.routing_id.clone(),
        conversation: Some(
            head.conversation
                .clone()
                .unwrap_or_else(|| head.id.to_string()),
        ),
        payload: {
            let mut p = serde_json::json!({"text": r.text, "reply_to": head.id.to_string()});
            if templated {
                p["template"] = serde_json::json!(r.template);
                p["data"] = r.data.unwrap_or_else(|| serde_json::json!({}));
            }
            if !files.is_empty() {
                p["attachments"] = serde_json::json!(files);
            }
            p
        },
    };
    send_command(&state, &ctx, &cmd, "reply").await
}

/// `POST /v1/calls`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewCall {
    client_id: String,
    /// One of the client's phones (E.164); default: the first.
    #[serde(default)]
    phone: Option<String>,
}

/// Click-to-call: the gateway rings the caller's phone, then the client.
#[utoipa::path(post, path = "/v1/calls", request_body = NewCall,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retry safe")),
    responses(
        (status = 202, description = "Handed to the gateway", body = Accepted),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 422, description = "No such client, or no such phone of it", body = ErrorBody),
    )
)]
pub(crate) async fn place_call(
    State(state): State<AppState>,
    Auth(ctx): Auth,
    JsonOrForm(c): JsonOrForm<NewCall>,
) -> Result<impl IntoResponse, ApiError> {
    let client = match state.store.client(&ctx, &c.client_id).await {
        Ok(client) => client,
        Err(crate::store::StoreError::NotFound) => {
            return Err(ApiError::validation(
                [("client_id".to_owned(), "no such client".to_owned())].into(),
            ));
        }
        Err(e) => return Err(store_error(e)),
    };
    let phone = match c.phone {
        Some(p) if client.phones.contains(&p) => p,
        Some(_) => {
            return Err(ApiError::validation(
                [("phone".to_owned(), "not a phone of this client".to_owned())].into(),
            ));
        }
        None => client.phones.first().cloned().ok_or_else(|| {
            ApiError::validation(
                [("phone".to_owned(), "the client has no phone".to_owned())].into(),
            )
        })?,
    };
    let cmd = Command {
        v: switchboard_storage::envelope::VERSION,
        id: uuid::Uuid::now_v7(),
        issued_at: time::OffsetDateTime::now_utc(),
        kind: CommandKind::CallPlace,
        channel: Channel::Sip,
        target: "sip:".into(),
        contact: Contact {
            key: ContactKey::phone(&phone).into_string(),
            phone: Some(phone),
            email: None,
            user_id: None,
            name: Some(client.name),
        },
        manager: ctx.principal.routing_id.clone(),
        conversation: None,
        payload: serde_json::json!({"client_id": client.id}),
    };
    send_command(&state, &ctx, &cmd, "call").await
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AuditPage {
    items: Vec<AuditEntry>,
}

/// Who changed a record, when and from where (administrators).
#[utoipa::path(get, path = "/v1/audit/{entity}/{id}",
    params(
        ("entity" = String, Path, description = "`client`, `deal`, `task`, `ticket`, `note`, `attachment` or `command`"),
        ("id" = String, Path, description = "The record's id"),
    ),
    responses(
        (status = 200, description = "The record's audit log, oldest first", body = AuditPage),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Administrators only", body = ErrorBody),
    )
)]
pub(crate) async fn audit_log(
    State(state): State<AppState>,
    Auth(ctx): Auth,
    Path((entity, id)): Path<(String, String)>,
) -> Result<Json<AuditPage>, ApiError> {
    if ctx.principal.role != Role::Admin {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "administrators only",
        ));
    }
    Ok(Json(AuditPage {
        items: state
            .store
            .audit_log(&entity, &id)
            .await
            .map_err(store_error)?,
    }))
}
