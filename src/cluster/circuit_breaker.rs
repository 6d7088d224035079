//! Circuit breakers (Envoy's `circuit_breakers.thresholds`, priority DEFAULT): per-cluster limits
//! on upstream connections, requests waiting for a new connection, active requests and retries.
//!
//! Each limit is an atomic counter; a request or connection holds a [`Slot`] and gives it back
//! when the slot is dropped, however it ends. Acquiring is one compare-and-swap (a retry loop
//! only under contention) plus a reference-count increment: no lock, no allocation. Over the
//! limit, acquiring fails at once and counts the overflow; legate never queues.
//!
//! What each limit counts in legate:
//! - `max_connections`: open upstream connections of the cluster, dialing ones included (idle
//!   HTTP/1.1 connections count too). A request that needs a new connection when the cluster is
//!   at the limit fails (`upstream_cx_overflow`); Envoy would queue it instead, and would always
//!   let a host with no connection open one.
//! - `max_pending_requests`: requests waiting for a new connection (no idle HTTP/1.1 connection,
//!   no HTTP/2 connection with a free stream), from the moment they start to dial or wait for
//!   another request's HTTP/2 dial, until they have a connection (`upstream_rq_pending_overflow`).
//! - `max_requests`: active upstream requests, from the host pick until the response ends
//!   (`upstream_rq_pending_overflow`, Envoy's counter for this breaker too).
//! - `max_retries`: requests being retried at once (an HTTP/2 stream the upstream refused) for
//!   the duration of the retry (`upstream_rq_retry_overflow`; the original failure is answered).

use crate::bootstrap::CircuitBreakerThresholds;
use crate::observe::Stats;
use metrics::{Counter, Gauge};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The four limits of one cluster and their `cluster.<name>.circuit_breakers.default.*` gauges.
pub struct CircuitBreakers {
    pub thresholds: CircuitBreakerThresholds,
    connections: Arc<Resource>,
    pending_requests: Arc<Resource>,
    requests: Arc<Resource>,
    retries: Arc<Resource>,
}

impl CircuitBreakers {
    pub fn new(thresholds: CircuitBreakerThresholds, stats: &Stats, cluster: &str) -> Self {
        let p = format!("cluster.{cluster}.");
        let cb = format!("{p}circuit_breakers.default.");
        let track = thresholds.track_remaining;
        let resource = |max: u32, open: &str, remaining: &str, overflow: &str| {
            let remaining = track.then(|| stats.gauge(format!("{cb}{remaining}")));
            if let Some(g) = &remaining {
                g.set(f64::from(max));
            }
            let open = stats.gauge(format!("{cb}{open}"));
            // A limit of 0 admits nothing: open from the start.
            open.set(if max == 0 { 1.0 } else { 0.0 });
            Arc::new(Resource {
                count: AtomicU64::new(0),
                max: u64::from(max),
                open,
                remaining,
                overflow: stats.counter(format!("{p}{overflow}")),
            })
        };
        let t = &thresholds;
        CircuitBreakers {
            connections: resource(
                t.max_connections,
                "cx_open",
                "remaining_cx",
                "upstream_cx_overflow",
            ),
            pending_requests: resource(
                t.max_pending_requests,
                "rq_pending_open",
                "remaining_pending",
                "upstream_rq_pending_overflow",
            ),
            requests: resource(
                t.max_requests,
                "rq_open",
                "remaining_rq",
                "upstream_rq_pending_overflow",
            ),
            retries: resource(
                t.max_retries,
                "rq_retry_open",
                "remaining_retries",
                "upstream_rq_retry_overflow",
            ),
            thresholds,
        }
    }

    /// A slot for one upstream connection, held for the connection's life.
    pub fn connection(&self) -> Option<Slot> {
        Resource::try_acquire(&self.connections)
    }

    /// A slot for a request that waits for a new connection, held until it has one.
    pub fn pending_request(&self) -> Option<Slot> {
        Resource::try_acquire(&self.pending_requests)
    }

    /// A slot for one active upstream request, held until its response ends.
    pub fn request(&self) -> Option<Slot> {
        Resource::try_acquire(&self.requests)
    }

    /// Admit a retry: true if `held` already holds a retry slot or one was free (it is then
    /// stored in `held`, so a request retried several times holds one slot).
    pub fn retry(&self, held: &mut Option<Slot>) -> bool {
        if held.is_none() {
            *held = Resource::try_acquire(&self.retries);
        }
        held.is_some()
    }
}

