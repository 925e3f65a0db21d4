//! The site's chat widget: visitors talk to managers from the company's
//! pages. The gateway carries the WebSocket; this is what it talks to.
//!
//! - A visitor is a random id the gateway mints, with a token (an
//!   HMAC-SHA256 of line and id under the line's `secret`) the page keeps
//!   in `localStorage`: the next page load presents both and reopens the
//!   same conversation, and nobody can open another visitor's by guessing
//!   its id.
//! - What a visitor writes is stored in the [`crate::inbox`] under the
//!   page's own message id before it is acknowledged, so a resend after a
//!   reconnect is one message; it becomes `message.received` in the
//!   conversation `widget:<line>:<visitor>`, with the page and the UTM tags
//!   of the page the chat was opened on.
//! - A manager's reply (a `message.send` command) is appended to the
//!   conversation's history in `data/chat.sqlite` and pushed to every open
//!   tab of that visitor; a visitor who is away sees it on their next page
//!   load.
//! - A `team` line is the corporate chat on the same machinery: one room
//!   for every employee, who signs in with their phone's extension and
//!   password and then holds a session token like a visitor's. Its
//!   messages live in the chat history only: they are not customer
//!   interactions, so they do not go to the feed.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use hmac::{Hmac, Mac};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::Sha256;
use switchboard_config::{ChannelConfig, ConfigError};
use switchboard_storage::{Campaign, Channel, Command, Interaction, Kind};
use time::OffsetDateTime;
use tokio::sync::mpsc;

use super::Line;
use crate::inbox::{Delivery, Inbox};
use crate::metrics::MESSAGES;
use crate::{Adapter, AdapterContext, CommandError};

/// History shown when a page opens the chat.
const HISTORY: usize = 200;

/// Everyone in a team line's room shares this conversation.
const ROOM: &str = "room";

/// One message of a conversation, as the page shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    /// Order within the node's chat history.
    pub seq: i64,
    /// `visitor` or `manager` on the site's chat; on a team line the
    /// employee's extension.
    pub from: String,
    pub text: String,
    /// RFC 3339.
    pub at: String,
    /// The page's own id of a visitor's message (to match its ack).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

/// Why a visitor's message was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChatError {
    #[error("{0}")]
    Invalid(String),
    /// A team line's page did not sign in (or its session is not valid).
    #[error("sign in with your extension and password")]
    SignIn,
    #[error("cannot store the message now: {0}")]
    Unavailable(String),
}

/// An employee of a team line: their extension and its password.
#[derive(Debug, Clone)]
pub struct Member {
    pub extension: String,
    pub password: String,
}

/// A chat line's settings: the site's widget, or the corporate chat.
#[derive(Debug, Clone)]
pub struct WidgetLine {
    line: Line,
    secret: Vec<u8>,
    /// The corporate chat's employees; `None` on a site widget line.
    members: Option<Arc<HashMap<String, Member>>>,
    /// Origins allowed to open the chat; empty: any.
    pub allowed_origins: Vec<String>,
    pub title: String,
    pub max_message_chars: usize,
}

impl WidgetLine {
    /// Whether a page at `origin` may open this line's chat.
    pub fn allows(&self, origin: Option<&str>) -> bool {
        self.allowed_origins.is_empty()
            || self.allowed_origins.iter().any(|o| o == "*")
            || origin.is_some_and(|origin| {
                self.allowed_origins
                    .iter()
                    .any(|o| o.trim_end_matches('/').eq_ignore_ascii_case(origin))
            })
    }

    /// The corporate chat rather than the site's.
    pub fn is_team(&self) -> bool {
        self.members.is_some()
    }

    fn token(&self, visitor: &str) -> String {
        #[allow(clippy::expect_used)]
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC takes any key");
        mac.update(self.line.name.as_bytes());
        mac.update(b"\n");
        mac.update(visitor.as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..16])
    }
}

type Tabs = HashMap<(String, String), Vec<mpsc::UnboundedSender<ChatMessage>>>;

#[derive(Debug)]
struct Inner {
    lines: HashMap<String, WidgetLine>,
    history: Mutex<Connection>,
    tabs: Mutex<Tabs>,
    inbox: Inbox,
}

/// Every widget line of this gateway, their open tabs and history.
#[derive(Debug, Clone)]
pub struct Chat(Arc<Inner>);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn storage(e: impl std::fmt::Display) -> ChatError {
    ChatError::Unavailable(e.to_string())
}

