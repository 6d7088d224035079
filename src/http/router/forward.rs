//! The router filter's upstream half: pick a host, get a connection, send, wait for response
//! headers within the route timeout. Failures come back as [`LocalReply`]s.

use super::{Forward, PathMatch};
use crate::cluster::endpoint_pool::Sender;
use crate::cluster::{Cluster, Host};
use crate::http::body::RequestBody;
use crate::http::headers::X_ENVOY_ORIGINAL_PATH;
use crate::http::local_reply::LocalReply;
use crate::http::stream_info::StreamInfo;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// A pooled connection that turns out to be closed is replaced by a fresh one this many times
/// before the request fails. Such a request was never sent, so trying again is always safe.
const STALE_CONNECTION_ATTEMPTS: usize = 3;

pub async fn forward(
    info: &mut StreamInfo,
    path_match: &PathMatch,
    fwd: &Forward<Arc<Cluster>>,
    mut parts: Parts,
    body: Incoming,
) -> Result<(Response<Incoming>, Sender, Arc<Host>), LocalReply> {
    let cluster = &fwd.cluster;
    let Some(host) = cluster.pick() else {
        cluster.stats.upstream_cx_none_healthy.increment(1);
        return Err(LocalReply::NoHealthyUpstream);
    };
    cluster.stats.upstream_rq_total.increment(1);
    cluster.stats.upstream_rq_active.increment(1.0);
    host.stats.rq_total.fetch_add(1, Ordering::Relaxed);
    host.stats.rq_active.fetch_add(1, Ordering::Relaxed);
    info.upstream = Some((cluster.clone(), host.clone()));

    rewrite_target(&mut parts, path_match, fwd);
    parts.version = Version::HTTP_11;
    let req = Request::from_parts(parts, RequestBody::new(body, info.bytes_received.clone()));

    let send = send(cluster, &host, req, info);
    let result = if fwd.timeout.is_zero() {
        send.await
    } else {
        match tokio::time::timeout(fwd.timeout, send).await {
            Ok(r) => r,
            Err(_) => {
                cluster.stats.upstream_rq_timeout.increment(1);
                host.stats.rq_timeout.fetch_add(1, Ordering::Relaxed);
                Err(LocalReply::UpstreamTimeout)
            }
        }
    };
    result.map(|(resp, sender)| (resp, sender, host))
}

async fn send(
    cluster: &Cluster,
    host: &Host,
    mut req: Request<RequestBody>,
    info: &mut StreamInfo,
) -> Result<(Response<Incoming>, Sender), LocalReply> {
    for _ in 0..STALE_CONNECTION_ATTEMPTS {
        let mut conn = host
            .pool
            .checkout(cluster, host)
            .await
            .map_err(|e| LocalReply::ConnectFailure(e.to_string()))?;
        info.upstream_start = Some(Instant::now());
        match conn.sender.try_send_request(req).await {
            Ok(resp) => return Ok((resp, conn.sender)),
            Err(mut e) => match e.take_message() {
                // The connection closed before the request went out: only possible for a pooled
                // connection the upstream closed while idle. Nothing was sent; use a new one.
                Some(unsent) if conn.reused => req = unsent,
                _ => {
                    let err = e.into_error();
                    if err.is_parse() || err.is_parse_status() || err.is_parse_too_large() {
                        return Err(LocalReply::UpstreamProtocolError);
                    }
                    cluster.stats.upstream_rq_rx_reset.increment(1);
                    return Err(LocalReply::ConnectionTermination);
                }
            },
        }
    }
    Err(LocalReply::ConnectionTermination)
}

/// Origin-form target with `prefix_rewrite` applied (recording `x-envoy-original-path`), and
/// `Host` set from an absolute-form target or rewritten.
fn rewrite_target(parts: &mut Parts, path_match: &PathMatch, fwd: &Forward<Arc<Cluster>>) {
    if parts.headers.get(header::HOST).is_none() {
        if let Some(auth) = parts.uri.authority() {
            if let Ok(v) = HeaderValue::from_str(auth.as_str()) {
                parts.headers.insert(header::HOST, v);
            }
        }
    }
    if let Some(h) = &fwd.host_rewrite {
        if let Ok(v) = HeaderValue::from_str(h) {
            parts.headers.insert(header::HOST, v);
        }
    }
    let original = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let rewritten = fwd.prefix_rewrite.as_ref().map(|new| {
        // The matched part is the prefix, or for a path match the whole path before the query.
        let matched = match path_match {
            PathMatch::Prefix(p) => p.len(),
            PathMatch::Path(p) => p.len(),
        };
        let rest = original.get(matched..).unwrap_or("");
        format!("{new}{rest}")
    });
    let pq = match rewritten {
        Some(path) => match PathAndQuery::try_from(path) {
            Ok(pq) => {
                if let Ok(v) = HeaderValue::from_str(original) {
                    parts.headers.insert(X_ENVOY_ORIGINAL_PATH.clone(), v);
                }
                pq
            }
            // A rewrite that makes an invalid path keeps the original one.
            Err(_) => parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        },
        None => parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    };
    parts.uri = Uri::from(pq);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn rewrite(uri: &str, m: PathMatch, prefix_rewrite: Option<&str>, host: Option<&str>) -> Parts {
        let cluster = Cluster::new(
            crate::bootstrap::ClusterConfig {
                name: "c".into(),
                cluster_type: crate::bootstrap::ClusterType::Static,
                connect_timeout: Duration::from_secs(1),
                dns_refresh_rate: Duration::from_secs(5),
                dns_lookup_family: crate::bootstrap::DnsLookupFamily::Auto,
                endpoints: vec![],
            },
            &crate::observe::Stats::new(),
        );
        let fwd = Forward {
            cluster,
            timeout: Duration::ZERO,
            prefix_rewrite: prefix_rewrite.map(str::to_owned),
            host_rewrite: host.map(str::to_owned),
        };
        let (mut parts, _) = Request::builder().uri(uri).body(()).unwrap().into_parts();
        rewrite_target(&mut parts, &m, &fwd);
        parts
    }

    #[test]
    fn prefix_rewrite_keeps_rest_and_query() {
        let p = rewrite(
            "/api/v1/x?q=1",
            PathMatch::Prefix("/api/".into()),
            Some("/"),
            None,
        );
        assert_eq!(p.uri, "/v1/x?q=1");
        assert_eq!(p.headers["x-envoy-original-path"], "/api/v1/x?q=1");
    }

    #[test]
    fn absolute_form_becomes_origin_form_with_host() {
        let p = rewrite(
            "http://example.com:8080/a",
            PathMatch::Prefix("/".into()),
            None,
            None,
        );
        assert_eq!(p.uri, "/a");
        assert_eq!(p.headers["host"], "example.com:8080");
        let p = rewrite(
            "/a",
            PathMatch::Prefix("/".into()),
            None,
            Some("up.internal"),
        );
        assert_eq!(p.headers["host"], "up.internal");
        assert!(p.headers.get("x-envoy-original-path").is_none());
    }
}
