//! What every Switchboard HTTP service shares, so the gateway and the CRM
//! API answer alike: one error body (`{"error": {"code", "message"}}`),
//! request bodies read within a limit (413) and decoded as JSON or a form
//! (400/415), `/healthz`, `/readyz` and `/metrics`, per-route request
//! metrics, and serving until a shutdown token fires.

mod body;
mod error;
pub mod metrics;
mod ops;

pub use body::{BodyLimit, JsonOrForm};
pub use error::{ApiError, ErrorBody, ErrorDetail};
pub use ops::{Readiness, openapi_is_checked_in, openapi_json, ops_router, serve, service_router};
