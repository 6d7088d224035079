//! legate's own downstream HTTP/1.1 codec (`src/http/h1`) at the edges a client notices: request
//! trailers onto HTTP/2, bodiless 204/304, answers before an upload is over, a client leaving
//! mid-body, bodies sharing a packet with the next head, `Expect: 100-continue` from a client
//! that does not wait, bytes behind a WebSocket upgrade, a drain mid-head, pipelining behind a
//! slow response, and TLS (no vectored writes). Raw clients where the bytes matter.

use crate::common;

use bytes::Bytes;
use common::h1wire::{header_values, Client, Peer, ScriptedUpstream};
use common::*;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(5);

/// Every test runs within this bound.
async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(25), f)
        .await
        .expect("test finished in time")
}

async fn proxy(vhosts: &str, clusters: &str, hcm_extra: &str) -> Legate {
    Legate::start(&config_with(vhosts, clusters, hcm_extra)).await
}

/// An upstream answering `<method> <path> <body>` (the body as it received it).
async fn body_echo() -> Upstream {
    Upstream::start("e", |req: Request<Incoming>| async move {
        let line = format!("{} {}", req.method(), req.uri().path());
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let text = format!("{line} {}", String::from_utf8_lossy(&body));
        Response::builder().body(full(text)).unwrap()
    })
    .await
}

// 1. --------------------------------------------------------------------------------------------

/// A chunked request's trailers are an HTTP/2 upstream's trailers; a chunked body without them
/// ends without any.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_trailers_reach_an_http2_upstream() {
    bounded(async {
        type Got = Arc<Mutex<Vec<(Bytes, Option<HeaderMap>)>>>;
        let got: Got = Arc::default();
        let g = got.clone();
        let up = Upstream::start_h2("h2", None, move |req: Request<Incoming>| {
            let g = g.clone();
            async move {
                let Ok(collected) = req.into_body().collect().await else {
                    return Response::builder()
                        .status(500)
                        .body(full("body failed"))
                        .unwrap();
                };
                let trailers = collected.trailers().cloned();
                let body = collected.to_bytes();
                let checksum = trailers
                    .as_ref()
                    .and_then(|t| t.get("x-checksum"))
                    .map_or("none".to_string(), |v| v.to_str().unwrap().to_string());
                g.lock().unwrap().push((body.clone(), trailers));
                Response::builder()
                    .header("x-saw-checksum", checksum)
                    .body(full(body))
                    .unwrap()
            }
        })
        .await;
        let legate = proxy(&route_all_to("h2"), &h2_cluster("h2", &[up.addr]), "").await;

        let mut c = Client::open(legate.addr).await;
        c.send(
            b"POST /sum HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\ntrailer: x-checksum\r\n\r\n\
              5\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: abc\r\n\r\n",
        )
        .await;
        let r = c.response().await.expect("an answer");
        assert_eq!(r.status, 200, "{}", r.head);
        assert_eq!(r.text(), "hello world");
        assert_eq!(r.header("x-saw-checksum"), "abc", "{}", r.head);

        // The same connection, a chunked body without trailers.
        c.send(b"POST /plain HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
            .await;
        let r = c.response().await.expect("a second answer");
        assert_eq!(r.status, 200, "{}", r.head);
        assert_eq!(r.text(), "abc");
        assert_eq!(r.header("x-saw-checksum"), "none", "{}", r.head);

        let got = got.lock().unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, "hello world");
        let trailers = got[0].1.as_ref().expect("trailers upstream");
        assert_eq!(trailers["x-checksum"], "abc");
        assert_eq!(trailers.len(), 1, "{trailers:?}");
        assert_eq!(got[1].0, "abc");
        assert!(got[1].1.is_none(), "{:?}", got[1].1);
        assert_eq!(up.request_count(), 2);
        assert_eq!(up.connection_count(), 1);
    })
    .await;
}

// 2. --------------------------------------------------------------------------------------------

