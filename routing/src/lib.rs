//! The distribution engine: who gets each contact.
//!
//! Pure logic, no sockets and no clock of its own: [`decide`] takes the
//! compiled configuration ([`Directory`]), the interaction's request (queue,
//! workload, responsible manager, how long it has waited, the time now) and
//! a [`Snapshot`] of the managers' state, and returns a [`Decision`] with its
//! reason and deadline. [`SlaTracker`] is the response-deadline state
//! machine, driven by the same explicit time. The gateway owns the state
//! store, the clock and the feed; this crate only decides.

mod directory;
mod engine;
mod schedule;
mod sla;

pub use directory::{
    Directory, DirectoryError, ManagerDef, ManagerIx, QueueDef, QueueIx, RouteKey, workload_of,
};
pub use engine::{Decision, Outcome, Reason, Request, Snapshot, decide};
pub use schedule::{Schedule, Shifts};
pub use sla::{Breach, Phase, SlaTracker};
pub use switchboard_storage::state::Millis;
