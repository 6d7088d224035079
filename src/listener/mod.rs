//! Listeners: a bound socket, its stats, its state (Warming → Active → Draining), its listener
//! filters and filter chains. Accepting is the ListenerManager actor's job; what happens to an
//! accepted connection is [`connection::run`].

pub mod connection;
pub mod filter_chain;
pub mod tls_inspector;

use crate::bootstrap::{FilterChainConfig, ListenerConfig, TerminalConfig};
use crate::cluster::Cluster;
use crate::http::connection_manager::ConnectionManager;
use crate::network::tcp_proxy::TcpProxy;
use crate::network::NetworkFilter;
use crate::observe::Stats;
use crate::tls::ServerTls;
use filter_chain::{ChainMatch, ConnMeta};
use metrics::{Counter, Gauge};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
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
    pub chains: Vec<FilterChain>,
    pub default_chain: Option<FilterChain>,
    pub tls_inspector: bool,
    pub listener_filters_timeout: Duration,
    pub continue_on_listener_filters_timeout: bool,
    socket: Mutex<Option<Arc<TcpListener>>>,
    state: AtomicU8,
}

/// One filter chain, ready to run: its match, TLS, network filters and terminal filter.
pub struct FilterChain {
    pub name: String,
    pub matcher: ChainMatch,
    pub tls: Option<ServerTls>,
    pub filters: Vec<Arc<dyn NetworkFilter>>,
    pub terminal: Terminal,
}

pub enum Terminal {
    Http(Arc<ConnectionManager>),
    TcpProxy(Arc<TcpProxy>),
}

impl FilterChain {
    fn build(
        cfg: &FilterChainConfig,
        clusters: &[Arc<Cluster>],
        stats: &Stats,
    ) -> std::io::Result<FilterChain> {
        let terminal = match &cfg.terminal {
            TerminalConfig::Http(h) => {
                Terminal::Http(Arc::new(ConnectionManager::new(h, clusters, stats)?))
            }
            TerminalConfig::TcpProxy(t) => {
                Terminal::TcpProxy(Arc::new(TcpProxy::new(t, clusters, stats)?))
            }
        };
        Ok(FilterChain {
            name: cfg.name.clone(),
            matcher: cfg.matcher.clone(),
            tls: cfg.tls.clone(),
            filters: cfg.filters.iter().map(|f| f.build(stats)).collect(),
            terminal,
        })
    }

    /// The HTTP connection manager, when this chain ends in one.
    pub fn http(&self) -> Option<&Arc<ConnectionManager>> {
        match &self.terminal {
            Terminal::Http(cm) => Some(cm),
            Terminal::TcpProxy(_) => None,
        }
    }
}

/// `listener.<address or stat_prefix>.*`.
pub struct ListenerStats {
    pub downstream_cx_total: Counter,
    pub downstream_cx_active: Gauge,
    pub downstream_cx_destroy: Counter,
    pub downstream_pre_cx_timeout: Counter,
    pub no_filter_chain_match: Counter,
    pub ssl_handshake: Counter,
    pub ssl_connection_error: Counter,
}

impl ListenerStats {
    pub fn new(stats: &Stats, prefix: &str) -> Self {
        let c = |s: &str| stats.counter(format!("listener.{prefix}.{s}"));
        ListenerStats {
            downstream_cx_total: c("downstream_cx_total"),
            downstream_cx_active: stats.gauge(format!("listener.{prefix}.downstream_cx_active")),
            downstream_cx_destroy: c("downstream_cx_destroy"),
            downstream_pre_cx_timeout: c("downstream_pre_cx_timeout"),
            no_filter_chain_match: c("no_filter_chain_match"),
            ssl_handshake: c("ssl.handshake"),
            ssl_connection_error: c("ssl.connection_error"),
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
    /// Build the listener's runtime (connection managers, TCP proxies, network filters) over a
    /// socket already bound.
    pub fn new(
        cfg: &ListenerConfig,
        socket: TcpListener,
        clusters: &[Arc<Cluster>],
        stats: &Stats,
    ) -> std::io::Result<Listener> {
        let address = socket.local_addr()?;
        let chains = cfg
            .filter_chains
            .iter()
            .map(|c| FilterChain::build(c, clusters, stats))
            .collect::<Result<Vec<_>, _>>()?;
        let default_chain = cfg
            .default_filter_chain
            .as_ref()
            .map(|c| FilterChain::build(c, clusters, stats))
            .transpose()?;
        Ok(Listener {
            name: cfg.name.clone(),
            address,
            stat_prefix: cfg.stat_prefix.clone(),
            stats: ListenerStats::new(stats, &cfg.stat_prefix),
            chains,
            default_chain,
            tls_inspector: cfg.tls_inspector,
            listener_filters_timeout: cfg.listener_filters_timeout,
            continue_on_listener_filters_timeout: cfg.continue_on_listener_filters_timeout,
            socket: Mutex::new(Some(Arc::new(socket))),
            state: AtomicU8::new(ListenerState::Warming as u8),
        })
    }

    /// The chain for a connection, or the default chain; `None` closes the connection.
    pub fn select_chain(&self, meta: &ConnMeta<'_>) -> Option<&FilterChain> {
        // Most listeners have one chain that matches every connection: no scoring (it cost a
        // new connection two allocations and a tenth of its instructions).
        if let [only] = self.chains.as_slice() {
            if only.matcher.matches_all() {
                return Some(only);
            }
        }
        let matchers: Vec<&ChainMatch> = self.chains.iter().map(|c| &c.matcher).collect();
        match filter_chain::select(&matchers, meta) {
            Some(i) => Some(&self.chains[i]),
            None => self.default_chain.as_ref(),
        }
    }

    /// Every chain, the default one included.
    pub fn all_chains(&self) -> impl Iterator<Item = &FilterChain> {
        self.chains.iter().chain(self.default_chain.iter())
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
