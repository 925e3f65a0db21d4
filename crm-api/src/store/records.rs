//! Deals in pipelines, tasks and calendar entries, tickets, notes and
//! attachments: the records managers keep about their clients. Each follows
//! the same rules as clients: visible to its owner, the owner's department
//! head and administrators; every write audited and put on the client card.

use serde_json::json;
use sqlx::Row;

use super::clients::{Tx, add_to_timeline, audit};
use super::sql::Sql;
use super::{Ctx, Store, StoreError, corrupt, db, micros_now, new_id, rfc3339};
use crate::cursor::Cursor;

fn opt_time(v: Option<i64>) -> Result<Option<String>, StoreError> {
    v.map(rfc3339).transpose()
}

fn hours(h: i64) -> i64 {
    h.saturating_mul(3_600_000_000)
}

/// A stage of a pipeline.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Stage {
    pub id: String,
    pub name: String,
    pub position: i64,
    /// `open`, `won` or `lost`.
    pub outcome: String,
    /// Hours a deal may stay in this stage.
    pub deadline_hours: Option<i64>,
}

/// A sales scenario.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Pipeline {
    pub id: String,
    pub name: String,
    pub stages: Vec<Stage>,
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Deal {
    pub id: String,
    pub client_id: String,
    pub pipeline_id: String,
    pub stage_id: String,
    pub title: String,
    /// In the currency's minor units (kopecks, cents).
    pub amount_minor: i64,
    /// ISO 4217, e.g. `RUB`.
    pub currency: String,
    /// `open`, `won` or `lost`.
    pub status: String,
    pub lost_reason: Option<String>,
    pub owner_id: Option<String>,
    pub department_id: Option<String>,
    pub stage_entered_at: String,
    /// When the deal should leave its stage.
    pub stage_deadline_at: Option<String>,
    pub closed_at: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip)]
    pub version: i64,
}

#[derive(Debug, Clone, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDeal {
    pub client_id: String,
    pub title: String,
    #[serde(default)]
    pub amount_minor: i64,
    /// ISO 4217 (default `RUB`).
    #[serde(default)]
    pub currency: Option<String>,
    /// Default: the first pipeline.
    #[serde(default)]
    pub pipeline_id: Option<String>,
    /// Heads and administrators only.
    #[serde(default)]
    pub owner_id: Option<String>,
}

#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DealPatch {
    pub title: Option<String>,
    pub amount_minor: Option<i64>,
    pub currency: Option<String>,
    /// Move the deal; a `won`/`lost` stage closes it (`lost` needs `lost_reason`).
    pub stage_id: Option<String>,
    pub lost_reason: Option<String>,
    /// Heads and administrators only.
    pub owner_id: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct DealFilter {
    pub owner_id: Option<String>,
    pub stage_id: Option<String>,
    pub status: Option<String>,
    pub client_id: Option<String>,
    pub updated_since: Option<i64>,
}

/// One move of a deal between stages.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct StageChange {
    pub from_stage_id: Option<String>,
    pub to_stage_id: String,
    pub changed_by: Option<String>,
    pub changed_at: String,
}

/// A task or a calendar entry.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Task {
    pub id: String,
    /// `task`, `meeting` or `call`.
    pub kind: String,
    pub title: String,
    pub due_at: Option<String>,
    pub starts_at: Option<String>,
    pub ends_at: Option<String>,
    /// The assignee.
    pub owner_id: Option<String>,
    pub department_id: Option<String>,
    pub client_id: Option<String>,
    pub deal_id: Option<String>,
    pub done_at: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip)]
    pub version: i64,
}

#[derive(Debug, Clone, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTask {
    pub title: String,
    /// `task` (default), `meeting` or `call`.
    #[serde(default)]
    pub kind: Option<String>,
    /// RFC 3339.
    #[serde(default)]
    pub due_at: Option<String>,
    #[serde(default)]
    pub starts_at: Option<String>,
    #[serde(default)]
    pub ends_at: Option<String>,
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub deal_id: Option<String>,
    /// The assignee; heads and administrators only.
    #[serde(default)]
    pub owner_id: Option<String>,
}

#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskPatch {
    pub title: Option<String>,
    pub due_at: Option<String>,
    pub done: Option<bool>,
    /// Heads and administrators only.
    pub owner_id: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub owner_id: Option<String>,
    pub done: Option<bool>,
    pub due_before: Option<i64>,
    pub client_id: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Ticket {
    pub id: String,
    pub client_id: String,
    pub subject: String,
    /// `open`, `pending`, `solved` or `closed`.
    pub status: String,
    /// `standard` (24 h), `priority` (4 h) or `critical` (1 h) to respond.
    pub sla_level: String,
    pub due_at: String,
    pub time_spent_minutes: i64,
    pub owner_id: Option<String>,
    pub department_id: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip)]
    pub version: i64,
}

#[derive(Debug, Clone, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTicket {
    pub client_id: String,
    pub subject: String,
    #[serde(default)]
    pub sla_level: Option<String>,
    /// Heads and administrators only.
    #[serde(default)]
    pub owner_id: Option<String>,
}

#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TicketPatch {
    pub subject: Option<String>,
    pub status: Option<String>,
    pub sla_level: Option<String>,
    /// Heads and administrators only.
    pub owner_id: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Note {
    pub id: String,
    pub client_id: String,
    pub deal_id: Option<String>,
    pub author_id: Option<String>,
    pub body: String,
    pub created_at: String,
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Attachment {
    pub id: String,
    pub client_id: String,
    pub deal_id: Option<String>,
    pub filename: String,
    pub content_type: String,
    pub size: i64,
    pub sha256: String,
    pub created_at: String,
}

/// An audit record.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub at: String,
    pub user_id: Option<String>,
    pub action: String,
    pub entity: String,
    pub entity_id: String,
    pub remote_addr: Option<String>,
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

fn text_len(field: &'static str, v: &str, max: usize) -> Result<String, StoreError> {
    let v = v.trim();
    if v.is_empty() || v.chars().count() > max {
        return Err(StoreError::Invalid {
            field,
            reason: format!("must be 1 to {max} characters"),
        });
    }
    Ok(v.to_owned())
}

fn parse_time(field: &'static str, v: &Option<String>) -> Result<Option<i64>, StoreError> {
    v.as_deref()
        .map(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                .map(super::micros)
                .map_err(|_| StoreError::Invalid {
                    field,
                    reason: "must be an RFC 3339 time".into(),
                })
        })
        .transpose()
}

fn check_currency(c: &str) -> Result<(), StoreError> {
    if c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(StoreError::Invalid {
            field: "currency",
            reason: "must be an ISO 4217 code such as RUB, USD, EUR".into(),
        })
    }
}

fn sla_hours(level: &str) -> Result<i64, StoreError> {
    match level {
        "standard" => Ok(24),
        "priority" => Ok(4),
        "critical" => Ok(1),
        _ => Err(StoreError::Invalid {
            field: "sla_level",
            reason: "must be standard, priority or critical".into(),
        }),
    }
}