/// `304` keeps the upstream's `content-length` (the representation's) and `204` has none; no
/// body bytes follow either, and the connection serves the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_modified_keeps_its_length_no_content_has_none_and_neither_has_a_body() {
    bounded(async {
        let up = ScriptedUpstream::start(|mut peer: Peer| async move {
            while let Some(req) = peer.request().await {
                peer.note(req.path().to_string());
                let answer: &[u8] = match req.path() {
                    "/304" => {
                        b"HTTP/1.1 304 Not Modified\r\netag: \"v1\"\r\ncontent-length: 5\r\n\r\n"
                    }
                    "/204" => b"HTTP/1.1 204 No Content\r\nx-s: 204\r\n\r\n",
                    // Allowed for 0 by Envoy's upstream codec, never passed on.
                    "/204-length" => b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n",
                    _ => b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nafter",
                };
                if !peer.write(answer).await {
                    return;
                }
            }
        })
        .await;
        let legate = proxy(&route_all_to("c"), &cluster("c", &[up.addr]), "").await;
        let mut c = Client::open(legate.addr).await;

        c.send(b"GET /304 HTTP/1.1\r\nhost: a\r\nif-none-match: \"v1\"\r\n\r\n")
            .await;
        let head = c.head().await.expect("the 304");
        assert!(head.starts_with("HTTP/1.1 304 Not Modified\r\n"), "{head}");
        assert_eq!(header_values(&head, "content-length"), ["5"], "{head}");
        assert_eq!(header_values(&head, "etag"), ["\"v1\""], "{head}");
        assert!(
            header_values(&head, "transfer-encoding").is_empty(),
            "{head}"
        );
        assert!(
            c.silent_for(Duration::from_millis(200)).await,
            "bytes after a 304 head: {:?}",
            String::from_utf8_lossy(&c.buf)
        );

        c.send(b"GET /204 HTTP/1.1\r\nhost: a\r\n\r\n").await;
        let head = c.head().await.expect("the 204");
        assert!(head.starts_with("HTTP/1.1 204 No Content\r\n"), "{head}");
        assert_eq!(header_values(&head, "x-s"), ["204"], "{head}");
        assert!(header_values(&head, "content-length").is_empty(), "{head}");
        assert!(
            header_values(&head, "transfer-encoding").is_empty(),
            "{head}"
        );
        assert!(
            c.silent_for(Duration::from_millis(200)).await,
            "bytes after a 204 head: {:?}",
            String::from_utf8_lossy(&c.buf)
        );

        c.send(b"GET /204-length HTTP/1.1\r\nhost: a\r\n\r\n").await;
        let head = c.head().await.expect("the 204");
        assert!(head.starts_with("HTTP/1.1 204 No Content\r\n"), "{head}");
        assert!(header_values(&head, "content-length").is_empty(), "{head}");
        assert!(
            header_values(&head, "transfer-encoding").is_empty(),
            "{head}"
        );
        assert!(
            c.silent_for(Duration::from_millis(200)).await,
            "bytes after a 204 head: {:?}",
            String::from_utf8_lossy(&c.buf)
        );

        c.send(b"GET /after HTTP/1.1\r\nhost: a\r\n\r\n").await;
        let r = c.response().await.expect("the next answer");
        assert_eq!((r.status, r.text().as_str()), (200, "after"), "{}", r.head);
        assert_eq!(up.events(), ["/304", "/204", "/204-length", "/after"]);
        assert_eq!(up.connection_count(), 1);
    })
    .await;
}

// 3. --------------------------------------------------------------------------------------------

