//! Proto types → runtime types, once, at startup. Every semantic error is collected with its field
//! path so `--mode validate` can list them all.

use super::duration::ProtoDuration;
use super::load::deserialize_at;
use super::proto::{self, *};
use super::FieldError;
use crate::http::router::{self, RouteTable};
use crate::observe::access_log::{Format, DEFAULT_FORMAT};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// A validated bootstrap: everything the server needs, nothing left to check.
#[derive(Debug, Clone)]
pub struct Config {
    pub node_id: String,
    pub admin: Option<SocketAddr>,
    pub listeners: Vec<ListenerConfig>,
    pub clusters: Vec<ClusterConfig>,
}

pub use super::listener::{FilterChainConfig, ListenerConfig, TerminalConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodecType {
    /// HTTP/1.1, or HTTP/2 when the connection starts with the HTTP/2 preface (h2c prior
    /// knowledge); with TLS, ALPN will decide.
    Auto,
    Http1,
    Http2,
}

/// HTTP/2 settings for one side of a connection, with Envoy's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http2Settings {
    pub hpack_table_size: u32,
    pub max_concurrent_streams: u32,
    pub initial_stream_window_size: u32,
    pub initial_connection_window_size: u32,
    /// PING every `interval`, close when no ACK within `timeout`.
    pub keepalive: Option<(Duration, Duration)>,
    /// Frames queued for the peer (not yet written to the socket) before the connection is
    /// closed as a flood; control frames (PING, SETTINGS, RST_STREAM) have the lower limit.
    pub max_outbound_frames: u32,
    pub max_outbound_control_frames: u32,
}

impl Default for Http2Settings {
    fn default() -> Self {
        Http2Settings {
            hpack_table_size: 4096,
            max_concurrent_streams: 1024,
            initial_stream_window_size: 16 * 1024 * 1024,
            initial_connection_window_size: 24 * 1024 * 1024,
            keepalive: None,
            max_outbound_frames: 10000,
            max_outbound_control_frames: 1000,
        }
    }
}

/// The protocol a cluster speaks to its hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    Http1,
    Http2(Http2Settings),
    /// The downstream request's protocol (`use_downstream_protocol_config`).
    UseDownstream(Http2Settings),
}

#[derive(Debug, Clone)]
pub struct HcmConfig {
    pub stat_prefix: String,
    pub codec: CodecType,
    pub http2: Http2Settings,
    pub max_request_headers_kb: u32,
    pub max_headers_count: u32,
    /// `upgrade_configs` names `websocket`.
    pub websocket: bool,
    pub routes: RouteTable<String>,
    pub access_logs: Vec<AccessLogConfig>,
    pub use_remote_address: bool,
    pub skip_xff_append: bool,
    pub generate_request_id: bool,
    pub server_name: String,
    pub limits: DownstreamLimits,
}

/// `headers_with_underscores_action` (`HttpProtocolOptions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnderscoreAction {
    Allow,
    DropHeader,
    RejectRequest,
}

/// What a downstream may send and how slowly, with Envoy's defaults. `None` is off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownstreamLimits {
    /// From the first byte of a request until its headers are complete (408).
    pub request_headers_timeout: Option<Duration>,
    /// No activity on a stream (408 before response headers, reset after). Default 5 min.
    pub stream_idle_timeout: Option<Duration>,
    /// From the start of a request until it has been received whole (408).
    pub request_timeout: Option<Duration>,
    /// A connection with no request in flight is closed after this long. Default 1 h.
    pub idle_timeout: Option<Duration>,
    /// HTTP/1.1 `Content-Length` with `Transfer-Encoding: chunked` is accepted (length dropped).
    pub allow_chunked_length: bool,
    /// HTTP/1.0 requests are served (`accept_http_10`); otherwise they get 426.
    pub accept_http_10: bool,
    /// The Host an HTTP/1.0 request without one gets (`default_host_for_http_10`).
    pub default_host_for_http_10: Option<http::HeaderValue>,
    pub headers_with_underscores: UnderscoreAction,
    /// The longest request target, in bytes (414 beyond it).
    pub max_request_uri_bytes: usize,
}

