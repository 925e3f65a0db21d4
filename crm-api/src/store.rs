//! The CRM store on SQLite (embedded default) or PostgreSQL, through sqlx's
//! `Any` driver: one set of queries in the SQL both understand, one set of
//! migrations per database. Times are stored as microseconds since the Unix
//! epoch, envelopes as the JSON text the feed carried.

use std::time::Duration;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Row};
use switchboard_storage::{Interaction, Record};

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
}

fn db(op: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Database { op, source }
}

/// Microseconds since the Unix epoch.
pub(crate) fn micros(t: time::OffsetDateTime) -> i64 {
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
    pool: AnyPool,
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

    /// Applies decoded interactions and keeps rejects, in one transaction.
    /// An interaction whose id is already stored changes nothing, so a
    /// replayed batch is harmless.
    pub async fn apply(
        &self,
        batch: &[(Interaction, &str)],
        rejects: &[Reject<'_>],
    ) -> Result<Applied, StoreError> {
        let mut applied = Applied::default();
        let mut tx = self.pool.begin().await.map_err(db("begin"))?;
        for (ev, text) in batch {
            let occurred = micros(ev.occurred_at);
            let inserted = sqlx::query(
                "INSERT INTO interactions \
                 (id, contact_key, kind, channel, occurred_at, recorded_at, envelope) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING",
            )
            .bind(ev.id.to_string())
            .bind(&ev.contact.key)
            .bind(ev.kind.as_str())
            .bind(ev.channel.as_str())
            .bind(occurred)
            .bind(micros(ev.recorded_at))
            .bind(*text)
            .execute(&mut *tx)
            .await
            .map_err(db("insert interaction"))?
            .rows_affected();
            if inserted == 0 {
                applied.duplicate += 1;
                continue;
            }
            applied.new += 1;
            sqlx::query(
                "INSERT INTO contacts \
                 (key, phone, email, name, first_seen_at, last_seen_at, interaction_count) \
                 VALUES ($1, $2, $3, $4, $5, $5, 1) \
                 ON CONFLICT (key) DO UPDATE SET \
                 phone = COALESCE(excluded.phone, contacts.phone), \
                 email = COALESCE(excluded.email, contacts.email), \
                 name = COALESCE(excluded.name, contacts.name), \
                 first_seen_at = CASE WHEN excluded.first_seen_at < contacts.first_seen_at \
                     THEN excluded.first_seen_at ELSE contacts.first_seen_at END, \
                 last_seen_at = CASE WHEN excluded.last_seen_at > contacts.last_seen_at \
                     THEN excluded.last_seen_at ELSE contacts.last_seen_at END, \
                 interaction_count = contacts.interaction_count + 1",
            )
            .bind(&ev.contact.key)
            .bind(ev.contact.phone.as_deref())
            .bind(ev.contact.email.as_deref())
            .bind(ev.contact.name.as_deref())
            .bind(occurred)
            .execute(&mut *tx)
            .await
            .map_err(db("upsert contact"))?;
        }
        let now = micros(time::OffsetDateTime::now_utc());
        for r in rejects {
            let inserted = sqlx::query(
                "INSERT INTO feed_rejects (topic, partition_id, offset_id, reason, value, rejected_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            )
            .bind(&r.record.topic)
            .bind(r.record.partition)
            .bind(r.record.offset)
            .bind(&r.reason)
            .bind(r.record.value.clone())
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db("keep rejected record"))?
            .rows_affected();
            applied.rejected += inserted;
        }
        tx.commit().await.map_err(db("commit"))?;
        Ok(applied)
    }

    pub async fn contact(&self, key: &str) -> Result<Option<ContactRow>, StoreError> {
        let row = sqlx::query(
            "SELECT key, phone, email, name, first_seen_at, last_seen_at, interaction_count \
             FROM contacts WHERE key = $1",
        )
        .bind(key)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("read contact"))?;
        row.as_ref().map(contact_row).transpose()
    }

    /// Interactions newest first, `limit` at a time, after `cursor`.
    pub async fn interactions(
        &self,
        filter: &Filter,
        cursor: Option<&Cursor>,
        limit: u32,
    ) -> Result<Page, StoreError> {
        let mut sql =
            String::from("SELECT id, occurred_at, envelope FROM interactions WHERE 1 = 1");
        let mut n = 0;
        let mut param = || {
            n += 1;
            format!("${n}")
        };
        if filter.contact_key.is_some() {
            sql += &format!(" AND contact_key = {}", param());
        }
        if filter.kind.is_some() {
            sql += &format!(" AND kind = {}", param());
        }
        if filter.channel.is_some() {
            sql += &format!(" AND channel = {}", param());
        }
        if cursor.is_some() {
            let (a, b) = (param(), param());
            sql += &format!(" AND (occurred_at < {a} OR (occurred_at = {a} AND id < {b}))");
        }
        sql += &format!(" ORDER BY occurred_at DESC, id DESC LIMIT {}", param());

        // Built from fixed fragments and numbered placeholders only; every
        // value is bound.
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for v in [&filter.contact_key, &filter.kind, &filter.channel]
            .into_iter()
            .flatten()
        {
            q = q.bind(v.as_str());
        }
        if let Some(c) = cursor {
            q = q.bind(c.occurred_at).bind(c.id.as_str());
        }
        q = q.bind(i64::from(limit) + 1);
        let rows = q
            .fetch_all(&self.pool)
            .await
            .map_err(db("list interactions"))?;
        let mut items = Vec::with_capacity(rows.len());
        let mut last = None;
        for (i, r) in rows.iter().enumerate() {
            if i == limit as usize {
                break;
            }
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

    /// Every stored interaction (id and contact) and every contact row, in a
    /// canonical order: what "the same state" means for replay tests.
    pub async fn snapshot(&self) -> Result<(Vec<(String, String)>, Vec<ContactRow>), StoreError> {
        let ids = sqlx::query("SELECT id, contact_key FROM interactions ORDER BY id")
            .fetch_all(&self.pool)
            .await
            .map_err(db("snapshot"))?
            .iter()
            .map(|r| {
                Ok((
                    r.try_get("id").map_err(corrupt("interaction"))?,
                    r.try_get("contact_key").map_err(corrupt("interaction"))?,
                ))
            })
            .collect::<Result<_, StoreError>>()?;
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
        Ok((ids, contacts))
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

fn corrupt(what: &'static str) -> impl Fn(sqlx::Error) -> StoreError {
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

fn rfc3339(us: i64) -> Result<String, StoreError> {
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
