//! The admin API (Envoy's paths and output formats). The Admin actor accepts connections; this
//! module answers requests from the shared [`ServerContext`], without messaging any actor.

mod clusters;
mod prometheus;
mod stats;

use crate::server::{ServerContext, State};
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use std::fmt::Write as _;
use std::sync::Arc;

pub type AdminResponse = Response<Full<Bytes>>;

/// Every endpoint, for `/help` and `/`: (path, needs POST, description).
const ENDPOINTS: &[(&str, bool, &str)] = &[
    ("/", false, "this list"),
    ("/help", false, "this list"),
    (
        "/ready",
        false,
        "200 LIVE when serving, 503 with the state otherwise",
    ),
    (
        "/server_info",
        false,
        "version, state, uptime and command line as JSON",
    ),
    (
        "/stats",
        false,
        "all stats; ?filter=<regex>, ?usedonly, ?format=json|prometheus",
    ),
    (
        "/stats/prometheus",
        false,
        "all stats in Prometheus text format",
    ),
    (
        "/clusters",
        false,
        "upstream hosts with their counters; ?format=json",
    ),
    (
        "/listeners",
        false,
        "listeners and their bound addresses; ?format=json",
    ),
    (
        "/certs",
        false,
        "listener and cluster TLS certificates as JSON",
    ),
    ("/reset_counters", true, "reset every counter to zero"),
    (
        "/drain_listeners",
        true,
        "stop accepting and drain connections; the process keeps running",
    ),
    ("/quitquitquit", true, "drain and exit"),
];

pub async fn handle<B>(ctx: &Arc<ServerContext>, req: Request<B>) -> AdminResponse {
    let path = req.uri().path();
    let query = parse_query(req.uri().query().unwrap_or(""));
    let Some(&(_, needs_post, _)) = ENDPOINTS.iter().find(|(p, _, _)| *p == path) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("invalid path: {path}\n{}", help()),
        );
    };
    if needs_post && req.method() != Method::POST {
        // Envoy answers 405 (since 1.11; 400 before) with this text.
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("Method {} not allowed, POST required.", req.method()),
        );
    }
    match path {
        "/" | "/help" => text(StatusCode::OK, help()),
        "/ready" => {
            let state = ctx.state();
            let status = if state == State::Live {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            text(status, format!("{}\n", state.name()))
        }
        "/server_info" => json(server_info(ctx)),
        "/stats" => match query.get("format").map(String::as_str) {
            Some("json") => json(stats::json(ctx, &query)),
            Some("prometheus") => prometheus_response(ctx),
            Some(other) => text(
                StatusCode::BAD_REQUEST,
                format!("unsupported format '{other}'\n"),
            ),
            None => match stats::text(ctx, &query) {
                Ok(body) => text(StatusCode::OK, body),
                Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
            },
        },
        "/stats/prometheus" => prometheus_response(ctx),
        "/clusters" => match query.get("format").map(String::as_str) {
            Some("json") => json(clusters::json(ctx)),
            _ => text(StatusCode::OK, clusters::text(ctx)),
        },
        "/listeners" => match query.get("format").map(String::as_str) {
            Some("json") => json(listeners_json(ctx)),
            _ => {
                let mut out = String::new();
                for l in &ctx.listeners {
                    let _ = writeln!(out, "{}::{}", l.name, l.address);
                }
                text(StatusCode::OK, out)
            }
        },
        "/certs" => json(certs_json(ctx)),
        "/reset_counters" => {
            ctx.stats.reset_counters();
            text(StatusCode::OK, "OK\n".into())
        }
        "/drain_listeners" => {
            ctx.drain_listeners();
            text(StatusCode::OK, "OK\n".into())
        }
        "/quitquitquit" => {
            ctx.request_shutdown();
            text(StatusCode::OK, "OK\n".into())
        }
        _ => text(StatusCode::NOT_FOUND, help()),
    }
}

fn help() -> String {
    let mut out = String::from("admin commands are:\n");
    for (path, post, what) in ENDPOINTS {
        let method = if *post { " (POST)" } else { "" };
        let _ = writeln!(out, "  {path}{method}: {what}");
    }
    out
}

