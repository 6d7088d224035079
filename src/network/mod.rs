//! Network filters: what runs on a connection after the filter chain is chosen and before (or
//! instead of) the HTTP connection manager. Non-terminal filters decide about a new connection
//! ([`NetworkFilter`]); a terminal filter owns the connection's bytes (the HTTP connection
//! manager, or [`tcp_proxy`]).

pub mod connection_limit;
pub mod local_ratelimit;
pub mod rbac;
pub mod tcp_proxy;

use crate::bootstrap::load::deserialize_at;
use crate::bootstrap::validate::Errors;
use crate::bootstrap::TerminalConfig;
use crate::observe::Stats;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

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
    /// Hold the connection open, unread, for this long and then close it (Envoy's
    /// `connection_limit.delay` and `rbac.delay_deny`, which slow down clients that retry at
    /// once). The guard, if any, lives until the close.
    CloseAfter(Duration, Option<Box<dyn Send + Sync>>),
}

/// A non-terminal network filter (rbac, local_ratelimit, connection_limit). It decides once per
/// connection, without blocking.
pub trait NetworkFilter: Send + Sync {
    fn on_new_connection(&self, conn: &ConnectionInfo<'_>) -> Verdict;
}

/// A validated non-terminal network filter.
#[derive(Debug, Clone)]
pub enum NetworkFilterConfig {
    Rbac(Arc<rbac::RbacConfig>),
    LocalRateLimit(local_ratelimit::LocalRateLimitConfig),
    ConnectionLimit(connection_limit::ConnectionLimitConfig),
}

impl NetworkFilterConfig {
    /// The runtime filter, with its stats registered. Each build has its own state (token
    /// bucket, connection count), as each Envoy filter chain has.
    pub fn build(&self, stats: &Stats) -> Arc<dyn NetworkFilter> {
        match self {
            NetworkFilterConfig::Rbac(c) => Arc::new(rbac::Rbac::new(c.clone(), stats)),
            NetworkFilterConfig::LocalRateLimit(c) => {
                Arc::new(local_ratelimit::LocalRateLimit::new(c, stats))
            }
            NetworkFilterConfig::ConnectionLimit(c) => {
                Arc::new(connection_limit::ConnectionLimit::new(c, stats))
            }
        }
    }
}

/// Envoy's `statPrefixJoin`: `prefix.token`, without doubling a trailing dot of `prefix`.
pub(crate) fn stat_join(prefix: &str, token: &str) -> String {
    if prefix.is_empty() {
        token.to_string()
    } else if prefix.ends_with('.') {
        format!("{prefix}{token}")
    } else {
        format!("{prefix}.{token}")
    }
}

/// `config.core.v3.RuntimeFeatureFlag`. legate has no runtime layer, so no runtime key is ever
/// set and the flag is its `default_value`, as in an Envoy whose runtime lacks the key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RuntimeFeatureFlag {
    #[serde(default)]
    default_value: Option<bool>,
    #[serde(default)]
    runtime_key: String,
}

/// Whether a filter with this `runtime_enabled` is on (true when unset).
pub(crate) fn runtime_enabled(
    flag: Option<RuntimeFeatureFlag>,
    path: &str,
    errs: &mut Errors,
) -> bool {
    let Some(flag) = flag else {
        return true;
    };
    if flag.runtime_key.is_empty() {
        errs.add(format!("{path}.runtime_key"), "must not be empty");
    }
    match flag.default_value {
        Some(v) => v,
        None => {
            errs.add(format!("{path}.default_value"), "is required");
            true
        }
    }
}

/// A filter's `typed_config`, `@type` removed, deserialised at `path`; a missing one is an error
/// (`what` names the required fields).
pub(crate) fn typed_config<T: DeserializeOwned>(
    v: Option<Value>,
    path: &str,
    what: &str,
    errs: &mut Errors,
) -> Option<T> {
    let Some(mut v) = v else {
        errs.add(path.to_string(), format!("needs a typed_config ({what})"));
        return None;
    };
    if let Value::Object(m) = &mut v {
        m.remove("@type");
    }
    match deserialize_at(v, path) {
        Ok(t) => Some(t),
        Err(e) => {
            errs.0.push(e);
            None
        }
    }
}

/// `stat_prefix` is required (`min_len: 1`) by every network filter.
pub(crate) fn check_stat_prefix(prefix: &str, path: &str, errs: &mut Errors) {
    if prefix.is_empty() {
        errs.add(format!("{path}.stat_prefix"), "must not be empty");
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
pub const RBAC_NAME: &str = "envoy.filters.network.rbac";
pub const RBAC_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC";
pub const LOCAL_RATELIMIT_NAME: &str = "envoy.filters.network.local_ratelimit";
pub const LOCAL_RATELIMIT_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit";
pub const CONNECTION_LIMIT_NAME: &str = "envoy.filters.network.connection_limit";
pub const CONNECTION_LIMIT_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit";

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
    let tpath = format!("{path}.typed_config");
    match (type_url, name) {
        (Some(RBAC_TYPE), _) | (None, RBAC_NAME) => rbac::parse(typed_config, &tpath, errs)
            .map(|c| Parsed::Filter(NetworkFilterConfig::Rbac(Arc::new(c)))),
        (Some(LOCAL_RATELIMIT_TYPE), _) | (None, LOCAL_RATELIMIT_NAME) => {
            local_ratelimit::parse(typed_config, &tpath, errs)
                .map(|c| Parsed::Filter(NetworkFilterConfig::LocalRateLimit(c)))
        }
        (Some(CONNECTION_LIMIT_TYPE), _) | (None, CONNECTION_LIMIT_NAME) => {
            connection_limit::parse(typed_config, &tpath, errs)
                .map(|c| Parsed::Filter(NetworkFilterConfig::ConnectionLimit(c)))
        }
        (Some(TCP_PROXY_TYPE), _) | (None, TCP_PROXY_NAME) => {
            tcp_proxy::parse(typed_config, &tpath, clusters, errs)
                .map(|c| Parsed::Terminal(TerminalConfig::TcpProxy(Arc::new(c))))
        }
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