const DEAL_COLUMNS: &str = "d.id, d.client_id, d.pipeline_id, d.stage_id, d.title, d.amount_minor, d.currency, d.status, \
     d.lost_reason, d.owner_id, d.department_id, d.stage_entered_at, d.stage_deadline_at, d.closed_at, \
     d.created_at, d.updated_at, d.version";

fn deal_from_row(r: &sqlx::any::AnyRow) -> Result<Deal, StoreError> {
    let e = corrupt("deal");
    Ok(Deal {
        id: r.try_get("id").map_err(&e)?,
        client_id: r.try_get("client_id").map_err(&e)?,
        pipeline_id: r.try_get("pipeline_id").map_err(&e)?,
        stage_id: r.try_get("stage_id").map_err(&e)?,
        title: r.try_get("title").map_err(&e)?,
        amount_minor: r.try_get("amount_minor").map_err(&e)?,
        currency: r.try_get("currency").map_err(&e)?,
        status: r.try_get("status").map_err(&e)?,
        lost_reason: r.try_get("lost_reason").map_err(&e)?,
        owner_id: r.try_get("owner_id").map_err(&e)?,
        department_id: r.try_get("department_id").map_err(&e)?,
        stage_entered_at: rfc3339(r.try_get("stage_entered_at").map_err(&e)?)?,
        stage_deadline_at: opt_time(r.try_get("stage_deadline_at").map_err(&e)?)?,
        closed_at: opt_time(r.try_get("closed_at").map_err(&e)?)?,
        created_at: rfc3339(r.try_get("created_at").map_err(&e)?)?,
        updated_at: rfc3339(r.try_get("updated_at").map_err(&e)?)?,
        version: r.try_get("version").map_err(&e)?,
    })
}

const TASK_COLUMNS: &str = "t.id, t.kind, t.title, t.due_at, t.starts_at, t.ends_at, t.owner_id, t.department_id, \
     t.client_id, t.deal_id, t.done_at, t.created_at, t.updated_at, t.version";

fn task_from_row(r: &sqlx::any::AnyRow) -> Result<Task, StoreError> {
    let e = corrupt("task");
    Ok(Task {
        id: r.try_get("id").map_err(&e)?,
        kind: r.try_get("kind").map_err(&e)?,
        title: r.try_get("title").map_err(&e)?,
        due_at: opt_time(r.try_get("due_at").map_err(&e)?)?,
        starts_at: opt_time(r.try_get("starts_at").map_err(&e)?)?,
        ends_at: opt_time(r.try_get("ends_at").map_err(&e)?)?,
        owner_id: r.try_get("owner_id").map_err(&e)?,
        department_id: r.try_get("department_id").map_err(&e)?,
        client_id: r.try_get("client_id").map_err(&e)?,
        deal_id: r.try_get("deal_id").map_err(&e)?,
        done_at: opt_time(r.try_get("done_at").map_err(&e)?)?,
        created_at: rfc3339(r.try_get("created_at").map_err(&e)?)?,
        updated_at: rfc3339(r.try_get("updated_at").map_err(&e)?)?,
        version: r.try_get("version").map_err(&e)?,
    })
}

const TICKET_COLUMNS: &str = "k.id, k.client_id, k.subject, k.status, k.sla_level, k.due_at, k.time_spent_minutes, \
     k.owner_id, k.department_id, k.created_at, k.updated_at, k.version";

fn ticket_from_row(r: &sqlx::any::AnyRow) -> Result<Ticket, StoreError> {
    let e = corrupt("ticket");
    Ok(Ticket {
        id: r.try_get("id").map_err(&e)?,
        client_id: r.try_get("client_id").map_err(&e)?,
        subject: r.try_get("subject").map_err(&e)?,
        status: r.try_get("status").map_err(&e)?,
        sla_level: r.try_get("sla_level").map_err(&e)?,
        due_at: rfc3339(r.try_get("due_at").map_err(&e)?)?,
        time_spent_minutes: r.try_get("time_spent_minutes").map_err(&e)?,
        owner_id: r.try_get("owner_id").map_err(&e)?,
        department_id: r.try_get("department_id").map_err(&e)?,
        created_at: rfc3339(r.try_get("created_at").map_err(&e)?)?,
        updated_at: rfc3339(r.try_get("updated_at").map_err(&e)?)?,
        version: r.try_get("version").map_err(&e)?,
    })
}

/// Pages of any list ordered by `updated_at DESC, id DESC`.
fn page_end<T>(
    rows: &[sqlx::any::AnyRow],
    items: &[T],
    limit: u32,
    what: &'static str,
) -> Result<Option<Cursor>, StoreError> {
    if rows.len() <= limit as usize || items.is_empty() {
        return Ok(None);
    }
    let last = &rows[limit as usize - 1];
    Ok(Some(Cursor {
        occurred_at: last.try_get("updated_at").map_err(corrupt(what))?,
        id: last.try_get("id").map_err(corrupt(what))?,
    }))
}

fn page_clause(sql: &mut Sql, alias: &str, cursor: Option<&Cursor>, limit: u32) {
    if let Some(c) = cursor {
        let (a, b) = (sql.arg(c.occurred_at), sql.arg(c.id.as_str()));
        sql.push(&format!(
            " AND ({alias}.updated_at < {a} OR ({alias}.updated_at = {a} AND {alias}.id < {b}))"
        ));
    }
    let ph = sql.arg(i64::from(limit) + 1);
    sql.push(&format!(
        " ORDER BY {alias}.updated_at DESC, {alias}.id DESC LIMIT {ph}"
    ));
}

fn eq_filter(sql: &mut Sql, column: &str, value: &Option<String>) {
    if let Some(v) = value {
        let ph = sql.arg(v.as_str());
        sql.push(&format!(" AND {column} = {ph}"));
    }
}

impl Store {
    /// The client, if the principal may see it; else a field error that
    /// does not confirm whether it exists.
    async fn visible_client(
        &self,
        ctx: &Ctx,
        field: &'static str,
        id: &str,
    ) -> Result<(), StoreError> {
        match self.client(ctx, id).await {
            Ok(_) => Ok(()),
            Err(StoreError::NotFound) => Err(StoreError::Invalid {
                field,
                reason: "no such client".into(),
            }),
            Err(e) => Err(e),
        }
    }

    pub async fn pipelines(&self) -> Result<Vec<Pipeline>, StoreError> {
        let rows = sqlx::query(
            "SELECT p.id AS pid, p.name AS pname, s.id, s.name, s.position, s.outcome, s.deadline_hours \
             FROM pipelines p JOIN stages s ON s.pipeline_id = p.id ORDER BY p.name, p.id, s.position",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db("list pipelines"))?;
        let mut out: Vec<Pipeline> = Vec::new();
        let e = corrupt("pipeline");
        for r in rows {
            let pid: String = r.try_get("pid").map_err(&e)?;
            if out.last().is_none_or(|p| p.id != pid) {
                out.push(Pipeline {
                    id: pid,
                    name: r.try_get("pname").map_err(&e)?,
                    stages: Vec::new(),
                });
            }
            if let Some(p) = out.last_mut() {
                p.stages.push(Stage {
                    id: r.try_get("id").map_err(&e)?,
                    name: r.try_get("name").map_err(&e)?,
                    position: r.try_get("position").map_err(&e)?,
                    outcome: r.try_get("outcome").map_err(&e)?,
                    deadline_hours: r.try_get("deadline_hours").map_err(&e)?,
                });
            }
        }
        Ok(out)
    }

