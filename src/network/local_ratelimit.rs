//! `envoy.filters.network.local_ratelimit`: a token bucket on new connections. Each connection
//! takes one token; with none left it is closed before any other filter sees it, and counted in
//! `local_rate_limit.<stat_prefix>.rate_limited`.
//!
//! The bucket is Envoy's current one (`AtomicTokenBucket`, the only one since the timer-based
//! bucket was removed): it starts full with `max_tokens`, refills continuously at
//! `tokens_per_fill` per `fill_interval`, computed from the elapsed time on each take, and is one
//! atomic word: no lock, no timer task. One bucket per filter chain, shared by all workers.

use super::{check_stat_prefix, runtime_enabled, stat_join, typed_config, RuntimeFeatureFlag};
use super::{ConnectionInfo, NetworkFilter, Verdict};
use crate::bootstrap::duration::ProtoDuration;
use crate::bootstrap::validate::Errors;
use crate::observe::Stats;
use metrics::Counter;
use serde::Deserialize;
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LocalRateLimitProto {
    #[serde(default)]
    stat_prefix: String,
    #[serde(default)]
    token_bucket: Option<TokenBucketProto>,
    #[serde(default)]
    runtime_enabled: Option<RuntimeFeatureFlag>,
    #[serde(default)]
    share_key: String,
}

/// `type.v3.TokenBucket`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBucketProto {
    #[serde(default)]
    max_tokens: u32,
    #[serde(default)]
    tokens_per_fill: Option<u32>,
    #[serde(default)]
    fill_interval: Option<ProtoDuration>,
}

/// Validated `LocalRateLimit`.
#[derive(Debug, Clone)]
pub struct LocalRateLimitConfig {
    pub stat_prefix: String,
    pub max_tokens: u32,
    /// Envoy's default is 1.
    pub tokens_per_fill: u32,
    pub fill_interval: Duration,
    /// `runtime_enabled.default_value`; true when unset.
    pub enabled: bool,
}

/// Envoy rejects refills more frequent than this.
const MIN_FILL_INTERVAL: Duration = Duration::from_millis(50);

pub(crate) fn parse(
    v: Option<Value>,
    path: &str,
    errs: &mut Errors,
) -> Option<LocalRateLimitConfig> {
    let p: LocalRateLimitProto =
        typed_config(v, path, "stat_prefix and token_bucket are required", errs)?;
    check_stat_prefix(&p.stat_prefix, path, errs);
    if !p.share_key.is_empty() {
        errs.add(
            format!("{path}.share_key"),
            "sharing a token bucket between filters is not supported by legate",
        );
    }
    let enabled = runtime_enabled(p.runtime_enabled, &format!("{path}.runtime_enabled"), errs);
    let bpath = format!("{path}.token_bucket");
    let Some(b) = p.token_bucket else {
        errs.add(bpath, "is required");
        return None;
    };
    if b.max_tokens == 0 {
        errs.add(format!("{bpath}.max_tokens"), "must be greater than 0");
    }
    let tokens_per_fill = b.tokens_per_fill.unwrap_or(1);
    if tokens_per_fill == 0 {
        errs.add(format!("{bpath}.tokens_per_fill"), "must be greater than 0");
    }
    let fill_interval = match b.fill_interval {
        None => {
            errs.add(format!("{bpath}.fill_interval"), "is required");
            None
        }
        Some(ProtoDuration(d)) if d < MIN_FILL_INTERVAL => {
            errs.add(
                format!("{bpath}.fill_interval"),
                "local rate limit token bucket fill timer must be >= 50ms",
            );
            None
        }
        Some(ProtoDuration(d)) => Some(d),
    };
    Some(LocalRateLimitConfig {
        stat_prefix: p.stat_prefix,
        max_tokens: b.max_tokens,
        tokens_per_fill,
        fill_interval: fill_interval?,
        enabled,
    })
}

