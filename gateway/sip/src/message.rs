//! SIP messages (RFC 3261 §7, §20, §25): parsing from bytes and building.
//!
//! Parsing is two-staged. [`parse`] splits the start line, the header fields
//! (unfolding continuation lines, expanding compact names) and the body; it
//! fails only when there is no message at all. [`Message::validate`] then
//! applies the rules that decide between processing a request and answering
//! 400 (or 505), with a reason — on a message whose fields are still there
//! to build that answer from.

use std::sync::Arc;

use bytes::Bytes;

use crate::text::Text;

/// RFC 3261's branch prefix (§8.1.1.7).
pub const BRANCH_COOKIE: &str = "z9hG4bK";

/// Most header fields accepted in one message.
pub const MAX_HEADERS: usize = 128;
/// Largest message accepted (datagram or framed), in bytes.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// Why bytes are not a SIP message, or not a valid one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// No start line and header block could be found.
    #[error("not a SIP message: {0}")]
    Garbage(&'static str),
    /// The header block or the message is larger than allowed.
    #[error("message too large")]
    TooLarge,
    /// A request that must be refused; `code` is the status to answer with.
    #[error("{code} {reason}")]
    Invalid { code: u16, reason: String },
}

fn invalid(reason: impl Into<String>) -> ParseError {
    ParseError::Invalid {
        code: 400,
        reason: reason.into(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartLine {
    Request { method: Text, uri: Text },
    Response { code: u16, reason: Text },
}

/// A parsed message. Header names are stored in their full, lower-case
/// form (`v` becomes `via`); values as received, unfolded and trimmed, as
/// [`Text`] sharing one copy of the received head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub start: StartLine,
    /// The version as received (`SIP/2.0` when valid).
    pub version: Text,
    /// Header fields in order, each name in its full lower-case form.
    pub headers: Vec<(HeaderName, Text)>,
    pub body: Bytes,
    /// Why a request must be answered 400 although it parsed (a bad header
    /// line, a malformed request line, a Content-Length that disagrees).
    pub defect: Option<String>,
}

/// Where the message's bytes ended: for streams, what to consume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    /// Bytes of the head (start line and headers, with the blank line).
    pub head_len: usize,
    /// Bytes of body the message declared (Content-Length), if it did.
    pub declared_body: Option<usize>,
}

/// A header field's name, lower case and in full; the names SIP uses are
/// static, so parsing and answering a message allocates none for them.
pub type HeaderName = std::borrow::Cow<'static, str>;

/// The header names SIP uses: stored without an allocation, and written
/// in their usual spelling.
const KNOWN_NAMES: [(&str, &str); 40] = [
    ("via", "Via"),
    ("from", "From"),
    ("to", "To"),
    ("call-id", "Call-ID"),
    ("cseq", "CSeq"),
    ("contact", "Contact"),
    ("max-forwards", "Max-Forwards"),
    ("content-length", "Content-Length"),
    ("content-type", "Content-Type"),
    ("expires", "Expires"),
    ("min-expires", "Min-Expires"),
    ("authorization", "Authorization"),
    ("proxy-authorization", "Proxy-Authorization"),
    ("www-authenticate", "WWW-Authenticate"),
    ("proxy-authenticate", "Proxy-Authenticate"),
    ("user-agent", "User-Agent"),
    ("server", "Server"),
    ("date", "Date"),
    ("allow", "Allow"),
    ("accept", "Accept"),
    ("supported", "Supported"),
    ("unsupported", "Unsupported"),
    ("require", "Require"),
    ("proxy-require", "Proxy-Require"),
    ("path", "Path"),
    ("route", "Route"),
    ("record-route", "Record-Route"),
    ("warning", "Warning"),
    ("retry-after", "Retry-After"),
    ("subject", "Subject"),
    ("content-encoding", "Content-Encoding"),
    ("content-disposition", "Content-Disposition"),
    ("event", "Event"),
    ("refer-to", "Refer-To"),
    ("allow-events", "Allow-Events"),
    ("session-expires", "Session-Expires"),
    ("min-se", "Min-Se"),
    ("organization", "Organization"),
    ("timestamp", "Timestamp"),
    ("reason", "Reason"),
];

/// The stored name of a header called `name` on the wire (any case,
/// compact forms expanded).
pub fn header_name(name: &str) -> HeaderName {
    if let [letter] = name.as_bytes()
        && let Some(full) = compact(letter.to_ascii_lowercase())
    {
        return HeaderName::Borrowed(full);
    }
    // Lower-cased on the stack, then compared byte for byte: no name SIP
    // uses is longer than the buffer.
    let mut buf = [0u8; 24];
    if let Some(lower) = buf.get_mut(..name.len()) {
        lower.copy_from_slice(name.as_bytes());
        lower.make_ascii_lowercase();
        if let Some((known, _)) = KNOWN_NAMES.iter().find(|(k, _)| k.as_bytes() == lower) {
            return HeaderName::Borrowed(known);
        }
    }
    HeaderName::Owned(name.to_ascii_lowercase())
}

/// The full name of a compact form (RFC 3261 §7.3.3, and the extensions').
fn compact(letter: u8) -> Option<&'static str> {
    Some(match letter {
        b'v' => "via",
        b'f' => "from",
        b't' => "to",
        b'i' => "call-id",
        b'm' => "contact",
        b'l' => "content-length",
        b'c' => "content-type",
        b'k' => "supported",
        b's' => "subject",
        b'e' => "content-encoding",
        b'o' => "event",
        b'r' => "refer-to",
        b'u' => "allow-events",
        _ => return None,
    })
}

