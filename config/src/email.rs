//! `[email]`: the mailboxes letters are read from (IMAP or POP3) and replies
//! are sent through (SMTP), and the rules that turn the site's form letters
//! into leads.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ConfigError;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmailConfig {
    pub mailboxes: Vec<Mailbox>,
    /// Attachments larger than this are not stored; the letter says so.
    pub max_attachment_bytes: u64,
    /// Letters larger than this are not downloaded: their headers are, and
    /// the interaction says the letter was too large.
    pub max_letter_bytes: u64,
    /// Rules that turn feedback-form letters into `lead.received`.
    pub forms: Vec<FormRule>,
    /// Letter templates (`<name>.txt`, minijinja; an optional first line
    /// `Subject: …`) the CRM's commands may name.
    pub templates_dir: Option<PathBuf>,
}

impl Default for EmailConfig {
    fn default() -> Self {
        Self {
            mailboxes: Vec::new(),
            max_attachment_bytes: 25 * 1024 * 1024,
            max_letter_bytes: 100 * 1024 * 1024,
            forms: Vec::new(),
            templates_dir: None,
        }
    }
}

/// One mailbox: personal (it has an `owner`) or shared (routing decides).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Mailbox {
    /// The line's name; the CRM's replies name it (`email:<name>`).
    pub name: String,
    /// The address letters are sent from, e.g. "sales@example.com".
    pub address: String,
    /// The manager (`routing.managers[].id`) whose personal mailbox this
    /// is; empty: a shared mailbox whose letters routing distributes.
    pub owner: String,
    pub incoming: Incoming,
    /// Replies go out through this server; without one the mailbox is
    /// read-only.
    pub smtp: Option<Server>,
}

/// Where letters are read from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Incoming {
    pub protocol: MailProtocol,
    #[serde(flatten)]
    pub server: Server,
    /// The IMAP folder to read.
    pub folder: String,
    /// The IMAP folder sent replies are saved to; empty: not saved.
    pub sent_folder: String,
    /// Wait with IMAP IDLE when the server offers it; otherwise (and for
    /// POP3) poll every `poll_interval`.
    pub idle: bool,
    #[serde(with = "crate::model::humantime_serde")]
    pub poll_interval: Duration,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MailProtocol {
    #[default]
    Imap,
    Pop3,
}

/// How the connection to a mail server is protected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Security {
    /// TLS from the first byte (IMAPS 993, POP3S 995, SMTPS 465).
    #[default]
    Tls,
    /// Plain connection upgraded with STARTTLS / STLS (143, 110, 587).
    Starttls,
    /// No encryption: only for servers on loopback or a trusted network.
    None,
}

/// A mail server and the account on it. The password is given inline, in a
/// file or in an environment variable, and is never logged.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    pub host: String,
    /// 0: the protocol's usual port for `security`.
    pub port: u16,
    pub security: Security,
    pub username: String,
    pub password: String,
    /// A file holding the password (trailing newline ignored).
    pub password_file: Option<PathBuf>,
    /// An environment variable holding the password.
    pub password_env: String,
    /// A PEM file of extra trusted certificate authorities (a company CA or
    /// a self-signed server); the system's roots are trusted as well.
    pub ca_file: Option<PathBuf>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("password_file", &self.password_file)
            .field("password_env", &self.password_env)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

impl Server {
    /// The password from wherever the configuration says it is. `key` is
    /// the server's dotted key, for the error.
    pub fn resolve_password(&self, key: &str) -> Result<String, ConfigError> {
        if let Some(path) = &self.password_file {
            return ConfigError::read_secret_file(&format!("{key}.password_file"), path);
        }
        if !self.password_env.is_empty() {
            return std::env::var(&self.password_env).map_err(|_| {
                ConfigError::invalid(
                    &format!("{key}.password_env"),
                    &self.password_env,
                    "the name of a set environment variable",
                )
            });
        }
        Ok(self.password.clone())
    }

    /// `port`, or the usual one for the protocol and security.
    pub fn port_or(&self, tls: u16, plain: u16) -> u16 {
        match (self.port, self.security) {
            (0, Security::Tls) => tls,
            (0, _) => plain,
            (p, _) => p,
        }
    }
}

/// Turns letters from the site's feedback form into leads. A letter matches
/// when its sender is `from` (if set) and its subject contains
/// `subject_contains` (if set); its text is read as `Label: value` lines.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FormRule {
    pub name: String,
    /// The sender address, compared without case.
    pub from: String,
    pub subject_contains: String,
    /// Lead field → the label the form writes before its value. Fields:
    /// name, phone, email, comment, utm_source, utm_medium, utm_campaign,
    /// utm_term, utm_content.
    pub fields: BTreeMap<String, String>,
    /// Campaign source when the letter names none, e.g. "site-form".
    pub source: String,
}

/// The lead fields a form rule may fill.
pub const FORM_FIELDS: &[&str] = &[
    "name",
    "phone",
    "email",
    "comment",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_term",
    "utm_content",
];

impl Default for Incoming {
    fn default() -> Self {
        Self {
            protocol: MailProtocol::Imap,
            server: Server::default(),
            folder: "INBOX".into(),
            sent_folder: "Sent".into(),
            idle: true,
            poll_interval: Duration::from_secs(60),
        }
    }
}

