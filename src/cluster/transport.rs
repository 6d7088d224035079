//! The upstream transport: a TCP connection, optionally wrapped in TLS (`UpstreamTlsContext`).

use crate::tls::ClientTls;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A connected upstream socket.
pub enum UpstreamIo {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect timeout")]
    Timeout,
    #[error("delayed connect error: {}", .0.raw_os_error().unwrap_or(0))]
    Io(#[from] io::Error),
    /// Envoy's `%UPSTREAM_TRANSPORT_FAILURE_REASON%` for a failed handshake starts `TLS_error:`.
    #[error("TLS_error: {0}")]
    Tls(io::Error),
    #[error("handshake error: {0}")]
    Handshake(#[from] h2::Error),
    /// A circuit breaker (`max_connections`, `max_pending_requests`) is at its limit; nothing
    /// was dialed.
    #[error("overflow")]
    Overflow,
}

impl ConnectError {
    pub fn is_timeout(&self) -> bool {
        matches!(self, ConnectError::Timeout)
    }
}

/// Dial `address` within `timeout` (TCP and TLS handshake together, as Envoy's connect_timeout).
pub async fn connect(
    address: SocketAddr,
    timeout: Duration,
    tls: Option<&ClientTls>,
) -> Result<UpstreamIo, ConnectError> {
    let attempt = async {
        let stream = TcpStream::connect(address).await?;
        // Requests are small writes; Nagle would hold them back waiting for an ACK.
        let _ = stream.set_nodelay(true);
        let Some(tls) = tls else {
            return Ok(UpstreamIo::Plain(stream));
        };
        let name = tls
            .sni
            .clone()
            .unwrap_or_else(|| rustls::pki_types::ServerName::IpAddress(address.ip().into()));
        let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
        connector
            .connect(name, stream)
            .await
            .map(|s| UpstreamIo::Tls(Box::new(s)))
            .map_err(ConnectError::Tls)
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(ConnectError::Timeout),
    }
}

impl UpstreamIo {
    /// The protocol the upstream chose by ALPN, if TLS negotiated one.
    pub fn alpn(&self) -> Option<&[u8]> {
        match self {
            UpstreamIo::Plain(_) => None,
            UpstreamIo::Tls(s) => s.get_ref().1.alpn_protocol(),
        }
    }
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Plain(s) => s.is_write_vectored(),
            UpstreamIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
