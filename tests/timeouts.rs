//! Slow and silent peers are bounded: request heads, whole requests, idle streams, idle
//! connections, the HTTP/2 preface and readers that stop reading. Others are served meanwhile.

use crate::common;

use bytes::Bytes;
use common::raw::{self, exchange, status, H2};
use common::*;
use http_body_util::BodyExt;
use std::future::Future;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(3);

async fn proxy_to(up: &Upstream, hcm_extra: &str, route_timeout: &str) -> Legate {
    let vhost = format!(
        "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {{ prefix: \"/\" }}\n                route: {{ cluster: c, timeout: {route_timeout} }}\n"
    );
    Legate::start(&config_with(&vhost, &cluster("c", &[up.addr]), hcm_extra)).await
}

/// An upstream that reads the whole request body, then answers `ok` (or hangs on `/hang`).
async fn collecting_upstream() -> Upstream {
    Upstream::start(
        "slow",
        |req: http::Request<hyper::body::Incoming>| async move {
            let hang = req.uri().path() == "/hang";
            let _ = req.into_body().collect().await;
            if hang {
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
            http::Response::new(full("ok"))
        },
    )
    .await
}

#[tokio::test]
async fn request_headers_timeout_answers_408() {
    let up = Upstream::echo("a").await;
    let legate = proxy_to(&up, "          request_headers_timeout: 0.3s", "15s").await;
    let start = Instant::now();
    let mut slow = TcpStream::connect(legate.addr).await.unwrap();
    // Slowloris: a byte at a time, never finishing the head.
    let trickle = async {
        for b in b"GET / HTTP/1.1\r\nhost: a\r\nx-slow: ".iter() {
            if slow.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let served = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        get(&legate.url("/")).await.status
    };
    let (_, other) = tokio::join!(trickle, served);
    assert_eq!(other, 200);
    let (text, closed) = raw::read_until_close(&mut slow, WAIT).await;
    assert!(closed);
    assert_eq!(status(&text), 408, "{text}");
    assert!(text.ends_with("request header timeout"), "{text}");
    assert!(start.elapsed() < Duration::from_secs(2));
    legate
        .wait_stat("http.ingress.downstream_rq_header_timeout", 1)
        .await;
    assert_eq!(up.request_count(), 1);
}

#[tokio::test]
async fn stream_idle_timeout_before_response_headers() {
    let up = collecting_upstream().await;
    let legate = proxy_to(&up, "          stream_idle_timeout: 0.3s", "0s").await;
    // The request is complete and the upstream is silent: 504.
    let r = get(&legate.url("/hang")).await;
    assert_eq!(r.status, 504);
    assert_eq!(r.text(), "stream timeout");
    // The request body stalls: 408.
    let text = exchange(
        legate.addr,
        b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 10\r\n\r\nabc",
        WAIT,
    )
    .await;
    assert_eq!(status(&text), 408, "{text}");
    legate
        .wait_stat("http.ingress.downstream_rq_idle_timeout", 2)
        .await;
    assert_eq!(get(&legate.url("/")).await.status, 200);
}

#[tokio::test]
async fn stream_idle_timeout_after_response_headers_resets() {
    let up = Upstream::start("stall", |_req| async {
        // Headers and a first chunk, then nothing.
        http::Response::new(
            Stall {
                sent: false,
                sleep: Box::pin(tokio::time::sleep(Duration::from_secs(10))),
            }
            .boxed(),
        )
    })
    .await;
    let legate = proxy_to(&up, "          stream_idle_timeout: 0.3s", "0s").await;
    let start = Instant::now();
    let text = exchange(legate.addr, b"GET / HTTP/1.1\r\nhost: a\r\n\r\n", WAIT).await;
    assert_eq!(status(&text), 200, "{text}");
    assert!(text.contains("first"));
    // Cut short: never the chunked terminator of a complete response.
    assert!(!text.ends_with("0\r\n\r\n"), "{text}");
    assert!(start.elapsed() < Duration::from_secs(2));
    legate
        .wait_stat("http.ingress.downstream_rq_idle_timeout", 1)
        .await;
    legate
        .wait_stat("http.ingress.downstream_rq_tx_reset", 1)
        .await;
}

/// A body that sends one chunk and then stalls.
struct Stall {
    sent: bool,
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl http_body::Body for Stall {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        if !self.sent {
            self.sent = true;
            return std::task::Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(
                b"first",
            )))));
        }
        std::task::ready!(self.sleep.as_mut().poll(cx));
        std::task::Poll::Ready(None)
    }
}

