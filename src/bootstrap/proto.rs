//! Envoy v3 API types, field for field, for the subset legate supports.
//!
//! Every struct denies unknown fields: a field legate does not implement is a startup error with
//! its path, never silently ignored. Enum-like fields stay strings here so that validation can
//! answer `unsupported value 'FOO'` instead of serde's generic message.

use super::duration::ProtoDuration;
use serde::Deserialize;
use serde_json::Value;

pub const HCM_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
pub const HCM_NAME: &str = "envoy.filters.network.http_connection_manager";
pub const ROUTER_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
pub const ROUTER_NAME: &str = "envoy.filters.http.router";
pub const STDOUT_LOG_TYPE: &str =
    "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog";
pub const STDERR_LOG_TYPE: &str =
    "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog";
pub const TLS_INSPECTOR_NAME: &str = "envoy.filters.listener.tls_inspector";
pub const TLS_INSPECTOR_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector";
pub const DOWNSTREAM_TLS_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";
pub const UPSTREAM_TLS_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";
pub const RAW_BUFFER_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer";
pub const UPSTREAM_HTTP_OPTIONS_NAME: &str =
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
pub const UPSTREAM_HTTP_OPTIONS_TYPE: &str =
    "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
pub const FILE_LOG_TYPE: &str =
    "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bootstrap {
    #[serde(default)]
    pub node: Option<Node>,
    #[serde(default)]
    pub admin: Option<Admin>,
    #[serde(default)]
    pub static_resources: StaticResources,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub cluster: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    pub address: Address,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticResources {
    #[serde(default)]
    pub listeners: Vec<Listener>,
    #[serde(default)]
    pub clusters: Vec<Cluster>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Address {
    pub socket_address: SocketAddress,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SocketAddress {
    #[serde(default)]
    pub protocol: Option<String>,
    pub address: String,
    #[serde(default)]
    pub port_value: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    #[serde(default)]
    pub name: String,
    pub address: Address,
    #[serde(default)]
    pub stat_prefix: Option<String>,
    #[serde(default)]
    pub filter_chains: Vec<FilterChain>,
    #[serde(default)]
    pub default_filter_chain: Option<FilterChain>,
    #[serde(default)]
    pub listener_filters: Vec<TypedExtension>,
    #[serde(default)]
    pub listener_filters_timeout: Option<ProtoDuration>,
    #[serde(default)]
    pub continue_on_listener_filters_timeout: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterChain {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub filter_chain_match: Option<FilterChainMatch>,
    #[serde(default)]
    pub filters: Vec<TypedExtension>,
    #[serde(default)]
    pub transport_socket: Option<TypedExtension>,
}

/// `config.listener.v3.FilterChainMatch`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterChainMatch {
    #[serde(default)]
    pub destination_port: Option<u32>,
    #[serde(default)]
    pub prefix_ranges: Vec<CidrRange>,
    #[serde(default)]
    pub server_names: Vec<String>,
    #[serde(default)]
    pub transport_protocol: Option<String>,
    #[serde(default)]
    pub application_protocols: Vec<String>,
    #[serde(default)]
    pub direct_source_prefix_ranges: Vec<CidrRange>,
    #[serde(default)]
    pub source_type: Option<String>,
    #[serde(default)]
    pub source_prefix_ranges: Vec<CidrRange>,
    #[serde(default)]
    pub source_ports: Vec<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CidrRange {
    pub address_prefix: String,
    #[serde(default)]
    pub prefix_len: Option<u32>,
}

/// `extensions.transport_sockets.tls.v3.DownstreamTlsContext`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownstreamTlsContext {
    #[serde(default)]
    pub common_tls_context: Option<CommonTlsContext>,
    #[serde(default)]
    pub require_client_certificate: Option<bool>,
}

/// `extensions.transport_sockets.tls.v3.UpstreamTlsContext`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsContext {
    #[serde(default)]
    pub common_tls_context: Option<CommonTlsContext>,
    #[serde(default)]
    pub sni: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommonTlsContext {
    #[serde(default)]
    pub tls_params: Option<TlsParameters>,
    #[serde(default)]
    pub tls_certificates: Vec<TlsCertificate>,
    #[serde(default)]
    pub validation_context: Option<CertificateValidationContext>,
    #[serde(default)]
    pub alpn_protocols: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsParameters {
    #[serde(default)]
    pub tls_minimum_protocol_version: Option<String>,
    #[serde(default)]
    pub tls_maximum_protocol_version: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsCertificate {
    pub certificate_chain: DataSource,
    pub private_key: DataSource,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateValidationContext {
    #[serde(default)]
    pub trusted_ca: Option<DataSource>,
    #[serde(default)]
    pub match_typed_subject_alt_names: Vec<SubjectAltNameMatcher>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectAltNameMatcher {
    pub san_type: String,
    pub matcher: StringMatcher,
}

/// `type.matcher.v3.StringMatcher` without `safe_regex`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StringMatcher {
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub suffix: Option<String>,
    #[serde(default)]
    pub contains: Option<String>,
    #[serde(default)]
    pub ignore_case: Option<bool>,
}

/// A filter or extension: `name` plus an optional `typed_config` whose `@type` picks the schema.
/// The legacy form (name only) is accepted for filters whose config may be empty.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TypedExtension {
    pub name: String,
    #[serde(default)]
    pub typed_config: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConnectionManager {
    pub stat_prefix: String,
    #[serde(default)]
    pub codec_type: Option<String>,
    #[serde(default)]
    pub route_config: Option<RouteConfiguration>,
    #[serde(default)]
    pub http_filters: Vec<TypedExtension>,
    #[serde(default)]
    pub access_log: Vec<TypedExtension>,
    #[serde(default)]
    pub use_remote_address: Option<bool>,
    #[serde(default)]
    pub skip_xff_append: Option<bool>,
    #[serde(default)]
    pub generate_request_id: Option<bool>,
    #[serde(default)]
    pub server_name: Option<String>,
    #[serde(default)]
    pub http2_protocol_options: Option<Http2ProtocolOptions>,
    #[serde(default)]
    pub common_http_protocol_options: Option<CommonHttpProtocolOptions>,
    #[serde(default)]
    pub max_request_headers_kb: Option<u32>,
    #[serde(default)]
    pub upgrade_configs: Vec<UpgradeConfig>,
    #[serde(default)]
    pub http_protocol_options: Option<Http1ProtocolOptions>,
    #[serde(default)]
    pub request_headers_timeout: Option<ProtoDuration>,
    #[serde(default)]
    pub stream_idle_timeout: Option<ProtoDuration>,
    #[serde(default)]
    pub request_timeout: Option<ProtoDuration>,
    /// legate's own: the longest request target accepted (414 beyond it). Envoy has no such
    /// field; its URL counts toward `max_request_headers_kb` only.
    #[serde(default)]
    pub max_request_uri_kb: Option<u32>,
}

/// `config.core.v3.Http2ProtocolOptions`, the fields legate implements.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http2ProtocolOptions {
    #[serde(default)]
    pub hpack_table_size: Option<u32>,
    #[serde(default)]
    pub max_concurrent_streams: Option<u32>,
    #[serde(default)]
    pub initial_stream_window_size: Option<u32>,
    #[serde(default)]
    pub initial_connection_window_size: Option<u32>,
    #[serde(default)]
    pub connection_keepalive: Option<KeepaliveSettings>,
    #[serde(default)]
    pub max_outbound_frames: Option<u32>,
    #[serde(default)]
    pub max_outbound_control_frames: Option<u32>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeepaliveSettings {
    #[serde(default)]
    pub interval: Option<ProtoDuration>,
    #[serde(default)]
    pub timeout: Option<ProtoDuration>,
}

/// `config.core.v3.Http1ProtocolOptions`, the fields legate implements.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http1ProtocolOptions {
    /// Accept `Content-Length` together with `Transfer-Encoding: chunked` (the length is
    /// dropped); otherwise such a request is a 400.
    #[serde(default)]
    pub allow_chunked_length: Option<bool>,
    /// Serve HTTP/1.0 requests; otherwise they get 426 (Envoy's default).
    #[serde(default)]
    pub accept_http_10: Option<bool>,
    /// The Host given to an HTTP/1.0 request that has none (with `accept_http_10`).
    #[serde(default)]
    pub default_host_for_http_10: Option<String>,
}

/// `config.core.v3.HttpProtocolOptions`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommonHttpProtocolOptions {
    #[serde(default)]
    pub max_headers_count: Option<u32>,
    #[serde(default)]
    pub idle_timeout: Option<ProtoDuration>,
    #[serde(default)]
    pub headers_with_underscores_action: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpgradeConfig {
    pub upgrade_type: String,
    #[serde(default)]
    pub enabled: Option<bool>,
}

/// `envoy.extensions.upstreams.http.v3.HttpProtocolOptions`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamHttpProtocolOptions {
    #[serde(default)]
    pub explicit_http_config: Option<ExplicitHttpConfig>,
    #[serde(default)]
    pub use_downstream_protocol_config: Option<UseDownstreamHttpConfig>,
    #[serde(default)]
    pub common_http_protocol_options: Option<CommonHttpProtocolOptions>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplicitHttpConfig {
    #[serde(default)]
    pub http_protocol_options: Option<Http1ProtocolOptions>,
    #[serde(default)]
    pub http2_protocol_options: Option<Http2ProtocolOptions>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UseDownstreamHttpConfig {
    #[serde(default)]
    pub http_protocol_options: Option<Http1ProtocolOptions>,
    #[serde(default)]
    pub http2_protocol_options: Option<Http2ProtocolOptions>,
}

/// `envoy.extensions.filters.http.router.v3.Router`: none of its options are supported yet, so
/// only the empty message is accepted.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Router {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfiguration {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub virtual_hosts: Vec<VirtualHost>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualHost {
    pub name: String,
    pub domains: Vec<String>,
    #[serde(default)]
    pub routes: Vec<Route>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    #[serde(default)]
    pub name: String,
    #[serde(rename = "match")]
    pub match_: RouteMatch,
    #[serde(default)]
    pub route: Option<RouteAction>,
    #[serde(default)]
    pub direct_response: Option<DirectResponseAction>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub case_sensitive: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteAction {
    pub cluster: String,
    #[serde(default)]
    pub timeout: Option<ProtoDuration>,
    #[serde(default)]
    pub prefix_rewrite: Option<String>,
    #[serde(default)]
    pub host_rewrite_literal: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectResponseAction {
    pub status: u32,
    #[serde(default)]
    pub body: Option<DataSource>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSource {
    #[serde(default)]
    pub inline_string: Option<String>,
    #[serde(default)]
    pub filename: Option<String>,
}

/// `StdoutAccessLog` / `StderrAccessLog`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamAccessLog {
    #[serde(default)]
    pub log_format: Option<SubstitutionFormatString>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAccessLog {
    pub path: String,
    #[serde(default)]
    pub log_format: Option<SubstitutionFormatString>,
    /// Deprecated in Envoy but still common in configs found in the wild.
    #[serde(default)]
    pub format: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubstitutionFormatString {
    #[serde(default)]
    pub text_format: Option<String>,
    #[serde(default)]
    pub text_format_source: Option<DataSource>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    pub name: String,
    #[serde(default, rename = "type")]
    pub type_: Option<String>,
    #[serde(default)]
    pub connect_timeout: Option<ProtoDuration>,
    #[serde(default)]
    pub lb_policy: Option<String>,
    #[serde(default)]
    pub least_request_lb_config: Option<LeastRequestLbConfig>,
    #[serde(default)]
    pub circuit_breakers: Option<CircuitBreakers>,
    #[serde(default)]
    pub load_assignment: Option<ClusterLoadAssignment>,
    #[serde(default)]
    pub dns_refresh_rate: Option<ProtoDuration>,
    #[serde(default)]
    pub dns_lookup_family: Option<String>,
    /// Deprecated in Envoy (use `typed_extension_protocol_options`), still common.
    #[serde(default)]
    pub http2_protocol_options: Option<Http2ProtocolOptions>,
    #[serde(default)]
    pub typed_extension_protocol_options: std::collections::BTreeMap<String, Value>,
    #[serde(default)]
    pub transport_socket: Option<TypedExtension>,
}

/// `Cluster.LeastRequestLbConfig`; `active_request_bias` and `slow_start_config` are rejected.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeastRequestLbConfig {
    #[serde(default)]
    pub choice_count: Option<u32>,
}

/// `config.cluster.v3.CircuitBreakers`; `per_host_thresholds` is rejected.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakers {
    #[serde(default)]
    pub thresholds: Vec<CircuitBreakerThresholds>,
}

/// `CircuitBreakers.Thresholds`; `retry_budget` and `max_connection_pools` are rejected.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerThresholds {
    #[serde(default)]
    pub priority: Option<String>,
    #[serde(default)]
    pub max_connections: Option<u32>,
    #[serde(default)]
    pub max_pending_requests: Option<u32>,
    #[serde(default)]
    pub max_requests: Option<u32>,
    #[serde(default)]
    pub max_retries: Option<u32>,
    #[serde(default)]
    pub track_remaining: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterLoadAssignment {
    #[serde(default)]
    pub cluster_name: String,
    #[serde(default)]
    pub endpoints: Vec<LocalityLbEndpoints>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalityLbEndpoints {
    #[serde(default)]
    pub lb_endpoints: Vec<LbEndpoint>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LbEndpoint {
    pub endpoint: Endpoint,
    #[serde(default)]
    pub load_balancing_weight: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub address: Address,
    #[serde(default)]
    pub hostname: Option<String>,
}
