//! The stats store: counters, gauges and histograms under Envoy's dotted names.
//!
//! Handles are `metrics` crate types (`Counter`, `Gauge`, `Histogram`) created once when a
//! listener, cluster or connection manager is built and kept in its stats struct; the per-request
//! cost is one atomic add on a handle, never a lookup by name. The registry's mutex is touched only
//! when a handle is created and when the admin API renders.
//!
//! Each server owns its own store (tests run several servers in one process), so the store is a
//! [`metrics::Recorder`] used directly rather than installed globally.

use metrics::{
    Counter, Gauge, GaugeFn, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
pub struct Stats {
    inner: Arc<Mutex<Registry>>,
}

#[derive(Default)]
struct Registry {
    counters: BTreeMap<String, Arc<AtomicU64>>,
    gauges: BTreeMap<String, Arc<IntGauge>>,
    histograms: BTreeMap<String, Arc<Histogram>>,
}

/// Envoy's gauges are integers; an integer atomic avoids the CAS loop an `f64` gauge needs.
#[derive(Default)]
pub struct IntGauge(AtomicI64);

impl GaugeFn for IntGauge {
    fn increment(&self, value: f64) {
        // Relaxed: gauges are independent readings; nothing is ordered against them.
        self.0.fetch_add(value as i64, Ordering::Relaxed);
    }
    fn decrement(&self, value: f64) {
        self.0.fetch_sub(value as i64, Ordering::Relaxed);
    }
    fn set(&self, value: f64) {
        self.0.store(value as i64, Ordering::Relaxed);
    }
}

/// Envoy's default histogram bucket bounds (milliseconds for the `_time`/`_ms` stats).
pub const BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// A fixed-bucket histogram: lock-free to record, good enough for percentiles and Prometheus.
#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len() + 1],
    count: AtomicU64,
    /// Sum in thousandths, so fractional milliseconds are kept.
    sum_milli: AtomicU64,
}

impl Histogram {
    pub fn record_value(&self, value: f64) {
        let idx = BUCKETS
            .iter()
            .position(|b| value <= *b)
            .unwrap_or(BUCKETS.len());
        self.buckets[idx].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_milli
            .fetch_add((value * 1000.0) as u64, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn sum(&self) -> f64 {
        self.sum_milli.load(Ordering::Relaxed) as f64 / 1000.0
    }

    /// Cumulative counts per bucket bound, the last being +Inf.
    pub fn cumulative(&self) -> Vec<u64> {
        let mut acc = 0;
        self.buckets
            .iter()
            .map(|b| {
                acc += b.load(Ordering::Relaxed);
                acc
            })
            .collect()
    }

    /// The upper bound of the bucket holding quantile `q` (0..=1); `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).max(1);
        let cumulative = self.cumulative();
        let idx = cumulative
            .iter()
            .position(|c| *c >= rank)
            .unwrap_or(BUCKETS.len());
        Some(BUCKETS.get(idx).copied().unwrap_or(f64::INFINITY))
    }
}

impl HistogramFn for Histogram {
    fn record(&self, value: f64) {
        self.record_value(value);
    }
}

impl Stats {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn counter(&self, name: impl Into<String>) -> Counter {
        self.register_counter(&Key::from_name(name.into()), &META)
    }

    pub fn gauge(&self, name: impl Into<String>) -> Gauge {
        self.register_gauge(&Key::from_name(name.into()), &META)
    }

    /// Histograms are handed out as our own type so admin can read percentiles from them.
    pub fn histogram(&self, name: impl Into<String>) -> Arc<Histogram> {
        let mut reg = self.lock();
        reg.histograms.entry(name.into()).or_default().clone()
    }

