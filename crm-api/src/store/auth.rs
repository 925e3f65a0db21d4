//! Users, departments, API tokens, and the access rule every owned record
//! follows.

use sha2::{Digest, Sha256};
use sqlx::Row;

use super::{Store, StoreError, db, micros_now, new_id};

/// What a user may do.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Their own clients, deals, tasks and tickets.
    Manager,
    /// Their department's.
    Head,
    /// Everything.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Manager => "manager",
            Role::Head => "head",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "manager" => Role::Manager,
            "head" => Role::Head,
            "admin" => Role::Admin,
            _ => return None,
        })
    }
}

/// The authenticated user of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user_id: String,
    pub role: Role,
    pub department_id: Option<String>,
    /// The manager id of the routing configuration, if the user is one.
    pub routing_id: Option<String>,
}

impl Principal {
    /// A SQL condition (for `alias`, with parameters numbered from `first`)
    /// that holds for the records this principal may see, and its binds.
    /// Managers see what they own; heads what their department owns and
    /// what nobody owns yet; administrators everything.
    pub fn visible(&self, alias: &str, first: usize) -> (String, Vec<String>) {
        match self.role {
            Role::Admin => ("1 = 1".into(), vec![]),
            Role::Manager => (
                format!("{alias}.owner_id = ${first}"),
                vec![self.user_id.clone()],
            ),
            Role::Head => match &self.department_id {
                Some(d) => (
                    format!("({alias}.department_id = ${first} OR {alias}.owner_id IS NULL)"),
                    vec![d.clone()],
                ),
                None => (format!("{alias}.owner_id IS NULL"), vec![]),
            },
        }
    }

    /// Whether this principal may give records to other people.
    pub fn may_assign(&self) -> bool {
        self.role != Role::Manager
    }
}

/// A user as the API shows them.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct User {
    pub id: String,
    /// Manager id in the gateway's routing configuration.
    pub routing_id: Option<String>,
    pub name: String,
    pub role: Role,
    pub department_id: Option<String>,
    pub department: Option<String>,
}