struct Resource {
    count: AtomicU64,
    max: u64,
    /// 1 while the breaker is at its limit (Envoy's `*_open`). Written only when the count
    /// crosses the limit, so the common path writes no gauge; like Envoy's, it is best effort
    /// when acquires and releases race at the limit.
    open: Gauge,
    remaining: Option<Gauge>,
    overflow: Counter,
}

impl Resource {
    fn try_acquire(this: &Arc<Resource>) -> Option<Slot> {
        let mut cur = this.count.load(Ordering::Relaxed);
        loop {
            if cur >= this.max {
                this.overflow.increment(1);
                return None;
            }
            // Relaxed: the counter guards no other memory; it only bounds concurrency.
            match this.count.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        let now = cur + 1;
        if now == this.max {
            this.refresh_open();
        }
        if let Some(g) = &this.remaining {
            g.set((this.max - now) as f64);
        }
        Some(Slot {
            resource: this.clone(),
        })
    }

    fn release(&self) {
        let before = self.count.fetch_sub(1, Ordering::Relaxed);
        if before == self.max {
            self.refresh_open();
        }
        if let Some(g) = &self.remaining {
            g.set(self.max.saturating_sub(before - 1) as f64);
        }
    }

    /// Re-read the count rather than trust the caller's view, so that of two racing crossings
    /// the later write is the truer one.
    fn refresh_open(&self) {
        let at_limit = self.count.load(Ordering::Relaxed) >= self.max;
        self.open.set(if at_limit { 1.0 } else { 0.0 });
    }

    #[cfg(test)]
    fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// One unit of a circuit-breaker limit, given back when dropped.
pub struct Slot {
    resource: Arc<Resource>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.resource.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breakers(max_requests: u32, track_remaining: bool) -> (CircuitBreakers, Stats) {
        let stats = Stats::new();
        let t = CircuitBreakerThresholds {
            max_requests,
            track_remaining,
            ..Default::default()
        };
        (CircuitBreakers::new(t, &stats, "c"), stats)
    }

    #[test]
    fn acquire_up_to_the_limit_then_overflow_then_release() {
        let (cb, stats) = breakers(2, true);
        let v = |n: &str| stats.value(n).unwrap_or(-1);
        let a = cb.request().unwrap();
        assert_eq!(v("cluster.c.circuit_breakers.default.rq_open"), 0);
        let b = cb.request().unwrap();
        assert_eq!(v("cluster.c.circuit_breakers.default.rq_open"), 1);
        assert_eq!(v("cluster.c.circuit_breakers.default.remaining_rq"), 0);
        assert!(cb.request().is_none());
        assert_eq!(v("cluster.c.upstream_rq_pending_overflow"), 1);
        drop(a);
        assert_eq!(v("cluster.c.circuit_breakers.default.rq_open"), 0);
        assert_eq!(v("cluster.c.circuit_breakers.default.remaining_rq"), 1);
        let _c = cb.request().unwrap();
        drop(b);
        assert_eq!(cb.requests.count(), 1);
    }

    #[test]
    fn remaining_gauges_only_when_tracked() {
        let (_cb, stats) = breakers(5, false);
        assert_eq!(
            stats.value("cluster.c.circuit_breakers.default.remaining_rq"),
            None
        );
        assert_eq!(
            stats.value("cluster.c.circuit_breakers.default.rq_open"),
            Some(0)
        );
    }

    #[test]
    fn one_retry_slot_per_request() {
        let (cb, stats) = breakers(5, false);
        let mut held = None;
        assert!(cb.retry(&mut held));
        assert!(cb.retry(&mut held));
        assert_eq!(cb.retries.count(), 1);
        let mut others: Vec<Option<Slot>> = (0..2).map(|_| None).collect();
        for o in &mut others {
            assert!(cb.retry(o));
        }
        let mut over = None;
        assert!(!cb.retry(&mut over));
        assert_eq!(stats.value("cluster.c.upstream_rq_retry_overflow"), Some(1));
        drop(others);
        drop(held);
        assert_eq!(cb.retries.count(), 0);
    }

    #[test]
    fn zero_admits_nothing() {
        let (cb, stats) = breakers(0, false);
        assert!(cb.request().is_none());
        assert_eq!(
            stats.value("cluster.c.circuit_breakers.default.rq_open"),
            Some(1)
        );
    }
}
