//! `[[channels]]`: messengers and lead services, one table per line. Each
//! is one variant of a tagged enum (`type = "telegram"`), so a line's keys
//! are checked against its kind.

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// One messenger bot, community or lead-service account.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ChannelConfig {
    Telegram(TelegramConfig),
    Vk(VkConfig),
    Viber(ViberConfig),
    Jivosite(JivositeConfig),
    Roistat(RoistatConfig),
    Comagic(CallTrackingConfig),
    Uis(CallTrackingConfig),
    Widget(WidgetConfig),
    Team(TeamConfig),
}

impl ChannelConfig {
    /// The line's name: commands address `<type>:<name>`, webhooks arrive
    /// at `/v1/hooks/<name>`.
    pub fn name(&self) -> &str {
        match self {
            Self::Telegram(c) => &c.name,
            Self::Vk(c) => &c.name,
            Self::Viber(c) => &c.name,
            Self::Jivosite(c) => &c.name,
            Self::Roistat(c) => &c.name,
            Self::Comagic(c) | Self::Uis(c) => &c.name,
            Self::Widget(c) => &c.name,
            Self::Team(c) => &c.name,
        }
    }

    /// The manager whose line this is; empty: routing distributes.
    pub fn owner(&self) -> &str {
        match self {
            Self::Telegram(c) => &c.owner,
            Self::Vk(c) => &c.owner,
            Self::Viber(c) => &c.owner,
            Self::Jivosite(c) => &c.owner,
            Self::Roistat(c) => &c.owner,
            Self::Comagic(c) | Self::Uis(c) => &c.owner,
            Self::Widget(c) => &c.owner,
            Self::Team(_) => "",
        }
    }

    /// The feed's channel name (`telegram`, `vk`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Telegram(_) => "telegram",
            Self::Vk(_) => "vk",
            Self::Viber(_) => "viber",
            Self::Jivosite(_) => "jivosite",
            Self::Roistat(_) => "roistat",
            Self::Comagic(_) => "comagic",
            Self::Uis(_) => "uis",
            Self::Widget(_) => "widget",
            Self::Team(_) => "team",
        }
    }
}

/// A secret: inline (`token = "…"`), from a file (`token = { file =
/// "/etc/switchboard/tg.token" }`, trailing newline ignored) or from the
/// environment (`token = { env = "TG_TOKEN" }`). Never shown by `Debug`.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Secret {
    Inline(String),
    File { file: PathBuf },
    Env { env: String },
}

impl Default for Secret {
    fn default() -> Self {
        Self::Inline(String::new())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Inline(_) => f.write_str("Secret(<redacted>)"),
            Self::File { file } => write!(f, "Secret(file {})", file.display()),
            Self::Env { env } => write!(f, "Secret(env {env})"),
        }
    }
}

impl Secret {
    /// The value; `key` names the setting in the error.
    pub fn resolve(&self, key: &str) -> Result<String, ConfigError> {
        let value = match self {
            Self::Inline(v) => v.clone(),
            Self::File { file } => ConfigError::read_secret_file(key, file)?,
            Self::Env { env } => std::env::var(env).map_err(|_| {
                ConfigError::invalid(key, env, "the name of a set environment variable")
            })?,
        };
        if value.trim().is_empty() {
            return Err(ConfigError::invalid(
                key,
                "<redacted>",
                "a non-empty secret (inline, { file = \"…\" } or { env = \"…\" })",
            ));
        }
        Ok(value)
    }
}

/// How a Telegram bot receives updates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TelegramMode {
    /// `getUpdates` long polling: works behind NAT, no public URL needed.
    #[default]
    Polling,
    /// Telegram posts to `/v1/hooks/<name>` (set up with `setWebhook`).
    Webhook,
}