    async fn stage(
        &self,
        tx: &mut Tx<'_>,
        stage_id: &str,
    ) -> Result<Option<(String, String, Option<i64>)>, StoreError> {
        let row =
            sqlx::query("SELECT pipeline_id, outcome, deadline_hours FROM stages WHERE id = $1")
                .bind(stage_id)
                .fetch_optional(&mut **tx)
                .await
                .map_err(db("read stage"))?;
        row.map(|r| {
            let e = corrupt("stage");
            Ok((
                r.try_get("pipeline_id").map_err(&e)?,
                r.try_get("outcome").map_err(&e)?,
                r.try_get("deadline_hours").map_err(&e)?,
            ))
        })
        .transpose()
    }

    pub async fn deal(&self, ctx: &Ctx, id: &str) -> Result<Deal, StoreError> {
        let mut sql = Sql::new(&format!(
            "SELECT {DEAL_COLUMNS} FROM deals d WHERE d.id = $1"
        ));
        sql.arg(id);
        sql.visible_to(&ctx.principal, "d");
        let row = sql
            .query()
            .fetch_optional(&self.pool)
            .await
            .map_err(db("read deal"))?;
        row.as_ref()
            .map(deal_from_row)
            .transpose()?
            .ok_or(StoreError::NotFound)
    }

