//! Clients (companies and people, potential and current), their identities,
//! the client card, and the audit log every write goes to.

use serde_json::json;
use sqlx::Row;
use switchboard_storage::OwnerChange;

use super::feed::refresh_search;
use super::sql::Sql;
use super::{Ctx, Store, StoreError, corrupt, db, micros_now, new_id, rfc3339};
use crate::cursor::Cursor;

/// A client as the API shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct Client {
    pub id: String,
    /// `company` or `person`.
    pub kind: String,
    /// `potential` (a lead, not yet a customer) or `current`.
    pub status: String,
    pub name: String,
    pub owner_id: Option<String>,
    pub department_id: Option<String>,
    /// Where the first lead came from (`campaign.source`).
    pub source: Option<String>,
    /// E.164.
    pub phones: Vec<String>,
    pub emails: Vec<String>,
    /// Messenger and service accounts (`telegram:12345`).
    pub accounts: Vec<String>,
    pub created_at: String,
    pub updated_at: String,
    pub promoted_at: Option<String>,
    /// For `ETag` / `If-Match`.
    #[serde(skip)]
    pub version: i64,
}

/// `POST /v1/clients`.
#[derive(Debug, Clone, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewClient {
    /// `company` or `person` (default).
    #[serde(default)]
    pub kind: Option<String>,
    pub name: String,
    /// E.164 numbers, e.g. `+79161234567`.
    #[serde(default)]
    pub phones: Vec<String>,
    #[serde(default)]
    pub emails: Vec<String>,
    /// `current` (default) or `potential`.
    #[serde(default)]
    pub status: Option<String>,
    /// Heads and administrators only; a manager's clients are their own.
    #[serde(default)]
    pub owner_id: Option<String>,
}

/// `PATCH /v1/clients/{id}`; absent fields are left as they are.
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientPatch {
    pub name: Option<String>,
    pub kind: Option<String>,
    /// Heads (within their department) and administrators only.
    pub owner_id: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct ClientFilter {
    pub status: Option<String>,
    /// A user id.
    pub owner_id: Option<String>,
    /// Microseconds since the epoch.
    pub updated_since: Option<i64>,
    /// Substring of the name, a phone or an email.
    pub q: Option<String>,
}

/// One entry of the client card.
#[derive(Debug, Clone)]
pub struct TimelineItem {
    pub id: String,
    pub at: i64,
    pub kind: String,
    pub ref_id: String,
    /// JSON as stored: the interaction envelope, or a snapshot of the record.
    pub body: String,
}

const CLIENT_COLUMNS: &str = "c.id, c.kind, c.status, c.name, c.owner_id, c.department_id, c.source, \
     c.created_at, c.updated_at, c.promoted_at, c.version";

fn client_from_row(r: &sqlx::any::AnyRow) -> Result<Client, StoreError> {
    let e = corrupt("client");
    let promoted: Option<i64> = r.try_get("promoted_at").map_err(&e)?;
    Ok(Client {
        id: r.try_get("id").map_err(&e)?,
        kind: r.try_get("kind").map_err(&e)?,
        status: r.try_get("status").map_err(&e)?,
        name: r.try_get("name").map_err(&e)?,
        owner_id: r.try_get("owner_id").map_err(&e)?,
        department_id: r.try_get("department_id").map_err(&e)?,
        source: r.try_get("source").map_err(&e)?,
        phones: Vec::new(),
        emails: Vec::new(),
        accounts: Vec::new(),
        created_at: rfc3339(r.try_get("created_at").map_err(&e)?)?,
        updated_at: rfc3339(r.try_get("updated_at").map_err(&e)?)?,
        promoted_at: promoted.map(rfc3339).transpose()?,
        version: r.try_get("version").map_err(&e)?,
    })
}

pub(crate) type Tx<'a> = sqlx::Transaction<'a, sqlx::Any>;

/// Writes one audit record in the caller's transaction.
pub(crate) async fn audit(
    tx: &mut Tx<'_>,
    ctx: &Ctx,
    action: &str,
    entity: &str,
    entity_id: &str,
    details: serde_json::Value,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit_log (id, at, user_id, action, entity, entity_id, remote_addr, details) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(new_id())
    .bind(micros_now())
    .bind(&ctx.principal.user_id)
    .bind(action)
    .bind(entity)
    .bind(entity_id)
    .bind(ctx.remote.clone())
    .bind(details.to_string())
    .execute(&mut **tx)
    .await
    .map_err(db("write audit log"))?;
    Ok(())
}

/// Adds an entry to a client's card.
pub(crate) async fn add_to_timeline(
    tx: &mut Tx<'_>,
    client_id: &str,
    kind: &str,
    ref_id: &str,
    body: serde_json::Value,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO timeline_entries (id, client_id, at, kind, ref_id, body) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(new_id())
        .bind(client_id)
        .bind(micros_now())
        .bind(kind)
        .bind(ref_id)
        .bind(body.to_string())
        .execute(&mut **tx)
        .await
        .map_err(db("add to timeline"))?;
    Ok(())
}

fn check_kind(kind: &str) -> Result<(), StoreError> {
    match kind {
        "company" | "person" => Ok(()),
        _ => Err(StoreError::Invalid {
            field: "kind",
            reason: "must be company or person".into(),
        }),
    }
}

fn check_name(name: &str) -> Result<String, StoreError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 300 {
        return Err(StoreError::Invalid {
            field: "name",
            reason: "must be 1 to 300 characters".into(),
        });
    }
    Ok(name.to_owned())
}

