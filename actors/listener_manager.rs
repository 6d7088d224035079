//! The ListenerManager: runs an accept loop per listener, starts a Connection actor per accepted
//! connection, and drains listeners on request (stop accepting, then `Drain` to each connection).

use super::connection::{ConnectionActor, ConnectionArgs};
use super::messages::{ConnectionMsg, ListenerManagerMsg};
use super::supervision::AbortOnDrop;
use crate::listener::{Listener, ListenerState};
use crate::server::ServerContext;
use metrics::Counter;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, ActorStatus, SupervisionEvent};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub struct ListenerManager;

pub struct ListenerManagerState {
    ctx: Arc<ServerContext>,
    accept_loops: Vec<AbortOnDrop>,
    connections: HashMap<ActorId, (SocketAddr, ActorRef<ConnectionMsg>)>,
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
            connections: HashMap::new(),
        })
    }

    async fn post_stop(
        &self,
        myself: ActorRef<ListenerManagerMsg>,
        _state: &mut ListenerManagerState,
    ) -> Result<(), ActorProcessingErr> {
        myself
            .stop_children_and_wait(Some("shutdown".into()), Some(Duration::from_secs(5)))
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
            ListenerManagerMsg::ConnectionOpened { peer, connection } => {
                // The termination event may have overtaken this message (supervision events are
                // processed first); a finished connection must not be remembered.
                if !matches!(
                    connection.get_status(),
                    ActorStatus::Stopping | ActorStatus::Stopped
                ) {
                    state
                        .connections
                        .insert(connection.get_id(), (peer, connection));
                }
            }
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
                for (_, conn) in state.connections.values() {
                    let _ = conn.cast(ConnectionMsg::Drain);
                }
            }
            ListenerManagerMsg::InjectConnectionFault { peer } => {
                for (p, conn) in state.connections.values() {
                    if *p == peer {
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
        match evt {
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                state.connections.remove(&cell.get_id());
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                // Not restarted: the socket went with the actor. Only this connection is lost.
                tracing::warn!(actor = ?cell.get_id(), error = %err, "connection actor failed");
                state.connection_failures.increment(1);
                state.connections.remove(&cell.get_id());
            }
            _ => {}
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
        match Actor::spawn_linked(None, ConnectionActor, args, manager.get_cell()).await {
            Ok((connection, _)) => {
                let _ = manager.cast(ListenerManagerMsg::ConnectionOpened { peer, connection });
            }
            Err(e) => tracing::warn!(error = %e, "cannot start connection actor"),
        }
    }
}