/// 1 MiB announced, 1000 bytes sent every 20 ms (at most 100 pieces): an upload that is still
/// going when the answer comes. The counter is the number of pieces written.
fn slow_upload(
    wr: tokio::net::tcp::OwnedWriteHalf,
    path: &str,
) -> (tokio::task::JoinHandle<()>, Arc<AtomicUsize>) {
    let written = Arc::new(AtomicUsize::new(0));
    let w = written.clone();
    let head = format!("POST {path} HTTP/1.1\r\nhost: a\r\ncontent-length: 1048576\r\n\r\n");
    let task = tokio::spawn(async move {
        let mut wr = wr;
        if wr.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        for _ in 0..100 {
            if wr.write_all(&[b'x'; 1000]).await.is_err() {
                return;
            }
            w.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    (task, written)
}

/// The client side of an early answer: the upload goes on for a while before the client reads
/// anything (legate must not have reset the connection meanwhile), then the whole answer is
/// there, and then the connection closes. Another connection is served meanwhile.
async fn early_answer_to_a_slow_upload(legate: &Legate) -> h1wire::Response {
    let (rd, wr) = TcpStream::connect(legate.addr).await.unwrap().into_split();
    let (upload, written) = slow_upload(wr, "/upload");
    let mut c = Client::new(rd);
    // ~300 ms of upload after the head: the answer was sent long before.
    assert!(
        eventually(WAIT, || written.load(Ordering::SeqCst) >= 15).await,
        "the upload goes on"
    );

    // Another connection meanwhile.
    let mut other = Client::open(legate.addr).await;
    other.send(b"GET /other HTTP/1.1\r\nhost: a\r\n\r\n").await;
    let o = other
        .response()
        .await
        .expect("the other connection's answer");
    assert_eq!((o.status, o.text().as_str()), (200, "other"), "{}", o.head);

    let r = c.response().await.expect("the early answer, read whole");
    assert!(
        written.load(Ordering::SeqCst) < 100,
        "the upload was still going when the answer was read"
    );
    let (rest, closed) = c.until_close().await;
    assert!(closed, "the connection closes after the early answer");
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    upload.abort();
    r
}

/// A route's `direct_response` answers an upload that is still coming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_response_to_an_upload_in_progress_is_read_whole_then_closed() {
    bounded(async {
        let up = Upstream::start("o", |_req| async move {
            Response::builder().body(full("other")).unwrap()
        })
        .await;
        let vhost = r#"            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: "/upload" }
                direct_response: { status: 413, body: { inline_string: "too big!" } }
              - match: { prefix: "/" }
                route: { cluster: c }
"#;
        let legate = proxy(vhost, &cluster("c", &[up.addr]), "").await;
        let r = early_answer_to_a_slow_upload(&legate).await;
        assert_eq!(r.status, 413, "{}", r.head);
        assert_eq!(r.text(), "too big!");
        assert_eq!(r.header("connection"), "close", "{}", r.head);
        assert_eq!(up.request_count(), 1);
    })
    .await;
}

/// An upstream answers 413 as soon as it sees the head of an upload still coming. Envoy says
/// `connection: close` on any HTTP/1 response whose head goes out before the request is
/// complete (`downstream_rq_response_before_rq_complete`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_early_413_to_an_upload_in_progress_is_read_whole_then_closed() {
    bounded(async {
        let up = ScriptedUpstream::start(|mut peer: Peer| async move {
            while let Some(head) = peer.head().await {
                let line = head.split("\r\n").next().unwrap_or("").to_string();
                peer.note(line.clone());
                if line.starts_with("POST /upload ") {
                    peer.write(b"HTTP/1.1 413 Payload Too Large\r\nconnection: close\r\ncontent-length: 8\r\n\r\ntoo big!")
                        .await;
                    // Half-close and drain what still comes (bounded), as servers do.
                    let _ = peer.stream.shutdown().await;
                    while peer.fill().await > 0 {
                        peer.buf.clear();
                    }
                    return;
                }
                if !peer
                    .write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nother")
                    .await
                {
                    return;
                }
            }
        })
        .await;
        let legate = proxy(&route_all_to("c"), &cluster("c", &[up.addr]), "").await;
        let r = early_answer_to_a_slow_upload(&legate).await;
        assert_eq!(r.status, 413, "{}", r.head);
        assert_eq!(r.text(), "too big!");
        assert_eq!(r.header("connection"), "close", "{}", r.head);
        let events = up.events();
        assert!(
            events.contains(&"POST /upload HTTP/1.1".to_string()),
            "{events:?}"
        );
        legate
            .wait_stat("http.ingress.downstream_rq_response_before_rq_complete", 1)
            .await;
    })
    .await;
}

// 4. --------------------------------------------------------------------------------------------

/// The client closes after 1000 of 100000 body bytes: the upstream connection is closed by
/// legate (its body ends short), the request is logged `DC` and counted as a downstream reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_closing_mid_body_closes_the_upstream_and_logs_dc() {
    bounded(async {
        let received = Arc::new(AtomicUsize::new(0));
        let r = received.clone();
        let up = ScriptedUpstream::start(move |mut peer: Peer| {
            let r = r.clone();
            async move {
                let Some(head) = peer.head().await else {
                    return;
                };
                peer.note(head.split("\r\n").next().unwrap_or("").to_string());
                let mut body = peer.buf.len();
                r.store(body, Ordering::SeqCst);
                loop {
                    peer.buf.clear();
                    let n = peer.fill().await;
                    if n == 0 {
                        break;
                    }
                    body += n;
                    r.store(body, Ordering::SeqCst);
                }
                peer.note(format!("closed after {body} body bytes"));
            }
        })
        .await;
        let log = AccessLog::with_format(
            "h1codec-dc",
            "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED%",
        );
        let legate = proxy(
            &route_all_to("c"),
            &cluster("c", &[up.addr]),
            &log.hcm_extra(),
        )
        .await;

        let mut s = TcpStream::connect(legate.addr).await.unwrap();
        s.write_all(b"POST /upload HTTP/1.1\r\nhost: a\r\ncontent-length: 100000\r\n\r\n")
            .await
            .unwrap();
        s.write_all(&[b'x'; 1000]).await.unwrap();
        assert!(
            eventually(WAIT, || received.load(Ordering::SeqCst) == 1000).await,
            "the upstream got the first 1000 body bytes ({})",
            received.load(Ordering::SeqCst)
        );
        drop(s);

        assert!(
            eventually(WAIT, || up.events().len() == 2).await,
            "legate closed the upstream connection: {:?}",
            up.events()
        );
        assert_eq!(
            up.events(),
            ["POST /upload HTTP/1.1", "closed after 1000 body bytes"]
        );
        assert_eq!(log.line_with("/upload").await, "/upload 0 DC 1000");
        legate
            .wait_stat("http.ingress.downstream_rq_rx_reset", 1)
            .await;
        assert_eq!(up.connection_count(), 1);
    })
    .await;
}

