//! The admin API: readiness, server info, stats in Envoy's text, JSON and Prometheus forms,
//! `/clusters`, `/listeners`, `/quitquitquit`.

use crate::common;
use common::*;

use bytes::Bytes;
use http_body_util::Full;
use std::time::Duration;

/// N requests through legate, each on a new connection; waits until their stats are written.
async fn send_requests(legate: &Legate, n: usize) {
    for i in 0..n {
        let r = get(&legate.url(&format!("/r/{i}"))).await;
        assert_eq!(r.status, 200);
    }
    legate
        .wait_stat("http.ingress.downstream_rq_2xx", n as i64)
        .await;
}

async fn admin(legate: &Legate, path_and_query: &str) -> Reply {
    get(&legate.admin_url(path_and_query)).await
}

async fn admin_post(legate: &Legate, path: &str) -> Reply {
    request(
        http::Request::post(legate.admin_url(path))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
}

fn json(r: &Reply) -> serde_json::Value {
    assert_eq!(r.header("content-type"), "application/json");
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.text()))
}

fn lines(r: &Reply) -> Vec<String> {
    r.text().lines().map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_and_server_info() {
    let up = Upstream::echo("a").await;
    let legate = Legate::start(&config(&route_all_to("svc"), &cluster("svc", &[up.addr]))).await;

    let r = admin(&legate, "/ready").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text().trim_end(), "LIVE");

    let r = admin(&legate, "/server_info").await;
    assert_eq!(r.status, 200);
    let info = json(&r);
    let version = info["version"].as_str().expect("version is a string");
    assert!(version.contains(env!("CARGO_PKG_VERSION")), "{version}");
    assert_eq!(info["state"], "LIVE");
    for key in ["uptime_current_epoch", "uptime_all_epochs"] {
        let uptime = info[key]
            .as_str()
            .unwrap_or_else(|| panic!("{key} missing: {info}"));
        let secs = uptime.strip_suffix('s').and_then(|s| s.parse::<u64>().ok());
        assert!(secs.is_some_and(|s| s < 600), "{key} = {uptime:?}");
    }
    assert_eq!(info["command_line_options"]["concurrency"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_text_counts_requests_clusters_and_listeners() {
    let up = Upstream::echo("a").await;
    let legate = Legate::start(&config(&route_all_to("svc"), &cluster("svc", &[up.addr]))).await;
    send_requests(&legate, 5).await;
    legate.wait_stat("cluster.svc.upstream_rq_total", 5).await;

    let r = admin(&legate, "/stats").await;
    assert_eq!(r.status, 200);
    let lines = lines(&r);
    for want in [
        "http.ingress.downstream_rq_2xx: 5",
        "http.ingress.downstream_rq_total: 5",
        "cluster.svc.upstream_rq_total: 5",
        "cluster.svc.upstream_rq_200: 5",
        // Envoy names listener stats after the configured address: port 0 stays 0.
        "listener.127.0.0.1_0.downstream_cx_total: 5",
    ] {
        assert!(
            lines.iter().any(|l| l == want),
            "no line {want:?} in:\n{}",
            r.text()
        );
    }
    // One line per stat, each `name: value`.
    for l in &lines {
        assert!(l.contains(": "), "{l:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_stats_use_a_configured_port() {
    let up = Upstream::echo("a").await;
    let port = free_port();
    let yaml = config(&route_all_to("svc"), &cluster("svc", &[up.addr])).replacen(
        "port_value: 0 } }\n    filter_chains",
        &format!("port_value: {port} }} }}\n    filter_chains"),
        1,
    );
    assert!(yaml.contains(&format!("port_value: {port}")), "{yaml}");
    let legate = Legate::start(&yaml).await;
    assert_eq!(legate.addr.port(), port);
    send_requests(&legate, 3).await;

    let r = admin(&legate, "/stats").await;
    let want = format!("listener.127.0.0.1_{port}.downstream_cx_total: 3");
    assert!(
        lines(&r).contains(&want),
        "no line {want:?} in:\n{}",
        r.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_filter_is_a_regex() {
    let up = Upstream::echo("a").await;
    let legate = Legate::start(&config(&route_all_to("svc"), &cluster("svc", &[up.addr]))).await;
    send_requests(&legate, 4).await;
    legate.wait_stat("cluster.svc.upstream_rq_total", 4).await;

    // ^cluster\.svc\.upstream_rq_total$
    let r = admin(
        &legate,
        "/stats?filter=%5Ecluster%5C.svc%5C.upstream_rq_total%24",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "cluster.svc.upstream_rq_total: 4\n");

    // An unanchored pattern matches anywhere in the name.
    let r = admin(&legate, "/stats?filter=downstream_rq_%5B0-9%5Dxx").await;
    assert_eq!(r.status, 200);
    let lines = lines(&r);
    assert!(
        lines.contains(&"http.ingress.downstream_rq_2xx: 4".to_string()),
        "{lines:?}"
    );
    assert!(lines.len() >= 5, "one line per status class: {lines:?}");
    for l in &lines {
        let name = l.split(": ").next().unwrap();
        assert!(
            name.contains("downstream_rq_") && name.ends_with("xx"),
            "filter let through {l:?}"
        );
    }

    let r = admin(&legate, "/stats?filter=%28").await;
    assert_eq!(r.status, 400, "an invalid regex is refused: {}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_as_json() {
    let up = Upstream::echo("a").await;
    let legate = Legate::start(&config(&route_all_to("svc"), &cluster("svc", &[up.addr]))).await;
    send_requests(&legate, 3).await;
    legate.wait_stat("cluster.svc.upstream_rq_total", 3).await;

    let r = admin(&legate, "/stats?format=json").await;
    assert_eq!(r.status, 200);
    let v = json(&r);
    let stats = v["stats"].as_array().expect("a stats array");
    let value = |name: &str| {
        stats
            .iter()
            .find(|s| s["name"] == name)
            .map(|s| s["value"].clone())
            .unwrap_or_else(|| panic!("{name} missing from {v}"))
    };
    assert_eq!(value("cluster.svc.upstream_rq_total"), 3);
    assert_eq!(value("http.ingress.downstream_rq_2xx"), 3);
    assert_eq!(value("listener.127.0.0.1_0.downstream_cx_total"), 3);

    let r = admin(&legate, "/stats?format=json&filter=upstream_rq_total").await;
    let v = json(&r);
    let names: Vec<&str> = v["stats"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, vec!["cluster.svc.upstream_rq_total"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_in_prometheus_form() {
    let up = Upstream::echo("a").await;
    let legate = Legate::start(&config(&route_all_to("svc"), &cluster("svc", &[up.addr]))).await;
    send_requests(&legate, 6).await;
    legate.wait_stat("cluster.svc.upstream_rq_total", 6).await;

    for path in ["/stats/prometheus", "/stats?format=prometheus"] {
        let r = admin(&legate, path).await;
        assert_eq!(r.status, 200, "{path}");
        let lines = lines(&r);
        let has = |want: &str| lines.iter().any(|l| l == want);
        assert!(
            has("envoy_cluster_upstream_rq_total{envoy_cluster_name=\"svc\"} 6"),
            "{path}:\n{}",
            r.text()
        );
        assert!(
            has("# TYPE envoy_cluster_upstream_rq_total counter"),
            "{path}:\n{}",
            r.text()
        );
        // Every sample belongs to a family announced by a `# TYPE` line before it.
        let mut announced = Vec::new();
        for l in &lines {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                announced.push(rest.split(' ').next().unwrap().to_string());
            } else if !l.starts_with('#') && !l.is_empty() {
                let metric = l.split(['{', ' ']).next().unwrap();
                assert!(
                    announced.iter().any(|f| metric == f
                        || metric
                            .strip_prefix(f.as_str())
                            .is_some_and(|s| { ["_bucket", "_sum", "_count"].contains(&s) })),
                    "{l:?} has no # TYPE line before it"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_lists_hosts_with_counters() {
    let (a, b) = (Upstream::echo("a").await, Upstream::echo("b").await);
    let legate = Legate::start(&config(
        &route_all_to("svc"),
        &cluster("svc", &[a.addr, b.addr]),
    ))
    .await;
    send_requests(&legate, 6).await;

    let r = admin(&legate, "/clusters").await;
    assert_eq!(r.status, 200);
    let lines = lines(&r);
    for up in [&a, &b] {
        for want in [
            format!("svc::{}::rq_total::3", up.addr),
            format!("svc::{}::rq_success::3", up.addr),
            format!("svc::{}::health_flags::healthy", up.addr),
        ] {
            assert!(lines.contains(&want), "no line {want:?} in:\n{}", r.text());
        }
    }

    let r = admin(&legate, "/clusters?format=json").await;
    let v = json(&r);
    let hosts = v["cluster_statuses"][0]["host_statuses"]
        .as_array()
        .expect("hosts");
    assert_eq!(v["cluster_statuses"][0]["name"], "svc");
    let ports: Vec<_> = hosts
        .iter()
        .map(|h| {
            h["address"]["socket_address"]["port_value"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(ports, vec![a.addr.port() as u64, b.addr.port() as u64]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_report_the_bound_port() {
    let up = Upstream::echo("a").await;
    let legate = Legate::start(&config(&route_all_to("svc"), &cluster("svc", &[up.addr]))).await;
    assert_ne!(legate.addr.port(), 0);

    let r = admin(&legate, "/listeners?format=json").await;
    assert_eq!(r.status, 200);
    let v = json(&r);
    let listeners = v["listener_statuses"]
        .as_array()
        .expect("listener_statuses");
    assert_eq!(listeners.len(), 1);
    assert_eq!(listeners[0]["name"], "listener_0");
    let sa = &listeners[0]["local_address"]["socket_address"];
    assert_eq!(sa["address"], "127.0.0.1");
    assert_eq!(sa["port_value"], legate.addr.port());

    let r = admin(&legate, "/listeners").await;
    assert_eq!(r.text(), format!("listener_0::{}\n", legate.addr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quitquitquit_needs_post() {
    let up = Upstream::echo("a").await;
    let legate = Legate::start(&config(&route_all_to("svc"), &cluster("svc", &[up.addr]))).await;
    let ctx = legate.server.context().clone();

    // Envoy refuses a state-changing admin command without POST: 405 since Envoy 1.11.
    let r = admin(&legate, "/quitquitquit").await;
    assert_eq!(r.status, 405, "{}", r.text());
    assert!(r.text().contains("POST required"), "{}", r.text());
    let asked = tokio::time::timeout(Duration::from_millis(200), ctx.shutdown_requested()).await;
    assert!(asked.is_err(), "a GET must not shut the server down");
    assert_eq!(admin(&legate, "/ready").await.status, 200);
    assert_eq!(get(&legate.url("/")).await.status, 200);

    let r = admin_post(&legate, "/quitquitquit").await;
    assert_eq!(r.status, 200);
    tokio::time::timeout(Duration::from_secs(5), ctx.shutdown_requested())
        .await
        .expect("POST /quitquitquit asks for a shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_counters_needs_post_and_zeroes_counters() {
    let up = Upstream::echo("a").await;
    let legate = Legate::start(&config(&route_all_to("svc"), &cluster("svc", &[up.addr]))).await;
    send_requests(&legate, 2).await;

    assert_eq!(admin(&legate, "/reset_counters").await.status, 405);
    assert_eq!(legate.stat("http.ingress.downstream_rq_2xx"), 2);

    assert_eq!(admin_post(&legate, "/reset_counters").await.status, 200);
    assert_eq!(legate.stat("http.ingress.downstream_rq_2xx"), 0);
    let r = admin(
        &legate,
        "/stats?filter=%5Ehttp%5C.ingress%5C.downstream_rq_2xx%24",
    )
    .await;
    assert_eq!(r.text(), "http.ingress.downstream_rq_2xx: 0\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_admin_path_is_404_with_help() {
    let up = Upstream::echo("a").await;
    let legate = Legate::start(&config(&route_all_to("svc"), &cluster("svc", &[up.addr]))).await;
    let r = admin(&legate, "/no_such_thing").await;
    assert_eq!(r.status, 404);
    assert!(r.text().contains("admin commands are:"), "{}", r.text());
    assert!(r.text().contains("/quitquitquit (POST)"), "{}", r.text());

    let r = admin(&legate, "/help").await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("/stats"), "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_listeners_stops_accepting_and_closes_idle_connections() {
    let up = Upstream::echo("a").await;
    let legate = Legate::start(&config(&route_all_to("svc"), &cluster("svc", &[up.addr]))).await;
    let mut idle = Conn::open(legate.addr).await;
    assert_eq!(idle.get("x", "/").await.unwrap().status, 200);

    assert_eq!(admin(&legate, "/drain_listeners").await.status, 405);
    assert_eq!(admin_post(&legate, "/drain_listeners").await.status, 200);
    // Not ready any more, still running.
    assert_eq!(admin(&legate, "/ready").await.status, 503);
    legate
        .wait_stat("listener_manager.total_listeners_draining", 1)
        .await;
    // New connections are refused once the listener socket is closed (bounded wait).
    let mut refused = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(legate.addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "the listener still accepts after /drain_listeners");
    // The idle keep-alive connection is closed by the drain.
    legate
        .wait_stat("http.ingress.downstream_cx_active", 0)
        .await;
    assert!(idle.get("x", "/").await.is_err());
}
