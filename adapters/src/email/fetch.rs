//! Bulk `UID FETCH` on the raw connection.
//!
//! Taking a mailbox is mostly one kind of response, thousands of times:
//! `* n FETCH (UID u RFC822.SIZE s INTERNALDATE "…" BODY[] {len}` followed by
//! the letter itself. A general IMAP parser re-examines its buffer for every
//! response and copies what is left over; this reader splits lines only
//! outside literals and moves each letter's bytes once, straight from the
//! socket buffer (or the socket) into the letter's own buffer. Everything
//! else about the session (login, SELECT, IDLE, APPEND) stays with
//! `async-imap`; this module only runs between two of its commands, when
//! the server owes it nothing.
//!
//! Responses that are not for this command are not lost: a change to the
//! mailbox announced meanwhile (`EXISTS`, `EXPUNGE`, `RECENT`) is reported
//! to the caller, which looks again before it waits.

use std::sync::atomic::{AtomicU64, Ordering};

use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::MailError;

/// Bytes asked of the socket at a time.
const READ_CHUNK: usize = 256 * 1024;
/// A response line (outside literals) longer than this is refused.
const MAX_LINE: usize = 64 * 1024;

/// One `FETCH` response's items.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Fetch {
    pub uid: Option<u32>,
    pub size: Option<u64>,
    pub internal_date: Option<OffsetDateTime>,
    /// `BODY[…]`: the whole letter or the part asked for.
    pub body: Option<Vec<u8>>,
}

/// What one command brought.
#[derive(Debug, Default)]
pub(crate) struct Fetched {
    pub items: Vec<Fetch>,
    /// The server announced a change to the mailbox meanwhile.
    pub news: bool,
}

/// Runs `UID FETCH <set> <items>` and reads every response up to its
/// completion. A literal longer than `max_literal` is refused (the
/// connection is then unusable and must be dropped, as after any error).
pub(crate) async fn uid_fetch<S>(
    io: &mut S,
    set: &str,
    items: &str,
    max_literal: u64,
) -> Result<Fetched, MailError>
where
    S: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    static NEXT_TAG: AtomicU64 = AtomicU64::new(1);
    let tag = format!("sbf{}", NEXT_TAG.fetch_add(1, Ordering::Relaxed));
    io.write_all(format!("{tag} UID FETCH {set} {items}\r\n").as_bytes())
        .await
        .map_err(io_error)?;
    io.flush().await.map_err(io_error)?;
    let mut reader = Reader::new(io, max_literal);
    let mut out = Fetched::default();
    loop {
        let (line, literals) = reader.response().await?;
        if let Some(rest) = line.strip_prefix(tag.as_bytes()) {
            let rest = String::from_utf8_lossy(rest);
            let rest = rest.trim();
            return if rest.len() >= 2 && rest[..2].eq_ignore_ascii_case("OK") {
                Ok(out)
            } else {
                Err(MailError::Server(format!("imap fetch: {rest}")))
            };
        }
        let Some(untagged) = line.strip_prefix(b"* ") else {
            // A continuation or another command's tag: nothing we asked for.
            continue;
        };
        let mut words = untagged.splitn(3, |&b| b == b' ');
        let (first, second) = (words.next().unwrap_or_default(), words.next());
        if first.eq_ignore_ascii_case(b"BYE") {
            return Err(MailError::Server(format!(
                "the server closed the session: {}",
                String::from_utf8_lossy(untagged)
            )));
        }
        match second.map(<[u8]>::to_ascii_uppercase).as_deref() {
            Some(b"FETCH") => {
                out.items
                    .push(parse_fetch(words.next().unwrap_or_default(), literals)?);
            }
            Some(b"EXISTS" | b"EXPUNGE" | b"RECENT") => out.news = true,
            _ => {}
        }
    }
}

fn io_error(e: std::io::Error) -> MailError {
    MailError::Server(format!("imap: {e}"))
}

