//! The ClusterManager: owns cluster membership and publishes it. STATIC clusters get their hosts
//! once; STRICT_DNS clusters are resolved at start and every `dns_refresh_rate`, keeping the
//! `Host` (and its warm connection pool) of every address that stays. One EndpointPool actor runs
//! per host.

use super::endpoint_pool::EndpointPoolActor;
use super::messages::{ClusterManagerMsg, EndpointPoolMsg};
use super::supervision::RestartBudget;
use crate::cluster::{dns, Cluster, Host};
use crate::server::ServerContext;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

pub struct ClusterManager;

pub struct ClusterManagerState {
    ctx: Arc<ServerContext>,
    pools: HashMap<ActorId, PoolEntry>,
}

struct PoolEntry {
    host: Arc<Host>,
    actor: ActorRef<EndpointPoolMsg>,
    budget: RestartBudget,
}

/// How long the first resolution of a STRICT_DNS cluster may hold up startup.
const INITIAL_DNS_TIMEOUT: Duration = Duration::from_secs(5);

type Resolved = Vec<(SocketAddr, String, u32)>;

async fn resolve_cluster(cluster: &Cluster) -> Result<Resolved, String> {
    let mut out = Vec::new();
    for ep in &cluster.config.endpoints {
        let addrs = dns::resolve(&ep.host, ep.port, cluster.config.dns_lookup_family)
            .await
            .map_err(|e| format!("{}: {e}", ep.host))?;
        out.extend(addrs.into_iter().map(|a| (a, ep.host.clone(), ep.weight)));
    }
    Ok(out)
}

impl ClusterManager {
    async fn spawn_pool(
        myself: &ActorRef<ClusterManagerMsg>,
        state: &mut ClusterManagerState,
        host: Arc<Host>,
        budget: RestartBudget,
    ) -> Result<(), ActorProcessingErr> {
        let (actor, _) =
            Actor::spawn_linked(None, EndpointPoolActor, host.clone(), myself.get_cell()).await?;
        state.pools.insert(
            actor.get_id(),
            PoolEntry {
                host,
                actor,
                budget,
            },
        );
        Ok(())
    }

    /// Publish a new membership for `cluster`, reusing hosts whose address stays.
    async fn apply(
        myself: &ActorRef<ClusterManagerMsg>,
        state: &mut ClusterManagerState,
        cluster: &Arc<Cluster>,
        resolved: Resolved,
    ) -> Result<(), ActorProcessingErr> {
        let current = cluster.hosts();
        let mut next = Vec::with_capacity(resolved.len());
        let mut fresh = Vec::new();
        for (addr, name, weight) in resolved {
            match current
                .hosts
                .iter()
                .find(|h| h.address == addr && h.weight == weight)
            {
                Some(h) => next.push(h.clone()),
                None => {
                    let h = cluster.new_host(addr, name, weight);
                    fresh.push(h.clone());
                    next.push(h);
                }
            }
        }
        let unchanged = fresh.is_empty() && next.len() == current.hosts.len();
        if unchanged {
            return Ok(());
        }
        let removed: Vec<Arc<Host>> = current
            .hosts
            .iter()
            .filter(|h| !next.iter().any(|n| Arc::ptr_eq(n, h)))
            .cloned()
            .collect();
        drop(current);
        cluster.set_hosts(next);
        for h in fresh {
            Self::spawn_pool(myself, state, h, RestartBudget::default()).await?;
        }
        for h in removed {
            if let Some(e) = state.pools.values().find(|e| Arc::ptr_eq(&e.host, &h)) {
                let _ = e.actor.cast(EndpointPoolMsg::Close);
            }
        }
        Ok(())
    }
}

impl Actor for ClusterManager {
    type Msg = ClusterManagerMsg;
    type State = ClusterManagerState;
    type Arguments = Arc<ServerContext>;

