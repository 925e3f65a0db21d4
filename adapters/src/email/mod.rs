//! The email channel: every letter that reaches a configured mailbox (IMAP
//! with IDLE, or POP3) becomes one interaction; the CRM's replies go out
//! through the mailbox's SMTP server and come back as `message.sent`.
//!
//! Nothing is lost or repeated: a letter is published to the feed before
//! its cursor moves (IMAP UID / POP3 UIDL, kept in `email.sqlite`), and its
//! interaction id is derived from the mailbox and the letter (Message-ID,
//! or the raw bytes' digest), so a letter taken twice — after a crash
//! between the two steps, or a UIDVALIDITY change — is the same event and
//! the CRM's dedupe absorbs it; a known letter is not even published again.

mod fetch;
mod forms;
mod imap;
pub mod letter;
mod net;
mod pop3;
mod smtp;
mod state;
mod templates;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use foldhash::{HashSet, HashSetExt};
use futures::future::BoxFuture;
use serde_json::Value;
use sha2::{Digest, Sha256};
use switchboard_config::{EmailConfig, MailProtocol, Mailbox};
use switchboard_storage::{
    Appending, Channel, Command, Contact, ContactKey, Interaction, Kind, NewRecord,
};
use time::OffsetDateTime;

pub use crate::blobs::Blobs;
pub use letter::{Auto, Letter};
pub use state::{Known, MailState, Reader, StateError};

use crate::{Adapter, AdapterContext, CommandError};

/// Why a mailbox could not be read or a letter not sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MailError {
    /// The server refused, failed or went away; retrying later may work.
    #[error("{0}")]
    Server(String),
    /// The configuration cannot work (bad CA file, bad host name).
    #[error("{0}")]
    Config(String),
    /// Our own storage failed (state file, feed); retrying may work.
    #[error("{0}")]
    Local(String),
}

impl From<StateError> for MailError {
    fn from(e: StateError) -> Self {
        MailError::Local(e.to_string())
    }
}

/// A letter as a server handed it over.
#[derive(Debug)]
pub(crate) struct Fetched {
    pub raw: Vec<u8>,
    /// The server's arrival time (IMAP INTERNALDATE).
    pub arrived: Option<OffsetDateTime>,
    /// Its size on the server, when only its headers were downloaded
    /// because of `email.max_letter_bytes`.
    pub too_large: Option<u64>,
    /// IMAP UID or POP3 UIDL.
    pub position: String,
    /// What identifies the letter in the mailbox when not its Message-ID
    /// (POP3: `uidl:<UIDL>`).
    pub key: Option<String>,
}

/// A batch of letters, parsed.
#[derive(Debug)]
pub(crate) struct Parsed {
    batch: Vec<Fetched>,
    letters: Vec<Letter>,
}

/// A batch of letters, filed: its records for the feed, and what the state
/// remembers of each.
#[derive(Debug)]
pub(crate) struct Filed {
    records: Vec<NewRecord>,
    pub known: Arc<Vec<Known>>,
}

/// Letters handed to the feed and not yet known to be committed.
#[derive(Debug)]
pub(crate) struct Published {
    /// One per letter published.
    pub known: Arc<Vec<Known>>,
    appending: Option<Appending>,
}

fn feed_error(e: switchboard_storage::FeedError) -> MailError {
    MailError::Local(format!("feed: {e}"))
}

/// Every configured mailbox, its state and its sending side.
#[derive(Debug, Clone)]
pub struct Email {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: EmailConfig,
    passwords: HashMap<String, (String, Option<String>)>,
    state: MailState,
    blobs: Blobs,
    country: phonenumber::country::Id,
    templates: templates::Templates,
}