// 5. --------------------------------------------------------------------------------------------

/// A `content-length` body, a chunked body with trailers, an empty one and a GET, all in one
/// write; then a body larger than a read followed by a GET, in one write: each body ends where
/// its framing says, and the requests are answered in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_and_the_next_heads_in_one_packet() {
    bounded(async {
        let up = body_echo().await;
        let legate = proxy(&route_all_to("c"), &cluster("c", &[up.addr]), "").await;
        let mut c = Client::open(legate.addr).await;
        c.send(
            b"POST /one HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\n\r\nhello\
              POST /two HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n5\r\nworld\r\n0\r\nx-t: 1\r\n\r\n\
              POST /zero HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\n\r\n\
              GET /three HTTP/1.1\r\nhost: a\r\n\r\n",
        )
        .await;
        let mut bodies = Vec::new();
        for _ in 0..4 {
            let r = c.response().await.expect("an answer");
            assert_eq!(r.status, 200, "{}", r.head);
            bodies.push(r.text());
        }
        assert_eq!(
            bodies,
            ["POST /one hello", "POST /two world", "POST /zero ", "GET /three "]
        );

        // 40000 bytes: more than one read, so the end of the body and the next head arrive
        // after legate started reading the body.
        let big = vec![b'b'; 40000];
        let mut wire = b"POST /big HTTP/1.1\r\nhost: a\r\ncontent-length: 40000\r\n\r\n".to_vec();
        wire.extend_from_slice(&big);
        wire.extend_from_slice(b"GET /four HTTP/1.1\r\nhost: a\r\n\r\n");
        c.send(&wire).await;
        let r = c.response().await.expect("the big answer");
        assert_eq!(r.status, 200, "{}", r.head);
        assert_eq!(r.body.len(), "POST /big ".len() + 40000);
        assert!(r.text() == format!("POST /big {}", String::from_utf8_lossy(&big)));
        let r = c.response().await.expect("the answer after the big body");
        assert_eq!((r.status, r.text().as_str()), (200, "GET /four "), "{}", r.head);

        let paths: Vec<String> = up.seen.lock().unwrap().iter().map(|s| s.uri.clone()).collect();
        assert_eq!(paths, ["/one", "/two", "/zero", "/three", "/big", "/four"]);
        assert_eq!(up.connection_count(), 1);
        assert!(c.silent_for(Duration::from_millis(100)).await);
    })
    .await;
}

// 6. --------------------------------------------------------------------------------------------

