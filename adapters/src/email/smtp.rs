//! Carrying out the CRM's `message.send` on an email line: the letter is
//! written (threaded under the letter it answers, with attachments from the
//! shared store), sent through the mailbox's SMTP server with `lettre`,
//! remembered, published as `message.sent`, and saved to the IMAP Sent
//! folder.
//!
//! A command is sent at most once: its Message-ID is remembered right after
//! the server accepted it, so a replay publishes the same `message.sent`
//! (same envelope id) without sending again. Only a crash between the
//! server's acceptance and that write can send twice.

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::{Attachment, Mailbox as Address, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde_json::{Value, json};
use switchboard_config::{MailProtocol, Mailbox, Security, Server};
use switchboard_storage::{Channel, Command, CommandKind, Interaction, Kind};

use super::letter::{is_reply_subject, thread_subject};
use super::{Email, Known, MailError, thread_id};
use crate::{AdapterContext, CommandError, metrics};

/// Attachments of one letter, in all.
const MAX_ATTACHMENTS_BYTES: u64 = 25 * 1024 * 1024;

pub(crate) async fn execute(
    email: &Email,
    cmd: &Command,
    ctx: &AdapterContext,
) -> Result<(), CommandError> {
    let name = cmd.target.strip_prefix("email:").unwrap_or_default();
    let mb = email
        .mailbox(name)
        .ok_or_else(|| CommandError::Rejected(format!("no mailbox named {name:?}")))?;
    let m = metrics::Email::of(&mb.name);
    let result = send(email, mb, cmd, ctx).await;
    match &result {
        Ok(()) => m.sent("sent"),
        Err(CommandError::Retry(_)) => m.sent("failed"),
        Err(CommandError::Rejected(_)) => m.sent("rejected"),
    }
    result
}

async fn send(
    email: &Email,
    mb: &Mailbox,
    cmd: &Command,
    ctx: &AdapterContext,
) -> Result<(), CommandError> {
    if cmd.kind != CommandKind::MessageSend {
        return Err(CommandError::Rejected(format!(
            "email lines only send messages, not {:?}",
            cmd.kind
        )));
    }
    let Some(smtp) = &mb.smtp else {
        return Err(CommandError::Rejected(format!(
            "mailbox {} has no smtp server configured",
            mb.name
        )));
    };
    let to = cmd
        .contact
        .email
        .clone()
        .or_else(|| cmd.contact.key.strip_prefix("email:").map(str::to_owned))
        .filter(|a| a.contains('@'))
        .ok_or_else(|| CommandError::Rejected("the contact has no email address".into()))?;
    let (mut text, template_subject) = match cmd.payload.get("template").and_then(Value::as_str) {
        Some(name) => {
            let contact = serde_json::to_value(&cmd.contact).unwrap_or_default();
            let r = email
                .inner
                .templates
                .render(
                    name,
                    cmd.payload.get("data").unwrap_or(&Value::Null),
                    &contact,
                    &mb.address,
                )
                .map_err(CommandError::Rejected)?;
            (r.text, r.subject)
        }
        None => (String::new(), None),
    };
    // Text the manager wrote comes before the template's.
    if let Some(own) = cmd
        .payload
        .get("text")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    {
        text = if text.is_empty() {
            own.to_owned()
        } else {
            format!("{own}\n\n{text}")
        };
    }
    if text.trim().is_empty() {
        return Err(CommandError::Rejected("the letter has no text".into()));
    }
    let state = email.state().clone();
    let answered = [
        cmd.payload.get("reply_to").and_then(Value::as_str),
        cmd.conversation.as_deref(),
    ]
    .into_iter()
    .flatten()
    .find_map(|id| state.letter_for(id).ok().flatten());
    let subject = match (
        &answered,
        cmd.payload
            .get("subject")
            .and_then(Value::as_str)
            .or(template_subject.as_deref()),
    ) {
        (_, Some(s)) if !s.trim().is_empty() => s.trim().to_owned(),
        (Some(k), _) if is_reply_subject(&k.title) => k.title.clone(),
        (Some(k), _) => format!("Re: {}", k.title),
        (None, _) => format!("Message from {}", mb.address),
    };
    let (in_reply_to, references) = match &answered {
        Some(k) => (k.message_id.clone(), k.references.clone()),
        None => (None, String::new()),
    };
    let domain = mb.address.rsplit('@').next().unwrap_or("localhost");
    // The inbox's ledger of commands carried out keeps the Message-ID.
    let (message_id, already_sent) = match ctx.inbox.was_done(&cmd.id.to_string()).await {
        Ok(Some(mid)) => (mid, true),
        Ok(None) => (format!("{}@{domain}", cmd.id.simple()), false),
        Err(e) => return Err(CommandError::Retry(e.to_string())),
    };

    let attachments = attachments_of(email, cmd)?;
    let from: Address = mb
        .address
        .parse()
        .map_err(|e| CommandError::Rejected(format!("mailbox address {}: {e}", mb.address)))?;
    let rcpt: Address = to
        .parse()
        .map_err(|e| CommandError::Rejected(format!("contact address {to}: {e}")))?;
    let mut builder = Message::builder()
        .from(from)
        .to(rcpt)
        .subject(subject.clone())
        .message_id(Some(format!("<{message_id}>")))
        .date(std::time::SystemTime::from(cmd.issued_at));
    if let Some(parent) = &in_reply_to {
        builder = builder.in_reply_to(format!("<{parent}>")).references(
            references
                .split_whitespace()
                .map(|r| format!("<{r}>"))
                .collect::<Vec<_>>()
                .join(" "),
        );
    }
    let body = SinglePart::plain(text.clone());
    let letter = if attachments.is_empty() {
        builder.singlepart(body)
    } else {
        let mut parts = MultiPart::mixed().singlepart(body);
        for (name, ct, bytes) in &attachments {
            let ct = ContentType::parse(ct)
                .map_err(|e| CommandError::Rejected(format!("attachment type {ct}: {e}")))?;
            parts = parts.singlepart(Attachment::new(name.clone()).body(bytes.clone(), ct));
        }
        builder.multipart(parts)
    }
    .map_err(|e| CommandError::Rejected(format!("cannot write the letter: {e}")))?;
    let raw = letter.formatted();

    if !already_sent {
        let password = email
            .inner
            .passwords
            .get(&mb.name)
            .and_then(|(_, s)| s.clone())
            .unwrap_or_default();
        let transport = transport(smtp, password)?;
        transport
            .send_raw(letter.envelope(), &raw)
            .await
            .map_err(|e| {
                if e.is_permanent() {
                    CommandError::Rejected(format!("the smtp server refused the letter: {e}"))
                } else {
                    CommandError::Retry(format!("smtp: {e}"))
                }
            })?;
        ctx.inbox
            .command_done(&cmd.id.to_string(), &message_id)
            .await
            .map_err(|e| CommandError::Retry(e.to_string()))?;
        tracing::info!(mailbox = %mb.name, command = %cmd.id, "letter sent");
    }

    let thread = answered
        .as_ref()
        .map(|k| k.thread.clone())
        .or_else(|| cmd.conversation.clone())
        .unwrap_or_else(|| thread_id(&message_id));
    let mut refs: Vec<String> = references.split_whitespace().map(str::to_owned).collect();
    refs.push(message_id.clone());
    let mut ev = Interaction::new(
        Kind::MessageSent,
        Channel::Email,
        cmd.contact.clone(),
        cmd.issued_at,
        json!({
            "line": mb.name,
            "mailbox": mb.address,
            "message_id": message_id,
            "subject": subject,
            "text": text,
            "to": [to],
            "command": cmd.id.to_string(),
        }),
    );
    ev.id = sent_id(cmd);
    ev.manager = cmd.manager.clone();
    ev.conversation = Some(thread.clone());
    if let Some(parent) = &in_reply_to {
        ev.payload["in_reply_to"] = json!([parent]);
    }
    if !attachments.is_empty() {
        ev.payload["attachments"] = json!(
            attachments
                .iter()
                .map(|(n, ct, b)| json!({"name": n, "content_type": ct, "size": b.len()}))
                .collect::<Vec<_>>()
        );
    }
    state
        .commit(
            &mb.name,
            &[Known {
                key: format!("mid:{message_id}"),
                message_id: Some(message_id.clone()),
                thread,
                contact: cmd.contact.key.clone(),
                subject: thread_subject(&subject),
                title: subject,
                interaction: ev.id.to_string(),
                references: refs.join(" "),
            }],
            None,
        )
        .map_err(|e| CommandError::Retry(e.to_string()))?;
    ctx.feed
        .publish(&ev)
        .await
        .map_err(|e| CommandError::Retry(format!("feed: {e}")))?;

    if !already_sent
        && mb.incoming.protocol == MailProtocol::Imap
        && !mb.incoming.sent_folder.is_empty()
        && let Err(e) = save_sent(email, mb, &raw).await
    {
        metrics::Email::of(&mb.name).sent("not_saved");
        tracing::warn!(mailbox = %mb.name, error = %e, "sent letter not saved to the sent folder");
    }
    Ok(())
}

/// The `message.sent` id of a command: the same for every replay.
fn sent_id(cmd: &Command) -> uuid::Uuid {
    crate::stable_id(&format!("sent\n{}", cmd.id), Some(cmd.issued_at))
}

/// Name, media type (valid for `ContentType::parse`), bytes.
type Attached = (String, String, Vec<u8>);

/// `payload.attachments`: `[{"sha256", "name", "content_type"}]` from the
/// shared content-addressed store (the CRM's uploads and letters' parts).
fn attachments_of(email: &Email, cmd: &Command) -> Result<Vec<Attached>, CommandError> {
    let Some(list) = cmd.payload.get("attachments").and_then(Value::as_array) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    let mut total = 0u64;
    for a in list {
        let sha = a.get("sha256").and_then(Value::as_str).unwrap_or_default();
        let bytes = email.inner.blobs.read(sha).ok_or_else(|| {
            CommandError::Rejected(format!("attachment {sha:?} is not in the store"))
        })?;
        total += bytes.len() as u64;
        if total > MAX_ATTACHMENTS_BYTES {
            return Err(CommandError::Rejected(
                "attachments exceed 25 MiB in all".into(),
            ));
        }
        let name = a
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .unwrap_or("attachment")
            .to_owned();
        let ct = a
            .get("content_type")
            .and_then(Value::as_str)
            .filter(|c| ContentType::parse(c).is_ok())
            .unwrap_or("application/octet-stream")
            .to_owned();
        out.push((name, ct, bytes));
    }
    Ok(out)
}

fn transport(
    smtp: &Server,
    password: String,
) -> Result<AsyncSmtpTransport<Tokio1Executor>, CommandError> {
    let params = || -> Result<TlsParameters, CommandError> {
        let mut b = TlsParameters::builder(smtp.host.clone());
        if let Some(ca) = &smtp.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| CommandError::Retry(format!("ca_file {}: {e}", ca.display())))?;
            let cert = Certificate::from_pem(&pem)
                .map_err(|e| CommandError::Rejected(format!("ca_file {}: {e}", ca.display())))?;
            b = b.add_root_certificate(cert);
        }
        b.build_rustls()
            .map_err(|e| CommandError::Rejected(format!("smtp tls: {e}")))
    };
    let tls = match smtp.security {
        Security::Tls => Tls::Wrapper(params()?),
        Security::Starttls => Tls::Required(params()?),
        Security::None => Tls::None,
    };
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(smtp.host.clone())
        .port(smtp.port_or(465, 587))
        .tls(tls)
        .timeout(Some(Duration::from_secs(30)));
    // An empty username: a relay that takes mail without logging in.
    if !smtp.username.is_empty() {
        builder = builder.credentials(Credentials::new(smtp.username.clone(), password));
    }
    Ok(builder.build())
}

/// APPENDs the letter to the mailbox's Sent folder, creating it if needed.
async fn save_sent(email: &Email, mb: &Mailbox, raw: &[u8]) -> Result<(), MailError> {
    let mut session = super::imap::login(email, mb).await?;
    let folder = &mb.incoming.sent_folder;
    let first = tokio::time::timeout(
        super::net::IO_TIMEOUT,
        session.append(folder, Some("(\\Seen)"), None, raw),
    )
    .await
    .map_err(|_| MailError::Server("append timed out".into()))?;
    if first.is_err() {
        // Most servers answer NO [TRYCREATE] for a missing folder.
        let _ = session.create(folder).await;
        tokio::time::timeout(
            super::net::IO_TIMEOUT,
            session.append(folder, Some("(\\Seen)"), None, raw),
        )
        .await
        .map_err(|_| MailError::Server("append timed out".into()))?
        .map_err(|e| MailError::Server(format!("append to {folder}: {e}")))?;
    }
    let _ = session.logout().await;
    Ok(())
}