/// SHA-256 of a token, hex: what is stored.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new API token: `sbt_` and 256 random bits, URL-safe.
pub(super) fn new_token() -> Result<String, StoreError> {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| StoreError::Corrupt {
        what: "random source",
        detail: e.to_string(),
    })?;
    Ok(format!(
        "sbt_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

fn user_from_row(r: &sqlx::any::AnyRow) -> Result<User, StoreError> {
    let corrupt = super::corrupt("user");
    let role: String = r.try_get("role").map_err(&corrupt)?;
    Ok(User {
        id: r.try_get("id").map_err(&corrupt)?,
        routing_id: r.try_get("routing_id").map_err(&corrupt)?,
        name: r.try_get("name").map_err(&corrupt)?,
        role: Role::parse(&role).ok_or_else(|| StoreError::Corrupt {
            what: "user",
            detail: format!("role {role}"),
        })?,
        department_id: r.try_get("department_id").map_err(&corrupt)?,
        department: r.try_get("department").map_err(&corrupt)?,
    })
}

const USER_SELECT: &str = "SELECT u.id, u.routing_id, u.name, u.role, u.department_id, d.name AS department \
     FROM users u LEFT JOIN departments d ON d.id = u.department_id";

impl Store {
    /// The department's id, creating it if needed.
    pub async fn ensure_department(&self, name: &str) -> Result<String, StoreError> {
        let id = new_id();
        sqlx::query("INSERT INTO departments (id, name, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING")
            .bind(&id)
            .bind(name)
            .bind(micros_now())
            .execute(&self.pool)
            .await
            .map_err(db("create department"))?;
        sqlx::query("SELECT id FROM departments WHERE name = $1")
            .bind(name)
            .fetch_one(&self.pool)
            .await
            .and_then(|r| r.try_get("id"))
            .map_err(db("read department"))
    }

    /// Creates or updates the user with this routing id.
    pub async fn upsert_user(
        &self,
        routing_id: &str,
        name: &str,
        role: Role,
        department: Option<&str>,
    ) -> Result<User, StoreError> {
        let department_id = match department {
            Some(d) => Some(self.ensure_department(d).await?),
            None => None,
        };
        sqlx::query(
            "INSERT INTO users (id, routing_id, name, role, department_id, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (routing_id) DO UPDATE SET name = excluded.name, role = excluded.role, \
             department_id = excluded.department_id",
        )
        .bind(new_id())
        .bind(routing_id)
        .bind(name)
        .bind(role.as_str())
        .bind(department_id)
        .bind(micros_now())
        .execute(&self.pool)
        .await
        .map_err(db("save user"))?;
        self.user_by_routing_id(routing_id)
            .await?
            .ok_or_else(|| StoreError::Corrupt {
                what: "user",
                detail: "vanished after saving".into(),
            })
    }

    pub async fn user_by_routing_id(&self, routing_id: &str) -> Result<Option<User>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{USER_SELECT} WHERE u.routing_id = $1"
        )))
        .bind(routing_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("read user"))?;
        row.as_ref().map(user_from_row).transpose()
    }

    pub async fn user(&self, id: &str) -> Result<Option<User>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{USER_SELECT} WHERE u.id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("read user"))?;
        row.as_ref().map(user_from_row).transpose()
    }

    pub async fn users(&self) -> Result<Vec<User>, StoreError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "{USER_SELECT} ORDER BY u.name, u.id"
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(db("list users"))?
        .iter()
        .map(user_from_row)
        .collect()
    }

    /// Issues a token for the user; the token itself is returned once and
    /// only its hash is kept.
    pub async fn create_token(&self, user_id: &str, label: &str) -> Result<String, StoreError> {
        let token = new_token()?;
        sqlx::query(
            "INSERT INTO api_tokens (id, user_id, token_sha256, label, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(new_id())
        .bind(user_id)
        .bind(token_hash(&token))
        .bind(label)
        .bind(micros_now())
        .execute(&self.pool)
        .await
        .map_err(db("create token"))?;
        Ok(token)
    }

    /// Revokes every token of a user; returns how many.
    pub async fn revoke_tokens(&self, user_id: &str) -> Result<u64, StoreError> {
        sqlx::query(
            "UPDATE api_tokens SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL",
        )
        .bind(micros_now())
        .bind(user_id)
        .execute(&self.pool)
        .await
        .map(|r| r.rows_affected())
        .map_err(db("revoke tokens"))
    }

    /// The user a bearer token belongs to, if it is valid.
    pub async fn principal_for_token(&self, token: &str) -> Result<Option<Principal>, StoreError> {
        let row = sqlx::query(
            "SELECT u.id, u.role, u.department_id, u.routing_id FROM api_tokens t \
             JOIN users u ON u.id = t.user_id \
             WHERE t.token_sha256 = $1 AND t.revoked_at IS NULL",
        )
        .bind(token_hash(token))
        .fetch_optional(&self.pool)
        .await
        .map_err(db("check token"))?;
        let Some(r) = row else { return Ok(None) };
        let corrupt = super::corrupt("user");
        let role: String = r.try_get("role").map_err(&corrupt)?;
        Ok(Some(Principal {
            user_id: r.try_get("id").map_err(&corrupt)?,
            role: Role::parse(&role).unwrap_or(Role::Manager),
            department_id: r.try_get("department_id").map_err(&corrupt)?,
            routing_id: r.try_get("routing_id").map_err(&corrupt)?,
        }))
    }
}

impl Store {
    /// The kept response for a user's Idempotency-Key: (request hash,
    /// status, body).
    pub async fn idempotent_response(
        &self,
        user_id: &str,
        key: &str,
    ) -> Result<Option<(String, i64, String)>, StoreError> {
        let row = sqlx::query("SELECT request_sha256, status, body FROM idempotency_keys WHERE user_id = $1 AND key = $2")
            .bind(user_id)
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("read idempotency key"))?;
        row.map(|r| {
            let e = super::corrupt("idempotency key");
            Ok((
                r.try_get("request_sha256").map_err(&e)?,
                r.try_get("status").map_err(&e)?,
                r.try_get("body").map_err(&e)?,
            ))
        })
        .transpose()
    }

    pub async fn keep_idempotent_response(
        &self,
        user_id: &str,
        key: &str,
        request_hash: &str,
        status: i64,
        body: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO idempotency_keys (user_id, key, request_sha256, status, body, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (user_id, key) DO NOTHING",
        )
        .bind(user_id)
        .bind(key)
        .bind(request_hash)
        .bind(status)
        .bind(body)
        .bind(micros_now())
        .execute(&self.pool)
        .await
        .map_err(db("keep idempotency key"))?;
        Ok(())
    }
}
