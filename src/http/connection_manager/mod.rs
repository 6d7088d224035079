//! `envoy.filters.network.http_connection_manager`: runs the downstream codec (HTTP/1.1 or
//! HTTP/2) on a connection and takes each request through routing to a local reply or the
//! router filter.

mod serve;

pub use serve::{serve, ConnectionStats};

use super::body::{DownstreamBody, ResponseBody};
use super::grpc;
use super::guard::{self, ConnShared, Guard, GuardConfig, GuardStats, Protocol};
use super::h1;
use super::headers::{
    self, X_ENVOY_OVERLOADED, X_ENVOY_UPSTREAM_SERVICE_TIME, X_FORWARDED_PROTO, X_REQUEST_ID,
};
use super::local_reply::LocalReply;
use super::response_flags::ResponseFlags;
use super::router::{self, Action, RouteTable};
use super::stream_info::StreamInfo;
use super::validation::{self, UnderscoreStats, Verdict};
use crate::bootstrap::{CodecType, DownstreamLimits, HcmConfig, Http2Settings};
use crate::cluster::endpoint_pool::{Upstream, UpstreamBody};
use crate::cluster::Cluster;
use crate::observe::access_log::{AccessLogger, Captured, RequestParts};
use crate::observe::stats::StatusCounters;
use crate::observe::{Histogram, Stats};
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use metrics::{Counter, Gauge};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    codec: CodecType,
    http2: Http2Settings,
    max_request_headers_kb: u32,
    websocket: bool,
    pub limits: DownstreamLimits,
    guard: Arc<GuardConfig>,
    underscores_http1: UnderscoreStats,
    underscores_http2: UnderscoreStats,
}

/// The two ends of a downstream connection.
#[derive(Debug, Clone, Copy)]
pub struct Downstream {
    pub remote: SocketAddr,
    pub local: SocketAddr,
    /// The connection is TLS (the scheme is `https`).
    pub tls: bool,
}

impl Downstream {
    pub fn scheme(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }
}

