//! One letter, read with `mail-parser`: who wrote it, its thread ids, text
//! and HTML bodies (legacy charsets decoded), attachments handed to the
//! content-addressed store, and whether a robot sent it. Anything the
//! parser could not make sense of is listed in `problems`, never fatal.

use std::borrow::Cow;

use mail_parser::{HeaderValue, MessageParser, MimeHeaders, PartType};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::blobs::Blobs;

/// Bodies beyond these sizes are cut (the payload says so).
const MAX_TEXT: usize = 256 * 1024;
const MAX_HTML: usize = 512 * 1024;
/// Attachments listed on one letter; the rest are counted.
const MAX_LISTED_PARTS: usize = 100;
/// Thread ids kept from References.
const MAX_REFERENCES: usize = 50;

/// Why a letter was sent by a machine rather than a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auto {
    /// Out of office and other automatic answers (`Auto-Submitted`,
    /// `X-Autoreply`, an "Auto:" subject).
    Reply,
    /// A delivery status notification: the letter we sent did not arrive.
    Bounce,
    /// Mailing lists and bulk mail (`Precedence`, `List-Id`).
    Bulk,
}

impl Auto {
    pub fn as_str(self) -> &'static str {
        match self {
            Auto::Reply => "auto-reply",
            Auto::Bounce => "bounce",
            Auto::Bulk => "bulk",
        }
    }
}

/// An attachment or inline part, already in the store (or not, and why).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub name: Option<String>,
    pub content_type: String,
    /// For inline images an HTML body refers to (`cid:`).
    pub content_id: Option<String>,
    pub inline: bool,
    pub size: u64,
    /// Its SHA-256 in the store; `None` when it was not stored.
    pub sha256: Option<String>,
    /// Why it was not stored.
    pub skipped: Option<&'static str>,
}

/// What Switchboard keeps of a letter.
#[derive(Debug, Clone, Default)]
pub struct Letter {
    /// Without angle brackets.
    pub message_id: Option<String>,
    pub in_reply_to: Vec<String>,
    pub references: Vec<String>,
    pub subject: String,
    /// Lower-cased address and display name of the sender.
    pub from: Option<(String, Option<String>)>,
    pub reply_to: Option<String>,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub date: Option<OffsetDateTime>,
    pub text: String,
    pub html: Option<String>,
    pub truncated: bool,
    pub parts: Vec<Part>,
    /// Parts beyond the listed ones.
    pub more_parts: usize,
    pub auto: Option<Auto>,
    /// What could not be read; the raw letter is kept when this is not empty.
    pub problems: Vec<String>,
    /// The raw bytes' SHA-256, where the letter needs it: without a
    /// Message-ID (it is then the letter's key) or kept raw (`problems`).
    pub raw_sha256: Option<String>,
    pub raw_size: u64,
}

impl Letter {
    /// Reads `raw`, storing attachments up to `max_attachment` bytes each in
    /// `blobs` (not yet flushed: see [`Blobs::sync`]). Never fails: a
    /// letter nothing can be made of is a letter with problems.
    pub fn parse(raw: &[u8], blobs: &Blobs, max_attachment: u64) -> Self {
        let mut letter = Self::read(raw, blobs, max_attachment);
        if letter.message_id.is_none() || !letter.problems.is_empty() {
            letter.raw_sha256 = Some(hex::encode(Sha256::digest(raw)));
        }
        letter
    }

