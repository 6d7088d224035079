//! How legate speaks HTTP/1.1 to upstream servers, pinned byte for byte: response framing
//! (Content-Length, chunked with extensions and trailers, read-until-close, HEAD, 1xx, 204/304),
//! connection reuse and when it must not happen, the request bytes an upstream receives, and
//! malformed or misbehaving upstreams. The upstreams are scripted on raw TCP so every byte on
//! the wire is the test's choice; the clients are real hyper clients.

use crate::common;
use common::*;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------------------------------------
// A scripted upstream: raw TCP, every connection numbered, every request recorded as read.

/// One request as the upstream read it off the wire.
#[derive(Debug, Clone)]
struct RawRequest {
    /// Which accepted connection it came on (0 = the first).
    conn: usize,
    /// The request line, e.g. `GET /p HTTP/1.1`.
    line: String,
    /// Header fields in arrival order, names lowercased, values as sent.
    headers: Vec<(String, String)>,
    /// The body after undoing the transfer coding.
    body: Vec<u8>,
    /// The body came with `Transfer-Encoding: chunked`.
    chunked: bool,
}

impl RawRequest {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn path(&self) -> &str {
        self.line.split(' ').nth(1).unwrap_or("")
    }
}

/// The upstream's end of one connection.
struct Peer {
    stream: TcpStream,
    buf: Vec<u8>,
    conn: usize,
    seen: Arc<Mutex<Vec<RawRequest>>>,
    marks: Arc<AtomicUsize>,
}

/// Every read by a scripted upstream gives up after this long.
const READ_WAIT: Duration = Duration::from_secs(10);

impl Peer {
    /// Read more bytes into the buffer; false on EOF, error or timeout.
    async fn fill(&mut self) -> bool {
        let mut tmp = [0u8; 16384];
        match tokio::time::timeout(READ_WAIT, self.stream.read(&mut tmp)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => false,
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&tmp[..n]);
                true
            }
        }
    }

    /// The next CRLF-terminated line (without the CRLF).
    async fn line(&mut self) -> Option<String> {
        loop {
            if let Some(at) = raw::find(&self.buf, b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..at]).into_owned();
                self.buf.drain(..at + 2);
                return Some(line);
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    async fn take(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            if !self.fill().await {
                return None;
            }
        }
        Some(self.buf.drain(..n).collect())
    }

    /// Read a request head only (the body stays unread).
    async fn head(&mut self) -> Option<RawRequest> {
        let line = self.line().await?;
        let mut headers = Vec::new();
        loop {
            let h = self.line().await?;
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':')?;
            headers.push((k.to_ascii_lowercase(), v.trim().to_string()));
        }
        Some(RawRequest {
            conn: self.conn,
            line,
            headers,
            body: Vec::new(),
            chunked: false,
        })
    }

    /// Read a whole request (a Content-Length or chunked body, decoded) and record it.
    async fn request(&mut self) -> Option<RawRequest> {
        let mut req = self.head().await?;
        if req
            .header("transfer-encoding")
            .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
        {
            req.chunked = true;
            loop {
                let size_line = self.line().await?;
                let size = size_line.split(';').next().unwrap_or("").trim();
                let size = usize::from_str_radix(size, 16).ok()?;
                if size == 0 {
                    // Trailers up to the blank line.
                    while !self.line().await?.is_empty() {}
                    break;
                }
                let data = self.take(size).await?;
                req.body.extend_from_slice(&data);
                if self.take(2).await? != b"\r\n" {
                    return None;
                }
            }
        } else if let Some(len) = req.header("content-length") {
            let len: usize = len.parse().ok()?;
            req.body = self.take(len).await?;
        }
        self.seen.lock().unwrap().push(req.clone());
        Some(req)
    }

    async fn write(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
        let _ = self.stream.flush().await;
    }

    /// Tell the test that the script reached a point (see [`Scripted::wait_marks`]).
    fn mark(&self) {
        self.marks.fetch_add(1, Ordering::SeqCst);
    }

    /// Send FIN (the socket closes when the script ends).
    async fn close(&mut self) {
        let _ = self.stream.shutdown().await;
    }
}

/// What a [`Scripted::responder`] does with one request.
struct Answer {
    /// Written one after the other, with a short pause between (separate TCP segments).
    writes: Vec<Vec<u8>>,
    /// Close the connection afterwards (whatever the response said).
    close: bool,
}

fn keep(bytes: impl AsRef<[u8]>) -> Answer {
    Answer {
        writes: vec![bytes.as_ref().to_vec()],
        close: false,
    }
}

fn close(bytes: impl AsRef<[u8]>) -> Answer {
    Answer {
        writes: vec![bytes.as_ref().to_vec()],
        close: true,
    }
}

/// `HTTP/1.1 200` with a Content-Length body.
fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

