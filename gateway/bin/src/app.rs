//! Builds the services a role needs, runs them, and shuts them down in
//! order on SIGTERM/SIGINT: stop accepting HTTP and drain requests, ship the
//! outbox to Kafka, let the CRM consumer finish its batch — all within
//! `shutdown.grace_period`. A second signal exits at once.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use switchboard_adapters::blobs::Blobs;
use switchboard_adapters::email::Email;
use switchboard_adapters::inbox::Inbox;
use switchboard_adapters::messengers;
use switchboard_adapters::{AdapterContext, Health};
use switchboard_config::{Config, ConfigError, FeedBackend, redact_url};
use switchboard_crm::{Crm, Store};
use switchboard_gateway::Gateway;
use switchboard_gateway::channels::{COMMANDS_GROUP, Channels};
use switchboard_gateway::dispatch::{Dispatcher, ROUTING_GROUP};
use switchboard_gateway::sip::{SipReloader, SipServer};
use switchboard_kafka::{KafkaSource, Relay, RelayOptions};
use switchboard_storage::{FeedLog, LogOptions, Topic};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Which services this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Both,
    Gateway,
    CrmApi,
}

impl Role {
    fn gateway(self) -> bool {
        matches!(self, Role::Both | Role::Gateway)
    }

    fn crm(self) -> bool {
        matches!(self, Role::Both | Role::CrmApi)
    }
}

/// The embedded CRM consumer group on the SQLite feed.
const CRM_GROUP: &str = "crm";

/// Checks what only the backends can check (librdkafka's view of
/// `feed.kafka.properties`), without connecting anywhere.
pub(crate) fn check_backends(config: &Config) -> Result<(), ConfigError> {
    if config.feed.backend == FeedBackend::Kafka {
        switchboard_kafka::check_config(&config.feed).map_err(|e| ConfigError::Invalid {
            key: "feed.kafka.properties".into(),
            value: None,
            expected: format!("properties librdkafka accepts ({e})"),
            origin: "the configuration".into(),
        })?;
    }
    Ok(())
}

async fn bind(addr: SocketAddr, key: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({key})"))
}

