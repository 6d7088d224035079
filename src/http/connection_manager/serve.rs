//! The codec glue: one downstream connection served by legate's HTTP/1.1 codec, or by h2's
//! HTTP/2 codec (driven by [`crate::http::h2`]) behind the connection guard (by preface or
//! ALPN), until it closes or drains.

use super::*;

pub(super) const PROTO_UNKNOWN: u8 = 0;
pub(super) const PROTO_HTTP1: u8 = 1;
pub(super) const PROTO_HTTP2: u8 = 2;

/// Counts the connection in `http.<prefix>.downstream_cx_*` for as long as it lives. With
/// `codec_type: AUTO` the protocol is known at the first request, so the per-protocol counters
/// are taken then.
pub struct ConnectionStats {
    cm: Arc<ConnectionManager>,
    proto: AtomicU8,
}

impl ConnectionStats {
    fn open(cm: Arc<ConnectionManager>) -> Self {
        cm.stats.downstream_cx_total.increment(1);
        cm.stats.downstream_cx_active.increment(1.0);
        ConnectionStats {
            cm,
            proto: AtomicU8::new(PROTO_UNKNOWN),
        }
    }

    pub fn saw(&self, version: Version) {
        if self.proto.load(Ordering::Relaxed) != PROTO_UNKNOWN {
            return;
        }
        let (p, total, active) = if version == Version::HTTP_2 {
            (
                PROTO_HTTP2,
                &self.cm.stats.downstream_cx_http2_total,
                &self.cm.stats.downstream_cx_http2_active,
            )
        } else {
            (
                PROTO_HTTP1,
                &self.cm.stats.downstream_cx_http1_total,
                &self.cm.stats.downstream_cx_http1_active,
            )
        };
        // Only the first request of the connection records the protocol.
        if self
            .proto
            .compare_exchange(PROTO_UNKNOWN, p, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            total.increment(1);
            active.increment(1.0);
        }
    }
}

impl Drop for ConnectionStats {
    fn drop(&mut self) {
        let s = &self.cm.stats;
        s.downstream_cx_active.decrement(1.0);
        s.downstream_cx_destroy.increment(1);
        match self.proto.load(Ordering::Relaxed) {
            PROTO_HTTP1 => s.downstream_cx_http1_active.decrement(1.0),
            PROTO_HTTP2 => s.downstream_cx_http2_active.decrement(1.0),
            _ => {}
        }
    }
}

