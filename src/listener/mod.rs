//! Listeners: a bound socket, its stats, its state (Warming → Active → Draining) and the
//! connection manager its connections run. Accepting is the ListenerManager actor's job; this
//! module is the data it works on.

use crate::http::connection_manager::ConnectionManager;
use crate::observe::Stats;
use metrics::{Counter, Gauge};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpSocket};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ListenerState {
    Warming = 0,
    Active = 1,
    Draining = 2,
}

pub struct Listener {
    pub name: String,
    /// The bound address; for port 0 the port the OS chose.
    pub address: SocketAddr,
    /// `listener.<stat_prefix>.*`.
    pub stat_prefix: String,
    pub stats: ListenerStats,
    pub cm: Arc<ConnectionManager>,
    socket: Mutex<Option<Arc<TcpListener>>>,
    state: AtomicU8,
}

/// `listener.<address or stat_prefix>.*`.
pub struct ListenerStats {
    pub downstream_cx_total: Counter,
    pub downstream_cx_active: Gauge,
    pub downstream_cx_destroy: Counter,
}

impl ListenerStats {
    pub fn new(stats: &Stats, prefix: &str) -> Self {
        ListenerStats {
            downstream_cx_total: stats.counter(format!("listener.{prefix}.downstream_cx_total")),
            downstream_cx_active: stats.gauge(format!("listener.{prefix}.downstream_cx_active")),
            downstream_cx_destroy: stats
                .counter(format!("listener.{prefix}.downstream_cx_destroy")),
        }
    }
}

/// Envoy's default backlog on Linux is somaxconn; 4096 is today's kernel default for it.
const BACKLOG: u32 = 4096;

/// Bind a listening socket. Done at startup, before any actor runs, so that a bad address is a
/// startup error and port 0 is known before the first connection.
pub fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(BACKLOG)
}

impl Listener {
    pub fn new(
        name: String,
        socket: TcpListener,
        stat_prefix: &str,
        cm: Arc<ConnectionManager>,
        stats: &Stats,
    ) -> std::io::Result<Listener> {
        let address = socket.local_addr()?;
        Ok(Listener {
            name,
            address,
            stat_prefix: stat_prefix.to_string(),
            stats: ListenerStats::new(stats, stat_prefix),
            cm,
            socket: Mutex::new(Some(Arc::new(socket))),
            state: AtomicU8::new(ListenerState::Warming as u8),
        })
    }

    /// The socket to accept on, unless the listener has stopped listening.
    pub fn socket(&self) -> Option<Arc<TcpListener>> {
        self.socket
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Stop listening: once the accept loops drop their handles, new connections are refused.
    pub fn stop_listening(&self) {
        self.set_state(ListenerState::Draining);
        self.socket.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    pub fn state(&self) -> ListenerState {
        match self.state.load(Ordering::Acquire) {
            0 => ListenerState::Warming,
            1 => ListenerState::Active,
            _ => ListenerState::Draining,
        }
    }

    pub fn set_state(&self, s: ListenerState) {
        self.state.store(s as u8, Ordering::Release);
    }
}