    fn read(raw: &[u8], blobs: &Blobs, max_attachment: u64) -> Self {
        let mut letter = Letter {
            raw_size: raw.len() as u64,
            ..Letter::default()
        };
        let Some(msg) = MessageParser::default().parse(raw) else {
            letter.problems.push("not an email message".into());
            letter.text = lossy_prefix(raw, MAX_TEXT);
            return letter;
        };
        if msg.headers().is_empty() {
            letter.problems.push("no headers".into());
        }
        letter.message_id = msg.message_id().and_then(clean_id);
        letter.in_reply_to = ids(msg.in_reply_to());
        letter.references = ids(msg.references());
        letter.references.truncate(MAX_REFERENCES);
        letter.subject = msg.subject().unwrap_or_default().trim().to_owned();
        letter.from = msg.from().and_then(|a| a.first()).and_then(|a| {
            let address = a.address()?.trim().to_lowercase();
            address.contains('@').then(|| {
                let name = a
                    .name()
                    .map(|n| n.trim().to_owned())
                    .filter(|n| !n.is_empty());
                (address, name)
            })
        });
        if letter.from.is_none() {
            letter.problems.push("no sender address".into());
        }
        letter.reply_to = msg
            .reply_to()
            .and_then(|a| a.first())
            .and_then(|a| a.address())
            .map(|a| a.trim().to_lowercase());
        letter.to = addresses(msg.to());
        letter.cc = addresses(msg.cc());
        letter.date = msg
            .date()
            .filter(|d| d.is_valid())
            .and_then(|d| OffsetDateTime::from_unix_timestamp(d.to_timestamp()).ok());

        let text = msg.body_text(0).unwrap_or(Cow::Borrowed(""));
        letter.truncated |= text.len() > MAX_TEXT;
        letter.text = cut(&text, MAX_TEXT);
        if msg.html_body_count() > 0
            && let Some(html) = msg.html_part(0).and_then(|p| match &p.body {
                PartType::Html(h) => Some(h.clone()),
                _ => None,
            })
        {
            letter.truncated |= html.len() > MAX_HTML;
            letter.html = Some(cut(&html, MAX_HTML));
        }

        for (i, part) in msg.parts.iter().enumerate() {
            if part.is_encoding_problem {
                letter
                    .problems
                    .push(format!("part {i} is not valid in its declared encoding"));
            }
        }
        for part in msg.attachments() {
            if letter.parts.len() >= MAX_LISTED_PARTS {
                letter.more_parts += 1;
                continue;
            }
            let data: &[u8] = match &part.body {
                PartType::Binary(b) | PartType::InlineBinary(b) => b,
                PartType::Text(t) | PartType::Html(t) => t.as_bytes(),
                PartType::Message(m) => m.raw_message(),
                PartType::Multipart(_) => continue,
            };
            let content_type = part
                .content_type()
                .map(|ct| match ct.subtype() {
                    Some(sub) => format!("{}/{}", ct.ctype(), sub),
                    None => ct.ctype().to_owned(),
                })
                .unwrap_or_else(|| "application/octet-stream".into())
                .to_lowercase();
            let inline = matches!(part.body, PartType::InlineBinary(_))
                || part
                    .content_disposition()
                    .is_some_and(|d| d.ctype().eq_ignore_ascii_case("inline"));
            let mut stored = Part {
                name: part.attachment_name().map(|n| cut(n, 255)),
                content_type: cut(&content_type, 127),
                content_id: part.content_id().and_then(clean_id),
                inline,
                size: data.len() as u64,
                sha256: None,
                skipped: None,
            };
            if stored.size > max_attachment {
                stored.skipped = Some("larger than email.max_attachment_bytes");
            } else {
                match blobs.put_deferred(data) {
                    Ok(sha) => stored.sha256 = Some(sha),
                    Err(e) => {
                        tracing::warn!(error = %e, "attachment not stored");
                        stored.skipped = Some("could not be written");
                    }
                }
            }
            letter.parts.push(stored);
        }
        letter.auto = auto_of(&msg, &letter);
        letter
    }

    /// The sender's address when there is one.
    pub fn sender(&self) -> Option<&str> {
        self.from.as_ref().map(|(a, _)| a.as_str())
    }
}