pub const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
pub const DEFAULT_MAX_REQUEST_URI_KB: u32 = 16;

impl Default for DownstreamLimits {
    fn default() -> Self {
        DownstreamLimits {
            request_headers_timeout: None,
            stream_idle_timeout: Some(DEFAULT_STREAM_IDLE_TIMEOUT),
            request_timeout: None,
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            allow_chunked_length: false,
            accept_http_10: false,
            default_host_for_http_10: None,
            headers_with_underscores: UnderscoreAction::Allow,
            max_request_uri_bytes: DEFAULT_MAX_REQUEST_URI_KB as usize * 1024,
        }
    }
}

#[derive(Debug, Clone)]
pub struct AccessLogConfig {
    pub sink: AccessLogSink,
    pub format: Arc<Format>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogSink {
    Stdout,
    Stderr,
    File(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterType {
    Static,
    StrictDns,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsLookupFamily {
    Auto,
    V4Only,
    V6Only,
    V4Preferred,
    All,
}

#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub name: String,
    pub cluster_type: ClusterType,
    pub connect_timeout: Duration,
    pub dns_refresh_rate: Duration,
    pub dns_lookup_family: DnsLookupFamily,
    pub endpoints: Vec<EndpointConfig>,
    pub protocol: UpstreamProtocol,
    pub tls: Option<crate::tls::ClientTls>,
    pub lb_policy: LbPolicy,
    pub circuit_breakers: CircuitBreakerThresholds,
}

pub use super::cluster::{CircuitBreakerThresholds, LbPolicy};

/// An endpoint as configured: an IP address for STATIC clusters, a name to resolve for
/// STRICT_DNS ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointConfig {
    pub host: String,
    pub port: u16,
    pub weight: u32,
}

/// Envoy's defaults (cluster.proto, route_components.proto).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_DNS_REFRESH_RATE: Duration = Duration::from_secs(5);
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);
/// Envoy caps a direct response body at 4 KiB (`max_direct_response_body_size_bytes`).
const MAX_DIRECT_RESPONSE_BODY: usize = 4096;

#[derive(Default)]
pub(crate) struct Errors(pub(crate) Vec<FieldError>);

impl Errors {
    pub(crate) fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }

    pub(crate) fn unsupported(&mut self, path: String, value: &str) {
        self.add(path, format!("unsupported value '{value}'"));
    }

    /// Deserialise a `typed_config` whose `@type` was already checked.
    pub(crate) fn typed<T: DeserializeOwned + Default>(
        &mut self,
        value: Option<Value>,
        path: &str,
    ) -> Option<T> {
        let Some(mut value) = value else {
            return Some(T::default());
        };
        if let Value::Object(map) = &mut value {
            map.remove("@type");
        }
        match deserialize_at::<T>(value, path) {
            Ok(t) => Some(t),
            Err(e) => {
                self.0.push(e);
                None
            }
        }
    }
}

pub(crate) fn type_url(value: &Option<Value>) -> Option<&str> {
    value.as_ref()?.get("@type")?.as_str()
}

