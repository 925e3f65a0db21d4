//! Who the caller is; users and their tokens (administrators).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use switchboard_service::{ApiError, ErrorBody, JsonOrForm};
use utoipa::ToSchema;

use super::{AppState, Auth, store_error};
use crate::store::{Ctx, Role, User};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/me", get(me))
        .route("/v1/users", get(list_users).post(create_user))
        .route(
            "/v1/users/{id}/tokens",
            post(create_token).delete(revoke_tokens),
        )
}

fn admin_only(ctx: &Ctx) -> Result<(), ApiError> {
    if ctx.principal.role == Role::Admin {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "administrators only",
        ))
    }
}

/// The caller.
#[utoipa::path(get, path = "/v1/me", responses(
    (status = 200, description = "The authenticated user", body = User),
    (status = 401, description = "No valid token", body = ErrorBody),
))]
pub(crate) async fn me(
    State(state): State<AppState>,
    Auth(ctx): Auth,
) -> Result<Json<User>, ApiError> {
    let user = state
        .store
        .user(&ctx.principal.user_id)
        .await
        .map_err(store_error)?;
    user.map(Json)
        .ok_or_else(|| ApiError::not_found("the token's user is gone"))
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct UserList {
    items: Vec<User>,
}

/// Users: all of them for administrators, the department for its head.
#[utoipa::path(get, path = "/v1/users", responses(
    (status = 200, description = "Users", body = UserList),
    (status = 401, description = "No valid token", body = ErrorBody),
    (status = 403, description = "Managers cannot list users", body = ErrorBody),
))]
pub(crate) async fn list_users(
    State(state): State<AppState>,
    Auth(ctx): Auth,
) -> Result<Json<UserList>, ApiError> {
    let p = &ctx.principal;
    if p.role == Role::Manager {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "managers cannot list users",
        ));
    }
    let mut items = state.store.users().await.map_err(store_error)?;
    if p.role == Role::Head {
        items.retain(|u| u.department_id == p.department_id);
    }
    Ok(Json(UserList { items }))
}

/// `POST /v1/users`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewUser {
    /// The manager id in the gateway's routing configuration (also the login).
    routing_id: String,
    name: String,
    role: Role,
    /// A department name; created if new.
    department: Option<String>,
}

/// Creates or updates a user (administrators).
#[utoipa::path(post, path = "/v1/users", request_body = NewUser, responses(
    (status = 201, description = "The user", body = User),
    (status = 401, description = "No valid token", body = ErrorBody),
    (status = 403, description = "Administrators only", body = ErrorBody),
    (status = 422, description = "Invalid fields", body = ErrorBody),
))]
pub(crate) async fn create_user(
    State(state): State<AppState>,
    Auth(ctx): Auth,
    JsonOrForm(new): JsonOrForm<NewUser>,
) -> Result<(StatusCode, Json<User>), ApiError> {
    admin_only(&ctx)?;
    let routing_id = new.routing_id.trim();
    if routing_id.is_empty() || routing_id.len() > 64 || new.name.trim().is_empty() {
        return Err(ApiError::validation(
            [(
                "routing_id".to_owned(),
                "routing_id and name must not be empty (routing_id at most 64)".to_owned(),
            )]
            .into(),
        ));
    }
    let user = state
        .store
        .upsert_user(
            routing_id,
            new.name.trim(),
            new.role,
            new.department.as_deref(),
        )
        .await
        .map_err(store_error)?;
    Ok((StatusCode::CREATED, Json(user)))
}

/// A new token, shown once.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct NewToken {
    token: String,
}

/// Issues an API token for a user (administrators). Only its hash is kept.
#[utoipa::path(post, path = "/v1/users/{id}/tokens",
    params(("id" = String, Path, description = "User id")),
    responses(
        (status = 201, description = "The token; it is not shown again", body = NewToken),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Administrators only", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
    )
)]
pub(crate) async fn create_token(
    State(state): State<AppState>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<NewToken>), ApiError> {
    admin_only(&ctx)?;
    state
        .store
        .user(&id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| ApiError::not_found("no such user"))?;
    let token = state
        .store
        .create_token(&id, "api")
        .await
        .map_err(store_error)?;
    Ok((StatusCode::CREATED, Json(NewToken { token })))
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Revoked {
    revoked: u64,
}

/// Revokes every token of a user (administrators); they stop working within
/// 10 seconds (the token cache).
#[utoipa::path(delete, path = "/v1/users/{id}/tokens",
    params(("id" = String, Path, description = "User id")),
    responses(
        (status = 200, description = "How many tokens were revoked", body = Revoked),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Administrators only", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
    )
)]
pub(crate) async fn revoke_tokens(
    State(state): State<AppState>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
) -> Result<Json<Revoked>, ApiError> {
    admin_only(&ctx)?;
    state
        .store
        .user(&id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| ApiError::not_found("no such user"))?;
    let revoked = state.store.revoke_tokens(&id).await.map_err(store_error)?;
    state
        .store
        .audit_action(
            &ctx,
            "revoke_tokens",
            "user",
            &id,
            serde_json::json!({"revoked": revoked}),
        )
        .await
        .map_err(store_error)?;
    Ok(Json(Revoked { revoked }))
}
