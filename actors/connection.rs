//! One actor per downstream connection: the lifecycle shell around the connection's codec task.
//! The task does the I/O; the actor takes `Drain` and fails alone (its state's `Drop` aborts the
//! task, closing only this connection).
//!
//! Connection actors are monitored by the ListenerManager, not linked to it: a manager that fails
//! and restarts must not take every open connection (and its in-flight requests) down with it.
//! Each actor records itself in the server's [`ConnectionRegistry`] for as long as it lives, so a
//! restarted manager finds the connections it is to drain.

use super::messages::ConnectionMsg;
use super::supervision::AbortOnDrop;
use crate::http::connection_manager::Downstream;
use crate::listener::Listener;
use crate::server::ServerContext;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

pub struct ConnectionActor;

pub struct ConnectionArgs {
    pub listener: Arc<Listener>,
    pub ctx: Arc<ServerContext>,
    pub stream: TcpStream,
    pub peer: SocketAddr,
}

pub struct ConnectionState {
    drain: Option<oneshot::Sender<()>>,
    _task: AbortOnDrop,
    _registered: Registered,
}

/// Every live connection actor with its downstream peer. Shared by all ListenerManager
/// incarnations: it outlives a manager restart, as the connections do.
#[derive(Default)]
pub struct ConnectionRegistry {
    connections: Mutex<HashMap<ActorId, (SocketAddr, ActorRef<ConnectionMsg>)>>,
}

impl ConnectionRegistry {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<ActorId, (SocketAddr, ActorRef<ConnectionMsg>)>> {
        self.connections.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The live connections: (downstream peer, actor).
    pub fn all(&self) -> Vec<(SocketAddr, ActorRef<ConnectionMsg>)> {
        self.lock().values().cloned().collect()
    }
}

/// Keeps the actor in the registry for exactly as long as its state lives (stopped, failed or
/// killed alike).
struct Registered {
    ctx: Arc<ServerContext>,
    id: ActorId,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.ctx.connections.lock().remove(&self.id);
    }
}

/// Keeps `listener.<prefix>.downstream_cx_active` and the server's connection count true however
/// the task ends (closed, drained, or aborted with a failed actor).
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

impl Actor for ConnectionActor {
    type Msg = ConnectionMsg;
    type State = ConnectionState;
    type Arguments = ConnectionArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ConnectionMsg>,
        args: ConnectionArgs,
    ) -> Result<ConnectionState, ActorProcessingErr> {
        let (tx, rx) = oneshot::channel();
        let local = args.stream.local_addr().unwrap_or(args.listener.address);
        let ds = Downstream {
            remote: args.peer,
            local,
            tls: false,
        };
        args.ctx
            .connections
            .lock()
            .insert(myself.get_id(), (args.peer, myself.clone()));
        let registered = Registered {
            ctx: args.ctx.clone(),
            id: myself.get_id(),
        };
        let open = Open::new(args.listener.clone(), args.ctx);
        let listener = args.listener.clone();
        let stream = args.stream;
        let task = tokio::spawn(async move {
            let _open = open;
            crate::listener::connection::run(listener, stream, ds, rx).await;
            myself.stop(None);
        });
        Ok(ConnectionState {
            drain: Some(tx),
            _task: AbortOnDrop(task),
            _registered: registered,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<ConnectionMsg>,
        msg: ConnectionMsg,
        state: &mut ConnectionState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ConnectionMsg::Drain => {
                if let Some(tx) = state.drain.take() {
                    let _ = tx.send(());
                }
            }
            ConnectionMsg::InjectFault => panic!("injected fault (test hook)"),
        }
        Ok(())
    }
}
