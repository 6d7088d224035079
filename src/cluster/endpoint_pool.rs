//! The connection pool of one upstream host: idle HTTP/1.1 connections, and HTTP/2 connections
//! multiplexing streams.
//!
//! HTTP/1.1: idle connections wait in a lock-free queue; a request pops one and gives it back when
//! its response body ends. HTTP/2: ready connections are published behind an `ArcSwap`; a request
//! takes a stream slot on the first connection with room (one atomic compare-and-swap) and gives it
//! back when its response ends. Only when no connection has room does a request dial, in its own
//! task (linkerd's balancer does the same: state lives with the owner, I/O runs in the caller's
//! task), so no request ever waits on an actor. For HTTP/2 the dial is serialised per host, so a
//! burst opens connections one at a time and each new one is filled before the next is opened.
//!
//! The EndpointPool actor owns the pool's lifecycle: it evicts connections idle past
//! `idle_timeout`, drops closed HTTP/2 connections, and closes the pool when its host leaves the
//! cluster.

use super::circuit_breaker::Slot;
use super::{Cluster, Host, HostStats};
use crate::bootstrap::{Http2Settings, UpstreamProtocol};
use crate::http::body::RequestBody;
use crate::http::h2::{keepalive::KeepAlive, pipe::set_length, pipe::Pipe, H2Body};
use arc_swap::ArcSwap;
use bytes::Bytes;
use crossbeam_queue::SegQueue;
use http::{Request, Response};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use super::h1_conn::{H1Conn, H1Error, Upgraded};

/// Envoy's default upstream `idle_timeout` (HttpProtocolOptions).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Idle connections kept per host beyond this are closed; Envoy's default max_connections.
const MAX_IDLE: usize = 1024;
/// Envoy's default `max_response_headers_kb` (60 KiB).
const MAX_RESPONSE_HEADER_LIST: u32 = 60 * 1024;

pub struct EndpointPool {
    address: SocketAddr,
    connect_timeout: Duration,
    protocol: UpstreamProtocol,
    idle: SegQueue<Idle>,
    idle_len: AtomicUsize,
    h2: ArcSwap<Vec<Arc<H2Conn>>>,
    /// Serialises HTTP/2 dials: waiters re-check for room once the dial before them finishes.
    h2_dial: tokio::sync::Mutex<()>,
    closed: AtomicBool,
}

struct Idle {
    conn: Box<H1Conn>,
    since: Instant,
}

/// One HTTP/2 connection and how many of its streams are in use.
pub struct H2Conn {
    sender: h2::client::SendRequest<Bytes>,
    active: AtomicUsize,
    /// The peer's SETTINGS_MAX_CONCURRENT_STREAMS, copied by the connection task each time it
    /// runs (h2 exposes it only on the connection).
    peer_max_streams: Arc<AtomicUsize>,
    /// Set when the connection ended, or refused a new stream (GOAWAY): no stream is taken on
    /// it any more.
    closed: Arc<AtomicBool>,
    /// The configured `max_concurrent_streams`; the peer's SETTINGS may lower it.
    max_streams: usize,
}

impl H2Conn {
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    fn try_acquire(self: &Arc<Self>) -> Option<H2Stream> {
        if self.is_closed() {
            return None;
        }
        let limit = self
            .max_streams
            .min(self.peer_max_streams.load(Ordering::Relaxed));
        let mut cur = self.active.load(Ordering::Relaxed);
        loop {
            if cur >= limit {
                return None;
            }
            // Relaxed: the counter guards no other memory; it only bounds concurrency.
            match self.active.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(H2Stream { conn: self.clone() }),
                Err(now) => cur = now,
            }
        }
    }
}

/// A stream slot on an HTTP/2 connection, released when dropped (the response has ended).
pub struct H2Stream {
    conn: Arc<H2Conn>,
}

