//! `/stats` as text (`name: value`, histograms as Envoy's `P0(...) … P100(...)` summary) and JSON.

use crate::observe::stats::StatsSnapshot;
use crate::server::ServerContext;
use std::collections::HashMap;
use std::fmt::Write as _;

/// The quantiles Envoy prints for a histogram.
const QUANTILES: [(f64, &str); 10] = [
    (0.0, "P0"),
    (0.25, "P25"),
    (0.5, "P50"),
    (0.75, "P75"),
    (0.9, "P90"),
    (0.95, "P95"),
    (0.99, "P99"),
    (0.995, "P99.5"),
    (0.999, "P99.9"),
    (1.0, "P100"),
];

struct Filter {
    regex: Option<regex::Regex>,
    used_only: bool,
}

impl Filter {
    fn new(q: &HashMap<String, String>) -> Result<Filter, String> {
        let regex = match q.get("filter") {
            Some(f) if !f.is_empty() => {
                Some(regex::Regex::new(f).map_err(|e| format!("invalid regex: {e}"))?)
            }
            _ => None,
        };
        Ok(Filter {
            regex,
            used_only: q.contains_key("usedonly"),
        })
    }

    fn keep(&self, name: &str, used: bool) -> bool {
        (!self.used_only || used) && self.regex.as_ref().is_none_or(|r| r.is_match(name))
    }
}

/// Server stats computed at render time (Envoy updates them on a timer).
fn refresh_server_stats(ctx: &ServerContext) {
    ctx.stats
        .gauge("server.uptime")
        .set(ctx.started.elapsed().as_secs() as f64);
    ctx.stats.gauge("server.total_connections").set(
        ctx.active_connections
            .load(std::sync::atomic::Ordering::Relaxed) as f64,
    );
}

fn snapshot(ctx: &ServerContext) -> StatsSnapshot {
    refresh_server_stats(ctx);
    ctx.stats.snapshot()
}

pub fn text(ctx: &ServerContext, q: &HashMap<String, String>) -> Result<String, String> {
    let filter = Filter::new(q)?;
    let snap = snapshot(ctx);
    let mut lines: Vec<(String, String)> = Vec::new();
    for (name, v) in snap.counters {
        if filter.keep(&name, v > 0) {
            lines.push((name, v.to_string()));
        }
    }
    for (name, v) in snap.gauges {
        if filter.keep(&name, v != 0) {
            lines.push((name, v.to_string()));
        }
    }
    lines.sort();
    let mut out = String::new();
    for (name, v) in &lines {
        let _ = writeln!(out, "{name}: {v}");
    }
    for (name, h) in snap.histograms {
        if !filter.keep(&name, h.count() > 0) {
            continue;
        }
        if h.count() == 0 {
            let _ = writeln!(out, "{name}: No recorded values");
            continue;
        }
        let _ = write!(out, "{name}:");
        for (q, label) in QUANTILES {
            let v = h.quantile(q).unwrap_or(f64::NAN);
            let _ = write!(out, " {label}(nan,{v})");
        }
        out.push('\n');
    }
    Ok(out)
}

pub fn json(ctx: &ServerContext, q: &HashMap<String, String>) -> serde_json::Value {
    let filter = Filter::new(q).unwrap_or(Filter {
        regex: None,
        used_only: false,
    });
    let snap = snapshot(ctx);
    let mut stats: Vec<serde_json::Value> = Vec::new();
    for (name, v) in snap.counters {
        if filter.keep(&name, v > 0) {
            stats.push(serde_json::json!({ "name": name, "value": v }));
        }
    }
    for (name, v) in snap.gauges {
        if filter.keep(&name, v != 0) {
            stats.push(serde_json::json!({ "name": name, "value": v }));
        }
    }
    let histograms: Vec<serde_json::Value> = snap
        .histograms
        .iter()
        .filter(|(name, h)| filter.keep(name, h.count() > 0))
        .map(|(name, h)| {
            let values: Vec<_> = QUANTILES
                .iter()
                .map(|(q, _)| serde_json::json!({ "cumulative": h.quantile(*q) }))
                .collect();
            serde_json::json!({ "name": name, "values": values })
        })
        .collect();
    let quantiles: Vec<f64> = QUANTILES.iter().map(|(q, _)| q * 100.0).collect();
    stats.push(serde_json::json!({
        "histograms": { "supported_quantiles": quantiles, "computed_quantiles": histograms }
    }));
    serde_json::json!({ "stats": stats })
}