    pub async fn deals(
        &self,
        ctx: &Ctx,
        f: &DealFilter,
        cursor: Option<&Cursor>,
        limit: u32,
    ) -> Result<(Vec<Deal>, Option<Cursor>), StoreError> {
        let mut sql = Sql::new(&format!("SELECT {DEAL_COLUMNS} FROM deals d WHERE 1 = 1"));
        sql.visible_to(&ctx.principal, "d");
        eq_filter(&mut sql, "d.owner_id", &f.owner_id);
        eq_filter(&mut sql, "d.stage_id", &f.stage_id);
        eq_filter(&mut sql, "d.status", &f.status);
        eq_filter(&mut sql, "d.client_id", &f.client_id);
        if let Some(t) = f.updated_since {
            let ph = sql.arg(t);
            sql.push(&format!(" AND d.updated_at >= {ph}"));
        }
        page_clause(&mut sql, "d", cursor, limit);
        let rows = sql
            .query()
            .fetch_all(&self.pool)
            .await
            .map_err(db("list deals"))?;
        let items = rows
            .iter()
            .take(limit as usize)
            .map(deal_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let next = page_end(&rows, &items, limit, "deal")?;
        Ok((items, next))
    }

    pub async fn create_deal(&self, ctx: &Ctx, new: &NewDeal) -> Result<Deal, StoreError> {
        let title = text_len("title", &new.title, 300)?;
        let currency = new.currency.clone().unwrap_or_else(|| "RUB".into());
        check_currency(&currency)?;
        if new.amount_minor < 0 {
            return Err(StoreError::Invalid {
                field: "amount_minor",
                reason: "must not be negative".into(),
            });
        }
        self.visible_client(ctx, "client_id", &new.client_id)
            .await?;
        let (owner, department) = self.resolve_owner(ctx, new.owner_id.as_deref()).await?;
        let pipeline = match &new.pipeline_id {
            Some(p) => p.clone(),
            None => self
                .pipelines()
                .await?
                .first()
                .map(|p| p.id.clone())
                .ok_or(StoreError::Invalid {
                    field: "pipeline_id",
                    reason: "no pipeline exists".into(),
                })?,
        };
        let first = sqlx::query(
            "SELECT id, deadline_hours FROM stages WHERE pipeline_id = $1 AND outcome = 'open' ORDER BY position LIMIT 1",
        )
        .bind(&pipeline)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("read stages"))?
        .ok_or(StoreError::Invalid {
            field: "pipeline_id",
            reason: "no such pipeline (or it has no open stage)".into(),
        })?;
        let stage: String = first.try_get("id").map_err(corrupt("stage"))?;
        let deadline: Option<i64> = first.try_get("deadline_hours").map_err(corrupt("stage"))?;
        let id = new_id();
        let now = micros_now();
        let mut tx = self.pool.begin().await.map_err(db("begin"))?;
        sqlx::query(
            "INSERT INTO deals (id, client_id, pipeline_id, stage_id, title, amount_minor, currency, status, lost_reason, \
             owner_id, department_id, stage_entered_at, stage_deadline_at, closed_at, created_at, updated_at, version) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'open', NULL, $8, $9, $10, $11, NULL, $10, $10, 1)",
        )
        .bind(&id)
        .bind(&new.client_id)
        .bind(&pipeline)
        .bind(&stage)
        .bind(&title)
        .bind(new.amount_minor)
        .bind(&currency)
        .bind(owner)
        .bind(department)
        .bind(now)
        .bind(deadline.map(|h| now + hours(h)))
        .execute(&mut *tx)
        .await
        .map_err(db("create deal"))?;
        sqlx::query(
            "INSERT INTO deal_stage_history (id, deal_id, from_stage_id, to_stage_id, changed_by, changed_at) \
             VALUES ($1, $2, NULL, $3, $4, $5)",
        )
        .bind(new_id())
        .bind(&id)
        .bind(&stage)
        .bind(&ctx.principal.user_id)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db("record stage"))?;
        let body = json!({"title": title, "amount_minor": new.amount_minor, "currency": currency, "stage_id": stage});
        audit(&mut tx, ctx, "create", "deal", &id, body.clone()).await?;
        add_to_timeline(&mut tx, &new.client_id, "deal.created", &id, body).await?;
        tx.commit().await.map_err(db("commit"))?;
        self.deal(ctx, &id).await
    }

    pub async fn patch_deal(
        &self,
        ctx: &Ctx,
        id: &str,
        if_match: i64,
        patch: &DealPatch,
    ) -> Result<Deal, StoreError> {
        let current = self.deal(ctx, id).await?;
        if current.version != if_match {
            return Err(StoreError::Stale {
                current: current.version,
            });
        }
        let title = patch
            .title
            .as_deref()
            .map(|t| text_len("title", t, 300))
            .transpose()?;
        if let Some(c) = &patch.currency {
            check_currency(c)?;
        }
        if patch.amount_minor.is_some_and(|a| a < 0) {
            return Err(StoreError::Invalid {
                field: "amount_minor",
                reason: "must not be negative".into(),
            });
        }
        let owner = match &patch.owner_id {
            Some(o) => Some(self.resolve_owner(ctx, Some(o)).await?),
            None => None,
        };
        let now = micros_now();
        let mut tx = self.pool.begin().await.map_err(db("begin"))?;
        let mut moved = None;
        if let Some(stage_id) = patch.stage_id.as_ref().filter(|s| **s != current.stage_id) {
            let (pipeline, outcome, deadline) =
                self.stage(&mut tx, stage_id)
                    .await?
                    .ok_or(StoreError::Invalid {
                        field: "stage_id",
                        reason: "no such stage".into(),
                    })?;
            if pipeline != current.pipeline_id {
                return Err(StoreError::Invalid {
                    field: "stage_id",
                    reason: "the stage belongs to another pipeline".into(),
                });
            }
            let lost_reason = patch.lost_reason.clone().or(current.lost_reason.clone());
            if outcome == "lost" && lost_reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
                return Err(StoreError::Invalid {
                    field: "lost_reason",
                    reason: "a lost deal needs a reason".into(),
                });
            }
            sqlx::query(
                "UPDATE deals SET stage_id = $1, status = $2, stage_entered_at = $3, stage_deadline_at = $4, \
                 closed_at = $5, lost_reason = $6 WHERE id = $7",
            )
            .bind(stage_id)
            .bind(&outcome)
            .bind(now)
            .bind(deadline.map(|h| now + hours(h)))
            .bind((outcome != "open").then_some(now))
            .bind(if outcome == "lost" { lost_reason } else { None })
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db("move deal"))?;
            sqlx::query(
                "INSERT INTO deal_stage_history (id, deal_id, from_stage_id, to_stage_id, changed_by, changed_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(new_id())
            .bind(id)
            .bind(&current.stage_id)
            .bind(stage_id)
            .bind(&ctx.principal.user_id)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db("record stage"))?;
            moved = Some((stage_id.clone(), outcome));
        }
        let updated = sqlx::query(
            "UPDATE deals SET title = COALESCE($1, title), amount_minor = COALESCE($2, amount_minor), \
             currency = COALESCE($3, currency), \
             owner_id = CASE WHEN $4 = 1 THEN $5 ELSE owner_id END, \
             department_id = CASE WHEN $4 = 1 THEN $6 ELSE department_id END, \
             updated_at = $7, version = version + 1 WHERE id = $8 AND version = $9",
        )
        .bind(title.clone())
        .bind(patch.amount_minor)
        .bind(patch.currency.clone())
        .bind(i64::from(owner.is_some()))
        .bind(owner.as_ref().and_then(|o| o.0.clone()))
        .bind(owner.as_ref().and_then(|o| o.1.clone()))
        .bind(now)
        .bind(id)
        .bind(if_match)
        .execute(&mut *tx)
        .await
        .map_err(db("update deal"))?
        .rows_affected();
        if updated == 0 {
            return Err(StoreError::Stale {
                current: current.version + 1,
            });
        }
        let details = json!({"title": title, "amount_minor": patch.amount_minor, "currency": patch.currency,
            "stage_id": patch.stage_id, "owner_id": patch.owner_id});
        audit(&mut tx, ctx, "update", "deal", id, details).await?;
        if let Some((_, outcome)) = moved.as_ref().filter(|(_, o)| o != "open") {
            let closed = Deal {
                title: title.clone().unwrap_or_else(|| current.title.clone()),
                amount_minor: patch.amount_minor.unwrap_or(current.amount_minor),
                currency: patch
                    .currency
                    .clone()
                    .unwrap_or_else(|| current.currency.clone()),
                status: outcome.clone(),
                closed_at: Some(rfc3339(now)?),
                ..current.clone()
            };
            queue_deal_report(&mut tx, ctx, &closed).await?;
        }
        if let Some((stage, outcome)) = moved {
            add_to_timeline(
                &mut tx,
                &current.client_id,
                "deal.stage_changed",
                id,
                json!({"title": title.unwrap_or(current.title.clone()), "from_stage_id": current.stage_id,
                    "to_stage_id": stage, "status": outcome, "lost_reason": patch.lost_reason}),
            )
            .await?;
        }
        tx.commit().await.map_err(db("commit"))?;
        match self.deal(ctx, id).await {
            Err(StoreError::NotFound) => Ok(Deal {
                version: current.version + 1,
                ..current
            }),
            other => other,
        }
    }

    pub async fn deal_history(&self, ctx: &Ctx, id: &str) -> Result<Vec<StageChange>, StoreError> {
        self.deal(ctx, id).await?;
        let rows = sqlx::query(
            "SELECT from_stage_id, to_stage_id, changed_by, changed_at FROM deal_stage_history \
             WHERE deal_id = $1 ORDER BY changed_at, id",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .map_err(db("read deal history"))?;
        let e = corrupt("deal history");
        rows.iter()
            .map(|r| {
                Ok(StageChange {
                    from_stage_id: r.try_get("from_stage_id").map_err(&e)?,
                    to_stage_id: r.try_get("to_stage_id").map_err(&e)?,
                    changed_by: r.try_get("changed_by").map_err(&e)?,
                    changed_at: rfc3339(r.try_get("changed_at").map_err(&e)?)?,
                })
            })
            .collect()
    }

    pub async fn task(&self, ctx: &Ctx, id: &str) -> Result<Task, StoreError> {
        let mut sql = Sql::new(&format!(
            "SELECT {TASK_COLUMNS} FROM tasks t WHERE t.id = $1"
        ));
        sql.arg(id);
        sql.visible_to(&ctx.principal, "t");
        let row = sql
            .query()
            .fetch_optional(&self.pool)
            .await
            .map_err(db("read task"))?;
        row.as_ref()
            .map(task_from_row)
            .transpose()?
            .ok_or(StoreError::NotFound)
    }

    pub async fn tasks(
        &self,
        ctx: &Ctx,
        f: &TaskFilter,
        cursor: Option<&Cursor>,
        limit: u32,
    ) -> Result<(Vec<Task>, Option<Cursor>), StoreError> {
        let mut sql = Sql::new(&format!("SELECT {TASK_COLUMNS} FROM tasks t WHERE 1 = 1"));
        sql.visible_to(&ctx.principal, "t");
        eq_filter(&mut sql, "t.owner_id", &f.owner_id);
        eq_filter(&mut sql, "t.client_id", &f.client_id);
        match f.done {
            Some(true) => {
                sql.push(" AND t.done_at IS NOT NULL");
            }
            Some(false) => {
                sql.push(" AND t.done_at IS NULL");
            }
            None => {}
        }
        if let Some(t) = f.due_before {
            let ph = sql.arg(t);
            sql.push(&format!(" AND t.due_at < {ph}"));
        }
        page_clause(&mut sql, "t", cursor, limit);
        let rows = sql
            .query()
            .fetch_all(&self.pool)
            .await
            .map_err(db("list tasks"))?;
        let items = rows
            .iter()
            .take(limit as usize)
            .map(task_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let next = page_end(&rows, &items, limit, "task")?;
        Ok((items, next))
    }

    pub async fn create_task(&self, ctx: &Ctx, new: &NewTask) -> Result<Task, StoreError> {
        let title = text_len("title", &new.title, 300)?;
        let kind = new.kind.clone().unwrap_or_else(|| "task".into());
        if !matches!(kind.as_str(), "task" | "meeting" | "call") {
            return Err(StoreError::Invalid {
                field: "kind",
                reason: "must be task, meeting or call".into(),
            });
        }
        let (due, starts, ends) = (
            parse_time("due_at", &new.due_at)?,
            parse_time("starts_at", &new.starts_at)?,
            parse_time("ends_at", &new.ends_at)?,
        );
        if let (Some(s), Some(e)) = (starts, ends)
            && e < s
        {
            return Err(StoreError::Invalid {
                field: "ends_at",
                reason: "must not be before starts_at".into(),
            });
        }
        if let Some(c) = &new.client_id {
            self.visible_client(ctx, "client_id", c).await?;
        }
        let mut client = new.client_id.clone();
        if let Some(d) = &new.deal_id {
            let deal = self.deal(ctx, d).await.map_err(|e| match e {
                StoreError::NotFound => StoreError::Invalid {
                    field: "deal_id",
                    reason: "no such deal".into(),
                },
                other => other,
            })?;
            client = client.or(Some(deal.client_id));
        }
        let (owner, department) = self.resolve_owner(ctx, new.owner_id.as_deref()).await?;
        let id = new_id();
        let now = micros_now();
        let mut tx = self.pool.begin().await.map_err(db("begin"))?;
        sqlx::query(
            "INSERT INTO tasks (id, kind, title, due_at, starts_at, ends_at, owner_id, department_id, client_id, \
             deal_id, done_at, created_by, created_at, updated_at, version) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, NULL, $11, $12, $12, 1)",
        )
        .bind(&id)
        .bind(&kind)
        .bind(&title)
        .bind(due)
        .bind(starts)
        .bind(ends)
        .bind(owner)
        .bind(department)
        .bind(client.clone())
        .bind(new.deal_id.clone())
        .bind(&ctx.principal.user_id)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db("create task"))?;
        let body = json!({"title": title, "kind": kind, "due_at": new.due_at});
        audit(&mut tx, ctx, "create", "task", &id, body.clone()).await?;
        if let Some(c) = &client {
            add_to_timeline(&mut tx, c, "task.created", &id, body).await?;
        }
        tx.commit().await.map_err(db("commit"))?;
        self.task(ctx, &id).await
    }

    pub async fn patch_task(
        &self,
        ctx: &Ctx,
        id: &str,
        if_match: i64,
        patch: &TaskPatch,
    ) -> Result<Task, StoreError> {
        let current = self.task(ctx, id).await?;
        if current.version != if_match {
            return Err(StoreError::Stale {
                current: current.version,
            });
        }
        let title = patch
            .title
            .as_deref()
            .map(|t| text_len("title", t, 300))
            .transpose()?;
        let due = parse_time("due_at", &patch.due_at)?;
        let owner = match &patch.owner_id {
            Some(o) => Some(self.resolve_owner(ctx, Some(o)).await?),
            None => None,
        };
        let now = micros_now();
        let done_at = match patch.done {
            Some(true) if current.done_at.is_none() => Some(Some(now)),
            Some(false) => Some(None),
            _ => None,
        };
        let mut tx = self.pool.begin().await.map_err(db("begin"))?;
        let updated = sqlx::query(
            "UPDATE tasks SET title = COALESCE($1, title), due_at = COALESCE($2, due_at), \
             done_at = CASE WHEN $3 = 1 THEN $4 ELSE done_at END, \
             owner_id = CASE WHEN $5 = 1 THEN $6 ELSE owner_id END, \
             department_id = CASE WHEN $5 = 1 THEN $7 ELSE department_id END, \
             updated_at = $8, version = version + 1 WHERE id = $9 AND version = $10",
        )
        .bind(title.clone())
        .bind(due)
        .bind(i64::from(done_at.is_some()))
        .bind(done_at.flatten())
        .bind(i64::from(owner.is_some()))
        .bind(owner.as_ref().and_then(|o| o.0.clone()))
        .bind(owner.as_ref().and_then(|o| o.1.clone()))
        .bind(now)
        .bind(id)
        .bind(if_match)
        .execute(&mut *tx)
        .await
        .map_err(db("update task"))?
        .rows_affected();
        if updated == 0 {
            return Err(StoreError::Stale {
                current: current.version + 1,
            });
        }
        audit(
            &mut tx,
            ctx,
            "update",
            "task",
            id,
            json!({"title": title, "done": patch.done, "owner_id": patch.owner_id}),
        )
        .await?;
        if let (Some(Some(_)), Some(c)) = (done_at, &current.client_id) {
            add_to_timeline(&mut tx, c, "task.done", id, json!({"title": current.title})).await?;
        }
        tx.commit().await.map_err(db("commit"))?;
        match self.task(ctx, id).await {
            Err(StoreError::NotFound) => Ok(Task {
                version: current.version + 1,
                ..current
            }),
            other => other,
        }
    }

    pub async fn ticket(&self, ctx: &Ctx, id: &str) -> Result<Ticket, StoreError> {
        let mut sql = Sql::new(&format!(
            "SELECT {TICKET_COLUMNS} FROM tickets k WHERE k.id = $1"
        ));
        sql.arg(id);
        sql.visible_to(&ctx.principal, "k");
        let row = sql
            .query()
            .fetch_optional(&self.pool)
            .await
            .map_err(db("read ticket"))?;
        row.as_ref()
            .map(ticket_from_row)
            .transpose()?
            .ok_or(StoreError::NotFound)
    }

    pub async fn tickets(
        &self,
        ctx: &Ctx,
        status: &Option<String>,
        owner: &Option<String>,
        cursor: Option<&Cursor>,
        limit: u32,
    ) -> Result<(Vec<Ticket>, Option<Cursor>), StoreError> {
        let mut sql = Sql::new(&format!(
            "SELECT {TICKET_COLUMNS} FROM tickets k WHERE 1 = 1"
        ));
        sql.visible_to(&ctx.principal, "k");
        eq_filter(&mut sql, "k.status", status);
        eq_filter(&mut sql, "k.owner_id", owner);
        page_clause(&mut sql, "k", cursor, limit);
        let rows = sql
            .query()
            .fetch_all(&self.pool)
            .await
            .map_err(db("list tickets"))?;
        let items = rows
            .iter()
            .take(limit as usize)
            .map(ticket_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let next = page_end(&rows, &items, limit, "ticket")?;
        Ok((items, next))
    }

    pub async fn create_ticket(&self, ctx: &Ctx, new: &NewTicket) -> Result<Ticket, StoreError> {
        let subject = text_len("subject", &new.subject, 300)?;
        let level = new.sla_level.clone().unwrap_or_else(|| "standard".into());
        let due_hours = sla_hours(&level)?;
        self.visible_client(ctx, "client_id", &new.client_id)
            .await?;
        let (owner, department) = self.resolve_owner(ctx, new.owner_id.as_deref()).await?;
        let id = new_id();
        let now = micros_now();
        let mut tx = self.pool.begin().await.map_err(db("begin"))?;
        sqlx::query(
            "INSERT INTO tickets (id, client_id, subject, status, sla_level, due_at, time_spent_minutes, owner_id, \
             department_id, created_at, updated_at, version) VALUES ($1, $2, $3, 'open', $4, $5, 0, $6, $7, $8, $8, 1)",
        )
        .bind(&id)
        .bind(&new.client_id)
        .bind(&subject)
        .bind(&level)
        .bind(now + hours(due_hours))
        .bind(owner)
        .bind(department)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db("create ticket"))?;
        let body = json!({"subject": subject, "sla_level": level});
        audit(&mut tx, ctx, "create", "ticket", &id, body.clone()).await?;
        add_to_timeline(&mut tx, &new.client_id, "ticket.opened", &id, body).await?;
        tx.commit().await.map_err(db("commit"))?;
        self.ticket(ctx, &id).await
    }

    pub async fn patch_ticket(
        &self,
        ctx: &Ctx,
        id: &str,
        if_match: Option<i64>,
        patch: &TicketPatch,
        add_minutes: i64,
    ) -> Result<Ticket, StoreError> {
        let current = self.ticket(ctx, id).await?;
        if let Some(v) = if_match
            && current.version != v
        {
            return Err(StoreError::Stale {
                current: current.version,
            });
        }
        let subject = patch
            .subject
            .as_deref()
            .map(|s| text_len("subject", s, 300))
            .transpose()?;
        if let Some(s) = &patch.status
            && !matches!(s.as_str(), "open" | "pending" | "solved" | "closed")
        {
            return Err(StoreError::Invalid {
                field: "status",
                reason: "must be open, pending, solved or closed".into(),
            });
        }
        let due = patch
            .sla_level
            .as_deref()
            .map(|l| sla_hours(l).map(|h| micros_now() + hours(h)))
            .transpose()?;
        let owner = match &patch.owner_id {
            Some(o) => Some(self.resolve_owner(ctx, Some(o)).await?),
            None => None,
        };
        let mut tx = self.pool.begin().await.map_err(db("begin"))?;
        let updated = sqlx::query(
            "UPDATE tickets SET subject = COALESCE($1, subject), status = COALESCE($2, status), \
             sla_level = COALESCE($3, sla_level), due_at = COALESCE($4, due_at), \
             time_spent_minutes = time_spent_minutes + $5, \
             owner_id = CASE WHEN $6 = 1 THEN $7 ELSE owner_id END, \
             department_id = CASE WHEN $6 = 1 THEN $8 ELSE department_id END, \
             updated_at = $9, version = version + 1 WHERE id = $10",
        )
        .bind(subject.clone())
        .bind(patch.status.clone())
        .bind(patch.sla_level.clone())
        .bind(due)
        .bind(add_minutes)
        .bind(i64::from(owner.is_some()))
        .bind(owner.as_ref().and_then(|o| o.0.clone()))
        .bind(owner.as_ref().and_then(|o| o.1.clone()))
        .bind(micros_now())
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(db("update ticket"))?
        .rows_affected();
        if updated == 0 {
            return Err(StoreError::NotFound);
        }
        let body = json!({"subject": subject, "status": patch.status, "sla_level": patch.sla_level,
            "minutes": add_minutes, "owner_id": patch.owner_id});
        audit(&mut tx, ctx, "update", "ticket", id, body.clone()).await?;
        add_to_timeline(&mut tx, &current.client_id, "ticket.updated", id, body).await?;
        tx.commit().await.map_err(db("commit"))?;
        match self.ticket(ctx, id).await {
            Err(StoreError::NotFound) => Ok(Ticket {
                version: current.version + 1,
                ..current
            }),
            other => other,
        }
    }

    pub async fn create_note(
        &self,
        ctx: &Ctx,
        client_id: &str,
        body: &str,
        deal_id: Option<&str>,
    ) -> Result<Note, StoreError> {
        self.client(ctx, client_id).await?;
        let body = text_len("body", body, 20_000)?;
        if let Some(d) = deal_id
            && self
                .deal(ctx, d)
                .await
                .map(|deal| deal.client_id != client_id)
                .unwrap_or(true)
        {
            return Err(StoreError::Invalid {
                field: "deal_id",
                reason: "no such deal of this client".into(),
            });
        }
        let id = new_id();
        let now = micros_now();
        let mut tx = self.pool.begin().await.map_err(db("begin"))?;
        sqlx::query("INSERT INTO notes (id, client_id, deal_id, author_id, body, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(&id)
            .bind(client_id)
            .bind(deal_id)
            .bind(&ctx.principal.user_id)
            .bind(&body)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db("create note"))?;
        audit(
            &mut tx,
            ctx,
            "create",
            "note",
            &id,
            json!({"client_id": client_id}),
        )
        .await?;
        add_to_timeline(
            &mut tx,
            client_id,
            "note",
            &id,
            json!({"body": body, "deal_id": deal_id}),
        )
        .await?;
        tx.commit().await.map_err(db("commit"))?;
        Ok(Note {
            id,
            client_id: client_id.to_owned(),
            deal_id: deal_id.map(str::to_owned),
            author_id: Some(ctx.principal.user_id.clone()),
            body,
            created_at: rfc3339(now)?,
        })
    }

    /// Records an uploaded file already stored under its SHA-256.
    pub async fn create_attachment(
        &self,
        ctx: &Ctx,
        client_id: &str,
        filename: &str,
        content_type: &str,
        size: i64,
        sha256: &str,
    ) -> Result<Attachment, StoreError> {
        self.client(ctx, client_id).await?;
        let filename = text_len("filename", filename, 255)?;
        let id = new_id();
        let now = micros_now();
        let mut tx = self.pool.begin().await.map_err(db("begin"))?;
        sqlx::query(
            "INSERT INTO attachments (id, client_id, deal_id, filename, content_type, size, sha256, uploaded_by, created_at) \
             VALUES ($1, $2, NULL, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&id)
        .bind(client_id)
        .bind(&filename)
        .bind(content_type)
        .bind(size)
        .bind(sha256)
        .bind(&ctx.principal.user_id)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db("create attachment"))?;
        let body = json!({"filename": filename, "content_type": content_type, "size": size, "sha256": sha256});
        audit(&mut tx, ctx, "create", "attachment", &id, body.clone()).await?;
        add_to_timeline(&mut tx, client_id, "attachment", &id, body).await?;
        tx.commit().await.map_err(db("commit"))?;
        Ok(Attachment {
            id,
            client_id: client_id.to_owned(),
            deal_id: None,
            filename,
            content_type: content_type.to_owned(),
            size,
            sha256: sha256.to_owned(),
            created_at: rfc3339(now)?,
        })
    }

    /// An attachment, if its client is visible.
    pub async fn attachment(&self, ctx: &Ctx, id: &str) -> Result<Attachment, StoreError> {
        let row = sqlx::query(
            "SELECT id, client_id, deal_id, filename, content_type, size, sha256, created_at FROM attachments WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("read attachment"))?
        .ok_or(StoreError::NotFound)?;
        let e = corrupt("attachment");
        let a = Attachment {
            id: row.try_get("id").map_err(&e)?,
            client_id: row.try_get("client_id").map_err(&e)?,
            deal_id: row.try_get("deal_id").map_err(&e)?,
            filename: row.try_get("filename").map_err(&e)?,
            content_type: row.try_get("content_type").map_err(&e)?,
            size: row.try_get("size").map_err(&e)?,
            sha256: row.try_get("sha256").map_err(&e)?,
            created_at: rfc3339(row.try_get("created_at").map_err(&e)?)?,
        };
        self.client(ctx, &a.client_id).await?;
        Ok(a)
    }

    /// The latest interaction of a conversation (or the interaction with
    /// that id), if its client is visible: what a reply answers.
    pub async fn conversation_head(
        &self,
        ctx: &Ctx,
        conversation: &str,
    ) -> Result<String, StoreError> {
        // Routing and call events share the conversation id but carry no
        // line: the head is the latest message or lead.
        self.latest_envelope(
            ctx,
            "(i.conversation = $1 OR i.id = $1) \
             AND i.kind IN ('message.received', 'message.sent', 'lead.received')",
            conversation,
        )
        .await
    }

    /// The payload of a call's latest `recording.ready`, if its client is
    /// visible.
    pub async fn recording(
        &self,
        ctx: &Ctx,
        conversation: &str,
    ) -> Result<serde_json::Value, StoreError> {
        let envelope = self
            .latest_envelope(
                ctx,
                "i.conversation = $1 AND i.kind = 'recording.ready'",
                conversation,
            )
            .await?;
        let mut v: serde_json::Value =
            serde_json::from_str(&envelope).map_err(|_| StoreError::NotFound)?;
        Ok(v["payload"].take())
    }

    /// The envelope of the latest interaction matching `filter` (SQL on
    /// `i`, with `$1` bound to `arg`) whose client is visible.
    async fn latest_envelope(
        &self,
        ctx: &Ctx,
        filter: &str,
        arg: &str,
    ) -> Result<String, StoreError> {
        let mut sql = Sql::new(&format!(
            "SELECT i.envelope FROM interactions i JOIN clients c ON c.id = i.client_id WHERE {filter}"
        ));
        sql.arg(arg);
        sql.visible_to(&ctx.principal, "c");
        sql.push(" ORDER BY i.occurred_at DESC LIMIT 1");
        let row = sql
            .query()
            .fetch_optional(&self.pool)
            .await
            .map_err(db("read interaction"))?;
        row.map(|r| r.try_get("envelope").map_err(corrupt("interaction")))
            .transpose()?
            .ok_or(StoreError::NotFound)
    }

    /// Writes an audit record for an action with no record of its own
    /// (a command sent to the gateway).
    pub async fn audit_action(
        &self,
        ctx: &Ctx,
        action: &str,
        entity: &str,
        entity_id: &str,
        details: serde_json::Value,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(db("begin"))?;
        audit(&mut tx, ctx, action, entity, entity_id, details).await?;
        tx.commit().await.map_err(db("commit"))
    }

    /// The audit log of one record, oldest first (administrators).
    pub async fn audit_log(
        &self,
        entity: &str,
        entity_id: &str,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT at, user_id, action, entity, entity_id, remote_addr, details FROM audit_log \
             WHERE entity = $1 AND entity_id = $2 ORDER BY at, id",
        )
        .bind(entity)
        .bind(entity_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db("read audit log"))?;
        let e = corrupt("audit");
        rows.iter()
            .map(|r| {
                let details: String = r.try_get("details").map_err(&e)?;
                Ok(AuditEntry {
                    at: rfc3339(r.try_get("at").map_err(&e)?)?,
                    user_id: r.try_get("user_id").map_err(&e)?,
                    action: r.try_get("action").map_err(&e)?,
                    entity: r.try_get("entity").map_err(&e)?,
                    entity_id: r.try_get("entity_id").map_err(&e)?,
                    remote_addr: r.try_get("remote_addr").map_err(&e)?,
                    details: serde_json::from_str(&details).unwrap_or(serde_json::Value::Null),
                })
            })
            .collect()
    }
}

