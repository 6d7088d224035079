//! Routing: virtual-host domain rules, path matching, direct responses, rewrites, round robin.

use crate::common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_evenly_over_three_upstreams() {
    let ups = [
        Upstream::echo("a").await,
        Upstream::echo("b").await,
        Upstream::echo("c").await,
    ];
    let addrs: Vec<_> = ups.iter().map(|u| u.addr).collect();
    let legate = Legate::start(&config(&route_all_to("svc"), &cluster("svc", &addrs))).await;
    let mut conn = Conn::open(legate.addr).await;
    for _ in 0..30 {
        let r = conn.get("x", "/").await.unwrap();
        assert_eq!(r.status, 200);
    }
    let counts: Vec<_> = ups.iter().map(|u| u.request_count()).collect();
    assert_eq!(counts, vec![10, 10, 10]);
    legate.wait_stat("cluster.svc.upstream_rq_200", 30).await;
}

/// A virtual host answering every path with a 200 whose body is `name`, so a response tells
/// which virtual host the request landed on.
fn direct_vhost(name: &str, domains: &[&str]) -> String {
    let domains: Vec<String> = domains.iter().map(|d| format!("\"{d}\"")).collect();
    format!(
        r#"            - name: {name}
              domains: [{}]
              routes:
              - match: {{ prefix: "/" }}
                direct_response: {{ status: 200, body: {{ inline_string: "{name}" }} }}
"#,
        domains.join(", ")
    )
}

