//! The ListenerManager: runs an accept loop per listener, starts a Connection actor per accepted
//! connection, and drains listeners on request (stop accepting, then `Drain` to each connection).
//!
//! Connection actors are not linked to the manager: a manager failure must cost no open
//! connection. They count their own failures (see `actors/connection.rs`), so a restarted manager
//! needs nothing from its predecessor but the server's registry; a clean stop (shutdown) stops
//! them.

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
}

impl Actor for ListenerManager {
    type Msg = ListenerManagerMsg;
    type State = ListenerManagerState;
    type Arguments = Arc<ServerContext>;

    async fn pre_start(
        &self,
        _myself: ActorRef<ListenerManagerMsg>,
        ctx: Arc<ServerContext>,
    ) -> Result<ListenerManagerState, ActorProcessingErr> {
        let stats = &ctx.stats;
        let connection_failures = stats.counter("supervisor.connection.failures");
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
                connection_failures.clone(),
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
        Ok(ListenerManagerState { ctx, accept_loops })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ListenerManagerMsg>,
        state: &mut ListenerManagerState,
    ) -> Result<(), ActorProcessingErr> {
        // A clean stop is the server shutting down: the connections go with it (all at once,
        // then one bounded wait, as `stop_children_and_wait` does for linked children).
        state.accept_loops.clear();
        for connection in state.ctx.connections.all() {
            connection.stop();
        }
        state
            .ctx
            .connections
            .wait_empty(Duration::from_secs(5))
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
                for conn in state.ctx.connections.all() {
                    conn.cast(ConnectionMsg::Drain);
                }
            }
            ListenerManagerMsg::InjectConnectionFault { peer } => {
                for conn in state.ctx.connections.all() {
                    if conn.peer == peer {
                        conn.cast(ConnectionMsg::InjectFault);
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
        _evt: SupervisionEvent,
        _state: &mut ListenerManagerState,
    ) -> Result<(), ActorProcessingErr> {
        // No ractor children: connections supervise themselves (`actors/connection.rs`). The
        // default would stop this manager on any event.
        Ok(())
    }
}

async fn accept_loop(
    socket: Arc<tokio::net::TcpListener>,
    listener: Arc<Listener>,
    ctx: Arc<ServerContext>,
    connection_failures: Counter,
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
        super::connection::spawn(
            listener.clone(),
            ctx.clone(),
            stream,
            peer,
            connection_failures.clone(),
        );
    }
}