/// Recognises letters sent by machines (RFC 3834, RFC 3464 and the usual
/// non-standard markers), which must not become leads.
fn auto_of(msg: &mail_parser::Message<'_>, letter: &Letter) -> Option<Auto> {
    let header = |name: &str| msg.header_raw(name).map(|v| v.trim().to_lowercase());
    let is_report = msg.content_type().is_some_and(|ct| {
        ct.ctype().eq_ignore_ascii_case("multipart")
            && ct
                .subtype()
                .is_some_and(|s| s.eq_ignore_ascii_case("report"))
            && ct
                .attribute("report-type")
                .is_some_and(|r| r.eq_ignore_ascii_case("delivery-status"))
    });
    let sender = letter.sender().unwrap_or_default();
    let daemon = sender.starts_with("mailer-daemon@") || sender.starts_with("postmaster@");
    if is_report || daemon {
        return Some(Auto::Bounce);
    }
    if header("Auto-Submitted").is_some_and(|v| !v.starts_with("no"))
        || header("X-Autoreply").is_some()
        || header("X-Autorespond").is_some()
    {
        return Some(Auto::Reply);
    }
    let subject = letter.subject.to_lowercase();
    if [
        "auto:",
        "automatic reply",
        "autoreply",
        "out of office",
        "автоответ",
    ]
    .iter()
    .any(|p| subject.starts_with(p))
    {
        return Some(Auto::Reply);
    }
    if header("Precedence")
        .is_some_and(|v| ["bulk", "junk", "list", "auto_reply"].contains(&v.as_str()))
        || header("List-Id").is_some()
    {
        return Some(Auto::Bulk);
    }
    None
}

/// `<a@b>` → `a@b`; empty or absurd ids are dropped.
fn clean_id(id: &str) -> Option<String> {
    let id = id
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .trim();
    (!id.is_empty() && id.len() <= 998 && !id.contains(char::is_whitespace)).then(|| id.to_owned())
}

fn ids(value: &HeaderValue<'_>) -> Vec<String> {
    match value {
        HeaderValue::Text(t) => clean_id(t).into_iter().collect(),
        HeaderValue::TextList(list) => list.iter().filter_map(|t| clean_id(t)).collect(),
        _ => Vec::new(),
    }
}

fn addresses(a: Option<&mail_parser::Address<'_>>) -> Vec<String> {
    a.map(|a| {
        a.iter()
            .filter_map(|a| a.address())
            .map(|a| a.trim().to_lowercase())
            .take(100)
            .collect()
    })
    .unwrap_or_default()
}

/// At most `max` bytes, cut at a character boundary.
fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

fn lossy_prefix(raw: &[u8], max: usize) -> String {
    cut(&String::from_utf8_lossy(&raw[..raw.len().min(max)]), max)
}