    /// Counters and gauges by name, sorted, for rendering.
    pub fn snapshot(&self) -> StatsSnapshot {
        let reg = self.lock();
        StatsSnapshot {
            counters: reg
                .counters
                .iter()
                .map(|(k, v)| (k.clone(), v.load(Ordering::Relaxed)))
                .collect(),
            gauges: reg
                .gauges
                .iter()
                .map(|(k, v)| (k.clone(), v.0.load(Ordering::Relaxed)))
                .collect(),
            histograms: reg
                .histograms
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    /// The value of one counter or gauge (admin and tests).
    pub fn value(&self, name: &str) -> Option<i64> {
        let reg = self.lock();
        if let Some(c) = reg.counters.get(name) {
            return Some(c.load(Ordering::Relaxed) as i64);
        }
        reg.gauges.get(name).map(|g| g.0.load(Ordering::Relaxed))
    }

    /// `/reset_counters`: counters go to zero, gauges keep their readings (as in Envoy).
    pub fn reset_counters(&self) {
        for c in self.lock().counters.values() {
            c.store(0, Ordering::Relaxed);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        // A panic while holding this lock cannot leave the maps half-written (every mutation is a
        // single insert), so a poisoned lock is still safe to use.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

static META: Metadata<'static> = Metadata::new("legate", metrics::Level::INFO, None);

pub struct StatsSnapshot {
    pub counters: Vec<(String, u64)>,
    pub gauges: Vec<(String, i64)>,
    pub histograms: Vec<(String, Arc<Histogram>)>,
}

impl Recorder for Stats {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let mut reg = self.lock();
        let c = reg
            .counters
            .entry(key.name().to_string())
            .or_default()
            .clone();
        Counter::from_arc(c)
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        let mut reg = self.lock();
        let g = reg
            .gauges
            .entry(key.name().to_string())
            .or_default()
            .clone();
        Gauge::from_arc(g)
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> metrics::Histogram {
        metrics::Histogram::from_arc(self.histogram(key.name().to_string()))
    }
}

/// Counters for `<prefix>1xx` … `<prefix>5xx` plus per-code counters (`<prefix>200`), created on
/// first use of each code so that a request never formats a name.
pub struct StatusCounters {
    stats: Stats,
    prefix: String,
    classes: [Counter; 5],
    codes: Box<[std::sync::OnceLock<Counter>]>,
}

impl StatusCounters {
    pub fn new(stats: &Stats, prefix: &str) -> Self {
        let classes = std::array::from_fn(|i| stats.counter(format!("{prefix}{}xx", i + 1)));
        StatusCounters {
            stats: stats.clone(),
            prefix: prefix.to_string(),
            classes,
            codes: (100..600).map(|_| std::sync::OnceLock::new()).collect(),
        }
    }

    pub fn record(&self, status: u16) {
        if !(100..600).contains(&status) {
            return;
        }
        self.classes[(status / 100 - 1) as usize].increment(1);
        self.codes[(status - 100) as usize]
            .get_or_init(|| self.stats.counter(format!("{}{status}", self.prefix)))
            .increment(1);
    }
}

impl std::fmt::Debug for StatusCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusCounters")
            .field("prefix", &self.prefix)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_share_storage_by_name() {
        let s = Stats::new();
        let a = s.counter("cluster.a.upstream_rq_total");
        let b = s.counter("cluster.a.upstream_rq_total");
        a.increment(2);
        b.increment(1);
        assert_eq!(s.value("cluster.a.upstream_rq_total"), Some(3));
        let g = s.gauge("cluster.a.upstream_cx_active");
        g.increment(1.0);
        g.increment(1.0);
        g.decrement(1.0);
        assert_eq!(s.value("cluster.a.upstream_cx_active"), Some(1));
        s.reset_counters();
        assert_eq!(s.value("cluster.a.upstream_rq_total"), Some(0));
        assert_eq!(s.value("cluster.a.upstream_cx_active"), Some(1));
    }

    #[test]
    fn status_counters() {
        let s = Stats::new();
        let sc = StatusCounters::new(&s, "http.x.downstream_rq_");
        sc.record(200);
        sc.record(204);
        sc.record(503);
        assert_eq!(s.value("http.x.downstream_rq_2xx"), Some(2));
        assert_eq!(s.value("http.x.downstream_rq_200"), Some(1));
        assert_eq!(s.value("http.x.downstream_rq_5xx"), Some(1));
        assert_eq!(s.value("http.x.downstream_rq_4xx"), Some(0));
    }

    #[test]
    fn histogram_quantiles() {
        let h = Histogram::default();
        assert_eq!(h.quantile(0.5), None);
        for v in [0.2, 3.0, 3.0, 40.0] {
            h.record_value(v);
        }
        assert_eq!(h.count(), 4);
        assert_eq!(h.quantile(0.5), Some(5.0));
        assert_eq!(h.quantile(1.0), Some(50.0));
    }
}
