//! Load-balancing policies (LEAST_REQUEST, RANDOM) and circuit breakers: requests over real
//! sockets, what the client gets, what the access log and `/stats` say, and config errors with
//! their field paths.

use crate::common;
use common::*;

use http::Request;
use hyper::body::Incoming;
use legate::bootstrap::{self, ConfigSource};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// An upstream that answers `x-upstream: <name>` at once, except `/hold`, which it answers only
/// when `gate` gets a permit.
async fn gated(name: &'static str, gate: Arc<Semaphore>) -> Upstream {
    Upstream::start(name, move |req: Request<Incoming>| {
        let gate = gate.clone();
        async move {
            if req.uri().path() == "/hold" {
                gate.acquire().await.unwrap().forget();
            }
            http::Response::builder()
                .header("x-upstream", name)
                .body(full(name))
                .unwrap()
        }
    })
    .await
}

/// A STATIC cluster `svc` over `addrs` with extra cluster fields (YAML at the cluster's
/// indentation, e.g. `    lb_policy: RANDOM\n`).
fn svc(addrs: &[SocketAddr], extra: &str) -> String {
    format!("{}{extra}", cluster("svc", addrs))
}

/// Start a GET on its own connection in the background.
fn spawn_get(url: String) -> tokio::task::JoinHandle<Reply> {
    tokio::spawn(async move { get(&url).await })
}

