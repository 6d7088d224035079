//! Assembling a running legate from a validated config: bind sockets, build clusters and
//! connection managers, start the actor tree. [`Server`] is the handle the binary and the tests
//! hold.

use crate::actors::connection::ConnectionRegistry;
use crate::actors::messages::RootMsg;
use crate::actors::root::RootSupervisor;
use crate::bootstrap::Config;
use crate::cluster::Cluster;
use crate::listener::{self, Listener};
use crate::observe::Stats;
use ractor::{Actor, ActorRef};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::net::TcpListener;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot bind {what} to {address}: {source}")]
    Bind {
        what: String,
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot build a listener: {0}")]
    AccessLog(std::io::Error),
    #[error("cannot start the actor tree: {0}")]
    Spawn(String),
}

/// Options from the command line that the running server reports or uses.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub command_line: Vec<String>,
    pub concurrency: usize,
    pub config_path: Option<String>,
}

/// Envoy's server states, as `/server_info` and `server.state` report them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    Live = 0,
    Draining = 1,
    PreInitializing = 2,
    Initializing = 3,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Live => "LIVE",
            State::Draining => "DRAINING",
            State::PreInitializing => "PRE_INITIALIZING",
            State::Initializing => "INITIALIZING",
        }
    }
}

/// Everything the actors and the admin API share. Created once; outlives any actor restart.
pub struct ServerContext {
    pub stats: Stats,
    pub clusters: Vec<Arc<Cluster>>,
    pub listeners: Vec<Arc<Listener>>,
    pub admin_socket: Option<Arc<TcpListener>>,
    pub admin_address: Option<SocketAddr>,
    pub options: Options,
    pub node_id: String,
    pub started: Instant,
    pub started_at: SystemTime,
    state: AtomicU8,
    /// Downstream connections open on all listeners (admin excluded).
    pub active_connections: AtomicUsize,
    /// The actor of every open downstream connection; outlives ListenerManager restarts.
    pub connections: ConnectionRegistry,
    shutdown: crate::latch::Latch,
    /// The root of the actor tree, for admin commands (set once it has started).
    root: std::sync::OnceLock<ActorRef<RootMsg>>,
}

impl ServerContext {
    pub fn state(&self) -> State {
        match self.state.load(Ordering::Acquire) {
            0 => State::Live,
            1 => State::Draining,
            2 => State::PreInitializing,
            _ => State::Initializing,
        }
    }

    pub fn set_state(&self, s: State) {
        self.state.store(s as u8, Ordering::Release);
        self.stats.gauge("server.state").set(s as u8 as f64);
    }

    /// `/quitquitquit`: ask whoever runs the server to shut it down.
    pub fn request_shutdown(&self) {
        self.shutdown.set();
    }

    /// `/drain_listeners`: stop accepting and drain every connection; the process keeps running.
    pub fn drain_listeners(&self) {
        self.set_state(State::Draining);
        if let Some(root) = self.root.get() {
            let _ = root.cast(RootMsg::Drain);
        }
    }

    pub async fn shutdown_requested(&self) {
        self.shutdown.wait().await
    }
}

/// A running legate.
pub struct Server {
    ctx: Arc<ServerContext>,
    root: ActorRef<RootMsg>,
    root_done: tokio::task::JoinHandle<()>,
    _timer_anchor: TimerAnchor,
}

/// Keeps one timer armed in the runtime's timer wheel for as long as the server runs.
///
/// Every request arms a timer (its route timeout). tokio compares a new timer with the
/// earliest expiry it saw when it last parked, and when the wheel was empty then, it wakes its
/// driver with an `eventfd` write, for every timer armed until it parks again. Under load the
/// wheel empties between bursts, and that cost one extra system call per request (4 became 5;
/// measured with `strace -c`). A timer that fires every [`TimerAnchor::PERIOD`] keeps the
/// earliest expiry under a second away, so only timeouts shorter than that still wake the
/// driver. Its cost is one wake-up per second.
struct TimerAnchor(tokio::task::JoinHandle<()>);

impl TimerAnchor {
    const PERIOD: Duration = Duration::from_secs(1);

