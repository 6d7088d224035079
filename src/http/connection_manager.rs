//! `envoy.filters.network.http_connection_manager`: runs the HTTP/1.1 codec on a downstream
//! connection and takes each request through routing to a local reply or the router filter.

use super::body::ResponseBody;
use super::headers::{self, X_ENVOY_UPSTREAM_SERVICE_TIME, X_FORWARDED_PROTO, X_REQUEST_ID};
use super::local_reply::LocalReply;
use super::router::{self, Action, RouteTable};
use super::stream_info::StreamInfo;
use crate::bootstrap::HcmConfig;
use crate::cluster::Cluster;
use crate::observe::access_log::{AccessLogger, Captured, RequestParts};
use crate::observe::stats::StatusCounters;
use crate::observe::{Histogram, Stats};
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics::{Counter, Gauge};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

/// One connection manager per listener filter chain, shared by all its connections.
pub struct ConnectionManager {
    pub stat_prefix: String,
    pub stats: HcmStats,
    pub routes: RouteTable<Arc<Cluster>>,
    pub access_logs: Vec<AccessLogger>,
    use_remote_address: bool,
    skip_xff_append: bool,
    generate_request_id: bool,
    server_name: HeaderValue,
}

/// The two ends of a downstream connection.
#[derive(Debug, Clone, Copy)]
pub struct Downstream {
    pub remote: SocketAddr,
    pub local: SocketAddr,
}

/// `http.<stat_prefix>.*`.
pub struct HcmStats {
    pub downstream_cx_total: Counter,
    pub downstream_cx_active: Gauge,
    pub downstream_cx_http1_total: Counter,
    pub downstream_cx_http1_active: Gauge,
    pub downstream_cx_destroy: Counter,
    pub downstream_cx_drain_close: Counter,
    pub downstream_rq_total: Counter,
    pub downstream_rq_http1_total: Counter,
    pub downstream_rq_active: Gauge,
    pub downstream_rq_completed: Counter,
    pub downstream_rq: StatusCounters,
    pub downstream_rq_time: Arc<Histogram>,
    pub no_route: Counter,
    pub rq_direct_response: Counter,
    pub rq_total: Counter,
}

impl HcmStats {
    pub fn new(stats: &Stats, prefix: &str) -> Self {
        let p = format!("http.{prefix}.");
        let c = |s: &str| stats.counter(format!("{p}{s}"));
        let g = |s: &str| stats.gauge(format!("{p}{s}"));
        HcmStats {
            downstream_cx_total: c("downstream_cx_total"),
            downstream_cx_active: g("downstream_cx_active"),
            downstream_cx_http1_total: c("downstream_cx_http1_total"),
            downstream_cx_http1_active: g("downstream_cx_http1_active"),
            downstream_cx_destroy: c("downstream_cx_destroy"),
            downstream_cx_drain_close: c("downstream_cx_drain_close"),
            downstream_rq_total: c("downstream_rq_total"),
            downstream_rq_http1_total: c("downstream_rq_http1_total"),
            downstream_rq_active: g("downstream_rq_active"),
            downstream_rq_completed: c("downstream_rq_completed"),
            downstream_rq: StatusCounters::new(stats, &format!("{p}downstream_rq_")),
            downstream_rq_time: stats.histogram(format!("{p}downstream_rq_time")),
            no_route: c("no_route"),
            rq_direct_response: c("rq_direct_response"),
            rq_total: c("rq_total"),
        }
    }
}

