//! The CRM API service.
//!
//! It is written only from the feed: [`consume`] applies interactions to the
//! [`Store`] (SQLite or PostgreSQL) exactly once in effect, and [`Crm`]
//! serves the REST API over that store. It never talks SIP or IMAP; to act,
//! it will write Commands to the feed.

mod api;
mod consumer;
mod cursor;
pub mod metrics;
mod store;
#[cfg(feature = "testing")]
pub mod testing;

use std::time::Duration;

use axum::Router;
use switchboard_service::{Readiness, service_router};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use api::{ApiDoc, openapi_json};
pub use consumer::run as consume;
pub use store::{Applied, Backend, ContactRow, Store, StoreError};

/// The CRM API's HTTP side.
#[derive(Debug, Clone)]
pub struct Crm {
    store: Store,
    readiness: Readiness,
}

impl Crm {
    pub fn new(store: Store) -> Self {
        let readiness = Readiness::default();
        readiness.set("database", Ok(()));
        Self { store, readiness }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    /// Every route: the API, its OpenAPI document, health and metrics.
    pub fn router(&self) -> Router {
        service_router(
            "crm",
            api::routes(self.store.clone()),
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
        let store = self.store.clone();
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
