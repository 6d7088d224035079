//! Hostile HTTP/1.1 input: every bad request gets its answer and its stat, the upstream never
//! sees it, and other clients are served meanwhile.

use crate::common;

use common::raw::{self, exchange, status};
use common::*;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(3);

async fn proxy(hcm_extra: &str) -> (Upstream, Legate) {
    let up = Upstream::echo("a").await;
    let legate = Legate::start(&config_with(
        &route_all_to("c"),
        &cluster("c", &[up.addr]),
        hcm_extra,
    ))
    .await;
    (up, legate)
}

/// The request targets the upstream received, in order.
fn seen_uris(up: &Upstream) -> Vec<String> {
    up.seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.uri.clone())
        .collect()
}

/// A well-behaved client on its own connection is served.
async fn others_served(legate: &Legate) {
    let r = get(&legate.url("/ok")).await;
    assert_eq!(r.status, 200);
}

/// Send `bytes` (followed by a canary request on the same socket) and expect `want` and a
/// closed connection; the canary must never be answered.
async fn rejected(legate: &Legate, bytes: &[u8], want: u16) -> String {
    let mut all = bytes.to_vec();
    all.extend_from_slice(b"GET /canary HTTP/1.1\r\nhost: a\r\n\r\n");
    let text = exchange(legate.addr, &all, WAIT).await;
    assert_eq!(status(&text), want, "{text}");
    assert_eq!(
        text.matches("HTTP/1.1 ").count(),
        1,
        "one answer, then close: {text}"
    );
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    text
}

#[tokio::test]
async fn content_length_with_chunked_is_400_and_closes() {
    let (up, legate) = proxy("").await;
    rejected(
        &legate,
        b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        400,
    )
    .await;
    rejected(
        &legate,
        b"POST /x HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        400,
    )
    .await;
    legate.wait_stat("http.ingress.downstream_rq_4xx", 2).await;
    assert_eq!(legate.stat("http.ingress.downstream_cx_protocol_error"), 2);
    others_served(&legate).await;
    // Only the well-behaved request reached the upstream.
    assert_eq!(up.request_count(), 1);
}

#[tokio::test]
async fn allow_chunked_length_forwards_chunked_only() {
    let (up, legate) =
        proxy("          http_protocol_options: { allow_chunked_length: true }").await;
    let text = exchange(
        legate.addr,
        b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        WAIT,
    )
    .await;
    assert_eq!(status(&text), 200, "{text}");
    assert!(
        text.ends_with("abc") || text.contains("\r\nabc\r\n"),
        "{text}"
    );
    let seen = up.last();
    // Never both framings upstream.
    assert!(
        seen.headers.get("content-length").is_none(),
        "{:?}",
        seen.headers
    );
}

#[tokio::test]
async fn malformed_framing_is_400_and_closes() {
    let (up, legate) = proxy("").await;
    let cases: [&[u8]; 6] = [
        // Two different lengths.
        b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd",
        // A sign is not a length.
        b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: +3\r\n\r\nabc",
        // A list is not a length.
        b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 3, 3\r\n\r\nabc",
        // obs-fold.
        b"GET / HTTP/1.1\r\nhost: a\r\nx-a: b\r\n c\r\n\r\n",
        // Bare CR in a value and at a line end.
        b"GET / HTTP/1.1\r\nhost: a\r\nx-a: b\rc\r\n\r\n",
        b"GET / HTTP/1.1\rhost: a\r\n\r\n",
    ];
    for c in cases {
        rejected(&legate, c, 400).await;
    }
    legate.wait_stat("http.ingress.downstream_rq_400", 6).await;
    others_served(&legate).await;
    assert_eq!(up.request_count(), 1);
}