/// RFC 3261's `token` characters.
pub(crate) fn is_token_char(c: u8) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
        )
}

/// Finds the end of the head: the blank line (CRLF CRLF, or LF LF).
fn head_end(bytes: &[u8]) -> Option<(usize, usize)> {
    for i in memchr::memchr_iter(b'\n', bytes) {
        match bytes.get(i + 1..i + 3) {
            Some([b'\n', ..]) => return Some((i + 1, i + 2)),
            Some([b'\r', b'\n']) => return Some((i + 1, i + 3)),
            None if bytes.get(i + 1) == Some(&b'\n') => return Some((i + 1, i + 2)),
            _ => {}
        }
    }
    None
}

/// Splits the head of a stream's next message, if it is complete, and reads
/// its Content-Length, without parsing the rest. A stream's framing needs
/// only this; the message itself is parsed once its body is in.
pub fn frame(buf: &[u8]) -> Result<Option<Framing>, ParseError> {
    // Keep-alive CRLFs between messages (RFC 5626) are skipped by the caller.
    let Some((_, head_len)) = head_end(buf) else {
        if buf.len() > MAX_MESSAGE {
            return Err(ParseError::TooLarge);
        }
        return Ok(None);
    };
    if head_len > MAX_MESSAGE {
        return Err(ParseError::TooLarge);
    }
    let head = String::from_utf8_lossy(&buf[..head_len]);
    let mut declared = None;
    for line in head.split('\n').skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim_ascii().to_ascii_lowercase();
        if name == "content-length" || name == "l" {
            let v = value.trim_ascii();
            let n: usize = v
                .parse()
                .map_err(|_| invalid(format!("Content-Length {v:?} is not a number")))?;
            if n > MAX_MESSAGE {
                return Err(ParseError::TooLarge);
            }
            declared = Some(n);
        }
    }
    Ok(Some(Framing {
        head_len,
        declared_body: declared,
    }))
}