#[tokio::test]
async fn request_timeout_bounds_a_trickled_body() {
    let up = collecting_upstream().await;
    let legate = proxy_to(
        &up,
        "          request_timeout: 0.4s\n          stream_idle_timeout: 0.3s",
        "0s",
    )
    .await;
    let mut s = TcpStream::connect(legate.addr).await.unwrap();
    s.write_all(b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 100\r\n\r\n")
        .await
        .unwrap();
    // A byte every 100 ms keeps the stream from idling out; the whole request still may not
    // take longer than request_timeout.
    for _ in 0..10 {
        if s.write_all(b"x").await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (text, _) = raw::read_until_close(&mut s, WAIT).await;
    assert_eq!(status(&text), 408, "{text}");
    assert!(text.ends_with("request timeout"), "{text}");
    legate
        .wait_stat("http.ingress.downstream_rq_timeout", 1)
        .await;
    assert_eq!(legate.stat("http.ingress.downstream_rq_idle_timeout"), 0);
    assert_eq!(get(&legate.url("/")).await.status, 200);
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let up = Upstream::echo("a").await;
    let legate = proxy_to(
        &up,
        "          common_http_protocol_options: { idle_timeout: 0.3s }",
        "15s",
    )
    .await;
    // HTTP/1.1: one request, then silence.
    let mut conn = Conn::open(legate.addr).await;
    assert_eq!(conn.get("a", "/").await.unwrap().status, 200);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(conn.get("a", "/").await.is_err(), "closed while idle");
    // A connection that never sends anything.
    let mut silent = TcpStream::connect(legate.addr).await.unwrap();
    let (_, closed) = raw::read_until_close(&mut silent, Duration::from_secs(2)).await;
    assert!(closed);
    // HTTP/2: GOAWAY, then close.
    let mut h2 = H2::connect(legate.addr).await;
    let goaway = h2
        .until(Duration::from_secs(2), |f| f.kind == raw::GOAWAY)
        .await;
    assert!(goaway.is_some());
    legate
        .wait_stat("http.ingress.downstream_cx_idle_timeout", 3)
        .await;
}

#[tokio::test]
async fn http2_preface_is_bounded() {
    let up = Upstream::echo("a").await;
    let legate = proxy_to(
        &up,
        "          codec_type: HTTP2\n          request_headers_timeout: 0.3s",
        "15s",
    )
    .await;
    let start = Instant::now();
    let mut s = TcpStream::connect(legate.addr).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let (_, closed) = raw::read_until_close(&mut s, WAIT).await;
    assert!(closed);
    assert!(start.elapsed() < Duration::from_secs(2));

    // AUTO: a partial preface is also an unfinished HTTP/1 head.
    let legate = proxy_to(&up, "          request_headers_timeout: 0.3s", "15s").await;
    let text = exchange(legate.addr, b"PRI * HTTP/2.0\r\n", WAIT).await;
    assert_eq!(status(&text), 408, "{text}");
}

#[tokio::test]
async fn a_reader_that_stops_reading_is_cut_off() {
    let up = Upstream::start("big", |_req| async {
        http::Response::new(full(vec![b'x'; 16 << 20]))
    })
    .await;
    let legate = proxy_to(&up, "          stream_idle_timeout: 0.3s", "0s").await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(legate.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    // Read nothing; the proxy gives up on this stream after the idle timeout.
    legate
        .wait_stat("http.ingress.downstream_rq_idle_timeout", 1)
        .await;
    let (text, closed) = raw::read_until_close(&mut s, Duration::from_secs(5)).await;
    assert!(closed);
    assert!(text.len() < 16 << 20);
    assert_eq!(get(&legate.url("/small")).await.status, 200);
}
