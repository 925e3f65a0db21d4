//! SIP without sockets (RFC 3261 and friends): messages, URIs and
//! addresses, digest authentication, and the registrar's rules. The
//! gateway's transports and services drive this code with bytes and time.
//!
//! The parser is our own rather than `rsip`'s: on the RFC 4475/5118
//! torture corpus rsip 0.4 refused 17 of 24 valid messages and accepted 11
//! of 20 invalid ones (docs/decisions.md has the measurement).

pub mod addr;
pub mod digest;
pub mod message;
pub mod registrar;
mod text;
pub mod transaction;
pub mod uri;

pub use addr::{NameAddr, NameAddrRef};
pub use message::{Message, ParseError, StartLine, Via, ViaRef, parse};
pub use text::Text;
pub use uri::{Uri, UriRef};

/// Methods the gateway implements (the `Allow` header of 405/501).
pub const ALLOWED_METHODS: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, UPDATE, INFO";

/// `s` in ASCII lower case, borrowed when it already is.
pub(crate) fn ascii_lowercase(s: &str) -> std::borrow::Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(s.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// Whether the method is one we implement.
pub fn is_known_method(method: &str) -> bool {
    matches!(
        method,
        "INVITE" | "ACK" | "CANCEL" | "BYE" | "OPTIONS" | "REGISTER" | "UPDATE" | "INFO"
    )
}