/// Parses one message from a datagram (or a framed stream message). The
/// body is what Content-Length says; without one, the rest of the input. A
/// datagram whose header block is not closed by an empty line ends at the
/// end of the datagram (RFC 5118 §4.10 has such messages).
///
/// Only bytes that cannot be answered at all are an error; a request with a
/// defect that deserves 400 parses with [`Message::defect`] set, so the
/// answer can copy its Via, From, To, Call-ID and CSeq.
pub fn parse(bytes: &[u8]) -> Result<Message, ParseError> {
    if bytes.len() > MAX_MESSAGE {
        return Err(ParseError::TooLarge);
    }
    let (head_stop, body_start) = head_end(bytes).unwrap_or((bytes.len(), bytes.len()));
    // Checked first as UTF-8, which is quick for the usual ASCII head.
    // One copy of the head; every field is a range of it.
    let head: Arc<str> = match std::str::from_utf8(&bytes[..head_stop]) {
        Ok(text) => Arc::from(text),
        Err(_) => Arc::from(String::from_utf8_lossy(&bytes[..head_stop])),
    };
    let text = |part: &str| Text::slice(&head, part);
    let mut rest = Some(&*head);
    let mut lines = std::iter::from_fn(|| {
        let text = rest?;
        let line = match memchr::memchr(b'\n', text.as_bytes()) {
            Some(i) => {
                rest = Some(&text[i + 1..]);
                &text[..i]
            }
            None => {
                rest = None;
                text
            }
        };
        Some(line.strip_suffix('\r').unwrap_or(line))
    });
    let first = lines.next().ok_or(ParseError::Garbage("empty"))?;
    let mut defect: Option<String> = None;
    let mut headers: Vec<(HeaderName, Text)> = Vec::with_capacity(16);
    for line in lines {
        if line.is_empty() {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            // A continuation of the previous field (folding).
            match headers.last_mut() {
                Some((_, v)) => {
                    let mut unfolded = std::mem::take(v).into_string();
                    unfolded.push(' ');
                    unfolded.push_str(line.trim_ascii());
                    *v = Text::from(unfolded);
                }
                None => {
                    defect.get_or_insert_with(|| {
                        "a header block cannot start with whitespace".to_owned()
                    });
                }
            }
            continue;
        }
        if headers.len() >= MAX_HEADERS {
            defect.get_or_insert_with(|| format!("more than {MAX_HEADERS} header fields"));
            break;
        }
        let Some((name, value)) =
            memchr::memchr(b':', line.as_bytes()).map(|i| (&line[..i], &line[i + 1..]))
        else {
            defect.get_or_insert_with(|| {
                format!("header line without a colon: {:?}", truncate(line))
            });
            continue;
        };
        let name = name.trim_end_matches([' ', '\t']);
        if name.is_empty() || !name.bytes().all(is_token_char) {
            defect.get_or_insert_with(|| format!("bad header name {:?}", truncate(name)));
            continue;
        }
        headers.push((header_name(name), text(value.trim_ascii())));
    }

    let (start, version) = if let Some(rest) = first.strip_prefix("SIP/") {
        // Response: SIP/2.0 SP 3DIGIT SP reason. A bad one is dropped.
        let mut parts = rest.splitn(3, ' ');
        let version = text(&first[..4 + parts.next().unwrap_or("").len()]);
        let code_text = parts.next().unwrap_or("");
        let reason = text(parts.next().unwrap_or(""));
        if code_text.len() != 3 || !code_text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParseError::Garbage(
                "response status code is not three digits",
            ));
        }
        let code: u16 = code_text
            .parse()
            .map_err(|_| ParseError::Garbage("bad status code"))?;
        if !(100..=699).contains(&code) {
            return Err(ParseError::Garbage("status code out of range"));
        }
        (StartLine::Response { code, reason }, version)
    } else {
        let mut parts = first.split(' ');
        let method = parts.next().unwrap_or("");
        if method.is_empty() || !method.bytes().all(is_token_char) {
            return Err(ParseError::Garbage("no request or status line"));
        }
        let (uri, version) = (parts.next(), parts.next());
        match (uri, version, parts.next()) {
            (Some(uri), Some(version), None) if !uri.is_empty() && !version.is_empty() => (
                StartLine::Request {
                    method: text(method),
                    uri: text(uri),
                },
                text(version),
            ),
            _ => {
                // Extra or missing spaces (RFC 4475 §3.1.2.8-10): answer 400.
                defect.get_or_insert_with(|| "malformed request line".to_owned());
                (
                    StartLine::Request {
                        method: text(method),
                        uri: text(uri.unwrap_or("")),
                    },
                    Text::from_static("SIP/2.0"),
                )
            }
        }
    };

    let mut msg = Message {
        start,
        version,
        headers,
        body: Bytes::new(),
        defect: None,
    };
    // The body: Content-Length bytes after the head, or (datagrams, RFC 3261
    // §18.3 allows it over UDP) everything left when there is none.
    let available = &bytes[body_start..];
    let body = match msg.content_length() {
        Ok(Some(n)) if n <= available.len() => &available[..n],
        Ok(Some(_)) => {
            defect.get_or_insert_with(|| "Content-Length is larger than the message".to_owned());
            available
        }
        Ok(None) => available,
        Err(e) => {
            defect.get_or_insert_with(|| e.to_string());
            &[]
        }
    };
    msg.body = Bytes::copy_from_slice(body);
    msg.defect = defect;
    Ok(msg)
}