/// GET `path` on a new connection to `legate` with the given `Host`.
async fn get_host(legate: &Legate, host: &str, path: &str) -> Reply {
    let mut conn = Conn::open(legate.addr).await;
    tokio::time::timeout(std::time::Duration::from_secs(10), conn.get(host, path))
        .await
        .expect("response in time")
        .expect("response")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domain_search_order_exact_then_suffix_then_prefix_then_default() {
    // The catch-all comes first in the config: order in the config must not matter.
    let vhosts = [
        direct_vhost("default", &["*"]),
        direct_vhost("prefix-www", &["www.*"]),
        direct_vhost("prefix-www-example", &["www.example.*"]),
        direct_vhost("suffix-example", &["*.example.com"]),
        direct_vhost("suffix-api-example", &["*.api.example.com"]),
        direct_vhost("exact", &["exact.example.com", "exact.api.example.com"]),
    ]
    .concat();
    let legate = Legate::start(&config(&vhosts, &cluster("unused", &[]))).await;
    let cases = [
        ("exact.example.com", "exact"),
        ("EXACT.Example.COM", "exact"),
        ("exact.api.example.com", "exact"),
        ("a.example.com", "suffix-example"),
        ("a.api.example.com", "suffix-api-example"),
        ("A.API.EXAMPLE.COM", "suffix-api-example"),
        ("www.example.com", "suffix-example"),
        ("www.example.org", "prefix-www-example"),
        ("www.other.org", "prefix-www"),
        ("WWW.Other.org", "prefix-www"),
        // A wildcard never matches the empty string.
        ("example.com", "default"),
        ("www.", "default"),
        ("other.net", "default"),
    ];
    for (host, want) in cases {
        let r = get_host(&legate, host, "/").await;
        assert_eq!(r.status, 200, "Host: {host}");
        assert_eq!(r.text(), want, "Host: {host}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_is_part_of_the_host_when_matching_domains() {
    let vhosts = [
        direct_vhost("plain", &["example.com"]),
        direct_vhost("with-port", &["example.com:8080"]),
    ]
    .concat();
    let legate = Legate::start(&config(&vhosts, &cluster("unused", &[]))).await;
    assert_eq!(get_host(&legate, "example.com", "/").await.text(), "plain");
    assert_eq!(
        get_host(&legate, "example.com:8080", "/").await.text(),
        "with-port"
    );
    assert_eq!(
        get_host(&legate, "Example.COM:8080", "/").await.text(),
        "with-port"
    );
    // No virtual host claims example.com:9090, and `example.com` must not match it.
    let r = get_host(&legate, "example.com:9090", "/").await;
    assert_eq!(r.status, 404);
    assert!(r.body.is_empty(), "{:?}", r.text());
    legate.wait_stat("http.ingress.no_route", 1).await;

    // With a catch-all, the port-qualified host falls through to it.
    let vhosts = [
        direct_vhost("plain", &["example.com"]),
        direct_vhost("default", &["*"]),
    ]
    .concat();
    let legate = Legate::start(&config(&vhosts, &cluster("unused", &[]))).await;
    assert_eq!(
        get_host(&legate, "example.com:8080", "/").await.text(),
        "default"
    );
    assert_eq!(get_host(&legate, "example.com", "/").await.text(), "plain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_matching_route_wins_and_path_ignores_the_query() {
    let vhosts = r#"            - name: paths
              domains: ["*"]
              routes:
              - match: { path: "/exact" }
                direct_response: { status: 200, body: { inline_string: "path-exact" } }
              - match: { prefix: "/exact" }
                direct_response: { status: 200, body: { inline_string: "prefix-exact" } }
              - match: { prefix: "/Caseless", case_sensitive: false }
                direct_response: { status: 200, body: { inline_string: "caseless" } }
              - match: { prefix: "/" }
                direct_response: { status: 200, body: { inline_string: "catch-all" } }
              - match: { prefix: "/never" }
                direct_response: { status: 200, body: { inline_string: "shadowed" } }
"#;
    let legate = Legate::start(&config(vhosts, &cluster("unused", &[]))).await;
    let cases = [
        ("/exact", "path-exact"),
        ("/exact?x=1&y=2", "path-exact"),
        ("/exact/", "prefix-exact"),
        ("/exactly", "prefix-exact"),
        ("/EXACT", "catch-all"),
        ("/caseless/x", "caseless"),
        ("/CASELESS", "caseless"),
        ("/ex", "catch-all"),
        ("/never/reached", "catch-all"),
        ("/", "catch-all"),
    ];
    for (path, want) in cases {
        let r = get_host(&legate, "any", path).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.text(), want, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_match_sees_the_query_string() {
    // Envoy matches a prefix against the whole `:path`, query string included.
    let vhosts = r#"            - name: q
              domains: ["*"]
              routes:
              - match: { prefix: "/search?q=" }
                direct_response: { status: 200, body: { inline_string: "with-query" } }
              - match: { prefix: "/search" }
                direct_response: { status: 200, body: { inline_string: "without-query" } }
"#;
    let legate = Legate::start(&config(vhosts, &cluster("unused", &[]))).await;
    assert_eq!(
        get_host(&legate, "h", "/search?q=rust").await.text(),
        "with-query"
    );
    assert_eq!(
        get_host(&legate, "h", "/search?page=2").await.text(),
        "without-query"
    );
    assert_eq!(
        get_host(&legate, "h", "/search").await.text(),
        "without-query"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_response_has_status_body_and_text_plain() {
    let up = Upstream::echo("a").await;
    let vhosts = r#"            - name: d
              domains: ["*"]
              routes:
              - match: { path: "/teapot" }
                direct_response: { status: 418, body: { inline_string: "short and stout" } }
              - match: { path: "/empty" }
                direct_response: { status: 204 }
              - match: { prefix: "/" }
                route: { cluster: svc }
"#;
    let legate = Legate::start(&config(vhosts, &cluster("svc", &[up.addr]))).await;
    let r = get_host(&legate, "h", "/teapot").await;
    assert_eq!(r.status, 418);
    assert_eq!(r.text(), "short and stout");
    assert_eq!(r.header("content-type"), "text/plain");
    assert_eq!(r.header("content-length"), "15");
    assert_eq!(r.header("server"), "legate");

    let r = get_host(&legate, "h", "/empty").await;
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty());
    assert!(r.headers.get("content-type").is_none(), "{:?}", r.headers);

    assert_eq!(
        up.request_count(),
        0,
        "a direct response never reaches an upstream"
    );
    legate.wait_stat("http.ingress.rq_direct_response", 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_rewrite_changes_the_upstream_path_and_records_the_original() {
    let up = Upstream::echo("a").await;
    let vhosts = r#"            - name: rw
              domains: ["*"]
              routes:
              - match: { prefix: "/api/" }
                route: { cluster: svc, prefix_rewrite: "/" }
              - match: { path: "/old" }
                route: { cluster: svc, prefix_rewrite: "/new" }
              - match: { prefix: "/" }
                route: { cluster: svc }
"#;
    let legate = Legate::start(&config(vhosts, &cluster("svc", &[up.addr]))).await;

    let r = get_host(&legate, "h", "/api/v1/users?id=7").await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert_eq!(seen.uri, "/v1/users?id=7");
    assert_eq!(seen.headers["x-envoy-original-path"], "/api/v1/users?id=7");

    let r = get_host(&legate, "h", "/old?x=1").await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert_eq!(seen.uri, "/new?x=1");
    assert_eq!(seen.headers["x-envoy-original-path"], "/old?x=1");

    // No rewrite: the path goes through untouched and no original path is recorded.
    let r = get_host(&legate, "h", "/other/path?k=v").await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert_eq!(seen.uri, "/other/path?k=v");
    assert!(
        seen.headers.get("x-envoy-original-path").is_none(),
        "{:?}",
        seen.headers
    );
    assert_eq!(up.request_count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_rewrite_literal_and_host_preserved_otherwise() {
    let up = Upstream::echo("a").await;
    let vhosts = r#"            - name: hr
              domains: ["*"]
              routes:
              - match: { prefix: "/rewrite" }
                route: { cluster: svc, host_rewrite_literal: "backend.internal" }
              - match: { prefix: "/" }
                route: { cluster: svc }
"#;
    let legate = Legate::start(&config(vhosts, &cluster("svc", &[up.addr]))).await;

    let r = get_host(&legate, "Public.Example.com:8443", "/rewrite/x").await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().headers["host"], "backend.internal");
    assert_eq!(up.last().uri, "/rewrite/x");

    let r = get_host(&legate, "Public.Example.com:8443", "/keep").await;
    assert_eq!(r.status, 200);
    let hosts: Vec<_> = up.last().headers.get_all("host").iter().cloned().collect();
    assert_eq!(hosts, vec!["Public.Example.com:8443"]);
}

/// A STATIC cluster whose endpoints carry `load_balancing_weight`.
fn weighted_cluster(name: &str, endpoints: &[(std::net::SocketAddr, u32)]) -> String {
    let mut out = format!(
        "  - name: {name}\n    connect_timeout: 1s\n    load_assignment:\n      cluster_name: {name}\n      endpoints:\n      - lb_endpoints:\n"
    );
    for (a, w) in endpoints {
        out.push_str(&format!(
            "        - endpoint: {{ address: {{ socket_address: {{ address: {}, port_value: {} }} }} }}\n          load_balancing_weight: {w}\n",
            a.ip(),
            a.port()
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_follows_load_balancing_weight() {
    let (a, b, c) = (
        Upstream::echo("a").await,
        Upstream::echo("b").await,
        Upstream::echo("c").await,
    );
    let clusters = weighted_cluster("svc", &[(a.addr, 3), (b.addr, 1), (c.addr, 1)]);
    let legate = Legate::start(&config(&route_all_to("svc"), &clusters)).await;
    let mut conn = Conn::open(legate.addr).await;
    let mut by_header = std::collections::HashMap::<String, usize>::new();
    for _ in 0..50 {
        let r = conn.get("h", "/").await.unwrap();
        assert_eq!(r.status, 200);
        *by_header
            .entry(r.header("x-upstream").to_string())
            .or_default() += 1;
    }
    // 50 requests are ten whole turns of a 3:1:1 schedule.
    assert_eq!(
        [a.request_count(), b.request_count(), c.request_count()],
        [30, 10, 10]
    );
    assert_eq!(by_header.get("a"), Some(&30), "{by_header:?}");
    assert_eq!(by_header.get("b"), Some(&10), "{by_header:?}");
    assert_eq!(by_header.get("c"), Some(&10), "{by_header:?}");
    legate.wait_stat("cluster.svc.upstream_rq_total", 50).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_request_headers_are_stripped() {
    use bytes::Bytes;
    use http_body_util::Full;
    let up = Upstream::echo("a").await;
    let legate = Legate::start(&config(&route_all_to("svc"), &cluster("svc", &[up.addr]))).await;

    let req = http::Request::get(legate.url("/hop"))
        .header("connection", "close, x-foo")
        .header("x-foo", "secret")
        .header("keep-alive", "timeout=5")
        .header("proxy-connection", "keep-alive")
        .header("te", "gzip")
        .header("x-end-to-end", "kept")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = request(req).await;
    assert_eq!(r.status, 200);
    let h = up.last().headers;
    for gone in [
        "connection",
        "x-foo",
        "keep-alive",
        "proxy-connection",
        "te",
    ] {
        assert!(h.get(gone).is_none(), "{gone} reached the upstream: {h:?}");
    }
    assert_eq!(h["x-end-to-end"], "kept");

    let req = http::Request::get(legate.url("/te"))
        .header("te", "trailers")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = request(req).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().headers["te"], "trailers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_are_added() {
    use bytes::Bytes;
    use http_body_util::Full;
    let up = Upstream::echo("a").await;
    let legate = Legate::start(&config(&route_all_to("svc"), &cluster("svc", &[up.addr]))).await;

    // No x-forwarded-for, no x-request-id: legate starts the chain and makes an ID.
    let r = get(&legate.url("/")).await;
    assert_eq!(r.status, 200);
    let h = up.last().headers;
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    let id = h["x-request-id"].to_str().unwrap().to_string();
    assert!(is_uuid(&id), "x-request-id {id:?} is not a UUID");

    // A second request gets a different ID.
    get(&legate.url("/")).await;
    let id2 = up.last().headers["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(is_uuid(&id2), "{id2:?}");
    assert_ne!(id, id2);

    // Existing values: x-forwarded-for is appended to (Envoy joins with a bare comma), the
    // request ID is kept, and x-forwarded-proto is overwritten (use_remote_address: true).
    let req = http::Request::get(legate.url("/"))
        .header("x-forwarded-for", "10.0.0.1")
        .header("x-request-id", "my-request-id")
        .header("x-forwarded-proto", "https")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = request(req).await;
    assert_eq!(r.status, 200);
    let h = up.last().headers;
    assert_eq!(h["x-forwarded-for"], "10.0.0.1,127.0.0.1");
    assert_eq!(h.get_all("x-request-id").iter().count(), 1);
    assert_eq!(h["x-request-id"], "my-request-id");
    assert_eq!(h["x-forwarded-proto"], "http");
}

fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.iter().map(|p| p.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
        && parts
            .iter()
            .all(|p| p.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_carries_service_time_and_server_header() {
    // The upstream names itself; Envoy overwrites `server` on the way out.
    let up = Upstream::start("a", |_req| async {
        http::Response::builder()
            .header("server", "upstream-httpd")
            .header("x-from-upstream", "1")
            .body(full("hello"))
            .unwrap()
    })
    .await;
    let legate = Legate::start(&config(&route_all_to("svc"), &cluster("svc", &[up.addr]))).await;
    let r = get(&legate.url("/")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "hello");
    assert_eq!(r.header("server"), "legate");
    assert_eq!(r.headers.get_all("server").iter().count(), 1);
    assert_eq!(r.header("x-from-upstream"), "1");
    let t = r.header("x-envoy-upstream-service-time");
    assert!(
        t.parse::<u64>().is_ok(),
        "x-envoy-upstream-service-time {t:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_requests_reuse_one_upstream_connection() {
    let up = Upstream::echo("a").await;
    let legate = Legate::start(&config(&route_all_to("svc"), &cluster("svc", &[up.addr]))).await;
    let mut conn = Conn::open(legate.addr).await;
    for i in 0..100 {
        let r = conn.get("h", &format!("/{i}")).await.unwrap();
        assert_eq!(r.status, 200, "request {i}");
    }
    assert_eq!(up.request_count(), 100);
    assert_eq!(
        up.connection_count(),
        1,
        "upstream connections for 100 sequential requests"
    );
    legate.wait_stat("cluster.svc.upstream_cx_total", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_requests_reuse_one_connection_per_endpoint() {
    let (a, b) = (Upstream::echo("a").await, Upstream::echo("b").await);
    let legate = Legate::start(&config(
        &route_all_to("svc"),
        &cluster("svc", &[a.addr, b.addr]),
    ))
    .await;
    let mut conn = Conn::open(legate.addr).await;
    for i in 0..100 {
        let r = conn.get("h", &format!("/{i}")).await.unwrap();
        assert_eq!(r.status, 200, "request {i}");
    }
    assert_eq!([a.request_count(), b.request_count()], [50, 50]);
    assert_eq!([a.connection_count(), b.connection_count()], [1, 1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_requests_with_bodies_reuse_one_upstream_connection() {
    use bytes::Bytes;
    use http_body_util::Full;
    let up = Upstream::echo("a").await;
    let legate = Legate::start(&config(&route_all_to("svc"), &cluster("svc", &[up.addr]))).await;
    let mut conn = Conn::open(legate.addr).await;
    for i in 0..100 {
        let body = format!("body number {i}");
        let req = http::Request::post("/echo")
            .header("host", "h")
            .body(Full::new(Bytes::from(body.clone())))
            .unwrap();
        let r = conn.send(req).await.unwrap();
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(r.text(), body);
    }
    assert_eq!(up.connection_count(), 1);
}