impl Chat {
    /// The widget and team lines of `configs` (`members`: who may sign in
    /// to a team line); `None` when there are none.
    pub fn new(
        configs: &[ChannelConfig],
        members: Vec<Member>,
        data_dir: &Path,
        inbox: Inbox,
    ) -> Result<Option<Self>, ConfigError> {
        let mut lines = HashMap::new();
        let members = Arc::new(
            members
                .into_iter()
                .map(|m| (m.extension.clone(), m))
                .collect::<HashMap<_, _>>(),
        );
        for (i, c) in configs.iter().enumerate() {
            let key = format!("channels[{i}]");
            let line = match c {
                ChannelConfig::Widget(w) => WidgetLine {
                    line: Line::new(&w.name, Channel::Widget, &w.owner),
                    secret: w.secret.resolve(&format!("{key}.secret"))?.into_bytes(),
                    members: None,
                    allowed_origins: w.allowed_origins.clone(),
                    title: w.title.clone(),
                    max_message_chars: w.max_message_chars,
                },
                ChannelConfig::Team(t) => WidgetLine {
                    line: Line::new(&t.name, Channel::Chat, ""),
                    secret: t.secret.resolve(&format!("{key}.secret"))?.into_bytes(),
                    members: Some(Arc::clone(&members)),
                    allowed_origins: Vec::new(),
                    title: t.title.clone(),
                    max_message_chars: t.max_message_chars,
                },
                _ => continue,
            };
            lines.insert(line.line.name.clone(), line);
        }
        if lines.is_empty() {
            return Ok(None);
        }
        let path = data_dir.join("chat.sqlite");
        let unusable = |e: &dyn std::fmt::Display| {
            ConfigError::invalid(
                "node.data_dir",
                path.display(),
                format!("a place for the chat history ({e})"),
            )
        };
        std::fs::create_dir_all(data_dir).map_err(|e| unusable(&e))?;
        // A power cut may lose the history's last commits: a visitor's
        // messages are in the inbox (and the feed) as well, managers'
        // replies are in the feed's commands; only the corporate room's
        // last lines exist here alone.
        let db = crate::open_local_db(
            &path,
            "CREATE TABLE IF NOT EXISTS messages (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 line TEXT NOT NULL,
                 visitor TEXT NOT NULL,
                 author TEXT NOT NULL,
                 text TEXT NOT NULL,
                 at INTEGER NOT NULL,
                 key TEXT NOT NULL UNIQUE,
                 client_id TEXT
             );
             CREATE INDEX IF NOT EXISTS messages_by_visitor ON messages (line, visitor, seq);",
        )
        .map_err(|e| unusable(&e))?;
        Ok(Some(Self(Arc::new(Inner {
            lines,
            history: Mutex::new(db),
            tabs: Mutex::new(HashMap::new()),
            inbox,
        }))))
    }

    /// A line by name.
    pub fn line(&self, name: &str) -> Option<&WidgetLine> {
        self.0.lines.get(name)
    }

    /// Who a page is, from its hello (`visitor` and `token` as the last
    /// welcome gave them; on a team line `user` and `password` to sign
    /// in): the id and its token. A site visitor without a valid token is
    /// a new visitor; on a team line it is [`ChatError::SignIn`].
    pub fn identify(
        &self,
        line: &WidgetLine,
        hello: &Value,
    ) -> Result<(String, String), ChatError> {
        let presented = hello["visitor"].as_str().zip(hello["token"].as_str());
        let signed =
            |(v, t): (&str, &str)| crate::same_secret(t.as_bytes(), line.token(v).as_bytes());
        let Some(members) = &line.members else {
            if let Some((v, t)) = presented
                && v.len() == 32
                && v.bytes().all(|b| b.is_ascii_hexdigit())
                && signed((v, t))
            {
                return Ok((v.to_owned(), t.to_owned()));
            }
            let v = uuid::Uuid::new_v4().simple().to_string();
            let t = line.token(&v);
            return Ok((v, t));
        };
        if let Some((v, t)) = presented
            && members.contains_key(v)
            && signed((v, t))
        {
            return Ok((v.to_owned(), t.to_owned()));
        }
        let user = hello["user"].as_str().unwrap_or("");
        let password = hello["password"].as_str().unwrap_or("");
        // The same work whether or not the extension exists.
        let expected = members
            .get(user)
            .map_or("\u{0}no such member", |m| m.password.as_str());
        if crate::same_secret(password.as_bytes(), expected.as_bytes())
            && members.contains_key(user)
        {
            return Ok((user.to_owned(), line.token(user)));
        }
        Err(ChatError::SignIn)
    }

    /// The conversation a page's tabs share: the visitor's own, or the
    /// team line's room.
    fn conversation_of<'a>(line: &WidgetLine, who: &'a str) -> &'a str {
        if line.members.is_some() { ROOM } else { who }
    }

    /// The conversation so far (the latest [`HISTORY`] messages) and a
    /// receiver of what is said from now on, in every tab of the visitor.
    pub async fn open(
        &self,
        line: &WidgetLine,
        visitor: &str,
    ) -> Result<(Vec<ChatMessage>, mpsc::UnboundedReceiver<ChatMessage>), ChatError> {
        let visitor = Self::conversation_of(line, visitor);
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.0.tabs)
            .entry((line.line.name.clone(), visitor.to_owned()))
            .or_default()
            .push(tx);
        let inner = Arc::clone(&self.0);
        let (name, visitor) = (line.line.name.clone(), visitor.to_owned());
        let history = tokio::task::spawn_blocking(move || {
            let db = lock(&inner.history);
            let mut stmt = db
                .prepare_cached(
                    "SELECT seq, author, text, at, client_id FROM messages WHERE line = ?1 AND visitor = ?2 \
                     ORDER BY seq DESC LIMIT ?3",
                )
                .map_err(storage)?;
            let rows = stmt
                .query_map(params![name, visitor, HISTORY as i64], |r| {
                    Ok(ChatMessage {
                        seq: r.get(0)?,
                        from: r.get(1)?,
                        text: r.get(2)?,
                        at: rfc3339(
                            OffsetDateTime::from_unix_timestamp_nanos(i128::from(r.get::<_, i64>(3)?) * 1_000_000)
                                .unwrap_or(OffsetDateTime::UNIX_EPOCH),
                        ),
                        client_id: r.get(4)?,
                    })
                })
                .map_err(storage)?;
            let mut list = rows.collect::<Result<Vec<_>, _>>().map_err(storage)?;
            list.reverse();
            Ok(list)
        })
        .await
        .map_err(storage)??;
        Ok((history, rx))
    }

    /// A tab of `visitor` closed: forgets the tabs of theirs that are
    /// gone, so a visitor who leaves holds no memory.
    pub fn closed(&self, line: &WidgetLine, visitor: &str) {
        let key = (
            line.line.name.clone(),
            Self::conversation_of(line, visitor).to_owned(),
        );
        let mut tabs = lock(&self.0.tabs);
        if let Some(list) = tabs.get_mut(&key) {
            list.retain(|tx| !tx.is_closed());
            if list.is_empty() {
                tabs.remove(&key);
            }
        }
    }

    /// Tabs open now, over every line (for tests and metrics).
    pub fn open_tabs(&self) -> usize {
        lock(&self.0.tabs).values().map(Vec::len).sum()
    }

    /// Appends to a conversation's history (once per `key`) and shows it
    /// in the visitor's open tabs; the stored message, and how many tabs
    /// it reached.
    async fn append(
        &self,
        line: &str,
        visitor: &str,
        from: &str,
        text: &str,
        key: String,
        client_id: Option<String>,
    ) -> Result<(ChatMessage, usize), ChatError> {
        let inner = Arc::clone(&self.0);
        let (l, v, t) = (line.to_owned(), visitor.to_owned(), text.to_owned());
        let author = from.to_owned();
        let now = OffsetDateTime::now_utc();
        let at_ms = (now.unix_timestamp_nanos() / 1_000_000) as i64;
        let client = client_id.clone();
        let (seq, new) = tokio::task::spawn_blocking(move || {
            let db = lock(&inner.history);
            let inserted = db
                .execute(
                    "INSERT OR IGNORE INTO messages (line, visitor, author, text, at, key, client_id) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![l, v, author, t, at_ms, key, client],
                )
                .map_err(storage)?;
            let seq: Option<i64> = db
                .query_row("SELECT seq FROM messages WHERE key = ?1", params![key], |r| r.get(0))
                .optional()
                .map_err(storage)?;
            Ok::<_, ChatError>((seq.unwrap_or(0), inserted == 1))
        })
        .await
        .map_err(storage)??;
        let msg = ChatMessage {
            seq,
            from: from.to_owned(),
            text: text.to_owned(),
            at: rfc3339(now),
            client_id,
        };
        let mut reached = 0;
        if new {
            let mut tabs = lock(&self.0.tabs);
            if let Some(list) = tabs.get_mut(&(line.to_owned(), visitor.to_owned())) {
                list.retain(|tx| tx.send(msg.clone()).is_ok());
                reached = list.len();
                if list.is_empty() {
                    tabs.remove(&(line.to_owned(), visitor.to_owned()));
                }
            }
        }
        Ok((msg, reached))
    }

    /// A visitor wrote `text` (the page's id for it: `client_id`) on the
    /// page `context` describes. Stored before this returns; a resend of
    /// the same `client_id` is the same message.
    pub async fn visitor_said(
        &self,
        line: &WidgetLine,
        visitor: &str,
        client_id: &str,
        text: &str,
        context: &Value,
    ) -> Result<ChatMessage, ChatError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(ChatError::Invalid("an empty message".into()));
        }
        if text.chars().count() > line.max_message_chars {
            return Err(ChatError::Invalid(format!(
                "longer than {} characters",
                line.max_message_chars
            )));
        }
        if client_id.is_empty() || client_id.len() > 64 {
            return Err(ChatError::Invalid(
                "a message id of 1 to 64 characters".into(),
            ));
        }
        if line.members.is_some() {
            // The corporate chat: the room's history is the record.
            let (msg, _) = self
                .append(
                    &line.line.name,
                    ROOM,
                    visitor,
                    text,
                    format!("t:{visitor}:{client_id}"),
                    Some(client_id.to_owned()),
                )
                .await?;
            MESSAGES.with_label_values(&["team", "stored"]).inc();
            return Ok(msg);
        }
        let body = json!({"visitor": visitor, "text": text, "context": context,
            "at": rfc3339(OffsetDateTime::now_utc())});
        let delivery = format!("{visitor}:{client_id}");
        let new = self
            .0
            .inbox
            .store(
                &line.line.target(),
                &delivery,
                body.to_string().into_bytes(),
            )
            .await
            .map_err(storage)?;
        if new {
            MESSAGES.with_label_values(&["widget", "stored"]).inc();
        }
        let (msg, _) = self
            .append(
                &line.line.name,
                visitor,
                "visitor",
                text,
                format!("v:{delivery}"),
                Some(client_id.to_owned()),
            )
            .await?;
        Ok(msg)
    }

    /// The adapter carrying out managers' replies on every widget line.
    pub fn adapter(&self) -> Arc<dyn Adapter> {
        Arc::new(self.clone())
    }

    fn line_of(&self, target: &str) -> Option<&WidgetLine> {
        target
            .strip_prefix("widget:")
            .and_then(|name| self.0.lines.get(name))
            .filter(|l| l.members.is_none())
    }
}