fn truncate(s: &str) -> String {
    s.chars().take(60).collect()
}

impl Message {
    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    pub fn method(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    pub fn request_uri(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { uri, .. } => Some(uri),
            StartLine::Response { .. } => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match &self.start {
            StartLine::Response { code, .. } => Some(*code),
            StartLine::Request { .. } => None,
        }
    }

    /// The first value of a header (by full lower-case name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a header, split at top-level commas for list headers.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .flat_map(|(_, v)| split_list(v))
    }

    /// How many fields of this header there are.
    pub fn count(&self, name: &str) -> usize {
        self.headers.iter().filter(|(n, _)| n == name).count()
    }

    /// Content-Length, if present; an error if it is not a number or if
    /// several disagree.
    pub fn content_length(&self) -> Result<Option<usize>, ParseError> {
        let mut value = None;
        for (n, v) in &self.headers {
            if n != "content-length" {
                continue;
            }
            let parsed: usize = v.parse().map_err(|_| {
                invalid(format!(
                    "Content-Length {:?} is not a non-negative number",
                    truncate(v)
                ))
            })?;
            if value.is_some_and(|prev| prev != parsed) {
                return Err(invalid("several different Content-Length values"));
            }
            value = Some(parsed);
        }
        Ok(value)
    }

    /// CSeq as (number, method).
    pub fn cseq(&self) -> Option<(u32, &str)> {
        let v = self.header("cseq")?;
        let (num, method) = v.split_once([' ', '\t'])?;
        Some((num.trim_ascii().parse().ok()?, method.trim_ascii()))
    }

    pub fn call_id(&self) -> Option<&str> {
        self.header("call-id")
    }

    /// The top Via's branch, read as a parameter without parsing the rest
    /// of the Via (`None` when it has none or an empty one). For the To tag
    /// and nonce-count checks of every request, so kept cheap; the Via's
    /// validity is [`Message::validate`]'s business.
    pub fn top_branch(&self) -> Option<&str> {
        let top = self.header_values("via").next()?;
        param_value(top, "branch").filter(|b| !b.is_empty())
    }

    /// The top Via.
    pub fn via(&self) -> Option<Via> {
        self.header_values("via")
            .next()
            .and_then(|v| Via::parse(v).ok())
    }