/// A person at a client company.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ContactPerson {
    pub id: String,
    pub client_id: String,
    pub name: String,
    pub position: Option<String>,
    pub phones: Vec<String>,
    pub emails: Vec<String>,
    pub created_at: String,
}

#[derive(Debug, Clone, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewContactPerson {
    pub name: String,
    #[serde(default)]
    pub position: Option<String>,
    /// E.164; each must be nobody else's.
    #[serde(default)]
    pub phones: Vec<String>,
    #[serde(default)]
    pub emails: Vec<String>,
}

/// `POST /v1/pipelines`: a new sales scenario.
#[derive(Debug, Clone, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPipeline {
    pub name: String,
    /// In order; at least one `open` stage, and `won`/`lost` stages to close deals.
    pub stages: Vec<NewStage>,
}

#[derive(Debug, Clone, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewStage {
    pub name: String,
    /// `open` (default), `won` or `lost`.
    #[serde(default)]
    pub outcome: Option<String>,
    /// Hours a deal may stay in this stage.
    #[serde(default)]
    pub deadline_hours: Option<i64>,
}

impl Store {
    pub async fn create_pipeline(
        &self,
        ctx: &Ctx,
        new: &NewPipeline,
    ) -> Result<Pipeline, StoreError> {
        let name = text_len("name", &new.name, 200)?;
        if new.stages.is_empty() || new.stages.len() > 50 {
            return Err(StoreError::Invalid {
                field: "stages",
                reason: "1 to 50 stages".into(),
            });
        }
        let mut outcomes = Vec::new();
        for s in &new.stages {
            text_len("stages", &s.name, 200)?;
            let outcome = s.outcome.clone().unwrap_or_else(|| "open".into());
            if !matches!(outcome.as_str(), "open" | "won" | "lost") {
                return Err(StoreError::Invalid {
                    field: "stages",
                    reason: format!("outcome {outcome:?} is not open, won or lost"),
                });
            }
            if s.deadline_hours
                .is_some_and(|h| !(1..=24 * 365).contains(&h))
            {
                return Err(StoreError::Invalid {
                    field: "stages",
                    reason: "deadline_hours must be 1 to 8760".into(),
                });
            }
            outcomes.push(outcome);
        }
        if !outcomes.iter().any(|o| o == "open") {
            return Err(StoreError::Invalid {
                field: "stages",
                reason: "a pipeline needs an open stage".into(),
            });
        }
        let id = new_id();
        let mut tx = self.pool.begin().await.map_err(db("begin"))?;
        sqlx::query("INSERT INTO pipelines (id, name, created_at) VALUES ($1, $2, $3)")
            .bind(&id)
            .bind(&name)
            .bind(micros_now())
            .execute(&mut *tx)
            .await
            .map_err(db("a pipeline with this name"))?;
        for (i, (s, outcome)) in new.stages.iter().zip(&outcomes).enumerate() {
            sqlx::query(
                "INSERT INTO stages (id, pipeline_id, name, position, outcome, deadline_hours) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(new_id())
            .bind(&id)
            .bind(s.name.trim())
            .bind(i64::try_from(i).unwrap_or(0) + 1)
            .bind(outcome)
            .bind(s.deadline_hours)
            .execute(&mut *tx)
            .await
            .map_err(db("create stage"))?;
        }
        audit(
            &mut tx,
            ctx,
            "create",
            "pipeline",
            &id,
            json!({"name": name, "stages": new.stages.len()}),
        )
        .await?;
        tx.commit().await.map_err(db("commit"))?;
        self.pipelines()
            .await?
            .into_iter()
            .find(|p| p.id == id)
            .ok_or(StoreError::NotFound)
    }

    pub async fn contact_persons(
        &self,
        ctx: &Ctx,
        client_id: &str,
    ) -> Result<Vec<ContactPerson>, StoreError> {
        self.client(ctx, client_id).await?;
        let rows = sqlx::query(
            "SELECT p.id, p.client_id, p.name, p.position, p.created_at FROM contact_persons p \
             WHERE p.client_id = $1 ORDER BY p.created_at, p.id",
        )
        .bind(client_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db("list contact persons"))?;
        let e = corrupt("contact person");
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let id: String = r.try_get("id").map_err(&e)?;
            let ids = sqlx::query("SELECT kind, value FROM identities WHERE contact_person_id = $1 ORDER BY kind, value")
                .bind(&id)
                .fetch_all(&self.pool)
                .await
                .map_err(db("read identities"))?;
            let (mut phones, mut emails) = (Vec::new(), Vec::new());
            for i in ids {
                let kind: String = i.try_get("kind").map_err(&e)?;
                let value: String = i.try_get("value").map_err(&e)?;
                if kind == "phone" {
                    phones.push(value);
                } else {
                    emails.push(value);
                }
            }
            out.push(ContactPerson {
                id,
                client_id: r.try_get("client_id").map_err(&e)?,
                name: r.try_get("name").map_err(&e)?,
                position: r.try_get("position").map_err(&e)?,
                phones,
                emails,
                created_at: rfc3339(r.try_get("created_at").map_err(&e)?)?,
            });
        }
        Ok(out)
    }