fn server_info(ctx: &ServerContext) -> serde_json::Value {
    let uptime = format!("{}s", ctx.started.elapsed().as_secs());
    serde_json::json!({
        "version": format!("legate/{}", crate::VERSION),
        "state": ctx.state().name(),
        "hot_restart_version": "disabled",
        "uptime_current_epoch": uptime,
        "uptime_all_epochs": uptime,
        "node": { "id": ctx.node_id },
        "command_line_options": {
            "concurrency": ctx.options.concurrency,
            "config_path": ctx.options.config_path.clone().unwrap_or_default(),
            "argv": ctx.options.command_line,
        },
    })
}

fn listeners_json(ctx: &ServerContext) -> serde_json::Value {
    let statuses: Vec<_> = ctx
        .listeners
        .iter()
        .map(|l| {
            serde_json::json!({
                "name": l.name,
                "local_address": { "socket_address": {
                    "address": l.address.ip().to_string(),
                    "port_value": l.address.port(),
                }},
            })
        })
        .collect();
    serde_json::json!({ "listener_statuses": statuses })
}

/// Envoy's `/certs`: one entry per TLS context (listener filter chains, then clusters), each
/// with its CA and its own certificates.
fn certs_json(ctx: &ServerContext) -> serde_json::Value {
    use crate::tls::certs::San;
    let cert = |c: &crate::tls::CertInfo| {
        let sans: Vec<_> = c
            .subject_alt_names
            .iter()
            .map(|s| match s {
                San::Dns(v) => serde_json::json!({ "dns": v }),
                San::Uri(v) => serde_json::json!({ "uri": v }),
                San::Email(v) => serde_json::json!({ "email": v }),
                San::Ip(v) => serde_json::json!({ "ip_address": v }),
            })
            .collect();
        serde_json::json!({
            "path": c.path,
            "serial_number": c.serial_number,
            "subject_alt_names": sans,
            // Envoy reports 0 for a certificate that has already expired.
            "days_until_expiration": c.days_until_expiration().max(0),
            "valid_from": humantime::format_rfc3339_seconds(c.valid_from).to_string(),
            "expiration_time": humantime::format_rfc3339_seconds(c.not_after).to_string(),
        })
    };
    let entry = |ca: &Option<crate::tls::CertInfo>, chain: &[crate::tls::CertInfo]| {
        serde_json::json!({
            "ca_cert": ca.iter().map(cert).collect::<Vec<_>>(),
            "cert_chain": chain.iter().map(cert).collect::<Vec<_>>(),
        })
    };
    let listeners = ctx
        .listeners
        .iter()
        .flat_map(|l| l.all_chains())
        .filter_map(|c| c.tls.as_ref())
        .map(|t| entry(&t.ca, &t.certs));
    let clusters = ctx
        .clusters
        .iter()
        .filter_map(|c| c.config.tls.as_ref())
        .map(|t| entry(&t.ca, &t.certs));
    serde_json::json!({ "certificates": listeners.chain(clusters).collect::<Vec<_>>() })
}

fn prometheus_response(ctx: &ServerContext) -> AdminResponse {
    let mut resp = text(StatusCode::OK, prometheus::render(ctx));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    resp
}

fn parse_query(q: &str) -> std::collections::HashMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_string(), percent_decode(v)),
            None => (p.to_string(), String::new()),
        })
        .collect()
}

/// Enough of percent-decoding for regex filters typed into a browser or curl.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 3 <= bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn text(status: StatusCode, body: String) -> AdminResponse {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=UTF-8"),
    );
    resp
}

fn json(v: serde_json::Value) -> AdminResponse {
    let body = serde_json::to_string_pretty(&v).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        let q = parse_query("filter=cluster%5C.a&usedonly&x=a+b&bad=%zz&end=%4");
        assert_eq!(q["filter"], "cluster\\.a");
        assert_eq!(q["usedonly"], "");
        assert_eq!(q["x"], "a b");
        assert_eq!(q["bad"], "%zz");
        assert_eq!(q["end"], "%4");
    }
}