pub fn validate(b: Bootstrap) -> Result<Config, Vec<FieldError>> {
    let mut errs = Errors::default();

    let admin = b
        .admin
        .as_ref()
        .and_then(|a| listen_address(&a.address, "admin.address", &mut errs));

    let mut cluster_names = HashSet::new();
    let mut clusters = Vec::new();
    for (i, c) in b.static_resources.clusters.into_iter().enumerate() {
        let path = format!("static_resources.clusters[{i}]");
        if !cluster_names.insert(c.name.clone()) {
            errs.add(
                format!("{path}.name"),
                format!("duplicate cluster name '{}'", c.name),
            );
        }
        if let Some(c) = cluster(c, &path, &mut errs) {
            clusters.push(c);
        }
    }

    let mut listeners = Vec::new();
    let mut listener_names = HashSet::new();
    for (i, l) in b.static_resources.listeners.into_iter().enumerate() {
        let path = format!("static_resources.listeners[{i}]");
        if !l.name.is_empty() && !listener_names.insert(l.name.clone()) {
            errs.add(
                format!("{path}.name"),
                format!("duplicate listener name '{}'", l.name),
            );
        }
        if let Some(l) = super::listener::listener(l, &path, &cluster_names, &mut errs) {
            listeners.push(l);
        }
    }

    if errs.0.is_empty() {
        Ok(Config {
            node_id: b.node.map(|n| n.id).unwrap_or_default(),
            admin,
            listeners,
            clusters,
        })
    } else {
        Err(errs.0)
    }
}

pub(crate) fn listen_address(a: &Address, path: &str, errs: &mut Errors) -> Option<SocketAddr> {
    let sa = &a.socket_address;
    protocol_tcp(sa, path, errs);
    let ip: IpAddr = match sa.address.parse() {
        Ok(ip) => ip,
        Err(_) => {
            errs.add(
                format!("{path}.socket_address.address"),
                format!(
                    "'{}' is not an IP address (listeners bind to IP addresses)",
                    sa.address
                ),
            );
            return None;
        }
    };
    let port = port(sa, path, errs)?;
    Some(SocketAddr::new(ip, port))
}

fn protocol_tcp(sa: &SocketAddress, path: &str, errs: &mut Errors) {
    if let Some(p) = &sa.protocol {
        if p != "TCP" {
            errs.unsupported(format!("{path}.socket_address.protocol"), p);
        }
    }
}

fn port(sa: &SocketAddress, path: &str, errs: &mut Errors) -> Option<u16> {
    match u16::try_from(sa.port_value) {
        Ok(p) => Some(p),
        Err(_) => {
            errs.add(
                format!("{path}.socket_address.port_value"),
                format!("{} is not a port (0-65535)", sa.port_value),
            );
            None
        }
    }
}

/// Envoy names listener stats after the address: `127.0.0.1_10000`, `[::1]_10000` becomes `::1_10000`.
pub fn address_stat_name(a: &SocketAddr) -> String {
    format!("{}_{}", a.ip(), a.port())
}

