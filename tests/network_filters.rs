//! Network filters before the HTTP connection manager: RBAC, local rate limit and connection
//! limit, over real sockets on 127.0.0.1, and their configuration errors.

use crate::common;

use common::*;
use legate::bootstrap::{self, ConfigSource};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One `GET /` with `Connection: close` on a new raw connection; everything the server sent
/// before closing. Empty when the connection was closed (EOF or reset) without a response.
async fn raw_get(addr: SocketAddr) -> String {
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        // The server may already have closed (and reset) the connection: a failed write is an
        // answer too.
        let _ = s
            .write_all(b"GET / HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
            .await;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&got).into_owned()
    })
    .await
    .expect("the connection was answered or closed in time")
}

fn assert_ok(resp: &str) {
    assert!(
        resp.starts_with("HTTP/1.1 200"),
        "expected a 200 response, got {resp:?}"
    );
}

fn assert_closed(resp: &str) {
    assert!(
        resp.is_empty(),
        "expected the connection closed without a response, got {resp:?}"
    );
}

async fn start(up: &Upstream, filters: &str) -> Legate {
    Legate::start(&config_with_network_filters(
        &route_all_to("svc"),
        &cluster("svc", &[up.addr]),
        filters,
    ))
    .await
}

const RBAC_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_deny_by_source_ip_closes_without_response() {
    let up = Upstream::echo("a").await;
    let legate = start(
        &up,
        &format!(
            r#"      - name: envoy.filters.network.rbac
        typed_config:
          "@type": {RBAC_TYPE}
          stat_prefix: tcp.
          rules:
            action: DENY
            policies:
              "no-loopback-client":
                permissions: [{{ any: true }}]
                principals:
                - direct_remote_ip: {{ address_prefix: 127.0.0.1, prefix_len: 32 }}
"#
        ),
    )
    .await;

    assert_closed(&raw_get(legate.addr).await);
    legate.wait_stat("tcp.rbac.denied", 1).await;
    assert_eq!(legate.stat("tcp.rbac.allowed"), 0);
    assert_eq!(
        up.request_count(),
        0,
        "a denied connection reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_allow_by_source_range_serves_and_shadow_rules_only_count() {
    let up = Upstream::echo("a").await;
    // Legacy name-only form (no @type), as Envoy still accepts.
    let legate = start(
        &up,
        r#"      - name: envoy.filters.network.rbac
        typed_config:
          stat_prefix: tcp.
          shadow_rules_stat_prefix: dryrun_
          rules:
            action: ALLOW
            policies:
              "loopback":
                permissions:
                - or_rules:
                    rules:
                    - destination_port: 1
                    - not_rule: { destination_port: 1 }
                principals:
                - remote_ip: { address_prefix: 127.0.0.0, prefix_len: 8 }
          shadow_rules:
            action: ALLOW
            policies:
              "elsewhere":
                permissions: [{ any: true }]
                principals:
                - direct_remote_ip: { address_prefix: 10.0.0.0, prefix_len: 8 }
"#,
    )
    .await;

    assert_ok(&raw_get(legate.addr).await);
    assert_ok(&raw_get(legate.addr).await);
    legate.wait_stat("tcp.rbac.allowed", 2).await;
    assert_eq!(legate.stat("tcp.rbac.denied"), 0);
    // The shadow rules would have denied both, but only counted it.
    assert_eq!(legate.stat("tcp.rbac.dryrun_.shadow_denied"), 2);
    assert_eq!(legate.stat("tcp.rbac.dryrun_.shadow_allowed"), 0);
    assert_eq!(up.request_count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_allow_without_a_matching_policy_denies() {
    let up = Upstream::echo("a").await;
    let legate = start(
        &up,
        &format!(
            r#"      - name: envoy.filters.network.rbac
        typed_config:
          "@type": {RBAC_TYPE}
          stat_prefix: tcp.
          rules:
            policies:
              "only-10":
                permissions: [{{ any: true }}]
                principals:
                - direct_remote_ip: {{ address_prefix: 10.0.0.0, prefix_len: 8 }}
"#
        ),
    )
    .await;

    assert_closed(&raw_get(legate.addr).await);
    legate.wait_stat("tcp.rbac.denied", 1).await;
    assert_eq!(up.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_ratelimit_closes_connections_over_the_bucket() {
    let up = Upstream::echo("a").await;
    let legate = start(
        &up,
        r#"      - name: envoy.filters.network.local_ratelimit
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit
          stat_prefix: conn_rl
          token_bucket:
            max_tokens: 2
            fill_interval: 60s
"#,
    )
    .await;

    assert_ok(&raw_get(legate.addr).await);
    assert_ok(&raw_get(legate.addr).await);
    // The bucket refills one token a minute: the third connection finds it empty.
    assert_closed(&raw_get(legate.addr).await);
    legate
        .wait_stat("local_rate_limit.conn_rl.rate_limited", 1)
        .await;
    assert_eq!(up.request_count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_rejects_over_the_limit_and_frees_slots_on_close() {
    let up = Upstream::echo("a").await;
    let legate = start(
        &up,
        r#"      - name: envoy.filters.network.connection_limit
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit
          stat_prefix: cl
          max_connections: 2
"#,
    )
    .await;

    // Two kept-alive connections, each proven admitted by a response.
    let mut a = Conn::open(legate.addr).await;
    let mut b = Conn::open(legate.addr).await;
    for c in [&mut a, &mut b] {
        let r = tokio::time::timeout(Duration::from_secs(10), c.get("test", "/"))
            .await
            .expect("answered in time")
            .expect("response");
        assert_eq!(r.status, 200);
    }
    assert_eq!(legate.stat("connection_limit.cl.active_connections"), 2);

    // A third, while both are open, is closed unanswered.
    assert_closed(&raw_get(legate.addr).await);
    legate
        .wait_stat("connection_limit.cl.limited_connections", 1)
        .await;
    legate
        .wait_stat("connection_limit.cl.active_connections", 2)
        .await;

    // Closing one frees its slot.
    drop(a);
    legate
        .wait_stat("connection_limit.cl.active_connections", 1)
        .await;
    assert_ok(&raw_get(legate.addr).await);
    assert_eq!(legate.stat("connection_limit.cl.limited_connections"), 1);
    drop(b);
    legate
        .wait_stat("connection_limit.cl.active_connections", 0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_delay_holds_the_rejected_connection_first() {
    let up = Upstream::echo("a").await;
    let legate = start(
        &up,
        r#"      - name: envoy.filters.network.connection_limit
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit
          stat_prefix: cl
          max_connections: 1
          delay: 0.4s
"#,
    )
    .await;

    let mut a = Conn::open(legate.addr).await;
    let r = tokio::time::timeout(Duration::from_secs(10), a.get("test", "/"))
        .await
        .expect("answered in time")
        .expect("response");
    assert_eq!(r.status, 200);

    let started = Instant::now();
    assert_closed(&raw_get(legate.addr).await);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(350),
        "closed after {waited:?}, before the 0.4s delay"
    );
    assert_eq!(legate.stat("connection_limit.cl.limited_connections"), 1);
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_compose_in_chain_order() {
    let up = Upstream::echo("a").await;
    // The rate limit runs first: a connection RBAC would deny still takes a token.
    let legate = start(
        &up,
        &format!(
            r#"      - name: envoy.filters.network.local_ratelimit
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit
          stat_prefix: rl
          token_bucket: {{ max_tokens: 1, tokens_per_fill: 1, fill_interval: 3600s }}
      - name: envoy.filters.network.rbac
        typed_config:
          "@type": {RBAC_TYPE}
          stat_prefix: "tcp."
          rules:
            action: DENY
            policies:
              "everyone":
                permissions: [{{ any: true }}]
                principals: [{{ any: true }}]
"#
        ),
    )
    .await;

    assert_closed(&raw_get(legate.addr).await);
    legate.wait_stat("tcp.rbac.denied", 1).await;
    assert_closed(&raw_get(legate.addr).await);
    legate
        .wait_stat("local_rate_limit.rl.rate_limited", 1)
        .await;
    assert_eq!(legate.stat("tcp.rbac.denied"), 1);
}

// ---------------------------------------------------------------------------------------------
// Configuration errors: every one names the field.

/// The error text for a bootstrap whose chain has `filters` before the connection manager.
fn config_error(filters: &str) -> String {
    let yaml = config_with_network_filters(
        &route_all_to("svc"),
        &cluster("svc", &["127.0.0.1:1".parse().unwrap()]),
        filters,
    );
    match bootstrap::load(&ConfigSource::yaml(yaml.clone())) {
        Ok(_) => panic!("config accepted:\n{yaml}"),
        Err(e) => e.to_string(),
    }
}

const FILTER0: &str = "static_resources.listeners[0].filter_chains[0].filters[0]";

#[test]
fn unknown_fields_are_rejected_with_their_path() {
    let e = config_error(&format!(
        r#"      - name: envoy.filters.network.rbac
        typed_config:
          "@type": {RBAC_TYPE}
          stat_prefix: tcp.
          rules:
            policies:
              "p":
                permissions: [{{ destination_prot: 80 }}]
                principals: [{{ any: true }}]
"#
    ));
    assert!(
        e.contains(&format!(
            "{FILTER0}.typed_config.rules.policies.p.permissions[0].destination_prot"
        )) && e.contains("unknown field `destination_prot`"),
        "{e}"
    );

    let e = config_error(
        r#"      - name: envoy.filters.network.local_ratelimit
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit
          stat_prefix: rl
          token_bucket: { max_tokens: 2, fill_interval: 1s, fill_rate: 3 }
"#,
    );
    assert!(
        e.contains(&format!("{FILTER0}.typed_config.token_bucket.fill_rate"))
            && e.contains("unknown field `fill_rate`"),
        "{e}"
    );

    let e = config_error(
        r#"      - name: envoy.filters.network.connection_limit
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit
          stat_prefix: cl
          max_connection: 2
"#,
    );
    assert!(
        e.contains(&format!("{FILTER0}.typed_config.max_connection"))
            && e.contains("unknown field `max_connection`"),
        "{e}"
    );
}

#[test]
fn unsupported_and_invalid_values_are_rejected_with_their_path() {
    let e = config_error(&format!(
        r#"      - name: envoy.filters.network.rbac
        typed_config:
          "@type": {RBAC_TYPE}
          stat_prefix: tcp.
          rules:
            policies:
              "mtls":
                permissions: [{{ any: true }}]
                principals:
                - authenticated: {{ principal_name: {{ exact: "spiffe://a/b" }} }}
                - direct_remote_ip: {{ address_prefix: 10.0.0.0 }}
"#
    ));
    assert!(
        e.contains(&format!(
            "{FILTER0}.typed_config.rules.policies.mtls.principals[0].authenticated: not supported"
        )),
        "{e}"
    );
    assert!(
        e.contains(&format!(
            "{FILTER0}.typed_config.rules.policies.mtls.principals[1].direct_remote_ip.prefix_len: is required"
        )),
        "{e}"
    );

    let e = config_error(
        r#"      - name: envoy.filters.network.local_ratelimit
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit
          stat_prefix: rl
          token_bucket: { max_tokens: 0, fill_interval: 0.01s }
"#,
    );
    assert!(
        e.contains(&format!(
            "{FILTER0}.typed_config.token_bucket.max_tokens: must be greater than 0"
        )),
        "{e}"
    );
    assert!(
        e.contains(&format!(
            "{FILTER0}.typed_config.token_bucket.fill_interval: local rate limit token bucket fill timer must be >= 50ms"
        )),
        "{e}"
    );

    let e = config_error(
        r#"      - name: envoy.filters.network.connection_limit
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit
          stat_prefix: ""
"#,
    );
    assert!(
        e.contains(&format!(
            "{FILTER0}.typed_config.stat_prefix: must not be empty"
        )),
        "{e}"
    );
    assert!(
        e.contains(&format!(
            "{FILTER0}.typed_config.max_connections: is required"
        )),
        "{e}"
    );
}

#[test]
fn a_connection_filter_cannot_end_a_chain() {
    let yaml = r#"
static_resources:
  listeners:
  - name: l
    address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.connection_limit
        typed_config: { stat_prefix: cl, max_connections: 1 }
"#;
    let e = match bootstrap::load(&ConfigSource::yaml(yaml)) {
        Ok(_) => panic!("config accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains(
            "static_resources.listeners[0].filter_chains[0].filters[0]: the last filter of a chain must be a terminal filter"
        ),
        "{e}"
    );
}
