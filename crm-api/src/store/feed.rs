//! Applying the feed: interactions find their client by identity (or make a
//! potential client), land on the client card, and routing decisions move
//! ownership. Everything a batch does happens in one transaction, and ids
//! are derived from the feed, so a replay into an empty store gives the
//! same state.

use sqlx::Row;
use switchboard_storage::{Interaction, Kind, OwnerChange};

use super::{Applied, Reject, Store, StoreError, db, micros};

/// Where an identity comes from in a contact key: `tel:` → phone,
/// `email:` → email, anything else → a messenger or service account.
pub(crate) fn identities_of(ev: &Interaction) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let key = &ev.contact.key;
    if let Some(p) = key.strip_prefix("tel:") {
        out.push(("phone", p.to_owned()));
    } else if let Some(e) = key.strip_prefix("email:") {
        out.push(("email", e.to_owned()));
    } else {
        out.push(("account", key.clone()));
    }
    if let Some(p) = &ev.contact.phone {
        out.push(("phone", p.clone()));
    }
    if let Some(e) = &ev.contact.email {
        out.push(("email", e.clone()));
    }
    out.sort();
    out.dedup();
    out
}

/// The contact key an identity is published under on the owners topic.
pub(crate) fn contact_key(kind: &str, value: &str) -> String {
    match kind {
        "phone" => format!("tel:{value}"),
        "email" => format!("email:{value}"),
        _ => value.to_owned(),
    }
}

/// A stable user id for a routing manager id, so replays agree.
pub(crate) fn user_id_for(routing_id: &str) -> String {
    uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_URL,
        format!("switchboard:manager:{routing_id}").as_bytes(),
    )
    .to_string()
}

type Tx<'a> = sqlx::Transaction<'a, sqlx::Any>;