    async fn pre_start(
        &self,
        myself: ActorRef<ClusterManagerMsg>,
        ctx: Arc<ServerContext>,
    ) -> Result<ClusterManagerState, ActorProcessingErr> {
        let mut state = ClusterManagerState {
            ctx: ctx.clone(),
            pools: HashMap::new(),
        };
        for (i, cluster) in ctx.clusters.iter().enumerate() {
            let existing: Vec<Arc<Host>> = cluster.hosts().hosts.clone();
            if !existing.is_empty() {
                // A restarted manager adopts the published hosts: traffic never noticed.
                for h in existing {
                    Self::spawn_pool(&myself, &mut state, h, RestartBudget::default()).await?;
                }
            } else if cluster.is_dns() {
                match tokio::time::timeout(INITIAL_DNS_TIMEOUT, resolve_cluster(cluster)).await {
                    Ok(Ok(resolved)) => {
                        cluster.stats.update_success.increment(1);
                        Self::apply(&myself, &mut state, cluster, resolved).await?;
                    }
                    Ok(Err(e)) => {
                        cluster.stats.update_failure.increment(1);
                        tracing::warn!(cluster = %cluster.name, error = %e, "DNS resolution failed");
                    }
                    Err(_) => {
                        cluster.stats.update_failure.increment(1);
                        tracing::warn!(cluster = %cluster.name, "DNS resolution timed out");
                    }
                }
            } else {
                let resolved = cluster
                    .config
                    .endpoints
                    .iter()
                    .filter_map(|ep| {
                        // Validation guarantees STATIC endpoints are IP literals.
                        let ip: IpAddr = ep.host.parse().ok()?;
                        Some((SocketAddr::new(ip, ep.port), String::new(), ep.weight))
                    })
                    .collect();
                Self::apply(&myself, &mut state, cluster, resolved).await?;
            }
            if cluster.is_dns() {
                let rate = cluster.config.dns_refresh_rate;
                myself.send_after(rate, move || ClusterManagerMsg::RefreshDns { cluster: i });
            }
        }
        Ok(state)
    }

    async fn post_stop(
        &self,
        myself: ActorRef<ClusterManagerMsg>,
        _state: &mut ClusterManagerState,
    ) -> Result<(), ActorProcessingErr> {
        myself
            .stop_children_and_wait(None, Some(Duration::from_secs(5)))
            .await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<ClusterManagerMsg>,
        msg: ClusterManagerMsg,
        state: &mut ClusterManagerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ClusterManagerMsg::RefreshDns { cluster } => {
                let Some(c) = state.ctx.clusters.get(cluster).cloned() else {
                    return Ok(());
                };
                // Resolve off the actor so a slow resolver never blocks other clusters.
                let me = myself.clone();
                tokio::spawn(async move {
                    let result = resolve_cluster(&c).await;
                    let _ = me.cast(ClusterManagerMsg::DnsResolved { cluster, result });
                });
            }
            ClusterManagerMsg::DnsResolved { cluster, result } => {
                let Some(c) = state.ctx.clusters.get(cluster).cloned() else {
                    return Ok(());
                };
                match result {
                    Ok(resolved) => {
                        c.stats.update_success.increment(1);
                        Self::apply(&myself, state, &c, resolved).await?;
                    }
                    // Envoy keeps the last good membership when a refresh fails.
                    Err(e) => {
                        c.stats.update_failure.increment(1);
                        tracing::warn!(cluster = %c.name, error = %e, "DNS refresh failed");
                    }
                }
                let rate = c.config.dns_refresh_rate;
                myself.send_after(rate, move || ClusterManagerMsg::RefreshDns { cluster });
            }
            ClusterManagerMsg::InjectFault => return Err("injected fault".into()),
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<ClusterManagerMsg>,
        evt: SupervisionEvent,
        state: &mut ClusterManagerState,
    ) -> Result<(), ActorProcessingErr> {
        match evt {
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                state.pools.remove(&cell.get_id());
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                let Some(mut entry) = state.pools.remove(&cell.get_id()) else {
                    return Ok(());
                };
                let stats = &state.ctx.stats;
                stats
                    .counter("supervisor.endpoint_pool.failures")
                    .increment(1);
                tracing::warn!(host = %entry.host.address, error = %err, "endpoint pool failed");
                // The pool's connections live in the shared `Host`, so a restarted actor
                // carries on with them; past its budget the host keeps serving unsupervised
                // and the failure escalates.
                if !entry.budget.allow() {
                    return Err(
                        format!("endpoint pool {} keeps failing", entry.host.address).into(),
                    );
                }
                stats
                    .counter("supervisor.endpoint_pool.restarts")
                    .increment(1);
                let budget = std::mem::take(&mut entry.budget);
                Self::spawn_pool(&myself, state, entry.host, budget).await?;
            }
            _ => {}
        }
        Ok(())
    }
}
