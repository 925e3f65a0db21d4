//! Connections to mail servers: TCP, then TLS from the first byte or after
//! STARTTLS, verified against the system's roots plus the mailbox's
//! `ca_file`. Every step has a timeout, so a silent server is an error, not
//! a hang.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use switchboard_config::Server;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::MailError;

/// How long connecting, a TLS handshake or one command may take.
pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection to a mail server, plain or TLS.
pub(crate) trait MailStream:
    AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug
{
}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug> MailStream for T {}

pub(crate) type Conn = Box<dyn MailStream>;

pub(crate) async fn tcp(server: &Server, port: u16) -> Result<TcpStream, MailError> {
    let addr = (server.host.as_str(), port);
    let tcp = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| MailError::Server(format!("connecting to {}:{port} timed out", server.host)))?
        .map_err(|e| MailError::Server(format!("cannot connect to {}:{port}: {e}", server.host)))?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// Wraps `stream` in TLS for `server.host`.
pub(crate) async fn tls<S>(server: &Server, stream: S) -> Result<Conn, MailError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug + 'static,
{
    let connector = tokio_rustls::TlsConnector::from(client_config(server)?);
    let name = ServerName::try_from(server.host.clone()).map_err(|_| {
        MailError::Config(format!("{} is not a valid TLS server name", server.host))
    })?;
    let tls = tokio::time::timeout(IO_TIMEOUT, connector.connect(name, stream))
        .await
        .map_err(|_| MailError::Server("TLS handshake timed out".into()))?
        .map_err(|e| {
            MailError::Server(format!("TLS handshake with {} failed: {e}", server.host))
        })?;
    Ok(Box::new(tls))
}

/// The rustls configuration for a server: TLS 1.2+, the usual roots and the
/// server's `ca_file`.
pub(crate) fn client_config(server: &Server) -> Result<Arc<rustls::ClientConfig>, MailError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(ca) = &server.ca_file {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
            .and_then(|it| it.collect::<Result<_, _>>())
            .map_err(|e| MailError::Config(format!("cannot read ca_file {}: {e}", ca.display())))?;
        for c in certs {
            roots.add(c).map_err(|e| {
                MailError::Config(format!("bad certificate in {}: {e}", ca.display()))
            })?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| MailError::Config(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}
