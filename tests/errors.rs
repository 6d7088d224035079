//! Failures: no route, no healthy upstream, connect failure, route timeout, an upstream that
//! breaks off mid-body or hangs up before answering. Each must reach the client as Envoy's local
//! reply (status, body), be logged with Envoy's response flag, and leave legate serving.

use crate::common;
use common::*;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One virtual host for every domain: `/ok` goes to the healthy cluster `good`, then `extra`
/// routes (YAML list items).
fn vhost(extra: &str) -> String {
    format!(
        r#"            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/ok" }}
                route: {{ cluster: good }}
{extra}"#
    )
}

fn route(prefix: &str, cluster: &str, extra_fields: &str) -> String {
    format!(
        "              - match: {{ prefix: \"{prefix}\" }}\n                route: {{ cluster: {cluster}{extra_fields} }}\n"
    )
}

/// A hand-written upstream: every accepted connection is passed to `serve`.
struct RawUpstream {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawUpstream {
    async fn start<F, Fut>(serve: F) -> RawUpstream
    where
        F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream));
            }
        });
        RawUpstream {
            addr,
            connections,
            task,
        }
    }

    fn connection_count(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Read a request head (up to the blank line), bounded in size and time.
async fn read_head(stream: &mut TcpStream) -> Vec<u8> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let read = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), read).await;
    head
}