pub(crate) fn check_phone(p: &str) -> Result<(), StoreError> {
    let digits = p.strip_prefix('+').unwrap_or("");
    let ok = (7..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0');
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid {
            field: "phones",
            reason: format!("{p:?} is not an E.164 number such as +79161234567"),
        })
    }
}

pub(crate) fn check_email(e: &str) -> Result<String, StoreError> {
    let e = e.trim().to_lowercase();
    let ok = e.len() <= 254
        && e.split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && d.contains('.') && !d.contains('@'))
        && !e.chars().any(char::is_whitespace);
    if ok {
        Ok(e)
    } else {
        Err(StoreError::Invalid {
            field: "emails",
            reason: format!("{e:?} is not an email address"),
        })
    }
}

impl Store {
    /// The owner a principal may give a record: themselves for managers;
    /// someone in their department for heads; anyone for administrators.
    /// Returns the owner and their department.
    pub(crate) async fn resolve_owner(
        &self,
        ctx: &Ctx,
        requested: Option<&str>,
    ) -> Result<(Option<String>, Option<String>), StoreError> {
        let p = &ctx.principal;
        let owner = match requested {
            None => return Ok((Some(p.user_id.clone()), p.department_id.clone())),
            Some(o) if !p.may_assign() && o != p.user_id => {
                return Err(StoreError::Forbidden {
                    reason: "managers cannot set owner_id",
                });
            }
            Some(o) => o,
        };
        let user = self.user(owner).await?.ok_or(StoreError::Invalid {
            field: "owner_id",
            reason: "no such user".into(),
        })?;
        if p.role == super::Role::Head && user.department_id != p.department_id {
            return Err(StoreError::Forbidden {
                reason: "heads assign within their department",
            });
        }
        Ok((Some(user.id), user.department_id))
    }

    async fn load_identities(&self, clients: &mut [Client]) -> Result<(), StoreError> {
        if clients.is_empty() {
            return Ok(());
        }
        let mut sql =
            Sql::new("SELECT client_id, kind, value FROM identities WHERE client_id IN (");
        for (i, c) in clients.iter().enumerate() {
            if i > 0 {
                sql.push(", ");
            }
            let ph = sql.arg(c.id.as_str());
            sql.push(&ph);
        }
        sql.push(") ORDER BY kind, value");
        let rows = sql
            .query()
            .fetch_all(&self.pool)
            .await
            .map_err(db("read identities"))?;
        for r in rows {
            let e = corrupt("identity");
            let client_id: String = r.try_get("client_id").map_err(&e)?;
            let kind: String = r.try_get("kind").map_err(&e)?;
            let value: String = r.try_get("value").map_err(&e)?;
            if let Some(c) = clients.iter_mut().find(|c| c.id == client_id) {
                match kind.as_str() {
                    "phone" => c.phones.push(value),
                    "email" => c.emails.push(value),
                    _ => c.accounts.push(value),
                }
            }
        }
        Ok(())
    }