/// `Expect: 100-continue` with the body in the same write: at most one `100 Continue`, then the
/// answer with the body; the upstream never sees `expect`, and the connection goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_continue_from_a_client_that_does_not_wait() {
    bounded(async {
        let up = body_echo().await;
        let legate = proxy(&route_all_to("c"), &cluster("c", &[up.addr]), "").await;
        let mut c = Client::open(legate.addr).await;
        c.send(
            b"POST /up HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\nhello",
        )
        .await;
        let (interim, r) = c.final_response().await.expect("an answer");
        assert!(interim.len() <= 1, "{interim:?}");
        for i in &interim {
            assert_eq!(i, "HTTP/1.1 100 Continue\r\n\r\n");
        }
        assert_eq!(r.status, 200, "{}", r.head);
        assert_eq!(r.text(), "POST /up hello");
        let seen = up.last();
        assert!(seen.headers.get("expect").is_none(), "{:?}", seen.headers);
        assert_eq!(seen.headers["content-length"], "5");

        c.send(b"GET /next HTTP/1.1\r\nhost: a\r\n\r\n").await;
        let r = c.response().await.expect("the next answer");
        assert_eq!((r.status, r.text().as_str()), (200, "GET /next "), "{}", r.head);
        assert_eq!(up.request_count(), 2);
    })
    .await;
}

// 7. --------------------------------------------------------------------------------------------

/// Bytes the client sends right behind its upgrade request, before the `101`, reach the
/// upstream once the connection is a tunnel, before anything sent later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_bytes_behind_the_upgrade_request_reach_the_upstream() {
    bounded(async {
        let tunnel_in: Arc<Mutex<Vec<u8>>> = Arc::default();
        let t = tunnel_in.clone();
        let up = ScriptedUpstream::start(move |mut peer: Peer| {
            let t = t.clone();
            async move {
                let Some(head) = peer.head().await else {
                    return;
                };
                peer.note(head.clone());
                // Answer a moment later, so that the early bytes are surely there first.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let ok = peer
                    .write(
                        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
                          sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
                    )
                    .await;
                if !ok {
                    return;
                }
                // Echo everything after the head.
                loop {
                    if !peer.buf.is_empty() {
                        let data = std::mem::take(&mut peer.buf);
                        t.lock().unwrap().extend_from_slice(&data);
                        if !peer.write(&data).await {
                            return;
                        }
                    }
                    if peer.fill().await == 0 {
                        return;
                    }
                }
            }
        })
        .await;
        let legate = proxy(
            &route_all_to("ws"),
            &cluster("ws", &[up.addr]),
            WEBSOCKET_UPGRADE,
        )
        .await;
        let mut c = Client::open(legate.addr).await;
        c.send(
            b"GET /chat HTTP/1.1\r\nhost: a\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\
              sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n\
              early-bytes;",
        )
        .await;
        let head = c.head().await.expect("the 101");
        assert!(
            head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
            "{head}"
        );
        let echo = c.take_exact(b"early-bytes;".len()).await;
        assert_eq!(echo.as_deref(), Some(&b"early-bytes;"[..]));
        c.send(b"late").await;
        assert_eq!(c.take_exact(4).await.as_deref(), Some(&b"late"[..]));
        assert_eq!(tunnel_in.lock().unwrap().as_slice(), b"early-bytes;late");
        let events = up.events();
        assert_eq!(events.len(), 1, "{events:?}");
        assert!(events[0].starts_with("GET /chat HTTP/1.1\r\n"), "{events:?}");
        assert!(!events[0].contains("early"), "{events:?}");
        legate
            .wait_stat("http.ingress.downstream_cx_upgrades_total", 1)
            .await;
    })
    .await;
}

// 8. --------------------------------------------------------------------------------------------

