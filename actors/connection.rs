//! One actor per downstream connection: the lifecycle shell around the connection's codec task.
//! The task does the I/O; the actor takes `Drain` and fails alone (its state's `Drop` aborts the
//! task, closing only this connection).

use super::messages::ConnectionMsg;
use super::supervision::AbortOnDrop;
use crate::http::connection_manager::{self, Downstream};
use crate::listener::Listener;
use crate::server::ServerContext;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
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
        };
        let open = Open::new(args.listener.clone(), args.ctx);
        let cm = args.listener.cm.clone();
        let stream = args.stream;
        let task = tokio::spawn(async move {
            let _open = open;
            connection_manager::serve(cm, stream, ds, rx).await;
            myself.stop(None);
        });
        Ok(ConnectionState {
            drain: Some(tx),
            _task: AbortOnDrop(task),
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
