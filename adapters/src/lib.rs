//! Channel adapters: everything that turns a non-voice channel into
//! [`switchboard_storage::Interaction`]s. Adapters know nothing of SIP and
//! never talk to the CRM except through the feed.
//!
//! Today this holds the site widget's lead form; email, messengers and lead
//! services join it behind one adapter trait as their issues land.

pub mod contact;
pub mod widget;
