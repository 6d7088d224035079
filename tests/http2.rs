//! HTTP/2: h2c downstream (prior knowledge on a connection manager with the default AUTO codec),
//! HTTP/2 upstream clusters, protocol translation both ways, multiplexing limits, and flow
//! control isolation between streams.

use crate::common;
use bytes::Bytes;
use common::*;
use http::{Request, Response, Version};
use http_body_util::{BodyExt, Full};
use std::sync::Arc;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(20);

async fn bounded<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(T, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: not done in {T:?}"))
}

// ---------------------------------------------------------------------------------------------
// The harness itself, without legate.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_h2_client_to_h2_echo_upstream() {
    let up = Upstream::h2_echo("h2").await;
    let conn = H2Conn::open(up.addr).await;
    let body = pattern_body(100_000);
    let req = Request::post("http://example.test/echo?q=1")
        .header("x-test", "1")
        .body(Full::new(body.clone()))
        .unwrap();
    let (r, version) = bounded("echo", conn.send(req)).await.unwrap();
    assert_eq!(version, Version::HTTP_2);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-upstream"), "h2");
    assert_eq!(r.header("x-upstream-version"), "HTTP/2.0");
    assert_eq!(r.body, body);
    let seen = up.last();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.authority(), "example.test");
    assert_eq!(seen.path(), "/echo?q=1");
    assert_eq!(seen.headers["x-test"], "1");
    // A second request multiplexes on the same connection.
    let r = bounded("get", conn.get("http://example.test/again"))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(up.connection_count(), 1);
    assert_eq!(up.request_count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_h2_upstream_limits_concurrent_streams() {
    // 30 requests, at most 10 at a time, 100 ms each: three waves on one connection.
    let up = Upstream::h2_with("slow", 10, Duration::from_millis(100)).await;
    let conn = Arc::new(H2Conn::open(up.addr).await);
    // One request first, so the client has the server's SETTINGS (max 10 streams) before the
    // burst; until then it may open up to 100, and the server refuses the excess.
    let r = bounded("warm-up", conn.get("http://example.test/warm-up"))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..30 {
        let conn = conn.clone();
        tasks.push(tokio::spawn(async move {
            conn.get(&format!("http://example.test/{i}")).await
        }));
    }
    for t in tasks {
        let r = bounded("request", t).await.unwrap().unwrap();
        assert_eq!(r.status, 200);
    }
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(290), "{took:?}");
    assert_eq!(up.connection_count(), 1);
    assert_eq!(up.request_count(), 31);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_h1_echo_reports_its_version() {
    let up = Upstream::h1_echo("h1").await;
    let r = get(&format!("http://{}/x", up.addr)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-upstream-version"), "HTTP/1.1");
}

// ---------------------------------------------------------------------------------------------
// Through legate.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_client_to_h1_upstream() {
    let up = Upstream::h1_echo("h1").await;
    let legate = Legate::start(&config(&route_all_to("svc"), &cluster("svc", &[up.addr]))).await;
    let conn = H2Conn::open(legate.addr).await;

    let body = pattern_body(300_000);
    let req = Request::post("http://example.test/echo?q=1")
        .header("x-test", "yes")
        .body(Full::new(body.clone()))
        .unwrap();
    let (r, version) = bounded("post", conn.send(req)).await.unwrap();
    assert_eq!(version, Version::HTTP_2);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-upstream"), "h1");
    assert_eq!(r.header("x-upstream-version"), "HTTP/1.1");
    assert_eq!(r.body.len(), body.len());
    assert!(r.body == body, "body changed on the way");
    let seen = up.last();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.uri, "/echo?q=1");
    assert_eq!(seen.headers["host"], "example.test", "Host = :authority");
    assert_eq!(seen.headers["x-test"], "yes");

    // A GET without a body on the same connection.
    let r = bounded("get", conn.get("http://example.test/empty"))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert_eq!(up.last().uri, "/empty");
    assert_eq!(up.request_count(), 2);
    legate
        .wait_stat("http.ingress.downstream_rq_http2_total", 2)
        .await;
    assert_eq!(legate.stat("http.ingress.downstream_rq_http1_total"), 0);
    assert_eq!(legate.stat("cluster.svc.upstream_cx_http2_total"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_client_to_h2_upstream() {
    let up = Upstream::h2_echo("h2").await;
    let legate = Legate::start(&config(
        &route_all_to("svc"),
        &h2_cluster("svc", &[up.addr]),
    ))
    .await;
    let conn = H2Conn::open(legate.addr).await;

    let body = pattern_body(300_000);
    let req = Request::post("http://example.test/echo?q=2")
        .header("x-test", "yes")
        .body(Full::new(body.clone()))
        .unwrap();
    let (r, version) = bounded("post", conn.send(req)).await.unwrap();
    assert_eq!(version, Version::HTTP_2);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-upstream"), "h2");
    assert_eq!(r.header("x-upstream-version"), "HTTP/2.0");
    assert!(r.body == body, "body changed on the way");
    let seen = up.last();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.authority(), "example.test");
    assert_eq!(seen.path(), "/echo?q=2");
    assert_eq!(seen.headers["x-test"], "yes");

    for i in 0..5 {
        let r = bounded("get", conn.get(&format!("http://example.test/{i}")))
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
    assert_eq!(up.request_count(), 6);
    assert_eq!(
        up.connection_count(),
        1,
        "sequential requests share one h2 connection"
    );
    legate
        .wait_stat("http.ingress.downstream_rq_http2_total", 6)
        .await;
    assert!(legate.stat("cluster.svc.upstream_cx_http2_total") > 0);
    assert_eq!(legate.stat("cluster.svc.upstream_cx_http1_total"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h1_client_to_h2_upstream() {
    let up = Upstream::h2_echo("h2").await;
    let legate = Legate::start(&config(
        &route_all_to("svc"),
        &h2_cluster("svc", &[up.addr]),
    ))
    .await;
    let mut conn = Conn::open(legate.addr).await;

    let body = pattern_body(200_000);
    let req = Request::post("/echo?q=3")
        .header("host", "example.test")
        .header("x-test", "yes")
        .body(Full::new(body.clone()))
        .unwrap();
    let r = bounded("post", conn.send(req)).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-upstream"), "h2");
    assert_eq!(r.header("x-upstream-version"), "HTTP/2.0");
    assert!(r.body == body, "body changed on the way");
    let seen = up.last();
    assert_eq!(seen.authority(), "example.test", ":authority = Host");
    assert_eq!(seen.path(), "/echo?q=3");
    assert_eq!(seen.headers["x-test"], "yes");
    // Connection-specific headers must not reach an HTTP/2 upstream (RFC 9113 §8.2.2); hyper
    // would refuse to send them, so their absence is also what made the request possible.
    for h in ["connection", "keep-alive", "transfer-encoding", "upgrade"] {
        assert!(!seen.headers.contains_key(h), "{h} forwarded");
    }

    // Keep-alive on the downstream HTTP/1.1 connection still works.
    let r = bounded("get", conn.get("example.test", "/next"))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-upstream-version"), "HTTP/2.0");
    assert!(legate.stat("cluster.svc.upstream_cx_http2_total") > 0);
    assert_eq!(legate.stat("http.ingress.downstream_rq_http2_total"), 0);
}

/// `conns` downstream HTTP/2 connections to `legate`, each carrying `per_conn` concurrent
/// streams; every response must be a 200 from the upstream.
async fn concurrent_load(legate: &Legate, conns: usize, per_conn: usize) {
    let mut downstream = Vec::new();
    for _ in 0..conns {
        downstream.push(Arc::new(H2Conn::open(legate.addr).await));
    }
    let mut tasks = Vec::new();
    for (c, conn) in downstream.iter().enumerate() {
        for s in 0..per_conn {
            let conn = conn.clone();
            tasks.push(tokio::spawn(async move {
                conn.get(&format!("http://example.test/{c}/{s}")).await
            }));
        }
    }
    let mut ok = 0;
    for t in tasks {
        let r = bounded("stream", t).await.unwrap().expect("response");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-upstream-version"), "HTTP/2.0");
        ok += 1;
    }
    assert_eq!(ok, conns * per_conn);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_beyond_upstream_max_concurrent_streams_open_more_connections() {
    // The upstream takes 10 streams per connection and holds each for 100 ms; 200 streams
    // arrive at once over 20 downstream connections.
    let up = Upstream::h2_with("m", 10, Duration::from_millis(100)).await;
    let legate = Legate::start(&config(
        &route_all_to("svc"),
        &h2_cluster("svc", &[up.addr]),
    ))
    .await;
    bounded("load", concurrent_load(&legate, 20, 10)).await;
    assert_eq!(up.request_count(), 200);
    let cx = up.connection_count();
    assert!(
        cx > 1,
        "one upstream connection for 200 streams at 10 per connection"
    );
    assert!(
        cx <= 20,
        "{cx} upstream connections for 200 streams at 10 per connection"
    );
    assert_eq!(
        legate.stat("cluster.svc.upstream_cx_http2_total"),
        cx as i64
    );
    legate
        .wait_stat("http.ingress.downstream_rq_http2_total", 200)
        .await;
    legate.wait_stat("cluster.svc.upstream_rq_200", 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_within_upstream_max_concurrent_streams_share_one_connection() {
    let up = Upstream::h2_with("m", 1000, Duration::from_millis(100)).await;
    let legate = Legate::start(&config(
        &route_all_to("svc"),
        &h2_cluster("svc", &[up.addr]),
    ))
    .await;
    // One request first opens the upstream connection and lets legate learn the upstream's
    // SETTINGS (1000 streams); before them it assumes at most 100, so a cold burst of 200 may
    // open a second connection.
    let r = bounded("warm-up", get(&legate.url("/warm-up"))).await;
    assert_eq!(r.status, 200);
    bounded("load", concurrent_load(&legate, 20, 10)).await;
    assert_eq!(up.request_count(), 201);
    assert_eq!(up.connection_count(), 1);
    assert_eq!(legate.stat("cluster.svc.upstream_cx_http2_total"), 1);
}

const BIG: usize = 8 << 20;

/// `/big` answers 8 MiB, anything else a short `small`.
fn big_or_small(req: Request<hyper::body::Incoming>) -> Response<Body> {
    if req.uri().path() == "/big" {
        Response::new(full(vec![b'x'; BIG]))
    } else {
        Response::new(full("small"))
    }
}

/// One stream's response body is never read; another stream on the same downstream connection
/// must still complete promptly.
async fn stalled_stream_does_not_block_its_neighbour(upstream_h2: bool) {
    let (up, clusters) = if upstream_h2 {
        let up = Upstream::start_h2("big", None, |req| async move { big_or_small(req) }).await;
        let c = h2_cluster("svc", &[up.addr]);
        (up, c)
    } else {
        let up = Upstream::start("big", |req| async move { big_or_small(req) }).await;
        let c = cluster("svc", &[up.addr]);
        (up, c)
    };
    let legate = Legate::start(&config(&route_all_to("svc"), &clusters)).await;
    // A 64 KiB stream window stalls `/big` almost at once; the 16 MiB connection window leaves
    // plenty for the other stream.
    let conn = H2Conn::open_windows(legate.addr, 65_535, 16 << 20).await;
    let big = bounded(
        "big head",
        conn.send_head(
            Request::get("http://example.test/big")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(big.status(), 200);
    // Let legate fill the stalled stream's window and its own buffers.
    tokio::time::sleep(Duration::from_millis(300)).await;

    for i in 0..3 {
        let start = Instant::now();
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            conn.get(&format!("http://example.test/small/{i}")),
        )
        .await
        .expect("a stalled stream delayed another stream on the same connection")
        .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "small");
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    // The stalled stream is intact: reading it now yields all of it.
    let body = bounded("big body", big.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(body.len(), BIG);
    assert!(body.iter().all(|&b| b == b'x'));
    drop(up);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_stream_does_not_delay_another_stream_h1_upstream() {
    stalled_stream_does_not_block_its_neighbour(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_stream_does_not_delay_another_stream_h2_upstream() {
    stalled_stream_does_not_block_its_neighbour(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h1_and_h2_clients_share_one_listener() {
    // AUTO: the same listener serves HTTP/1.1 and h2c prior knowledge.
    let up = Upstream::h1_echo("h1").await;
    let legate = Legate::start(&config(&route_all_to("svc"), &cluster("svc", &[up.addr]))).await;
    let h2 = H2Conn::open(legate.addr).await;
    let mut h1 = Conn::open(legate.addr).await;
    for _ in 0..3 {
        let r = bounded("h2", h2.get("http://example.test/a"))
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        let r = bounded("h1", h1.get("example.test", "/b")).await.unwrap();
        assert_eq!(r.status, 200);
    }
    legate
        .wait_stat("http.ingress.downstream_rq_http2_total", 3)
        .await;
    legate
        .wait_stat("http.ingress.downstream_rq_http1_total", 3)
        .await;
}

/// An h2c upstream that sends GOAWAY (graceful: a first GOAWAY, a PING, then the real last
/// stream id) on each connection once it has taken `per_conn` requests, answering every request
/// after `delay`. It counts the requests it processed, by path.
async fn goaway_upstream(
    per_conn: usize,
    delay: Duration,
) -> (
    std::net::SocketAddr,
    Arc<std::sync::Mutex<Vec<String>>>,
    Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let processed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let conns = Arc::new(AtomicUsize::new(0));
    let (p, c) = (processed.clone(), conns.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            c.fetch_add(1, Ordering::SeqCst);
            let p = p.clone();
            tokio::spawn(async move {
                let seen = Arc::new(AtomicUsize::new(0));
                let shutdown = Arc::new(tokio::sync::Notify::new());
                let (seen2, shutdown2, p2) = (seen.clone(), shutdown.clone(), p.clone());
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let n = seen2.fetch_add(1, Ordering::SeqCst) + 1;
                    if n == per_conn {
                        shutdown2.notify_one();
                    }
                    let p = p2.clone();
                    async move {
                        tokio::time::sleep(delay).await;
                        p.lock().unwrap().push(req.uri().path().to_string());
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    }
                });
                let conn =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => return,
                    _ = shutdown.notified() => conn.as_mut().graceful_shutdown(),
                }
                let _ = conn.await;
            });
        }
    });
    (addr, processed, conns)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_goaway_mid_load_loses_nothing_and_retries_only_refused_streams() {
    let (addr, processed, conns) = goaway_upstream(7, Duration::from_millis(20)).await;
    let legate = Legate::start(&config(&route_all_to("svc"), &h2_cluster("svc", &[addr]))).await;
    let downstream = Arc::new(H2Conn::open(legate.addr).await);
    // Six waves of ten concurrent streams: each upstream connection goes away within a wave, so
    // later streams of the wave race the GOAWAY and later waves need new connections.
    for wave in 0..6 {
        let mut tasks = Vec::new();
        for i in 0..10 {
            let conn = downstream.clone();
            let path = format!("http://example.test/req/{wave}/{i}");
            tasks.push(tokio::spawn(async move { conn.get(&path).await }));
        }
        for t in tasks {
            let r = bounded("request", t).await.unwrap().expect("response");
            assert_eq!(r.status, 200, "a request was lost to GOAWAY: {}", r.text());
        }
    }
    // Every request was processed exactly once: refused streams were retried, processed ones
    // were not sent again.
    let mut paths = processed.lock().unwrap().clone();
    paths.sort();
    let before = paths.len();
    paths.dedup();
    assert_eq!(
        before, 60,
        "the upstream processed {before} requests for 60"
    );
    assert_eq!(paths.len(), 60, "a processed request was sent twice");
    assert!(
        conns.load(std::sync::atomic::Ordering::SeqCst) > 1,
        "GOAWAY after 7 requests must have made legate open new connections"
    );
}

/// An HTTP/2 upstream written frame by frame: it answers every request `200` with no body and
/// never answers a PING. Returns its address and, per connection, what it saw before EOF.
async fn mute_pinging_upstream() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<Vec<common::raw::Frame>>,
) {
    use common::raw::*;
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (done, seen) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let done = done.clone();
            tokio::spawn(async move {
                let mut h = H2 { s, buf: Vec::new() };
                let mut hello = settings(&[(0x3, 100)]);
                hello.extend(frame(SETTINGS, ACK, 0, &[]));
                h.send(&hello).await;
                let mut preface = [0u8; PREFACE.len()];
                if h.s.read_exact(&mut preface).await.is_err() {
                    return;
                }
                let mut frames = Vec::new();
                while let Some(f) = h.next(Duration::from_secs(30)).await {
                    if f.kind == HEADERS && f.flags & END_STREAM != 0 {
                        // `:status: 200` is static-table index 8.
                        h.send(&frame(HEADERS, END_HEADERS | END_STREAM, f.stream, &[0x88]))
                            .await;
                    }
                    frames.push(f);
                }
                let _ = done.send(frames);
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connection_keepalive_closes_a_peer_that_stops_answering_pings() {
    let (up, mut seen) = mute_pinging_upstream().await;
    let clusters = h2_cluster_with(
        "c",
        &[up],
        "{ connection_keepalive: { interval: 0.2s, timeout: 0.3s } }",
    );
    let legate = Legate::start(&config(&route_all_to("c"), &clusters)).await;
    assert_eq!(bounded("request", get(&legate.url("/"))).await.status, 200);
    let started = Instant::now();
    // The upstream sees PINGs, answers none, and legate closes the connection.
    let frames = bounded("upstream EOF", seen.recv())
        .await
        .expect("a connection");
    let lived = started.elapsed();
    assert!(
        frames
            .iter()
            .any(|f| f.kind == common::raw::PING && f.flags & common::raw::ACK == 0),
        "no keepalive PING reached the upstream"
    );
    assert!(
        lived < Duration::from_secs(3),
        "closed one interval plus one timeout after the request, not {lived:?}"
    );
    legate.wait_stat("cluster.c.upstream_cx_destroy", 1).await;
    // The next request opens a fresh connection.
    assert_eq!(bounded("request", get(&legate.url("/"))).await.status, 200);
}