/// Splits the server's bytes into responses: a line, and the literals it
/// announced (`{n}` at a line's end), which are replaced in the line by
/// `{n}` and handed over separately.
struct Reader<'a, S: ?Sized> {
    io: &'a mut S,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    max_literal: u64,
}

impl<'a, S: AsyncRead + Unpin + ?Sized> Reader<'a, S> {
    fn new(io: &'a mut S, max_literal: u64) -> Self {
        Self {
            io,
            buf: vec![0; READ_CHUNK],
            start: 0,
            end: 0,
            max_literal,
        }
    }

    /// Reads more bytes into the buffer, making room first.
    async fn fill(&mut self) -> Result<(), MailError> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                (self.start, self.end) = (0, self.end - self.start);
            } else {
                self.buf.resize(self.buf.len() * 2, 0);
            }
        }
        let n = self
            .io
            .read(&mut self.buf[self.end..])
            .await
            .map_err(io_error)?;
        if n == 0 {
            return Err(MailError::Server(
                "the server closed the connection in the middle of a response".into(),
            ));
        }
        self.end += n;
        Ok(())
    }

    /// One line, without its CRLF.
    async fn line(&mut self, out: &mut Vec<u8>) -> Result<(), MailError> {
        let mut scanned = 0;
        loop {
            let pending = &self.buf[self.start + scanned..self.end];
            if let Some(i) = pending.iter().position(|&b| b == b'\n') {
                let end = self.start + scanned + i;
                let line = &self.buf[self.start..end];
                out.extend_from_slice(line.strip_suffix(b"\r").unwrap_or(line));
                self.start = end + 1;
                return Ok(());
            }
            scanned = self.end - self.start;
            if scanned > MAX_LINE {
                return Err(MailError::Server(format!(
                    "the server sent a line over {MAX_LINE} bytes"
                )));
            }
            self.fill().await?;
        }
    }

    /// `n` bytes of a literal.
    async fn literal(&mut self, n: usize) -> Result<Vec<u8>, MailError> {
        let mut out = Vec::with_capacity(n);
        let buffered = (self.end - self.start).min(n);
        out.extend_from_slice(&self.buf[self.start..self.start + buffered]);
        self.start += buffered;
        if out.len() < n {
            // The rest comes straight from the socket into the letter.
            out.resize(n, 0);
            self.io
                .read_exact(&mut out[buffered..])
                .await
                .map_err(io_error)?;
        }
        Ok(out)
    }

    /// A whole response: its text and its literals, in order.
    async fn response(&mut self) -> Result<(Vec<u8>, Vec<Vec<u8>>), MailError> {
        let mut text = Vec::new();
        let mut literals = Vec::new();
        loop {
            let from = text.len();
            self.line(&mut text).await?;
            let Some(n) = literal_size(&text[from..]) else {
                return Ok((text, literals));
            };
            if n > self.max_literal {
                return Err(MailError::Server(format!(
                    "the server announced a {n}-byte literal, over the {} allowed",
                    self.max_literal
                )));
            }
            let n = usize::try_from(n)
                .map_err(|_| MailError::Server("literal too large for this machine".into()))?;
            literals.push(self.literal(n).await?);
        }
    }
}

