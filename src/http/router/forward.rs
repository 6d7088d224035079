//! The router filter's upstream half: pick a host, get a connection, send, wait for response
//! headers within the route timeout. Failures come back as [`LocalReply`]s.

use super::{Forward, PathMatch};
use crate::cluster::endpoint_pool::{H1Error, SendError, Upstream, UpstreamBody, UpstreamError};
use crate::cluster::{Cluster, Host};
use crate::http::body::RequestBody;
use crate::http::headers::X_ENVOY_ORIGINAL_PATH;
use crate::http::local_reply::LocalReply;
use crate::http::stream_info::StreamInfo;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Request, Response, Uri, Version};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// The route timeout is not kept here: the connection manager runs it on the stream's one timer
/// (see `stream_timers`), so a request arms one timer, not two.
pub async fn forward(
    info: &mut StreamInfo,
    path_match: &PathMatch,
    fwd: &Forward<Arc<Cluster>>,
    mut parts: Parts,
    body: RequestBody,
) -> Result<(Response<UpstreamBody>, Upstream, Arc<Host>), LocalReply> {
    let cluster = &fwd.cluster;
    let Some(host) = cluster.pick() else {
        cluster.stats.upstream_cx_none_healthy.increment(1);
        return Err(LocalReply::NoHealthyUpstream);
    };
    // `max_requests`: the slot lives with the request and is released when it finishes.
    info.rq_slot = Some(
        cluster
            .circuit_breakers
            .request()
            .ok_or(LocalReply::UpstreamOverflow)?,
    );
    cluster.stats.upstream_rq_total.increment(1);
    cluster.stats.upstream_rq_active.increment(1.0);
    host.stats.rq_total.fetch_add(1, Ordering::Relaxed);
    host.stats.rq_active.fetch_add(1, Ordering::Relaxed);
    info.upstream = Some((cluster.clone(), host.clone()));

    let downstream_h2 = parts.version == Version::HTTP_2;
    rewrite_target(&mut parts, path_match, fwd);
    let (resp, upstream) = send(cluster, &host, parts, body, downstream_h2, info).await?;
    Ok((resp, upstream, host))
}

/// Count a route timeout against the cluster and host the request went to.
pub fn count_timeout(info: &StreamInfo) {
    if let Some((cluster, host)) = &info.upstream {
        cluster.stats.upstream_rq_timeout.increment(1);
        host.stats.rq_timeout.fetch_add(1, Ordering::Relaxed);
    }
}

/// What is needed to send a bodiless request again: an HTTP/2 stream the upstream refused
/// (REFUSED_STREAM, or above the last stream id of a GOAWAY) was never processed, so it is
/// safe to retry; with a body it would need buffering, which legate does not do yet.
struct RetryHead {
    method: http::Method,
    uri: Uri,
    headers: http::HeaderMap,
}

async fn send(
    cluster: &Cluster,
    host: &Host,
    parts: Parts,
    body: RequestBody,
    downstream_h2: bool,
    info: &mut StreamInfo,
) -> Result<(Response<UpstreamBody>, Upstream), LocalReply> {
    let may_use_h2 = !matches!(
        cluster.config.protocol,
        crate::bootstrap::UpstreamProtocol::Http1
    );
    let retry_head = (may_use_h2 && http_body::Body::is_end_stream(&body)).then(|| RetryHead {
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        headers: parts.headers.clone(),
    });
    let mut req = Request::from_parts(parts, body);
    let mut retry_slot = None;
    for attempt in 1..=UPSTREAM_ATTEMPTS {
        let mut conn = host
            .pool
            .checkout(cluster, host, downstream_h2)
            .await
            .map_err(LocalReply::from)?;
        adapt_to_upstream(&mut req, conn.is_http2(), host);
        info.upstream_start = Some(Instant::now());
        let SendError { error, unsent } = match conn.send(req).await {
            Ok(resp) => {
                // legate's HTTP/1.1 codec refuses these itself while parsing.
                if conn.is_http2() {
                    if let Err(why) = check_response(&resp) {
                        tracing::debug!("malformed upstream response: {why}");
                        return Err(LocalReply::UpstreamProtocolError);
                    }
                }
                return Ok((resp, conn.upstream));
            }
            Err(e) => e,
        };
        let last = attempt == UPSTREAM_ATTEMPTS;
        req = match (unsent, error) {
            // The connection closed before the request went out (a pooled connection the
            // upstream closed while idle, or an HTTP/2 connection that just went away). Nothing
            // was sent; use another connection.
            (Some(unsent), _) if !last && (conn.reused || conn.is_http2()) => unsent,
            (_, UpstreamError::H2(err)) => match (&retry_head, refused_stream(&err)) {
                (Some(head), true) if !last && cluster.circuit_breakers.retry(&mut retry_slot) => {
                    cluster.stats.upstream_rq_retry.increment(1);
                    let mut r = Request::new(RequestBody::empty());
                    *r.method_mut() = head.method.clone();
                    *r.uri_mut() = head.uri.clone();
                    *r.headers_mut() = head.headers.clone();
                    r
                }
                _ => return Err(classify(cluster, &err)),
            },
            (_, UpstreamError::H1(err)) => return Err(classify_h1(cluster, &err)),
        };
    }
    Err(LocalReply::ConnectionTermination)
}

