//! `envoy.filters.network.connection_limit`: at most `max_connections` connections at once
//! through this filter chain. A connection over the limit is counted in
//! `connection_limit.<stat_prefix>.limited_connections` and closed (after `delay`, if set); an
//! admitted one holds its slot until it closes. `connection_limit.<stat_prefix>.active_connections`
//! is the number of connections the filter currently holds, rejected ones waiting out their
//! `delay` included (they also count against the limit while they wait, as in Envoy).

use super::{check_stat_prefix, runtime_enabled, stat_join, typed_config, RuntimeFeatureFlag};
use super::{ConnectionInfo, NetworkFilter, Verdict};
use crate::bootstrap::duration::ProtoDuration;
use crate::bootstrap::validate::Errors;
use crate::observe::Stats;
use metrics::{Counter, Gauge};
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnectionLimitProto {
    #[serde(default)]
    stat_prefix: String,
    #[serde(default, deserialize_with = "uint64_value")]
    max_connections: Option<u64>,
    #[serde(default)]
    delay: Option<ProtoDuration>,
    #[serde(default)]
    runtime_enabled: Option<RuntimeFeatureFlag>,
}

/// `google.protobuf.UInt64Value` in JSON: a number, or a decimal string as proto3 JSON writes
/// 64-bit integers.
fn uint64_value<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum U64 {
        N(u64),
        S(String),
    }
    match Option::<U64>::deserialize(d)? {
        None => Ok(None),
        Some(U64::N(n)) => Ok(Some(n)),
        Some(U64::S(s)) => s
            .parse()
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("'{s}' is not an unsigned integer"))),
    }
}

/// Validated `ConnectionLimit`.
#[derive(Debug, Clone)]
pub struct ConnectionLimitConfig {
    pub stat_prefix: String,
    pub max_connections: u64,
    /// How long a rejected connection is held before it is closed; `None` closes at once.
    pub delay: Option<Duration>,
    /// `runtime_enabled.default_value`; true when unset.
    pub enabled: bool,
}

pub(crate) fn parse(
    v: Option<Value>,
    path: &str,
    errs: &mut Errors,
) -> Option<ConnectionLimitConfig> {
    let p: ConnectionLimitProto = typed_config(
        v,
        path,
        "stat_prefix and max_connections are required",
        errs,
    )?;
    check_stat_prefix(&p.stat_prefix, path, errs);
    let enabled = runtime_enabled(p.runtime_enabled, &format!("{path}.runtime_enabled"), errs);
    let max_connections = match p.max_connections {
        None => {
            errs.add(format!("{path}.max_connections"), "is required");
            None
        }
        Some(0) => {
            errs.add(format!("{path}.max_connections"), "must be at least 1");
            None
        }
        Some(n) => Some(n),
    };
    Some(ConnectionLimitConfig {
        stat_prefix: p.stat_prefix,
        max_connections: max_connections?,
        delay: p.delay.map(|d| d.0).filter(|d| !d.is_zero()),
        enabled,
    })
}

pub struct ConnectionLimit {
    enabled: bool,
    max: u64,
    delay: Option<Duration>,
    count: Arc<AtomicU64>,
    limited_connections: Counter,
    active_connections: Gauge,
}

/// A connection's place in the count; dropping it (when the connection ends) frees it.
struct Slot {
    count: Arc<AtomicU64>,
    active: Gauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
        self.active.decrement(1.0);
    }
}

impl ConnectionLimit {
    pub fn new(cfg: &ConnectionLimitConfig, stats: &Stats) -> Self {
        let prefix = format!("connection_limit.{}", cfg.stat_prefix);
        ConnectionLimit {
            enabled: cfg.enabled,
            max: cfg.max_connections,
            delay: cfg.delay,
            count: Arc::new(AtomicU64::new(0)),
            limited_connections: stats.counter(stat_join(&prefix, "limited_connections")),
            active_connections: stats.gauge(stat_join(&prefix, "active_connections")),
        }
    }

    /// Take a slot if fewer than `max` are taken.
    fn try_acquire(&self) -> bool {
        // AcqRel pairs with the release in `Slot::drop`, so a freed slot is seen by the next
        // connection.
        self.count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok()
    }
}

impl NetworkFilter for ConnectionLimit {
    fn on_new_connection(&self, conn: &ConnectionInfo<'_>) -> Verdict {
        if !self.enabled {
            return Verdict::Continue;
        }
        self.active_connections.increment(1.0);
        if self.try_acquire() {
            return Verdict::ContinueWith(Box::new(Slot {
                count: self.count.clone(),
                active: self.active_connections.clone(),
            }));
        }
        self.limited_connections.increment(1);
        tracing::debug!(peer = %conn.remote, "connection_limit: closing connection over the limit");
        // Envoy counts a rejected connection until it is closed, in the gauge and the limit.
        self.count.fetch_add(1, Ordering::AcqRel);
        let slot = Slot {
            count: self.count.clone(),
            active: self.active_connections.clone(),
        };
        match self.delay {
            Some(d) => Verdict::CloseAfter(d, Some(Box::new(slot))),
            None => Verdict::Close,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> ConnectionInfo<'static> {
        ConnectionInfo {
            remote: "127.0.0.1:5000".parse().unwrap(),
            local: "127.0.0.1:80".parse().unwrap(),
            server_name: None,
        }
    }

    #[test]
    fn slots_are_released_when_guards_drop() {
        let stats = Stats::new();
        let f = ConnectionLimit::new(
            &ConnectionLimitConfig {
                stat_prefix: "cl".into(),
                max_connections: 2,
                delay: None,
                enabled: true,
            },
            &stats,
        );
        let a = f.on_new_connection(&info());
        let b = f.on_new_connection(&info());
        assert!(matches!(a, Verdict::ContinueWith(_)));
        assert!(matches!(b, Verdict::ContinueWith(_)));
        assert!(matches!(f.on_new_connection(&info()), Verdict::Close));
        assert_eq!(
            stats.value("connection_limit.cl.limited_connections"),
            Some(1)
        );
        assert_eq!(
            stats.value("connection_limit.cl.active_connections"),
            Some(2)
        );
        drop(a);
        assert_eq!(
            stats.value("connection_limit.cl.active_connections"),
            Some(1)
        );
        assert!(matches!(
            f.on_new_connection(&info()),
            Verdict::ContinueWith(_)
        ));
        drop(b);
    }

    #[test]
    fn delayed_rejections_hold_their_place_until_closed() {
        let stats = Stats::new();
        let f = ConnectionLimit::new(
            &ConnectionLimitConfig {
                stat_prefix: "cl.".into(),
                max_connections: 1,
                delay: Some(Duration::from_secs(1)),
                enabled: true,
            },
            &stats,
        );
        let a = f.on_new_connection(&info());
        let Verdict::CloseAfter(d, Some(held)) = f.on_new_connection(&info()) else {
            panic!("expected a delayed close");
        };
        assert_eq!(d, Duration::from_secs(1));
        assert_eq!(
            stats.value("connection_limit.cl.active_connections"),
            Some(2)
        );
        drop(a);
        // The rejected connection still counts until it is closed.
        assert!(matches!(
            f.on_new_connection(&info()),
            Verdict::CloseAfter(..)
        ));
        drop(held);
        assert!(matches!(
            f.on_new_connection(&info()),
            Verdict::ContinueWith(_)
        ));
    }
}
