//! Micro-benchmarks for the per-request pieces: route matching, the cluster snapshot read and
//! host pick (per load-balancing policy), the circuit breaker, request-header editing,
//! access-log formatting.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, HeaderValue};
use legate::bootstrap::{ClusterConfig, ClusterType, DnsLookupFamily, LbPolicy};
use legate::cluster::Cluster;
use legate::http::headers;
use legate::http::router::{Action, PathMatch, Route, RouteTable, VirtualHost};
use legate::observe::access_log::{Captured, Entry, Format, RequestParts, DEFAULT_FORMAT};
use legate::observe::Stats;
use std::hint::black_box;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

fn table(routes: usize) -> RouteTable<()> {
    let routes = (0..routes)
        .map(|i| Route {
            name: format!("r{i}"),
            path_match: PathMatch::Prefix(format!("/service-{i}/")),
            case_sensitive: true,
            action: Action::DirectResponse {
                status: 200,
                body: Bytes::new(),
            },
        })
        .collect();
    RouteTable::new(
        "bench".into(),
        vec![
            VirtualHost {
                name: "other".into(),
                domains: vec!["other.example.com".into()],
                routes: vec![],
            },
            VirtualHost {
                name: "all".into(),
                domains: vec!["*".into()],
                routes,
            },
        ],
    )
}

fn route_match(c: &mut Criterion) {
    let mut g = c.benchmark_group("route_match");
    for n in [10usize, 1_000, 10_000] {
        let t = table(n);
        // The last route: the worst case for a first-match-wins table.
        let path = format!("/service-{}/items?id=7", n - 1);
        g.bench_with_input(BenchmarkId::new("prefix_last_of", n), &path, |b, p| {
            b.iter(|| black_box(t.route(black_box("api.example.com:10000"), p)).is_some())
        });
        let middle = format!("/service-{}/items?id=7", n / 2);
        g.bench_with_input(BenchmarkId::new("prefix_middle_of", n), &middle, |b, p| {
            b.iter(|| black_box(t.route(black_box("api.example.com:10000"), p)).is_some())
        });
        // No route matches: every route is looked at by a scan.
        let miss = "/other/items?id=7".to_string();
        g.bench_with_input(BenchmarkId::new("miss_of", n), &miss, |b, p| {
            b.iter(|| black_box(t.route(black_box("api.example.com:10000"), p)).is_none())
        });
        // The first-match scan the index replaced, for comparison on the same machine.
        g.bench_with_input(BenchmarkId::new("scan_last_of", n), &path, |b, p| {
            b.iter(|| black_box(t.find_linear(black_box("api.example.com:10000"), p)).is_some())
        });
    }
    g.finish();
}

/// A cluster of 10 hosts on unused ports (nothing is dialed) with the given policy and weights.
fn bench_cluster(stats: &Stats, lb_policy: LbPolicy, weight: impl Fn(u32) -> u32) -> Arc<Cluster> {
    let cluster = Cluster::new(
        ClusterConfig {
            name: "bench".into(),
            cluster_type: ClusterType::Static,
            connect_timeout: Duration::from_secs(1),
            dns_refresh_rate: Duration::from_secs(5),
            dns_lookup_family: DnsLookupFamily::Auto,
            protocol: legate::bootstrap::UpstreamProtocol::Http1,
            tls: None,
            endpoints: vec![],
            lb_policy,
            circuit_breakers: Default::default(),
        },
        stats,
    );
    let hosts = (0..10)
        .map(|i| {
            cluster.new_host(
                format!("127.0.0.1:{}", 20000 + i).parse().unwrap(),
                String::new(),
                weight(i),
            )
        })
        .collect();
    cluster.set_hosts(hosts);
    cluster
}

fn cluster_pick(c: &mut Criterion) {
    let stats = Stats::new();
    let cluster = bench_cluster(&stats, LbPolicy::RoundRobin, |i| 1 + i % 3);
    c.bench_function("cluster_snapshot_pick_weighted_rr_10_hosts", |b| {
        b.iter(|| black_box(cluster.pick()).is_some())
    });
}