/// A Telegram bot (Bot API).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelegramConfig {
    pub name: String,
    pub owner: String,
    /// The bot's token from @BotFather.
    pub token: Secret,
    pub mode: TelegramMode,
    /// Webhook mode: the public HTTPS address of `/v1/hooks/<name>` given
    /// to `setWebhook` at start; empty: the webhook is set up by hand.
    pub webhook_url: String,
    /// Webhook mode: the `secret_token` every delivery must carry in
    /// `X-Telegram-Bot-Api-Secret-Token`.
    pub webhook_secret: Secret,
    /// The Bot API server (a self-hosted one, or a test double).
    pub api_url: String,
    /// Long-polling timeout of one `getUpdates`.
    #[serde(with = "crate::model::humantime_serde")]
    pub poll_timeout: Duration,
    /// Files larger than this are not downloaded (the Bot API serves at
    /// most 20 MB); the message says so.
    pub max_file_bytes: u64,
}

impl Default for TelegramConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            owner: String::new(),
            token: Secret::default(),
            mode: TelegramMode::Polling,
            webhook_url: String::new(),
            webhook_secret: Secret::default(),
            api_url: "https://api.telegram.org".into(),
            poll_timeout: Duration::from_secs(25),
            max_file_bytes: 20 * 1024 * 1024,
        }
    }
}

/// A VK community (Callback API in, `messages.send` out).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VkConfig {
    pub name: String,
    pub owner: String,
    /// The community's id (`group_id` of every callback).
    pub group_id: u64,
    /// The string VK expects in answer to its `confirmation` request.
    pub confirmation: String,
    /// The Callback API's secret key; callbacks without it get 403.
    pub secret: Secret,
    /// A community access token with the messages permission.
    pub access_token: Secret,
    pub api_url: String,
    pub api_version: String,
}

impl Default for VkConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            owner: String::new(),
            group_id: 0,
            confirmation: String::new(),
            secret: Secret::default(),
            access_token: Secret::default(),
            api_url: "https://api.vk.com".into(),
            api_version: "5.199".into(),
        }
    }
}

/// A Viber bot (REST bot API).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ViberConfig {
    pub name: String,
    pub owner: String,
    /// The bot's token; it also keys the webhooks' HMAC-SHA256 signature.
    pub auth_token: Secret,
    /// The sender name shown with our messages.
    pub sender_name: String,
    pub api_url: String,
}

impl Default for ViberConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            owner: String::new(),
            auth_token: Secret::default(),
            sender_name: "Switchboard".into(),
            api_url: "https://chatapi.viber.com".into(),
        }
    }
}

/// JivoSite's Webhooks API. JivoSite signs nothing, so the webhook address
/// carries a secret: give JivoSite `https://…/v1/hooks/<name>/<token>`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JivositeConfig {
    pub name: String,
    pub owner: String,
    pub token: Secret,
}

/// A Roistat project: its leads arrive at `/v1/hooks/<name>/<token>` (the
/// address given to Roistat's integration), and the outcome of a deal made
/// from one goes back through `project/add-orders` for Roistat's
/// end-to-end analytics.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoistatConfig {
    pub name: String,
    pub owner: String,
    /// The secret part of the webhook address.
    pub token: Secret,
    /// The project's number (`?project=` of every API call).
    pub project: u64,
    /// The API key from the project's settings (`Api-key` header).
    pub api_key: Secret,
    pub api_url: String,
}

impl Default for RoistatConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            owner: String::new(),
            token: Secret::default(),
            project: 0,
            api_key: Secret::default(),
            api_url: "https://cloud.roistat.com/api/v1".into(),
        }
    }
}

/// A CoMagic or UIS account (the same platform): HTTP notifications of
/// calls and requests arrive at `/v1/hooks/<name>/<token>`; deal outcomes
/// go back through the Data API (JSON-RPC 2.0).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallTrackingConfig {
    pub name: String,
    pub owner: String,
    /// The secret part of the notification address.
    pub token: Secret,
    /// A Data API access token (Settings → API keys).
    pub access_token: Secret,
    /// The Data API; empty: `https://dataapi.comagic.ru/v2.0` for CoMagic,
    /// `https://dataapi.uiscom.ru/v2.0` for UIS.
    pub api_url: String,
}