/// `login_optional`: an SMTP relay may accept mail without logging in
/// (empty username and password).
fn validate_server(key: &str, s: &Server, login_optional: bool) -> Result<(), ConfigError> {
    if s.host.is_empty() || s.host.contains(|c: char| c.is_whitespace() || c == '/') {
        return Err(ConfigError::invalid(
            &format!("{key}.host"),
            &s.host,
            "a host name or IP address",
        ));
    }
    let sources = [
        !s.password.is_empty(),
        s.password_file.is_some(),
        !s.password_env.is_empty(),
    ];
    let anonymous = s.username.is_empty() && !sources.contains(&true);
    if login_optional && anonymous {
        return Ok(());
    }
    if s.username.is_empty() {
        return Err(ConfigError::invalid(
            &format!("{key}.username"),
            &s.username,
            "the account's login",
        ));
    }
    if sources.iter().filter(|&&set| set).count() != 1 {
        return Err(ConfigError::invalid(
            &format!("{key}.password"),
            "<redacted>",
            "exactly one of password, password_file and password_env",
        ));
    }
    s.resolve_password(key)?;
    if let Some(ca) = &s.ca_file
        && let Err(e) = std::fs::metadata(ca)
    {
        return Err(ConfigError::SecretFile {
            key: format!("{key}.ca_file"),
            path: ca.clone(),
            reason: e.to_string(),
        });
    }
    Ok(())
}

pub(crate) fn validate_email(e: &EmailConfig, managers: &[&str]) -> Result<(), ConfigError> {
    if e.max_attachment_bytes == 0 {
        return Err(ConfigError::invalid(
            "email.max_attachment_bytes",
            e.max_attachment_bytes,
            "a size in bytes above 0",
        ));
    }
    if e.max_letter_bytes < 64 * 1024 {
        return Err(ConfigError::invalid(
            "email.max_letter_bytes",
            e.max_letter_bytes,
            "a size in bytes of at least 65536",
        ));
    }
    if let Some(dir) = &e.templates_dir
        && !dir.is_dir()
    {
        return Err(ConfigError::invalid(
            "email.templates_dir",
            dir.display(),
            "a readable directory of <name>.txt templates",
        ));
    }
    let mut names = BTreeSet::new();
    for (i, m) in e.mailboxes.iter().enumerate() {
        let key = format!("email.mailboxes[{i}]");
        let name_ok = !m.name.is_empty()
            && m.name.len() <= 64
            && m.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !name_ok {
            return Err(ConfigError::invalid(
                &format!("{key}.name"),
                &m.name,
                "1 to 64 letters, digits, '-', '_' or '.'",
            ));
        }
        if !names.insert(m.name.as_str()) {
            return Err(ConfigError::invalid(
                &format!("{key}.name"),
                &m.name,
                "a name not used by another mailbox",
            ));
        }
        let at = m.address.find('@');
        if at.is_none_or(|at| at == 0 || at + 1 == m.address.len())
            || m.address.contains(char::is_whitespace)
        {
            return Err(ConfigError::invalid(
                &format!("{key}.address"),
                &m.address,
                "an email address such as \"sales@example.com\"",
            ));
        }
        if !m.owner.is_empty() && !managers.is_empty() && !managers.contains(&m.owner.as_str()) {
            return Err(ConfigError::invalid(
                &format!("{key}.owner"),
                &m.owner,
                "the id of one of routing.managers, or empty for a shared mailbox",
            ));
        }
        validate_server(&format!("{key}.incoming"), &m.incoming.server, false)?;
        if m.incoming.protocol == MailProtocol::Imap && m.incoming.folder.is_empty() {
            return Err(ConfigError::invalid(
                &format!("{key}.incoming.folder"),
                &m.incoming.folder,
                "an IMAP folder name such as \"INBOX\"",
            ));
        }
        let poll = m.incoming.poll_interval;
        if poll < Duration::from_secs(1) || poll > Duration::from_secs(3600) {
            return Err(ConfigError::invalid(
                &format!("{key}.incoming.poll_interval"),
                humantime::format_duration(poll).to_string(),
                "a duration between 1s and 1h",
            ));
        }
        if let Some(smtp) = &m.smtp {
            validate_server(&format!("{key}.smtp"), smtp, true)?;
        }
    }
    for (i, f) in e.forms.iter().enumerate() {
        let key = format!("email.forms[{i}]");
        if f.name.is_empty() {
            return Err(ConfigError::invalid(
                &format!("{key}.name"),
                &f.name,
                "a name for the rule",
            ));
        }
        if f.from.is_empty() && f.subject_contains.is_empty() {
            return Err(ConfigError::invalid(
                &format!("{key}.from"),
                &f.from,
                "a sender address, or a subject_contains (a rule needs at least one)",
            ));
        }
        for (field, label) in &f.fields {
            if !FORM_FIELDS.contains(&field.as_str()) {
                return Err(ConfigError::invalid(
                    &format!("{key}.fields.{field}"),
                    label,
                    format!("a field among {}", FORM_FIELDS.join(", ")),
                ));
            }
            if label.trim().is_empty() {
                return Err(ConfigError::invalid(
                    &format!("{key}.fields.{field}"),
                    label,
                    "the label the form writes before the value",
                ));
            }
        }
        if !f.fields.contains_key("phone") && !f.fields.contains_key("email") {
            return Err(ConfigError::invalid(
                &format!("{key}.fields"),
                "",
                "a label for phone or email (a lead needs a way to reach the customer)",
            ));
        }
    }
    Ok(())
}