/// `/drain_listeners` while request heads are half received: those connections close without a
/// byte of response, whether the half head is the connection's first or follows an exchange.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_closes_a_connection_with_a_half_received_head_silently() {
    bounded(async {
        let up = body_echo().await;
        let legate = proxy(&route_all_to("c"), &cluster("c", &[up.addr]), "").await;

        let mut used = Client::open(legate.addr).await;
        used.send(b"GET /first HTTP/1.1\r\nhost: a\r\n\r\n").await;
        let r = used.response().await.expect("an answer");
        assert_eq!(r.text(), "GET /first ");
        used.send(b"GET / HTTP/1.1\r\nho").await;
        let mut fresh = Client::open(legate.addr).await;
        fresh.send(b"GET / HTTP/1.1\r\nho").await;
        // Let legate read both.
        tokio::time::sleep(Duration::from_millis(100)).await;

        let drained = request(
            Request::post(legate.admin_url("/drain_listeners"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
        assert_eq!(drained.status, 200);
        for (name, c) in [("used", &mut used), ("fresh", &mut fresh)] {
            let (rest, closed) = c.until_close().await;
            assert!(closed, "{name}: the drain closed the connection");
            assert!(
                rest.is_empty(),
                "{name}: {:?}",
                String::from_utf8_lossy(&rest)
            );
        }
        legate
            .wait_stat("http.ingress.downstream_cx_drain_close", 2)
            .await;
        legate
            .wait_stat("http.ingress.downstream_cx_active", 0)
            .await;
        assert_eq!(up.request_count(), 1);
        assert_eq!(legate.stat("http.ingress.downstream_rq_total"), 1);
    })
    .await;
}

// 9. --------------------------------------------------------------------------------------------

/// The upstream streams a chunked response slowly; the client sends its next requests (a GET and
/// a POST with a body) before it has ended. All responses arrive whole and in order, and the
/// upstream sees the next request only after it finished the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_request_behind_a_slow_streamed_response() {
    bounded(async {
        let up = ScriptedUpstream::start(|mut peer: Peer| async move {
            while let Some(req) = peer.request().await {
                peer.note(format!("start {}", req.path()));
                if req.path() == "/slow" {
                    let mut ok = peer
                        .write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                        .await;
                    for i in 0..4 {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        let part = format!("part{i};");
                        ok &= peer
                            .write(format!("{:x}\r\n{part}\r\n", part.len()).as_bytes())
                            .await;
                    }
                    ok &= peer.write(b"0\r\n\r\n").await;
                    if !ok {
                        return;
                    }
                } else {
                    let mut answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
                        req.body.len() + 4
                    )
                    .into_bytes();
                    answer.extend_from_slice(b"fast");
                    answer.extend_from_slice(&req.body);
                    if !peer.write(&answer).await {
                        return;
                    }
                }
                peer.note(format!("end {}", req.path()));
            }
        })
        .await;
        let legate = proxy(&route_all_to("c"), &cluster("c", &[up.addr]), "").await;
        let mut c = Client::open(legate.addr).await;
        c.send(b"GET /slow HTTP/1.1\r\nhost: a\r\n\r\n").await;
        let head = c.head().await.expect("the slow response's head");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        c.send(
            b"GET /fast HTTP/1.1\r\nhost: a\r\n\r\n\
              POST /post HTTP/1.1\r\nhost: a\r\ncontent-length: 4\r\n\r\n+abc",
        )
        .await;
        assert!(
            !up.events().contains(&"end /slow".to_string()),
            "the next requests were sent while the first response was streaming"
        );
        let slow = c.body(&head).await.expect("the slow body");
        assert!(slow.chunked, "{head}");
        assert_eq!(slow.text(), "part0;part1;part2;part3;");
        let fast = c.response().await.expect("the fast response");
        assert_eq!((fast.status, fast.text().as_str()), (200, "fast"));
        let post = c.response().await.expect("the POST's response");
        assert_eq!((post.status, post.text().as_str()), (200, "fast+abc"));
        assert_eq!(
            up.events(),
            [
                "start /slow",
                "end /slow",
                "start /fast",
                "end /fast",
                "start /post",
                "end /post"
            ]
        );
        assert_eq!(up.connection_count(), 1);
    })
    .await;
}

// 10. -------------------------------------------------------------------------------------------

const TLS_LEN: usize = 200 * 1024;

/// Chunk sizes around the codec's 16 KiB coalescing limit.
const CHUNK_SIZES: [usize; 9] = [1, 100, 4096, 16383, 16384, 16385, 30000, 7, 65536];

