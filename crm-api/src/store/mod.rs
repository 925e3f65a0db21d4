//! The CRM store on SQLite (embedded default) or PostgreSQL, through sqlx's
//! `Any` driver: one set of queries in the SQL both understand, one set of
//! migrations per database. Times are stored as microseconds since the Unix
//! epoch, envelopes as the JSON text the feed carried.

mod auth;
mod clients;
mod feed;
mod records;
mod sql;

use std::time::Duration;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Row};
use switchboard_storage::Record;

pub use auth::{Principal, Role, User, token_hash};
pub use clients::{Client, ClientFilter, ClientPatch, NewClient, TimelineItem};
pub use records::{
    Attachment, AuditEntry, ContactPerson, Deal, DealFilter, DealPatch, NewContactPerson, NewDeal,
    NewPipeline, NewStage, NewTask, NewTicket, Note, Pipeline, Stage, StageChange, Task,
    TaskFilter, TaskPatch, Ticket, TicketPatch,
};

use crate::cursor::Cursor;

/// Which database the store is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database URL is not one Switchboard supports.
    #[error("unsupported database url (expected sqlite:// or postgres://)")]
    UnsupportedUrl,
    /// Connecting, migrating or querying failed.
    #[error("database {op} failed: {source}")]
    Database {
        op: &'static str,
        #[source]
        source: sqlx::Error,
    },
    /// Stored data could not be read back (a bug or manual tampering).
    #[error("stored {what} is corrupt: {detail}")]
    Corrupt { what: &'static str, detail: String },
    /// The write would break a uniqueness rule (an identity another client
    /// has, a name taken).
    #[error("{what} already exists")]
    Conflict { what: &'static str },
    /// No such record, or not one the caller may see (the API does not tell
    /// the two apart).
    #[error("not found")]
    NotFound,
    /// The caller may see the record but not do this to it.
    #[error("forbidden: {reason}")]
    Forbidden { reason: &'static str },
    /// `If-Match` named an older version.
    #[error("the record changed (now version {current})")]
    Stale { current: i64 },
    /// A field's value breaks a rule the database cannot express.
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// Who is writing, for access checks and the audit log.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub principal: Principal,
    /// The client's address, as the server saw it.
    pub remote: Option<String>,
}

pub(crate) fn db(op: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| match &source {
        sqlx::Error::Database(e) if e.is_unique_violation() => StoreError::Conflict { what: op },
        _ => StoreError::Database { op, source },
    }
}

/// A new UUIDv7, as stored.
pub(crate) fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Now, in microseconds since the Unix epoch.
pub(crate) fn micros_now() -> i64 {
    micros(time::OffsetDateTime::now_utc())
}

/// Microseconds since the Unix epoch.
pub fn micros(t: time::OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX)
}

/// A contact identity as the CRM knows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct ContactRow {
    /// The contact key (`tel:+79161234567`, `email:ivan@example.com`).
    pub key: String,
    pub phone: Option<String>,
    pub email: Option<String>,
    pub name: Option<String>,
    /// First interaction (RFC 3339).
    pub first_seen_at: String,
    /// Latest interaction (RFC 3339).
    pub last_seen_at: String,
    pub interaction_count: i64,
}

/// Feed-derived state, rows as text, in a canonical order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub interactions: Vec<String>,
    pub contacts: Vec<ContactRow>,
    pub clients: Vec<String>,
    pub identities: Vec<String>,
    pub timeline: Vec<String>,
}

/// A page of interactions, newest first.
#[derive(Debug)]
pub struct Page {
    /// Envelopes as stored (JSON text).
    pub items: Vec<String>,
    pub next: Option<Cursor>,
}

/// Filters of `GET /v1/interactions`.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub contact_key: Option<String>,
    pub kind: Option<String>,
    pub channel: Option<String>,
}

/// What applying a batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub new: u64,
    pub duplicate: u64,
    pub rejected: u64,
}

/// A record that cannot be applied, and why.
#[derive(Debug)]
pub struct Reject<'a> {
    pub record: &'a Record,
    pub reason: String,
}