    fn spawn() -> Self {
        TimerAnchor(tokio::spawn(async {
            loop {
                tokio::time::sleep(Self::PERIOD).await;
            }
        }))
    }
}

impl Drop for TimerAnchor {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Server {
    /// Bind every socket, build the data plane and start the actor tree. Must run inside a
    /// multi-threaded tokio runtime.
    pub async fn start(config: Config, options: Options) -> Result<Server, ServerError> {
        let stats = Stats::new();
        let clusters: Vec<Arc<Cluster>> = config
            .clusters
            .iter()
            .map(|c| Cluster::new(c.clone(), &stats))
            .collect();

        let mut listeners = Vec::new();
        for l in &config.listeners {
            let socket = listener::bind(l.address).map_err(|e| ServerError::Bind {
                what: format!("listener '{}'", l.name),
                address: l.address,
                source: e,
            })?;
            let listener =
                Listener::new(l, socket, &clusters, &stats).map_err(ServerError::AccessLog)?;
            listeners.push(Arc::new(listener));
        }

        let (admin_socket, admin_address) = match config.admin {
            Some(addr) => {
                let socket = listener::bind(addr).map_err(|e| ServerError::Bind {
                    what: "admin".into(),
                    address: addr,
                    source: e,
                })?;
                let bound = socket.local_addr().ok();
                (Some(Arc::new(socket)), bound)
            }
            None => (None, None),
        };

        stats
            .gauge("server.concurrency")
            .set(options.concurrency as f64);
        stats.gauge("server.live").set(1.0);
        let ctx = Arc::new(ServerContext {
            stats,
            clusters,
            listeners,
            admin_socket,
            admin_address,
            options,
            node_id: config.node_id,
            started: Instant::now(),
            started_at: SystemTime::now(),
            state: AtomicU8::new(State::Initializing as u8),
            active_connections: AtomicUsize::new(0),
            connections: ConnectionRegistry::default(),
            shutdown: Default::default(),
            root: Default::default(),
        });
        ctx.set_state(State::Initializing);

        let (root, handle) = Actor::spawn(None, RootSupervisor, ctx.clone())
            .await
            .map_err(|e| ServerError::Spawn(e.to_string()))?;
        let _ = ctx.root.set(root.clone());
        ctx.set_state(State::Live);
        let root_done = tokio::spawn(async move {
            let _ = handle.await;
        });
        Ok(Server {
            ctx,
            root,
            root_done,
            _timer_anchor: TimerAnchor::spawn(),
        })
    }

    pub fn context(&self) -> &Arc<ServerContext> {
        &self.ctx
    }

    pub fn stats(&self) -> &Stats {
        &self.ctx.stats
    }

    /// The bound address of the listener named `name` (the OS's port when configured as 0).
    pub fn listener_address(&self, name: &str) -> Option<SocketAddr> {
        self.ctx
            .listeners
            .iter()
            .find(|l| l.name == name)
            .map(|l| l.address)
    }

    pub fn admin_address(&self) -> Option<SocketAddr> {
        self.ctx.admin_address
    }

    pub fn root(&self) -> &ActorRef<RootMsg> {
        &self.root
    }

    /// Resolves when `/quitquitquit` asks for a shutdown, or when the actor tree gave up (a
    /// supervisor exhausted its restarts); the bool is true in the second case.
    pub async fn wait(&mut self) -> bool {
        tokio::select! {
            _ = self.ctx.shutdown_requested() => false,
            _ = &mut self.root_done => true,
        }
    }

    /// Stop accepting, let in-flight requests finish for up to `drain_time`, then stop the tree.
    /// Returns the number of connections still open when the deadline passed.
    pub async fn shutdown(self, drain_time: Duration) -> usize {
        self.ctx.set_state(State::Draining);
        let _ = self.root.cast(RootMsg::Drain);
        let deadline = Instant::now() + drain_time;
        let mut left = self.ctx.active_connections.load(Ordering::Acquire);
        while left > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            left = self.ctx.active_connections.load(Ordering::Acquire);
        }
        self.root.stop(Some("shutdown".into()));
        let _ = tokio::time::timeout(Duration::from_secs(5), self.root_done).await;
        left
    }
}