/// `http.<stat_prefix>.*`.
pub struct HcmStats {
    pub downstream_cx_total: Counter,
    pub downstream_cx_active: Gauge,
    pub downstream_cx_http1_total: Counter,
    pub downstream_cx_http1_active: Gauge,
    pub downstream_cx_http2_total: Counter,
    pub downstream_cx_http2_active: Gauge,
    pub downstream_cx_upgrades_total: Counter,
    pub downstream_cx_upgrades_active: Gauge,
    pub downstream_cx_destroy: Counter,
    pub downstream_cx_drain_close: Counter,
    pub downstream_rq_total: Counter,
    pub downstream_rq_http1_total: Counter,
    pub downstream_rq_http2_total: Counter,
    pub downstream_rq_active: Gauge,
    pub downstream_rq_completed: Counter,
    pub downstream_rq: StatusCounters,
    pub downstream_rq_time: Arc<Histogram>,
    pub no_route: Counter,
    pub rq_direct_response: Counter,
    pub rq_total: Counter,
    pub downstream_cx_protocol_error: Counter,
    pub downstream_cx_idle_timeout: Counter,
    pub downstream_rq_header_timeout: Counter,
    pub downstream_rq_idle_timeout: Counter,
    pub downstream_rq_timeout: Counter,
    pub downstream_rq_too_many_premature_resets: Counter,
    pub downstream_rq_rx_reset: Counter,
    pub downstream_rq_response_before_rq_complete: Counter,
    pub downstream_rq_tx_reset: Counter,
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
            downstream_cx_http2_total: c("downstream_cx_http2_total"),
            downstream_cx_http2_active: g("downstream_cx_http2_active"),
            downstream_cx_upgrades_total: c("downstream_cx_upgrades_total"),
            downstream_cx_upgrades_active: g("downstream_cx_upgrades_active"),
            downstream_cx_destroy: c("downstream_cx_destroy"),
            downstream_cx_drain_close: c("downstream_cx_drain_close"),
            downstream_rq_total: c("downstream_rq_total"),
            downstream_rq_http1_total: c("downstream_rq_http1_total"),
            downstream_rq_http2_total: c("downstream_rq_http2_total"),
            downstream_rq_active: g("downstream_rq_active"),
            downstream_rq_completed: c("downstream_rq_completed"),
            downstream_rq: StatusCounters::new(stats, &format!("{p}downstream_rq_")),
            downstream_rq_time: stats.histogram(format!("{p}downstream_rq_time")),
            no_route: c("no_route"),
            rq_direct_response: c("rq_direct_response"),
            rq_total: c("rq_total"),
            downstream_cx_protocol_error: c("downstream_cx_protocol_error"),
            downstream_cx_idle_timeout: c("downstream_cx_idle_timeout"),
            downstream_rq_header_timeout: c("downstream_rq_header_timeout"),
            downstream_rq_idle_timeout: c("downstream_rq_idle_timeout"),
            downstream_rq_timeout: c("downstream_rq_timeout"),
            downstream_rq_too_many_premature_resets: c("downstream_rq_too_many_premature_resets"),
            downstream_rq_rx_reset: c("downstream_rq_rx_reset"),
            downstream_rq_response_before_rq_complete: c(
                "downstream_rq_response_before_rq_complete",
            ),
            downstream_rq_tx_reset: c("downstream_rq_tx_reset"),
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
        let hcm_stats = HcmStats::new(stats, &config.stat_prefix);
        let limits = config.limits.clone();
        // The head timer is the shorter of the header timeout and the stream idle timeout, and
        // answers as the one that fired.
        let head_timeout = match (limits.request_headers_timeout, limits.stream_idle_timeout) {
            (Some(h), Some(i)) if i < h => {
                Some((i, LocalReply::StreamIdleTimeout { complete: false }))
            }
            (Some(h), _) => Some((h, LocalReply::RequestHeaderTimeout)),
            (None, Some(i)) => Some((i, LocalReply::StreamIdleTimeout { complete: false })),
            (None, None) => None,
        };
        // Codec stats are rooted at `http1.` / `http2.`, as Envoy's downstream codec stats are.
        let guard = Arc::new(GuardConfig {
            max_head_bytes: config.max_request_headers_kb as usize * 1024,
            max_headers: config.max_headers_count as usize,
            max_uri_bytes: limits.max_request_uri_bytes,
            allow_chunked_length: limits.allow_chunked_length,
            head_timeout,
            stream_idle_timeout: limits.stream_idle_timeout,
            max_outbound_frames: config.http2.max_outbound_frames as usize,
            max_outbound_control_frames: config.http2.max_outbound_control_frames as usize,
            stats: GuardStats {
                downstream_rq_idle_timeout: hcm_stats.downstream_rq_idle_timeout.clone(),
                downstream_rq_too_many_premature_resets: hcm_stats
                    .downstream_rq_too_many_premature_resets
                    .clone(),
                downstream_cx_protocol_error: hcm_stats.downstream_cx_protocol_error.clone(),
                http2_rx_reset: stats.counter("http2.rx_reset"),
                http2_tx_reset: stats.counter("http2.tx_reset"),
                http2_outbound_flood: stats.counter("http2.outbound_flood"),
                http2_outbound_control_flood: stats.counter("http2.outbound_control_flood"),
                http2_tx_flush_timeout: stats.counter("http2.tx_flush_timeout"),
                http2_keepalive_timeout: stats.counter("http2.keepalive_timeout"),
                http2_header_overflow: stats.counter("http2.header_overflow"),
            },
        });
        let underscores = |codec: &str| UnderscoreStats {
            dropped: stats.counter(format!("{codec}.dropped_headers_with_underscores")),
            rejected: stats.counter(format!(
                "{codec}.requests_rejected_with_underscores_in_headers"
            )),
        };
        Ok(ConnectionManager {
            stat_prefix: config.stat_prefix.clone(),
            stats: hcm_stats,
            routes,
            access_logs,
            use_remote_address: config.use_remote_address,
            skip_xff_append: config.skip_xff_append,
            generate_request_id: config.generate_request_id,
            server_name: HeaderValue::from_str(&config.server_name)
                .unwrap_or_else(|_| HeaderValue::from_static("legate")),
            codec: config.codec,
            http2: config.http2,
            max_request_headers_kb: config.max_request_headers_kb,
            websocket: config.websocket,
            limits,
            guard,
            underscores_http1: underscores("http1"),
            underscores_http2: underscores("http2"),
        })
    }

    fn count_request(&self, version: Version) {
        let stats = &self.stats;
        stats.downstream_rq_total.increment(1);
        if version == Version::HTTP_2 {
            stats.downstream_rq_http2_total.increment(1);
        } else {
            stats.downstream_rq_http1_total.increment(1);
        }
        stats.downstream_rq_active.increment(1.0);
    }

    /// The limits the downstream codecs apply.
    pub fn guard_config(&self) -> Arc<GuardConfig> {
        self.guard.clone()
    }

    /// The answer to an HTTP/1.1 request head the codec refused (size, framing, timeout): it
    /// counts and logs as a request, with an empty method and path.
    pub fn reject(
        self: &Arc<Self>,
        ds: Downstream,
        conn: &Arc<ConnShared>,
        reply: LocalReply,
    ) -> Response<ResponseBody> {
        self.count_request(Version::HTTP_11);
        let mut info = Box::new(StreamInfo::new(
            self.clone(),
            ds,
            protocol_name(Version::HTTP_11),
        ));
        info.active = Some(conn.stream_started());
        self.capture_request(&mut info, "", "", None, &http::HeaderMap::new());
        self.local_reply(info, reply, Version::HTTP_11, false, false)
    }

    /// One request, start to response headers. The rest of the request's life is in the
    /// returned body. An `Err` resets the (HTTP/2) stream. `active` is the request's place in
    /// its connection's idle timer (from [`ConnShared::stream_started`]).
    pub async fn handle(
        self: Arc<Self>,
        req: Request<DownstreamBody>,
        ds: Downstream,
        active: guard::ActiveStream,
    ) -> Result<Response<ResponseBody>, h2::Error> {
        let stats = &self.stats;
        let version = req.version();
        self.count_request(version);

        // A WebSocket upgrade keeps its Upgrade/Connection headers for the upstream and takes the
        // downstream connection over once the upstream answers 101.
        let upgrade = self.websocket && is_websocket_upgrade(&req);
        let (mut parts, body) = req.into_parts();
        let grpc = grpc::is_grpc(&parts.headers);
        let mut info = Box::new(StreamInfo::new(self.clone(), ds, protocol_name(version)));
        info.active = Some(active);
        let underscores = if version == Version::HTTP_2 {
            &self.underscores_http2
        } else {
            &self.underscores_http1
        };
        if let Err(v) = validation::check_request(&mut parts, &self.limits, underscores) {
            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            let authority = parts.uri.authority().map(|a| a.as_str());
            self.capture_request(
                &mut info,
                parts.method.as_str(),
                path,
                authority,
                &parts.headers,
            );
            return match v {
                Verdict::Reply(reply) => {
                    let mut resp = self.local_reply(info, reply, version, grpc, false);
                    // The rest of an HTTP/1.1 connection that sent this is not trusted either.
                    if version != Version::HTTP_2 {
                        resp.headers_mut()
                            .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    }
                    Ok(resp)
                }
                Verdict::Reset(reason) => {
                    info.reset_locally("http2.invalid_header_field");
                    Err(h2::Error::from(reason))
                }
            };
        }
        self.edit_request_headers(&mut parts.headers, &ds);
        if upgrade {
            // Only the WebSocket token travels on (an `h2c` next to it must not).
            parts
                .headers
                .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }

        // Routing uses Host, or the authority of an absolute-form (HTTP/1) or HTTP/2 target.
        let authority: &str = match parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
        {
            Some(h) => h,
            None => parts.uri.authority().map_or("", |a| a.as_str()),
        };
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        self.capture_request(
            &mut info,
            parts.method.as_str(),
            path,
            (!authority.is_empty()).then_some(authority),
            &parts.headers,
        );

        // A CONNECT target has no path: Envoy's path matchers never match it (only a
        // `connect_matcher` would, which legate does not support), so it is a 404 without a
        // lookup, never forwarded as if its path were `/`.
        let route = if parts.method == http::Method::CONNECT {
            None
        } else {
            self.routes.find(authority, path)
        };
        let Some((vi, ri)) = route else {
            stats.no_route.increment(1);
            return Ok(self.local_reply(info, LocalReply::NoRoute, version, grpc, false));
        };
        info.route = Some((vi, ri));
        let route = &self.routes.virtual_hosts[vi].routes[ri];
        stats.rq_total.increment(1);
        match &route.action {
            Action::DirectResponse { status, body } => {
                stats.rq_direct_response.increment(1);
                info.details = "direct_response";
                Ok(self.respond(info, *status, body.clone(), version))
            }
            Action::Forward(fwd) => {
                // gRPC clients state their deadline; the tighter of it and the route timeout wins.
                let grpc_deadline = if grpc {
                    grpc::timeout(&parts.headers)
                } else {
                    None
                };
                let deadline = match grpc_deadline {
                    Some(d) if fwd.timeout.is_zero() || d < fwd.timeout => Some(d),
                    _ => None,
                };
                let route_timeout = Some(deadline.unwrap_or(fwd.timeout)).filter(|d| !d.is_zero());
                let progress = info.request.clone();
                // Wrapped before the timers start: a bodiless request is complete from the
                // start, so its route timer is armed once.
                let body = super::body::RequestBody::new(body, progress.clone());
                let start = info.start;
                let sent = {
                    let forward = std::pin::pin!(router::forward::forward(
                        &mut info,
                        &route.path_match,
                        fwd,
                        parts,
                        body,
                    ));
                    stream_timers(forward, &self.limits, route_timeout, start, &progress).await
                };
                Ok(match sent {
                    Ok(Ok((resp, upstream, host))) => {
                        self.upstream_response(info, resp, upstream, host, version, upgrade)
                    }
                    Ok(Err(reply)) => {
                        // The downstream broke the request body: its fault, not the upstream's.
                        let reply = if progress.failed.load(Ordering::Acquire) {
                            stats.downstream_cx_protocol_error.increment(1);
                            LocalReply::DownstreamProtocolError {
                                status: 400,
                                details: if version == Version::HTTP_2 {
                                    "http2.codec_error"
                                } else {
                                    "http1.codec_error"
                                },
                            }
                        } else {
                            reply
                        };
                        self.local_reply(info, reply, version, grpc, false)
                    }
                    Err(LocalReply::UpstreamTimeout) => {
                        router::forward::count_timeout(&info);
                        let grpc_deadline = deadline.is_some();
                        self.local_reply(
                            info,
                            LocalReply::UpstreamTimeout,
                            version,
                            grpc,
                            grpc_deadline,
                        )
                    }
                    Err(reply) => self.local_reply(info, reply, version, grpc, false),
                })
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
            h.insert(
                X_FORWARDED_PROTO.clone(),
                HeaderValue::from_static(ds.scheme()),
            );
        } else {
            // One lookup for "absent, then add".
            h.entry(&X_FORWARDED_PROTO)
                .or_insert_with(|| HeaderValue::from_static(ds.scheme()));
        }
        if self.generate_request_id {
            h.entry(&X_REQUEST_ID)
                .or_insert_with(headers::new_request_id);
        }
    }

    fn upstream_response(
        &self,
        mut info: Box<StreamInfo>,
        resp: Response<UpstreamBody>,
        upstream: Upstream,
        host: Arc<crate::cluster::Host>,
        version: Version,
        upgrade: bool,
    ) -> Response<ResponseBody> {
        let (mut parts, body) = resp.into_parts();
        // An HTTP/1.1 upstream answers `101` only to a request that asked to upgrade.
        let tunnel = match (upgrade, upstream) {
            (true, Upstream::H1(conn)) if parts.status == StatusCode::SWITCHING_PROTOCOLS => {
                Ok(conn.into_upgraded())
            }
            (_, upstream) => Err(upstream),
        };
        // legate's HTTP/1.1 codec leaves them out while parsing, in the common case.
        let stripped = matches!(&tunnel, Err(Upstream::H1(c)) if c.hop_by_hop_removed());
        if tunnel.is_err() && !stripped {
            headers::strip_hop_by_hop(&mut parts.headers);
        }
        if let Some(t) = info.upstream_start {
            let ms = t.elapsed().as_millis() as u64;
            parts.headers.insert(
                X_ENVOY_UPSTREAM_SERVICE_TIME.clone(),
                headers::service_time(ms),
            );
        }
        parts
            .headers
            .insert(header::SERVER, self.server_name.clone());
        parts.version = version;
        info.status = parts.status.as_u16();
        info.details = "via_upstream";
        self.capture_response(&mut info, &parts.headers);
        match tunnel {
            // The upstream connection now belongs to the tunnel (the downstream codec splices
            // it once the `101` is out); it never returns to the pool.
            Ok(up) => Response::from_parts(
                parts,
                ResponseBody::full(Bytes::new(), Some(info)).with_tunnel(up),
            ),
            Err(upstream) => {
                Response::from_parts(parts, ResponseBody::upstream(body, info, upstream, host))
            }
        }
    }

    fn capture_request(
        &self,
        info: &mut StreamInfo,
        method: &str,
        path: &str,
        authority: Option<&str>,
        headers: &http::HeaderMap,
    ) {
        if self.access_logs.is_empty() {
            return;
        }
        let req_parts = RequestParts {
            method,
            path,
            authority,
            scheme: info.downstream.scheme(),
            headers,
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

    fn local_reply(
        &self,
        mut info: Box<StreamInfo>,
        reply: LocalReply,
        version: Version,
        grpc: bool,
        grpc_deadline: bool,
    ) -> Response<ResponseBody> {
        match reply {
            LocalReply::RequestHeaderTimeout => {
                self.stats.downstream_rq_header_timeout.increment(1)
            }
            LocalReply::RequestTimeout { .. } => self.stats.downstream_rq_timeout.increment(1),
            LocalReply::StreamIdleTimeout { .. } => {
                self.stats.downstream_rq_idle_timeout.increment(1)
            }
            _ => {}
        }
        info.flags.set(reply.flag());
        info.details = reply.details();
        let reason = reply.transport_failure_reason();
        if !reason.is_empty() {
            info.transport_failure_reason = Some(reason.into());
        }
        if !grpc {
            return self.respond(info, reply.status(), reply.body(), version);
        }
        // gRPC clients read the outcome from grpc-status, so the reply is trailers-only.
        let status = if grpc_deadline {
            grpc::DEADLINE_EXCEEDED
        } else {
            grpc::status_for_http(reply.status())
        };
        let mut resp = Response::new(ResponseBody::full(Bytes::new(), None));
        *resp.version_mut() = version;
        let h = resp.headers_mut();
        grpc::trailers_only(h, status, &String::from_utf8_lossy(&reply.body()));
        h.insert(header::SERVER, self.server_name.clone());
        info.status = 200;
        self.capture_response(&mut info, resp.headers());
        *resp.body_mut() = ResponseBody::full(Bytes::new(), Some(info));
        resp
    }

    fn respond(
        &self,
        mut info: Box<StreamInfo>,
        status: u16,
        body: Bytes,
        version: Version,
    ) -> Response<ResponseBody> {
        let mut resp = Response::new(ResponseBody::full(Bytes::new(), None));
        *resp.status_mut() =
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        *resp.version_mut() = version;
        let h = resp.headers_mut();
        if !body.is_empty() {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        }
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        h.insert(header::SERVER, self.server_name.clone());
        if info.flags.contains(ResponseFlags::UPSTREAM_OVERFLOW) {
            h.insert(X_ENVOY_OVERLOADED.clone(), HeaderValue::from_static("true"));
        }
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

/// `Connection: upgrade` + `Upgrade: websocket` on an HTTP/1.1 request (RFC 6455 §4.1).
fn is_websocket_upgrade<B>(req: &Request<B>) -> bool {
    if req.version() != Version::HTTP_11 {
        return false;
    }
    let has = |name: header::HeaderName, token: &str| {
        req.headers().get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    has(header::UPGRADE, "websocket") && has(header::CONNECTION, "upgrade")
}

/// The stream's own timers until the upstream's response headers: `request_timeout` (until the
/// request has arrived whole), `stream_idle_timeout` (reset by request body progress) and the
/// route timeout (from the end of the request, Envoy's default start), all on one timer.
///
/// `fut` comes pinned by the caller so that its state is not copied into this future's.
pub(super) async fn stream_timers<F: Future>(
    mut fut: std::pin::Pin<&mut F>,
    limits: &DownstreamLimits,
    route_timeout: Option<Duration>,
    start: Instant,
    progress: &super::body::RequestProgress,
) -> Result<F::Output, LocalReply> {
    let request_deadline = limits.request_timeout.map(|d| start + d);
    let mut seen = progress.bytes.load(Ordering::Relaxed);
    // The first deadlines count from the request's start, read microseconds ago; the clock is
    // read again only on the (rare) later passes of the loop.
    let mut now = start;
    let mut fresh = true;
    let mut idle_deadline = limits.stream_idle_timeout.map(|d| now + d);
    let mut route_deadline = None;
    let mut timer = std::pin::pin!(tokio::time::sleep_until(start.into()));
    loop {
        let complete = progress.is_done();
        if complete && route_deadline.is_none() {
            // The route timer starts when the request is complete: now, unless time has
            // passed since `now` was read.
            if !fresh {
                now = Instant::now();
            }
            route_deadline = route_timeout.map(|d| now + d);
        }
        fresh = false;
        let next = [
            request_deadline.filter(|_| !complete),
            idle_deadline,
            route_deadline,
        ]
        .into_iter()
        .flatten()
        .min();
        match next {
            None if complete => return Ok(fut.await),
            None => {
                tokio::select! {
                    biased;
                    out = fut.as_mut() => return Ok(out),
                    _ = progress.finished() => continue,
                }
            }
            Some(next) => {
                timer.as_mut().reset(next.into());
                tokio::select! {
                    biased;
                    out = fut.as_mut() => return Ok(out),
                    _ = timer.as_mut() => {}
                    // The route timer starts when the request is complete.
                    _ = progress.finished(), if !complete && route_timeout.is_some() => continue,
                }
            }
        }
        now = Instant::now();
        let complete = progress.is_done();
        if let Some(d) = request_deadline {
            if !complete && now >= d {
                return Err(LocalReply::RequestTimeout { complete });
            }
        }
        if route_deadline.is_some_and(|d| now >= d) {
            return Err(LocalReply::UpstreamTimeout);
        }
        if let (Some(d), Some(idle)) = (idle_deadline, limits.stream_idle_timeout) {
            if now >= d {
                let cur = progress.bytes.load(Ordering::Relaxed);
                if cur == seen {
                    return Err(LocalReply::StreamIdleTimeout { complete });
                }
                seen = cur;
                idle_deadline = Some(now + idle);
            }
        }
    }
}