    /// RFC 3261 rules a request must follow before it is processed. The
    /// returned code is the answer: 400, or 505 for another SIP version.
    pub fn validate(&self) -> Result<(), ParseError> {
        let StartLine::Request { method, uri } = &self.start else {
            return self.validate_response();
        };
        if let Some(d) = &self.defect {
            return Err(invalid(d.clone()));
        }
        if !self.version.eq_ignore_ascii_case("SIP/2.0") {
            return Err(
                if self.version.len() > 4 && self.version[..4].eq_ignore_ascii_case("SIP/") {
                    ParseError::Invalid {
                        code: 505,
                        reason: "Version Not Supported".into(),
                    }
                } else {
                    invalid("bad SIP version")
                },
            );
        }
        // One pass over the fields finds how many there are of each of the
        // headers below, and each one's (first) value.
        const SINGLE: [&str; 7] = [
            "to",
            "from",
            "call-id",
            "cseq",
            "max-forwards",
            "content-length",
            "content-type",
        ];
        const MAX_FORWARDS: usize = 4;
        const VIA: usize = 7;
        const DATE: usize = 8;
        const EXPIRES: usize = 9;
        let mut count = [0usize; 10];
        let mut first = [""; 10];
        for (n, v) in &self.headers {
            let i = match &**n {
                "via" => VIA,
                "date" => DATE,
                "expires" => EXPIRES,
                other => match SINGLE.iter().position(|s| *s == other) {
                    Some(i) => i,
                    None => continue,
                },
            };
            if count[i] == 0 {
                first[i] = v;
            }
            count[i] += 1;
        }
        let [to, from, _, cseq, max_forwards, ..] = first;
        for (i, name) in SINGLE.iter().enumerate() {
            if count[i] > 1 {
                return Err(invalid(format!("more than one {name} header")));
            }
        }
        for (i, name) in [
            (VIA, "via"),
            (0, "to"),
            (1, "from"),
            (2, "call-id"),
            (3, "cseq"),
        ] {
            if count[i] == 0 {
                return Err(invalid(format!("missing {name} header")));
            }
        }
        for v in self.header_values("via") {
            let via = ViaRef::parse(v).map_err(|e| invalid(format!("Via: {e}")))?;
            if via.branch == Some(BRANCH_COOKIE) {
                return Err(invalid("Via branch is only the magic cookie"));
            }
        }
        let uri_headers =
            crate::uri::Uri::check(uri).map_err(|e| invalid(format!("Request-URI: {e}")))?;
        if uri_headers.is_some() {
            return Err(invalid("a Request-URI cannot carry headers"));
        }
        if count[DATE] > 0 && !first[DATE].ends_with(" GMT") {
            return Err(invalid("Date must be in GMT"));
        }
        let (num, cmethod) = cseq
            .split_once([' ', '\t'])
            .ok_or_else(|| invalid("CSeq needs a number and a method"))?;
        let num: u64 = num
            .trim_ascii()
            .parse()
            .map_err(|_| invalid("CSeq number is not a number"))?;
        if num > u64::from(u32::MAX >> 1) {
            return Err(invalid("CSeq number must be below 2**31"));
        }
        if cmethod.trim_ascii() != method {
            return Err(invalid("CSeq method does not match the request method"));
        }
        let mf = max_forwards;
        if count[MAX_FORWARDS] > 0
            && !(!mf.is_empty()
                && mf.len() <= 16
                && mf.bytes().all(|b| b.is_ascii_digit())
                && mf.parse::<u64>().is_ok_and(|n| n <= 255))
        {
            return Err(invalid("Max-Forwards must be 0 to 255"));
        }
        let e = first[EXPIRES];
        if count[EXPIRES] > 0
            && !(!e.is_empty()
                && e.bytes().all(|b| b.is_ascii_digit())
                && e.len() <= 20
                && e.parse::<u64>().is_ok_and(|n| n <= u64::from(u32::MAX)))
        {
            return Err(invalid("Expires must be a number of seconds below 2**32"));
        }
        self.content_length()?;
        crate::addr::NameAddr::check(to, false).map_err(|e| invalid(format!("To: {e}")))?;
        crate::addr::NameAddr::check(from, false).map_err(|e| invalid(format!("From: {e}")))?;
        for c in self.header_values("contact") {
            if c.trim_ascii() == "*" {
                continue;
            }
            crate::addr::NameAddr::check(c, true).map_err(|e| invalid(format!("Contact: {e}")))?;
        }
        Ok(())
    }

    fn validate_response(&self) -> Result<(), ParseError> {
        for name in ["via", "call-id", "cseq"] {
            if self.count(name) == 0 {
                return Err(invalid(format!("response without {name}")));
            }
        }
        if self.cseq().is_none() {
            return Err(invalid("bad CSeq"));
        }
        Ok(())
    }

