//! Clusters: named sets of upstream hosts, a load balancer over them, and one connection pool per
//! host.
//!
//! The ClusterManager actor owns membership (STATIC at boot, STRICT_DNS on every refresh) and
//! publishes it as an immutable [`HostSet`] behind an `ArcSwap`; requests read it with one atomic
//! load. A [`Cluster`] is created once at boot and outlives any restart of the actor.

pub mod circuit_breaker;
pub mod dns;
pub mod endpoint_pool;
pub mod h1_codec;
pub mod h1_conn;
pub mod load_balancer;
pub mod transport;

use crate::bootstrap::{ClusterConfig, ClusterType};
use crate::observe::stats::StatusCounters;
use crate::observe::{Histogram, Stats};
use arc_swap::ArcSwap;
use circuit_breaker::CircuitBreakers;
use endpoint_pool::EndpointPool;
use load_balancer::{Lb, LoadBalancer};
use metrics::{Counter, Gauge};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub struct Cluster {
    pub name: String,
    pub config: ClusterConfig,
    pub stats: ClusterStats,
    /// `circuit_breakers.thresholds` (priority DEFAULT) and their counters.
    pub circuit_breakers: CircuitBreakers,
    hosts: ArcSwap<HostSet>,
    lb: Lb,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// `cluster.<name>.*`, created once per cluster.
pub struct ClusterStats {
    pub upstream_cx_total: Counter,
    pub upstream_cx_active: Gauge,
    pub upstream_cx_connect_fail: Counter,
    pub upstream_cx_connect_timeout: Counter,
    pub upstream_cx_destroy: Counter,
    pub upstream_cx_none_healthy: Counter,
    pub upstream_cx_http1_total: Counter,
    pub upstream_cx_http2_total: Counter,
    pub upstream_rq_total: Counter,
    pub upstream_rq_active: Gauge,
    pub upstream_rq_completed: Counter,
    pub upstream_rq_timeout: Counter,
    pub upstream_rq_retry: Counter,
    pub upstream_rq_rx_reset: Counter,
    pub upstream_rq_tx_reset: Counter,
    pub upstream_rq: StatusCounters,
    pub upstream_rq_time: Arc<Histogram>,
    pub membership_total: Gauge,
    pub membership_healthy: Gauge,
    pub membership_change: Counter,
    pub update_success: Counter,
    pub update_failure: Counter,
}

impl ClusterStats {
    fn new(stats: &Stats, name: &str) -> Self {
        let p = format!("cluster.{name}.");
        let c = |s: &str| stats.counter(format!("{p}{s}"));
        let g = |s: &str| stats.gauge(format!("{p}{s}"));
        ClusterStats {
            upstream_cx_total: c("upstream_cx_total"),
            upstream_cx_active: g("upstream_cx_active"),
            upstream_cx_connect_fail: c("upstream_cx_connect_fail"),
            upstream_cx_connect_timeout: c("upstream_cx_connect_timeout"),
            upstream_cx_destroy: c("upstream_cx_destroy"),
            upstream_cx_none_healthy: c("upstream_cx_none_healthy"),
            upstream_cx_http1_total: c("upstream_cx_http1_total"),
            upstream_cx_http2_total: c("upstream_cx_http2_total"),
            upstream_rq_total: c("upstream_rq_total"),
            upstream_rq_active: g("upstream_rq_active"),
            upstream_rq_completed: c("upstream_rq_completed"),
            upstream_rq_timeout: c("upstream_rq_timeout"),
            upstream_rq_retry: c("upstream_rq_retry"),
            upstream_rq_rx_reset: c("upstream_rq_rx_reset"),
            upstream_rq_tx_reset: c("upstream_rq_tx_reset"),
            upstream_rq: StatusCounters::new(stats, &format!("{p}upstream_rq_")),
            upstream_rq_time: stats.histogram(format!("{p}upstream_rq_time")),
            membership_total: g("membership_total"),
            membership_healthy: g("membership_healthy"),
            membership_change: c("membership_change"),
            update_success: c("update_success"),
            update_failure: c("update_failure"),
        }
    }
}

/// The hosts of a cluster at one moment. Replaced whole, never mutated.
#[derive(Default)]
pub struct HostSet {
    pub hosts: Vec<Arc<Host>>,
}

/// One upstream endpoint: its address, weight, per-host counters (admin `/clusters`) and pool.
pub struct Host {
    pub address: SocketAddr,
    /// The name it was resolved from (STRICT_DNS), empty for STATIC.
    pub hostname: String,
    pub weight: u32,
    pub stats: Arc<HostStats>,
    pub pool: EndpointPool,
}

/// Per-host counters as Envoy's `/clusters` lists them. Plain atomics, read by admin, and
/// `rq_active` by the LEAST_REQUEST balancer.
#[derive(Default)]
pub struct HostStats {
    pub cx_total: AtomicU64,
    pub cx_active: AtomicU64,
    pub cx_connect_fail: AtomicU64,
    pub rq_total: AtomicU64,
    pub rq_active: AtomicU64,
    pub rq_error: AtomicU64,
    pub rq_success: AtomicU64,
    pub rq_timeout: AtomicU64,
}

impl HostStats {
    pub fn get(v: &AtomicU64) -> u64 {
        v.load(Ordering::Relaxed)
    }
}

impl Cluster {
    pub fn new(config: ClusterConfig, stats: &Stats) -> Arc<Cluster> {
        let cluster_stats = ClusterStats::new(stats, &config.name);
        Arc::new(Cluster {
            name: config.name.clone(),
            stats: cluster_stats,
            circuit_breakers: CircuitBreakers::new(config.circuit_breakers, stats, &config.name),
            hosts: ArcSwap::from_pointee(HostSet::default()),
            lb: Lb::new(config.lb_policy),
            config,
        })
    }

    pub fn is_dns(&self) -> bool {
        self.config.cluster_type == ClusterType::StrictDns
    }

    /// The current membership (one atomic load).
    pub fn hosts(&self) -> arc_swap::Guard<Arc<HostSet>> {
        self.hosts.load()
    }

    /// Publish a new membership. Only the ClusterManager calls this.
    pub fn set_hosts(&self, hosts: Vec<Arc<Host>>) {
        let n = hosts.len() as f64;
        self.lb.rebuild(&hosts);
        self.hosts.store(Arc::new(HostSet { hosts }));
        self.stats.membership_total.set(n);
        // No health checking yet: every member is healthy.
        self.stats.membership_healthy.set(n);
        self.stats.membership_change.increment(1);
    }

    /// Pick a host for a request; `None` means no healthy upstream.
    pub fn pick(&self) -> Option<Arc<Host>> {
        let set = self.hosts.load();
        self.lb.pick(&set.hosts).cloned()
    }

    pub fn new_host(
        self: &Arc<Self>,
        address: SocketAddr,
        hostname: String,
        weight: u32,
    ) -> Arc<Host> {
        Arc::new(Host {
            address,
            hostname,
            weight,
            stats: Arc::default(),
            pool: EndpointPool::new(address, self.config.connect_timeout, self.config.protocol),
        })
    }
}
