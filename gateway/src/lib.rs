//! The gateway daemon's library: everything that faces customers' channels.
//!
//! It serves the site widget's lead form and chat over HTTP, routes contacts to
//! managers, terminates SIP with its media relay, and runs the channel
//! adapters (email, messengers, lead services) with their webhooks and the
//! Commands the CRM sends them; WebRTC joins it as its issue lands.

pub mod channels;
mod chat;
pub mod dispatch;
pub mod hooks;
mod http;
pub mod media;
pub mod metrics;
pub mod sip;

use std::str::FromStr;
use std::time::Duration;

use axum::Router;
use switchboard_config::GatewayConfig;
use switchboard_service::{Readiness, service_router};
use switchboard_storage::FeedLog;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use http::{ApiDoc, openapi_json};

/// The gateway's HTTP side.
#[derive(Debug, Clone)]
pub struct Gateway {
    config: GatewayConfig,
    country: phonenumber::country::Id,
    feed: FeedLog,
    readiness: Readiness,
    dispatcher: Option<dispatch::Dispatcher>,
    hooks: Option<hooks::Hooks>,
    chat: Option<chat::ChatState>,
}

impl Gateway {
    /// `config` must have passed validation (the country code parses).
    pub fn new(config: &GatewayConfig, feed: FeedLog) -> Self {
        let country = phonenumber::country::Id::from_str(&config.default_country)
            .unwrap_or(phonenumber::country::Id::RU);
        let readiness = Readiness::default();
        readiness.set("feed", Ok(()));
        Self {
            config: config.clone(),
            country,
            feed,
            readiness,
            dispatcher: None,
            hooks: None,
            chat: None,
        }
    }

    /// Routes contacts with `dispatcher` and serves its manager endpoints.
    pub fn with_dispatcher(mut self, dispatcher: dispatch::Dispatcher) -> Self {
        self.dispatcher = Some(dispatcher);
        self
    }

    /// Answers the adapters' webhooks at `/v1/hooks/<name>`.
    pub fn with_hooks(mut self, hooks: hooks::Hooks) -> Self {
        self.hooks = Some(hooks);
        self
    }

    /// Serves the chat widget (`/widget.js`, `/v1/chat/<line>/ws`); open
    /// chats are closed when `shutdown` fires.
    pub fn with_chat(
        mut self,
        chat: switchboard_adapters::messengers::Chat,
        shutdown: CancellationToken,
    ) -> Self {
        self.chat = Some(chat::ChatState { chat, shutdown });
        self
    }

    /// The routing dispatcher, when routing is configured.
    pub fn dispatcher(&self) -> Option<&dispatch::Dispatcher> {
        self.dispatcher.as_ref()
    }

    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    /// Every route: leads, the OpenAPI document, health and metrics.
    pub fn router(&self) -> Router {
        service_router("gateway", http::routes(self), self.readiness.clone())
    }

    /// `/readyz` also reports each channel line's health (`email:sales`).
    pub fn watch_channels(
        &self,
        health: switchboard_adapters::Health,
        shutdown: CancellationToken,
    ) {
        let readiness = self.readiness.clone();
        tokio::spawn(async move {
            loop {
                for (line, state) in health.snapshot() {
                    readiness.set(&line, state);
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        });
    }

    /// Serves until `shutdown`; `/readyz` follows the feed writer.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        let feed = self.feed.clone();
        self.readiness.probe(
            "feed",
            Duration::from_secs(1),
            shutdown.clone(),
            move || {
                let open = feed.is_open();
                async move {
                    if open {
                        Ok(())
                    } else {
                        Err("feed writer stopped".to_owned())
                    }
                }
            },
        );
        switchboard_service::serve(listener, self.router(), shutdown).await
    }
}
