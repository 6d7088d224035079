//! STRICT_DNS clusters: endpoints named by hostname are resolved and reachable.

use crate::common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_dns_cluster_resolves_localhost() {
    let up = Upstream::echo("dns").await;
    let port = up.addr.port();
    let clusters = format!(
        r#"  - name: svc
    type: STRICT_DNS
    dns_lookup_family: V4_ONLY
    connect_timeout: 1s
    load_assignment:
      cluster_name: svc
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: localhost, port_value: {port} }} }} }}
"#
    );
    let legate = Legate::start(&config(&route_all_to("svc"), &clusters)).await;

    for i in 0..3 {
        let r = get(&legate.url(&format!("/via-dns/{i}"))).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-upstream"), "dns");
    }
    assert_eq!(up.request_count(), 3);
    assert_eq!(up.last().uri, "/via-dns/2");

    let clusters = get(&legate.admin_url("/clusters")).await;
    assert_eq!(clusters.status, 200);
    let text = clusters.text();
    let host = format!("svc::127.0.0.1:{port}::");
    assert!(
        text.contains(&format!("{host}hostname::localhost\n")),
        "{text}"
    );
    assert!(text.contains(&format!("{host}rq_total::3\n")), "{text}");
    // V4_ONLY: no IPv6 host, even where localhost also resolves to ::1.
    assert!(!text.contains("svc::[::1]"), "{text}");

    let json = get(&legate.admin_url("/clusters?format=json")).await;
    let v: serde_json::Value = serde_json::from_slice(&json.body).unwrap();
    let hosts = &v["cluster_statuses"][0]["host_statuses"];
    assert_eq!(hosts.as_array().map(|a| a.len()), Some(1), "{v}");
    assert_eq!(hosts[0]["hostname"], "localhost");
    assert_eq!(
        hosts[0]["address"]["socket_address"]["address"],
        "127.0.0.1"
    );
    assert_eq!(hosts[0]["address"]["socket_address"]["port_value"], port);
    assert!(legate.stat("cluster.svc.update_success") >= 1);
}