impl ConnectionManager {
    /// Build from validated config; `clusters` resolves route cluster names once, here.
    pub fn new(
        config: &HcmConfig,
        clusters: &[Arc<Cluster>],
        stats: &Stats,
    ) -> std::io::Result<ConnectionManager> {
        let routes = config.routes.clone().map_clusters(|name| {
            clusters
                .iter()
                .find(|c| &c.name == name)
                .cloned()
                .ok_or_else(|| std::io::Error::other(format!("unknown cluster '{name}'")))
        })?;
        let access_logs = config
            .access_logs
            .iter()
            .map(|a| AccessLogger::open(&a.sink, a.format.clone(), stats))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ConnectionManager {
            stat_prefix: config.stat_prefix.clone(),
            stats: HcmStats::new(stats, &config.stat_prefix),
            routes,
            access_logs,
            use_remote_address: config.use_remote_address,
            skip_xff_append: config.skip_xff_append,
            generate_request_id: config.generate_request_id,
            server_name: HeaderValue::from_str(&config.server_name)
                .unwrap_or_else(|_| HeaderValue::from_static("legate")),
        })
    }

    /// One request, start to response headers. The rest of the request's life is in the
    /// returned body.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        ds: Downstream,
    ) -> Response<ResponseBody> {
        let stats = &self.stats;
        stats.downstream_rq_total.increment(1);
        stats.downstream_rq_http1_total.increment(1);
        stats.downstream_rq_active.increment(1.0);

        let (mut parts, body) = req.into_parts();
        let mut info = Box::new(StreamInfo::new(
            self.clone(),
            ds,
            protocol_name(parts.version),
        ));
        self.edit_request_headers(&mut parts.headers, &ds);

        // Routing uses Host, or the authority of an absolute-form target.
        let authority: &str = match parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
        {
            Some(h) => h,
            None => parts.uri.authority().map_or("", |a| a.as_str()),
        };
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        if !self.access_logs.is_empty() {
            let req_parts = RequestParts {
                method: parts.method.as_str(),
                path,
                authority: (!authority.is_empty()).then_some(authority),
                scheme: "http",
                headers: &parts.headers,
            };
            info.captured = self
                .access_logs
                .iter()
                .map(|l| Captured {
                    request: l.format.capture(&req_parts),
                    response: Vec::new(),
                })
                .collect();
        }

        let found = self.routes.virtual_host(authority).and_then(|vh| {
            let vi = self
                .routes
                .virtual_hosts
                .iter()
                .position(|v| std::ptr::eq(v, vh))?;
            let ri = vh.routes.iter().position(|r| r.matches(path))?;
            Some((vi, ri))
        });
        let Some((vi, ri)) = found else {
            stats.no_route.increment(1);
            return self.local_reply(info, LocalReply::NoRoute);
        };
        info.route = Some((vi, ri));
        let route = &self.routes.virtual_hosts[vi].routes[ri];
        stats.rq_total.increment(1);
        match &route.action {
            Action::DirectResponse { status, body } => {
                stats.rq_direct_response.increment(1);
                info.details = "direct_response";
                self.respond(info, *status, body.clone())
            }
            Action::Forward(fwd) => {
                match router::forward::forward(&mut info, &route.path_match, fwd, parts, body).await
                {
                    Ok((resp, sender, host)) => self.upstream_response(info, resp, sender, host),
                    Err(reply) => self.local_reply(info, reply),
                }
            }
        }
    }

    /// Envoy's request-header edits: hop-by-hop headers out, `x-forwarded-*` and `x-request-id` in.
    fn edit_request_headers(&self, h: &mut http::HeaderMap, ds: &Downstream) {
        headers::strip_hop_by_hop(h);
        // legate answers `Expect: 100-continue` itself (hyper sends the 100 when the body is
        // first read), as Envoy does by default; the upstream must not answer it again.
        if h.get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
        {
            h.remove(header::EXPECT);
        }
        if self.use_remote_address {
            if !self.skip_xff_append {
                headers::append_xff(h, ds.remote.ip());
            }
            h.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
        } else if !h.contains_key(&X_FORWARDED_PROTO) {
            h.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
        }
        if self.generate_request_id && !h.contains_key(&X_REQUEST_ID) {
            h.insert(X_REQUEST_ID.clone(), headers::new_request_id());
        }
    }

    fn upstream_response(
        &self,
        mut info: Box<StreamInfo>,
        resp: Response<Incoming>,
        sender: crate::cluster::endpoint_pool::Sender,
        host: Arc<crate::cluster::Host>,
    ) -> Response<ResponseBody> {
        let (mut parts, body) = resp.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        if let Some(t) = info.upstream_start {
            let ms = t.elapsed().as_millis() as u64;
            parts
                .headers
                .insert(X_ENVOY_UPSTREAM_SERVICE_TIME.clone(), HeaderValue::from(ms));
        }
        parts
            .headers
            .insert(header::SERVER, self.server_name.clone());
        info.status = parts.status.as_u16();
        info.details = "via_upstream";
        self.capture_response(&mut info, &parts.headers);
        Response::from_parts(parts, ResponseBody::upstream(body, info, sender, host))
    }

    fn local_reply(&self, mut info: Box<StreamInfo>, reply: LocalReply) -> Response<ResponseBody> {
        info.flags.set(reply.flag());
        info.details = reply.details();
        let reason = reply.transport_failure_reason();
        if !reason.is_empty() {
            info.transport_failure_reason = Some(reason.into());
        }
        self.respond(info, reply.status(), reply.body())
    }

    fn respond(
        &self,
        mut info: Box<StreamInfo>,
        status: u16,
        body: Bytes,
    ) -> Response<ResponseBody> {
        let mut resp = Response::new(ResponseBody::full(Bytes::new(), None));
        *resp.status_mut() =
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let h = resp.headers_mut();
        if !body.is_empty() {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        }
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        h.insert(header::SERVER, self.server_name.clone());
        info.status = status;
        self.capture_response(&mut info, resp.headers());
        *resp.body_mut() = ResponseBody::full(body, Some(info));
        resp
    }

    fn capture_response(&self, info: &mut StreamInfo, headers: &http::HeaderMap) {
        for (log, captured) in self.access_logs.iter().zip(info.captured.iter_mut()) {
            captured.response = log.format.capture_response(headers);
        }
    }
}