    /// Adds a contact person; their phones and emails identify the client.
    pub async fn create_contact_person(
        &self,
        ctx: &Ctx,
        client_id: &str,
        new: &NewContactPerson,
    ) -> Result<ContactPerson, StoreError> {
        self.client(ctx, client_id).await?;
        let name = text_len("name", &new.name, 300)?;
        for p in &new.phones {
            super::clients::check_phone(p)?;
        }
        let emails = new
            .emails
            .iter()
            .map(|e| super::clients::check_email(e))
            .collect::<Result<Vec<_>, _>>()?;
        let id = new_id();
        let now = micros_now();
        let mut tx = self.pool.begin().await.map_err(db("begin"))?;
        sqlx::query(
            "INSERT INTO contact_persons (id, client_id, name, position, created_at, updated_at, version) \
             VALUES ($1, $2, $3, $4, $5, $5, 1)",
        )
        .bind(&id)
        .bind(client_id)
        .bind(&name)
        .bind(new.position.clone())
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db("create contact person"))?;
        for (k, v) in new
            .phones
            .iter()
            .map(|p| ("phone", p))
            .chain(emails.iter().map(|e| ("email", e)))
        {
            sqlx::query(
                "INSERT INTO identities (kind, value, client_id, contact_person_id, created_at) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(k)
            .bind(v)
            .bind(client_id)
            .bind(&id)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db("identity"))?;
        }
        super::feed::refresh_search(&mut tx, client_id).await?;
        audit(
            &mut tx,
            ctx,
            "create",
            "contact_person",
            &id,
            json!({"client_id": client_id, "name": name}),
        )
        .await?;
        tx.commit().await.map_err(db("commit"))?;
        self.contact_persons(ctx, client_id)
            .await?
            .into_iter()
            .find(|p| p.id == id)
            .ok_or(StoreError::NotFound)
    }
}