    /// Serialises with CRLFs and a correct Content-Length.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Byte by byte rather than `write!`: every reply goes through here.
        let mut out = Vec::with_capacity(512 + self.body.len());
        match &self.start {
            StartLine::Request { method, uri } => {
                out.extend_from_slice(method.as_bytes());
                out.push(b' ');
                out.extend_from_slice(uri.as_bytes());
                out.extend_from_slice(b" SIP/2.0\r\n");
            }
            StartLine::Response { code, reason } => {
                out.extend_from_slice(b"SIP/2.0 ");
                out.extend_from_slice(itoa::Buffer::new().format(*code).as_bytes());
                out.push(b' ');
                out.extend_from_slice(reason.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
        for (n, v) in &self.headers {
            if n == "content-length" {
                continue;
            }
            out.extend_from_slice(canonical_name(n).as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"Content-Length: ");
        out.extend_from_slice(itoa::Buffer::new().format(self.body.len()).as_bytes());
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(&self.body);
        out
    }

    /// A response to this request: Via, From, To, Call-ID and CSeq copied
    /// (RFC 3261 §8.2.6.2), a To tag added when one is given and absent.
    pub fn response(&self, code: u16, reason: impl Into<Text>, to_tag: Option<&str>) -> Message {
        let mut headers = Vec::with_capacity(8);
        for (n, v) in &self.headers {
            match &**n {
                "via" | "from" | "call-id" | "cseq" => headers.push((n.clone(), v.clone())),
                "to" => {
                    let v = match to_tag {
                        Some(tag) if code > 100 && !has_param(v, "tag") => {
                            let mut to = String::with_capacity(v.len() + 5 + tag.len());
                            to.push_str(v);
                            to.push_str(";tag=");
                            to.push_str(tag);
                            Text::from(to)
                        }
                        _ => v.clone(),
                    };
                    headers.push((n.clone(), v));
                }
                _ => {}
            }
        }
        Message {
            start: StartLine::Response {
                code,
                reason: reason.into(),
            },
            version: Text::from_static("SIP/2.0"),
            headers,
            body: Bytes::new(),
            defect: None,
        }
    }

    pub fn push_header(&mut self, name: &str, value: impl Into<Text>) {
        self.headers.push((header_name(name), value.into()));
    }

    pub fn remove_header(&mut self, name: &str) {
        self.headers.retain(|(n, _)| n != name);
    }
}

/// Whether a header value has the given parameter outside quotes and `<>`.
pub fn has_param(value: &str, param: &str) -> bool {
    param_value(value, param).is_some()
}

/// A header parameter's value (`""` for a flag), outside quotes and `<>`.
pub fn param_value<'a>(value: &'a str, param: &str) -> Option<&'a str> {
    // Every request asks this of its Via (the branch), so it jumps from
    // one `;` to the next rather than splitting.
    let tail = after_addr(value);
    let mut rest = &tail[memchr::memchr(b';', tail.as_bytes())? + 1..];
    loop {
        let end = memchr::memchr(b';', rest.as_bytes());
        let p = &rest[..end.unwrap_or(rest.len())];
        let (k, v) = match memchr::memchr(b'=', p.as_bytes()) {
            Some(i) => (&p[..i], &p[i + 1..]),
            None => (p, ""),
        };
        if k.trim_ascii().eq_ignore_ascii_case(param) {
            return Some(v.trim_ascii());
        }
        rest = &rest[end? + 1..];
    }
}

/// The part of a name-addr header value after the address (where header
/// parameters live).
fn after_addr(value: &str) -> &str {
    let bytes = value.as_bytes();
    let mut i = 0;
    // Outside quotes: the next quote or `<`; inside: the next `\\` or quote.
    while let Some(at) = memchr::memchr2(b'"', b'<', &bytes[i..]) {
        i += at;
        if bytes[i] == b'<' {
            return memchr::memchr(b'>', &bytes[i..]).map_or("", |j| &value[i + j + 1..]);
        }
        i += 1;
        loop {
            let Some(at) = memchr::memchr2(b'\\', b'"', &bytes[i..]) else {
                return value; // an unclosed quote: no address after it
            };
            i += at + 1;
            if bytes[i - 1] == b'"' {
                break;
            }
            i += 1; // skips the escaped byte
            if i >= bytes.len() {
                return value;
            }
        }
    }
    value
}

/// Splits a list header value at commas outside quotes and `<>`, skipping
/// empty elements. Lazy: nothing is allocated.
pub fn split_list(value: &str) -> SplitList<'_> {
    SplitList { rest: Some(value) }
}

/// The elements of a list header value; see [`split_list`].
#[derive(Debug, Clone)]
pub struct SplitList<'a> {
    rest: Option<&'a str>,
}