fn protocol_name(v: Version) -> &'static str {
    match v {
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "-",
    }
}

/// Counts the connection in `http.<prefix>.downstream_cx_*` for as long as it lives.
struct ConnectionStats<'a>(&'a HcmStats);

impl<'a> ConnectionStats<'a> {
    fn open(s: &'a HcmStats) -> Self {
        s.downstream_cx_total.increment(1);
        s.downstream_cx_http1_total.increment(1);
        s.downstream_cx_active.increment(1.0);
        s.downstream_cx_http1_active.increment(1.0);
        ConnectionStats(s)
    }
}

impl Drop for ConnectionStats<'_> {
    fn drop(&mut self) {
        self.0.downstream_cx_active.decrement(1.0);
        self.0.downstream_cx_http1_active.decrement(1.0);
        self.0.downstream_cx_destroy.increment(1);
    }
}

/// Serve one downstream connection until it closes. When `drain` fires, in-flight requests finish
/// and the connection closes (HTTP/1.1: `Connection: close` on the response in flight, idle
/// connections at once).
pub async fn serve<I>(
    cm: Arc<ConnectionManager>,
    io: I,
    ds: Downstream,
    drain: tokio::sync::oneshot::Receiver<()>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let _stats = ConnectionStats::open(&cm.stats);
    let svc_cm = cm.clone();
    let svc = service_fn(move |req| {
        let cm = svc_cm.clone();
        async move { Ok::<_, Infallible>(cm.handle(req, ds).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    tokio::pin!(drain);
    tokio::select! {
        _ = conn.as_mut() => return,
        signal = &mut drain => {
            // A dropped sender is not a drain request; keep serving.
            if signal.is_ok() {
                cm.stats.downstream_cx_drain_close.increment(1);
                conn.as_mut().graceful_shutdown();
            }
        }
    }
    let _ = conn.await;
}