/// `Cluster::pick` per `lb_policy` over 10 hosts: the snapshot load, the policy's choice and the
/// host handle a request takes.
fn lb_pick(c: &mut Criterion) {
    let stats = Stats::new();
    let mut g = c.benchmark_group("lb_pick");
    let cases = [
        (
            "round_robin",
            bench_cluster(&stats, LbPolicy::RoundRobin, |_| 1),
        ),
        (
            "round_robin_weighted",
            bench_cluster(&stats, LbPolicy::RoundRobin, |i| 1 + i % 3),
        ),
        (
            "least_request",
            bench_cluster(&stats, LbPolicy::LeastRequest { choice_count: 2 }, |_| 1),
        ),
        ("random", bench_cluster(&stats, LbPolicy::Random, |_| 1)),
    ];
    for (name, cluster) in &cases {
        // Uneven load, so least-request compares real counts.
        for (i, h) in cluster.hosts().hosts.iter().enumerate() {
            h.stats.rq_active.store(i as u64 % 4, Ordering::Relaxed);
        }
        g.bench_function(*name, |b| b.iter(|| black_box(cluster.pick()).is_some()));
    }
    g.finish();
}

/// A `max_requests` slot taken and given back (the request path's circuit-breaker cost).
fn circuit_breaker(c: &mut Criterion) {
    let stats = Stats::new();
    let cluster = bench_cluster(&stats, LbPolicy::RoundRobin, |_| 1);
    let mut g = c.benchmark_group("circuit_breaker");
    g.bench_function("acquire_release", |b| {
        b.iter(|| drop(black_box(cluster.circuit_breakers.request())))
    });
    g.finish();
}

fn header_edit(c: &mut Criterion) {
    let mut base = HeaderMap::new();
    base.insert("host", HeaderValue::from_static("api.example.com"));
    base.insert("user-agent", HeaderValue::from_static("bench/1.0"));
    base.insert("accept", HeaderValue::from_static("*/*"));
    base.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
    c.bench_function("request_header_edit", |b| {
        b.iter_batched_ref(
            || base.clone(),
            |h| {
                headers::strip_hop_by_hop(h);
                headers::append_xff(h, "127.0.0.1".parse().unwrap());
                h.insert("x-request-id", headers::new_request_id());
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

fn access_log_format(c: &mut Criterion) {
    let f = Format::parse(DEFAULT_FORMAT).unwrap();
    let mut h = HeaderMap::new();
    h.insert("user-agent", HeaderValue::from_static("bench/1.0"));
    h.insert(
        "x-request-id",
        HeaderValue::from_static("2f1e7c7a-9a55-4a4f-8a43-3c8f8e1d2b11"),
    );
    let captured = Captured {
        request: f.capture(&RequestParts {
            method: "GET",
            path: "/service-1/items?id=7",
            authority: Some("api.example.com"),
            scheme: "http",
            headers: &h,
        }),
        response: vec![Some(HeaderValue::from_static("3"))],
    };
    let entry = Entry {
        start_time: SystemTime::now(),
        protocol: "HTTP/1.1",
        response_code: 200,
        response_code_details: "via_upstream",
        response_flags: "",
        bytes_received: 0,
        bytes_sent: 100,
        duration: Duration::from_millis(3),
        upstream_host: Some("127.0.0.1:8080".parse().unwrap()),
        upstream_cluster: "svc",
        route_name: "",
        downstream_remote: "127.0.0.1:5000".parse().unwrap(),
        downstream_local: "127.0.0.1:10000".parse().unwrap(),
        upstream_transport_failure_reason: "",
    };
    c.bench_function("access_log_default_format", |b| {
        let mut out = String::with_capacity(256);
        b.iter(|| {
            out.clear();
            f.format(&entry, &captured, &mut out);
            black_box(out.len())
        })
    });
}

criterion_group!(
    benches,
    route_match,
    cluster_pick,
    lb_pick,
    circuit_breaker,
    header_edit,
    access_log_format
);
criterion_main!(benches);