pub(crate) fn http_connection_manager(
    h: HttpConnectionManager,
    path: &str,
    clusters: &HashSet<String>,
    errs: &mut Errors,
) -> Option<HcmConfig> {
    let codec = match h.codec_type.as_deref() {
        None | Some("AUTO") => CodecType::Auto,
        Some("HTTP1") => CodecType::Http1,
        Some("HTTP2") => CodecType::Http2,
        Some(other) => {
            errs.unsupported(format!("{path}.codec_type"), other);
            CodecType::Auto
        }
    };
    let http2 = http2_settings(
        h.http2_protocol_options.as_ref(),
        &format!("{path}.http2_protocol_options"),
        errs,
    );
    let max_request_headers_kb = h.max_request_headers_kb.unwrap_or(60);
    if !(1..=8192).contains(&max_request_headers_kb) {
        errs.add(
            format!("{path}.max_request_headers_kb"),
            "must be in [1, 8192]",
        );
    }
    let max_headers_count = h
        .common_http_protocol_options
        .as_ref()
        .and_then(|c| c.max_headers_count)
        .unwrap_or(100);
    if max_headers_count == 0 {
        errs.add(
            format!("{path}.common_http_protocol_options.max_headers_count"),
            "must be at least 1",
        );
    }
    let limits = downstream_limits(&h, path, errs);
    let mut websocket = false;
    for (i, u) in h.upgrade_configs.iter().enumerate() {
        if u.upgrade_type.eq_ignore_ascii_case("websocket") {
            websocket = u.enabled.unwrap_or(true);
        } else {
            errs.unsupported(
                format!("{path}.upgrade_configs[{i}].upgrade_type"),
                &u.upgrade_type,
            );
        }
    }

    // HTTP filters: the router is required and must be last; no other filter exists yet.
    let n = h.http_filters.len();
    if n == 0 {
        errs.add(
            format!("{path}.http_filters"),
            "the router filter (envoy.filters.http.router) is required",
        );
    }
    for (i, f) in h.http_filters.into_iter().enumerate() {
        let fpath = format!("{path}.http_filters[{i}]");
        let is_router = match type_url(&f.typed_config) {
            Some(ROUTER_TYPE) => true,
            Some(other) => {
                errs.add(
                    format!("{fpath}.typed_config.@type"),
                    format!("unsupported HTTP filter type '{other}'"),
                );
                false
            }
            None if f.name == ROUTER_NAME => true,
            None => {
                errs.add(
                    format!("{fpath}.name"),
                    format!("unsupported HTTP filter '{}'", f.name),
                );
                false
            }
        };
        if is_router {
            errs.typed::<Router>(f.typed_config, &format!("{fpath}.typed_config"));
            if i + 1 != n {
                errs.add(fpath, "the router filter must be the last HTTP filter");
            }
        }
    }

    let mut access_logs = Vec::new();
    for (i, a) in h.access_log.into_iter().enumerate() {
        if let Some(a) = access_log(a, &format!("{path}.access_log[{i}]"), errs) {
            access_logs.push(a);
        }
    }

    let routes = match h.route_config {
        Some(rc) => route_config(rc, &format!("{path}.route_config"), clusters, errs),
        None => {
            errs.add(
                format!("{path}.route_config"),
                "route_config is required (rds is not supported)",
            );
            None
        }
    };

    Some(HcmConfig {
        stat_prefix: h.stat_prefix,
        codec,
        http2,
        max_request_headers_kb,
        max_headers_count,
        websocket,
        routes: routes?,
        access_logs,
        use_remote_address: h.use_remote_address.unwrap_or(false),
        skip_xff_append: h.skip_xff_append.unwrap_or(false),
        generate_request_id: h.generate_request_id.unwrap_or(true),
        server_name: h.server_name.unwrap_or_else(|| "legate".to_string()),
        limits,
    })
}

/// Timeouts and request limits of a connection manager; a `0s` duration turns a timer off.
fn downstream_limits(h: &HttpConnectionManager, path: &str, errs: &mut Errors) -> DownstreamLimits {
    let mut l = DownstreamLimits::default();
    let on = |d: ProtoDuration| (!d.0.is_zero()).then_some(d.0);
    if let Some(d) = h.request_headers_timeout {
        l.request_headers_timeout = on(d);
    }
    if let Some(d) = h.stream_idle_timeout {
        l.stream_idle_timeout = on(d);
    }
    if let Some(d) = h.request_timeout {
        l.request_timeout = on(d);
    }
    if let Some(c) = &h.common_http_protocol_options {
        if let Some(d) = c.idle_timeout {
            l.idle_timeout = on(d);
        }
        match c.headers_with_underscores_action.as_deref() {
            None | Some("ALLOW") => {}
            Some("DROP_HEADER") => l.headers_with_underscores = UnderscoreAction::DropHeader,
            Some("REJECT_REQUEST") => l.headers_with_underscores = UnderscoreAction::RejectRequest,
            Some(other) => errs.unsupported(
                format!("{path}.common_http_protocol_options.headers_with_underscores_action"),
                other,
            ),
        }
    }
    if let Some(o) = &h.http_protocol_options {
        l.allow_chunked_length = o.allow_chunked_length.unwrap_or(false);
        l.accept_http_10 = o.accept_http_10.unwrap_or(false);
        if let Some(host) = &o.default_host_for_http_10 {
            match http::HeaderValue::from_str(host) {
                Ok(v) if !host.is_empty() => l.default_host_for_http_10 = Some(v),
                _ => errs.add(
                    format!("{path}.http_protocol_options.default_host_for_http_10"),
                    "must be a valid host",
                ),
            }
        }
    }
    if let Some(kb) = h.max_request_uri_kb {
        // hyper's own ceiling for a request target is 64 KiB - 2.
        if !(1..=63).contains(&kb) {
            errs.add(format!("{path}.max_request_uri_kb"), "must be in [1, 63]");
        }
        l.max_request_uri_bytes = kb.clamp(1, 63) as usize * 1024;
    }
    l
}

