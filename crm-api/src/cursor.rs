//! Opaque pagination cursors: where the previous page ended, in the list's
//! order (`occurred_at` descending, then id descending).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// Microseconds since the epoch of the last item returned.
    pub occurred_at: i64,
    /// Id of the last item returned.
    pub id: String,
}

impl Cursor {
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}:{}", self.occurred_at, self.id))
    }

    /// `None` for anything this server did not produce.
    pub fn decode(text: &str) -> Option<Self> {
        if text.len() > 200 {
            return None;
        }
        let raw = URL_SAFE_NO_PAD.decode(text).ok()?;
        let raw = String::from_utf8(raw).ok()?;
        let (t, id) = raw.split_once(':')?;
        let id = uuid::Uuid::parse_str(id).ok()?;
        Some(Self {
            occurred_at: t.parse().ok()?,
            id: id.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let c = Cursor {
            occurred_at: 1_764_000_000_000_000,
            id: uuid::Uuid::now_v7().to_string(),
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        for bad in ["", "!!!", "MTIz", &URL_SAFE_NO_PAD.encode("12:not-a-uuid")] {
            assert_eq!(Cursor::decode(bad), None, "{bad}");
        }
    }
}