impl<'a> Iterator for SplitList<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        loop {
            let value = self.rest?;
            let bytes = value.as_bytes();
            let (mut in_quote, mut angle) = (false, false);
            let mut cut = None;
            let mut i = 0;
            // Jump from one byte that can change the state to the next.
            while i < bytes.len() {
                let next = if in_quote {
                    memchr::memchr2(b'\\', b'"', &bytes[i..])
                } else if angle {
                    memchr::memchr2(b'>', b'"', &bytes[i..])
                } else {
                    memchr::memchr3(b',', b'"', b'<', &bytes[i..])
                };
                let Some(at) = next else { break };
                i += at;
                match (in_quote, bytes[i]) {
                    (true, b'\\') => i += 1, // skips the escaped byte
                    (true, _) => in_quote = false,
                    (false, b'"') => in_quote = true,
                    (false, b'<') => angle = true,
                    (false, b'>') => angle = false,
                    (false, _) => {
                        cut = Some(i);
                        break;
                    }
                }
                i += 1;
            }
            let part = match cut {
                Some(i) => {
                    self.rest = Some(&value[i + 1..]);
                    &value[..i]
                }
                None => {
                    self.rest = None;
                    value
                }
            };
            let part = part.trim_ascii();
            if !part.is_empty() {
                return Some(part);
            }
        }
    }
}

/// The reason phrase we send with a status code (RFC 3261 §21).
pub fn reason_phrase(code: u16) -> &'static str {
    match code {
        100 => "Trying",
        180 => "Ringing",
        183 => "Session Progress",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        423 => "Interval Too Brief",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        486 => "Busy Here",
        487 => "Request Terminated",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "Version Not Supported",
        _ => "Error",
    }
}

/// `call-id` → `Call-ID`, `www-authenticate` → `WWW-Authenticate`. The
/// names this daemon sends are answered without allocating.
pub fn canonical_name(n: &str) -> std::borrow::Cow<'static, str> {
    use std::borrow::Cow;
    if let Some((_, wire)) = KNOWN_NAMES.iter().find(|(k, _)| *k == n) {
        return Cow::Borrowed(wire);
    }
    Cow::Owned(
        n.split('-')
            .map(|w| {
                let mut c = w.chars();
                c.next()
                    .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("-"),
    )
}

/// A Via header value (RFC 3261 §20.42), with LWS tolerated around `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    pub transport: String,
    pub host: String,
    pub port: Option<u16>,
    pub branch: Option<String>,
    pub received: Option<String>,
    /// `Some(None)` for a bare `rport` asking to be filled in.
    pub rport: Option<Option<u16>>,
}

/// A Via's parts as slices of its text, checked by [`Via::parse`]'s rules
/// without copying anything (`transport` as written, not upper-cased).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViaRef<'a> {
    pub transport: &'a str,
    pub host: &'a str,
    pub port: Option<u16>,
    pub branch: Option<&'a str>,
    pub received: Option<&'a str>,
    /// `Some(None)` for a bare `rport` asking to be filled in.
    pub rport: Option<Option<u16>>,
}

