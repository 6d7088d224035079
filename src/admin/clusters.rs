//! `/clusters`: Envoy's `cluster::host::stat::value` lines, or JSON with `?format=json`.

use crate::cluster::{Cluster, HostStats};
use crate::server::ServerContext;
use std::fmt::Write as _;

/// The configured `circuit_breakers.thresholds` (priority DEFAULT), by Envoy's names.
fn thresholds(c: &Cluster) -> [(&'static str, u32); 4] {
    let t = &c.circuit_breakers.thresholds;
    [
        ("max_connections", t.max_connections),
        ("max_pending_requests", t.max_pending_requests),
        ("max_requests", t.max_requests),
        ("max_retries", t.max_retries),
    ]
}

pub fn text(ctx: &ServerContext) -> String {
    let mut out = String::new();
    for c in &ctx.clusters {
        let n = &c.name;
        let _ = writeln!(out, "{n}::observability_name::{n}");
        for (k, v) in thresholds(c) {
            let _ = writeln!(out, "{n}::default_priority::{k}::{v}");
        }
        let _ = writeln!(out, "{n}::added_via_api::false");
        for h in &c.hosts().hosts {
            let a = h.address;
            let s = &h.stats;
            for (k, v) in [
                ("cx_active", &s.cx_active),
                ("cx_connect_fail", &s.cx_connect_fail),
                ("cx_total", &s.cx_total),
                ("rq_active", &s.rq_active),
                ("rq_error", &s.rq_error),
                ("rq_success", &s.rq_success),
                ("rq_timeout", &s.rq_timeout),
                ("rq_total", &s.rq_total),
            ] {
                let _ = writeln!(out, "{n}::{a}::{k}::{}", HostStats::get(v));
            }
            let _ = writeln!(out, "{n}::{a}::hostname::{}", h.hostname);
            let _ = writeln!(out, "{n}::{a}::health_flags::healthy");
            let _ = writeln!(out, "{n}::{a}::weight::{}", h.weight);
            let _ = writeln!(out, "{n}::{a}::region::");
            let _ = writeln!(out, "{n}::{a}::zone::");
            let _ = writeln!(out, "{n}::{a}::sub_zone::");
            let _ = writeln!(out, "{n}::{a}::canary::false");
            let _ = writeln!(out, "{n}::{a}::priority::0");
            let _ = writeln!(out, "{n}::{a}::success_rate::-1");
            let _ = writeln!(out, "{n}::{a}::local_origin_success_rate::-1");
        }
    }
    out
}

pub fn json(ctx: &ServerContext) -> serde_json::Value {
    let statuses: Vec<_> = ctx
        .clusters
        .iter()
        .map(|c| {
            let hosts: Vec<_> = c
                .hosts()
                .hosts
                .iter()
                .map(|h| {
                    let s = &h.stats;
                    let stat = |name: &str, v: &std::sync::atomic::AtomicU64| {
                        serde_json::json!({ "name": name, "value": HostStats::get(v) })
                    };
                    serde_json::json!({
                        "address": { "socket_address": {
                            "address": h.address.ip().to_string(),
                            "port_value": h.address.port(),
                        }},
                        "hostname": h.hostname,
                        "weight": h.weight,
                        "health_status": { "eds_health_status": "HEALTHY" },
                        "stats": [
                            stat("cx_active", &s.cx_active),
                            stat("cx_connect_fail", &s.cx_connect_fail),
                            stat("cx_total", &s.cx_total),
                            stat("rq_active", &s.rq_active),
                            stat("rq_error", &s.rq_error),
                            stat("rq_success", &s.rq_success),
                            stat("rq_timeout", &s.rq_timeout),
                            stat("rq_total", &s.rq_total),
                        ],
                    })
                })
                .collect();
            // Envoy's ClusterStatus: thresholds as proto JSON (priority DEFAULT is the
            // enum's zero value, so it is left out).
            let thresholds: serde_json::Map<_, _> = thresholds(c)
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.into()))
                .collect();
            serde_json::json!({
                "name": c.name,
                "observability_name": c.name,
                "circuit_breakers": { "thresholds": [thresholds] },
                "added_via_api": false,
                "host_statuses": hosts,
            })
        })
        .collect();
    serde_json::json!({ "cluster_statuses": statuses })
}
