//! The connection pool of one upstream host (HTTP/1.1).
//!
//! Idle connections wait in a lock-free queue. A request takes one with a pop and gives it back
//! when its response body ends; only when none is idle does it dial, and it dials in its own task
//! (linkerd's balancer does the same: state lives with the owner, I/O runs in the caller's task),
//! so no request waits on an actor. The EndpointPool actor owns the pool's lifecycle: it evicts
//! connections idle past `idle_timeout` and closes the pool when its host leaves the cluster.

use super::{Cluster, Host, HostStats};
use crate::http::body::RequestBody;
use crossbeam_queue::SegQueue;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub type Sender = http1::SendRequest<RequestBody>;

/// Envoy's default upstream `idle_timeout` (HttpProtocolOptions).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Idle connections kept per host beyond this are closed; Envoy's default max_connections.
const MAX_IDLE: usize = 1024;

pub struct EndpointPool {
    address: SocketAddr,
    connect_timeout: Duration,
    idle: SegQueue<Idle>,
    idle_len: AtomicUsize,
    closed: AtomicBool,
}

struct Idle {
    sender: Sender,
    since: Instant,
}

/// A connection checked out for one request.
pub struct PooledConn {
    pub sender: Sender,
    /// True when the connection served an earlier request (a stale one may fail to send).
    pub reused: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect timeout")]
    Timeout,
    #[error("delayed connect error: {}", .0.raw_os_error().unwrap_or(0))]
    Io(#[from] std::io::Error),
    #[error("handshake error: {0}")]
    Handshake(#[from] hyper::Error),
}

impl EndpointPool {
    pub fn new(address: SocketAddr, connect_timeout: Duration) -> Self {
        EndpointPool {
            address,
            connect_timeout,
            idle: SegQueue::new(),
            idle_len: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
        }
    }

    pub fn idle_count(&self) -> usize {
        self.idle_len.load(Ordering::Relaxed)
    }

    /// An idle connection if one is usable, otherwise a new one.
    pub async fn checkout(
        &self,
        cluster: &Cluster,
        host: &Host,
    ) -> Result<PooledConn, ConnectError> {
        while let Some(idle) = self.idle.pop() {
            self.idle_len.fetch_sub(1, Ordering::Relaxed);
            let mut sender = idle.sender;
            if sender.is_closed() || idle.since.elapsed() > IDLE_TIMEOUT {
                continue; // dropping the sender lets its connection task finish
            }
            // A connection is queued as soon as its response body ends; hyper may not have
            // flipped it back to idle yet, so wait for readiness (normally already there).
            if sender.ready().await.is_ok() {
                return Ok(PooledConn {
                    sender,
                    reused: true,
                });
            }
        }
        self.connect(cluster, host).await
    }

    /// Give a connection back after its response finished cleanly.
    pub fn checkin(&self, sender: Sender) {
        // Acquire pairs with the Release in `close`: once closed, no connection is queued again.
        if self.closed.load(Ordering::Acquire) || sender.is_closed() {
            return;
        }
        if self.idle_len.fetch_add(1, Ordering::Relaxed) >= MAX_IDLE {
            self.idle_len.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        self.idle.push(Idle {
            sender,
            since: Instant::now(),
        });
    }

    /// Close connections idle for longer than `max_idle` (the EndpointPool actor's sweep).
    pub fn evict_idle(&self, max_idle: Duration) -> usize {
        let mut evicted = 0;
        for _ in 0..self.idle_len.load(Ordering::Relaxed) {
            let Some(idle) = self.idle.pop() else { break };
            self.idle_len.fetch_sub(1, Ordering::Relaxed);
            if idle.sender.is_closed() || idle.since.elapsed() > max_idle {
                evicted += 1;
            } else {
                self.idle_len.fetch_add(1, Ordering::Relaxed);
                self.idle.push(idle);
            }
        }
        evicted
    }

    /// The host left its cluster: drop idle connections; in-flight ones finish and are not reused.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        while self.idle.pop().is_some() {
            self.idle_len.fetch_sub(1, Ordering::Relaxed);
        }
    }

    async fn connect(&self, cluster: &Cluster, host: &Host) -> Result<PooledConn, ConnectError> {
        let stats = &cluster.stats;
        stats.upstream_cx_total.increment(1);
        stats.upstream_cx_http1_total.increment(1);
        host.stats.cx_total.fetch_add(1, Ordering::Relaxed);
        let stream = match tokio::time::timeout(
            self.connect_timeout,
            tokio::net::TcpStream::connect(self.address),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                stats.upstream_cx_connect_fail.increment(1);
                host.stats.cx_connect_fail.fetch_add(1, Ordering::Relaxed);
                return Err(e.into());
            }
            Err(_) => {
                stats.upstream_cx_connect_fail.increment(1);
                stats.upstream_cx_connect_timeout.increment(1);
                host.stats.cx_connect_fail.fetch_add(1, Ordering::Relaxed);
                return Err(ConnectError::Timeout);
            }
        };
        // Requests are small writes; Nagle would hold them back waiting for an ACK.
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::Builder::new()
            .handshake::<_, RequestBody>(TokioIo::new(stream))
            .await?;
        stats.upstream_cx_active.increment(1.0);
        host.stats.cx_active.fetch_add(1, Ordering::Relaxed);
        let active = ConnActive {
            cx_active: stats.upstream_cx_active.clone(),
            cx_destroy: stats.upstream_cx_destroy.clone(),
            host: host.stats.clone(),
        };
        // The connection's own task drives its I/O; it ends when the peer closes or the last
        // sender is dropped.
        tokio::spawn(async move {
            let _active = active;
            let _ = conn.await;
        });
        Ok(PooledConn {
            sender,
            reused: false,
        })
    }
}

/// Keeps the active-connection gauges true however the connection ends.
struct ConnActive {
    cx_active: metrics::Gauge,
    cx_destroy: metrics::Counter,
    host: Arc<HostStats>,
}

impl Drop for ConnActive {
    fn drop(&mut self) {
        self.cx_active.decrement(1.0);
        self.cx_destroy.increment(1);
        self.host.cx_active.fetch_sub(1, Ordering::Relaxed);
    }
}
