//! What the email adapter must remember across restarts, in
//! `<data_dir>/email.sqlite`: each mailbox's IMAP cursor (UIDVALIDITY and
//! the last UID taken), every letter taken (by key, for dedupe after a
//! UIDVALIDITY change or a POP3 UIDL list, and by Message-ID for
//! threading and replies). Which replies were sent is in the shared
//! [`crate::inbox`] ledger of commands.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};

/// A letter as remembered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    pub key: String,
    pub message_id: Option<String>,
    pub thread: String,
    pub contact: String,
    /// Thread subject (see `letter::thread_subject`).
    pub subject: String,
    /// The subject as written, for "Re:".
    pub title: String,
    pub interaction: String,
    /// References to repeat in a reply (space-separated ids).
    pub references: String,
}

#[derive(Debug, Clone)]
pub struct MailState {
    /// Writes (and the cursor).
    db: Arc<Mutex<Connection>>,
    /// Reads that must not wait for a commit.
    reader: Arc<Mutex<Connection>>,
}

/// The state file could not be used.
#[derive(Debug, thiserror::Error)]
#[error("email state: {0}")]
pub struct StateError(#[from] rusqlite::Error);

impl MailState {
    /// A power cut may lose the last commits: that only rewinds a cursor,
    /// and those letters are taken again with the same envelope ids, which
    /// consumers absorb.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let db = crate::open_local_db(
            path,
            "CREATE TABLE IF NOT EXISTS cursors (
                 mailbox TEXT PRIMARY KEY, uidvalidity INTEGER NOT NULL, last_uid INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS letters (
                 mailbox TEXT NOT NULL, key TEXT NOT NULL, message_id TEXT, thread TEXT NOT NULL,
                 contact TEXT NOT NULL, subject TEXT NOT NULL, title TEXT NOT NULL,
                 interaction TEXT NOT NULL, refs TEXT NOT NULL,
                 PRIMARY KEY (mailbox, key));
             CREATE INDEX IF NOT EXISTS letters_message_id ON letters (message_id);
             CREATE INDEX IF NOT EXISTS letters_subject ON letters (contact, subject);
             CREATE INDEX IF NOT EXISTS letters_interaction ON letters (interaction);",
        )?;
        // Filing the next letters reads while the last ones are committed:
        // a connection of its own, on its own snapshot (WAL).
        let reader = crate::open_local_db(path, "")?;
        // Every letter adds to four indexes at places its keys pick: keep
        // them in memory rather than re-read pages the default 2 MiB
        // cache dropped.
        for conn in [&db, &reader] {
            conn.pragma_update(None, "cache_size", -16 * 1024)?;
        }
        Ok(Self {
            db: Arc::new(Mutex::new(db)),
            reader: Arc::new(Mutex::new(reader)),
        })
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        locked(&self.db)
    }

    fn reader(&self) -> std::sync::MutexGuard<'_, Connection> {
        locked(&self.reader)
    }

    /// The IMAP cursor: (UIDVALIDITY, last UID taken).
    pub fn cursor(&self, mailbox: &str) -> Result<Option<(u32, u32)>, StateError> {
        Ok(self
            .db()
            .query_row(
                "SELECT uidvalidity, last_uid FROM cursors WHERE mailbox = ?1",
                [mailbox],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    /// Whether `key` was taken from `mailbox` before.
    pub fn is_known(&self, mailbox: &str, key: &str) -> Result<bool, StateError> {
        self.read(|r| r.is_known(mailbox, key))
    }

    /// Runs `f` on one read snapshot of the state, holding the file's read
    /// lock once for all its queries (filing a batch of letters asks a few
    /// questions per letter). Reads have their own connection, so they do
    /// not wait for a commit in progress.
    pub fn read<T, E: From<StateError>>(
        &self,
        f: impl FnOnce(&Reader<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut db = self.reader();
        let tx = db.transaction().map_err(StateError::from)?;
        let out = f(&Reader { db: &tx })?;
        tx.commit().map_err(StateError::from)?;
        Ok(out)
    }

    /// The letter an interaction (or the newest letter of a thread) was.
    pub fn letter_for(&self, interaction_or_thread: &str) -> Result<Option<Known>, StateError> {
        let db = self.db();
        let row = |r: &rusqlite::Row<'_>| {
            Ok(Known {
                key: r.get(0)?,
                message_id: r.get(1)?,
                thread: r.get(2)?,
                contact: r.get(3)?,
                subject: r.get(4)?,
                title: r.get(5)?,
                interaction: r.get(6)?,
                references: r.get(7)?,
            })
        };
        let cols = "key, message_id, thread, contact, subject, title, interaction, refs";
        if let Some(k) = db
            .query_row(
                &format!("SELECT {cols} FROM letters WHERE interaction = ?1"),
                [interaction_or_thread],
                row,
            )
            .optional()?
        {
            return Ok(Some(k));
        }
        Ok(db
            .query_row(
                &format!(
                    "SELECT {cols} FROM letters WHERE thread = ?1 AND message_id IS NOT NULL \
                     ORDER BY rowid DESC LIMIT 1"
                ),
                [interaction_or_thread],
                row,
            )
            .optional()?)
    }

    /// Records letters taken (ignoring ones already known) and moves the
    /// cursor, in one transaction.
    pub fn commit<'a>(
        &self,
        mailbox: &str,
        letters: impl IntoIterator<Item = &'a Known>,
        cursor: Option<(u32, u32)>,
    ) -> Result<(), StateError> {
        let mut db = self.db();
        let tx = db.transaction()?;
        {
            let mut ins = tx.prepare_cached(
                "INSERT OR IGNORE INTO letters \
                 (mailbox, key, message_id, thread, contact, subject, title, interaction, refs) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            for k in letters {
                ins.execute(params![
                    mailbox,
                    k.key,
                    k.message_id,
                    k.thread,
                    k.contact,
                    k.subject,
                    k.title,
                    k.interaction,
                    k.references
                ])?;
            }
        }
        if let Some((validity, uid)) = cursor {
            tx.execute(
                "INSERT INTO cursors (mailbox, uidvalidity, last_uid) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (mailbox) DO UPDATE SET uidvalidity = ?2, last_uid = ?3",
                params![mailbox, validity, uid],
            )?;
        }
        tx.commit()?;
        Ok(())
    }
}

/// A connection's lock; a panic elsewhere while it was held leaves SQLite's
/// own state consistent (an open transaction rolls back when dropped).
fn locked(conn: &Mutex<Connection>) -> std::sync::MutexGuard<'_, Connection> {
    conn.lock().unwrap_or_else(|p| p.into_inner())
}

