//! The downstream HTTP/1.1 server as a raw client sees it: `date`, HTTP/1.0, `Expect:
//! 100-continue`, client disconnects, EOF mid-head, `Connection: close`, HEAD, pipelining, unusual
//! request targets and reason phrases. These pin today's wire behaviour so that a new codec
//! cannot change it silently.

use crate::common;

use bytes::Bytes;
use common::h1wire::{self, header_values};
use common::raw::{self, find, read_until_close};
use common::*;
use http::Response;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(3);

async fn proxy_to(up: SocketAddr, hcm_extra: &str) -> Legate {
    Legate::start(&config_with(
        &route_all_to("c"),
        &cluster("c", &[up]),
        hcm_extra,
    ))
    .await
}

/// A virtual host whose only route is `prefix: /routed` (anything else is 404 NR).
fn only_routed(cluster: &str) -> String {
    format!(
        r#"            - name: narrow
              domains: ["*"]
              routes:
              - match: {{ prefix: "/routed" }}
                route: {{ cluster: {cluster} }}
"#
    )
}

/// An upstream answering 200 with the request path as its body.
async fn path_echo() -> Upstream {
    Upstream::start(
        "p",
        |req: http::Request<hyper::body::Incoming>| async move {
            let path = req.uri().path().to_string();
            Response::builder().body(full(path)).unwrap()
        },
    )
    .await
}

/// The shared raw client, answering `(head, body text)` as these tests read responses.
struct Client(h1wire::Client);

impl Client {
    async fn open(addr: SocketAddr) -> Client {
        Client(h1wire::Client::open(addr).await)
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.0.send(bytes).await
    }

    /// The next head (through the empty line), without any body.
    async fn head(&mut self) -> Option<String> {
        self.0.head().await
    }

    async fn response(&mut self) -> Option<(String, String)> {
        self.0.response().await.map(|r| (r.head.clone(), r.text()))
    }

    /// Whether the server closes (EOF or reset) with nothing more sent.
    async fn closes_silently(&mut self) -> bool {
        let (rest, closed) = self.0.until_close().await;
        closed && rest.is_empty()
    }
}