/// Runs until a signal, then shuts down within the grace period.
pub(crate) async fn run(
    config: Config,
    config_file: Option<std::path::PathBuf>,
    role: Role,
) -> anyhow::Result<()> {
    let data_dir = &config.node.data_dir;
    std::fs::create_dir_all(data_dir).with_context(|| {
        format!(
            "cannot create the data directory {} (node.data_dir)",
            data_dir.display()
        )
    })?;
    let log_options = LogOptions::from(&config.feed.sqlite);

    // Everything that can fail on bad settings happens before serving.
    // Every role writes the local log: the gateway its interactions, the CRM
    // owner changes and commands (on Kafka, it is each node's outbox).
    let feed = {
        let path = config.node.feed_path();
        FeedLog::open(&path, log_options.clone())
            .with_context(|| format!("cannot open the feed log {}", path.display()))?
    };
    let gateway_listener = if role.gateway() {
        Some(bind(config.gateway.http_listen, "gateway.http_listen").await?)
    } else {
        None
    };
    let crm_listener = if role.crm() {
        Some(bind(config.crm.http_listen, "crm.http_listen").await?)
    } else {
        None
    };
    let store = if role.crm() {
        let url = config.crm.resolved_database_url(&config.node);
        Some(
            Store::connect(&url, config.crm.max_connections)
                .await
                .with_context(|| {
                    format!(
                        "cannot open the CRM store {} (crm.database_url)",
                        redact_url(&url)
                    )
                })?,
        )
    } else {
        None
    };

    let http_stop = CancellationToken::new();
    let relay_stop = CancellationToken::new();
    let consumer_stop = CancellationToken::new();
    let mut servers: Vec<(&str, JoinHandle<std::io::Result<()>>)> = Vec::new();
    let mut relay = None;
    let mut consumer = None;

    let mut routing = Vec::new();
    let mut sip_task = None;
    let mut sip_reload = None;
    let mut relay_options = RelayOptions::default();
    if let Some(listener) = gateway_listener {
        let feed = &feed;
        tracing::info!(service = "gateway", addr = %listener.local_addr()?, "listening");
        let mut gateway = Gateway::new(&config.gateway, feed.clone());
        if !config.routing.managers.is_empty() {
            let dispatcher = Dispatcher::new(&config.routing, feed.clone())
                .await
                .context("cannot start routing (routing.state, routing.redis_url)")?;
            routing.push(tokio::spawn(
                dispatcher
                    .clone()
                    .run(Dispatcher::source(feed)?, http_stop.clone()),
            ));
            if config.feed.backend == FeedBackend::Kafka {
                routing.push(spawn_owner_follower(
                    &config,
                    dispatcher.clone(),
                    http_stop.clone(),
                )?);
            }
            relay_options.retain_for.push(ROUTING_GROUP.to_owned());
            tracing::info!(
                managers = config.routing.managers.len(),
                queues = config.routing.queues.len(),
                state = ?config.routing.state,
                "routing contacts"
            );
            gateway = gateway.with_dispatcher(dispatcher);
        }
        if config.sip.enabled {
            let country = std::str::FromStr::from_str(&config.gateway.default_country)
                .unwrap_or(phonenumber::country::Id::RU);
            let sip = SipServer::bind(
                &config.sip,
                gateway.dispatcher().cloned(),
                Some(feed.clone()),
                country,
                Some((config.media.clone(), config.node.data_dir.clone())),
            )
            .await
            .context("cannot start SIP (sip.udp_listen, sip.tcp_listen)")?;
            for addr in sip.udp_addrs() {
                tracing::info!(service = "sip", transport = "udp", %addr, "listening");
            }
            for addr in sip.tcp_addrs() {
                tracing::info!(service = "sip", transport = "tcp", %addr, "listening");
            }
            for addr in sip.tls_addrs() {
                tracing::info!(service = "sip", transport = "tls", %addr, "listening");
            }
            tracing::info!(users = config.sip.users.len(), realm = %config.sip.realm, "SIP registrar up");
            sip_reload = Some(spawn_sip_reload(sip.reloader(), config_file.clone()));
            sip_task = Some(tokio::spawn(sip.serve(http_stop.clone())));
        }
        if !config.email.mailboxes.is_empty() || !config.channels.is_empty() {
            let country = std::str::FromStr::from_str(&config.gateway.default_country)
                .unwrap_or(phonenumber::country::Id::RU);
            let inbox = Inbox::open(&config.node.data_dir.join("inbox.sqlite"))
                .context("cannot open the webhook inbox (node.data_dir)")?;
            let ctx = AdapterContext {
                shutdown: http_stop.clone(),
                feed: feed.clone(),
                data_dir: config.node.data_dir.clone(),
                health: Health::default(),
                inbox,
            };
            gateway.watch_channels(ctx.health.clone(), http_stop.clone());
            let mut channels = Channels::new(ctx);
            let blobs = Blobs::open(config.node.data_dir.join("attachments"))
                .context("cannot open the attachment store (node.data_dir)")?;
            if !config.email.mailboxes.is_empty() {
                let email =
                    Email::new(&config.email, &config.node.data_dir, blobs.clone(), country)
                        .context("cannot start the email channel (email.mailboxes)")?;
                channels.add(std::sync::Arc::new(email));
                tracing::info!(mailboxes = config.email.mailboxes.len(), "email channel up");
            }
            for adapter in messengers::build(&config.channels, &blobs, country)
                .context("cannot start the messengers (channels)")?
            {
                channels.add(adapter);
            }
            for c in &config.channels {
                tracing::info!(line = c.name(), kind = c.kind(), "channel up");
            }
            let members = config
                .sip
                .users
                .iter()
                .map(|u| {
                    Ok(messengers::Member {
                        extension: u.extension.clone(),
                        password: u.resolve_password()?,
                    })
                })
                .collect::<Result<Vec<_>, switchboard_config::ConfigError>>()
                .context("cannot read the extensions' passwords (sip.users)")?;
            if let Some(chat) = messengers::Chat::new(
                &config.channels,
                members,
                &config.node.data_dir,
                channels.context().inbox.clone(),
            )
            .context("cannot start the chat widget (channels)")?
            {
                channels.add(chat.adapter());
                gateway = gateway.with_chat(chat, http_stop.clone());
            }
            gateway = gateway.with_hooks(channels.hooks());
            routing.push(match config.feed.backend {
                FeedBackend::Sqlite => {
                    tokio::spawn(channels.run(feed.consumer(COMMANDS_GROUP, &[Topic::Commands])?))
                }
                FeedBackend::Kafka => tokio::spawn(channels.run(KafkaSource::new(
                    &config.feed,
                    COMMANDS_GROUP,
                    &[Topic::Commands],
                )?)),
            });
        }
        servers.push((
            "gateway",
            tokio::spawn(gateway.serve(listener, http_stop.clone())),
        ));
    }
    if config.feed.backend == FeedBackend::Kafka {
        let r = Relay::new(feed.clone(), config.feed.clone(), relay_options);
        relay = Some(tokio::spawn(r.run(relay_stop.clone())));
    }
    if let (Some(store), Some(listener)) = (&store, crm_listener) {
        consumer = Some(match config.feed.backend {
            FeedBackend::Sqlite => {
                let source = feed.consumer(CRM_GROUP, &[Topic::Interactions])?;
                tokio::spawn(switchboard_crm::consume(
                    store.clone(),
                    source,
                    Some(feed.clone()),
                    consumer_stop.clone(),
                ))
            }
            FeedBackend::Kafka => {
                if tokio::time::timeout(
                    Duration::from_secs(5),
                    switchboard_kafka::ensure_topics(&config.feed),
                )
                .await
                .map_or(true, |r| r.is_err())
                {
                    tracing::warn!("kafka is not reachable yet; the CRM will catch up once it is");
                }
                let source = KafkaSource::new(
                    &config.feed,
                    &config.feed.kafka.crm_group,
                    &[Topic::Interactions],
                )?;
                tokio::spawn(switchboard_crm::consume(
                    store.clone(),
                    source,
                    Some(feed.clone()),
                    consumer_stop.clone(),
                ))
            }
        });
        tracing::info!(service = "crm-api", addr = %listener.local_addr()?, "listening");
        let crm = Crm::new(
            store.clone(),
            Some(feed.clone()),
            data_dir.join("attachments"),
        )
        .with_data_dir(data_dir.clone());
        servers.push((
            "crm-api",
            tokio::spawn(crm.serve(listener, http_stop.clone())),
        ));
    }

    notify(&[sd_notify::NotifyState::Ready]);
    let watchdog = spawn_watchdog(Some(feed.clone()));
    tracing::info!(
        feed = ?config.feed.backend,
        data_dir = %data_dir.display(),
        "switchboard is ready"
    );

    let reason = wait_for_stop(&mut servers, &mut relay).await;
    let grace = config.shutdown.grace_period;
    tracing::info!(%reason, grace = ?grace, "shutting down");
    notify(&[sd_notify::NotifyState::Stopping]);
    tokio::spawn(async {
        // A second signal: stop waiting.
        wait_for_signal().await;
        tracing::warn!("second signal; exiting without draining");
        std::process::exit(130);
    });
    let deadline = Instant::now() + grace;

    http_stop.cancel();
    for (name, server) in servers {
        match tokio::time::timeout_at(deadline, server).await {
            Ok(Ok(Ok(()))) => tracing::info!(service = name, "http drained"),
            Ok(Ok(Err(e))) => tracing::error!(service = name, error = %e, "http server failed"),
            Ok(Err(e)) => tracing::error!(service = name, error = %e, "http server panicked"),
            Err(_) => tracing::warn!(service = name, "grace period over before http drained"),
        }
    }
    if let Some(task) = sip_task
        && tokio::time::timeout_at(deadline, task).await.is_err()
    {
        tracing::warn!("grace period over before SIP stopped");
    }
    if let Some(task) = sip_reload {
        task.abort();
    }
    for task in routing {
        if tokio::time::timeout_at(deadline, task).await.is_err() {
            tracing::warn!("grace period over before routing stopped");
        }
    }
    relay_stop.cancel();
    if let Some(relay) = relay {
        match tokio::time::timeout_at(deadline, relay).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::error!(error = %e, "relay failed"),
            Ok(Err(e)) => tracing::error!(error = %e, "relay panicked"),
            Err(_) => tracing::warn!(
                "grace period over before the outbox was shipped; the rest goes out at the next start"
            ),
        }
    }
    consumer_stop.cancel();
    if let Some(consumer) = consumer
        && tokio::time::timeout_at(deadline, consumer).await.is_err()
    {
        tracing::warn!(
            "grace period over before the CRM consumer finished its batch; it is re-read at the next start"
        );
    }
    if let Some(store) = store {
        store.close().await;
    }
    watchdog.abort();
    tracing::info!("stopped");
    Ok(())
}

