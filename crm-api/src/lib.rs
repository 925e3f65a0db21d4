//! The CRM API service.
//!
//! It is written from the feed: [`consume`] applies interactions to the
//! [`Store`] (SQLite or PostgreSQL) exactly once in effect — matching each to
//! a client by identity or making a potential client, following routing
//! decisions with ownership — and publishes owner changes on the owners
//! topic. [`Crm`] serves the REST API: clients, deals, tasks, tickets,
//! notes, files and the client card, each visible to its owner, the owner's
//! head of department and administrators. To act on a channel (reply,
//! click-to-call) it writes Commands to the feed; it never talks SIP or IMAP.

mod api;
mod consumer;
mod cursor;
pub mod metrics;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use switchboard_service::{Readiness, service_router};
use switchboard_storage::FeedLog;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use api::{ApiDoc, openapi_json};
pub use consumer::run as consume;
pub use store::{
    Applied, Backend, ContactRow, Principal, Role, Snapshot, Store, StoreError, User, micros,
};

/// The CRM API's HTTP side.
#[derive(Debug, Clone)]
pub struct Crm {
    state: api::AppState,
    readiness: Readiness,
}

impl Crm {
    /// `feed` is where owner changes and Commands go (none: the API refuses
    /// to act); attachments are kept under `files`.
    pub fn new(store: Store, feed: Option<FeedLog>, files: PathBuf) -> Self {
        let readiness = Readiness::default();
        readiness.set("database", Ok(()));
        Self {
            state: api::AppState {
                store,
                feed,
                tokens: Arc::default(),
                files,
                data_dir: None,
            },
            readiness,
        }
    }

    /// Serves call recordings from `<data_dir>/recordings` (the gateway's
    /// data directory: the same machine or a shared volume).
    pub fn with_data_dir(mut self, data_dir: PathBuf) -> Self {
        self.state.data_dir = Some(data_dir);
        self
    }

    pub fn store(&self) -> &Store {
        &self.state.store
    }

    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    /// Every route: the API, its OpenAPI document, health and metrics.
    pub fn router(&self) -> Router {
        service_router(
            "crm",
            api::routes(self.state.clone()),
            self.readiness.clone(),
        )
    }

    /// Serves until `shutdown`, checking the database every few seconds for
    /// `/readyz`.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        let store = self.state.store.clone();
        self.readiness.probe(
            "database",
            Duration::from_secs(5),
            shutdown.clone(),
            move || {
                let store = store.clone();
                async move { store.ping().await.map_err(|e| e.to_string()) }
            },
        );
        switchboard_service::serve(listener, self.router(), shutdown).await
    }
}