/// Over TLS (a stream that cannot write vectors, so small frames are copied next to their
/// framing): a streamed chunked download, a `content-length` download written in pieces, and
/// `content-length` and chunked uploads echoed back, all ~200 KiB, byte-exact, one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_over_tls_streams_bodies_byte_exact_both_ways() {
    bounded(async {
        let up = ScriptedUpstream::start(|mut peer: Peer| async move {
            let body = pattern_body(TLS_LEN);
            while let Some(req) = peer.request().await {
                peer.note(format!("{} {}", req.path(), req.body.len()));
                let mut ok = true;
                match req.path() {
                    "/chunked" => {
                        ok &= peer
                            .write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                            .await;
                        let (mut at, mut i) = (0, 0);
                        while at < TLS_LEN && ok {
                            let n = CHUNK_SIZES[i % CHUNK_SIZES.len()].min(TLS_LEN - at);
                            let mut chunk = format!("{n:x}\r\n").into_bytes();
                            chunk.extend_from_slice(&body[at..at + n]);
                            chunk.extend_from_slice(b"\r\n");
                            ok &= peer.write(&chunk).await;
                            at += n;
                            i += 1;
                        }
                        ok &= peer.write(b"0\r\n\r\n").await;
                    }
                    "/length" => {
                        ok &= peer
                            .write(
                                format!("HTTP/1.1 200 OK\r\ncontent-length: {TLS_LEN}\r\n\r\n")
                                    .as_bytes(),
                            )
                            .await;
                        let (mut at, mut i) = (0, 0);
                        while at < TLS_LEN && ok {
                            let n = CHUNK_SIZES[i % CHUNK_SIZES.len()].min(TLS_LEN - at);
                            ok &= peer.write(&body[at..at + n]).await;
                            at += n;
                            i += 1;
                        }
                    }
                    _ => {
                        let mut answer =
                            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", req.body.len())
                                .into_bytes();
                        answer.extend_from_slice(&req.body);
                        ok &= peer.write(&answer).await;
                    }
                }
                if !ok {
                    return;
                }
            }
        })
        .await;
        let ca = TestCa::new("h1codec");
        let cert = ca.server_cert(&["h1.example.com"]);
        let chains = chain_item(&chain_body(
            "",
            &downstream_tls(&[&cert], "", ""),
            &hcm_to("tls", "up", ""),
        ));
        let legate = Legate::start(&listener_bootstrap(
            "",
            &chains,
            &cluster("up", &[up.addr]),
        ))
        .await;
        let tls = tls_connect(
            legate.addr,
            "h1.example.com",
            tls_client_config(Some(&ca), None, &["http/1.1"]),
        )
        .await
        .expect("TLS handshake");
        let mut c = Client::new(tls);
        let want = pattern_body(TLS_LEN);

        c.send(b"GET /chunked HTTP/1.1\r\nhost: h1.example.com\r\n\r\n")
            .await;
        let r = c.response().await.expect("the chunked download");
        assert_eq!(r.status, 200, "{}", r.head);
        assert!(r.chunked, "{}", r.head);
        assert_eq!(r.body.len(), TLS_LEN);
        assert!(r.body == want, "the chunked download differs");

        c.send(b"GET /length HTTP/1.1\r\nhost: h1.example.com\r\n\r\n")
            .await;
        let r = c.response().await.expect("the content-length download");
        assert_eq!(r.status, 200, "{}", r.head);
        assert_eq!(r.header("content-length"), TLS_LEN.to_string());
        assert!(r.body == want, "the content-length download differs");

        let mut upload =
            format!("POST /echo HTTP/1.1\r\nhost: h1.example.com\r\ncontent-length: {TLS_LEN}\r\n\r\n")
                .into_bytes();
        upload.extend_from_slice(&want);
        c.send(&upload).await;
        let r = c.response().await.expect("the echoed upload");
        assert_eq!(r.status, 200, "{}", r.head);
        assert_eq!(r.body.len(), TLS_LEN);
        assert!(r.body == want, "the echoed upload differs");

        c.send(b"POST /echo-chunked HTTP/1.1\r\nhost: h1.example.com\r\ntransfer-encoding: chunked\r\n\r\n")
            .await;
        let (mut at, mut i) = (0, 0);
        while at < TLS_LEN {
            let n = CHUNK_SIZES[i % CHUNK_SIZES.len()].min(TLS_LEN - at);
            let mut chunk = format!("{n:x}\r\n").into_bytes();
            chunk.extend_from_slice(&want[at..at + n]);
            chunk.extend_from_slice(b"\r\n");
            c.send(&chunk).await;
            at += n;
            i += 1;
        }
        c.send(b"0\r\n\r\n").await;
        let r = c.response().await.expect("the echoed chunked upload");
        assert_eq!(r.status, 200, "{}", r.head);
        assert_eq!(r.body.len(), TLS_LEN);
        assert!(r.body == want, "the echoed chunked upload differs");

        assert_eq!(
            up.events(),
            [
                "/chunked 0".to_string(),
                "/length 0".to_string(),
                format!("/echo {TLS_LEN}"),
                format!("/echo-chunked {TLS_LEN}"),
            ]
        );
        assert_eq!(up.connection_count(), 1);
        legate.wait_stat("listener.edge.ssl.handshake", 1).await;
    })
    .await;
}