/// Envoy's HTTP/2 options with its defaults and ranges (protocol.proto).
fn http2_settings(
    o: Option<&Http2ProtocolOptions>,
    path: &str,
    errs: &mut Errors,
) -> Http2Settings {
    let mut s = Http2Settings::default();
    let Some(o) = o else { return s };
    if let Some(v) = o.hpack_table_size {
        s.hpack_table_size = v;
    }
    if let Some(v) = o.max_concurrent_streams {
        if !(1..=i32::MAX as u32).contains(&v) {
            errs.add(
                format!("{path}.max_concurrent_streams"),
                "must be in [1, 2147483647]",
            );
        }
        s.max_concurrent_streams = v;
    }
    for (field, value, target) in [
        (
            "initial_stream_window_size",
            o.initial_stream_window_size,
            &mut s.initial_stream_window_size,
        ),
        (
            "initial_connection_window_size",
            o.initial_connection_window_size,
            &mut s.initial_connection_window_size,
        ),
    ] {
        if let Some(v) = value {
            if !(65535..=i32::MAX as u32).contains(&v) {
                errs.add(format!("{path}.{field}"), "must be in [65535, 2147483647]");
            }
            *target = v;
        }
    }
    if let Some(v) = o.max_outbound_frames {
        if v == 0 {
            errs.add(format!("{path}.max_outbound_frames"), "must be at least 1");
        }
        s.max_outbound_frames = v.max(1);
    }
    if let Some(v) = o.max_outbound_control_frames {
        if v == 0 {
            errs.add(
                format!("{path}.max_outbound_control_frames"),
                "must be at least 1",
            );
        }
        s.max_outbound_control_frames = v.max(1);
    }
    if let Some(k) = &o.connection_keepalive {
        match (k.interval, k.timeout) {
            (Some(i), Some(t)) if !i.0.is_zero() && !t.0.is_zero() => {
                s.keepalive = Some((i.0, t.0))
            }
            _ => errs.add(
                format!("{path}.connection_keepalive"),
                "interval and timeout are both required and must be greater than 0s",
            ),
        }
    }
    s
}

/// The cluster's upstream protocol: `typed_extension_protocol_options` (v3) or the deprecated
/// `http2_protocol_options`.
fn upstream_protocol(c: &mut proto::Cluster, path: &str, errs: &mut Errors) -> UpstreamProtocol {
    let mut protocol = UpstreamProtocol::Http1;
    if let Some(o) = &c.http2_protocol_options {
        protocol = UpstreamProtocol::Http2(http2_settings(
            Some(o),
            &format!("{path}.http2_protocol_options"),
            errs,
        ));
    }
    for (key, value) in std::mem::take(&mut c.typed_extension_protocol_options) {
        let kpath = format!("{path}.typed_extension_protocol_options[\"{key}\"]");
        if key != UPSTREAM_HTTP_OPTIONS_NAME {
            errs.add(kpath, format!("unsupported protocol options '{key}'"));
            continue;
        }
        match value.get("@type").and_then(Value::as_str) {
            Some(UPSTREAM_HTTP_OPTIONS_TYPE) => {}
            Some(other) => {
                errs.add(
                    format!("{kpath}.@type"),
                    format!("unsupported type '{other}'"),
                );
                continue;
            }
            None => {
                errs.add(format!("{kpath}.@type"), "missing @type");
                continue;
            }
        }
        let Some(opts) = errs.typed::<UpstreamHttpProtocolOptions>(Some(value), &kpath) else {
            continue;
        };
        match (opts.explicit_http_config, opts.use_downstream_protocol_config) {
            (Some(e), None) => match (e.http_protocol_options, e.http2_protocol_options) {
                (Some(_), None) => protocol = UpstreamProtocol::Http1,
                (None, Some(h2)) => {
                    protocol = UpstreamProtocol::Http2(http2_settings(
                        Some(&h2),
                        &format!("{kpath}.explicit_http_config.http2_protocol_options"),
                        errs,
                    ))
                }
                _ => errs.add(
                    format!("{kpath}.explicit_http_config"),
                    "set exactly one of http_protocol_options, http2_protocol_options",
                ),
            },
            (None, Some(d)) => {
                protocol = UpstreamProtocol::UseDownstream(http2_settings(
                    d.http2_protocol_options.as_ref(),
                    &format!("{kpath}.use_downstream_protocol_config.http2_protocol_options"),
                    errs,
                ))
            }
            (None, None) => errs.add(kpath, "set one of explicit_http_config, use_downstream_protocol_config (auto_config is not supported)"),
            (Some(_), Some(_)) => errs.add(kpath, "explicit_http_config and use_downstream_protocol_config are mutually exclusive"),
        }
    }
    protocol
}

