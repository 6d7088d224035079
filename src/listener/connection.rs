//! The life of an accepted connection before and around HTTP: listener filters (TLS inspector),
//! filter-chain match, network filters, the TLS handshake, then the chain's terminal filter.
//!
//! The connection's task holds this future for as long as the connection lives, sized for its
//! largest state. So the stages with large states (inspection, the TLS handshake, the terminal
//! filter for each stream type) are boxed: an idle plaintext keep-alive connection carries only
//! the codec it uses, not room for a TLS handshake it never does.

use super::tls_inspector::{self, Inspected};
use super::{filter_chain::ConnMeta, Listener, Terminal};
use crate::http::connection_manager::{self, Downstream};
use crate::network::{ConnectionInfo, Verdict};
use crate::tls::ServerTls;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_rustls::server::TlsStream;

/// Run one downstream connection to its end. `drain` asks it to finish gracefully.
pub async fn run(
    listener: Arc<Listener>,
    stream: TcpStream,
    ds: Downstream,
    drain: oneshot::Receiver<()>,
) {
    let stats = &listener.stats;
    let inspected = if listener.tls_inspector {
        match Box::pin(tls_inspector::inspect(
            &stream,
            listener.listener_filters_timeout,
        ))
        .await
        {
            Ok(i) => i,
            // Envoy counts the timeout whether or not the connection carries on.
            Err(()) => {
                stats.downstream_pre_cx_timeout.increment(1);
                if !listener.continue_on_listener_filters_timeout {
                    return;
                }
                Inspected::raw()
            }
        }
    } else {
        Inspected::raw()
    };
    let meta = ConnMeta {
        destination: ds.local,
        source: ds.remote,
        server_name: inspected.server_name.as_deref(),
        transport_protocol: inspected.transport_protocol,
        application_protocols: &inspected.alpn,
    };
    let Some(chain) = listener.select_chain(&meta) else {
        stats.no_filter_chain_match.increment(1);
        return;
    };

    let info = ConnectionInfo {
        remote: ds.remote,
        local: ds.local,
        server_name: inspected.server_name.as_deref(),
    };
    // Guards some filters hold for the connection's lifetime (e.g. a connection-limit slot).
    let mut _guards = Vec::new();
    for f in &chain.filters {
        match f.on_new_connection(&info) {
            Verdict::Continue => {}
            Verdict::ContinueWith(g) => _guards.push(g),
            Verdict::Close => return,
            Verdict::CloseAfter(delay, guard) => {
                // Hold the connection, unread, then close it; a drain ends the wait early.
                let _guard = guard;
                let mut drain = drain;
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = &mut drain => {}
                }
                return;
            }
        }
    }

    match &chain.tls {
        Some(tls) => {
            let Some((tls_stream, alpn)) = Box::pin(handshake(&listener, tls, stream, &ds)).await
            else {
                return;
            };
            let ds = Downstream { tls: true, ..ds };
            let t = terminal(&chain.terminal, tls_stream, ds, drain, alpn.as_deref());
            Box::pin(t).await
        }
        None => Box::pin(terminal(&chain.terminal, stream, ds, drain, None)).await,
    }
}

/// The TLS handshake: the stream and the protocol ALPN chose, or `None` when it failed.
async fn handshake(
    listener: &Listener,
    tls: &ServerTls,
    stream: TcpStream,
    ds: &Downstream,
) -> Option<(TlsStream<TcpStream>, Option<Vec<u8>>)> {
    let stats = &listener.stats;
    // A handshake that does not finish in time is closed (same bound as the listener filters).
    match tokio::time::timeout(listener.listener_filters_timeout, tls.accept(stream)).await {
        Ok(Ok(s)) => {
            stats.ssl_handshake.increment(1);
            let alpn = s.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
            Some((s, alpn))
        }
        Ok(Err(e)) => {
            stats.ssl_connection_error.increment(1);
            tracing::debug!(error = %e, peer = %ds.remote, "TLS handshake failed");
            None
        }
        Err(_) => {
            stats.ssl_connection_error.increment(1);
            None
        }
    }
}

async fn terminal<I>(
    t: &Terminal,
    io: I,
    ds: Downstream,
    drain: oneshot::Receiver<()>,
    alpn: Option<&[u8]>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    match t {
        Terminal::Http(cm) => connection_manager::serve(cm.clone(), io, ds, drain, alpn).await,
        Terminal::TcpProxy(p) => p.serve(io).await,
    }
}