struct Scripted {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<RawRequest>>>,
    marks: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Scripted {
    /// Every accepted connection runs `script`.
    async fn start<F, Fut>(script: F) -> Scripted
    where
        F: Fn(Peer) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let marks = Arc::new(AtomicUsize::new(0));
        let (c, s, m) = (connections.clone(), seen.clone(), marks.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let peer = Peer {
                    stream,
                    buf: Vec::new(),
                    conn: c.fetch_add(1, Ordering::SeqCst),
                    seen: s.clone(),
                    marks: m.clone(),
                };
                tokio::spawn(script(peer));
            }
        });
        Scripted {
            addr,
            connections,
            seen,
            marks,
            task,
        }
    }

    /// A keep-alive server: each request read whole gets `respond(&request)`; the connection
    /// stays open until the answer says close or the peer goes away.
    async fn responder<F>(respond: F) -> Scripted
    where
        F: Fn(&RawRequest) -> Answer + Send + Sync + 'static,
    {
        let respond = Arc::new(respond);
        Scripted::start(move |mut peer| {
            let respond = respond.clone();
            async move {
                while let Some(req) = peer.request().await {
                    let answer = respond(&req);
                    for (i, w) in answer.writes.iter().enumerate() {
                        if i > 0 {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        peer.write(w).await;
                    }
                    if answer.close {
                        peer.close().await;
                        return;
                    }
                }
            }
        })
        .await
    }

    fn connection_count(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn requests(&self) -> Vec<RawRequest> {
        self.seen.lock().unwrap().clone()
    }

    /// The connection index each recorded request came on, in order.
    fn conns(&self) -> Vec<usize> {
        self.requests().iter().map(|r| r.conn).collect()
    }

    async fn wait_marks(&self, n: usize) {
        let marks = self.marks.clone();
        assert!(
            eventually(Duration::from_secs(10), || marks.load(Ordering::SeqCst)
                >= n)
            .await,
            "the upstream script reached mark {n}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// legate and the clients.

async fn proxy(up: &Scripted) -> Legate {
    Legate::start(&config(&route_all_to("up"), &cluster("up", &[up.addr]))).await
}

/// Every test runs within this bound.
async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("test finished in time")
}

/// A request on `conn`, bounded in time; the response read whole.
async fn send(conn: &mut Conn, req: Request<Full<Bytes>>) -> Result<Reply, hyper::Error> {
    tokio::time::timeout(Duration::from_secs(15), conn.send(req))
        .await
        .expect("answer in time")
}

async fn get_on(conn: &mut Conn, path: &str) -> Reply {
    send(
        conn,
        Request::get(path)
            .header("host", "h")
            .body(empty())
            .unwrap(),
    )
    .await
    .expect("a response")
}

fn empty() -> Full<Bytes> {
    Full::new(Bytes::new())
}

type Chunks = tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, std::convert::Infallible>>;
type Streamed = StreamBody<
    tokio_stream::wrappers::ReceiverStream<Result<Frame<Bytes>, std::convert::Infallible>>,
>;

/// What a streaming request got back: the status and headers, then the body or its error.
struct StreamedReply {
    status: StatusCode,
    headers: HeaderMap,
    body: Result<Bytes, hyper::Error>,
}

/// Send `req` on a new connection with a body streamed from `chunks` (hyper sends it chunked
/// unless the request carries a Content-Length).
async fn send_streamed(
    addr: SocketAddr,
    req: http::request::Builder,
    chunks: Chunks,
) -> Result<StreamedReply, hyper::Error> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Streamed>(TokioIo::new(stream))
            .await
            .unwrap();
    let conn_task = tokio::spawn(conn);
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(chunks));
    let out = tokio::time::timeout(Duration::from_secs(20), async {
        let resp = sender.send_request(req.body(body).unwrap()).await?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map(|b| b.to_bytes());
        Ok(StreamedReply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    })
    .await
    .expect("the streamed exchange ends in time");
    conn_task.abort();
    out
}

/// Feed `pieces` into a streaming body, one frame each; stops when the body is dropped.
fn feed(pieces: Vec<Bytes>) -> Chunks {
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::spawn(async move {
        for p in pieces {
            if tx.send(Ok(Frame::data(p))).await.is_err() {
                return;
            }
        }
    });
    rx
}

const PROTOCOL_ERROR_BODY: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: protocol error";

// ---------------------------------------------------------------------------------------------
// 1. Content-Length.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_body_and_one_upstream_connection_for_two_requests() {
    bounded(async {
        let up = Scripted::responder(|req| keep(ok(&format!("hello {}", req.path())))).await;
        let legate = proxy(&up).await;
        let mut conn = Conn::open(legate.addr).await;
        for path in ["/one", "/two"] {
            let r = get_on(&mut conn, path).await;
            assert_eq!(r.status, 200);
            assert_eq!(r.text(), format!("hello {path}"));
            assert_eq!(r.header("content-length"), (6 + path.len()).to_string());
        }
        assert_eq!(up.connection_count(), 1);
        assert_eq!(up.conns(), vec![0, 0]);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 2. Chunked, split at awkward places.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_body_with_extensions_split_across_writes() {
    bounded(async {
        let up = Scripted::responder(|_req| Answer {
            writes: vec![
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec(),
                // A chunk extension, a chunk whose data is split.
                b"5;ext=1\r\nhel".to_vec(),
                b"lo\r\n".to_vec(),
                // The chunk-size line split in the middle of the number (0x10 = 16).
                b"1".to_vec(),
                b"0;name=\"quoted value\"\r\n0123456789abcdef\r\n".to_vec(),
                // The CRLF after chunk data split.
                b"3\r\nabc\r".to_vec(),
                b"\n".to_vec(),
                // Uppercase hex, then the last chunk split from its final CRLF.
                b"A\r\nXXXXXXXXXX\r\n0\r\n".to_vec(),
                b"\r\n".to_vec(),
            ],
            close: false,
        })
        .await;
        let legate = proxy(&up).await;
        let mut conn = Conn::open(legate.addr).await;
        for _ in 0..2 {
            let r = get_on(&mut conn, "/chunked").await;
            assert_eq!(r.status, 200);
            assert_eq!(r.text(), "hello0123456789abcdefabcXXXXXXXXXX");
            // Passed on as a stream of unknown length, as Envoy does.
            assert_eq!(r.header("transfer-encoding"), "chunked");
            assert_eq!(r.header("content-length"), "");
        }
        assert_eq!(
            up.conns(),
            vec![0, 0],
            "the chunked response was read to its end"
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 3. Chunked with trailers.

async fn trailers_upstream() -> Scripted {
    Scripted::responder(|_req| {
        keep(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-trailer\r\n\r\n\
             4\r\nwith\r\n9\r\n trailers\r\n0\r\nx-trailer: v\r\nx-other: w\r\n\r\n",
        )
    })
    .await
}

/// An HTTP/1.1 client that did not ask for trailers (`TE: trailers`) gets the body whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_body_with_trailers() {
    bounded(async {
        let up = trailers_upstream().await;
        let legate = proxy(&up).await;
        let mut conn = Conn::open(legate.addr).await;
        for _ in 0..2 {
            let r = get_on(&mut conn, "/trailers").await;
            assert_eq!(r.status, 200);
            assert_eq!(r.text(), "with trailers");
        }
        assert_eq!(up.requests().len(), 2);
    })
    .await;
}

/// A response that ends with trailers is complete: Envoy logs it without flags and keeps the
/// connection. (With hyper's client the trailers frame was the body's last, the downstream
/// codec dropped the body without polling it to its end, and the request was logged `DC` and
/// its connection closed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_body_with_trailers_completes_and_is_reused() {
    bounded(async {
        let up = trailers_upstream().await;
        let log = AccessLog::new("trailers");
        let legate = Legate::start(&config_with(
            &route_all_to("up"),
            &cluster("up", &[up.addr]),
            &log.hcm_extra(),
        ))
        .await;
        let mut conn = Conn::open(legate.addr).await;
        for path in ["/t1", "/t2"] {
            let r = get_on(&mut conn, path).await;
            assert_eq!(
                (r.status, r.text().as_str()),
                (StatusCode::OK, "with trailers")
            );
        }
        let line = log.line_with("/t1").await;
        assert!(line.contains(" 200 - "), "{line}");
        assert_eq!(legate.stat("http.ingress.downstream_rq_rx_reset"), 0);
        // The trailer section was consumed with the message: the connection was reused.
        assert_eq!(up.conns(), vec![0, 0]);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 4. Read until close.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_delimited_by_close_then_a_new_connection() {
    bounded(async {
        let up = Scripted::responder(|req| {
            close(format!(
                "HTTP/1.1 200 OK\r\nx-path: {}\r\n\r\nread until close {}",
                req.path(),
                "z".repeat(3000)
            ))
        })
        .await;
        let legate = proxy(&up).await;
        let mut conn = Conn::open(legate.addr).await;
        for path in ["/a", "/b"] {
            let r = get_on(&mut conn, path).await;
            assert_eq!(r.status, 200);
            assert_eq!(r.header("x-path"), path);
            assert_eq!(r.text(), format!("read until close {}", "z".repeat(3000)));
        }
        assert_eq!(up.conns(), vec![0, 1]);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 5. Connection: close and HTTP/1.0.

/// The upstream keeps serving after answers that announce a close: only legate's own reading of
/// the response keeps it from reusing the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_response_is_not_reused() {
    bounded(async {
        let up = Scripted::responder(|req| match req.path() {
            "/close" => {
                keep("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 5\r\n\r\nclose")
            }
            "/http10" => keep("HTTP/1.0 200 OK\r\ncontent-length: 6\r\n\r\nhttp10"),
            _ => keep(ok("fine")),
        })
        .await;
        let legate = proxy(&up).await;
        let mut conn = Conn::open(legate.addr).await;
        let r = get_on(&mut conn, "/close").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "close");
        // Hop-by-hop: the downstream connection is not closed because the upstream's was.
        assert_eq!(r.header("connection"), "");
        let r = get_on(&mut conn, "/next").await;
        assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "fine"));
        assert_eq!(up.conns(), vec![0, 1]);

        let r = get_on(&mut conn, "/http10").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "http10");
        assert_eq!(r.header("connection"), "");
        let r = get_on(&mut conn, "/next").await;
        assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "fine"));
        // /http10 reused connection 1 (it was fine), then HTTP/1.0 without keep-alive ended it.
        assert_eq!(up.conns(), vec![0, 1, 1, 2]);
        let http10 = &up.requests()[2];
        assert_eq!(http10.line, "GET /http10 HTTP/1.1");
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 6. 1xx before the final response.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn informational_responses_are_skipped() {
    bounded(async {
        let up = Scripted::responder(|req| match req.path() {
            "/100" => keep(
                "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nx-final: yes\r\ncontent-length: 5\r\n\r\nfinal",
            ),
            "/103" => Answer {
                writes: vec![
                    b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n".to_vec(),
                    b"HTTP/1.1 200 OK\r\nx-final: yes\r\ncontent-length: 5\r\n\r\nhints".to_vec(),
                ],
                close: false,
            },
            _ => keep(ok("after")),
        })
        .await;
        let legate = proxy(&up).await;
        let mut conn = Conn::open(legate.addr).await;
        let r = get_on(&mut conn, "/100").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-final"), "yes");
        assert_eq!(r.text(), "final");
        let r = get_on(&mut conn, "/103").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-final"), "yes");
        assert_eq!(r.text(), "hints");
        let r = get_on(&mut conn, "/after").await;
        assert_eq!(r.text(), "after");
        assert_eq!(up.conns(), vec![0, 0, 0]);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 7. HEAD.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_response_has_no_body_and_the_connection_is_reused() {
    bounded(async {
        let up = Scripted::responder(|req| {
            if req.line.starts_with("HEAD ") {
                keep("HTTP/1.1 200 OK\r\ncontent-length: 100\r\nx-head: 1\r\n\r\n")
            } else {
                keep(ok("after head"))
            }
        })
        .await;
        let legate = proxy(&up).await;
        let mut conn = Conn::open(legate.addr).await;
        let r = send(
            &mut conn,
            Request::head("/h")
                .header("host", "h")
                .body(empty())
                .unwrap(),
        )
        .await
        .expect("a response");
        assert_eq!(r.status, 200);
        assert!(r.body.is_empty());
        assert_eq!(r.header("x-head"), "1");
        assert_eq!(r.header("content-length"), "100");
        let r = get_on(&mut conn, "/g").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "after head");
        assert_eq!(up.conns(), vec![0, 0]);
        assert_eq!(up.requests()[0].line, "HEAD /h HTTP/1.1");
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 8. 204 and 304.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_content_and_not_modified_are_bodiless_and_reused() {
    bounded(async {
        let up = Scripted::responder(|req| match req.path() {
            "/204" => keep("HTTP/1.1 204 No Content\r\nx-s: 204\r\n\r\n"),
            // A 304 may carry the Content-Length of the representation; no body follows.
            "/304" => {
                keep("HTTP/1.1 304 Not Modified\r\netag: \"v1\"\r\ncontent-length: 5\r\n\r\n")
            }
            _ => keep(ok("after")),
        })
        .await;
        let legate = proxy(&up).await;
        let mut conn = Conn::open(legate.addr).await;
        let r = get_on(&mut conn, "/204").await;
        assert_eq!(r.status, 204);
        assert_eq!(r.header("x-s"), "204");
        assert!(r.body.is_empty());
        let r = get_on(&mut conn, "/304").await;
        assert_eq!(r.status, 304);
        assert_eq!(r.header("etag"), "\"v1\"");
        assert!(r.body.is_empty());
        let r = get_on(&mut conn, "/after").await;
        assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "after"));
        assert_eq!(up.conns(), vec![0, 0, 0]);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 9. The request as the upstream sees it.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_line_host_and_bodies_as_the_upstream_sees_them() {
    bounded(async {
        let up = Scripted::responder(|_req| keep(ok("ok"))).await;
        let legate = proxy(&up).await;
        let mut conn = Conn::open(legate.addr).await;

        let r = send(
            &mut conn,
            Request::get("/path?q=1")
                .header("host", "example.com")
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200);
        let get = up.requests().pop().unwrap();
        assert_eq!(get.line, "GET /path?q=1 HTTP/1.1");
        assert_eq!(get.header("host"), Some("example.com"));
        assert_eq!(get.header("transfer-encoding"), None);
        assert_eq!(get.header("content-length"), None);
        assert!(get.body.is_empty());

        let r = send(
            &mut conn,
            Request::post("/post")
                .header("host", "example.com")
                .body(Full::new(Bytes::from_static(b"hello world")))
                .unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200);
        let post = up.requests().pop().unwrap();
        assert_eq!(post.line, "POST /post HTTP/1.1");
        assert_eq!(post.header("content-length"), Some("11"));
        assert_eq!(post.header("transfer-encoding"), None);
        assert!(!post.chunked);
        assert_eq!(post.body, b"hello world");

        // POST with an empty body (more in `empty_post_reaches_the_upstream_bodiless`).
        let r = send(
            &mut conn,
            Request::post("/empty")
                .header("host", "example.com")
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200);
        let empty_post = up.requests().pop().unwrap();
        assert_eq!(empty_post.line, "POST /empty HTTP/1.1");
        assert!(matches!(
            empty_post.header("content-length"),
            None | Some("0")
        ));
        assert_eq!(empty_post.header("transfer-encoding"), None);
        assert!(empty_post.body.is_empty());
        assert_eq!(up.conns(), vec![0, 0, 0]);

        // A body of unknown length goes upstream chunked, decoded byte-exact.
        let pieces: Vec<Bytes> = ["streamed ", "body ", "in ", "pieces"]
            .iter()
            .map(|s| Bytes::from_static(s.as_bytes()))
            .collect();
        let r = send_streamed(
            legate.addr,
            Request::post("/chunked").header("host", "example.com"),
            feed(pieces),
        )
        .await
        .expect("a response");
        assert_eq!(r.status, 200);
        assert_eq!(r.body.expect("whole body"), "ok");
        let chunked = up.requests().pop().unwrap();
        assert_eq!(chunked.line, "POST /chunked HTTP/1.1");
        assert_eq!(chunked.header("transfer-encoding"), Some("chunked"));
        assert_eq!(chunked.header("content-length"), None);
        assert!(chunked.chunked);
        assert_eq!(chunked.body, b"streamed body in pieces");
    })
    .await;
}

/// The three ways a downstream sends a POST without a body: hyper's client with an empty body,
/// raw bytes with `content-length: 0`, and raw bytes with no framing header at all (an HTTP/1.1
/// request without Content-Length or Transfer-Encoding has an empty body).
async fn empty_posts(legate: &Legate) {
    let mut conn = Conn::open(legate.addr).await;
    let r = send(
        &mut conn,
        Request::post("/hyper")
            .header("host", "h")
            .body(empty())
            .unwrap(),
    )
    .await
    .expect("a response");
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "ok"));
    for (path, framing) in [("/explicit", "content-length: 0\r\n"), ("/bare", "")] {
        let mut s = TcpStream::connect(legate.addr).await.unwrap();
        s.write_all(format!("POST {path} HTTP/1.1\r\nhost: h\r\n{framing}\r\n").as_bytes())
            .await
            .unwrap();
        let resp = raw::read_response(&mut s, Duration::from_secs(10))
            .await
            .expect("a response");
        assert_eq!(raw::status(&resp), 200, "{resp}");
        assert!(resp.ends_with("\r\n\r\nok"), "{resp}");
    }
}

/// What the upstream gets for an empty POST: no body, no transfer-encoding, and the downstream's
/// `content-length: 0` when it sent one (the exact header for the other cases is pinned by the
/// test below).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_post_reaches_the_upstream_bodiless() {
    bounded(async {
        let up = Scripted::responder(|_req| keep(ok("ok"))).await;
        let legate = proxy(&up).await;
        empty_posts(&legate).await;
        let seen = up.requests();
        assert_eq!(seen.len(), 3);
        for (req, path) in seen.iter().zip(["/hyper", "/explicit", "/bare"]) {
            assert_eq!(req.line, format!("POST {path} HTTP/1.1"));
            assert_eq!(req.header("transfer-encoding"), None, "{path}");
            if path == "/explicit" {
                assert_eq!(req.header("content-length"), Some("0"), "{req:?}");
            } else {
                assert!(
                    matches!(req.header("content-length"), None | Some("0")),
                    "{path}: {req:?}"
                );
            }
            assert!(req.body.is_empty(), "{path}");
        }
    })
    .await;
}

/// Envoy's HTTP/1 codec writes `content-length: 0` on a request that ends with its headers
/// unless the method has no body by definition (GET, HEAD, ...), and keeps a Content-Length the
/// downstream sent; RFC 9110 §8.6 says a user agent SHOULD send it for methods that define
/// content. Some servers answer a POST without it with 411 Length Required.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_post_reaches_the_upstream_with_content_length_zero() {
    bounded(async {
        let up = Scripted::responder(|_req| keep(ok("ok"))).await;
        let legate = proxy(&up).await;
        empty_posts(&legate).await;
        let seen = up.requests();
        assert_eq!(seen.len(), 3);
        let lengths: Vec<(&str, Option<&str>)> = seen
            .iter()
            .map(|r| (r.path(), r.header("content-length")))
            .collect();
        assert_eq!(
            lengths,
            [
                ("/hyper", Some("0")),
                ("/explicit", Some("0")),
                ("/bare", Some("0"))
            ]
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 10. Malformed responses.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_responses_are_502_and_cost_their_connection() {
    let cases: Vec<(&str, Vec<u8>)> =
        vec![
        ("bad status code", b"HTTP/1.1 2x0 OK\r\ncontent-length: 0\r\n\r\n".to_vec()),
        ("garbage status line", b"garbage\r\n\r\n".to_vec()),
        (
            "space in a header name",
            b"HTTP/1.1 200 OK\r\nbad header: v\r\ncontent-length: 0\r\n\r\n".to_vec(),
        ),
        (
            "control byte in a header name",
            b"HTTP/1.1 200 OK\r\nbad\x01name: v\r\ncontent-length: 0\r\n\r\n".to_vec(),
        ),
        (
            "content-length with transfer-encoding",
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"
                .to_vec(),
        ),
        (
            "two different content-lengths",
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!".to_vec(),
        ),
        (
            "content-length not a number",
            b"HTTP/1.1 200 OK\r\ncontent-length: abc\r\n\r\n".to_vec(),
        ),
        (
            "transfer-encoding gzip",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nxyz".to_vec(),
        ),
        ("header block over 80 KiB", {
            format!(
                "HTTP/1.1 200 OK\r\nx-big: {}\r\ncontent-length: 0\r\n\r\n",
                "v".repeat(81 * 1024)
            )
            .into_bytes()
        }),
        ("more than 100 headers", {
            let mut r = b"HTTP/1.1 200 OK\r\n".to_vec();
            for i in 0..101 {
                r.extend_from_slice(format!("x-h{i}: 1\r\n").as_bytes());
            }
            r.extend_from_slice(b"content-length: 0\r\n\r\n");
            r
        }),
    ];
    let canned: Vec<Vec<u8>> = cases.iter().map(|(_, r)| r.clone()).collect();
    bounded(async {
        let up = Scripted::responder(move |req| {
            match req
                .path()
                .strip_prefix("/bad/")
                .and_then(|i| i.parse::<usize>().ok())
            {
                Some(i) => keep(&canned[i]),
                None => keep(ok("fine")),
            }
        })
        .await;
        let legate = proxy(&up).await;
        let mut conn = Conn::open(legate.addr).await;
        for (i, (name, _)) in cases.iter().enumerate() {
            let r = get_on(&mut conn, &format!("/bad/{i}")).await;
            assert_eq!(r.status, 502, "{name}: {}", r.text());
            assert_eq!(r.text(), PROTOCOL_ERROR_BODY, "{name}");
            // The same downstream connection goes on.
            let r = get_on(&mut conn, "/ok").await;
            assert_eq!(
                (r.status, r.text().as_str()),
                (StatusCode::OK, "fine"),
                "after {name}"
            );
            // ... on an upstream connection other than the one that misbehaved.
            let reqs = up.requests();
            let [.., bad, good] = reqs.as_slice() else {
                panic!("{name}: requests {reqs:?}");
            };
            assert_eq!(bad.path(), format!("/bad/{i}"));
            assert_ne!(bad.conn, good.conn, "{name}: the bad connection was reused");
        }
        legate
            .wait_stat("http.ingress.downstream_rq_502", cases.len() as i64)
            .await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 11. Cut short mid-body.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_cut_short_fails_the_download_and_the_next_request_dials() {
    bounded(async {
        let up = Scripted::responder(|req| match req.path() {
            // Ten of the hundred bytes, a pause (the head goes downstream first), then close.
            "/cut" => Answer {
                writes: vec![
                    b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789".to_vec(),
                    Vec::new(),
                ],
                close: true,
            },
            _ => keep(ok("whole")),
        })
        .await;
        let legate = proxy(&up).await;
        let mut conn = Conn::open(legate.addr).await;
        let r = get_on(&mut conn, "/warm").await;
        assert_eq!(r.text(), "whole");

        let r = send_streamed(
            legate.addr,
            Request::get("/cut").header("host", "h"),
            feed(Vec::new()),
        )
        .await
        .expect("the response head arrives");
        assert_eq!(r.status, 200);
        assert_eq!(r.headers.get("content-length").unwrap(), "100");
        assert!(
            r.body.is_err(),
            "a short body must not look complete: {:?}",
            r.body
        );

        let mut fresh = Conn::open(legate.addr).await;
        let r = get_on(&mut fresh, "/after").await;
        assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "whole"));
        // /warm on 0; /cut reused 0 (idle, fine) and ended it; /after dialed 1.
        assert_eq!(up.conns(), vec![0, 0, 1]);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 12. Bytes after a complete response.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stray_bytes_after_a_response_end_its_connection() {
    bounded(async {
        // The stray response comes in the same segment as the real one.
        let up = Scripted::responder(|req| match (req.conn, req.path()) {
            (0, _) => keep(
                [
                    ok("first"),
                    b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstray".to_vec(),
                ]
                .concat(),
            ),
            (_, p) => keep(ok(&format!("fresh {p}"))),
        })
        .await;
        let legate = proxy(&up).await;
        let mut conn = Conn::open(legate.addr).await;
        let r = get_on(&mut conn, "/1").await;
        assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "first"));
        let r = get_on(&mut conn, "/2").await;
        assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "fresh /2"));
        assert_eq!(up.conns(), vec![0, 1]);
        assert_eq!(up.connection_count(), 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stray_bytes_on_an_idle_connection_end_it() {
    bounded(async {
        let up = Scripted::start(|mut peer| async move {
            let Some(req) = peer.request().await else {
                return;
            };
            if peer.conn == 0 {
                peer.write(&ok("first")).await;
                // While the connection idles in legate's pool.
                tokio::time::sleep(Duration::from_millis(50)).await;
                peer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstray")
                    .await;
                peer.mark();
            } else {
                peer.write(&ok(&format!("fresh {}", req.path()))).await;
            }
            // Answer whatever else comes on this connection.
            while let Some(req) = peer.request().await {
                peer.write(&ok(&format!("late {}", req.path()))).await;
            }
        })
        .await;
        let legate = proxy(&up).await;
        let mut conn = Conn::open(legate.addr).await;
        let r = get_on(&mut conn, "/1").await;
        assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "first"));
        up.wait_marks(1).await;
        let r = get_on(&mut conn, "/2").await;
        assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "fresh /2"));
        assert_eq!(up.conns(), vec![0, 1]);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 13. A pooled connection the upstream closed.

/// The upstream closes a keep-alive connection while it idles in legate's pool (as servers do
/// when their keep-alive timeout passes); the next request must not be lost on it.
///
/// Nothing polls an idle connection, so the close is seen at checkout (`H1Conn::check_open`) and
/// the request goes to a new connection. (With hyper's client the request was queued on the dead
/// connection and hung until the route timeout, then 504.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connection_closed_by_the_upstream_is_replaced() {
    bounded(async {
        let up = Scripted::start(|mut peer| async move {
            let Some(req) = peer.request().await else {
                return;
            };
            // Keep-alive as far as the response says; closed once it idles in the pool (the
            // pause only makes sure the close comes after legate finished the response; the
            // right outcome is the same either way).
            peer.write(&ok(&format!("conn {} {}", peer.conn, req.path())))
                .await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            peer.close().await;
            peer.mark();
        })
        .await;
        let legate = proxy(&up).await;
        let mut conn = Conn::open(legate.addr).await;
        let r = get_on(&mut conn, "/1").await;
        assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "conn 0 /1"));
        up.wait_marks(1).await;
        let r = get_on(&mut conn, "/2").await;
        assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "conn 1 /2"));
        assert_eq!(up.conns(), vec![0, 1]);
    })
    .await;
}

/// The same close racing with the next request: the upstream closes each connection right after
/// its response, so the close arrives sometimes with the response (seen before the connection is
/// pooled), sometimes while it is pooled or being checked out. A request that was not sent may
/// go on a fresh connection (200); one that was sent may fail (503, as in Envoy). None may hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_closing_after_every_response_never_hangs_a_request() {
    bounded(async {
        let up = Scripted::responder(|req| close(ok(&format!("conn {}", req.conn)))).await;
        let legate = proxy(&up).await;
        let mut conn = Conn::open(legate.addr).await;
        let mut statuses = std::collections::BTreeMap::new();
        for i in 0..2000 {
            let req = Request::get(format!("/{i}"))
                .header("host", "h")
                .body(empty())
                .unwrap();
            let r = tokio::time::timeout(Duration::from_secs(5), conn.send(req))
                .await
                .unwrap_or_else(|_| panic!("request {i} hung"))
                .expect("a response");
            assert!(
                r.status == 200 || r.status == 503,
                "request {i}: {} {}",
                r.status,
                r.text()
            );
            *statuses.entry(r.status.as_u16()).or_insert(0) += 1;
        }
        assert!(statuses.get(&200).copied().unwrap_or(0) > 0, "{statuses:?}");
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 14. An early response before the request body was read.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_413_before_a_large_upload_is_read() {
    bounded(async {
        let up = Scripted::start(|mut peer| async move {
            let Some(req) = peer.head().await else {
                return;
            };
            peer.seen.lock().unwrap().push(req);
            peer.write(b"HTTP/1.1 413 Payload Too Large\r\nconnection: close\r\ncontent-length: 8\r\n\r\ntoo big!")
                .await;
            // Half-close and drain (as servers do to avoid a reset that would destroy the
            // response before it is read), bounded.
            let _ = peer.stream.shutdown().await;
            let mut tmp = vec![0u8; 65536];
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                while matches!(peer.stream.read(&mut tmp).await, Ok(n) if n > 0) {}
            })
            .await;
        })
        .await;
        let legate = proxy(&up).await;
        // A raw client that reads while it writes: whether its upload ends in a broken pipe
        // (legate closes a connection whose request it will not finish reading) must not
        // decide whether the answer is seen.
        let total = 1 << 20;
        let (mut rd, mut wr) = TcpStream::connect(legate.addr).await.unwrap().into_split();
        let head = format!("POST /upload HTTP/1.1\r\nhost: h\r\ncontent-length: {total}\r\n\r\n");
        let upload = tokio::spawn(async move {
            if wr.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            for piece in pattern_body(total).chunks(16 * 1024) {
                if wr.write_all(piece).await.is_err() {
                    return;
                }
            }
        });
        let resp = raw::read_response(&mut rd, Duration::from_secs(15))
            .await
            .unwrap_or_default();
        upload.abort();
        assert_eq!(raw::status(&resp), 413, "{resp}");
        assert!(resp.ends_with("\r\n\r\ntoo big!"), "{resp}");
        let seen = up.requests();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].header("content-length"), Some("1048576"));

        // legate still serves, on a new upstream connection.
        let r = get(&legate.url("/again")).await;
        assert_eq!(r.status, 413);
        assert_eq!(up.connection_count(), 2);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 15. Large bodies.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_arrive_byte_exact() {
    const LEN: usize = 8 << 20;
    bounded(async {
        let up = Scripted::start(|mut peer| async move {
            while let Some(req) = peer.request().await {
                let body = pattern_body(LEN);
                if req.path() == "/cl" {
                    peer.write(
                        format!("HTTP/1.1 200 OK\r\ncontent-length: {LEN}\r\n\r\n").as_bytes(),
                    )
                    .await;
                    peer.write(&body).await;
                } else {
                    peer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                        .await;
                    // Chunks of varying sizes, each written on its own.
                    let mut at = 0;
                    let mut size = 1;
                    while at < LEN {
                        let n = size.min(LEN - at);
                        let mut chunk = format!("{n:x}\r\n").into_bytes();
                        chunk.extend_from_slice(&body[at..at + n]);
                        chunk.extend_from_slice(b"\r\n");
                        peer.write(&chunk).await;
                        at += n;
                        size = (size * 7 + 13) % 200_000 + 1;
                    }
                    peer.write(b"0\r\n\r\n").await;
                }
            }
        })
        .await;
        let legate = proxy(&up).await;
        let mut conn = Conn::open(legate.addr).await;
        let want = pattern_body(LEN);
        for path in ["/cl", "/chunked", "/cl"] {
            let r = get_on(&mut conn, path).await;
            assert_eq!(r.status, 200, "{path}");
            assert_eq!(r.body.len(), LEN, "{path}");
            assert!(r.body == want, "{path}: body differs");
        }
        assert_eq!(up.conns(), vec![0, 0, 0]);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 16. Response headers.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_headers_pass_through() {
    bounded(async {
        let up = Scripted::responder(|_req| {
            keep(
                "HTTP/1.1 200 OK\r\nX-Custom: a b\r\nSet-Cookie: a=1; Path=/\r\n\
                 x-padded:   padded  \r\nSet-Cookie: b=2\r\nSET-COOKIE: c=3; HttpOnly\r\n\
                 x-empty:\r\ncontent-length: 2\r\n\r\nok",
            )
        })
        .await;
        let legate = proxy(&up).await;
        let mut conn = Conn::open(legate.addr).await;
        let r = get_on(&mut conn, "/").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "ok");
        assert_eq!(r.header("x-custom"), "a b");
        assert_eq!(r.header("x-padded"), "padded");
        assert!(r.headers.contains_key("x-empty"));
        assert_eq!(r.header("x-empty"), "");
        let cookies: Vec<&str> = r
            .headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(cookies, ["a=1; Path=/", "b=2", "c=3; HttpOnly"]);
    })
    .await;
}