impl Email {
    /// Opens `<data_dir>/email.sqlite` and reads the mailboxes' passwords;
    /// attachments go to `blobs`. `config` must have passed validation.
    pub fn new(
        config: &EmailConfig,
        data_dir: &Path,
        blobs: Blobs,
        country: phonenumber::country::Id,
    ) -> Result<Self, MailError> {
        std::fs::create_dir_all(data_dir).map_err(|e| MailError::Local(e.to_string()))?;
        let state = MailState::open(&data_dir.join("email.sqlite"))?;
        let mut passwords = HashMap::new();
        for (i, m) in config.mailboxes.iter().enumerate() {
            let key = format!("email.mailboxes[{i}]");
            let incoming = m
                .incoming
                .server
                .resolve_password(&format!("{key}.incoming"))
                .map_err(|e| MailError::Config(e.to_string()))?;
            let smtp = match &m.smtp {
                Some(s) => Some(
                    s.resolve_password(&format!("{key}.smtp"))
                        .map_err(|e| MailError::Config(e.to_string()))?,
                ),
                None => None,
            };
            passwords.insert(m.name.clone(), (incoming, smtp));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                config: config.clone(),
                passwords,
                state,
                blobs,
                country,
                templates: templates::Templates::load(config.templates_dir.as_deref())?,
            }),
        })
    }

    pub fn state(&self) -> &MailState {
        &self.inner.state
    }

    fn mailbox(&self, name: &str) -> Option<&Mailbox> {
        self.inner.config.mailboxes.iter().find(|m| m.name == name)
    }

    fn password(&self, mailbox: &str) -> &str {
        self.inner
            .passwords
            .get(mailbox)
            .map_or("", |(p, _)| p.as_str())
    }

    /// The readiness check name of a mailbox.
    pub fn health_name(mailbox: &str) -> String {
        format!("email:{mailbox}")
    }

    /// Parses fetched letters and stores their attachments durably
    /// (blocking work, on the blocking pool). Independent of any state, so
    /// one batch is parsed while the one before it is published.
    pub(crate) async fn parse(&self, mut batch: Vec<Fetched>) -> Result<Parsed, MailError> {
        let failed =
            |e: tokio::task::JoinError| MailError::Local(format!("letter parsing failed: {e}"));
        // Each letter is independent: a large batch is parsed in two halves
        // on two threads of the blocking pool.
        let half = |part: Vec<Fetched>| {
            let this = self.clone();
            tokio::task::spawn_blocking(move || {
                let letters = this.parse_all(&part);
                (part, letters)
            })
        };
        let rest = if batch.len() >= 16 {
            batch.split_off(batch.len() / 2)
        } else {
            Vec::new()
        };
        let (first, second) = (half(batch), half(rest));
        let (mut batch, mut letters) = first.await.map_err(failed)?;
        let (rest, more) = second.await.map_err(failed)?;
        batch.extend(rest);
        letters.extend(more);
        // Attachments are on disk before their letters are in the feed.
        if letters
            .iter()
            .any(|l| !l.parts.is_empty() || !l.problems.is_empty())
        {
            let blobs = self.inner.blobs.clone();
            tokio::task::spawn_blocking(move || blobs.sync())
                .await
                .map_err(failed)?
                .map_err(|e| MailError::Local(format!("attachments not flushed: {e}")))?;
        }
        Ok(Parsed { batch, letters })
    }

    /// Turns parsed letters into interactions: letters taken before are
    /// skipped, the rest published in one batch; then they are remembered
    /// and the cursor moves. Returns how many were published.
    pub(crate) async fn take(
        &self,
        mailbox: &Mailbox,
        parsed: Parsed,
        cursor: Option<(u32, u32)>,
        ctx: &AdapterContext,
    ) -> Result<usize, MailError> {
        let filed = self.file(mailbox, parsed, Vec::new()).await?;
        self.record(mailbox, filed, cursor, ctx).await
    }

    /// Files parsed letters (on the blocking pool): dedupes them against the
    /// state and `unsaved` — letters filed before whose state may not be
    /// committed yet —, threads them and builds their records.
    pub(crate) async fn file(
        &self,
        mailbox: &Mailbox,
        parsed: Parsed,
        unsaved: Vec<Arc<Vec<Known>>>,
    ) -> Result<Filed, MailError> {
        let this = self.clone();
        let mb = mailbox.clone();
        let (records, known) = tokio::task::spawn_blocking(move || {
            this.inner
                .state
                .read(|state| this.resolve(state, &mb, parsed, &unsaved))
        })
        .await
        .map_err(|e| MailError::Local(format!("letter filing failed: {e}")))??;
        Ok(Filed {
            records,
            known: Arc::new(known),
        })
    }

    /// Publishes filed letters in one batch, then remembers them and moves
    /// the cursor. Returns how many were published.
    pub(crate) async fn record(
        &self,
        mailbox: &Mailbox,
        filed: Filed,
        cursor: Option<(u32, u32)>,
        ctx: &AdapterContext,
    ) -> Result<usize, MailError> {
        let published = self.publish(filed, ctx).await?;
        self.remember(mailbox, vec![published], cursor).await
    }

    /// Hands filed letters to the feed in one batch, without waiting for
    /// the commit: the next batch can follow before this one is durable.
    pub(crate) async fn publish(
        &self,
        filed: Filed,
        ctx: &AdapterContext,
    ) -> Result<Published, MailError> {
        let Filed { records, known } = filed;
        let appending = if records.is_empty() {
            None
        } else {
            Some(ctx.feed.submit_batch(records).await.map_err(feed_error)?)
        };
        Ok(Published { known, appending })
    }

    /// Waits for published batches to be committed to the feed, in order,
    /// then remembers their letters and moves the cursor, in one state
    /// transaction. Returns how many letters were published.
    pub(crate) async fn remember(
        &self,
        mailbox: &Mailbox,
        batches: Vec<Published>,
        cursor: Option<(u32, u32)>,
    ) -> Result<usize, MailError> {
        let mut count = 0;
        let mut groups = Vec::with_capacity(batches.len());
        for b in batches {
            if let Some(appending) = b.appending {
                appending.committed().await.map_err(feed_error)?;
            }
            count += b.known.len();
            groups.push(b.known);
        }
        let state = self.inner.state.clone();
        let name = mailbox.name.clone();
        tokio::task::spawn_blocking(move || {
            state.commit(&name, groups.iter().flat_map(|g| g.iter()), cursor)
        })
        .await
        .map_err(|e| MailError::Local(e.to_string()))??;
        Ok(count)
    }

    /// Dedupes, threads and builds the records of parsed letters (blocking:
    /// the state file).
    fn resolve(
        &self,
        state: &Reader<'_>,
        mailbox: &Mailbox,
        parsed: Parsed,
        unsaved: &[Arc<Vec<Known>>],
    ) -> Result<(Vec<NewRecord>, Vec<Known>), MailError> {
        let metrics = crate::metrics::Email::of(&mailbox.name);
        let mut records = Vec::with_capacity(parsed.letters.len());
        let mut known: Vec<Known> = Vec::with_capacity(parsed.letters.len());
        // Keys filed before and not yet saved, then this batch's own.
        let mut earlier = HashSet::with_capacity(unsaved.iter().map(|g| g.len()).sum());
        earlier.extend(
            unsaved
                .iter()
                .flat_map(|g| g.iter().map(|k| k.key.as_str())),
        );
        let mut taken = HashSet::with_capacity(parsed.letters.len());
        for (f, letter) in parsed.batch.into_iter().zip(parsed.letters) {
            let key = match (&f.key, &letter.message_id) {
                (Some(k), _) => k.clone(),
                (None, Some(id)) => format!("mid:{id}"),
                (None, None) => format!("sha256:{}", letter.raw_sha256.as_deref().unwrap_or("")),
            };
            if earlier.contains(key.as_str())
                || taken.contains(&key)
                || state.is_known(&mailbox.name, &key)?
            {
                metrics.letters("duplicate");
                continue;
            }
            let contact = contact_of(&letter);
            let subject = letter::thread_subject(&letter.subject);
            let thread = self.thread_of(state, &letter, &subject, &contact.key, unsaved, &known)?;
            let id = letter_id(&mailbox.name, &key, f.arrived.or(letter.date));
            let mut ev = match forms::lead(&self.inner.config.forms, &letter, self.inner.country) {
                Some(lead) if letter.auto.is_none() => {
                    metrics.letters("lead");
                    lead.into_interaction(&letter)
                }
                _ => {
                    metrics.letters(match (&letter.auto, letter.problems.is_empty()) {
                        (Some(_), _) => "auto",
                        (None, false) => "problem",
                        (None, true) => "received",
                    });
                    Interaction::new(
                        Kind::MessageReceived,
                        Channel::Email,
                        contact.clone(),
                        f.arrived
                            .or(letter.date)
                            .unwrap_or_else(OffsetDateTime::now_utc),
                        Value::Null,
                    )
                }
            };
            ev.id = id;
            if let Some(at) = f.arrived.or(letter.date) {
                ev.occurred_at = at;
            }
            ev.conversation = Some(thread.clone());
            if !mailbox.owner.is_empty() {
                ev.manager = Some(mailbox.owner.clone());
            }
            let lead = match &ev.payload {
                Value::Object(fields) => Some(fields),
                _ => None,
            };
            let payload = Payload::of(&letter, mailbox, &f, lead);
            records.push(
                NewRecord::interaction_with(&ev, &payload, payload.size_hint())
                    .map_err(|e| MailError::Local(e.to_string()))?,
            );
            let mut references = letter.references.clone();
            references.extend(letter.message_id.clone());
            taken.insert(key.clone());
            known.push(Known {
                key,
                message_id: letter.message_id.clone(),
                thread,
                contact: ev.contact.key.clone(),
                subject,
                title: letter.subject.clone(),
                interaction: ev.id.to_string(),
                references: references.join(" "),
            });
        }
        Ok((records, known))
    }

    /// Parses letters (blocking: attachments are written).
    fn parse_all(&self, batch: &[Fetched]) -> Vec<Letter> {
        batch
            .iter()
            .map(|f| {
                let letter = Letter::parse(
                    &f.raw,
                    &self.inner.blobs,
                    self.inner.config.max_attachment_bytes,
                );
                // A letter that could not be read whole is kept raw.
                if !letter.problems.is_empty()
                    && let Err(e) = self.inner.blobs.put_deferred(&f.raw)
                {
                    tracing::warn!(error = %e, "raw letter not kept");
                }
                letter
            })
            .collect()
    }

    /// The conversation a letter belongs to: the thread of the letter it
    /// answers (In-Reply-To, References), the root of its References, the
    /// latest thread with the same sender under the same subject when the
    /// subject says it is an answer, or a new thread. Letters filed before
    /// and not yet in the state (`unsaved`, then `batch`) count as well.
    /// `subject` is the letter's thread subject.
    fn thread_of(
        &self,
        state: &Reader<'_>,
        letter: &Letter,
        subject: &str,
        contact: &str,
        unsaved: &[Arc<Vec<Known>>],
        batch: &[Known],
    ) -> Result<String, MailError> {
        let filed = || unsaved.iter().flat_map(|g| g.iter()).chain(batch);
        let mut ids: Vec<String> = letter.in_reply_to.clone();
        ids.extend(letter.references.iter().rev().cloned());
        for id in &ids {
            if let Some(k) = filed().find(|k| k.message_id.as_ref() == Some(id)) {
                return Ok(k.thread.clone());
            }
        }
        if let Some(t) = state.thread_of_any(&ids)? {
            return Ok(t);
        }
        let root = letter
            .references
            .first()
            .or(letter.in_reply_to.first())
            .cloned();
        if let Some(root) = root {
            return Ok(thread_id(&root));
        }
        if !subject.is_empty() && letter::is_reply_subject(&letter.subject) {
            if let Some(k) = filed()
                .rev()
                .find(|k| k.contact == contact && k.subject == subject)
            {
                return Ok(k.thread.clone());
            }
            if let Some(t) = state.thread_by_subject(contact, subject)? {
                return Ok(t);
            }
        }
        Ok(thread_id(
            letter
                .message_id
                .as_deref()
                .or(letter.raw_sha256.as_deref())
                .unwrap_or(""),
        ))
    }
}

