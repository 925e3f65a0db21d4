//! Text that shares the buffer of the message it was parsed from.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::Arc;

/// A message's piece of text — a header value, a method, a reason phrase.
///
/// A parsed message keeps its head in one shared buffer and each field as
/// a range of it, so parsing allocates once for all the fields, and a
/// response copying a request's Via, From, To, Call-ID and CSeq copies no
/// bytes. Text of our own is static or a `String`; cloning that one
/// allocates, as cloning a `String` would.
#[derive(Clone)]
pub struct Text(Repr);

#[derive(Clone)]
enum Repr {
    Static(&'static str),
    Shared { buf: Arc<str>, start: u32, end: u32 },
    Owned(String),
}

impl Text {
    /// Text known when the program is built; never allocates.
    pub const fn from_static(text: &'static str) -> Self {
        Text(Repr::Static(text))
    }

    /// `part`, which must lie within `buf`, as a range of `buf`.
    ///
    /// # Panics
    /// When `part` is not a slice of `buf` (a bug in the caller).
    pub(crate) fn slice(buf: &Arc<str>, part: &str) -> Self {
        let start = (part.as_ptr() as usize)
            .checked_sub(buf.as_ptr() as usize)
            .filter(|s| s + part.len() <= buf.len())
            .expect("a slice of the message's buffer");
        // Messages are at most MAX_MESSAGE bytes, far below u32::MAX.
        let start = u32::try_from(start).expect("message fits u32");
        let end = start + u32::try_from(part.len()).expect("message fits u32");
        Text(Repr::Shared {
            buf: Arc::clone(buf),
            start,
            end,
        })
    }

    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Static(s) => s,
            Repr::Shared { buf, start, end } => &buf[*start as usize..*end as usize],
            Repr::Owned(s) => s,
        }
    }

    /// The text as an owned `String`, for changing it.
    pub fn into_string(self) -> String {
        match self.0 {
            Repr::Owned(s) => s,
            other => Text(other).as_str().to_owned(),
        }
    }
}

impl Default for Text {
    fn default() -> Self {
        Text::from_static("")
    }
}

impl Deref for Text {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl From<&'static str> for Text {
    fn from(text: &'static str) -> Self {
        Text::from_static(text)
    }
}

impl From<String> for Text {
    fn from(text: String) -> Self {
        Text(Repr::Owned(text))
    }
}

/// Text to be cloned often (a cached header value): clones share it.
impl From<Arc<str>> for Text {
    fn from(buf: Arc<str>) -> Self {
        let end = u32::try_from(buf.len()).expect("SIP text fits u32");
        Text(Repr::Shared { buf, start: 0, end })
    }
}

impl From<Text> for String {
    fn from(text: Text) -> Self {
        text.into_string()
    }
}

impl PartialEq for Text {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Text {}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<Text> for str {
    fn eq(&self, other: &Text) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<Text> for &str {
    fn eq(&self, other: &Text) -> bool {
        *self == other.as_str()
    }
}

impl Hash for Text {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_share_the_buffer_and_compare_by_text() {
        let buf: Arc<str> = Arc::from("Via: SIP/2.0/UDP a\r\nTo: <sip:b@c>");
        let via = Text::slice(&buf, &buf[5..18]);
        let to = Text::slice(&buf, &buf[24..]);
        assert_eq!(via, "SIP/2.0/UDP a");
        assert_eq!(to.as_str(), "<sip:b@c>");
        assert_eq!(Arc::strong_count(&buf), 3);
        assert_eq!(to.clone(), Text::from("<sip:b@c>".to_owned()));
        assert_eq!(Text::from_static("x").into_string(), "x");
    }

    #[test]
    #[should_panic(expected = "a slice of the message's buffer")]
    fn a_slice_of_another_buffer_is_a_bug() {
        let buf: Arc<str> = Arc::from("abc");
        let other = String::from("abcdef");
        let _ = Text::slice(&buf, &other[1..]);
    }
}
