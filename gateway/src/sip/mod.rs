//! SIP: transports, the registrar with digest authentication, and abuse
//! limits. The protocol rules live in the sans-IO `switchboard-sip` crate;
//! this module owns sockets, time and shared state.

pub mod core;
pub mod guard;
pub mod location;
mod transport;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use switchboard_config::{ConfigError, LocationBackend, SipConfig};
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;

pub use self::core::{Core, Users};
pub use location::{Location, MemoryLocation, Transport};

use crate::dispatch::Dispatcher;

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
    #[error("sip.location = \"redis\" is not available yet; use \"memory\"")]
    RedisLocation,
}

/// The bound SIP listeners and the handler they share.
#[derive(Debug)]
pub struct SipServer {
    core: Arc<Core<MemoryLocation>>,
    udp: Vec<Arc<UdpSocket>>,
    tcp: Vec<TcpListener>,
    tcp_idle: Duration,
}

impl SipServer {
    /// Binds every configured listener.
    pub async fn bind(cfg: &SipConfig, dispatcher: Option<Dispatcher>) -> Result<Self, SipError> {
        if cfg.location == LocationBackend::Redis {
            return Err(SipError::RedisLocation);
        }
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
        let core = Arc::new(Core::new(cfg, users, MemoryLocation::default(), dispatcher));
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
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => core.expire().await,
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
    core: Arc<Core<MemoryLocation>>,
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