fn access_log(a: TypedExtension, path: &str, errs: &mut Errors) -> Option<AccessLogConfig> {
    let tpath = format!("{path}.typed_config");
    let (sink, format) = match type_url(&a.typed_config) {
        Some(STDOUT_LOG_TYPE) => {
            let s: StreamAccessLog = errs.typed(a.typed_config, &tpath)?;
            (AccessLogSink::Stdout, s.log_format)
        }
        Some(STDERR_LOG_TYPE) => {
            let s: StreamAccessLog = errs.typed(a.typed_config, &tpath)?;
            (AccessLogSink::Stderr, s.log_format)
        }
        Some(FILE_LOG_TYPE) => {
            let mut v = a.typed_config?;
            if let Value::Object(map) = &mut v {
                map.remove("@type");
            }
            let f: FileAccessLog = match deserialize_at(v, &tpath) {
                Ok(f) => f,
                Err(e) => {
                    errs.0.push(e);
                    return None;
                }
            };
            let format = f.log_format.or(f.format.map(|s| SubstitutionFormatString {
                text_format: Some(s),
                text_format_source: None,
            }));
            let sink = match f.path.as_str() {
                "/dev/stdout" => AccessLogSink::Stdout,
                "/dev/stderr" => AccessLogSink::Stderr,
                p => AccessLogSink::File(p.to_string()),
            };
            (sink, format)
        }
        Some(other) => {
            errs.add(
                format!("{tpath}.@type"),
                format!("unsupported access logger type '{other}'"),
            );
            return None;
        }
        None => {
            errs.add(
                tpath,
                format!("access logger '{}' needs a typed_config with @type", a.name),
            );
            return None;
        }
    };
    let text = match format {
        None => DEFAULT_FORMAT.to_string(),
        Some(SubstitutionFormatString {
            text_format: Some(t),
            text_format_source: None,
        }) => t,
        Some(SubstitutionFormatString {
            text_format: None,
            text_format_source: Some(src),
        }) => data_source(
            &src,
            &format!("{tpath}.log_format.text_format_source"),
            errs,
        )?,
        Some(_) => {
            errs.add(
                format!("{tpath}.log_format"),
                "set exactly one of text_format, text_format_source",
            );
            return None;
        }
    };
    match Format::parse(&text) {
        Ok(format) => Some(AccessLogConfig {
            sink,
            format: Arc::new(format),
        }),
        Err(e) => {
            errs.add(format!("{tpath}.log_format"), e);
            None
        }
    }
}

