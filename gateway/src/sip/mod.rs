//! SIP: transports, the registrar with digest authentication, and abuse
//! limits. The protocol rules live in the sans-IO `switchboard-sip` crate;
//! this module owns sockets, time and shared state.

pub mod b2bua;
pub mod core;
pub mod guard;
pub mod location;
mod redis_location;
mod transport;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use switchboard_config::{ConfigError, LocationBackend, SipConfig};
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;

pub use self::core::{Core, CoreContext, Users};
pub use location::{AnyLocation, Location, MemoryLocation, Transport};
pub use redis_location::RedisLocation;

use crate::dispatch::Dispatcher;
use switchboard_storage::FeedLog;

#[derive(Debug, thiserror::Error)]
pub enum SipError {
    #[error("cannot listen for SIP on {transport} {addr}: {source}")]
    Bind {
        transport: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot reach the SIP location store (sip.redis_url): {0}")]
    Location(String),
}

/// The bound SIP listeners and the handler they share.
#[derive(Debug)]
pub struct SipServer {
    core: Arc<Core<AnyLocation>>,
    udp: Vec<Arc<UdpSocket>>,
    tcp: Vec<TcpListener>,
    tcp_idle: Duration,
}

impl SipServer {
    /// Binds every configured listener.
    pub async fn bind(
        cfg: &SipConfig,
        dispatcher: Option<Dispatcher>,
        feed: Option<FeedLog>,
        country: phonenumber::country::Id,
    ) -> Result<Self, SipError> {
        let users = Users::from_config(cfg)?;
        let mut udp = Vec::new();
        for addr in &cfg.udp_listen {
            let socket = UdpSocket::bind(addr)
                .await
                .map_err(|source| SipError::Bind {
                    transport: "UDP",
                    addr: *addr,
                    source,
                })?;
            udp.push(Arc::new(socket));
        }
        let mut tcp = Vec::new();
        for addr in &cfg.tcp_listen {
            // Port 0 for both: TCP takes the port UDP got, as phones expect.
            let addr = match (addr.port(), udp.first()) {
                (0, Some(u))
                    if addr.ip() == u.local_addr().map(|a| a.ip()).unwrap_or(addr.ip()) =>
                {
                    u.local_addr().unwrap_or(*addr)
                }
                _ => *addr,
            };
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| SipError::Bind {
                    transport: "TCP",
                    addr,
                    source,
                })?;
            tcp.push(listener);
        }
        let local = udp
            .first()
            .and_then(|s| s.local_addr().ok())
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 5060)));
        let host = if cfg.advertised_host.is_empty() {
            local.ip().to_string()
        } else {
            cfg.advertised_host.clone()
        };
        let ctx = CoreContext {
            local,
            host,
            dispatcher,
            feed,
            country,
        };
        let location = match cfg.location {
            LocationBackend::Memory => AnyLocation::Memory(MemoryLocation::default()),
            LocationBackend::Redis => AnyLocation::Redis(
                RedisLocation::connect(&cfg.redis_url, &cfg.redis_prefix)
                    .await
                    .map_err(|e| SipError::Location(e.to_string()))?,
            ),
        };
        let core = Arc::new(Core::new(cfg, users, location, ctx));
        if let Some(socket) = udp.first() {
            core.set_socket(Arc::clone(socket));
        }
        Ok(Self {
            core,
            udp,
            tcp,
            tcp_idle: cfg.tcp_idle_timeout,
        })
    }

    pub fn udp_addrs(&self) -> Vec<SocketAddr> {
        self.udp
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .collect()
    }

    pub fn tcp_addrs(&self) -> Vec<SocketAddr> {
        self.tcp
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .collect()
    }

    /// A handle for reloading users while serving.
    pub fn reloader(&self) -> SipReloader {
        SipReloader {
            core: Arc::clone(&self.core),
        }
    }

    /// Serves until `shutdown`.
    pub async fn serve(self, shutdown: CancellationToken) {
        let mut tasks = tokio::task::JoinSet::new();
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        for socket in &self.udp {
            for _ in 0..workers {
                tasks.spawn(transport::serve_udp(
                    Arc::clone(&self.core),
                    Arc::clone(socket),
                    shutdown.clone(),
                ));
            }
        }
        for listener in self.tcp {
            tasks.spawn(transport::serve_tcp(
                Arc::clone(&self.core),
                listener,
                self.tcp_idle,
                shutdown.clone(),
            ));
        }
        let core = Arc::clone(&self.core);
        let stop = shutdown.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut n = 0u32;
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        core.tick().await;
                        n = n.wrapping_add(1);
                        if n.is_multiple_of(50) {
                            core.expire().await;
                        }
                    }
                    () = stop.cancelled() => return,
                }
            }
        });
        while tasks.join_next().await.is_some() {}
    }
}

/// Swaps the user list of a running server (SIGHUP).
#[derive(Debug, Clone)]
pub struct SipReloader {
    core: Arc<Core<AnyLocation>>,
}

impl SipReloader {
    /// Returns how many extensions are now configured.
    pub fn reload(&self, cfg: &SipConfig) -> Result<usize, ConfigError> {
        let users = Users::from_config(cfg)?;
        let n = users.len();
        self.core.set_users(users);
        Ok(n)
    }
}