/// On SIGHUP, re-reads the configuration file and swaps the SIP users;
/// registrations stay. A bad file is logged and the old users kept.
fn spawn_sip_reload(reloader: SipReloader, file: Option<std::path::PathBuf>) -> JoinHandle<()> {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut hup) = signal(SignalKind::hangup()) else {
                tracing::error!("cannot install the SIGHUP handler");
                return;
            };
            while hup.recv().await.is_some() {
                match Config::load(file.as_deref()).map(|c| reloader.reload(&c.sip)) {
                    Ok(Ok(users)) => tracing::info!(users, "SIP users reloaded"),
                    Ok(Err(e)) | Err(e) => {
                        tracing::error!(error = %e, "configuration not reloaded; keeping the previous SIP users");
                    }
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = (reloader, file);
        }
    })
}

/// On the Kafka backend, owner changes the CRM publishes reach this node
/// through Kafka: every gateway node follows the whole (compacted) owners
/// topic with a group of its own.
fn spawn_owner_follower(
    config: &Config,
    dispatcher: Dispatcher,
    stop: CancellationToken,
) -> anyhow::Result<JoinHandle<()>> {
    let node = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".to_owned());
    let mut source = KafkaSource::new(
        &config.feed,
        &format!("gateway-owners-{node}"),
        &[Topic::Owners],
    )?;
    Ok(tokio::spawn(async move {
        use switchboard_storage::FeedSource;
        loop {
            let batch = tokio::select! {
                () = stop.cancelled() => return,
                b = source.poll(500, Duration::from_millis(500)) => b,
            };
            match batch {
                Ok(batch) => {
                    for r in &batch {
                        match serde_json::from_slice::<switchboard_storage::OwnerChange>(&r.value) {
                            Ok(change) => dispatcher.apply_owner(&change).await,
                            Err(e) => tracing::warn!(error = %e, "owner record skipped"),
                        }
                    }
                    let _ = source.commit(&batch).await;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "owners not readable yet");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }))
}

/// Waits for SIGTERM/SIGINT, or for a service to stop on its own (which
/// only happens on failure); returns why.
async fn wait_for_stop(
    servers: &mut [(&str, JoinHandle<std::io::Result<()>>)],
    relay: &mut Option<JoinHandle<Result<(), switchboard_storage::FeedError>>>,
) -> String {
    let server_exit = futures_first(servers);
    let relay_exit = async {
        match relay.as_mut() {
            Some(r) => match r.await {
                Ok(Ok(())) => "the relay stopped".to_owned(),
                Ok(Err(e)) => format!("the relay failed: {e}"),
                Err(e) => format!("the relay panicked: {e}"),
            },
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        signal = wait_for_signal() => format!("received {signal}"),
        why = server_exit => why,
        why = relay_exit => {
            *relay = None;
            why
        }
    }
}

/// The first HTTP server to end, and how.
async fn futures_first(servers: &mut [(&str, JoinHandle<std::io::Result<()>>)]) -> String {
    if servers.is_empty() {
        return std::future::pending().await;
    }
    let (result, index, _) = futures::future::select_all(servers.iter_mut().map(|(_, h)| h)).await;
    let name = servers[index].0;
    match result {
        Ok(Ok(())) => format!("{name} http server stopped"),
        Ok(Err(e)) => format!("{name} http server failed: {e}"),
        Err(e) => format!("{name} http server panicked: {e}"),
    }
}

async fn wait_for_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "ctrl-c"
    }
}

fn notify(state: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// Pings systemd's watchdog at half its interval while the feed writer (the
/// part that must never silently stop) is alive.
fn spawn_watchdog(feed: Option<FeedLog>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let Some(interval) = sd_notify::watchdog_enabled() else {
            return;
        };
        loop {
            tokio::time::sleep(interval / 2).await;
            if feed.as_ref().is_none_or(FeedLog::is_open) {
                notify(&[sd_notify::NotifyState::Watchdog]);
            } else {
                tracing::error!("feed writer stopped; withholding the watchdog ping");
            }
        }
    })
}