/// A conversation id safe in a URL path: `mail-` and 24 hex digits of the
/// thread root's digest.
pub fn thread_id(root: &str) -> String {
    let digest = Sha256::digest(root.as_bytes());
    format!("mail-{}", hex::encode(&digest[..12]))
}

/// The envelope id of a letter: the same for every time it is taken.
fn letter_id(mailbox: &str, key: &str, at: Option<OffsetDateTime>) -> uuid::Uuid {
    crate::stable_id(&format!("{mailbox}\n{key}"), at)
}

fn contact_of(letter: &Letter) -> Contact {
    match &letter.from {
        Some((address, name)) => Contact {
            key: ContactKey::email(address).into_string(),
            phone: None,
            email: Some(address.clone()),
            user_id: None,
            name: name.clone(),
        },
        // A letter without a sender still arrives, under one "unknown" key.
        None => Contact {
            key: ContactKey::account(Channel::Email, "unknown-sender").into_string(),
            phone: None,
            email: None,
            user_id: None,
            name: None,
        },
    }
}

/// A received letter's payload, borrowed from the letter: written straight
/// into its feed record (see [`Interaction::write_json_with`]). Empty lists,
/// `false` and zero are left out; a form letter's lead fields are added.
#[derive(serde::Serialize)]
struct Payload<'a> {
    line: &'a str,
    mailbox: &'a str,
    subject: &'a str,
    text: &'a str,
    size: u64,
    position: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message_id: Option<&'a str>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    in_reply_to: &'a [String],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    references: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    from: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reply_to: Option<&'a str>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    to: &'a [String],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    cc: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    date: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    html: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    truncated: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    attachments: Vec<Attachment<'a>>,
    #[serde(skip_serializing_if = "is_zero")]
    more_attachments: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    auto: Option<&'static str>,
    /// With the raw letter's SHA-256 (kept raw), when it could not all be
    /// read.
    #[serde(skip_serializing_if = "Option::is_none")]
    parse_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    raw_sha256: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    too_large: bool,
    /// A form letter's lead: the rule, its fields and the message.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    lead: Option<&'a serde_json::Map<String, Value>>,
}