fn status_line(text: &str) -> &str {
    text.split("\r\n").next().unwrap_or("")
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` (RFC 9110 IMF-fixdate).
fn is_imf_fixdate(v: &str) -> bool {
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let b = v.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    b.len() == 29
        && DAYS.contains(&&v[0..3])
        && &v[3..5] == ", "
        && digits(5..7)
        && b[7] == b' '
        && MONTHS.contains(&&v[8..11])
        && b[11] == b' '
        && digits(12..16)
        && b[16] == b' '
        && digits(17..19)
        && b[19] == b':'
        && digits(20..22)
        && b[22] == b':'
        && digits(23..25)
        && &v[25..] == " GMT"
}

/// A raw HTTP/1.1 upstream: records each request head it reads, answers it with `answer` (or
/// never, for `None`), and counts connections that the peer closed.
struct RawUpstream {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    closed: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawUpstream {
    async fn start(answer: Option<&'static [u8]>) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let closed = Arc::new(AtomicUsize::new(0));
        let (h, c) = (heads.clone(), closed.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                let (h, c) = (h.clone(), c.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut tmp = [0u8; 4096];
                    // Bounded: a test never keeps an upstream connection longer than this.
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                    loop {
                        match tokio::time::timeout_at(deadline, s.read(&mut tmp)).await {
                            Ok(Ok(0)) | Ok(Err(_)) => {
                                c.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                            Err(_) => return,
                            Ok(Ok(n)) => buf.extend_from_slice(&tmp[..n]),
                        }
                        // Bodiless requests only.
                        while let Some(end) = find(&buf, b"\r\n\r\n") {
                            let head: Vec<u8> = buf.drain(..end + 4).collect();
                            h.lock()
                                .unwrap()
                                .push(String::from_utf8_lossy(&head).into_owned());
                            if let Some(a) = answer {
                                let _ = s.write_all(a).await;
                            }
                        }
                    }
                });
            }
        });
        RawUpstream {
            addr,
            heads,
            closed,
            task,
        }
    }

    fn head_count(&self) -> usize {
        self.heads.lock().unwrap().len()
    }
}

// 1. --------------------------------------------------------------------------------------------

#[tokio::test]
async fn date_header_on_proxied_responses_and_local_replies() {
    // An upstream without `date` and one with its own.
    let bare = RawUpstream::start(Some(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")).await;
    let dated = RawUpstream::start(Some(
        b"HTTP/1.1 200 OK\r\ndate: Sun, 06 Nov 1994 08:49:37 GMT\r\ncontent-length: 2\r\n\r\nok",
    ))
    .await;
    let vhost = r#"            - name: narrow
              domains: ["*"]
              routes:
              - match: { prefix: "/bare" }
                route: { cluster: bare }
              - match: { prefix: "/dated" }
                route: { cluster: dated }
"#;
    let clusters = cluster("bare", &[bare.addr]) + &cluster("dated", &[dated.addr]);
    let legate = Legate::start(&config(vhost, &clusters)).await;
    let mut c = Client::open(legate.addr).await;

    // legate adds its own.
    c.send(b"GET /bare HTTP/1.1\r\nhost: a\r\n\r\n").await;
    let (head, _) = c.response().await.expect("proxied response");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let dates = header_values(&head, "date");
    assert_eq!(dates.len(), 1, "{head}");
    assert!(is_imf_fixdate(&dates[0]), "{head}");

    // The upstream's is passed through, not replaced or doubled.
    c.send(b"GET /dated HTTP/1.1\r\nhost: a\r\n\r\n").await;
    let (head, _) = c.response().await.expect("proxied response");
    assert_eq!(
        header_values(&head, "date"),
        vec!["Sun, 06 Nov 1994 08:49:37 GMT"],
        "{head}"
    );

    // A local reply (no route) has one too.
    c.send(b"GET /nowhere HTTP/1.1\r\nhost: a\r\n\r\n").await;
    let (head, _) = c.response().await.expect("local reply");
    assert!(head.starts_with("HTTP/1.1 404 Not Found\r\n"), "{head}");
    let dates = header_values(&head, "date");
    assert_eq!(dates.len(), 1, "{head}");
    assert!(is_imf_fixdate(&dates[0]), "{head}");
    assert_eq!((bare.head_count(), dated.head_count()), (1, 1));
}

// 2. --------------------------------------------------------------------------------------------

/// `http_protocol_options.accept_http_10: true`: HTTP/1.0 is served.
const ACCEPT_HTTP_10: &str = "          http_protocol_options: { accept_http_10: true }";

/// Envoy's default: an HTTP/1.0 request gets 426 (`low_version`, flag `DPE`) and the
/// connection closes; nothing reaches the upstream. With `default_host_for_http_10`, a
/// Host-less HTTP/1.0 request is routed by that host.
#[tokio::test]
async fn http10_is_426_unless_accepted() {
    let up = Upstream::echo("a").await;
    let log = AccessLog::with_format(
        "http10",
        "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%",
    );
    let legate = proxy_to(up.addr, &log.hcm_extra()).await;
    let text = raw::exchange(legate.addr, b"GET /old HTTP/1.0\r\nhost: a\r\n\r\n", WAIT).await;
    // The status line is in the request's version (see `http10_is_answered_and_closed`).
    assert!(text.starts_with("HTTP/1.0 426 "), "{text}");
    assert_eq!(up.request_count(), 0);
    assert_eq!(log.line_with("/old").await, "/old 426 DPE low_version");

    let legate = proxy_to(
        up.addr,
        "          http_protocol_options: { accept_http_10: true, default_host_for_http_10: old.example }",
    )
    .await;
    let text = raw::exchange(legate.addr, b"GET /hostless HTTP/1.0\r\n\r\n", WAIT).await;
    assert!(text.starts_with("HTTP/1.0 200 "), "{text}");
    assert_eq!(up.last().headers["host"], "old.example");
}

#[tokio::test]
async fn http10_is_answered_and_closed() {
    let up = Upstream::echo("a").await;
    let legate = proxy_to(up.addr, ACCEPT_HTTP_10).await;

    // Without keep-alive: one answer, then close.
    let mut c = Client::open(legate.addr).await;
    c.send(b"GET /one HTTP/1.0\r\nhost: a\r\n\r\n").await;
    let (head, _) = c.response().await.expect("answer");
    // Today the status line echoes the request's version (Envoy always writes HTTP/1.1).
    assert_eq!(status_line(&head), "HTTP/1.0 200 OK", "{head}");
    assert!(c.closes_silently().await, "closed after the response");

    // With `Connection: keep-alive` (ApacheBench's `-k`): the answer says keep-alive, as
    // Envoy's does, and the connection serves the next request.
    let mut c = Client::open(legate.addr).await;
    c.send(b"GET /two HTTP/1.0\r\nhost: a\r\nconnection: keep-alive\r\n\r\n")
        .await;
    let (head, _) = c.response().await.expect("answer");
    assert_eq!(status_line(&head), "HTTP/1.0 200 OK", "{head}");
    assert_eq!(
        header_values(&head, "connection"),
        vec!["keep-alive"],
        "{head}"
    );
    c.send(b"GET /three HTTP/1.0\r\nhost: a\r\nconnection: keep-alive\r\n\r\n")
        .await;
    let (head, _) = c
        .response()
        .await
        .expect("second answer on the same connection");
    assert_eq!(status_line(&head), "HTTP/1.0 200 OK", "{head}");
    // The last request without keep-alive closes it.
    c.send(b"GET /four HTTP/1.0\r\nhost: a\r\n\r\n").await;
    let (head, _) = c.response().await.expect("third answer");
    assert!(header_values(&head, "connection").is_empty(), "{head}");
    assert!(c.closes_silently().await, "closed after the response");
    assert_eq!(up.request_count(), 4);
}

#[tokio::test]
async fn http10_unknown_length_is_close_delimited() {
    let up = RawUpstream::start(Some(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ))
    .await;
    let legate = proxy_to(up.addr, ACCEPT_HTTP_10).await;
    let mut s = TcpStream::connect(legate.addr).await.unwrap();
    // Even when keep-alive is asked for: without a length, only the close can end the body.
    s.write_all(b"GET / HTTP/1.0\r\nhost: a\r\nconnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    let (text, closed) = read_until_close(&mut s, WAIT).await;
    assert!(closed, "{text}");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    assert_eq!(status_line(head), "HTTP/1.0 200 OK", "{head}");
    assert!(
        header_values(head, "transfer-encoding").is_empty(),
        "{head}"
    );
    assert!(header_values(head, "content-length").is_empty(), "{head}");
    assert!(header_values(head, "connection").is_empty(), "{head}");
    assert_eq!(body, "hello");
}

// 3. --------------------------------------------------------------------------------------------

#[tokio::test]
async fn expect_100_continue_is_answered_and_not_forwarded() {
    let up = Upstream::echo("a").await;
    let legate = Legate::start(&config(&only_routed("c"), &cluster("c", &[up.addr]))).await;

    let mut c = Client::open(legate.addr).await;
    c.send(
        b"POST /routed HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n",
    )
    .await;
    let interim = c
        .head()
        .await
        .expect("100 Continue before the body is sent");
    assert_eq!(interim, "HTTP/1.1 100 Continue\r\n\r\n");
    c.send(b"hello").await;
    let (head, body) = c.response().await.expect("final response");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!(body, "hello");
    let seen = up.last();
    assert!(seen.headers.get("expect").is_none(), "{:?}", seen.headers);
    assert_eq!(seen.headers["content-length"], "5");

    // A local reply: no 100 first.
    let mut c = Client::open(legate.addr).await;
    c.send(
        b"POST /nowhere HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n",
    )
    .await;
    let head = c.head().await.expect("local reply");
    assert!(head.starts_with("HTTP/1.1 404 Not Found\r\n"), "{head}");
    assert_eq!(up.request_count(), 1);
}

// 4. --------------------------------------------------------------------------------------------

#[tokio::test]
async fn client_disconnect_closes_the_upstream_and_logs_dc() {
    let up = RawUpstream::start(None).await;
    let log = AccessLog::new("dc");
    let legate = proxy_to(up.addr, &log.hcm_extra()).await;

    let mut s = TcpStream::connect(legate.addr).await.unwrap();
    s.write_all(b"GET /hang HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    assert!(
        eventually(WAIT, || up.head_count() == 1).await,
        "the request reached the upstream"
    );
    drop(s);
    assert!(
        eventually(Duration::from_secs(5), || up.closed.load(Ordering::SeqCst)
            == 1)
        .await,
        "legate closed the upstream connection"
    );
    let line = log.line_with("/hang").await;
    assert!(line.contains(" DC "), "{line}");
    legate
        .wait_stat("http.ingress.downstream_rq_rx_reset", 1)
        .await;
}

// 5. --------------------------------------------------------------------------------------------

#[tokio::test]
async fn eof_mid_head_closes_without_a_response() {
    let up = Upstream::echo("a").await;
    let legate = proxy_to(up.addr, "").await;
    let mut s = TcpStream::connect(legate.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n").await.unwrap();
    s.shutdown().await.unwrap();
    let (text, closed) = read_until_close(&mut s, WAIT).await;
    assert!(closed, "legate closes");
    assert_eq!(text, "", "no response today");
    assert_eq!(up.request_count(), 0);
    assert_eq!(up.connection_count(), 0);
}

// 6. --------------------------------------------------------------------------------------------

#[tokio::test]
async fn connection_close_is_echoed_and_honoured() {
    let up = Upstream::echo("a").await;
    let legate = proxy_to(up.addr, "").await;
    let mut c = Client::open(legate.addr).await;
    c.send(b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
        .await;
    let (head, _) = c.response().await.expect("answer");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
    assert!(c.closes_silently().await, "closed after the response");
}

// 7. --------------------------------------------------------------------------------------------

#[tokio::test]
async fn head_keeps_the_upstream_length_without_a_body() {
    let up = Upstream::start("h", |_req| async move {
        Response::builder()
            .body(full(Bytes::from_static(b"0123456789")))
            .unwrap()
    })
    .await;
    let legate = proxy_to(up.addr, "").await;
    let mut c = Client::open(legate.addr).await;
    c.send(b"HEAD /x HTTP/1.1\r\nhost: a\r\n\r\n").await;
    let head = c.head().await.expect("HEAD answer");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!(header_values(&head, "content-length"), vec!["10"], "{head}");
    // No body bytes: the next thing on the connection is the next response.
    c.send(b"GET /x HTTP/1.1\r\nhost: a\r\n\r\n").await;
    let (head, body) = c.response().await.expect("next answer");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!(body, "0123456789");
    assert_eq!(up.request_count(), 2);
    assert_eq!(up.last().method, "GET");
}

// 8. --------------------------------------------------------------------------------------------

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let up = path_echo().await;
    let legate = proxy_to(up.addr, "").await;
    let mut c = Client::open(legate.addr).await;
    c.send(b"GET /one HTTP/1.1\r\nhost: a\r\n\r\nGET /two HTTP/1.1\r\nhost: a\r\n\r\n")
        .await;
    let (h1, b1) = c.response().await.expect("first answer");
    let (h2, b2) = c.response().await.expect("second answer");
    assert!(h1.starts_with("HTTP/1.1 200 OK\r\n"), "{h1}");
    assert!(h2.starts_with("HTTP/1.1 200 OK\r\n"), "{h2}");
    assert_eq!((b1.as_str(), b2.as_str()), ("/one", "/two"));
    // Still open for a third.
    c.send(b"GET /three HTTP/1.1\r\nhost: a\r\n\r\n").await;
    let (_, b3) = c.response().await.expect("third answer");
    assert_eq!(b3, "/three");
}

// 9. --------------------------------------------------------------------------------------------

#[tokio::test]
async fn authority_form_get_is_rejected() {
    let up = path_echo().await;
    let legate = proxy_to(up.addr, "").await;
    let text = raw::exchange(
        legate.addr,
        b"GET example.com:80 HTTP/1.1\r\nhost: example.com\r\n\r\n",
        WAIT,
    )
    .await;
    assert_eq!(raw::status(&text), 400, "{text}");
    assert_eq!(up.request_count(), 0);
}

#[tokio::test]
async fn asterisk_form_options_is_404_and_not_forwarded() {
    let up = path_echo().await;
    let legate = proxy_to(up.addr, "").await;
    let mut c = Client::open(legate.addr).await;
    c.send(b"OPTIONS * HTTP/1.1\r\nhost: a\r\n\r\n").await;
    let (head, _) = c.response().await.expect("answer");
    assert!(head.starts_with("HTTP/1.1 404 Not Found\r\n"), "{head}");
    assert_eq!(up.request_count(), 0);
    // The connection still serves.
    c.send(b"GET /after HTTP/1.1\r\nhost: a\r\n\r\n").await;
    let (_, body) = c.response().await.expect("next answer");
    assert_eq!(body, "/after");
}

// 10. -------------------------------------------------------------------------------------------

#[tokio::test]
async fn nonstandard_status_reason_phrase() {
    let up = RawUpstream::start(Some(
        b"HTTP/1.1 299 Whatever\r\ncontent-length: 2\r\n\r\nok",
    ))
    .await;
    let legate = proxy_to(up.addr, "").await;
    let mut c = Client::open(legate.addr).await;
    c.send(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").await;
    let (head, body) = c.response().await.expect("answer");
    // The upstream's phrase is not passed on; a code without a standard phrase gets Envoy's
    // `Unknown`.
    assert_eq!(status_line(&head), "HTTP/1.1 299 Unknown", "{head}");
    assert_eq!(body, "ok");
}