/// The size of the literal a line announces at its end: `{123}` (or the
/// non-synchronising `{123+}`).
fn literal_size(line: &[u8]) -> Option<u64> {
    let inner = line.strip_suffix(b"}")?;
    let open = inner.iter().rposition(|&b| b == b'{')?;
    let digits = &inner[open + 1..];
    let digits = digits.strip_suffix(b"+").unwrap_or(digits);
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// A token of a response's text.
#[derive(Debug, PartialEq, Eq)]
enum Token<'a> {
    Open,
    Close,
    Atom(&'a [u8]),
    Quoted(Vec<u8>),
    Literal(usize),
    Nil,
}

/// Splits a response's text into tokens; `{n}` markers take the literals
/// in order.
fn tokens(text: &[u8]) -> Result<Vec<Token<'_>>, MailError> {
    let bad = || unreadable(text);
    let mut out = Vec::new();
    let mut literal = 0;
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b' ' => i += 1,
            b'(' => {
                out.push(Token::Open);
                i += 1;
            }
            b')' => {
                out.push(Token::Close);
                i += 1;
            }
            b'"' => {
                let mut s = Vec::new();
                i += 1;
                loop {
                    match text.get(i) {
                        None => return Err(bad()),
                        Some(b'"') => break,
                        Some(b'\\') => {
                            s.push(*text.get(i + 1).ok_or_else(bad)?);
                            i += 2;
                        }
                        Some(&b) => {
                            s.push(b);
                            i += 1;
                        }
                    }
                }
                i += 1;
                out.push(Token::Quoted(s));
            }
            b'{' => {
                let close = text[i..].iter().position(|&b| b == b'}').ok_or_else(bad)?;
                i += close + 1;
                out.push(Token::Literal(literal));
                literal += 1;
            }
            _ => {
                // An atom; `BODY[HEADER.FIELDS (A B)]<0>` keeps its brackets.
                let start = i;
                let mut depth = 0usize;
                while let Some(&b) = text.get(i) {
                    match b {
                        b'[' => depth += 1,
                        b']' => depth = depth.saturating_sub(1),
                        b' ' | b'(' | b')' if depth == 0 => break,
                        _ => {}
                    }
                    i += 1;
                }
                let atom = &text[start..i];
                out.push(if atom.eq_ignore_ascii_case(b"NIL") {
                    Token::Nil
                } else {
                    Token::Atom(atom)
                });
            }
        }
    }
    Ok(out)
}

fn unreadable(text: &[u8]) -> MailError {
    MailError::Server(format!(
        "unreadable FETCH response: {}",
        String::from_utf8_lossy(&text[..text.len().min(200)])
    ))
}

/// `(UID 7 RFC822.SIZE 1234 INTERNALDATE "…" BODY[] {1234})`.
fn parse_fetch(text: &[u8], literals: Vec<Vec<u8>>) -> Result<Fetch, MailError> {
    let toks = tokens(text)?;
    let mut literals: Vec<Option<Vec<u8>>> = literals.into_iter().map(Some).collect();
    let mut fetch = Fetch::default();
    let inner = match toks.as_slice() {
        [Token::Open, inner @ .., Token::Close] => inner,
        _ => return Err(unreadable(text)),
    };
    let mut i = 0;
    while i < inner.len() {
        let Token::Atom(name) = &inner[i] else {
            i += 1;
            continue;
        };
        let name = name.to_ascii_uppercase();
        let value = inner.get(i + 1);
        i += 2;
        let number = || match value {
            Some(Token::Atom(a)) => std::str::from_utf8(a).ok()?.parse::<u64>().ok(),
            _ => None,
        };
        match name.as_slice() {
            b"UID" => fetch.uid = number().and_then(|n| u32::try_from(n).ok()),
            b"RFC822.SIZE" => fetch.size = number(),
            b"INTERNALDATE" => {
                if let Some(Token::Quoted(d)) = value {
                    fetch.internal_date = internal_date(d);
                }
            }
            n if n.starts_with(b"BODY[") || n.starts_with(b"RFC822") => {
                fetch.body = match value {
                    Some(Token::Literal(k)) => literals.get_mut(*k).and_then(Option::take),
                    Some(Token::Quoted(q)) => Some(q.clone()),
                    _ => None,
                };
            }
            _ => {
                // FLAGS (…) and other lists: skip to the matching close.
                if let Some(Token::Open) = value {
                    let mut depth = 1;
                    while depth > 0 && i < inner.len() {
                        match inner[i] {
                            Token::Open => depth += 1,
                            Token::Close => depth -= 1,
                            _ => {}
                        }
                        i += 1;
                    }
                }
            }
        }
    }
    Ok(fetch)
}