/// A connection that turns out closed, or an HTTP/2 stream refused before processing, is
/// replaced this many times in all before the request fails.
const UPSTREAM_ATTEMPTS: usize = 3;

/// Envoy's default `max_headers_count` for responses, and its `max_response_headers_kb` for
/// HTTP/1 responses (80 KiB; HTTP/2 responses are already held to 60 KiB by SETTINGS).
const MAX_RESPONSE_HEADERS: usize = 100;
const MAX_RESPONSE_HEADER_BYTES: usize = 80 * 1024;

/// What hyper's HTTP/2 client accepts but a proxy must not pass on: `Content-Length` with
/// `Transfer-Encoding`, a transfer coding other than `chunked`, too many or too large headers.
fn check_response<B>(resp: &Response<B>) -> Result<(), &'static str> {
    let h = resp.headers();
    if let Some(te) = h.get(header::TRANSFER_ENCODING) {
        if h.contains_key(header::CONTENT_LENGTH) {
            return Err("content-length with transfer-encoding");
        }
        let mut all = h.get_all(header::TRANSFER_ENCODING).iter();
        let _ = te;
        let only_chunked = all
            .next()
            .is_some_and(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked"))
            && all.next().is_none();
        if !only_chunked {
            return Err("transfer-encoding other than chunked");
        }
    }
    if h.len() > MAX_RESPONSE_HEADERS {
        return Err("too many headers");
    }
    let size: usize = h.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    if size > MAX_RESPONSE_HEADER_BYTES {
        return Err("headers too large");
    }
    Ok(())
}

/// The HTTP/2 error that says the upstream never processed the stream (RFC 9113 §8.7).
fn refused_stream(err: &h2::Error) -> bool {
    err.reason() == Some(h2::Reason::REFUSED_STREAM) || (err.is_go_away() && err.is_remote())
}

/// Map a failure of an HTTP/1.1 exchange before response headers to Envoy's answer.
fn classify_h1(cluster: &Cluster, err: &H1Error) -> LocalReply {
    match err {
        H1Error::Malformed(m) => {
            tracing::debug!("{m}");
            LocalReply::UpstreamProtocolError
        }
        // The downstream's fault; the connection manager answers it as such.
        H1Error::RequestBody(_) => LocalReply::ConnectionTermination,
        H1Error::Closed | H1Error::Io(_) => {
            cluster.stats.upstream_rq_rx_reset.increment(1);
            LocalReply::ConnectionTermination
        }
    }
}

/// Map a failure of an HTTP/2 stream before response headers to Envoy's answer.
fn classify(cluster: &Cluster, err: &h2::Error) -> LocalReply {
    cluster.stats.upstream_rq_rx_reset.increment(1);
    if err.is_reset() && err.is_remote() {
        LocalReply::RemoteReset
    } else {
        LocalReply::ConnectionTermination
    }
}

/// HTTP/1.1 upstreams take origin-form targets and `Host`; HTTP/2 upstreams take `:scheme` and
/// `:authority` from an absolute URI, and `Host` must not contradict it (RFC 9113 §8.3.1).
fn adapt_to_upstream(req: &mut Request<RequestBody>, h2: bool, host: &Host) {
    if h2 {
        *req.version_mut() = Version::HTTP_2;
        let authority = req
            .headers_mut()
            .remove(header::HOST)
            .and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok())
            .or_else(|| req.uri().authority().cloned())
            .or_else(|| http::uri::Authority::try_from(host.address.to_string()).ok());
        let mut p = req.uri().clone().into_parts();
        p.scheme = Some(http::uri::Scheme::HTTP);
        p.authority = authority;
        if p.path_and_query.is_none() {
            p.path_and_query = Some(PathAndQuery::from_static("/"));
        }
        if let Ok(uri) = Uri::from_parts(p) {
            *req.uri_mut() = uri;
        }
    } else {
        *req.version_mut() = Version::HTTP_11;
        if req.uri().authority().is_some() {
            if !req.headers().contains_key(header::HOST) {
                if let Some(a) = req
                    .uri()
                    .authority()
                    .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
                {
                    req.headers_mut().insert(header::HOST, a);
                }
            }
            let pq = req
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"));
            *req.uri_mut() = Uri::from(pq);
        }
    }
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
                protocol: crate::bootstrap::UpstreamProtocol::Http1,
                tls: None,
                endpoints: vec![],
                lb_policy: crate::bootstrap::LbPolicy::RoundRobin,
                circuit_breakers: Default::default(),
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
