//! The ListenerManager: runs an accept loop per listener, starts a Connection actor per accepted
//! connection, and drains listeners on request (stop accepting, then `Drain` to each connection).
//!
//! Connection actors are monitored, not linked: ractor stops an actor's children when it dies, and
//! a manager failure must cost no open connection. A restarted manager adopts the connections in
//! the server's registry; a clean stop (shutdown) stops them.

use super::connection::{ConnectionActor, ConnectionArgs};
use super::messages::{ConnectionMsg, ListenerManagerMsg};
use super::supervision::AbortOnDrop;
use crate::listener::{Listener, ListenerState};
use crate::server::ServerContext;
use metrics::Counter;
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use std::sync::Arc;
use std::time::Duration;

pub struct ListenerManager;

pub struct ListenerManagerState {
    ctx: Arc<ServerContext>,
    accept_loops: Vec<AbortOnDrop>,
    connection_failures: Counter,
}

impl Actor for ListenerManager {
    type Msg = ListenerManagerMsg;
    type State = ListenerManagerState;
    type Arguments = Arc<ServerContext>;

    async fn pre_start(
        &self,
        myself: ActorRef<ListenerManagerMsg>,
        ctx: Arc<ServerContext>,
    ) -> Result<ListenerManagerState, ActorProcessingErr> {
        let stats = &ctx.stats;
        // Adopt the connections a failed predecessor left running.
        for (_, connection) in ctx.connections.all() {
            myself.get_cell().monitor(connection.get_cell());
        }
        let mut accept_loops = Vec::new();
        for listener in &ctx.listeners {
            // A restarted manager resumes only the listeners that were not draining.
            if listener.state() == ListenerState::Draining {
                continue;
            }
            let Some(socket) = listener.socket() else {
                continue;
            };
            listener.set_state(ListenerState::Active);
            accept_loops.push(AbortOnDrop(tokio::spawn(accept_loop(
                socket,
                listener.clone(),
                ctx.clone(),
                myself.clone(),
            ))));
        }
        stats
            .gauge("listener_manager.total_listeners_active")
            .set(accept_loops.len() as f64);
        stats
            .gauge("listener_manager.total_listeners_draining")
            .set(0.0);
        stats
            .counter("listener_manager.listener_added")
            .absolute(ctx.listeners.len() as u64);
        Ok(ListenerManagerState {
            connection_failures: stats.counter("supervisor.connection.failures"),
            ctx,
            accept_loops,
        })
    }

    async fn post_stop(
        &self,
        myself: ActorRef<ListenerManagerMsg>,
        state: &mut ListenerManagerState,
    ) -> Result<(), ActorProcessingErr> {
        // A clean stop is the server shutting down: the connections go with it (all at once,
        // then one bounded wait, as `stop_children_and_wait` does for linked children).
        state.accept_loops.clear();
        let connections = state.ctx.connections.all();
        for (_, connection) in &connections {
            myself.get_cell().unmonitor(connection.get_cell());
            connection.stop(Some("shutdown".into()));
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            for (_, connection) in &connections {
                let _ = connection.wait(None).await;
            }
        })
        .await;
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<ListenerManagerMsg>,
        msg: ListenerManagerMsg,
        state: &mut ListenerManagerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ListenerManagerMsg::Drain => {
                for l in &state.ctx.listeners {
                    l.stop_listening();
                }
                state.accept_loops.clear();
                let stats = &state.ctx.stats;
                stats
                    .gauge("listener_manager.total_listeners_active")
                    .set(0.0);
                stats
                    .gauge("listener_manager.total_listeners_draining")
                    .set(state.ctx.listeners.len() as f64);
                for (_, conn) in state.ctx.connections.all() {
                    let _ = conn.cast(ConnectionMsg::Drain);
                }
            }
            ListenerManagerMsg::InjectConnectionFault { peer } => {
                for (p, conn) in state.ctx.connections.all() {
                    if p == peer {
                        let _ = conn.cast(ConnectionMsg::InjectFault);
                    }
                }
            }
            ListenerManagerMsg::InjectFault => {
                return Err("injected fault".into());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<ListenerManagerMsg>,
        evt: SupervisionEvent,
        state: &mut ListenerManagerState,
    ) -> Result<(), ActorProcessingErr> {
        // Only connection actors are monitored; they remove themselves from the registry.
        if let SupervisionEvent::ActorFailed(cell, err) = evt {
            // Not restarted: the socket went with the actor. Only this connection is lost.
            tracing::warn!(actor = ?cell.get_id(), error = %err, "connection actor failed");
            state.connection_failures.increment(1);
        }
        Ok(())
    }
}

async fn accept_loop(
    socket: Arc<tokio::net::TcpListener>,
    listener: Arc<Listener>,
    ctx: Arc<ServerContext>,
    manager: ActorRef<ListenerManagerMsg>,
) {
    loop {
        let (stream, peer) = match socket.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors or a connection reset during accept: back off briefly
                // instead of spinning, as Envoy does.
                tracing::warn!(listener = %listener.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let args = ConnectionArgs {
            listener: listener.clone(),
            ctx: ctx.clone(),
            stream,
            peer,
        };
        match Actor::spawn(None, ConnectionActor, args).await {
            Ok((connection, _)) => manager.get_cell().monitor(connection.get_cell()),
            Err(e) => tracing::warn!(error = %e, "cannot start connection actor"),
        }
    }
}
