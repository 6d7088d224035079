//! Network filters: what runs on a connection after the filter chain is chosen and before (or
//! instead of) the HTTP connection manager. Non-terminal filters decide about a new connection
//! ([`NetworkFilter`]); a terminal filter owns the connection's bytes (the HTTP connection
//! manager, or [`tcp_proxy`]).

pub mod tcp_proxy;

use crate::bootstrap::validate::Errors;
use crate::bootstrap::TerminalConfig;
use crate::observe::Stats;
use serde_json::Value;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

/// What a network filter knows about a new connection.
#[derive(Debug, Clone)]
pub struct ConnectionInfo<'a> {
    pub remote: SocketAddr,
    pub local: SocketAddr,
    /// The SNI the client asked for (from the TLS inspector), if any.
    pub server_name: Option<&'a str>,
}

/// A filter's answer for a new connection.
pub enum Verdict {
    Continue,
    /// Continue, and keep this guard for as long as the connection lives (e.g. a connection
    /// limit's slot, released when the guard drops).
    ContinueWith(Box<dyn Send + Sync>),
    Close,
}

/// A non-terminal network filter (rbac, local_ratelimit, connection_limit). It decides once per
/// connection, without blocking.
pub trait NetworkFilter: Send + Sync {
    fn on_new_connection(&self, conn: &ConnectionInfo<'_>) -> Verdict;
}

/// A validated non-terminal network filter.
#[derive(Debug, Clone)]
pub enum NetworkFilterConfig {}

impl NetworkFilterConfig {
    /// The runtime filter; `stat_prefix` is the filter's own stats scope.
    pub fn build(&self, _stats: &Stats) -> Arc<dyn NetworkFilter> {
        match *self {}
    }
}

/// A parsed network filter: one that decides about connections, or one that ends the chain.
pub enum Parsed {
    Filter(NetworkFilterConfig),
    Terminal(TerminalConfig),
}

pub const TCP_PROXY_NAME: &str = "envoy.filters.network.tcp_proxy";
pub const TCP_PROXY_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";

/// Parse a network filter other than the HTTP connection manager, by `@type` (or by name for
/// the legacy form). Unknown filters are errors.
pub(crate) fn parse_filter(
    name: &str,
    type_url: Option<&str>,
    typed_config: Option<Value>,
    path: &str,
    clusters: &HashSet<String>,
    errs: &mut Errors,
) -> Option<Parsed> {
    match (type_url, name) {
        (Some(TCP_PROXY_TYPE), _) | (None, TCP_PROXY_NAME) => tcp_proxy::parse(
            typed_config,
            &format!("{path}.typed_config"),
            clusters,
            errs,
        )
        .map(|c| Parsed::Terminal(TerminalConfig::TcpProxy(Arc::new(c)))),
        (Some(other), _) => {
            errs.add(
                format!("{path}.typed_config.@type"),
                format!("unsupported network filter type '{other}'"),
            );
            None
        }
        (None, other) => {
            errs.add(
                format!("{path}.name"),
                format!("unsupported network filter '{other}'"),
            );
            None
        }
    }
}
