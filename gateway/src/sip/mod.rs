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

/// FNV-1a over the parts (each followed by a zero byte): tags, branch
/// keys and shard numbers that must be the same for the same input.
pub(crate) fn fnv(parts: &[&str]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325_u64;
    for p in parts {
        for b in p.bytes().chain([0]) {
            h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    h
}

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
    #[error("{key} = {path:?}: {why}")]
    Tls {
        key: &'static str,
        path: String,
        why: String,
    },
    #[error("cannot reach the SIP location store (sip.redis_url): {0}")]
    Location(String),
    #[error("cannot start the media relay's threads: {0}")]
    Media(String),
}

/// The bound SIP listeners and the handler they share.
pub struct SipServer {
    core: Arc<Core<AnyLocation>>,
    feed: Option<FeedLog>,
    /// One socket per `udp_listen` address (the one calls send from).
    udp: Vec<Arc<UdpSocket>>,
    /// More sockets on those addresses (`SO_REUSEPORT`), so each worker
    /// thread has a socket of its own: the kernel hands each peer's
    /// datagrams to one of them, in order, and no datagram wakes two tasks.
    udp_more: Vec<Arc<UdpSocket>>,
    tcp: Vec<TcpListener>,
    tls: Vec<TcpListener>,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    tcp_idle: Duration,
    /// Recordings' data directory and retention (days, 0: forever).
    recordings: Option<(std::path::PathBuf, u32)>,
}

impl std::fmt::Debug for SipServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SipServer")
            .field("udp", &self.udp_addrs())
            .field("tcp", &self.tcp_addrs())
            .field("tls", &self.tls_addrs())
            .finish_non_exhaustive()
    }
}

impl SipServer {
    /// Binds every configured listener.
    pub async fn bind(
        cfg: &SipConfig,
        dispatcher: Option<Dispatcher>,
        feed: Option<FeedLog>,
        country: phonenumber::country::Id,
        media: Option<(switchboard_config::MediaConfig, std::path::PathBuf)>,
    ) -> Result<Self, SipError> {
        let users = Users::from_config(cfg)?;
        // Port 0 for both: TCP takes the port UDP got, as phones expect. If
        // another process holds that port for TCP, UDP tries another one.
        let workers = if SHARED_PORTS {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            1
        };
        let mut attempt = 0;
        let (udp, udp_more, tcp) = loop {
            attempt += 1;
            let mut udp = Vec::new();
            let mut udp_more = Vec::new();
            for addr in &cfg.udp_listen {
                let bind_error = |source| SipError::Bind {
                    transport: "UDP",
                    addr: *addr,
                    source,
                };
                let socket = bind_udp(*addr).map_err(bind_error)?;
                let bound = socket.local_addr().map_err(bind_error)?;
                for _ in 1..workers {
                    udp_more.push(Arc::new(bind_udp_more(bound).map_err(bind_error)?));
                }
                udp.push(Arc::new(socket));
            }
            let mut tcp = Vec::new();
            let mut retry = false;
            for addr in &cfg.tcp_listen {
                let (addr, derived) = match (addr.port(), udp.first()) {
                    (0, Some(u))
                        if addr.ip() == u.local_addr().map(|a| a.ip()).unwrap_or(addr.ip()) =>
                    {
                        (u.local_addr().unwrap_or(*addr), true)
                    }
                    _ => (*addr, false),
                };
                match TcpListener::bind(addr).await {
                    Ok(listener) => tcp.push(listener),
                    Err(source)
                        if derived
                            && attempt < 8
                            && source.kind() == std::io::ErrorKind::AddrInUse =>
                    {
                        retry = true;
                        break;
                    }
                    Err(source) => {
                        return Err(SipError::Bind {
                            transport: "TCP",
                            addr,
                            source,
                        });
                    }
                }
            }
            if !retry {
                break (udp, udp_more, tcp);
            }
        };
        let mut tls = Vec::new();
        let acceptor = match (&cfg.tls_cert_file, &cfg.tls_key_file) {
            (Some(cert), Some(key)) => {
                let acceptor = tls_acceptor(cert, key)?;
                for addr in &cfg.tls_listen {
                    let listener =
                        TcpListener::bind(addr)
                            .await
                            .map_err(|source| SipError::Bind {
                                transport: "TLS",
                                addr: *addr,
                                source,
                            })?;
                    tls.push(listener);
                }
                Some(acceptor)
            }
            _ => None,
        };
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
            media,
        };
        let location = match cfg.location {
            LocationBackend::Memory => AnyLocation::Memory(MemoryLocation::default()),
            LocationBackend::Redis => AnyLocation::Redis(
                RedisLocation::connect(&cfg.redis_url, &cfg.redis_prefix)
                    .await
                    .map_err(|e| SipError::Location(e.to_string()))?,
            ),
        };
        let feed = ctx.feed.clone();
        let recordings = ctx
            .media
            .as_ref()
            .filter(|(m, _)| m.enabled)
            .map(|(m, dir)| (dir.clone(), m.retention_days));
        let core = Arc::new(Core::new(cfg, users, location, ctx)?);
        if let Some(socket) = udp.first() {
            core.set_socket(Arc::clone(socket));
        }
        Ok(Self {
            feed,
            core,
            udp,
            udp_more,
            tcp,
            tls,
            acceptor,
            tcp_idle: cfg.tcp_idle_timeout,
            recordings,
        })
    }

    pub fn udp_addrs(&self) -> Vec<SocketAddr> {
        self.udp
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .collect()
    }

    pub fn tls_addrs(&self) -> Vec<SocketAddr> {
        self.tls
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
        for socket in self.udp.iter().chain(&self.udp_more) {
            tasks.spawn(transport::serve_udp(
                Arc::clone(&self.core),
                Arc::clone(socket),
                shutdown.clone(),
            ));
        }
        for listener in self.tcp {
            tasks.spawn(transport::serve_tcp(
                Arc::clone(&self.core),
                listener,
                self.tcp_idle,
                shutdown.clone(),
            ));
        }
        if let Some(acceptor) = &self.acceptor {
            for listener in self.tls {
                tasks.spawn(transport::serve_tls(
                    Arc::clone(&self.core),
                    listener,
                    acceptor.clone(),
                    self.tcp_idle,
                    shutdown.clone(),
                ));
            }
        }
        if let Some((dir, days)) = self.recordings.clone() {
            // Recordings a crash cut short are repaired at start; those
            // past retention are deleted then and daily.
            let stop = shutdown.clone();
            tasks.spawn(async move {
                let mut daily = tokio::time::interval(Duration::from_secs(86_400));
                let mut first = true;
                loop {
                    tokio::select! {
                        _ = daily.tick() => {
                            let dir = dir.clone();
                            let repair = std::mem::take(&mut first);
                            let _ = tokio::task::spawn_blocking(move || {
                                crate::media::tidy_recordings(&dir, days, repair);
                            })
                            .await;
                        }
                        () = stop.cancelled() => return,
                    }
                }
            });
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
        // Call events: written until every worker has stopped, then what
        // is still queued.
        let done = CancellationToken::new();
        let publisher = match (self.core.take_events(), self.feed.clone()) {
            (Some(rx), Some(feed)) => Some(tokio::spawn(self::core::publish_events(
                rx,
                feed,
                done.clone(),
            ))),
            // No feed: the queue is dropped, and each event is logged as lost.
            _ => None,
        };
        while tasks.join_next().await.is_some() {}
        done.cancel();
        if let Some(p) = publisher {
            let _ = p.await;
        }
    }
}

