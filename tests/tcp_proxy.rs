//! `envoy.filters.network.tcp_proxy`: plain TCP, idle timeout, weighted clusters, connect
//! failure, TLS termination in front of a TCP service, and TLS passthrough routed by SNI.

use crate::common;
use common::*;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A TCP server that greets each connection with `<greeting>\n` (when set), then echoes.
struct TcpEcho {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    /// Connections that ended (the peer closed, or an error).
    closed: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TcpEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TcpEcho {
    async fn start(greeting: Option<&'static str>) -> TcpEcho {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let (c, d) = (connections.clone(), closed.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let d = d.clone();
                tokio::spawn(async move {
                    if let Some(g) = greeting {
                        let _ = s.write_all(format!("{g}\n").as_bytes()).await;
                    }
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    d.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        TcpEcho {
            addr,
            connections,
            closed,
            task,
        }
    }
}

/// Read exactly `n` bytes, bounded.
async fn read_n<S: AsyncRead + Unpin>(s: &mut S, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut buf))
        .await
        .expect("read in time")
        .expect("read");
    buf
}

/// Wait (bounded: 5 s) for the peer to close; how long it took.
async fn closed_within<S: AsyncRead + Unpin>(s: &mut S) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 64];
    let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("closed within 5 s");
    assert!(matches!(r, Ok(0) | Err(_)), "expected a close, got {r:?}");
    start.elapsed()
}

fn tcp_chain(stat_prefix: &str, target: &str, extra: &str) -> String {
    chain_item(&chain_body(
        "",
        "",
        &tcp_proxy_to(stat_prefix, target, extra),
    ))
}