/// A token bucket in one atomic word: the instant (seconds since `start`, as `f64` bits) at
/// which the bucket was last empty. The tokens at `now` are `(now - empty_at) * rate`, capped at
/// `max`; taking one moves `empty_at` forward by `1 / rate`.
pub struct TokenBucket {
    start: Instant,
    max: f64,
    /// Tokens per second.
    rate: f64,
    empty_at: AtomicU64,
}

impl TokenBucket {
    pub fn new(max_tokens: u32, tokens_per_fill: u32, fill_interval: Duration) -> Self {
        let max = f64::from(max_tokens);
        let rate = f64::from(tokens_per_fill) / fill_interval.as_secs_f64();
        TokenBucket {
            start: Instant::now(),
            max,
            rate,
            // Full at the start.
            empty_at: AtomicU64::new((-max / rate).to_bits()),
        }
    }

    /// Take a token if there is one.
    pub fn try_take(&self) -> bool {
        self.try_take_at(self.start.elapsed().as_secs_f64())
    }

    /// As [`try_take`](Self::try_take) at `now` seconds after the bucket was made.
    fn try_take_at(&self, now: f64) -> bool {
        // Relaxed: the word is the whole state; nothing else is ordered against it.
        let mut cur = self.empty_at.load(Ordering::Relaxed);
        loop {
            let empty_at = f64::from_bits(cur);
            let tokens = ((now - empty_at) * self.rate).min(self.max);
            if tokens < 1.0 {
                return false;
            }
            let next = now - (tokens - 1.0) / self.rate;
            match self.empty_at.compare_exchange_weak(
                cur,
                next.to_bits(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }
}

pub struct LocalRateLimit {
    enabled: bool,
    bucket: TokenBucket,
    /// `local_rate_limit.<stat_prefix>.rate_limited`.
    rate_limited: Counter,
}

impl LocalRateLimit {
    pub fn new(cfg: &LocalRateLimitConfig, stats: &Stats) -> Self {
        // Envoy's code roots these at `local_rate_limit.` (its docs say `local_ratelimit.`; the
        // code and Envoy's own tests say otherwise, and dashboards see what the code emits).
        let prefix = format!("local_rate_limit.{}", cfg.stat_prefix);
        LocalRateLimit {
            enabled: cfg.enabled,
            bucket: TokenBucket::new(cfg.max_tokens, cfg.tokens_per_fill, cfg.fill_interval),
            rate_limited: stats.counter(stat_join(&prefix, "rate_limited")),
        }
    }
}

impl NetworkFilter for LocalRateLimit {
    fn on_new_connection(&self, conn: &ConnectionInfo<'_>) -> Verdict {
        if !self.enabled || self.bucket.try_take() {
            return Verdict::Continue;
        }
        self.rate_limited.increment(1);
        tracing::debug!(peer = %conn.remote, "local_ratelimit: closing connection over the limit");
        Verdict::Close
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_full_then_refills_continuously() {
        let b = TokenBucket::new(2, 1, Duration::from_secs(60));
        assert!(b.try_take_at(0.0));
        assert!(b.try_take_at(0.1));
        assert!(!b.try_take_at(0.2));
        // Half a fill interval later: half a token, not enough.
        assert!(!b.try_take_at(30.0));
        // A whole interval after the second take: one token back.
        assert!(b.try_take_at(60.2));
        assert!(!b.try_take_at(60.3));
    }

    #[test]
    fn never_holds_more_than_max() {
        let b = TokenBucket::new(3, 2, Duration::from_secs(1));
        // An hour idle still leaves only max_tokens.
        for i in 0..3 {
            assert!(b.try_take_at(3600.0), "take {i}");
        }
        assert!(!b.try_take_at(3600.0));
        // tokens_per_fill 2 per second: two more after one second.
        assert!(b.try_take_at(3601.0));
        assert!(b.try_take_at(3601.0));
        assert!(!b.try_take_at(3601.0));
    }

    #[test]
    fn concurrent_takes_never_exceed_the_bucket() {
        let b = std::sync::Arc::new(TokenBucket::new(1000, 1, Duration::from_secs(3600)));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || (0..1000).filter(|_| b.try_take()).count())
            })
            .collect();
        let taken: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(taken, 1000);
    }
}