async fn wait_for_requests(ups: &[&Upstream], n: usize) {
    let seen = eventually(Duration::from_secs(10), || {
        ups.iter().map(|u| u.request_count()).sum::<usize>() >= n
    })
    .await;
    assert!(seen, "upstreams did not see {n} requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_sends_new_requests_away_from_the_busy_host() {
    let gate = Arc::new(Semaphore::new(0));
    let a = gated("a", gate.clone()).await;
    let b = gated("b", gate.clone()).await;
    // With 2 hosts and Envoy's default of 2 choices, both samples land on the busy host one pick
    // in 4; with 64 choices the idle host is among them for certain (but for 2^-64).
    let clusters = svc(
        &[a.addr, b.addr],
        "    lb_policy: LEAST_REQUEST\n    least_request_lb_config: { choice_count: 64 }\n",
    );
    let legate = Legate::start(&config(&route_all_to("svc"), &clusters)).await;

    let held = spawn_get(legate.url("/hold"));
    wait_for_requests(&[&a, &b], 1).await;
    let busy = if a.request_count() == 1 { "a" } else { "b" };
    let idle = if busy == "a" { "b" } else { "a" };

    let mut conn = Conn::open(legate.addr).await;
    for _ in 0..20 {
        let r = conn.get("x", "/next").await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-upstream"), idle);
    }
    gate.add_permits(1);
    let r = tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .expect("held request finished")
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-upstream"), busy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_reaches_every_host() {
    let ups = [
        Upstream::echo("a").await,
        Upstream::echo("b").await,
        Upstream::echo("c").await,
    ];
    let addrs: Vec<_> = ups.iter().map(|u| u.addr).collect();
    let clusters = svc(&addrs, "    lb_policy: RANDOM\n");
    let legate = Legate::start(&config(&route_all_to("svc"), &clusters)).await;
    let mut conn = Conn::open(legate.addr).await;
    for _ in 0..200 {
        assert_eq!(conn.get("x", "/").await.unwrap().status, 200);
    }
    let counts: Vec<_> = ups.iter().map(|u| u.request_count()).collect();
    assert_eq!(counts.iter().sum::<usize>(), 200);
    // A host missed by 200 uniform picks over 3: about 3 · (2/3)^200, never in practice.
    assert!(counts.iter().all(|n| *n > 0), "{counts:?}");
}

const OVERFLOW_BODY: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: overflow";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_overflow_is_a_503_uo_until_the_held_request_ends() {
    let gate = Arc::new(Semaphore::new(0));
    let up = gated("a", gate.clone()).await;
    let log = AccessLog::with_format(
        "max-requests",
        "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%",
    );
    let clusters = svc(
        &[up.addr],
        "    circuit_breakers:\n      thresholds:\n      - priority: DEFAULT\n        max_requests: 1\n        track_remaining: true\n",
    );
    let legate = Legate::start(&config_with(
        &route_all_to("svc"),
        &clusters,
        &log.hcm_extra(),
    ))
    .await;
    let cb = "cluster.svc.circuit_breakers.default.";

    let held = spawn_get(legate.url("/hold"));
    wait_for_requests(&[&up], 1).await;
    assert_eq!(legate.stat(&format!("{cb}rq_open")), 1);
    assert_eq!(legate.stat(&format!("{cb}remaining_rq")), 0);

    let r = get(&legate.url("/second")).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.text(), OVERFLOW_BODY);
    assert_eq!(r.header("x-envoy-overloaded"), "true");
    assert_eq!(
        log.line_starting("/second ").await,
        "/second 503 UO upstream_reset_before_response_started{overflow}"
    );
    assert_eq!(legate.stat("cluster.svc.upstream_rq_pending_overflow"), 1);
    assert_eq!(
        up.request_count(),
        1,
        "the refused request never reached the upstream"
    );

    // The configured thresholds are what /clusters reports.
    let clusters = get(&legate.admin_url("/clusters")).await.text();
    assert!(
        clusters.contains("svc::default_priority::max_requests::1\n"),
        "{clusters}"
    );
    assert!(
        clusters.contains("svc::default_priority::max_connections::1024\n"),
        "{clusters}"
    );

    gate.add_permits(1);
    let r = tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .expect("held request finished")
        .unwrap();
    assert_eq!(r.status, 200);
    legate.wait_stat(&format!("{cb}rq_open"), 0).await;
    assert_eq!(legate.stat(&format!("{cb}remaining_rq")), 1);
    let r = get(&legate.url("/third")).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        log.line_starting("/third ").await,
        "/third 200 - via_upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_overflow_when_a_new_connection_is_needed() {
    let gate = Arc::new(Semaphore::new(0));
    let up = gated("a", gate.clone()).await;
    let clusters = svc(
        &[up.addr],
        "    circuit_breakers: { thresholds: [ { max_connections: 1 } ] }\n",
    );
    let legate = Legate::start(&config(&route_all_to("svc"), &clusters)).await;

    // The only connection allowed is busy with the held request.
    let held = spawn_get(legate.url("/hold"));
    wait_for_requests(&[&up], 1).await;
    assert_eq!(
        legate.stat("cluster.svc.circuit_breakers.default.cx_open"),
        1
    );
    let r = get(&legate.url("/second")).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.text(), OVERFLOW_BODY);
    assert_eq!(legate.stat("cluster.svc.upstream_cx_overflow"), 1);
    assert_eq!(legate.stat("cluster.svc.upstream_cx_total"), 1);

    // Once it is idle again, the next request reuses it.
    gate.add_permits(1);
    let r = tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .expect("held request finished")
        .unwrap();
    assert_eq!(r.status, 200);
    let mut conn = Conn::open(legate.addr).await;
    for _ in 0..3 {
        assert_eq!(conn.get("x", "/again").await.unwrap().status, 200);
    }
    assert_eq!(up.connection_count(), 1);
    assert_eq!(legate.stat("cluster.svc.upstream_cx_overflow"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_pending_requests_counts_requests_waiting_for_a_new_connection() {
    let up = Upstream::echo("a").await;
    // No request may wait for a connection, and without an idle one every request would.
    let clusters = svc(
        &[up.addr],
        "    circuit_breakers: { thresholds: [ { max_pending_requests: 0 } ] }\n",
    );
    let legate = Legate::start(&config(&route_all_to("svc"), &clusters)).await;
    let r = get(&legate.url("/")).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.text(), OVERFLOW_BODY);
    assert_eq!(legate.stat("cluster.svc.upstream_rq_pending_overflow"), 1);
    assert_eq!(legate.stat("cluster.svc.upstream_cx_total"), 0);
    assert_eq!(up.connection_count(), 0);
}

/// Every error line for `clusters` (the listener routes to `svc`).
fn config_errors(clusters: &str) -> Vec<String> {
    let yaml = config(&route_all_to("svc"), clusters);
    match bootstrap::load(&ConfigSource::yaml(&yaml)) {
        Ok(_) => panic!("config accepted:\n{yaml}"),
        Err(e) => e.lines(),
    }
}

#[test]
fn unsupported_policies_and_priorities_name_their_field() {
    let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let errors = config_errors(&svc(&[a], "    lb_policy: RING_HASH\n"));
    assert_eq!(
        errors,
        vec!["static_resources.clusters[0].lb_policy: unsupported value 'RING_HASH'"]
    );

    let errors = config_errors(&svc(
        &[a],
        "    circuit_breakers:\n      thresholds:\n      - max_requests: 5\n      - priority: HIGH\n        max_requests: 10\n",
    ));
    assert_eq!(
        errors,
        vec![
            "static_resources.clusters[0].circuit_breakers.thresholds[1].priority: \
             unsupported value 'HIGH' (only DEFAULT: routes have no priority)"
        ]
    );

    let errors = config_errors(&svc(
        &[a],
        "    circuit_breakers: { thresholds: [ { max_requests: 5 }, { priority: DEFAULT } ] }\n",
    ));
    assert_eq!(
        errors,
        vec![
            "static_resources.clusters[0].circuit_breakers.thresholds[1]: \
             a second thresholds entry for priority DEFAULT"
        ]
    );
}

#[test]
fn least_request_settings_are_checked() {
    let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let errors = config_errors(&svc(
        &[a],
        "    lb_policy: LEAST_REQUEST\n    least_request_lb_config: { choice_count: 1 }\n",
    ));
    assert_eq!(
        errors,
        vec![
            "static_resources.clusters[0].least_request_lb_config.choice_count: must be at least 2"
        ]
    );

    let errors = config_errors(&svc(
        &[a],
        "    least_request_lb_config: { choice_count: 3 }\n",
    ));
    assert_eq!(
        errors,
        vec!["static_resources.clusters[0].least_request_lb_config: applies only to lb_policy LEAST_REQUEST"]
    );
}

#[test]
fn unsupported_circuit_breaker_fields_are_rejected() {
    let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let errors = config_errors(&svc(
        &[a],
        "    circuit_breakers: { thresholds: [ { retry_budget: { budget_percent: { value: 20 } } } ] }\n",
    ));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with(
            "static_resources.clusters[0].circuit_breakers.thresholds[0].retry_budget: unknown field"
        ),
        "{errors:?}"
    );
}
