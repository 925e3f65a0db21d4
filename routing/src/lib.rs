//! The distribution engine: given a contact, its responsible manager and the
//! managers' presence, load, skills and schedules, decide who gets it — pure
//! functions and state machines, no sockets, no clocks of their own.
//!
//! Empty until the routing issue lands; nothing depends on it yet.