async fn echo_roundtrip<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, msg: &[u8]) {
    s.write_all(msg).await.unwrap();
    assert_eq!(read_n(s, msg.len()).await, msg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_tcp_is_proxied_both_ways_until_close() {
    let echo = TcpEcho::start(None).await;
    let legate = Legate::start(&listener_bootstrap(
        "",
        &tcp_chain("plain", "cluster: echo", ""),
        &cluster("echo", &[echo.addr]),
    ))
    .await;

    let mut s = TcpStream::connect(legate.addr).await.unwrap();
    echo_roundtrip(&mut s, b"hello").await;
    // More than any one buffer, written while the echo comes back.
    let big: Vec<u8> = (0..512 * 1024).map(|i| (i % 251) as u8).collect();
    let (mut r, mut w) = s.into_split();
    let expected = big.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&big).await.unwrap();
        w
    });
    assert_eq!(read_n(&mut r, expected.len()).await, expected);
    let mut w = writer.await.unwrap();

    // Closing our side closes the upstream's, and then the whole connection.
    w.shutdown().await.unwrap();
    closed_within(&mut r).await;
    assert!(
        eventually(Duration::from_secs(5), || echo
            .closed
            .load(Ordering::SeqCst)
            == 1)
        .await,
        "upstream connection not closed"
    );
    assert_eq!(echo.connections.load(Ordering::SeqCst), 1);
    assert_eq!(legate.stat("tcp.plain.downstream_cx_total"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_closes_only_idle_connections() {
    let echo = TcpEcho::start(None).await;
    let legate = Legate::start(&listener_bootstrap(
        "",
        &tcp_chain("idle", "cluster: echo", "idle_timeout: 0.3s"),
        &cluster("echo", &[echo.addr]),
    ))
    .await;

    let mut s = TcpStream::connect(legate.addr).await.unwrap();
    // Traffic every 100 ms for a second (over three timeouts' worth) keeps it open.
    for i in 0..10u8 {
        echo_roundtrip(&mut s, &[b'a' + i]).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(legate.stat("tcp.idle.idle_timeout"), 0);
    // Then silence: closed after about 0.3 s.
    let waited = closed_within(&mut s).await;
    assert!(
        waited >= Duration::from_millis(150),
        "closed after {waited:?}"
    );
    legate.wait_stat("tcp.idle.idle_timeout", 1).await;
    assert!(
        eventually(Duration::from_secs(5), || echo
            .closed
            .load(Ordering::SeqCst)
            == 1)
        .await,
        "upstream side not closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_clusters_share_connections_by_weight() {
    let (a, b) = (
        TcpEcho::start(Some("a")).await,
        TcpEcho::start(Some("b")).await,
    );
    let target =
        "weighted_clusters: { clusters: [{ name: a, weight: 3 }, { name: b, weight: 1 }] }";
    let legate = Legate::start(&listener_bootstrap(
        "",
        &tcp_chain("weighted", target, ""),
        &(cluster("a", &[a.addr]) + &cluster("b", &[b.addr])),
    ))
    .await;
    let (mut to_a, mut to_b) = (0, 0);
    for _ in 0..40 {
        let mut s = TcpStream::connect(legate.addr).await.unwrap();
        match &read_n(&mut s, 2).await[..] {
            b"a\n" => to_a += 1,
            b"b\n" => to_b += 1,
            other => panic!("greeting {other:?}"),
        }
    }
    assert_eq!(to_a + to_b, 40);
    assert!(to_a > to_b && to_b > 0, "a={to_a} b={to_b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connect_failure_closes_the_downstream() {
    let dead = RefusedAddr::new();
    let legate = Legate::start(&listener_bootstrap(
        "",
        &tcp_chain("dead", "cluster: dead", ""),
        &cluster("dead", &[dead.addr]),
    ))
    .await;
    let mut s = TcpStream::connect(legate.addr).await.unwrap();
    let _ = s.write_all(b"anyone?").await;
    closed_within(&mut s).await;
    legate
        .wait_stat("cluster.dead.upstream_cx_connect_fail", 1)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_terminated_in_front_of_a_tcp_service() {
    let ca = TestCa::new("tcp-term");
    let cert = ca.server_cert(&["tcp.example.com"]);
    let echo = TcpEcho::start(Some("plain")).await;
    let chains = chain_item(&chain_body(
        "",
        &downstream_tls(&[&cert], "", ""),
        &tcp_proxy_to("term", "cluster: echo", ""),
    ));
    let legate = Legate::start(&listener_bootstrap(
        "",
        &chains,
        &cluster("echo", &[echo.addr]),
    ))
    .await;
    let mut s = tls_connect(
        legate.addr,
        "tcp.example.com",
        tls_client_config(Some(&ca), None, &[]),
    )
    .await
    .unwrap();
    assert_eq!(peer_dns_names(&s), vec!["tcp.example.com".to_string()]);
    // The upstream speaks plaintext; the client only ever sees TLS.
    assert_eq!(read_n(&mut s, 6).await, b"plain\n");
    echo_roundtrip(&mut s, b"ping").await;
    legate.wait_stat("listener.edge.ssl.handshake", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_passthrough_routes_by_sni_to_the_upstreams_own_certificate() {
    let ca = TestCa::new("passthrough");
    let ua = Upstream::echo_tls("a", &ca.server_cert(&["a.example.com"])).await;
    let ub = Upstream::echo_tls("b", &ca.server_cert(&["b.example.com"])).await;
    let chain = |name: &str, cluster: &str| {
        chain_item(&chain_body(
            &format!("server_names: [{name}]"),
            "",
            &tcp_proxy_to(cluster, &format!("cluster: {cluster}"), ""),
        ))
    };
    let chains = chain("a.example.com", "a") + &chain("b.example.com", "b");
    let legate = Legate::start(&listener_bootstrap(
        TLS_INSPECTOR,
        &chains,
        &(cluster("a", &[ua.addr]) + &cluster("b", &[ub.addr])),
    ))
    .await;

    // The client verifies the upstream's certificate against the CA and its SNI: legate only
    // looked at the ClientHello.
    let client = tls_client_config(Some(&ca), None, &[]);
    for (sni, name) in [("a.example.com", "a"), ("b.example.com", "b")] {
        let r = https_get(legate.addr, sni, client.clone(), "/")
            .await
            .unwrap_or_else(|e| panic!("{sni}: {e}"));
        assert_eq!(r.reply.status, 200, "{sni}");
        assert_eq!(r.peer_names, vec![sni.to_string()]);
        assert_eq!(r.reply.header("x-upstream"), name);
        assert_eq!(r.reply.header("x-upstream-sni"), sni);
    }
    assert_eq!((ua.request_count(), ub.request_count()), (1, 1));
    assert_eq!(legate.stat("listener.edge.ssl.handshake"), 0);
    legate.wait_stat("tcp.a.downstream_cx_total", 1).await;

    // A name no chain claims reaches no upstream.
    let r = tls_connect(
        legate.addr,
        "c.example.com",
        tls_client_config(None, None, &[]),
    )
    .await;
    assert!(r.is_err(), "handshake completed for an unrouted name");
    legate
        .wait_stat("listener.edge.no_filter_chain_match", 1)
        .await;
    assert_eq!(ua.connection_count() + ub.connection_count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_first_protocol_continues_after_listener_filters_timeout() {
    // A TLS chain and a plaintext one on the same port; a server-speaks-first client sends
    // nothing, so the TLS inspector times out and the connection falls through to raw_buffer.
    let ca = TestCa::new("server-first");
    let cert = ca.server_cert(&["tls.example.com"]);
    let tls_side = TcpEcho::start(Some("tls-side")).await;
    let greeter = TcpEcho::start(Some("hello from the server")).await;
    let chains = chain_item(&chain_body(
        "transport_protocol: tls",
        &downstream_tls(&[&cert], "", ""),
        &tcp_proxy_to("tls_side", "cluster: tls_side", ""),
    )) + &chain_item(&chain_body(
        "transport_protocol: raw_buffer",
        "",
        &tcp_proxy_to("greeter", "cluster: greeter", ""),
    ));
    let extra = format!(
        "{TLS_INSPECTOR}    listener_filters_timeout: 0.2s\n    continue_on_listener_filters_timeout: true\n"
    );
    let legate = Legate::start(&listener_bootstrap(
        &extra,
        &chains,
        &(cluster("tls_side", &[tls_side.addr]) + &cluster("greeter", &[greeter.addr])),
    ))
    .await;

    let mut s = TcpStream::connect(legate.addr).await.unwrap();
    let start = Instant::now();
    let greeting = read_n(&mut s, 22).await;
    assert_eq!(greeting, b"hello from the server\n");
    assert!(
        start.elapsed() >= Duration::from_millis(150),
        "{:?}",
        start.elapsed()
    );
    echo_roundtrip(&mut s, b"QUIT").await;
    // Envoy counts the timeout even when the connection carries on.
    legate
        .wait_stat("listener.edge.downstream_pre_cx_timeout", 1)
        .await;

    // TLS clients on the same port still reach the TLS chain.
    let mut t = tls_connect(
        legate.addr,
        "tls.example.com",
        tls_client_config(Some(&ca), None, &[]),
    )
    .await
    .unwrap();
    assert_eq!(read_n(&mut t, 9).await, b"tls-side\n");
    assert_eq!(greeter.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_proxy_originates_tls_to_a_tls_cluster() {
    let ca = TestCa::new("origination");
    let up = Upstream::echo_tls("tls-up", &ca.server_cert(&["up.example.com"])).await;
    let clusters = cluster("up", &[up.addr])
        + &format!(
            r#"    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: up.example.com
        common_tls_context:
          validation_context:
{}"#,
            inline_pem("trusted_ca", ca.pem(), 12)
        );
    let legate = Legate::start(&listener_bootstrap(
        "",
        &tcp_chain("orig", "cluster: up", ""),
        &clusters,
    ))
    .await;
    // Plain HTTP/1.1 from the client, TLS from legate to the upstream.
    let mut conn = Conn::open(legate.addr).await;
    let r = tokio::time::timeout(Duration::from_secs(10), conn.get("up.example.com", "/"))
        .await
        .expect("in time")
        .expect("response");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-upstream"), "tls-up");
    assert_eq!(r.header("x-upstream-sni"), "up.example.com");
    assert_eq!(up.request_count(), 1);
}
