//! A cluster's load-balancing policy and circuit-breaker thresholds: proto → runtime types.

use super::proto;
use super::validate::Errors;

/// `Cluster.lb_policy`, with its settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbPolicy {
    /// Smooth weighted round robin.
    RoundRobin,
    /// `choice_count` random hosts (Envoy's default 2: power of two choices), the one with the
    /// fewest active requests relative to its weight wins.
    LeastRequest { choice_count: u32 },
    /// A uniformly random host; weights are ignored, as in Envoy.
    Random,
}

/// Envoy's `least_request_lb_config.choice_count` default.
pub const DEFAULT_CHOICE_COUNT: u32 = 2;

/// `circuit_breakers.thresholds` for priority DEFAULT, with Envoy's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitBreakerThresholds {
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
    pub max_retries: u32,
    /// Publish `circuit_breakers.default.remaining_*` gauges.
    pub track_remaining: bool,
}

impl Default for CircuitBreakerThresholds {
    fn default() -> Self {
        CircuitBreakerThresholds {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
            track_remaining: false,
        }
    }
}

pub(super) fn lb_policy(c: &proto::Cluster, path: &str, errs: &mut Errors) -> LbPolicy {
    let policy = match c.lb_policy.as_deref() {
        None | Some("ROUND_ROBIN") => LbPolicy::RoundRobin,
        Some("LEAST_REQUEST") => LbPolicy::LeastRequest {
            choice_count: DEFAULT_CHOICE_COUNT,
        },
        Some("RANDOM") => LbPolicy::Random,
        Some(other) => {
            errs.unsupported(format!("{path}.lb_policy"), other);
            LbPolicy::RoundRobin
        }
    };
    let Some(lr) = &c.least_request_lb_config else {
        return policy;
    };
    let lr_path = format!("{path}.least_request_lb_config");
    match policy {
        LbPolicy::LeastRequest { .. } => {
            let choice_count = lr.choice_count.unwrap_or(DEFAULT_CHOICE_COUNT);
            if choice_count < 2 {
                errs.add(format!("{lr_path}.choice_count"), "must be at least 2");
            }
            LbPolicy::LeastRequest { choice_count }
        }
        _ => {
            errs.add(lr_path, "applies only to lb_policy LEAST_REQUEST");
            policy
        }
    }
}

pub(super) fn circuit_breakers(
    cb: Option<&proto::CircuitBreakers>,
    path: &str,
    errs: &mut Errors,
) -> CircuitBreakerThresholds {
    let mut out: Option<CircuitBreakerThresholds> = None;
    let thresholds = cb.map_or(&[][..], |cb| &cb.thresholds);
    for (i, t) in thresholds.iter().enumerate() {
        let tpath = format!("{path}.circuit_breakers.thresholds[{i}]");
        match t.priority.as_deref() {
            None | Some("DEFAULT") => {}
            // Routes cannot ask for priority HIGH in legate, so its thresholds would never apply.
            Some("HIGH") => {
                errs.add(
                    format!("{tpath}.priority"),
                    "unsupported value 'HIGH' (only DEFAULT: routes have no priority)",
                );
                continue;
            }
            Some(other) => {
                errs.unsupported(format!("{tpath}.priority"), other);
                continue;
            }
        }
        if out.is_some() {
            // Envoy would use the first and ignore this one; legate ignores nothing silently.
            errs.add(tpath, "a second thresholds entry for priority DEFAULT");
            continue;
        }
        let d = CircuitBreakerThresholds::default();
        out = Some(CircuitBreakerThresholds {
            max_connections: t.max_connections.unwrap_or(d.max_connections),
            max_pending_requests: t.max_pending_requests.unwrap_or(d.max_pending_requests),
            max_requests: t.max_requests.unwrap_or(d.max_requests),
            max_retries: t.max_retries.unwrap_or(d.max_retries),
            track_remaining: t.track_remaining.unwrap_or(d.track_remaining),
        });
    }
    out.unwrap_or_default()
}