impl CallTrackingConfig {
    /// The Data API address for a line of `kind` (`comagic` or `uis`).
    pub fn api_url(&self, kind: &str) -> String {
        match (self.api_url.as_str(), kind) {
            ("", "uis") => "https://dataapi.uiscom.ru/v2.0".into(),
            ("", _) => "https://dataapi.comagic.ru/v2.0".into(),
            (url, _) => url.to_owned(),
        }
    }
}

/// The site's chat widget: pages load `<gateway>/widget.js` with
/// `data-line="<name>"`, and visitors talk to managers over a WebSocket.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WidgetConfig {
    pub name: String,
    pub owner: String,
    /// Signs visitor ids, so a visitor's conversation opens only in the
    /// browser that holds its token (16+ characters).
    pub secret: Secret,
    /// Pages that may open the chat (`https://shop.example`); empty or
    /// `*`: any.
    pub allowed_origins: Vec<String>,
    /// The chat window's title.
    pub title: String,
    /// Longest message a visitor may send, in characters.
    pub max_message_chars: usize,
}

impl Default for WidgetConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            owner: String::new(),
            secret: Secret::default(),
            allowed_origins: Vec::new(),
            title: "Chat with us".into(),
            max_message_chars: 4000,
        }
    }
}

/// The corporate chat: one room for the company's employees, on the
/// widget's machinery (the same script with `data-line="<name>"`, the same
/// WebSocket). Employees sign in with their phone's extension and password
/// (`[[sip.users]]`); messages stay in the gateway's chat history and are
/// not customer interactions, so they do not go to the feed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TeamConfig {
    pub name: String,
    /// Signs a signed-in employee's session token (16+ characters).
    pub secret: Secret,
    pub title: String,
    /// Longest message, in characters.
    pub max_message_chars: usize,
}

impl Default for TeamConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            secret: Secret::default(),
            title: "Team".into(),
            max_message_chars: 4000,
        }
    }
}

/// The secret of a webhook address (services that sign nothing).
fn check_address_token(key: &str, token: &Secret) -> Result<(), ConfigError> {
    let token = token.resolve(key)?;
    if token.len() < 16
        || !token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
    {
        return Err(ConfigError::invalid(
            key,
            "<redacted>",
            "at least 16 letters, digits, '-' or '_' (it is part of the webhook URL)",
        ));
    }
    Ok(())
}

fn check_name(key: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            key,
            name,
            "1 to 64 letters, digits, '-' or '_'",
        ))
    }
}

fn check_url(key: &str, url: &str) -> Result<(), ConfigError> {
    let ok = (url.starts_with("https://") || url.starts_with("http://"))
        && !url.contains(char::is_whitespace)
        && url.len() > "http://".len();
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(key, url, "an http:// or https:// URL"))
    }
}