    /// Clients the principal may see, most recently updated first.
    pub async fn clients(
        &self,
        ctx: &Ctx,
        filter: &ClientFilter,
        cursor: Option<&Cursor>,
        limit: u32,
    ) -> Result<(Vec<Client>, Option<Cursor>), StoreError> {
        let mut sql = Sql::new(&format!(
            "SELECT {CLIENT_COLUMNS} FROM clients c WHERE 1 = 1"
        ));
        sql.visible_to(&ctx.principal, "c");
        if let Some(s) = &filter.status {
            let ph = sql.arg(s.as_str());
            sql.push(&format!(" AND c.status = {ph}"));
        }
        if let Some(o) = &filter.owner_id {
            let ph = sql.arg(o.as_str());
            sql.push(&format!(" AND c.owner_id = {ph}"));
        }
        if let Some(t) = filter.updated_since {
            let ph = sql.arg(t);
            sql.push(&format!(" AND c.updated_at >= {ph}"));
        }
        if let Some(q) = filter.q.as_deref().map(str::trim).filter(|q| !q.is_empty()) {
            let escaped = q
                .to_lowercase()
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            let ph = sql.arg(format!("%{escaped}%"));
            sql.push(&format!(" AND c.search_text LIKE {ph} ESCAPE '\\'"));
        }
        if let Some(c) = cursor {
            let (a, b) = (sql.arg(c.occurred_at), sql.arg(c.id.as_str()));
            sql.push(&format!(
                " AND (c.updated_at < {a} OR (c.updated_at = {a} AND c.id < {b}))"
            ));
        }
        let ph = sql.arg(i64::from(limit) + 1);
        sql.push(&format!(
            " ORDER BY c.updated_at DESC, c.id DESC LIMIT {ph}"
        ));
        let rows = sql
            .query()
            .fetch_all(&self.pool)
            .await
            .map_err(db("list clients"))?;
        let mut out = rows
            .iter()
            .take(limit as usize)
            .map(client_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let next = if rows.len() > limit as usize {
            let last = &rows[limit as usize - 1];
            Some(Cursor {
                occurred_at: last.try_get("updated_at").map_err(corrupt("client"))?,
                id: last.try_get("id").map_err(corrupt("client"))?,
            })
        } else {
            None
        };
        self.load_identities(&mut out).await?;
        Ok((out, next))
    }

    /// One client, if the principal may see it.
    pub async fn client(&self, ctx: &Ctx, id: &str) -> Result<Client, StoreError> {
        let mut sql = Sql::new(&format!(
            "SELECT {CLIENT_COLUMNS} FROM clients c WHERE c.id = $1"
        ));
        sql.arg(id);
        sql.visible_to(&ctx.principal, "c");
        let row = sql
            .query()
            .fetch_optional(&self.pool)
            .await
            .map_err(db("read client"))?;
        let mut c = vec![
            row.as_ref()
                .map(client_from_row)
                .transpose()?
                .ok_or(StoreError::NotFound)?,
        ];
        self.load_identities(&mut c).await?;
        c.pop().ok_or(StoreError::NotFound)
    }

    pub async fn create_client(
        &self,
        ctx: &Ctx,
        new: &NewClient,
    ) -> Result<(Client, Vec<OwnerChange>), StoreError> {
        let kind = new.kind.clone().unwrap_or_else(|| "person".into());
        check_kind(&kind)?;
        let name = check_name(&new.name)?;
        let status = new.status.clone().unwrap_or_else(|| "current".into());
        if status != "current" && status != "potential" {
            return Err(StoreError::Invalid {
                field: "status",
                reason: "must be current or potential".into(),
            });
        }
        for p in &new.phones {
            check_phone(p)?;
        }
        let emails = new
            .emails
            .iter()
            .map(|e| check_email(e))
            .collect::<Result<Vec<_>, _>>()?;
        let (owner, department) = self.resolve_owner(ctx, new.owner_id.as_deref()).await?;
        let id = new_id();
        let now = micros_now();
        let mut tx = self.pool.begin().await.map_err(db("begin"))?;
        sqlx::query(
            "INSERT INTO clients (id, kind, status, name, owner_id, department_id, source, search_text, \
             created_at, updated_at, promoted_at, version) VALUES ($1, $2, $3, $4, $5, $6, NULL, '', $7, $7, $8, 1)",
        )
        .bind(&id)
        .bind(&kind)
        .bind(&status)
        .bind(&name)
        .bind(owner)
        .bind(department)
        .bind(now)
        .bind((status == "current").then_some(now))
        .execute(&mut *tx)
        .await
        .map_err(db("create client"))?;
        for (k, v) in new
            .phones
            .iter()
            .map(|p| ("phone", p))
            .chain(emails.iter().map(|e| ("email", e)))
        {
            sqlx::query("INSERT INTO identities (kind, value, client_id, contact_person_id, created_at) VALUES ($1, $2, $3, NULL, $4)")
                .bind(k)
                .bind(v)
                .bind(&id)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(db("identity"))?;
        }
        refresh_search(&mut tx, &id).await?;
        audit(
            &mut tx,
            ctx,
            "create",
            "client",
            &id,
            json!({"name": name, "kind": kind, "status": status}),
        )
        .await?;
        add_to_timeline(
            &mut tx,
            &id,
            "client.created",
            &id,
            json!({"name": name, "status": status}),
        )
        .await?;
        let owners = self.owner_changes(&mut tx, &id).await?;
        tx.commit().await.map_err(db("commit"))?;
        Ok((self.client(ctx, &id).await?, owners))
    }

    /// Applies a patch if `if_match` is the current version.
    pub async fn patch_client(
        &self,
        ctx: &Ctx,
        id: &str,
        if_match: i64,
        patch: &ClientPatch,
    ) -> Result<(Client, Vec<OwnerChange>), StoreError> {
        let current = self.client(ctx, id).await?;
        if current.version != if_match {
            return Err(StoreError::Stale {
                current: current.version,
            });
        }
        if let Some(k) = &patch.kind {
            check_kind(k)?;
        }
        let name = patch.name.as_deref().map(check_name).transpose()?;
        let owner = match &patch.owner_id {
            Some(o) => Some(self.resolve_owner(ctx, Some(o)).await?),
            None => None,
        };
        let mut tx = self.pool.begin().await.map_err(db("begin"))?;
        let updated = sqlx::query(
            "UPDATE clients SET name = COALESCE($1, name), kind = COALESCE($2, kind), \
             owner_id = CASE WHEN $3 = 1 THEN $4 ELSE owner_id END, \
             department_id = CASE WHEN $3 = 1 THEN $5 ELSE department_id END, \
             updated_at = $6, version = version + 1 WHERE id = $7 AND version = $8",
        )
        .bind(name.clone())
        .bind(patch.kind.clone())
        .bind(i64::from(owner.is_some()))
        .bind(owner.as_ref().and_then(|o| o.0.clone()))
        .bind(owner.as_ref().and_then(|o| o.1.clone()))
        .bind(micros_now())
        .bind(id)
        .bind(if_match)
        .execute(&mut *tx)
        .await
        .map_err(db("update client"))?
        .rows_affected();
        if updated == 0 {
            return Err(StoreError::Stale {
                current: current.version + 1,
            });
        }
        refresh_search(&mut tx, id).await?;
        audit(
            &mut tx,
            ctx,
            "update",
            "client",
            id,
            json!({"name": name, "kind": patch.kind, "owner_id": patch.owner_id}),
        )
        .await?;
        let owners = if owner.is_some() {
            self.owner_changes(&mut tx, id).await?
        } else {
            Vec::new()
        };
        tx.commit().await.map_err(db("commit"))?;
        // A manager who gave the client away can no longer see it.
        let after = match self.client(ctx, id).await {
            Ok(c) => c,
            Err(StoreError::NotFound) => Client {
                version: current.version + 1,
                ..current
            },
            Err(e) => return Err(e),
        };
        Ok((after, owners))
    }

    /// A potential client becomes a current one, with its whole history.
    pub async fn promote(&self, ctx: &Ctx, id: &str) -> Result<Client, StoreError> {
        let current = self.client(ctx, id).await?;
        if current.status == "current" {
            return Err(StoreError::Conflict {
                what: "a current client",
            });
        }
        let now = micros_now();
        let mut tx = self.pool.begin().await.map_err(db("begin"))?;
        sqlx::query(
            "UPDATE clients SET status = 'current', promoted_at = $1, updated_at = $1, version = version + 1 \
             WHERE id = $2 AND status = 'potential'",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(db("promote client"))?;
        audit(&mut tx, ctx, "promote", "client", id, json!({})).await?;
        add_to_timeline(
            &mut tx,
            id,
            "client.promoted",
            id,
            json!({"name": current.name}),
        )
        .await?;
        tx.commit().await.map_err(db("commit"))?;
        self.client(ctx, id).await
    }

    /// The client card, newest first, if the principal may see the client.
    pub async fn timeline(
        &self,
        ctx: &Ctx,
        client_id: &str,
        cursor: Option<&Cursor>,
        limit: u32,
    ) -> Result<(Vec<TimelineItem>, Option<Cursor>), StoreError> {
        // One query when the card has entries: the visibility rule rides
        // along; only an empty page needs a second look to tell "no entries"
        // from "not yours".
        let mut sql = Sql::new(
            "SELECT t.id, t.at, t.kind, t.ref_id, t.body FROM timeline_entries t WHERE t.client_id = $1",
        );
        sql.arg(client_id);
        if ctx.principal.role != super::Role::Admin {
            sql.push(" AND EXISTS (SELECT 1 FROM clients c WHERE c.id = $1");
            sql.visible_to(&ctx.principal, "c");
            sql.push(")");
        }
        if let Some(c) = cursor {
            let (a, b) = (sql.arg(c.occurred_at), sql.arg(c.id.as_str()));
            sql.push(&format!(" AND (t.at < {a} OR (t.at = {a} AND t.id < {b}))"));
        }
        let ph = sql.arg(i64::from(limit) + 1);
        sql.push(&format!(" ORDER BY t.at DESC, t.id DESC LIMIT {ph}"));
        let rows = sql
            .query()
            .fetch_all(&self.pool)
            .await
            .map_err(db("read timeline"))?;
        if rows.is_empty() {
            let mut check = Sql::new("SELECT c.id FROM clients c WHERE c.id = $1");
            check.arg(client_id);
            check.visible_to(&ctx.principal, "c");
            let visible = check
                .query()
                .fetch_optional(&self.pool)
                .await
                .map_err(db("read client"))?;
            if visible.is_none() {
                return Err(StoreError::NotFound);
            }
        }
        let e = corrupt("timeline entry");
        let items = rows
            .iter()
            .take(limit as usize)
            .map(|r| {
                Ok(TimelineItem {
                    id: r.try_get("id").map_err(&e)?,
                    at: r.try_get("at").map_err(&e)?,
                    kind: r.try_get("kind").map_err(&e)?,
                    ref_id: r.try_get("ref_id").map_err(&e)?,
                    body: r.try_get("body").map_err(&e)?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let next = (rows.len() > limit as usize)
            .then(|| {
                items.last().map(|i| Cursor {
                    occurred_at: i.at,
                    id: i.id.clone(),
                })
            })
            .flatten();
        Ok((items, next))
    }
}