impl Drop for H2Stream {
    fn drop(&mut self) {
        self.conn.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection (HTTP/1.1) or a stream slot (HTTP/2) checked out for one request.
pub enum Upstream {
    /// Boxed: the pool and the request move a pointer, not the connection's buffers and state.
    H1(Box<H1Conn>),
    H2(H2Stream),
}

/// A response body: HTTP/1.1 bodies are read from the connection itself (kept in the
/// [`Upstream`] beside the body), HTTP/2 bodies from the h2 stream.
pub enum UpstreamBody {
    H1,
    H2(H2Body),
}

/// Why sending failed. The request comes back when it never left (a connection found closed
/// before sending, or an HTTP/2 connection that went away), so another connection can take it.
pub struct SendError {
    pub error: UpstreamError,
    pub unsent: Option<Request<RequestBody>>,
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error(transparent)]
    H1(#[from] H1Error),
    #[error(transparent)]
    H2(#[from] h2::Error),
}

pub struct PooledConn {
    pub upstream: Upstream,
    /// True when the connection served an earlier request (a stale one may fail to send).
    pub reused: bool,
}

impl PooledConn {
    pub fn is_http2(&self) -> bool {
        matches!(self.upstream, Upstream::H2(_))
    }

    /// Send the request; on failure the request comes back if it never left.
    pub async fn send(
        &mut self,
        req: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, SendError> {
        match &mut self.upstream {
            Upstream::H1(c) => match c.send(req).await {
                Ok(resp) => Ok(resp.map(|()| UpstreamBody::H1)),
                Err(e) => Err(SendError {
                    error: e.error.into(),
                    unsent: e.unsent,
                }),
            },
            Upstream::H2(s) => send_h2(&s.conn, req).await,
        }
    }
}

/// One request on an HTTP/2 connection, from the request's own task: h2's `SendRequest` queues
/// the stream's frames for the connection task directly (no channel and no reply hop, as
/// hyper's client had). A request body is pumped by a task of its own, as it may outlive the
/// response head (gRPC streams).
async fn send_h2(
    conn: &H2Conn,
    req: Request<RequestBody>,
) -> Result<Response<UpstreamBody>, SendError> {
    let mut tx = conn.sender.clone();
    if let Err(e) = std::future::poll_fn(|cx| tx.poll_ready(cx)).await {
        // GOAWAY or a closed connection: nothing was sent, and no later stream may use it.
        conn.closed.store(true, Ordering::Relaxed);
        return Err(SendError {
            error: e.into(),
            unsent: Some(req),
        });
    }
    let (mut head, body) = req.into_parts();
    // h2 refuses connection-specific headers (a WebSocket upgrade's, say) rather than drop them.
    crate::http::headers::strip_hop_by_hop(&mut head.headers);
    let end = set_length(&mut head.headers, &body);
    let (response, stream) = match tx.send_request(Request::from_parts(head, ()), end) {
        Ok(sent) => sent,
        Err(e) => {
            return Err(SendError {
                error: e.into(),
                unsent: None,
            })
        }
    };
    if !end {
        tokio::spawn(Pipe::new(body, stream));
    }
    let resp = response.await.map_err(|e| SendError {
        error: e.into(),
        unsent: None,
    })?;
    let (parts, recv) = resp.into_parts();
    let body = UpstreamBody::H2(H2Body::new(recv, &parts.headers));
    Ok(Response::from_parts(parts, body))
}

pub use super::transport::ConnectError;
use super::transport::UpstreamIo;

impl EndpointPool {
    pub fn new(address: SocketAddr, connect_timeout: Duration, protocol: UpstreamProtocol) -> Self {
        EndpointPool {
            address,
            connect_timeout,
            protocol,
            idle: SegQueue::new(),
            idle_len: AtomicUsize::new(0),
            h2: ArcSwap::from_pointee(Vec::new()),
            h2_dial: tokio::sync::Mutex::new(()),
            closed: AtomicBool::new(false),
        }
    }

    /// A connection for a request whose downstream spoke HTTP/2 (`downstream_h2`), following the
    /// cluster's protocol choice.
    pub async fn checkout(
        &self,
        cluster: &Cluster,
        host: &Host,
        downstream_h2: bool,
    ) -> Result<PooledConn, ConnectError> {
        match self.protocol {
            UpstreamProtocol::Http1 => self.checkout_h1(cluster, host).await,
            UpstreamProtocol::Http2(s) => self.checkout_h2(cluster, host, s).await,
            UpstreamProtocol::UseDownstream(s) if downstream_h2 => {
                self.checkout_h2(cluster, host, s).await
            }
            UpstreamProtocol::UseDownstream(_) => self.checkout_h1(cluster, host).await,
        }
    }

    async fn checkout_h1(
        &self,
        cluster: &Cluster,
        host: &Host,
    ) -> Result<PooledConn, ConnectError> {
        while let Some(idle) = self.idle.pop() {
            self.idle_len.fetch_sub(1, Ordering::Relaxed);
            let mut conn = idle.conn;
            // Connections idle past `IDLE_TIMEOUT` are closed by the EndpointPool actor's sweep
            // (within a minute); no clock read here. Nobody has polled this one since it was
            // queued: see whether the upstream closed it.
            if conn.check_open() {
                return Ok(PooledConn {
                    upstream: Upstream::H1(conn),
                    reused: true,
                });
            }
        }
        // Waiting for a new connection: a pending request (circuit breaker) until it has one.
        let _pending = cluster
            .circuit_breakers
            .pending_request()
            .ok_or(ConnectError::Overflow)?;
        // Dialing (TCP, TLS, handshake) is a large future; boxed, it costs an allocation on the
        // rare path instead of making every request's future (moved on each poll setup) as big.
        Box::pin(self.connect_h1(cluster, host)).await
    }

    fn try_h2(&self) -> Option<H2Stream> {
        self.h2.load().iter().find_map(|c| c.try_acquire())
    }

    async fn checkout_h2(
        &self,
        cluster: &Cluster,
        host: &Host,
        settings: Http2Settings,
    ) -> Result<PooledConn, ConnectError> {
        if let Some(s) = self.try_h2() {
            return Ok(PooledConn {
                upstream: Upstream::H2(s),
                reused: true,
            });
        }
        let _pending = cluster
            .circuit_breakers
            .pending_request()
            .ok_or(ConnectError::Overflow)?;
        let _dialing = self.h2_dial.lock().await;
        // Whoever held the lock before us may have opened a connection with room.
        if let Some(s) = self.try_h2() {
            return Ok(PooledConn {
                upstream: Upstream::H2(s),
                reused: true,
            });
        }
        let conn = Box::pin(self.connect_h2(cluster, host, settings)).await?;
        let stream = conn.try_acquire();
        self.h2.rcu(|conns| {
            let mut next: Vec<Arc<H2Conn>> =
                conns.iter().filter(|c| !c.is_closed()).cloned().collect();
            next.push(conn.clone());
            next
        });
        match stream {
            Some(s) => Ok(PooledConn {
                upstream: Upstream::H2(s),
                reused: false,
            }),
            // The peer allows no stream at all (SETTINGS_MAX_CONCURRENT_STREAMS 0).
            None => Err(ConnectError::Io(std::io::Error::other(
                "upstream allows no streams",
            ))),
        }
    }

    /// Give an HTTP/1.1 connection back after its response finished cleanly.
    pub fn checkin(&self, conn: Box<H1Conn>) {
        // Acquire pairs with the Release in `close`: once closed, no connection is queued again.
        // Whether the upstream closed it is found out at checkout, which polls it anyway.
        if self.closed.load(Ordering::Acquire) || !conn.is_reusable() {
            return;
        }
        if self.idle_len.fetch_add(1, Ordering::Relaxed) >= MAX_IDLE {
            self.idle_len.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        self.idle.push(Idle {
            conn,
            since: Instant::now(),
        });
    }

    /// Close HTTP/1.1 connections idle for longer than `max_idle`, forget closed HTTP/2 ones
    /// (the EndpointPool actor's sweep).
    pub fn evict_idle(&self, max_idle: Duration) -> usize {
        let mut evicted = 0;
        for _ in 0..self.idle_len.load(Ordering::Relaxed) {
            let Some(mut idle) = self.idle.pop() else {
                break;
            };
            self.idle_len.fetch_sub(1, Ordering::Relaxed);
            if !idle.conn.check_open() || idle.since.elapsed() > max_idle {
                evicted += 1;
            } else {
                self.idle_len.fetch_add(1, Ordering::Relaxed);
                self.idle.push(idle);
            }
        }
        if self.h2.load().iter().any(|c| c.is_closed()) {
            self.h2.rcu(|conns| {
                conns
                    .iter()
                    .filter(|c| !c.is_closed())
                    .cloned()
                    .collect::<Vec<_>>()
            });
        }
        evicted
    }

    /// The host left its cluster: drop idle connections; in-flight ones finish and are not reused.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        while self.idle.pop().is_some() {
            self.idle_len.fetch_sub(1, Ordering::Relaxed);
        }
        self.h2.store(Arc::new(Vec::new()));
    }

    /// Dial within the cluster's `max_connections`; the slot goes to the connection's guard.
    async fn dial(
        &self,
        cluster: &Cluster,
        host: &Host,
    ) -> Result<(UpstreamIo, Slot), ConnectError> {
        let slot = cluster
            .circuit_breakers
            .connection()
            .ok_or(ConnectError::Overflow)?;
        let stats = &cluster.stats;
        stats.upstream_cx_total.increment(1);
        host.stats.cx_total.fetch_add(1, Ordering::Relaxed);
        let tls = cluster.config.tls.as_ref();
        match super::transport::connect(self.address, self.connect_timeout, tls).await {
            Ok(io) => Ok((io, slot)),
            Err(e) => {
                stats.upstream_cx_connect_fail.increment(1);
                if e.is_timeout() {
                    stats.upstream_cx_connect_timeout.increment(1);
                }
                host.stats.cx_connect_fail.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// A raw connection to the host (TCP proxy), counted as an upstream connection for as long
    /// as the returned guard lives.
    pub async fn connect_raw(
        &self,
        cluster: &Cluster,
        host: &Host,
    ) -> Result<(UpstreamIo, impl Send), ConnectError> {
        let (io, slot) = self.dial(cluster, host).await?;
        Ok((io, Self::active_guard(cluster, host, slot)))
    }

    fn active_guard(cluster: &Cluster, host: &Host, slot: Slot) -> ConnActive {
        cluster.stats.upstream_cx_active.increment(1.0);
        host.stats.cx_active.fetch_add(1, Ordering::Relaxed);
        ConnActive {
            cx_active: cluster.stats.upstream_cx_active.clone(),
            cx_destroy: cluster.stats.upstream_cx_destroy.clone(),
            host: host.stats.clone(),
            _slot: slot,
        }
    }

    async fn connect_h1(&self, cluster: &Cluster, host: &Host) -> Result<PooledConn, ConnectError> {
        let (stream, slot) = self.dial(cluster, host).await?;
        cluster.stats.upstream_cx_http1_total.increment(1);
        let active = Self::active_guard(cluster, host, slot);
        // No task of its own: the requests using it drive it (see `H1Conn`).
        Ok(PooledConn {
            upstream: Upstream::H1(Box::new(H1Conn::new(stream, active))),
            reused: false,
        })
    }

    async fn connect_h2(
        &self,
        cluster: &Cluster,
        host: &Host,
        s: Http2Settings,
    ) -> Result<Arc<H2Conn>, ConnectError> {
        let (stream, slot) = self.dial(cluster, host).await?;
        cluster.stats.upstream_cx_http2_total.increment(1);
        let mut builder = h2::client::Builder::new();
        builder
            .initial_window_size(s.initial_stream_window_size)
            .initial_connection_window_size(s.initial_connection_window_size)
            .header_table_size(s.hpack_table_size)
            .max_header_list_size(MAX_RESPONSE_HEADER_LIST)
            // Zero until the peer's SETTINGS arrive: the connection is published only once its
            // real stream limit is known, so a burst never overruns a small limit (which the
            // peer would answer with REFUSED_STREAM) nor opens connections it did not need.
            .initial_max_send_streams(0);
        let (sender, mut conn) = builder
            .handshake::<_, Bytes>(stream)
            .await
            .map_err(ConnectError::Handshake)?;
        let active = Self::active_guard(cluster, host, slot);
        // The peer's SETTINGS come right after its preface: drive the connection until they
        // have, within the connect timeout. A peer that allows no stream (0) is a connect
        // failure.
        let deadline = tokio::time::Instant::now() + self.connect_timeout;
        while conn.max_concurrent_send_streams() == 0 {
            if tokio::time::Instant::now() >= deadline {
                return Err(ConnectError::Io(std::io::Error::other(
                    "no usable SETTINGS from the upstream (MAX_CONCURRENT_STREAMS 0 or missing)",
                )));
            }
            tokio::select! {
                r = &mut conn => {
                    return Err(match r {
                        Err(e) => ConnectError::Handshake(e),
                        Ok(()) => ConnectError::Io(std::io::Error::other("upstream closed the connection")),
                    });
                }
                _ = tokio::time::sleep(Duration::from_millis(1)) => {}
            }
        }
        let peer_max_streams = Arc::new(AtomicUsize::new(conn.max_concurrent_send_streams()));
        let closed = Arc::new(AtomicBool::new(false));
        let ping = s.keepalive.and_then(|(interval, timeout)| {
            conn.ping_pong()
                .map(|pp| KeepAlive::new(pp, interval, timeout))
        });
        let driver = H2Driver {
            conn,
            ping,
            max: peer_max_streams.clone(),
            closed: closed.clone(),
        };
        tokio::spawn(async move {
            let _active = active;
            driver.await;
        });
        Ok(Arc::new(H2Conn {
            sender,
            active: AtomicUsize::new(0),
            peer_max_streams,
            closed,
            max_streams: s.max_concurrent_streams as usize,
        }))
    }
}

/// Drives an HTTP/2 connection (its reads, and the frames its streams queue), republishes the
/// peer's stream limit each time it runs (at least once per request) so a later SETTINGS change
/// is seen, sends keepalive PINGs, and marks the connection closed when it ends.
struct H2Driver {
    conn: h2::client::Connection<UpstreamIo, Bytes>,
    ping: Option<KeepAlive>,
    max: Arc<AtomicUsize>,
    closed: Arc<AtomicBool>,
}

impl std::future::Future for H2Driver {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        let this = &mut *self;
        let out = std::pin::Pin::new(&mut this.conn).poll(cx);
        this.max
            .store(this.conn.max_concurrent_send_streams(), Ordering::Relaxed);
        let dead = out.is_ready() || this.ping.as_mut().is_some_and(|ka| ka.poll(cx).is_ready());
        if dead {
            this.closed.store(true, Ordering::Relaxed);
            return std::task::Poll::Ready(());
        }
        std::task::Poll::Pending
    }
}

/// Keeps the active-connection gauges true however the connection ends.
pub(super) struct ConnActive {
    cx_active: metrics::Gauge,
    cx_destroy: metrics::Counter,
    host: Arc<HostStats>,
    /// The connection's `max_connections` slot.
    _slot: Slot,
}

impl Drop for ConnActive {
    fn drop(&mut self) {
        self.cx_active.decrement(1.0);
        self.cx_destroy.increment(1);
        self.host.cx_active.fetch_sub(1, Ordering::Relaxed);
    }
}