#[derive(serde::Serialize)]
struct Attachment<'a> {
    name: Option<&'a str>,
    content_type: &'a str,
    size: u64,
    inline: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    sha256: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    not_stored: Option<&'static str>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl<'a> Payload<'a> {
    fn of(
        letter: &'a Letter,
        mailbox: &'a Mailbox,
        f: &'a Fetched,
        lead: Option<&'a serde_json::Map<String, Value>>,
    ) -> Self {
        let kept_raw = !letter.problems.is_empty();
        Payload {
            line: &mailbox.name,
            mailbox: &mailbox.address,
            subject: &letter.subject,
            text: &letter.text,
            size: f.too_large.unwrap_or(letter.raw_size),
            position: &f.position,
            message_id: letter.message_id.as_deref(),
            in_reply_to: &letter.in_reply_to,
            references: &letter.references,
            from: letter.sender(),
            reply_to: letter.reply_to.as_deref(),
            to: &letter.to,
            cc: &letter.cc,
            date: letter.date.and_then(|d| {
                d.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            }),
            html: letter.html.as_deref(),
            truncated: letter.truncated,
            attachments: letter
                .parts
                .iter()
                .map(|p| Attachment {
                    name: p.name.as_deref(),
                    content_type: &p.content_type,
                    size: p.size,
                    inline: p.inline,
                    sha256: p.sha256.as_deref(),
                    content_id: p.content_id.as_deref(),
                    not_stored: p.skipped,
                })
                .collect(),
            more_attachments: letter.more_parts,
            auto: letter.auto.map(Auto::as_str),
            parse_error: kept_raw.then(|| letter.problems.join("; ")),
            // `Letter::parse` hashes every letter it keeps raw.
            raw_sha256: letter.raw_sha256.as_deref().filter(|_| kept_raw),
            too_large: f.too_large.is_some(),
            lead,
        }
    }

    /// About how many bytes the record will take.
    fn size_hint(&self) -> usize {
        1024 + self.subject.len() * 2 + self.text.len() + self.html.map_or(0, str::len)
    }
}