async fn client_of(
    tx: &mut Tx<'_>,
    ids: &[(&'static str, String)],
) -> Result<Option<String>, StoreError> {
    for (kind, value) in ids {
        let row = sqlx::query("SELECT client_id FROM identities WHERE kind = $1 AND value = $2")
            .bind(*kind)
            .bind(value)
            .fetch_optional(&mut **tx)
            .await
            .map_err(db("find identity"))?;
        if let Some(r) = row {
            return Ok(Some(r.try_get("client_id").map_err(db("find identity"))?));
        }
    }
    Ok(None)
}

/// The user for a routing manager id, created (as a manager) if new.
async fn routing_user(
    tx: &mut Tx<'_>,
    routing_id: &str,
    at: i64,
) -> Result<(String, Option<String>), StoreError> {
    let id = user_id_for(routing_id);
    sqlx::query(
        "INSERT INTO users (id, routing_id, name, role, department_id, created_at) \
         VALUES ($1, $2, $2, 'manager', NULL, $3) ON CONFLICT (routing_id) DO NOTHING",
    )
    .bind(&id)
    .bind(routing_id)
    .bind(at)
    .execute(&mut **tx)
    .await
    .map_err(db("create user"))?;
    let row = sqlx::query("SELECT id, department_id FROM users WHERE routing_id = $1")
        .bind(routing_id)
        .fetch_one(&mut **tx)
        .await
        .map_err(db("read user"))?;
    Ok((
        row.try_get("id").map_err(db("read user"))?,
        row.try_get("department_id").map_err(db("read user"))?,
    ))
}

/// Search text of a client: name and identities, lower-cased.
pub(crate) async fn refresh_search(tx: &mut Tx<'_>, client_id: &str) -> Result<(), StoreError> {
    let rows =
        sqlx::query("SELECT value FROM identities WHERE client_id = $1 ORDER BY kind, value")
            .bind(client_id)
            .fetch_all(&mut **tx)
            .await
            .map_err(db("read identities"))?;
    let name: String = sqlx::query("SELECT name FROM clients WHERE id = $1")
        .bind(client_id)
        .fetch_one(&mut **tx)
        .await
        .and_then(|r| r.try_get("name"))
        .map_err(db("read client"))?;
    let mut text = name.to_lowercase();
    for r in rows {
        let v: String = r.try_get("value").map_err(db("read identities"))?;
        text.push(' ');
        text.push_str(&v.to_lowercase());
    }
    sqlx::query("UPDATE clients SET search_text = $1 WHERE id = $2")
        .bind(text)
        .bind(client_id)
        .execute(&mut **tx)
        .await
        .map_err(db("update search text"))?;
    Ok(())
}

impl Store {
    /// Applies decoded interactions and keeps rejects, in one transaction.
    /// Returns what happened and the owner changes to publish (routing
    /// events republish the current owner even when replayed, so a crash
    /// between this commit and the publish loses nothing).
    pub async fn apply(
        &self,
        batch: &[(Interaction, &str)],
        rejects: &[Reject<'_>],
    ) -> Result<(Applied, Vec<OwnerChange>), StoreError> {
        let mut applied = Applied::default();
        let mut owners = Vec::new();
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
            let ids = identities_of(ev);
            if inserted == 0 {
                applied.duplicate += 1;
            } else {
                applied.new += 1;
                self.file_interaction(&mut tx, ev, text, &ids, occurred)
                    .await?;
            }
            if matches!(ev.kind, Kind::RoutingAssigned | Kind::RoutingReassigned)
                && let Some(change) = self.follow_routing(&mut tx, ev, &ids, occurred).await?
            {
                owners.extend(change);
            }
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
        Ok((applied, owners))
    }

    /// A new interaction: its client (found or created as potential), its
    /// identities, the client card, the per-key contact row.
    async fn file_interaction(
        &self,
        tx: &mut Tx<'_>,
        ev: &Interaction,
        text: &str,
        ids: &[(&'static str, String)],
        occurred: i64,
    ) -> Result<(), StoreError> {
        let client_id = match client_of(tx, ids).await? {
            Some(id) => id,
            // An auto-reply, bounce or bulk letter from someone unknown is
            // kept in the feed's record but makes no potential client.
            None if ev.payload.get("auto").is_some() => return Ok(()),
            None => {
                // The client is named after the interaction that made it.
                let id = ev.id.to_string();
                let name = ev
                    .contact
                    .name
                    .clone()
                    .unwrap_or_else(|| ids.first().map(|(_, v)| v.clone()).unwrap_or_default());
                sqlx::query(
                    "INSERT INTO clients (id, kind, status, name, owner_id, department_id, source, search_text, \
                     created_at, updated_at, promoted_at, version) \
                     VALUES ($1, 'person', 'potential', $2, NULL, NULL, $3, '', $4, $4, NULL, 1)",
                )
                .bind(&id)
                .bind(name)
                .bind(ev.campaign.as_ref().and_then(|c| c.source.clone()))
                .bind(occurred)
                .execute(&mut **tx)
                .await
                .map_err(db("create potential client"))?;
                id
            }
        };
        for (kind, value) in ids {
            sqlx::query(
                "INSERT INTO identities (kind, value, client_id, contact_person_id, created_at) \
                 VALUES ($1, $2, $3, NULL, $4) ON CONFLICT (kind, value) DO NOTHING",
            )
            .bind(*kind)
            .bind(value)
            .bind(&client_id)
            .bind(occurred)
            .execute(&mut **tx)
            .await
            .map_err(db("save identity"))?;
        }
        refresh_search(tx, &client_id).await?;
        sqlx::query(
            "UPDATE clients SET updated_at = CASE WHEN updated_at < $1 THEN $1 ELSE updated_at END WHERE id = $2",
        )
        .bind(occurred)
        .bind(&client_id)
        .execute(&mut **tx)
        .await
        .map_err(db("touch client"))?;
        sqlx::query("UPDATE interactions SET client_id = $1, conversation = $2 WHERE id = $3")
            .bind(&client_id)
            .bind(ev.conversation.clone())
            .bind(ev.id.to_string())
            .execute(&mut **tx)
            .await
            .map_err(db("link interaction"))?;
        sqlx::query(
            "INSERT INTO timeline_entries (id, client_id, at, kind, ref_id, body) \
             VALUES ($1, $2, $3, 'interaction', $1, $4) ON CONFLICT (id) DO NOTHING",
        )
        .bind(ev.id.to_string())
        .bind(&client_id)
        .bind(occurred)
        .bind(text)
        .execute(&mut **tx)
        .await
        .map_err(db("add to timeline"))?;
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
        .execute(&mut **tx)
        .await
        .map_err(db("upsert contact"))?;
        Ok(())
    }

    /// Ownership follows routing: an unowned client goes to the manager it
    /// was assigned to; a reassignment away from the owner moves it. Returns
    /// the owner to publish for each of the client's identities.
    async fn follow_routing(
        &self,
        tx: &mut Tx<'_>,
        ev: &Interaction,
        ids: &[(&'static str, String)],
        occurred: i64,
    ) -> Result<Option<Vec<OwnerChange>>, StoreError> {
        let Some(manager) = ev.manager.as_deref() else {
            return Ok(None);
        };
        let Some(client_id) = client_of(tx, ids).await? else {
            return Ok(None);
        };
        let (user, department) = routing_user(tx, manager, occurred).await?;
        let current: Option<String> = sqlx::query("SELECT owner_id FROM clients WHERE id = $1")
            .bind(&client_id)
            .fetch_one(&mut **tx)
            .await
            .and_then(|r| r.try_get("owner_id"))
            .map_err(db("read client owner"))?;
        let take = match (ev.kind, &current) {
            (Kind::RoutingAssigned, None) => true,
            (Kind::RoutingReassigned, Some(owner)) => {
                let from = ev.payload.get("from").and_then(|v| v.as_str());
                from.is_some_and(|f| *owner == user_id_for(f)) && *owner != user
            }
            _ => false,
        };
        if take {
            sqlx::query(
                "UPDATE clients SET owner_id = $1, department_id = $2, version = version + 1 WHERE id = $3",
            )
            .bind(&user)
            .bind(department)
            .bind(&client_id)
            .execute(&mut **tx)
            .await
            .map_err(db("set client owner"))?;
        }
        self.owner_changes(tx, &client_id).await.map(Some)
    }

    /// The client's current owner, once per identity, for the owners topic.
    pub(crate) async fn owner_changes(
        &self,
        tx: &mut Tx<'_>,
        client_id: &str,
    ) -> Result<Vec<OwnerChange>, StoreError> {
        let owner: Option<String> = sqlx::query(
            "SELECT u.routing_id FROM clients c LEFT JOIN users u ON u.id = c.owner_id WHERE c.id = $1",
        )
        .bind(client_id)
        .fetch_one(&mut **tx)
        .await
        .and_then(|r| r.try_get("routing_id"))
        .map_err(db("read owner"))?;
        let rows = sqlx::query(
            "SELECT kind, value FROM identities WHERE client_id = $1 ORDER BY kind, value",
        )
        .bind(client_id)
        .fetch_all(&mut **tx)
        .await
        .map_err(db("read identities"))?;
        let now = time::OffsetDateTime::now_utc();
        rows.iter()
            .map(|r| {
                let kind: String = r.try_get("kind").map_err(db("read identities"))?;
                let value: String = r.try_get("value").map_err(db("read identities"))?;
                Ok(OwnerChange {
                    v: switchboard_storage::envelope::VERSION,
                    contact_key: contact_key(&kind, &value),
                    manager: owner.clone(),
                    changed_at: now,
                })
            })
            .collect()
    }
}
