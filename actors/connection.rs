//! One actor per downstream connection: the lifecycle shell around the connection's codec task.
//!
//! A connection is an actor in Erlang's sense, without ractor's machinery: ractor gives every
//! actor two unbounded channels (each allocating a 32-slot block up front), two oneshots, a
//! supervision tree and a task of its own, about 7 KiB per actor, which would be most of what an
//! idle keep-alive connection costs. Here the connection's own task is the actor, its mailbox is
//! one word of flags ([`ConnectionMsg`] commands are idempotent), and its supervisor is the
//! ListenerManager's policy applied in place: a panic is caught at the task's edge, counted as
//! `supervisor.connection.failures`, and closes only this connection (never restarted: the socket
//! is gone).
//!
//! Connections are not children of any ListenerManager incarnation: a manager that fails and
//! restarts must not take every open connection (and its in-flight requests) down with it. Each
//! connection records itself in the server's [`ConnectionRegistry`] for as long as it lives, so a
//! restarted manager finds the connections it is to drain.

use super::messages::ConnectionMsg;
use crate::http::connection_manager::Downstream;
use crate::listener::Listener;
use crate::server::ServerContext;
use metrics::Counter;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Notify};

/// Mailbox flags, one per [`ConnectionMsg`] (and the supervisor's stop).
const DRAIN: u8 = 1;
const FAULT: u8 = 2;
const STOP: u8 = 4;

/// A connection's mailbox: commands are flags, so it never grows and a repeated command (a
/// `Drain` resent by a restarted manager) is the same command.
#[derive(Default)]
struct Mailbox {
    flags: AtomicU8,
    /// Wakes the connection; `notify_one` keeps a permit if the task is not waiting yet.
    notify: Notify,
}

impl Mailbox {
    fn post(&self, flag: u8) {
        // Release: pairs with the task's Acquire load after it wakes.
        self.flags.fetch_or(flag, Ordering::Release);
        self.notify.notify_one();
    }
}

/// The address of one connection actor.
#[derive(Clone)]
pub struct ConnectionRef {
    pub peer: SocketAddr,
    mailbox: Arc<Mailbox>,
}

impl ConnectionRef {
    pub fn cast(&self, msg: ConnectionMsg) {
        self.mailbox.post(match msg {
            ConnectionMsg::Drain => DRAIN,
            ConnectionMsg::InjectFault => FAULT,
        });
    }

    /// Close the connection at once (server shutdown), as stopping an actor does.
    pub fn stop(&self) {
        self.mailbox.post(STOP);
    }
}

/// Every live connection actor. Shared by all ListenerManager incarnations: it outlives a manager
/// restart, as the connections do.
#[derive(Default)]
pub struct ConnectionRegistry {
    next_id: AtomicU64,
    connections: Mutex<foldhash::HashMap<u64, ConnectionRef>>,
    /// Notified when the last connection leaves.
    empty: Notify,
}

impl ConnectionRegistry {
    fn lock(&self) -> MutexGuard<'_, foldhash::HashMap<u64, ConnectionRef>> {
        self.connections.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The live connections.
    pub fn all(&self) -> Vec<ConnectionRef> {
        self.lock().values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Wait (at most `timeout`) until no connection is left.
    pub async fn wait_empty(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, async {
            loop {
                let left = self.empty.notified();
                tokio::pin!(left);
                // Registered before the check, so a removal in between is not missed.
                left.as_mut().enable();
                if self.is_empty() {
                    return;
                }
                left.await;
            }
        })
        .await;
    }

    fn remove(&self, id: u64) {
        let mut map = self.lock();
        map.remove(&id);
        if map.is_empty() {
            self.empty.notify_waiters();
        }
    }
}

/// Keeps the connection in the registry for exactly as long as its task lives (closed, failed or
/// stopped alike).
struct Registered {
    ctx: Arc<ServerContext>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.ctx.connections.remove(self.id);
    }
}

/// Keeps `listener.<prefix>.downstream_cx_active` and the server's connection count true however
/// the task ends (closed, drained, stopped or failed).
struct Open {
    listener: Arc<Listener>,
    ctx: Arc<ServerContext>,
}

impl Open {
    fn new(listener: Arc<Listener>, ctx: Arc<ServerContext>) -> Self {
        listener.stats.downstream_cx_total.increment(1);
        listener.stats.downstream_cx_active.increment(1.0);
        ctx.active_connections.fetch_add(1, Ordering::AcqRel);
        Open { listener, ctx }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.listener.stats.downstream_cx_active.decrement(1.0);
        self.listener.stats.downstream_cx_destroy.increment(1);
        self.ctx.active_connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Start the actor of an accepted connection. `failures` counts connections that failed
/// (`supervisor.connection.failures`).
pub fn spawn(
    listener: Arc<Listener>,
    ctx: Arc<ServerContext>,
    stream: TcpStream,
    peer: SocketAddr,
    failures: Counter,
) {
    let local = stream.local_addr().unwrap_or(listener.address);
    let ds = Downstream {
        remote: peer,
        local,
        tls: false,
    };
    let mailbox = Arc::new(Mailbox::default());
    let id = ctx.connections.next_id.fetch_add(1, Ordering::Relaxed);
    ctx.connections.lock().insert(
        id,
        ConnectionRef {
            peer,
            mailbox: mailbox.clone(),
        },
    );
    let registered = Registered {
        ctx: ctx.clone(),
        id,
    };
    let open = Open::new(listener.clone(), ctx);
    // Boxed: tokio copies a task's future whole each time it moves it and again each time it
    // changes the task's stage (running, finished, consumed), ~1.1 KB here; one copy into a box
    // and one allocation cost less.
    tokio::spawn(Box::pin(async move {
        let _registered = registered;
        let _open = open;
        let (drain_tx, drain_rx) = oneshot::channel();
        let mut drain_tx = Some(drain_tx);
        // Everything the task holds while the connection lives is created here, inside the
        // task's future: a future moved in from outside would be stored twice.
        let conn = crate::listener::connection::run(listener, stream, ds, drain_rx);
        tokio::pin!(conn);
        let mail = mailbox.notify.notified();
        tokio::pin!(mail);
        let mut step = |cx: &mut Context<'_>| -> Poll<()> {
            while mail.as_mut().poll(cx).is_ready() {
                mail.set(mailbox.notify.notified());
                let flags = mailbox.flags.load(Ordering::Acquire);
                if flags & STOP != 0 {
                    return Poll::Ready(());
                }
                if flags & FAULT != 0 {
                    panic!("injected fault (test hook)");
                }
                if flags & DRAIN != 0 {
                    if let Some(tx) = drain_tx.take() {
                        let _ = tx.send(());
                    }
                }
            }
            conn.as_mut().poll(cx)
        };
        // The supervisor's edge: a panic ends this connection only, and is counted. The failed
        // future's state (the socket, the registry entry, the gauges) is dropped with the task.
        let outcome = std::future::poll_fn(|cx| {
            match std::panic::catch_unwind(AssertUnwindSafe(|| step(cx))) {
                Ok(Poll::Pending) => Poll::Pending,
                Ok(Poll::Ready(())) => Poll::Ready(None),
                Err(panic) => Poll::Ready(Some(panic)),
            }
        })
        .await;
        if let Some(panic) = outcome {
            let reason = panic
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("panic");
            tracing::warn!(%peer, error = reason, "connection actor failed");
            failures.increment(1);
        }
    }));
}