pub(crate) fn validate_channels(
    channels: &[ChannelConfig],
    managers: &[&str],
) -> Result<(), ConfigError> {
    let mut names = BTreeSet::new();
    for (i, c) in channels.iter().enumerate() {
        let key = format!("channels[{i}]");
        check_name(&format!("{key}.name"), c.name())?;
        if !names.insert(c.name()) {
            return Err(ConfigError::invalid(
                &format!("{key}.name"),
                c.name(),
                "a name not used by another channel",
            ));
        }
        let owner = c.owner();
        if !owner.is_empty() && !managers.is_empty() && !managers.contains(&owner) {
            return Err(ConfigError::invalid(
                &format!("{key}.owner"),
                owner,
                "the id of one of routing.managers, or empty for routing to distribute",
            ));
        }
        match c {
            ChannelConfig::Telegram(t) => {
                t.token.resolve(&format!("{key}.token"))?;
                check_url(&format!("{key}.api_url"), &t.api_url)?;
                if t.mode == TelegramMode::Webhook {
                    let secret = t.webhook_secret.resolve(&format!("{key}.webhook_secret"))?;
                    // Telegram allows 1-256 of A-Z, a-z, 0-9, '_' and '-'.
                    if secret.len() > 256
                        || !secret
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
                    {
                        return Err(ConfigError::invalid(
                            &format!("{key}.webhook_secret"),
                            "<redacted>",
                            "1 to 256 letters, digits, '-' or '_' (Telegram's rule)",
                        ));
                    }
                    if !t.webhook_url.is_empty() {
                        check_url(&format!("{key}.webhook_url"), &t.webhook_url)?;
                    }
                }
                let timeout = t.poll_timeout;
                if timeout < Duration::from_secs(1) || timeout > Duration::from_secs(50) {
                    return Err(ConfigError::invalid(
                        &format!("{key}.poll_timeout"),
                        humantime::format_duration(timeout).to_string(),
                        "a duration between 1s and 50s",
                    ));
                }
                if t.max_file_bytes == 0 {
                    return Err(ConfigError::invalid(
                        &format!("{key}.max_file_bytes"),
                        t.max_file_bytes,
                        "a size in bytes above 0",
                    ));
                }
            }
            ChannelConfig::Vk(v) => {
                if v.group_id == 0 {
                    return Err(ConfigError::invalid(
                        &format!("{key}.group_id"),
                        v.group_id,
                        "the community's numeric id",
                    ));
                }
                if v.confirmation.trim().is_empty() {
                    return Err(ConfigError::invalid(
                        &format!("{key}.confirmation"),
                        &v.confirmation,
                        "the confirmation string from the community's Callback API settings",
                    ));
                }
                v.secret.resolve(&format!("{key}.secret"))?;
                v.access_token.resolve(&format!("{key}.access_token"))?;
                check_url(&format!("{key}.api_url"), &v.api_url)?;
            }
            ChannelConfig::Viber(v) => {
                v.auth_token.resolve(&format!("{key}.auth_token"))?;
                check_url(&format!("{key}.api_url"), &v.api_url)?;
                if v.sender_name.is_empty() || v.sender_name.chars().count() > 28 {
                    return Err(ConfigError::invalid(
                        &format!("{key}.sender_name"),
                        &v.sender_name,
                        "1 to 28 characters (Viber's limit)",
                    ));
                }
            }
            ChannelConfig::Jivosite(j) => check_address_token(&format!("{key}.token"), &j.token)?,
            ChannelConfig::Roistat(r) => {
                check_address_token(&format!("{key}.token"), &r.token)?;
                if r.project == 0 {
                    return Err(ConfigError::invalid(
                        &format!("{key}.project"),
                        r.project,
                        "the Roistat project's number",
                    ));
                }
                r.api_key.resolve(&format!("{key}.api_key"))?;
                check_url(&format!("{key}.api_url"), &r.api_url)?;
            }
            ChannelConfig::Team(t) => {
                if t.secret.resolve(&format!("{key}.secret"))?.len() < 16 {
                    return Err(ConfigError::invalid(
                        &format!("{key}.secret"),
                        "<redacted>",
                        "a secret of at least 16 characters",
                    ));
                }
                if t.max_message_chars == 0 || t.max_message_chars > 20_000 {
                    return Err(ConfigError::invalid(
                        &format!("{key}.max_message_chars"),
                        t.max_message_chars,
                        "1 to 20000",
                    ));
                }
            }
            ChannelConfig::Widget(w) => {
                if w.secret.resolve(&format!("{key}.secret"))?.len() < 16 {
                    return Err(ConfigError::invalid(
                        &format!("{key}.secret"),
                        "<redacted>",
                        "a secret of at least 16 characters",
                    ));
                }
                for (j, origin) in w.allowed_origins.iter().enumerate() {
                    if origin != "*" {
                        check_url(&format!("{key}.allowed_origins[{j}]"), origin)?;
                    }
                }
                if w.max_message_chars == 0 || w.max_message_chars > 20_000 {
                    return Err(ConfigError::invalid(
                        &format!("{key}.max_message_chars"),
                        w.max_message_chars,
                        "1 to 20000",
                    ));
                }
            }
            ChannelConfig::Comagic(c) | ChannelConfig::Uis(c) => {
                check_address_token(&format!("{key}.token"), &c.token)?;
                c.access_token.resolve(&format!("{key}.access_token"))?;
                if !c.api_url.is_empty() {
                    check_url(&format!("{key}.api_url"), &c.api_url)?;
                }
            }
        }
    }
    Ok(())
}