/// `" 2-Dec-2026 10:00:00 +0300"` (RFC 3501 date-time).
fn internal_date(d: &[u8]) -> Option<OffsetDateTime> {
    let s = std::str::from_utf8(d).ok()?.trim();
    let (date, rest) = s.split_once(' ')?;
    let (clock, zone) = rest.trim().split_once(' ')?;
    let mut dmy = date.split('-');
    let day: u8 = dmy.next()?.trim().parse().ok()?;
    let month = dmy.next()?;
    let year: i32 = dmy.next()?.parse().ok()?;
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    let m = MONTHS.iter().position(|n| n.eq_ignore_ascii_case(month))?;
    let month = Month::try_from(u8::try_from(m + 1).ok()?).ok()?;
    let mut hms = clock.split(':').map(|p| p.parse::<u8>().ok());
    let time = Time::from_hms(hms.next()??, hms.next()??, hms.next()??).ok()?;
    let (sign, hhmm) = match zone.as_bytes().first()? {
        b'+' => (1i8, &zone[1..]),
        b'-' => (-1i8, &zone[1..]),
        _ => return None,
    };
    if hhmm.len() != 4 {
        return None;
    }
    let offset = UtcOffset::from_hms(
        sign * hhmm[..2].parse::<i8>().ok()?,
        sign * hhmm[2..].parse::<i8>().ok()?,
        0,
    )
    .ok()?;
    Some(
        PrimitiveDateTime::new(Date::from_calendar_date(year, month, day).ok()?, time)
            .assume_offset(offset),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A server that answers the first command with `script` (where `TAG`
    /// stands for the command's tag), read in pieces of `chunk` bytes.
    async fn run(script: &[u8], chunk: usize, max: u64) -> (Result<Fetched, MailError>, String) {
        let (mut client, mut server) = tokio::io::duplex(chunk);
        let script = script.to_vec();
        let srv = tokio::spawn(async move {
            let mut cmd = Vec::new();
            let mut b = [0u8; 1];
            while !cmd.ends_with(b"\r\n") {
                server.read_exact(&mut b).await.unwrap();
                cmd.push(b[0]);
            }
            let cmd = String::from_utf8(cmd).unwrap();
            let tag = cmd.split(' ').next().unwrap().to_owned();
            let reply = String::from_utf8(script)
                .unwrap()
                .replace("TAG", &tag)
                .into_bytes();
            // Ignore a closed pipe: the client may stop reading on error.
            let _ = server.write_all(&reply).await;
            cmd
        });
        let r = uid_fetch(&mut client, "1:*", "(UID BODY.PEEK[])", max).await;
        drop(client);
        (r, srv.await.unwrap())
    }

    fn letter(i: usize, len: usize) -> Vec<u8> {
        (0..len).map(|k| b"ab\r\n)(}{*"[(i + k) % 9]).collect()
    }

    #[tokio::test]
    async fn letters_with_crlf_braces_and_parens_inside_come_out_whole() {
        let mut script = Vec::new();
        let letters: Vec<Vec<u8>> = (0..40).map(|i| letter(i, 3000 + i * 997)).collect();
        for (i, l) in letters.iter().enumerate() {
            script.extend(
                format!(
                    "* {} FETCH (UID {} RFC822.SIZE {} FLAGS (\\Seen $Forwarded) INTERNALDATE \" 2-Dec-2026 10:00:00 +0300\" BODY[] {{{}}}\r\n",
                    i + 1,
                    100 + i,
                    l.len(),
                    l.len()
                )
                .as_bytes(),
            );
            script.extend(l);
            script.extend(b")\r\n");
            if i == 7 {
                script.extend(b"* 41 EXISTS\r\n");
            }
        }
        script.extend(b"TAG OK Fetch completed.\r\n");
        for chunk in [7, 4096, 1 << 20] {
            let (r, cmd) = run(&script, chunk, 1 << 20).await;
            let r = r.unwrap();
            assert!(
                cmd.ends_with(" UID FETCH 1:* (UID BODY.PEEK[])\r\n"),
                "{cmd}"
            );
            assert!(r.news, "the EXISTS in between is reported");
            assert_eq!(r.items.len(), 40);
            for (i, f) in r.items.iter().enumerate() {
                assert_eq!(f.uid, Some(100 + i as u32));
                assert_eq!(f.size, Some(letters[i].len() as u64));
                assert_eq!(f.body.as_deref(), Some(&letters[i][..]), "letter {i}");
                let d = f.internal_date.unwrap();
                assert_eq!(d.unix_timestamp(), 1_796_194_800);
            }
        }
    }

    #[tokio::test]
    async fn a_letter_larger_than_the_buffer_is_read_from_the_socket_whole() {
        let big = letter(3, 3 * READ_CHUNK + 17);
        let mut script = format!("* 1 FETCH (UID 9 BODY[] {{{}}}\r\n", big.len()).into_bytes();
        script.extend(&big);
        script.extend(b")\r\n* 2 FETCH (UID 10 BODY[] {3}\r\nabc)\r\nTAG OK done\r\n");
        let r = run(&script, 64 * 1024, big.len() as u64).await.0.unwrap();
        assert_eq!(r.items.len(), 2);
        assert_eq!(r.items[0].body.as_deref(), Some(&big[..]));
        assert_eq!(r.items[1].body.as_deref(), Some(&b"abc"[..]));
    }

    #[tokio::test]
    async fn sizes_quoted_and_nil_bodies_and_other_item_orders() {
        let script = b"* 1 FETCH (RFC822.SIZE 12 UID 5)\r\n\
            * 2 FETCH (UID 6 BODY[HEADER] \"Subject: \\\"x\\\"\")\r\n\
            * 3 FETCH (UID 7 BODY[] NIL)\r\n\
            * 4 FETCH (FLAGS (\\Seen))\r\n\
            TAG OK done\r\n";
        let r = run(script, 64, 100).await.0.unwrap();
        assert!(!r.news);
        assert_eq!(r.items[0].uid, Some(5));
        assert_eq!(r.items[0].size, Some(12));
        assert_eq!(r.items[1].body.as_deref(), Some(&b"Subject: \"x\""[..]));
        assert_eq!(r.items[2].body, None);
        assert_eq!(r.items[3], Fetch::default());
    }

    #[tokio::test]
    async fn refusals_lies_and_hangups_are_errors() {
        let no = run(b"TAG NO [SERVERBUG] Internal error\r\n", 64, 100)
            .await
            .0;
        assert!(no.unwrap_err().to_string().contains("SERVERBUG"));
        let huge = run(b"* 1 FETCH (UID 1 BODY[] {99999999999}\r\n", 64, 1000)
            .await
            .0;
        let huge = huge.unwrap_err().to_string();
        assert!(huge.contains("99999999999-byte literal"), "{huge}");
        let cut = run(b"* 1 FETCH (UID 1 BODY[] {10}\r\nabc", 64, 100).await.0;
        assert!(cut.is_err());
        let bye = run(b"* BYE shutting down\r\n", 64, 100).await.0;
        assert!(bye.unwrap_err().to_string().contains("shutting down"));
        let garbage = run(b"* 1 FETCH UID 1\r\nTAG OK\r\n", 64, 100).await.0;
        assert!(garbage.unwrap_err().to_string().contains("unreadable"));
    }

    #[test]
    fn internal_dates() {
        let d = internal_date(b"17-Jul-1996 02:44:25 -0700").unwrap();
        assert_eq!(d.unix_timestamp(), 837_596_665);
        assert_eq!(internal_date(b"31-Feb-1996 02:44:25 -0700"), None);
        assert_eq!(internal_date(b"nonsense"), None);
    }
}
