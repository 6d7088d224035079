//! Envoy v3 bootstrap: the subset legate understands.
//!
//! Loading is three steps, each with its own module:
//! - [`load`] reads YAML/JSON with the `config` crate and merges `--config-yaml` over the file the
//!   way Envoy's proto `MergeFrom` does;
//! - [`proto`] mirrors Envoy's proto field names one to one, so an unknown field is a
//!   deserialisation error with its path;
//! - [`validate`] turns the proto types into runtime types once, collecting every semantic error
//!   with its field path, so the hot path never sees an `Option` that validation could settle.

mod cluster;
pub mod duration;
mod listener;
pub mod load;
pub mod proto;
mod tls;
pub mod validate;

pub use load::{load, ConfigSource};
pub use validate::{
    AccessLogConfig, AccessLogSink, CircuitBreakerThresholds, ClusterConfig, ClusterType,
    CodecType, Config, DnsLookupFamily, DownstreamLimits, EndpointConfig, FilterChainConfig,
    HcmConfig, Http2Settings, LbPolicy, ListenerConfig, TerminalConfig, UnderscoreAction,
    UpstreamProtocol,
};

use std::fmt;

/// One problem found in a configuration, with the field path Envoy users know
/// (`static_resources.clusters[1].lb_policy`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Why a configuration could not be used. Every variant names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read '{path}': {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot parse {what}: {message}")]
    Parse { what: String, message: String },
    #[error("{}", join_errors(.0))]
    Invalid(Vec<FieldError>),
}

impl ConfigError {
    /// Every problem, one per line; parse failures have exactly one.
    pub fn lines(&self) -> Vec<String> {
        match self {
            ConfigError::Invalid(errors) => errors.iter().map(|e| e.to_string()).collect(),
            other => vec![other.to_string()],
        }
    }
}

fn join_errors(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}