#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) pool: AnyPool,
    backend: Backend,
}

impl Store {
    /// Connects (creating an SQLite file if needed) and migrates.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        install_default_drivers();
        let (backend, url) = if let Some(rest) = url.strip_prefix("sqlite:") {
            let path = rest.trim_start_matches("//");
            let (path, query) = path.split_once('?').unwrap_or((path, ""));
            if let Some(dir) = std::path::Path::new(path).parent() {
                std::fs::create_dir_all(dir).map_err(|e| StoreError::Database {
                    op: "create data directory",
                    source: sqlx::Error::Io(e),
                })?;
            }
            let query = if query.is_empty() { "mode=rwc" } else { query };
            (Backend::Sqlite, format!("sqlite://{path}?{query}"))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_owned())
        } else {
            return Err(StoreError::UnsupportedUrl);
        };
        let mut options = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10));
        if backend == Backend::Sqlite {
            options = options.after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::query("PRAGMA journal_mode = WAL")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA synchronous = NORMAL")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA busy_timeout = 10000")
                        .execute(&mut *conn)
                        .await?;
                    Ok(())
                })
            });
        }
        let pool = options.connect(&url).await.map_err(db("connect"))?;
        let migrator = match backend {
            Backend::Sqlite => sqlx::migrate!("./migrations/sqlite"),
            Backend::Postgres => sqlx::migrate!("./migrations/postgres"),
        };
        migrator
            .run(&pool)
            .await
            .map_err(|e| StoreError::Database {
                op: "migrate",
                source: e.into(),
            })?;
        Ok(Self { pool, backend })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(db("ping"))
    }

    /// The per-key contact row, if the key belongs to a client the
    /// principal may see.
    pub async fn contact(&self, ctx: &Ctx, key: &str) -> Result<Option<ContactRow>, StoreError> {
        let mut sql = sql::Sql::new(
            "SELECT k.key, k.phone, k.email, k.name, k.first_seen_at, k.last_seen_at, k.interaction_count \
             FROM contacts k WHERE k.key = $1 AND EXISTS (SELECT 1 FROM interactions i \
             JOIN clients c ON c.id = i.client_id WHERE i.contact_key = k.key",
        );
        sql.arg(key);
        sql.visible_to(&ctx.principal, "c");
        sql.push(")");
        let row = sql
            .query()
            .fetch_optional(&self.pool)
            .await
            .map_err(db("read contact"))?;
        row.as_ref().map(contact_row).transpose()
    }

    /// Interactions of clients the principal may see, newest first.
    pub async fn interactions(
        &self,
        ctx: &Ctx,
        filter: &Filter,
        cursor: Option<&Cursor>,
        limit: u32,
    ) -> Result<Page, StoreError> {
        let mut sql =
            sql::Sql::new("SELECT i.id, i.occurred_at, i.envelope FROM interactions i WHERE 1 = 1");
        if ctx.principal.role != Role::Admin {
            sql.push(" AND i.client_id IN (SELECT c.id FROM clients c WHERE 1 = 1");
            sql.visible_to(&ctx.principal, "c");
            sql.push(")");
        }
        for (column, value) in [
            ("contact_key", &filter.contact_key),
            ("kind", &filter.kind),
            ("channel", &filter.channel),
        ] {
            if let Some(v) = value {
                let ph = sql.arg(v.as_str());
                sql.push(&format!(" AND i.{column} = {ph}"));
            }
        }
        if let Some(c) = cursor {
            let (a, b) = (sql.arg(c.occurred_at), sql.arg(c.id.as_str()));
            sql.push(&format!(
                " AND (i.occurred_at < {a} OR (i.occurred_at = {a} AND i.id < {b}))"
            ));
        }
        let ph = sql.arg(i64::from(limit) + 1);
        sql.push(&format!(
            " ORDER BY i.occurred_at DESC, i.id DESC LIMIT {ph}"
        ));
        let rows = sql
            .query()
            .fetch_all(&self.pool)
            .await
            .map_err(db("list interactions"))?;
        let mut items = Vec::with_capacity(rows.len());
        let mut last = None;
        for r in rows.iter().take(limit as usize) {
            let get_err = corrupt("interaction");
            let id: String = r.try_get("id").map_err(&get_err)?;
            let occurred_at: i64 = r.try_get("occurred_at").map_err(&get_err)?;
            items.push(r.try_get("envelope").map_err(&get_err)?);
            last = Some(Cursor { occurred_at, id });
        }
        let next = if rows.len() > limit as usize {
            last
        } else {
            None
        };
        Ok(Page { items, next })
    }

    /// Everything the feed decides, in a canonical order: what "the same
    /// state" means for replay tests.
    pub async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let text_rows = |sql: &'static str, cols: &'static [&'static str]| async move {
            let rows = sqlx::query(sql)
                .fetch_all(&self.pool)
                .await
                .map_err(db("snapshot"))?;
            rows.iter()
                .map(|r| {
                    cols.iter()
                        .map(|c| {
                            let v: Option<String> = r.try_get(*c).map_err(corrupt("snapshot"))?;
                            Ok(v.unwrap_or_else(|| "-".into()))
                        })
                        .collect::<Result<Vec<_>, StoreError>>()
                        .map(|v| v.join(" "))
                })
                .collect::<Result<Vec<String>, StoreError>>()
        };
        let contacts = sqlx::query(
            "SELECT key, phone, email, name, first_seen_at, last_seen_at, interaction_count \
             FROM contacts ORDER BY key",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db("snapshot"))?
        .iter()
        .map(contact_row)
        .collect::<Result<_, _>>()?;
        Ok(Snapshot {
            interactions: text_rows(
                "SELECT id, contact_key, client_id FROM interactions ORDER BY id",
                &["id", "contact_key", "client_id"],
            )
            .await?,
            contacts,
            clients: text_rows(
                "SELECT id, status, name, owner_id, source FROM clients ORDER BY id",
                &["id", "status", "name", "owner_id", "source"],
            )
            .await?,
            identities: text_rows(
                "SELECT kind, value, client_id FROM identities ORDER BY kind, value",
                &["kind", "value", "client_id"],
            )
            .await?,
            timeline: text_rows(
                "SELECT id, client_id, kind FROM timeline_entries ORDER BY id",
                &["id", "client_id", "kind"],
            )
            .await?,
        })
    }

    /// How many feed records were rejected.
    pub async fn reject_count(&self) -> Result<i64, StoreError> {
        sqlx::query("SELECT COUNT(*) AS n FROM feed_rejects")
            .fetch_one(&self.pool)
            .await
            .and_then(|r| r.try_get("n"))
            .map_err(db("count rejects"))
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

pub(crate) fn corrupt(what: &'static str) -> impl Fn(sqlx::Error) -> StoreError {
    move |e| StoreError::Corrupt {
        what,
        detail: e.to_string(),
    }
}

fn contact_row(r: &sqlx::any::AnyRow) -> Result<ContactRow, StoreError> {
    let get_err = corrupt("contact");
    Ok(ContactRow {
        key: r.try_get("key").map_err(&get_err)?,
        phone: r.try_get("phone").map_err(&get_err)?,
        email: r.try_get("email").map_err(&get_err)?,
        name: r.try_get("name").map_err(&get_err)?,
        first_seen_at: rfc3339(r.try_get("first_seen_at").map_err(&get_err)?)?,
        last_seen_at: rfc3339(r.try_get("last_seen_at").map_err(&get_err)?)?,
        interaction_count: r.try_get("interaction_count").map_err(&get_err)?,
    })
}

pub(crate) fn rfc3339(us: i64) -> Result<String, StoreError> {
    let t =
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000).map_err(|e| {
            StoreError::Corrupt {
                what: "timestamp",
                detail: e.to_string(),
            }
        })?;
    t.format(&time::format_description::well_known::Rfc3339)
        .map_err(|e| StoreError::Corrupt {
            what: "timestamp",
            detail: e.to_string(),
        })
}