/// How long a connection closed for idleness may take to finish (Envoy's `drain_timeout`).
pub(super) const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Serve one downstream connection until it closes, with the codec the connection manager is
/// configured for. When `drain` fires, in-flight requests finish and the connection closes
/// (HTTP/1.1: `Connection: close` on the response in flight, idle connections at once; HTTP/2:
/// GOAWAY, then close when the open streams are done).
///
/// `alpn` is the protocol TLS negotiated, if any: `h2` or `http/1.1` fixes the codec, as Envoy's
/// AUTO codec does with ALPN.
///
/// The connection runs behind a [`Guard`] (framing, limits, floods, slow peers) and is closed
/// after `idle_timeout` without a request in flight.
pub async fn serve<I>(
    cm: Arc<ConnectionManager>,
    io: I,
    ds: Downstream,
    drain: tokio::sync::oneshot::Receiver<()>,
    alpn: Option<&[u8]>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let conn_stats = Arc::new(ConnectionStats::open(cm.clone()));
    let shared = ConnShared::new();
    // A dropped sender is not a drain request: it never resolves then.
    let drain = async move {
        if drain.await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::pin!(drain);
    let idle = {
        let shared = shared.clone();
        let limit = cm.limits.idle_timeout;
        async move {
            match limit {
                Some(d) => guard::idle_timeout(shared, d).await,
                None => std::future::pending().await,
            }
        }
    };
    tokio::pin!(idle);

    let mut guard = Guard::new(io, cm.guard.clone(), shared.clone());
    let codec = match (cm.codec, alpn) {
        (CodecType::Auto, Some(b"h2")) => CodecType::Http2,
        (CodecType::Auto, Some(b"http/1.1")) => CodecType::Http1,
        (c, _) => c,
    };
    let protocol = match codec {
        CodecType::Http1 => Protocol::Http1,
        CodecType::Http2 => Protocol::Http2,
        CodecType::Auto => {
            let detected = tokio::select! {
                p = guard.detect() => p,
                _ = &mut drain => {
                    cm.stats.downstream_cx_drain_close.increment(1);
                    return;
                }
                _ = &mut idle => {
                    cm.stats.downstream_cx_idle_timeout.increment(1);
                    return;
                }
            };
            match detected {
                Ok(p) => p,
                Err(_) => return,
            }
        }
    };
    if protocol == Protocol::Http1 {
        // legate's own codec reads the socket itself; the guard only told the protocol.
        let (io, rbuf) = guard.into_parts();
        let mut conn = h1::server::Conn::new(io, rbuf, cm.clone(), ds, shared, conn_stats);
        let upgraded = run_until_closed(&cm, std::pin::Pin::new(&mut conn), drain, idle, |c| {
            c.get_mut().drain()
        })
        .await;
        if let Some(Some(up)) = upgraded {
            // Boxed: its state is not part of every connection's future.
            Box::pin(conn.tunnel(up)).await;
        }
        return;
    }
    guard.set_http2();
    let h2 = cm.http2;
    let settings = crate::http::h2::server::Settings {
        max_concurrent_streams: h2.max_concurrent_streams,
        initial_stream_window_size: h2.initial_stream_window_size,
        initial_connection_window_size: h2.initial_connection_window_size,
        header_table_size: h2.hpack_table_size,
        max_header_list_size: cm.max_request_headers_kb * 1024,
        // Rapid Reset: streams reset before they were accepted; MadeYouReset: streams
        // legate had to reset because the client broke the protocol. Either over its
        // limit is a GOAWAY (ENHANCE_YOUR_CALM), counted as
        // downstream_rq_too_many_premature_resets.
        max_pending_accept_reset_streams: MAX_PENDING_ACCEPT_RESET_STREAMS,
        max_local_error_reset_streams: MAX_LOCAL_ERROR_RESET_STREAMS,
        keepalive: h2.keepalive,
    };
    let conn =
        crate::http::h2::server::Conn::new(guard, settings, cm.clone(), ds, shared, conn_stats);
    // Boxed: an HTTP/2 connection's state is not part of every HTTP/1.1 connection's future.
    let mut conn = Box::pin(conn);
    run_until_closed(&cm, conn.as_mut(), drain, idle, |c| {
        c.get_mut().graceful_shutdown()
    })
    .await;
}

/// Poll the codec until the connection closes; a drain or the idle timeout asks it to finish
/// what is in flight and close (an idle close gets [`IDLE_CLOSE_GRACE`] to do so).
async fn run_until_closed<C: Future>(
    cm: &ConnectionManager,
    mut conn: std::pin::Pin<&mut C>,
    mut drain: std::pin::Pin<&mut impl Future<Output = ()>>,
    mut idle: std::pin::Pin<&mut impl Future<Output = ()>>,
    graceful_shutdown: impl Fn(std::pin::Pin<&mut C>),
) -> Option<C::Output> {
    let mut closing = false;
    let mut grace: std::pin::Pin<Box<dyn Future<Output = ()> + Send>> =
        Box::pin(std::future::pending());
    loop {
        tokio::select! {
            out = conn.as_mut() => return Some(out),
            _ = drain.as_mut(), if !closing => {
                closing = true;
                cm.stats.downstream_cx_drain_close.increment(1);
                graceful_shutdown(conn.as_mut());
            }
            _ = idle.as_mut(), if !closing => {
                closing = true;
                cm.stats.downstream_cx_idle_timeout.increment(1);
                graceful_shutdown(conn.as_mut());
                grace = Box::pin(tokio::time::sleep(IDLE_CLOSE_GRACE));
            }
            _ = &mut grace => return None,
        }
    }
}

/// h2's limit on streams the client resets before they are accepted (its default is 20).
pub(super) const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 100;
/// h2's limit on streams reset because the client broke the protocol on them (its default).
pub(super) const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;
