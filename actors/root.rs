//! The RootSupervisor: starts the three managers and restarts whichever fails, one-for-one.
//! A manager that exhausts its restart budget stops the root, and the process exits non-zero.

use super::admin::AdminActor;
use super::cluster_manager::ClusterManager;
use super::listener_manager::ListenerManager;
use super::messages::{ClusterManagerMsg, ListenerManagerMsg, RootMsg};
use super::supervision::RestartBudget;
use crate::server::ServerContext;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};
use std::sync::Arc;
use std::time::Duration;

pub struct RootSupervisor;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Child {
    ClusterManager,
    ListenerManager,
    Admin,
}

impl Child {
    fn name(self) -> &'static str {
        match self {
            Child::ClusterManager => "cluster_manager",
            Child::ListenerManager => "listener_manager",
            Child::Admin => "admin",
        }
    }
}

pub struct RootState {
    ctx: Arc<ServerContext>,
    cluster_manager: ActorRef<ClusterManagerMsg>,
    listener_manager: ActorRef<ListenerManagerMsg>,
    admin: ActorCell,
    budgets: [RestartBudget; 3],
    draining: bool,
}

impl RootState {
    fn which(&self, cell: &ActorCell) -> Option<Child> {
        let id = cell.get_id();
        if id == self.cluster_manager.get_id() {
            Some(Child::ClusterManager)
        } else if id == self.listener_manager.get_id() {
            Some(Child::ListenerManager)
        } else if id == self.admin.get_id() {
            Some(Child::Admin)
        } else {
            None
        }
    }
}

async fn spawn_child(
    child: Child,
    ctx: &Arc<ServerContext>,
    root: &ActorRef<RootMsg>,
) -> Result<ActorCell, ActorProcessingErr> {
    let sup = root.get_cell();
    let cell = match child {
        // Clusters start first: listeners route to them.
        Child::ClusterManager => Actor::spawn_linked(None, ClusterManager, ctx.clone(), sup)
            .await?
            .0
            .get_cell(),
        Child::ListenerManager => Actor::spawn_linked(None, ListenerManager, ctx.clone(), sup)
            .await?
            .0
            .get_cell(),
        Child::Admin => Actor::spawn_linked(None, AdminActor, ctx.clone(), sup)
            .await?
            .0
            .get_cell(),
    };
    Ok(cell)
}

impl Actor for RootSupervisor {
    type Msg = RootMsg;
    type State = RootState;
    type Arguments = Arc<ServerContext>;

    async fn pre_start(
        &self,
        myself: ActorRef<RootMsg>,
        ctx: Arc<ServerContext>,
    ) -> Result<RootState, ActorProcessingErr> {
        let cluster_manager = spawn_child(Child::ClusterManager, &ctx, &myself)
            .await?
            .into();
        let listener_manager = spawn_child(Child::ListenerManager, &ctx, &myself)
            .await?
            .into();
        let admin = spawn_child(Child::Admin, &ctx, &myself).await?;
        Ok(RootState {
            ctx,
            cluster_manager,
            listener_manager,
            admin,
            budgets: Default::default(),
            draining: false,
        })
    }

    async fn post_stop(
        &self,
        myself: ActorRef<RootMsg>,
        _state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        myself
            .stop_children_and_wait(Some("shutdown".into()), Some(Duration::from_secs(5)))
            .await;
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<RootMsg>,
        msg: RootMsg,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RootMsg::Drain => {
                state.draining = true;
                let _ = state.listener_manager.cast(ListenerManagerMsg::Drain);
            }
            RootMsg::ListenerManager(m) => {
                let _ = state.listener_manager.cast(m);
            }
            RootMsg::ClusterManager(m) => {
                let _ = state.cluster_manager.cast(m);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<RootMsg>,
        evt: SupervisionEvent,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, failed) = match &evt {
            SupervisionEvent::ActorFailed(cell, err) => {
                tracing::error!(actor = ?cell.get_id(), error = %err, "manager failed");
                (cell, true)
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                tracing::info!(actor = ?cell.get_id(), ?reason, "manager stopped");
                (cell, false)
            }
            _ => return Ok(()),
        };
        let Some(child) = state.which(cell) else {
            return Ok(());
        };
        // A manager that stops on its own while we are not shutting down is restarted too: the
        // server needs all three.
        let _ = failed;
        let stats = &state.ctx.stats;
        stats
            .counter(format!("supervisor.{}.failures", child.name()))
            .increment(1);
        let budget = &mut state.budgets[child as usize];
        if !budget.allow() {
            tracing::error!(
                child = child.name(),
                "restart budget exhausted; stopping legate"
            );
            myself.stop(Some(format!(
                "{} exhausted its restart budget",
                child.name()
            )));
            return Ok(());
        }
        let cell = spawn_child(child, &state.ctx, &myself).await?;
        stats
            .counter(format!("supervisor.{}.restarts", child.name()))
            .increment(1);
        tracing::warn!(child = child.name(), "restarted");
        match child {
            Child::ClusterManager => state.cluster_manager = cell.into(),
            Child::ListenerManager => {
                state.listener_manager = cell.into();
                if state.draining {
                    let _ = state.listener_manager.cast(ListenerManagerMsg::Drain);
                }
            }
            Child::Admin => state.admin = cell,
        }
        Ok(())
    }
}