/// A deal just closed: when its client's latest lead came from a service
/// with end-to-end analytics (Roistat, CoMagic, UIS), a `deal.report`
/// command for that service's line joins the command outbox in the same
/// transaction, to reach the gateway through the feed afterwards.
async fn queue_deal_report(tx: &mut Tx<'_>, ctx: &Ctx, deal: &Deal) -> Result<(), StoreError> {
    use switchboard_storage::{Command, CommandKind, Interaction};
    let row = sqlx::query(
        "SELECT envelope FROM interactions WHERE client_id = $1 AND kind = 'lead.received' \
         AND channel IN ('roistat', 'comagic', 'uis') ORDER BY occurred_at DESC LIMIT 1",
    )
    .bind(&deal.client_id)
    .fetch_optional(&mut **tx)
    .await
    .map_err(db("read the client's lead"))?;
    let Some(row) = row else {
        return Ok(());
    };
    let envelope: String = row.try_get("envelope").map_err(corrupt("interaction"))?;
    let Ok(lead) = serde_json::from_str::<Interaction>(&envelope) else {
        return Ok(());
    };
    let line = lead.payload["line"].as_str().unwrap_or_default();
    let mut origin = lead.payload.clone();
    origin["visit_id"] = json!(lead.campaign.as_ref().and_then(|c| c.visit_id.clone()));
    let cmd = Command {
        v: switchboard_storage::envelope::VERSION,
        id: uuid::Uuid::now_v7(),
        issued_at: time::OffsetDateTime::now_utc(),
        kind: CommandKind::DealReport,
        channel: lead.channel,
        target: format!("{}:{line}", lead.channel.as_str()),
        contact: lead.contact.clone(),
        manager: ctx.principal.routing_id.clone(),
        conversation: lead.conversation.clone(),
        payload: json!({
            "deal_id": deal.id,
            "client_id": deal.client_id,
            "title": deal.title,
            "status": deal.status,
            "amount_minor": deal.amount_minor,
            "currency": deal.currency,
            "created_at": deal.created_at,
            "closed_at": deal.closed_at,
            "lead": origin,
        }),
    };
    let body = serde_json::to_value(&cmd).map_err(|e| StoreError::Corrupt {
        what: "command",
        detail: e.to_string(),
    })?;
    let id = cmd.id.to_string();
    sqlx::query("INSERT INTO command_outbox (id, envelope, created_at) VALUES ($1, $2, $3)")
        .bind(&id)
        .bind(body.to_string())
        .bind(micros_now())
        .execute(&mut **tx)
        .await
        .map_err(db("queue a command"))?;
    audit(tx, ctx, "deal_report", "command", &id, body).await
}

impl Store {
    /// Commands waiting in the outbox, oldest first: `(id, envelope)`.
    pub async fn queued_commands(&self, limit: i64) -> Result<Vec<(String, String)>, StoreError> {
        let rows =
            sqlx::query("SELECT id, envelope FROM command_outbox ORDER BY created_at, id LIMIT $1")
                .bind(limit)
                .fetch_all(&self.pool)
                .await
                .map_err(db("read the command outbox"))?;
        let e = corrupt("command outbox");
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("id").map_err(&e)?,
                    r.try_get("envelope").map_err(&e)?,
                ))
            })
            .collect()
    }

    /// A queued command is in the feed.
    pub async fn command_sent(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM command_outbox WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db("clear the command outbox"))?;
        Ok(())
    }
}