impl Adapter for Email {
    fn lines(&self) -> Vec<String> {
        self.inner
            .config
            .mailboxes
            .iter()
            .map(|m| format!("email:{}", m.name))
            .collect()
    }

    fn run(&self, ctx: AdapterContext) -> BoxFuture<'static, ()> {
        let this = self.clone();
        Box::pin(async move {
            let mut tasks = tokio::task::JoinSet::new();
            for m in this.inner.config.mailboxes.clone() {
                ctx.health
                    .set(&Email::health_name(&m.name), Err("connecting".into()));
                crate::metrics::Email::of(&m.name).up(false);
                let (this, ctx) = (this.clone(), ctx.clone());
                tasks.spawn(async move {
                    match m.incoming.protocol {
                        MailProtocol::Imap => imap::run(this, m, ctx).await,
                        MailProtocol::Pop3 => pop3::run(this, m, ctx).await,
                    }
                });
            }
            while tasks.join_next().await.is_some() {}
        })
    }

    fn execute<'a>(
        &'a self,
        cmd: &'a Command,
        ctx: &'a AdapterContext,
    ) -> BoxFuture<'a, Result<(), CommandError>> {
        Box::pin(smtp::execute(self, cmd, ctx))
    }
}

/// Reports a mailbox's incoming side: connected (or polled) fine, or why
/// not — the connections counter, the up gauge and `/readyz`.
pub(crate) fn report(mailbox: &str, ctx: &AdapterContext, state: Result<(), &MailError>) {
    let m = crate::metrics::Email::of(mailbox);
    m.connected(if state.is_ok() { "ok" } else { "failed" });
    m.up(state.is_ok());
    ctx.health.set(
        &Email::health_name(mailbox),
        state.map_err(ToString::to_string),
    );
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn fetched(uid: u32, raw: &str) -> Fetched {
        Fetched {
            raw: raw.as_bytes().to_vec(),
            arrived: None,
            too_large: None,
            position: uid.to_string(),
            key: None,
        }
    }

    fn conversations(filed: &Filed) -> Vec<String> {
        filed
            .records
            .iter()
            .map(|r| {
                let ev: Interaction = serde_json::from_slice(&r.value).unwrap();
                ev.conversation.unwrap()
            })
            .collect()
    }

    /// The "sales" mailbox's email channel, with its files in `dir`.
    fn sales(dir: &Path) -> (Email, Mailbox) {
        let config = switchboard_config::Config::from_toml_str(
            r#"
[[email.mailboxes]]
name = "sales"
address = "sales@example.com"
[email.mailboxes.incoming]
host = "127.0.0.1"
username = "sales"
password = "secret"
"#,
            std::iter::empty(),
        )
        .unwrap();
        let blobs = Blobs::open(dir.join("attachments")).unwrap();
        let email = Email::new(&config.email, dir, blobs, phonenumber::country::Id::RU).unwrap();
        (email, config.email.mailboxes[0].clone())
    }

    /// A received letter's payload: what it says and carries, with empty
    /// lists, `false` and zero left out.
    #[tokio::test]
    async fn a_letters_payload_carries_what_it_says_and_leaves_out_what_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let (email, mb) = sales(dir.path());
        let raw = "From: =?utf-8?B?0JDQvdC90LA=?= <Anna@Example.ru>\r\n\
                   To: sales@example.com\r\nCc: boss@example.ru\r\n\
                   Subject: Re: Invoice\r\nMessage-ID: <a2@example.ru>\r\n\
                   In-Reply-To: <a1@example.ru>\r\nReferences: <a0@example.ru> <a1@example.ru>\r\n\
                   Date: Wed, 02 Dec 2026 10:00:00 +0300\r\nMIME-Version: 1.0\r\n\
                   Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
                   --b\r\nContent-Type: multipart/alternative; boundary=\"c\"\r\n\r\n\
                   --c\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nPlease \"send\" it.\r\n\
                   --c\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>Please send it.</p>\r\n--c--\r\n\
                   --b\r\nContent-Type: application/pdf; name=\"order.pdf\"\r\n\
                   Content-Disposition: attachment; filename=\"order.pdf\"\r\n\
                   Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b--\r\n";
        let parsed = email.parse(vec![fetched(7, raw)]).await.unwrap();
        let filed = email.file(&mb, parsed, Vec::new()).await.unwrap();
        let ev: Interaction = serde_json::from_slice(&filed.records[0].value).unwrap();
        let mut payload = ev.payload;
        let sha = payload["attachments"][0]["sha256"].take();
        assert_eq!(sha.as_str().map(str::len), Some(64), "{sha}");
        assert_eq!(
            payload,
            serde_json::json!({
                "line": "sales",
                "mailbox": "sales@example.com",
                "subject": "Re: Invoice",
                "text": "Please \"send\" it.",
                "html": "<p>Please send it.</p>",
                "size": raw.len(),
                "position": "7",
                "message_id": "a2@example.ru",
                "in_reply_to": ["a1@example.ru"],
                "references": ["a0@example.ru", "a1@example.ru"],
                "from": "anna@example.ru",
                "to": ["sales@example.com"],
                "cc": ["boss@example.ru"],
                "date": "2026-12-02T07:00:00Z",
                "attachments": [{
                    "name": "order.pdf",
                    "content_type": "application/pdf",
                    "size": 9,
                    "inline": false,
                    "sha256": null,
                }],
            })
        );

        // Only its headers taken, for its size: the size is the server's.
        let mut big = fetched(8, "From: a@example.ru\r\nSubject: Scan\r\n\r\n");
        big.too_large = Some(60_000_000);
        let parsed = email.parse(vec![big]).await.unwrap();
        let filed = email.file(&mb, parsed, Vec::new()).await.unwrap();
        let ev: Interaction = serde_json::from_slice(&filed.records[0].value).unwrap();
        assert_eq!(ev.payload["size"], 60_000_000);
        assert_eq!(ev.payload["too_large"], true);
        for absent in [
            "message_id",
            "references",
            "cc",
            "html",
            "attachments",
            "truncated",
        ] {
            assert!(ev.payload.get(absent).is_none(), "{absent}: {}", ev.payload);
        }
    }

    /// While one group is still being published, the next is filed against
    /// it as well as against the state: a letter in both is published once,
    /// and an answer (by its subject) joins its thread.
    #[tokio::test]
    async fn letters_filed_but_not_yet_saved_count_for_dedupe_and_threads() {
        let dir = tempfile::tempdir().unwrap();
        let (email, mb) = sales(dir.path());
        let mb = &mb;
        let question = "From: client@example.ru\r\nMessage-ID: <q1@example.ru>\r\n\
                        Subject: Price\r\n\r\nHow much?";
        // Threaded by its subject alone: no In-Reply-To to derive it from.
        let answer = "From: client@example.ru\r\nMessage-ID: <q2@example.ru>\r\n\
                      Subject: Re: Price\r\n\r\nAnd delivery?";

        let parsed = email.parse(vec![fetched(1, question)]).await.unwrap();
        let first = email.file(mb, parsed, Vec::new()).await.unwrap();
        assert_eq!(first.records.len(), 1);
        // Not recorded yet: the state knows nothing of the first group.
        let parsed = email
            .parse(vec![fetched(1, question), fetched(2, answer)])
            .await
            .unwrap();
        let second = email
            .file(mb, parsed, vec![Arc::clone(&first.known)])
            .await
            .unwrap();
        assert_eq!(second.records.len(), 1, "the question is published once");
        assert_eq!(conversations(&second), conversations(&first));

        // Without the unsaved group the question would be published again.
        let parsed = email.parse(vec![fetched(1, question)]).await.unwrap();
        let again = email.file(mb, parsed, Vec::new()).await.unwrap();
        assert_eq!(again.records.len(), 1);
    }
}