/// Questions asked of one read snapshot (see [`MailState::read`]).
#[derive(Debug)]
pub struct Reader<'a> {
    db: &'a Connection,
}

impl Reader<'_> {
    /// Whether `key` was taken from `mailbox` before.
    pub fn is_known(&self, mailbox: &str, key: &str) -> Result<bool, StateError> {
        let mut q = self
            .db
            .prepare_cached("SELECT 1 FROM letters WHERE mailbox = ?1 AND key = ?2")?;
        Ok(q.query_row([mailbox, key], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// The thread of the first of `ids` (Message-IDs) that is known.
    pub fn thread_of_any(&self, ids: &[String]) -> Result<Option<String>, StateError> {
        if ids.is_empty() {
            return Ok(None);
        }
        let mut q = self
            .db
            .prepare_cached("SELECT thread FROM letters WHERE message_id = ?1 LIMIT 1")?;
        for id in ids {
            if let Some(t) = q.query_row([id], |r| r.get(0)).optional()? {
                return Ok(Some(t));
            }
        }
        Ok(None)
    }

    /// The latest thread with this contact under this thread subject.
    pub fn thread_by_subject(
        &self,
        contact: &str,
        subject: &str,
    ) -> Result<Option<String>, StateError> {
        let mut q = self.db.prepare_cached(
            "SELECT thread FROM letters WHERE contact = ?1 AND subject = ?2 \
             ORDER BY rowid DESC LIMIT 1",
        )?;
        Ok(q.query_row([contact, subject], |r| r.get(0)).optional()?)
    }
}