/// A TLS 1.2/1.3 server configuration from PEM files (rustls speaks no
/// older version).
fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, SipError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |key: &'static str, path: &std::path::Path, why: String| SipError::Tls {
        key,
        path: path.display().to_string(),
        why,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad("sip.tls_cert_file", cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad("sip.tls_cert_file", cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(bad(
            "sip.tls_cert_file",
            cert,
            "no certificate in the file".into(),
        ));
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| bad("sip.tls_key_file", key, e.to_string()))?;
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
    .map_err(|e| bad("sip.tls_cert_file", cert, e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(chain, private)
    .map_err(|e| bad("sip.tls_key_file", key, e.to_string()))?;
    Ok(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)))
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

/// The receive buffer asked for on UDP sockets: a burst of a few thousand
/// datagrams waits here instead of being dropped by the kernel (which
/// caps it at `net.core.rmem_max`).
const UDP_RECV_BUFFER: usize = 4 << 20;

/// Whether several sockets can share one UDP port (`SO_REUSEPORT`).
const SHARED_PORTS: bool = cfg!(all(
    unix,
    not(any(
        target_os = "solaris",
        target_os = "illumos",
        target_os = "cygwin"
    ))
));

/// A non-blocking UDP socket on `addr` with a large receive buffer, which
/// [`bind_udp_more`] can add sockets to. The port must be free: it is
/// first bound alone, so a port another process holds, even one that
/// allows sharing (a second Switchboard), is refused as in use.
fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let addr = std::net::UdpSocket::bind(addr)?.local_addr()?;
    bind_udp_more(addr)
}

/// One more socket on the port a [`bind_udp`] socket holds.
fn bind_udp_more(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if let Err(e) = socket.set_recv_buffer_size(UDP_RECV_BUFFER) {
        tracing::warn!(error = %e, "could not enlarge the SIP UDP receive buffer");
    }
    socket.set_nonblocking(true)?;
    #[cfg(all(
        unix,
        not(any(target_os = "solaris", target_os = "illumos", target_os = "cygwin"))
    ))]
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn udp_sockets_share_a_port_only_within_the_process() {
        let first = bind_udp("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = first.local_addr().unwrap();
        let more = if SHARED_PORTS {
            bind_udp_more(addr).unwrap()
        } else {
            bind_udp("127.0.0.1:0".parse().unwrap()).unwrap()
        };
        // A second daemon configured with the same port is refused, even
        // though this one's sockets allow sharing among themselves.
        let again = bind_udp(addr).unwrap_err();
        assert_eq!(again.kind(), std::io::ErrorKind::AddrInUse);
        // Every peer's datagrams arrive on one of the shared sockets.
        let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (mut a, mut b) = ([0u8; 4], [0u8; 4]);
        for _ in 0..3 {
            peer.send_to(b"x", addr).await.unwrap();
            let got = tokio::time::timeout(Duration::from_secs(5), async {
                tokio::select! {
                    r = first.recv_from(&mut a) => r.map(|(n, from)| (a[..n].to_vec(), from)),
                    r = more.recv_from(&mut b) => r.map(|(n, from)| (b[..n].to_vec(), from)),
                }
            })
            .await
            .unwrap()
            .unwrap();
            assert_eq!(got, (b"x".to_vec(), peer.local_addr().unwrap()));
        }
    }
}