#[tokio::test]
async fn transfer_encoding_other_than_chunked_is_501() {
    let (up, legate) = proxy("").await;
    for te in ["gzip", "gzip, chunked", "chunked, chunked", "identity"] {
        let req = format!(
            "POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: {te}\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        );
        rejected(&legate, req.as_bytes(), 501).await;
    }
    legate.wait_stat("http.ingress.downstream_rq_501", 4).await;
    others_served(&legate).await;
    assert_eq!(up.request_count(), 1);
}

#[tokio::test]
async fn invalid_chunk_after_forwarding_aborts_the_upstream_request() {
    let (up, legate) = proxy("").await;
    // A good request first, so the upstream connection is pooled.
    others_served(&legate).await;
    assert_eq!(up.connection_count(), 1);
    for bad in ["zz", "0x3", "fffffffffffffffff1", "3\n"] {
        let mut s = TcpStream::connect(legate.addr).await.unwrap();
        s.write_all(
            b"POST /up HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n",
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        s.write_all(
            format!("{bad}\r\nxyz\r\n0\r\n\r\nGET /canary HTTP/1.1\r\nhost: a\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let (text, closed) = raw::read_until_close(&mut s, WAIT).await;
        assert!(closed, "{bad}: connection closed");
        assert!(!text.contains("canary"), "{text}");
        let code = status(&text);
        // Either legate answered 400 before the upstream's response started, or the response
        // had started and the connection was cut; never a 2xx that looks complete.
        assert!(
            code == 400
                || code == 0
                || text.contains("transfer-encoding: chunked") && !text.ends_with("0\r\n\r\n"),
            "{bad}: {text}"
        );
    }
    legate
        .wait_stat("http.ingress.downstream_cx_protocol_error", 4)
        .await;
    // The aborted requests' upstream connections were discarded, never reused.
    let before = up.connection_count();
    others_served(&legate).await;
    assert!(up.connection_count() >= 2, "{before}");
    assert!(up.seen.lock().unwrap().iter().all(|s| s.uri != "/canary"));
}

#[tokio::test]
async fn header_limits_431_and_uri_414() {
    let (up, legate) = proxy(
        "          max_request_headers_kb: 2\n          max_request_uri_kb: 1\n          common_http_protocol_options: { max_headers_count: 10 }",
    )
    .await;
    let big = format!(
        "GET / HTTP/1.1\r\nhost: a\r\nx-big: {}\r\n\r\n",
        "v".repeat(3000)
    );
    rejected(&legate, big.as_bytes(), 431).await;
    let mut many = String::from("GET / HTTP/1.1\r\nhost: a\r\n");
    for i in 0..11 {
        many.push_str(&format!("x-h{i}: 1\r\n"));
    }
    many.push_str("\r\n");
    rejected(&legate, many.as_bytes(), 431).await;
    let long = format!("GET /{} HTTP/1.1\r\nhost: a\r\n\r\n", "p".repeat(1100));
    rejected(&legate, long.as_bytes(), 414).await;
    legate.wait_stat("http.ingress.downstream_rq_431", 2).await;
    legate.wait_stat("http.ingress.downstream_rq_414", 1).await;
    others_served(&legate).await;
    assert_eq!(up.request_count(), 1);
}

#[tokio::test]
async fn underscores_drop_or_reject() {
    let (up, legate) = proxy(
        "          common_http_protocol_options: { headers_with_underscores_action: DROP_HEADER }",
    )
    .await;
    let text = exchange(
        legate.addr,
        b"GET / HTTP/1.1\r\nhost: a\r\nx_secret: 1\r\nconnection: close\r\n\r\n",
        WAIT,
    )
    .await;
    assert_eq!(status(&text), 200);
    assert!(up.last().headers.get("x_secret").is_none());
    assert_eq!(legate.stat("http1.dropped_headers_with_underscores"), 1);

    let (up, legate) = proxy(
        "          common_http_protocol_options: { headers_with_underscores_action: REJECT_REQUEST }",
    )
    .await;
    rejected(
        &legate,
        b"GET / HTTP/1.1\r\nhost: a\r\nx_secret: 1\r\n\r\n",
        400,
    )
    .await;
    assert_eq!(
        legate.stat("http1.requests_rejected_with_underscores_in_headers"),
        1
    );
    others_served(&legate).await;
    assert_eq!(up.request_count(), 1);
}

#[tokio::test]
async fn host_is_required_once_and_absolute_form_wins() {
    let up = Upstream::echo("a").await;
    let other = Upstream::echo("b").await;
    let vhosts = format!(
        "{}            - name: target\n              domains: [\"target.example\"]\n              routes:\n              - match: {{ prefix: \"/\" }}\n                route: {{ cluster: t }}\n",
        route_all_to("c")
    );
    let clusters = format!(
        "{}{}",
        cluster("c", &[up.addr]),
        cluster("t", &[other.addr])
    );
    let legate = Legate::start(&config(&vhosts, &clusters)).await;
    rejected(&legate, b"GET / HTTP/1.1\r\n\r\n", 400).await;
    rejected(
        &legate,
        b"GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n",
        400,
    )
    .await;
    legate.wait_stat("http.ingress.downstream_rq_400", 2).await;
    assert_eq!(up.request_count(), 0);
    // Absolute form: routed on the target's authority, Host rebuilt from it.
    let text = exchange(
        legate.addr,
        b"GET http://target.example/p HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
        WAIT,
    )
    .await;
    assert_eq!(status(&text), 200, "{text}");
    let seen = other.last();
    assert_eq!(seen.headers["host"], "target.example");
    assert_eq!(seen.uri, "/p");
    others_served(&legate).await;
}

#[tokio::test]
async fn smuggling_adjacent_headers_never_reach_the_upstream() {
    let (up, legate) = proxy("").await;
    let text = exchange(
        legate.addr,
        b"GET / HTTP/1.1\r\nhost: a\r\nconnection: upgrade, http2-settings, x-hop\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAAQCAAAAAAIAAAAA\r\nx-hop: secret\r\nkeep-alive: 5\r\n\r\n",
        Duration::from_millis(500),
    )
    .await;
    assert_eq!(status(&text), 200, "{text}");
    let seen = up.last();
    for h in [
        "connection",
        "upgrade",
        "http2-settings",
        "x-hop",
        "keep-alive",
    ] {
        assert!(
            seen.headers.get(h).is_none(),
            "{h} reached the upstream: {:?}",
            seen.headers
        );
    }
    // HTTP2-Settings not named by Connection is dropped too.
    let _ = exchange(
        legate.addr,
        b"GET / HTTP/1.1\r\nhost: a\r\nhttp2-settings: AAMA\r\nconnection: close\r\n\r\n",
        WAIT,
    )
    .await;
    assert!(up.last().headers.get("http2-settings").is_none());
}

#[tokio::test]
async fn pipelined_smuggle_after_a_good_request_is_refused() {
    let (up, legate) = proxy("").await;
    let mut s = TcpStream::connect(legate.addr).await.unwrap();
    s.write_all(
        b"GET /first HTTP/1.1\r\nhost: a\r\n\r\nPOST /second HTTP/1.1\r\nhost: a\r\ncontent-length: 6\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: a\r\n\r\n",
    )
    .await
    .unwrap();
    let (all, closed) = raw::read_until_close(&mut s, WAIT).await;
    assert!(closed, "{all}");
    // The good request is answered, then the smuggling attempt, then the connection ends.
    let first = all.find("HTTP/1.1 200 ").expect("first answered");
    let second = all.find("HTTP/1.1 400 ").expect("second refused");
    assert!(first < second, "{all}");
    assert_eq!(all.matches("HTTP/1.1 ").count(), 2, "{all}");
    assert_eq!(seen_uris(&up), ["/first"]);
}

/// An upgrade the upstream does not take (a 200, not a 101) leaves the connection HTTP/1.1:
/// what follows on it is still checked like any request (here: past `max_headers_count`, 431),
/// never passed on unchecked as if it were a tunnel.
#[tokio::test]
async fn a_declined_upgrade_keeps_the_connection_checked() {
    let (up, legate) =
        proxy("          common_http_protocol_options: { max_headers_count: 5 }").await;
    let mut s = TcpStream::connect(legate.addr).await.unwrap();
    s.write_all(b"GET /upgrade HTTP/1.1\r\nhost: a\r\nupgrade: foo\r\nconnection: upgrade\r\n\r\n")
        .await
        .unwrap();
    let first = raw::read_response(&mut s, WAIT)
        .await
        .expect("first answer");
    assert_eq!(status(&first), 200, "{first}");
    s.write_all(
        b"GET /many HTTP/1.1\r\nhost: a\r\nx-1: 1\r\nx-2: 2\r\nx-3: 3\r\nx-4: 4\r\nx-5: 5\r\n\r\n",
    )
    .await
    .unwrap();
    let second = raw::read_response(&mut s, WAIT)
        .await
        .expect("second answer");
    assert_eq!(status(&second), 431, "{second}");
    assert_eq!(seen_uris(&up), ["/upgrade"]);
}

/// CONNECT has no path for a route to match (Envoy answers 404 unless a `connect_matcher`
/// route takes it): never forwarded, and the connection goes on serving HTTP/1.1.
#[tokio::test]
async fn connect_is_404_and_the_connection_stays_http() {
    let (up, legate) = proxy("").await;
    let mut s = TcpStream::connect(legate.addr).await.unwrap();
    s.write_all(b"CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\n\r\n")
        .await
        .unwrap();
    let first = raw::read_response(&mut s, WAIT)
        .await
        .expect("CONNECT answered");
    assert_eq!(status(&first), 404, "{first}");
    s.write_all(b"GET /after HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let second = raw::read_response(&mut s, WAIT)
        .await
        .expect("next answered");
    assert_eq!(status(&second), 200, "{second}");
    assert_eq!(seen_uris(&up), ["/after"]);
    legate.wait_stat("http.ingress.no_route", 1).await;
}

#[tokio::test]
async fn malformed_upstream_responses_are_502_and_discarded() {
    use tokio::io::AsyncReadExt;
    // An upstream that answers each connection's request with the next canned response.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c2 = conns.clone();
    let responses: Vec<Vec<u8>> = vec![
        b"HTTP/1.1 2x0 OK\r\ncontent-length: 0\r\n\r\n".to_vec(),
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"
            .to_vec(),
        format!(
            "HTTP/1.1 200 OK\r\nx-big: {}\r\ncontent-length: 0\r\n\r\n",
            "v".repeat(90 * 1024)
        )
        .into_bytes(),
        {
            let mut r = b"HTTP/1.1 200 OK\r\n".to_vec();
            for i in 0..120 {
                r.extend_from_slice(format!("x-h{i}: 1\r\n").as_bytes());
            }
            r.extend_from_slice(b"content-length: 0\r\n\r\n");
            r
        },
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
    ];
    let task = tokio::spawn(async move {
        for resp in responses {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            c2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await;
                let _ = s.write_all(&resp).await;
                tokio::time::sleep(Duration::from_secs(2)).await;
            });
        }
    });
    let legate = Legate::start(&config(&route_all_to("c"), &cluster("c", &[addr]))).await;
    for i in 0..4 {
        let r = get(&legate.url("/")).await;
        assert_eq!(r.status, 502, "case {i}: {}", r.text());
        // Each bad response cost its connection: the next request dials anew.
        assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), i + 1);
    }
    let r = get(&legate.url("/")).await;
    assert_eq!(r.status, 200);
    assert_eq!(legate.stat("http.ingress.downstream_rq_502"), 4);
    task.abort();
}

#[tokio::test]
async fn grpc_local_replies_are_trailers_only() {
    let legate = Legate::start(&config(
        "            - name: none\n              domains: [\"nothing.example\"]\n              routes:\n              - match: { prefix: \"/\" }\n                direct_response: { status: 200 }\n",
        &cluster("c", &[]),
    ))
    .await;
    let req = http::Request::post(legate.url("/pkg.Svc/Method"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let r = request(req).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), "application/grpc");
    // 404 (no route) maps to UNIMPLEMENTED.
    assert_eq!(r.header("grpc-status"), "12");
    assert!(r.body.is_empty());
}