pub(crate) fn data_source(d: &DataSource, path: &str, errs: &mut Errors) -> Option<String> {
    match (&d.inline_string, &d.filename) {
        (Some(s), None) => Some(s.clone()),
        (None, Some(f)) => match std::fs::read_to_string(f) {
            Ok(s) => Some(s),
            Err(e) => {
                errs.add(
                    format!("{path}.filename"),
                    format!("cannot read '{f}': {e}"),
                );
                None
            }
        },
        _ => {
            errs.add(
                path.to_string(),
                "set exactly one of inline_string, filename",
            );
            None
        }
    }
}

fn route_config(
    rc: RouteConfiguration,
    path: &str,
    clusters: &HashSet<String>,
    errs: &mut Errors,
) -> Option<RouteTable<String>> {
    let mut vhosts = Vec::new();
    let mut seen_domains = HashSet::new();
    for (vi, vh) in rc.virtual_hosts.into_iter().enumerate() {
        let vpath = format!("{path}.virtual_hosts[{vi}]");
        if vh.domains.is_empty() {
            errs.add(
                format!("{vpath}.domains"),
                "a virtual host needs at least one domain",
            );
        }
        for (di, d) in vh.domains.iter().enumerate() {
            let d = d.to_ascii_lowercase();
            if let Err(e) = router::validate_domain(&d) {
                errs.add(format!("{vpath}.domains[{di}]"), e);
            } else if !seen_domains.insert(d.clone()) {
                // Envoy rejects a domain that two virtual hosts claim.
                errs.add(
                    format!("{vpath}.domains[{di}]"),
                    format!("domain '{d}' is already used by another virtual host"),
                );
            }
        }
        let mut routes = Vec::new();
        for (ri, r) in vh.routes.into_iter().enumerate() {
            if let Some(r) = route(r, &format!("{vpath}.routes[{ri}]"), clusters, errs) {
                routes.push(r);
            }
        }
        vhosts.push(router::VirtualHost {
            name: vh.name,
            domains: vh.domains,
            routes,
        });
    }
    Some(RouteTable::new(rc.name, vhosts))
}

fn route(
    r: proto::Route,
    path: &str,
    clusters: &HashSet<String>,
    errs: &mut Errors,
) -> Option<router::Route<String>> {
    let case_sensitive = r.match_.case_sensitive.unwrap_or(true);
    let path_match = match (r.match_.prefix, r.match_.path) {
        (Some(p), None) => router::PathMatch::Prefix(p),
        (None, Some(p)) => router::PathMatch::Path(p),
        (None, None) => {
            errs.add(
                format!("{path}.match"),
                "set one of prefix, path (other matchers are not supported)",
            );
            return None;
        }
        (Some(_), Some(_)) => {
            errs.add(
                format!("{path}.match"),
                "prefix and path are mutually exclusive",
            );
            return None;
        }
    };
    let action = match (r.route, r.direct_response) {
        (Some(a), None) => {
            if !clusters.contains(&a.cluster) {
                errs.add(
                    format!("{path}.route.cluster"),
                    format!("unknown cluster '{}'", a.cluster),
                );
            }
            router::Action::Forward(router::Forward {
                cluster: a.cluster,
                timeout: a
                    .timeout
                    .map(|ProtoDuration(d)| d)
                    .unwrap_or(DEFAULT_ROUTE_TIMEOUT),
                prefix_rewrite: a.prefix_rewrite,
                host_rewrite: a.host_rewrite_literal,
            })
        }
        (None, Some(d)) => {
            if !(200..=599).contains(&d.status) {
                errs.add(
                    format!("{path}.direct_response.status"),
                    format!("{} is not an HTTP status in [200, 600)", d.status),
                );
                return None;
            }
            let body = match &d.body {
                Some(b) => data_source(b, &format!("{path}.direct_response.body"), errs)?,
                None => String::new(),
            };
            if body.len() > MAX_DIRECT_RESPONSE_BODY {
                errs.add(
                    format!("{path}.direct_response.body"),
                    format!(
                        "body is {} bytes; the limit is {MAX_DIRECT_RESPONSE_BODY}",
                        body.len()
                    ),
                );
            }
            router::Action::DirectResponse {
                status: d.status as u16,
                body: body.into(),
            }
        }
        (None, None) => {
            errs.add(
                path.to_string(),
                "set one of route, direct_response (redirect is not supported)",
            );
            return None;
        }
        (Some(_), Some(_)) => {
            errs.add(
                path.to_string(),
                "route and direct_response are mutually exclusive",
            );
            return None;
        }
    };
    Some(router::Route {
        name: r.name,
        path_match,
        case_sensitive,
        action,
    })
}