/// The subject without reply and forward prefixes, for threading by subject.
pub fn thread_subject(subject: &str) -> String {
    without_reply_prefixes(subject)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// Whether the subject says this is an answer in an existing conversation.
pub fn is_reply_subject(subject: &str) -> bool {
    without_reply_prefixes(subject).len() != subject.trim().len()
}

/// The trimmed subject after its reply and forward prefixes ("Re:",
/// "Fwd:", "Ответ:", "Re[2]:", any case, repeated).
fn without_reply_prefixes(subject: &str) -> &str {
    const PREFIXES: [&str; 9] = [
        "re:",
        "fw:",
        "fwd:",
        "aw:",
        "ответ:",
        "отв:",
        "пересл:",
        "re[",
        "re (",
    ];
    let mut s = subject.trim();
    loop {
        let starts = |p: &str| {
            let mut lower = s.chars().flat_map(char::to_lowercase);
            p.chars().all(|c| lower.next() == Some(c))
        };
        let Some(p) = PREFIXES.iter().find(|p| starts(p)) else {
            break;
        };
        let mut rest = &s[s
            .char_indices()
            .nth(p.chars().count())
            .map_or(s.len(), |(i, _)| i)..];
        // "Re[2]:" / "Re (2):"
        if p.ends_with('[') || p.ends_with('(') {
            match rest.find(':') {
                Some(colon) if colon <= 6 => rest = &rest[colon + 1..],
                _ => break,
            }
        }
        s = rest.trim_start();
    }
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn blobs() -> (tempfile::TempDir, Blobs) {
        let dir = tempfile::tempdir().unwrap();
        let b = Blobs::open(dir.path().join("attachments")).unwrap();
        (dir, b)
    }

    #[test]
    fn koi8r_and_windows_1251_bodies_and_subjects_are_decoded() {
        let (_d, b) = blobs();
        let koi = encoding_koi8("Здравствуйте, пришлите счёт");
        let mut raw = b"From: =?koi8-r?B?".to_vec();
        raw.extend(b64(&encoding_koi8("Иван")));
        raw.extend(b"?= <Ivan@Example.RU>\r\nSubject: =?koi8-r?B?");
        raw.extend(b64(&encoding_koi8("Счёт")));
        raw.extend(b"?=\r\nMessage-ID: <a1@example.ru>\r\nContent-Type: text/plain; charset=koi8-r\r\nContent-Transfer-Encoding: 8bit\r\n\r\n");
        raw.extend(&koi);
        let l = Letter::parse(&raw, &b, 1 << 20);
        assert_eq!(l.text.trim(), "Здравствуйте, пришлите счёт");
        assert_eq!(l.subject, "Счёт");
        assert_eq!(
            l.from,
            Some(("ivan@example.ru".into(), Some("Иван".into())))
        );
        assert_eq!(l.message_id.as_deref(), Some("a1@example.ru"));
        assert!(l.problems.is_empty(), "{:?}", l.problems);

        let mut raw =
            b"From: a@b.ru\r\nSubject: x\r\nContent-Type: text/plain; charset=windows-1251\r\n\r\n"
                .to_vec();
        raw.extend(encoding_1251("Добрый день"));
        let l = Letter::parse(&raw, &b, 1 << 20);
        assert_eq!(l.text.trim(), "Добрый день");
    }

    #[test]
    fn attachments_are_stored_by_content_and_oversized_ones_are_listed() {
        let (_d, b) = blobs();
        let raw = "From: a@b.ru\r\nSubject: price\r\nMIME-Version: 1.0\r\n\
            Content-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\n\
            Content-Type: text/plain\r\n\r\nsee attached\r\n--XX\r\n\
            Content-Type: application/pdf; name=price.pdf\r\nContent-Disposition: attachment; filename=price.pdf\r\n\
            Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--XX\r\n\
            Content-Type: application/zip; name=big.zip\r\nContent-Disposition: attachment; filename=big.zip\r\n\
            Content-Transfer-Encoding: base64\r\n\r\nQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB\r\n--XX--\r\n";
        let l = Letter::parse(raw.as_bytes(), &b, 20);
        assert_eq!(l.text.trim(), "see attached");
        assert_eq!(l.parts.len(), 2);
        let pdf = &l.parts[0];
        assert_eq!(pdf.name.as_deref(), Some("price.pdf"));
        assert_eq!(pdf.content_type, "application/pdf");
        let sha = pdf.sha256.as_deref().unwrap();
        assert_eq!(b.read(sha).unwrap(), b"%PDF-1.4\n");
        assert_eq!(l.parts[1].sha256, None);
        assert!(l.parts[1].skipped.is_some());
    }

    #[test]
    fn robots_are_recognised() {
        let (_d, b) = blobs();
        let parse = |raw: &str| Letter::parse(raw.as_bytes(), &b, 1 << 20).auto;
        assert_eq!(
            parse(
                "From: a@b.ru\r\nAuto-Submitted: auto-replied\r\nSubject: Re: x\r\n\r\nI am away"
            ),
            Some(Auto::Reply)
        );
        assert_eq!(
            parse("From: a@b.ru\r\nAuto-Submitted: no\r\nSubject: x\r\n\r\nhello"),
            None
        );
        assert_eq!(
            parse(
                "From: MAILER-DAEMON@mx.example.com\r\nSubject: Undelivered Mail\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n--b\r\n\r\nx\r\n--b--\r\n"
            ),
            Some(Auto::Bounce)
        );
        assert_eq!(
            parse("From: news@shop.ru\r\nPrecedence: bulk\r\nSubject: sale\r\n\r\n-50%"),
            Some(Auto::Bulk)
        );
        assert_eq!(
            parse("From: a@b.ru\r\nSubject: Автоответ: отпуск\r\n\r\n"),
            Some(Auto::Reply)
        );
    }

    #[test]
    fn thread_ids_and_subjects() {
        let (_d, b) = blobs();
        let l = Letter::parse(
            b"From: a@b.ru\r\nIn-Reply-To: <m1@x>\r\nReferences: <m0@x> <m1@x>\r\nSubject: RE: Fwd: Re[2]: Order  42\r\n\r\n",
            &b,
            1,
        );
        assert_eq!(l.in_reply_to, ["m1@x"]);
        assert_eq!(l.references, ["m0@x", "m1@x"]);
        assert_eq!(thread_subject(&l.subject), "order 42");
        assert!(is_reply_subject(&l.subject));
        assert!(!is_reply_subject("Order 42"));
        assert_eq!(thread_subject("Ответ: Счёт"), "счёт");
        assert!(is_reply_subject("  re (2): Order"));
        assert_eq!(thread_subject("  re (2):  Order "), "order");
        // Not a prefix: "Re[" needs its colon, "Reply" is a word.
        assert!(!is_reply_subject("Re[draft"));
        assert!(!is_reply_subject("Reply needed"));
        assert!(is_reply_subject("ОТВ: счёт"));
        assert!(is_reply_subject("Re:"));
    }

    #[test]
    fn garbage_is_a_letter_with_problems() {
        let (_d, b) = blobs();
        for raw in [
            &b""[..],
            b"\xff\xfe\x00garbage",
            b"no colon here\r\n\r\nbody",
        ] {
            let l = Letter::parse(raw, &b, 1);
            assert!(!l.problems.is_empty(), "{raw:?}");
            assert_eq!(l.raw_size, raw.len() as u64);
            // Kept raw under its digest.
            assert_eq!(l.raw_sha256, Some(hex::encode(Sha256::digest(raw))));
        }
        // A sound letter is known by its Message-ID; one without is known
        // by its digest.
        let sound = b"From: a@b.ru\r\nMessage-ID: <1@b.ru>\r\nSubject: x\r\n\r\nbody";
        assert_eq!(Letter::parse(sound, &b, 1).raw_sha256, None);
        let anonymous = b"From: a@b.ru\r\nSubject: x\r\n\r\nbody";
        let l = Letter::parse(anonymous, &b, 1);
        assert!(l.problems.is_empty(), "{:?}", l.problems);
        assert_eq!(l.raw_sha256, Some(hex::encode(Sha256::digest(anonymous))));
    }

    fn b64(data: &[u8]) -> Vec<u8> {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .encode(data)
            .into_bytes()
    }

    /// KOI8-R of Cyrillic text (the tests need no encoder crate).
    fn encoding_koi8(s: &str) -> Vec<u8> {
        const KOI8_LOWER: &str = "юабцдефгхийклмнопярстужвьызшэщчъ";
        const KOI8_UPPER: &str = "ЮАБЦДЕФГХИЙКЛМНОПЯРСТУЖВЬЫЗШЭЩЧЪ";
        s.chars()
            .map(|c| {
                if let Some(i) = KOI8_LOWER.chars().position(|x| x == c) {
                    0xC0 + i as u8
                } else if let Some(i) = KOI8_UPPER.chars().position(|x| x == c) {
                    0xE0 + i as u8
                } else if c == 'ё' {
                    0xA3
                } else if c == 'Ё' {
                    0xB3
                } else {
                    c as u8
                }
            })
            .collect()
    }

    /// windows-1251 of Cyrillic text.
    fn encoding_1251(s: &str) -> Vec<u8> {
        s.chars()
            .map(|c| match c {
                'А'..='я' => (c as u32 - 'А' as u32 + 0xC0) as u8,
                'ё' => 0xB8,
                'Ё' => 0xA8,
                _ => c as u8,
            })
            .collect()
    }
}
