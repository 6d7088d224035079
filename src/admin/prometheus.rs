//! `/stats/prometheus`: Envoy's names with its default tag extraction, so existing dashboards
//! and alerts keep working (`cluster.a.upstream_rq_total` →
//! `envoy_cluster_upstream_rq_total{envoy_cluster_name="a"}`).

use crate::observe::stats::BUCKETS;
use crate::server::ServerContext;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// A stat name split into a Prometheus metric name and labels.
fn extract(name: &str, ctx: &ServerContext) -> (String, Vec<(&'static str, String)>) {
    let mut labels = Vec::new();
    // Known scopes first, matching the configured names exactly: names may contain dots.
    let scopes: [(&str, &'static str, Vec<&str>); 3] = [
        (
            "cluster.",
            "envoy_cluster_name",
            ctx.clusters.iter().map(|c| c.name.as_str()).collect(),
        ),
        (
            "http.",
            "envoy_http_conn_manager_prefix",
            ctx.listeners
                .iter()
                .flat_map(|l| l.all_chains())
                .filter_map(|c| c.http())
                .map(|cm| cm.stat_prefix.as_str())
                .collect(),
        ),
        (
            "listener.",
            "envoy_listener_address",
            ctx.listeners
                .iter()
                .map(|l| l.stat_prefix.as_str())
                .collect(),
        ),
    ];
    let mut metric = name.to_string();
    for (scope, label, names) in &scopes {
        if let Some(rest) = name.strip_prefix(scope) {
            if let Some(n) = names
                .iter()
                .filter(|n| rest.starts_with(*n) && rest[n.len()..].starts_with('.'))
                .max_by_key(|n| n.len())
            {
                labels.push((*label, n.to_string()));
                metric = format!("{scope}{}", &rest[n.len() + 1..]);
            }
            break;
        }
    }
    // Response codes: `…_rq_2xx` → `…_rq_xx{envoy_response_code_class="2"}`,
    // `…_rq_200` → `…_rq{envoy_response_code="200"}`.
    if let Some((head, tail)) = metric.rsplit_once("_rq_") {
        let b = tail.as_bytes();
        if b.len() == 3 && (b'1'..=b'5').contains(&b[0]) && &b[1..] == b"xx" {
            labels.push(("envoy_response_code_class", (b[0] as char).to_string()));
            metric = format!("{head}_rq_xx");
        } else if b.len() == 3 && b.iter().all(u8::is_ascii_digit) {
            labels.push(("envoy_response_code", tail.to_string()));
            metric = format!("{head}_rq");
        }
    }
    let sanitized: String = metric
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    (format!("envoy_{sanitized}"), labels)
}

fn label_str(labels: &[(&str, String)], extra: Option<(&str, String)>) -> String {
    let all: Vec<String> = labels
        .iter()
        .map(|(k, v)| (*k, v.clone()))
        .chain(extra)
        .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    if all.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", all.join(","))
    }
}

pub fn render(ctx: &ServerContext) -> String {
    let snap = ctx.stats.snapshot();
    // metric name → (type, lines)
    let mut families: BTreeMap<String, (&str, Vec<String>)> = BTreeMap::new();
    for (name, v) in &snap.counters {
        let (metric, labels) = extract(name, ctx);
        let line = format!("{metric}{} {v}", label_str(&labels, None));
        families
            .entry(metric)
            .or_insert(("counter", Vec::new()))
            .1
            .push(line);
    }
    for (name, v) in &snap.gauges {
        let (metric, labels) = extract(name, ctx);
        let line = format!("{metric}{} {v}", label_str(&labels, None));
        families
            .entry(metric)
            .or_insert(("gauge", Vec::new()))
            .1
            .push(line);
    }
    for (name, h) in &snap.histograms {
        let (metric, labels) = extract(name, ctx);
        let mut lines = Vec::new();
        for (bound, count) in BUCKETS
            .iter()
            .map(|b| b.to_string())
            .chain(["+Inf".to_string()])
            .zip(h.cumulative())
        {
            lines.push(format!(
                "{metric}_bucket{} {count}",
                label_str(&labels, Some(("le", bound)))
            ));
        }
        lines.push(format!(
            "{metric}_sum{} {}",
            label_str(&labels, None),
            h.sum()
        ));
        lines.push(format!(
            "{metric}_count{} {}",
            label_str(&labels, None),
            h.count()
        ));
        families
            .entry(metric)
            .or_insert(("histogram", Vec::new()))
            .1
            .extend(lines);
    }
    let mut out = String::new();
    for (metric, (kind, lines)) in families {
        let _ = writeln!(out, "# TYPE {metric} {kind}");
        for l in lines {
            out.push_str(&l);
            out.push('\n');
        }
    }
    out
}