/// `utm_*` of a page address.
fn campaign_of(page: &str) -> Option<Campaign> {
    let query = page.split_once('?')?.1.split('#').next().unwrap_or("");
    let tags: HashMap<String, String> = serde_urlencoded::from_str(query).ok()?;
    Campaign::from_utm(|k| {
        tags.get(&format!("utm_{k}"))
            .filter(|v| !v.is_empty())
            .map(|v| v.chars().take(200).collect())
    })
    .known()
}

impl Adapter for Chat {
    fn lines(&self) -> Vec<String> {
        self.0
            .lines
            .values()
            .filter(|l| l.members.is_none())
            .map(|l| l.line.target())
            .collect()
    }

    fn run(&self, ctx: AdapterContext) -> BoxFuture<'static, ()> {
        for l in self.0.lines.values() {
            ctx.health.set(&l.line.target(), Ok(()));
        }
        Box::pin(async {})
    }

    fn execute<'a>(
        &'a self,
        cmd: &'a Command,
        ctx: &'a AdapterContext,
    ) -> BoxFuture<'a, Result<(), CommandError>> {
        Box::pin(async move {
            let line = self
                .line_of(&cmd.target)
                .ok_or_else(|| CommandError::Rejected(format!("no widget line {}", cmd.target)))?;
            let text = super::command_text(cmd)?;
            let visitor = line.line.peer_of(cmd)?;
            line.line
                .deliver(cmd, ctx, async {
                    let (msg, tabs) = self
                        .append(
                            &line.line.name,
                            visitor,
                            "manager",
                            text,
                            format!("m:{}", cmd.id),
                            None,
                        )
                        .await
                        .map_err(|e| CommandError::Retry(e.to_string()))?;
                    Ok(json!({"seq": msg.seq, "open_tabs": tabs}))
                })
                .await
        })
    }

    fn process<'a>(
        &'a self,
        d: &'a Delivery,
        _ctx: &'a AdapterContext,
    ) -> BoxFuture<'a, Result<Vec<Interaction>, CommandError>> {
        Box::pin(async move {
            let line = self
                .line_of(&d.line)
                .ok_or_else(|| CommandError::Rejected(format!("no widget line {}", d.line)))?;
            let v = super::stored_json(d)?;
            let visitor = v["visitor"].as_str().ok_or_else(|| {
                CommandError::Rejected("a chat message without its visitor".into())
            })?;
            let context = &v["context"];
            let page = context["page"].as_str().unwrap_or("");
            let payload = json!({
                "text": v["text"],
                "page": {"url": context["page"], "title": context["title"]},
                "referrer": context["referrer"],
            });
            let at = super::unix_millis(Some(d.received_at));
            let contact = line.line.account(visitor, None);
            let mut ev = line
                .line
                .event(Kind::MessageReceived, d, visitor, contact, at, payload);
            let landing = context["landing"].as_str().unwrap_or(page);
            ev.campaign = campaign_of(landing).or_else(|| campaign_of(page));
            MESSAGES.with_label_values(&["widget", "received"]).inc();
            Ok(vec![ev])
        })
    }
}