/// The checks made after every fault: the connection that saw a local reply (if still usable),
/// a connection opened before the fault and a new one all get 200s from the healthy cluster.
async fn still_serving(legate: &Legate, earlier: &mut Conn, faulted: Option<&mut Conn>) {
    if let Some(conn) = faulted {
        let r = conn
            .get("h", "/ok/after")
            .await
            .expect("same connection after the fault");
        assert_eq!(r.status, 200);
    }
    let r = earlier
        .get("h", "/ok/earlier")
        .await
        .expect("earlier connection after the fault");
    assert_eq!(r.status, 200);
    let r = get(&legate.url("/ok/new")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-upstream"), "good");
}

async fn send(conn: &mut Conn, path: &str) -> Reply {
    tokio::time::timeout(Duration::from_secs(10), conn.get("h", path))
        .await
        .expect("answer in time")
        .expect("a response")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_is_404_nr() {
    let good = Upstream::echo("good").await;
    let log = AccessLog::new("nr");
    let legate = Legate::start(&config_with(
        &vhost(""),
        &cluster("good", &[good.addr]),
        &log.hcm_extra(),
    ))
    .await;
    let mut earlier = Conn::open(legate.addr).await;
    assert_eq!(send(&mut earlier, "/ok").await.status, 200);

    let mut conn = Conn::open(legate.addr).await;
    let r = send(&mut conn, "/nothing/here").await;
    assert_eq!(r.status, 404);
    assert!(r.body.is_empty(), "{:?}", r.text());
    assert_eq!(
        good.request_count(),
        1,
        "an unrouted request reaches no upstream"
    );

    let line = log.line_with("/nothing/here").await;
    assert!(line.contains(" 404 NR "), "{line}");
    legate.wait_stat("http.ingress.no_route", 1).await;
    legate.wait_stat("http.ingress.downstream_rq_4xx", 1).await;
    still_serving(&legate, &mut earlier, Some(&mut conn)).await;
    // The good requests are logged without flags.
    let ok = log.line_with("/ok/new").await;
    assert!(ok.contains(" 200 - "), "{ok}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_without_endpoints_is_503_uh() {
    let good = Upstream::echo("good").await;
    let log = AccessLog::new("uh");
    let clusters = cluster("good", &[good.addr]) + &cluster("empty", &[]);
    let legate = Legate::start(&config_with(
        &vhost(&route("/fault", "empty", "")),
        &clusters,
        &log.hcm_extra(),
    ))
    .await;
    let mut earlier = Conn::open(legate.addr).await;
    assert_eq!(send(&mut earlier, "/ok").await.status, 200);

    let mut conn = Conn::open(legate.addr).await;
    let r = send(&mut conn, "/fault").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.text(), "no healthy upstream");
    assert_eq!(r.header("content-type"), "text/plain");

    let line = log.line_with("/fault").await;
    assert!(line.contains(" 503 UH "), "{line}");
    legate
        .wait_stat("cluster.empty.upstream_cx_none_healthy", 1)
        .await;
    legate.wait_stat("http.ingress.downstream_rq_5xx", 1).await;
    still_serving(&legate, &mut earlier, Some(&mut conn)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connection_is_503_uf() {
    let good = Upstream::echo("good").await;
    let log = AccessLog::new("uf");
    let dead = RefusedAddr::new();
    let clusters = cluster("good", &[good.addr]) + &cluster("dead", &[dead.addr]);
    let legate = Legate::start(&config_with(
        &vhost(&route("/fault", "dead", "")),
        &clusters,
        &log.hcm_extra(),
    ))
    .await;
    let mut earlier = Conn::open(legate.addr).await;
    assert_eq!(send(&mut earlier, "/ok").await.status, 200);

    let mut conn = Conn::open(legate.addr).await;
    let r = send(&mut conn, "/fault").await;
    assert_eq!(r.status, 503);
    let body = r.text();
    assert!(
        body.starts_with("upstream connect error or disconnect/reset before headers"),
        "{body}"
    );
    assert!(
        body.contains("reset reason: remote connection failure"),
        "{body}"
    );

    let line = log.line_with("/fault").await;
    assert!(line.contains(" 503 UF "), "{line}");
    assert!(
        line.contains(&format!("\"{}\"", dead.addr)),
        "upstream host logged: {line}"
    );
    legate
        .wait_stat("cluster.dead.upstream_cx_connect_fail", 1)
        .await;
    still_serving(&legate, &mut earlier, Some(&mut conn)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeout_is_504_ut() {
    let good = Upstream::echo("good").await;
    let slow = Upstream::start("slow", |_req| async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        http::Response::new(full("too late"))
    })
    .await;
    let log = AccessLog::new("ut");
    let clusters = cluster("good", &[good.addr]) + &cluster("slow", &[slow.addr]);
    let legate = Legate::start(&config_with(
        &vhost(&route("/fault", "slow", ", timeout: 0.2s")),
        &clusters,
        &log.hcm_extra(),
    ))
    .await;
    let mut earlier = Conn::open(legate.addr).await;
    assert_eq!(send(&mut earlier, "/ok").await.status, 200);

    let mut conn = Conn::open(legate.addr).await;
    let r = send(&mut conn, "/fault").await;
    assert_eq!(r.status, 504);
    assert_eq!(r.text(), "upstream request timeout");
    assert_eq!(
        slow.request_count(),
        1,
        "the request did reach the slow upstream"
    );

    let line = log.line_with("/fault").await;
    assert!(line.contains(" 504 UT "), "{line}");
    legate
        .wait_stat("cluster.slow.upstream_rq_timeout", 1)
        .await;
    legate.wait_stat("http.ingress.downstream_rq_5xx", 1).await;
    still_serving(&legate, &mut earlier, Some(&mut conn)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_hanging_up_before_headers_is_503_uc() {
    let good = Upstream::echo("good").await;
    let hangup = RawUpstream::start(|mut stream| async move {
        read_head(&mut stream).await;
        // Close without a word.
    })
    .await;
    let log = AccessLog::new("uc");
    let clusters = cluster("good", &[good.addr]) + &cluster("hangup", &[hangup.addr]);
    let legate = Legate::start(&config_with(
        &vhost(&route("/fault", "hangup", "")),
        &clusters,
        &log.hcm_extra(),
    ))
    .await;
    let mut earlier = Conn::open(legate.addr).await;
    assert_eq!(send(&mut earlier, "/ok").await.status, 200);

    let mut conn = Conn::open(legate.addr).await;
    let r = send(&mut conn, "/fault").await;
    assert_eq!(r.status, 503);
    assert_eq!(
        r.text(),
        "upstream connect error or disconnect/reset before headers. reset reason: connection termination"
    );
    // A request that may have been sent is not retried without a retry policy.
    assert_eq!(hangup.connection_count(), 1);

    let line = log.line_with("/fault").await;
    assert!(line.contains(" 503 UC "), "{line}");
    still_serving(&legate, &mut earlier, Some(&mut conn)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_cut_short_is_an_error_for_the_client() {
    let good = Upstream::echo("good").await;
    let truncating = RawUpstream::start(|mut stream| async move {
        read_head(&mut stream).await;
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n0123456789")
            .await;
        let _ = stream.flush().await;
        // Give legate the ten bytes, then hang up 990 bytes early.
        tokio::time::sleep(Duration::from_millis(50)).await;
    })
    .await;
    let log = AccessLog::new("trunc");
    let clusters = cluster("good", &[good.addr]) + &cluster("truncating", &[truncating.addr]);
    let legate = Legate::start(&config_with(
        &vhost(&route("/fault", "truncating", "")),
        &clusters,
        &log.hcm_extra(),
    ))
    .await;
    let mut earlier = Conn::open(legate.addr).await;
    assert_eq!(send(&mut earlier, "/ok").await.status, 200);

    // A client of its own, to see the headers and the body separately.
    let stream = TcpStream::connect(legate.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let conn_task = tokio::spawn(conn);
    let req = http::Request::get("/fault")
        .header("host", "h")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(10), async {
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await.map(|b| b.to_bytes());
        Ok::<_, hyper::Error>((status, body))
    })
    .await
    .expect("the exchange ends in time, one way or another");
    // The headers went out before the upstream failed (as in Envoy); the body must then fail.
    let (status, body) = outcome.expect("the response headers arrive");
    assert_eq!(status, 200);
    assert!(
        body.is_err(),
        "a short body must not look complete: {body:?}"
    );
    conn_task.abort();

    let line = log.line_with("/fault").await;
    assert!(line.contains(" 200 "), "{line}");
    assert!(
        !line.contains(" 200 - "),
        "a cut-short response is logged with a flag: {line}"
    );
    still_serving(&legate, &mut earlier, None).await;
}