fn cluster(mut c: proto::Cluster, path: &str, errs: &mut Errors) -> Option<ClusterConfig> {
    let protocol = upstream_protocol(&mut c, path, errs);
    let tls = c.transport_socket.take().and_then(|ts| {
        super::tls::upstream(ts, &format!("{path}.transport_socket"), protocol, errs)
    });
    let cluster_type = match c.type_.as_deref() {
        None | Some("STATIC") => ClusterType::Static,
        Some("STRICT_DNS") => ClusterType::StrictDns,
        Some(other) => {
            errs.unsupported(format!("{path}.type"), other);
            return None;
        }
    };
    let lb_policy = super::cluster::lb_policy(&c, path, errs);
    let circuit_breakers =
        super::cluster::circuit_breakers(c.circuit_breakers.as_ref(), path, errs);
    let dns_lookup_family = match c.dns_lookup_family.as_deref() {
        None | Some("AUTO") => DnsLookupFamily::Auto,
        Some("V4_ONLY") => DnsLookupFamily::V4Only,
        Some("V6_ONLY") => DnsLookupFamily::V6Only,
        Some("V4_PREFERRED") => DnsLookupFamily::V4Preferred,
        Some("ALL") => DnsLookupFamily::All,
        Some(other) => {
            errs.unsupported(format!("{path}.dns_lookup_family"), other);
            DnsLookupFamily::Auto
        }
    };
    let connect_timeout = c
        .connect_timeout
        .map(|d| d.0)
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    if connect_timeout.is_zero() {
        errs.add(format!("{path}.connect_timeout"), "must be greater than 0s");
    }
    let dns_refresh_rate = c
        .dns_refresh_rate
        .map(|d| d.0)
        .unwrap_or(DEFAULT_DNS_REFRESH_RATE);
    if dns_refresh_rate < Duration::from_millis(1) {
        errs.add(format!("{path}.dns_refresh_rate"), "must be at least 1ms");
    }
    let mut endpoints = Vec::new();
    if let Some(la) = c.load_assignment {
        for (li, locality) in la.endpoints.into_iter().enumerate() {
            for (ei, lb) in locality.lb_endpoints.into_iter().enumerate() {
                let epath = format!("{path}.load_assignment.endpoints[{li}].lb_endpoints[{ei}]");
                let apath = format!("{epath}.endpoint.address");
                let sa = &lb.endpoint.address.socket_address;
                protocol_tcp(sa, &apath, errs);
                let Some(port) = port(sa, &apath, errs) else {
                    continue;
                };
                if cluster_type == ClusterType::Static && sa.address.parse::<IpAddr>().is_err() {
                    errs.add(
                        format!("{apath}.socket_address.address"),
                        format!(
                            "'{}' is not an IP address; use type STRICT_DNS to resolve names",
                            sa.address
                        ),
                    );
                    continue;
                }
                let weight = lb.load_balancing_weight.unwrap_or(1);
                if weight == 0 {
                    errs.add(
                        format!("{epath}.load_balancing_weight"),
                        "must be at least 1",
                    );
                    continue;
                }
                endpoints.push(EndpointConfig {
                    host: sa.address.clone(),
                    port,
                    weight,
                });
            }
        }
    }
    Some(ClusterConfig {
        name: c.name,
        cluster_type,
        connect_timeout,
        dns_refresh_rate,
        dns_lookup_family,
        endpoints,
        protocol,
        tls,
        lb_policy,
        circuit_breakers,
    })
}