impl<'a> ViaRef<'a> {
    /// Every request's top Via is read here at least twice (its rules, and
    /// `received`/`rport` on the reply), so it is split by byte.
    pub fn parse(v: &'a str) -> Result<Self, &'static str> {
        use crate::uri::split_at;
        let (transport, rest) = {
            // "SIP / 2.0 / UDP host..." : three slash-separated tokens.
            let (name, rest) = split_at(v, b'/').ok_or("no protocol version")?;
            let (ver, rest) = split_at(rest, b'/').ok_or("no transport")?;
            if !name.trim_ascii().eq_ignore_ascii_case("SIP") || ver.trim_ascii() != "2.0" {
                return Err("protocol is not SIP/2.0");
            }
            let rest = rest.trim_ascii_start();
            let end = rest
                .bytes()
                .position(|b| b.is_ascii_whitespace())
                .ok_or("no sent-by")?;
            (&rest[..end], rest[end..].trim_ascii_start())
        };
        if transport.is_empty() || !transport.bytes().all(is_token_char) {
            return Err("bad transport");
        }
        let (sent_by, params) = split_at(rest, b';').unwrap_or((rest, ""));
        let (host, port) = crate::uri::split_host_port(sent_by.trim_ascii())?;
        let mut via = ViaRef {
            transport,
            host,
            port,
            branch: None,
            received: None,
            rport: None,
        };
        if !params.is_empty() {
            for (k, val) in crate::uri::params(params) {
                let (k, val) = (k.trim_ascii(), val.map(str::trim_ascii));
                if k.is_empty() {
                    return Err("empty Via parameter");
                } else if k.eq_ignore_ascii_case("branch") {
                    via.branch = val;
                } else if k.eq_ignore_ascii_case("received") {
                    via.received = val;
                } else if k.eq_ignore_ascii_case("rport") {
                    via.rport = Some(match val {
                        Some(n) => Some(n.parse().map_err(|_| "bad rport")?),
                        None => None,
                    });
                }
            }
        }
        Ok(via)
    }
}

impl Via {
    pub fn parse(v: &str) -> Result<Self, &'static str> {
        let p = ViaRef::parse(v)?;
        Ok(Via {
            transport: p.transport.to_ascii_uppercase(),
            host: p.host.to_owned(),
            port: p.port,
            branch: p.branch.map(str::to_owned),
            received: p.received.map(str::to_owned),
            rport: p.rport,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sip_whitespace_is_trimmed_from_values() {
        // Space and tab around a value go; a Unicode space is part of it.
        let raw = "OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\
Subject: \t \u{a0}hi\u{a0} \t\r\nl: 0\r\n\r\n";
        let m = parse(raw.as_bytes()).unwrap();
        assert_eq!(m.header("subject"), Some("\u{a0}hi\u{a0}"));
    }

    #[test]
    fn folded_compact_and_odd_spacing() {
        let raw = b"INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0\r\n\
TO :\r\n sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n\r\n\
MaX-fOrWaRdS: 0068\r\ni: abc\r\ncseq: 0009\r\n  INVITE\r\n\
Via  : SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;branch=390skdjuw\r\nf: <sip:a@b>;tag=1\r\nl: 3\r\n\r\nxyzEXTRA";
        let m = parse(raw).unwrap();
        assert_eq!(m.method(), Some("INVITE"));
        assert_eq!(m.call_id(), Some("abc"));
        assert_eq!(m.cseq(), Some((9, "INVITE")));
        assert_eq!(&m.body[..], b"xyz");
        let via = m.via().unwrap();
        assert_eq!(
            (via.transport.as_str(), via.host.as_str()),
            ("UDP", "192.0.2.2")
        );
        assert_eq!(via.branch.as_deref(), Some("390skdjuw"));
        assert_eq!(
            param_value(m.header("to").unwrap(), "tag"),
            Some("1918181833n")
        );
        m.validate().unwrap();
    }

    #[test]
    fn responses_and_serialisation_round_trip() {
        let raw = b"REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1;rport\r\n\
To: <sip:a@example.com>\r\nFrom: <sip:a@example.com>;tag=x\r\nCall-ID: c1\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n";
        let req = parse(raw).unwrap();
        let resp = req.response(200, "OK", Some("srv"));
        let again = parse(&resp.to_bytes()).unwrap();
        assert_eq!(again.status(), Some(200));
        assert_eq!(param_value(again.header("to").unwrap(), "tag"), Some("srv"));
        assert_eq!(again.via().unwrap().rport, Some(None));
        assert_eq!(again.cseq(), Some((1, "REGISTER")));
    }

    #[test]
    fn parameters_are_read_after_the_address_only() {
        let to = "\"A \\\"<x>;tag=no\" <sip:a@b;tag=uri>;tag=yes;Expires = 60";
        assert_eq!(param_value(to, "tag"), Some("yes"));
        assert_eq!(param_value(to, "expires"), Some("60"));
        assert_eq!(param_value("<sip:a@b;lr>", "lr"), None);
        assert_eq!(param_value("sip:a@b;lr", "lr"), Some(""));
        assert_eq!(
            param_value("SIP/2.0/UDP h;rport;branch=z9hG4bK1", "branch"),
            Some("z9hG4bK1")
        );
        assert_eq!(param_value("\"unclosed <sip:a@b>;tag=1", "tag"), Some("1"));
        assert_eq!(param_value("x;tag=1\\", "tag"), Some("1\\"));
    }

    #[test]
    fn list_headers_split_outside_quotes_and_brackets() {
        let parts: Vec<&str> = split_list("\"a, b\" <sip:x@y;p=1,2>;q=0.5, <sip:z@w>").collect();
        assert_eq!(parts, ["\"a, b\" <sip:x@y;p=1,2>;q=0.5", "<sip:z@w>"]);
    }
}
