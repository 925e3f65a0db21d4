//! SIP over UDP and TCP (RFC 3261 §18): datagrams are one message each;
//! streams are framed by Content-Length, with size limits enforced before
//! anything is buffered, CRLF keep-alives answered (RFC 5626 §4.4.1), and
//! idle connections closed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use switchboard_sip::message::{self, MAX_MESSAGE};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::core::Core;
use super::location::{Location, Transport};
use crate::metrics as m;

/// Receives datagrams on `socket` and answers them until `shutdown`.
pub(super) async fn serve_udp<L: Location>(
    core: Arc<Core<L>>,
    socket: Arc<UdpSocket>,
    shutdown: CancellationToken,
) {
    let mut buf = vec![0u8; MAX_MESSAGE + 1];
    // One wait for the shutdown for the whole loop, not one per datagram.
    let stop = shutdown.cancelled();
    tokio::pin!(stop);
    loop {
        let (n, src) = tokio::select! {
            biased;
            () = &mut stop => return,
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    // ICMP errors from earlier sends surface here; keep going.
                    debug!(error = %e, "UDP receive error");
                    continue;
                }
            },
        };
        if n > MAX_MESSAGE {
            m::SIP_DROPPED.with_label_values(&["too_large"]).inc();
            continue;
        }
        if buf[..n].iter().all(|b| b.is_ascii_whitespace()) {
            continue; // keep-alive
        }
        if let Some(reply) = core.handle(&buf[..n], src, Transport::Udp).await
            && let Err(e) = socket.send_to(&reply, src).await
        {
            debug!(%src, error = %e, "UDP send failed");
        }
    }
}

/// Accepts TCP connections until `shutdown`.
pub(super) async fn serve_tcp<L: Location>(
    core: Arc<Core<L>>,
    listener: TcpListener,
    idle: Duration,
    shutdown: CancellationToken,
) {
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    debug!(error = %e, "TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        let _ = stream.set_nodelay(true);
        let core = Arc::clone(&core);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            m::SIP_TCP_CONNECTIONS.inc();
            let why = connection(core, stream, peer, Transport::Tcp, idle, shutdown).await;
            m::SIP_TCP_CONNECTIONS.dec();
            debug!(%peer, reason = why, "SIP TCP connection closed");
        });
    }
}

/// Serves one TCP or TLS connection: what arrives is handled, and what the
/// calls send to this peer is written here (the connection is a flow).
async fn connection<L: Location, S: AsyncRead + AsyncWrite + Unpin>(
    core: Arc<Core<L>>,
    stream: S,
    peer: SocketAddr,
    transport: Transport,
    idle: Duration,
    shutdown: CancellationToken,
) -> &'static str {
    let mut outgoing = core.open_flow(peer);
    let why = exchange(
        &core,
        stream,
        peer,
        transport,
        idle,
        &mut outgoing,
        shutdown,
    )
    .await;
    core.close_flow(peer);
    why
}

async fn exchange<L: Location, S: AsyncRead + AsyncWrite + Unpin>(
    core: &Core<L>,
    mut stream: S,
    peer: SocketAddr,
    transport: Transport,
    idle: Duration,
    outgoing: &mut tokio::sync::mpsc::UnboundedReceiver<bytes::Bytes>,
    shutdown: CancellationToken,
) -> &'static str {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = [0u8; 16 * 1024];
    loop {
        // Everything complete in the buffer first.
        loop {
            let ws = buf
                .iter()
                .take_while(|b| **b == b'\r' || **b == b'\n')
                .count();
            if ws > 0 {
                if buf[..ws].windows(4).any(|w| w == b"\r\n\r\n")
                    && stream.write_all(b"\r\n").await.is_err()
                {
                    return "write failed";
                }
                buf.drain(..ws);
            }
            let framing = match message::frame(&buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(message::ParseError::TooLarge) => {
                    m::SIP_DROPPED.with_label_values(&["too_large"]).inc();
                    return "message too large";
                }
                Err(_) => {
                    m::SIP_DROPPED.with_label_values(&["malformed"]).inc();
                    return "unframeable message";
                }
            };
            let total = framing.head_len + framing.declared_body.unwrap_or(0);
            if buf.len() < total {
                break;
            }
            let reply = core.handle(&buf[..total], peer, transport).await;
            buf.drain(..total);
            if let Some(reply) = reply
                && stream.write_all(&reply).await.is_err()
            {
                return "write failed";
            }
        }
        let n = tokio::select! {
            r = tokio::time::timeout(idle, stream.read(&mut chunk)) => match r {
                Ok(Ok(0)) => return "peer closed",
                Ok(Ok(n)) => n,
                Ok(Err(_)) => return "read failed",
                Err(_) => return "idle",
            },
            Some(bytes) = outgoing.recv() => {
                if stream.write_all(&bytes).await.is_err() {
                    return "write failed";
                }
                continue;
            }
            () = shutdown.cancelled() => return "shutdown",
        };
        if buf.len() + n > MAX_MESSAGE + 1024 {
            m::SIP_DROPPED.with_label_values(&["too_large"]).inc();
            return "message too large";
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Accepts TLS connections until `shutdown`; the handshake has 10 s.
pub(super) async fn serve_tls<L: Location>(
    core: Arc<Core<L>>,
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    idle: Duration,
    shutdown: CancellationToken,
) {
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    debug!(error = %e, "TLS accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        let _ = stream.set_nodelay(true);
        let (core, acceptor, shutdown) = (Arc::clone(&core), acceptor.clone(), shutdown.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                .await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    m::SIP_DROPPED.with_label_values(&["tls_handshake"]).inc();
                    debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    m::SIP_DROPPED.with_label_values(&["tls_handshake"]).inc();
                    return;
                }
            };
            m::SIP_TCP_CONNECTIONS.inc();
            let why = connection(core, tls, peer, Transport::Tls, idle, shutdown).await;
            m::SIP_TCP_CONNECTIONS.dec();
            debug!(%peer, reason = why, "SIP TLS connection closed");
        });
    }
}
