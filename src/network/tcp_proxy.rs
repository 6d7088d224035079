//! `envoy.filters.network.tcp_proxy`: a terminal filter that connects each downstream connection
//! to a host of a cluster and copies bytes both ways until either side closes or the connection
//! is idle for `idle_timeout`. With a TLS inspector and no TLS transport socket on the chain, this
//! is TLS passthrough routed by SNI.

use crate::bootstrap::duration::ProtoDuration;
use crate::bootstrap::load::deserialize_at;
use crate::bootstrap::validate::Errors;
use crate::cluster::Cluster;
use crate::observe::Stats;
use metrics::Counter;
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TcpProxyProto {
    stat_prefix: String,
    #[serde(default)]
    cluster: Option<String>,
    #[serde(default)]
    weighted_clusters: Option<WeightedClustersProto>,
    #[serde(default)]
    idle_timeout: Option<ProtoDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightedClustersProto {
    clusters: Vec<WeightedClusterProto>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightedClusterProto {
    name: String,
    weight: u32,
}

/// Validated `TcpProxy`.
#[derive(Debug, Clone)]
pub struct TcpProxyConfig {
    pub stat_prefix: String,
    /// (cluster name, weight); one entry with weight 1 for `cluster`.
    pub clusters: Vec<(String, u32)>,
    /// Zero disables it. Envoy's default is one hour.
    pub idle_timeout: Duration,
}

const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

pub(crate) fn parse(
    v: Option<Value>,
    path: &str,
    clusters: &HashSet<String>,
    errs: &mut Errors,
) -> Option<TcpProxyConfig> {
    let Some(mut v) = v else {
        errs.add(
            path.to_string(),
            "tcp_proxy needs a typed_config (stat_prefix and cluster are required)",
        );
        return None;
    };
    if let Value::Object(m) = &mut v {
        m.remove("@type");
    }
    let p: TcpProxyProto = match deserialize_at(v, path) {
        Ok(p) => p,
        Err(e) => {
            errs.0.push(e);
            return None;
        }
    };
    let targets: Vec<(String, u32)> = match (p.cluster, p.weighted_clusters) {
        (Some(c), None) => vec![(c, 1)],
        (None, Some(w)) if !w.clusters.is_empty() => {
            w.clusters.into_iter().map(|c| (c.name, c.weight)).collect()
        }
        _ => {
            errs.add(
                path.to_string(),
                "set exactly one of cluster, weighted_clusters",
            );
            return None;
        }
    };
    for (i, (name, weight)) in targets.iter().enumerate() {
        if !clusters.contains(name) {
            errs.add(
                format!("{path}.cluster"),
                format!("unknown cluster '{name}'"),
            );
        }
        if *weight == 0 && targets.len() > 1 {
            errs.add(
                format!("{path}.weighted_clusters.clusters[{i}].weight"),
                "must be at least 1",
            );
        }
    }
    Some(TcpProxyConfig {
        stat_prefix: p.stat_prefix,
        clusters: targets,
        idle_timeout: p.idle_timeout.map(|d| d.0).unwrap_or(DEFAULT_IDLE_TIMEOUT),
    })
}

/// `tcp.<stat_prefix>.*`.
struct TcpProxyStats {
    downstream_cx_total: Counter,
    idle_timeout: Counter,
}

pub struct TcpProxy {
    clusters: Vec<(Arc<Cluster>, u32)>,
    total_weight: u32,
    next: AtomicUsize,
    idle_timeout: Duration,
    stats: TcpProxyStats,
}

impl TcpProxy {
    pub fn new(
        cfg: &TcpProxyConfig,
        clusters: &[Arc<Cluster>],
        stats: &Stats,
    ) -> std::io::Result<TcpProxy> {
        let resolved = cfg
            .clusters
            .iter()
            .map(|(name, w)| {
                clusters
                    .iter()
                    .find(|c| &c.name == name)
                    .map(|c| (c.clone(), (*w).max(1)))
                    .ok_or_else(|| std::io::Error::other(format!("unknown cluster '{name}'")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let p = format!("tcp.{}.", cfg.stat_prefix);
        Ok(TcpProxy {
            total_weight: resolved.iter().map(|(_, w)| *w).sum(),
            clusters: resolved,
            next: AtomicUsize::new(0),
            idle_timeout: cfg.idle_timeout,
            stats: TcpProxyStats {
                downstream_cx_total: stats.counter(format!("{p}downstream_cx_total")),
                idle_timeout: stats.counter(format!("{p}idle_timeout")),
            },
        })
    }

    /// Weighted rotation over the configured clusters.
    fn pick_cluster(&self) -> &Arc<Cluster> {
        let n = self.next.fetch_add(1, Ordering::Relaxed) as u32 % self.total_weight.max(1);
        let mut acc = 0;
        for (c, w) in &self.clusters {
            acc += w;
            if n < acc {
                return c;
            }
        }
        &self.clusters[0].0
    }

    /// Proxy one downstream connection until either side closes or it idles out.
    pub async fn serve<I>(&self, mut downstream: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send,
    {
        self.stats.downstream_cx_total.increment(1);
        let cluster = self.pick_cluster();
        let Some(host) = cluster.pick() else {
            // Envoy counts this on the cluster; `downstream_cx_no_route` is for a missing route
            // or cluster, which validation rules out for static config.
            cluster.stats.upstream_cx_none_healthy.increment(1);
            return;
        };
        let Ok((mut upstream, _active)) = host.pool.connect_raw(cluster, &host).await else {
            return;
        };
        if !copy_both_ways(&mut downstream, &mut upstream, self.idle_timeout).await {
            self.stats.idle_timeout.increment(1);
        }
        let _ = upstream.shutdown().await;
        let _ = downstream.shutdown().await;
    }
}

/// Copy bytes both ways with backpressure (one 16 KiB buffer per direction) until both sides
/// have closed; false when `idle` passed with no byte in either direction.
async fn copy_both_ways<A, B>(a: &mut A, b: &mut B, idle: Duration) -> bool
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut ar, mut aw) = tokio::io::split(a);
    let (mut br, mut bw) = tokio::io::split(b);
    let mut buf_a = vec![0u8; 16 * 1024];
    let mut buf_b = vec![0u8; 16 * 1024];
    let (mut a_open, mut b_open) = (true, true);
    let timeout = if idle.is_zero() {
        Duration::from_secs(u64::MAX / 4)
    } else {
        idle
    };
    while a_open || b_open {
        let step = async {
            tokio::select! {
                r = ar.read(&mut buf_a), if a_open => match r {
                    Ok(0) | Err(_) => { a_open = false; let _ = bw.shutdown().await; }
                    Ok(n) => if bw.write_all(&buf_a[..n]).await.is_err() { a_open = false; b_open = false; },
                },
                r = br.read(&mut buf_b), if b_open => match r {
                    Ok(0) | Err(_) => { b_open = false; let _ = aw.shutdown().await; }
                    Ok(n) => if aw.write_all(&buf_b[..n]).await.is_err() { a_open = false; b_open = false; },
                },
            }
        };
        if tokio::time::timeout(timeout, step).await.is_err() {
            return false;
        }
    }
    true
}
