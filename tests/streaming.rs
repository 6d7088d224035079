//! Streaming: large bodies pass byte-exact in both directions, whatever their framing, and legate
//! never holds a whole body in memory (a slow client slows the upstream instead).

use crate::common;
use common::*;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: u64 = 1024 * 1024;

/// The generator's next 8 bytes (xorshift64*): a stream with no repeats at any useful scale, so a
/// dropped, duplicated or reordered chunk changes the digest.
fn next_word(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// Chunk sizes vary from 8 bytes to 128 KiB (always a multiple of 8).
fn chunk_size(k: u64) -> u64 {
    8 * (1 + (k.wrapping_mul(7919) % 16384))
}

/// A generated body of `total` bytes (a multiple of 8) sent in chunks; chunked on the wire unless
/// `exact` (then hyper frames it with Content-Length). Counts what it produced in `produced`.
struct Generated {
    remaining: u64,
    rng: u64,
    k: u64,
    exact: bool,
    produced: Arc<AtomicU64>,
}

impl Generated {
    fn new(total: u64, seed: u64, exact: bool) -> Generated {
        assert_eq!(total % 8, 0);
        Generated {
            remaining: total,
            rng: seed,
            k: 0,
            exact,
            produced: Arc::default(),
        }
    }
}

impl HttpBody for Generated {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let size = chunk_size(this.k).min(this.remaining);
        this.k += 1;
        let words: Vec<u64> = (0..size / 8).map(|_| next_word(&mut this.rng)).collect();
        let mut buf = Vec::with_capacity(size as usize);
        for w in words {
            buf.extend_from_slice(&w.to_le_bytes());
        }
        this.remaining -= size;
        this.produced.fetch_add(size, Ordering::Relaxed);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(buf)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        if self.exact {
            SizeHint::with_exact(self.remaining)
        } else {
            SizeHint::default()
        }
    }
}

/// An order-sensitive digest of a byte stream, independent of how the stream is split.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Digest {
    len: u64,
    hash: u64,
}

#[derive(Default)]
struct Digester {
    len: u64,
    hash: u64,
    tail: [u8; 8],
    ntail: usize,
}

impl Digester {
    fn mix(&mut self, w: u64) {
        self.hash = (self.hash ^ w)
            .wrapping_mul(0x0000_0100_0000_01b3)
            .rotate_left(31)
            ^ 0x9e37_79b9_7f4a_7c15;
    }

    fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if self.ntail > 0 {
            let take = (8 - self.ntail).min(data.len());
            self.tail[self.ntail..self.ntail + take].copy_from_slice(&data[..take]);
            self.ntail += take;
            data = &data[take..];
            if self.ntail < 8 {
                return;
            }
            self.mix(u64::from_le_bytes(self.tail));
            self.ntail = 0;
        }
        let words = data.chunks_exact(8);
        let rest = words.remainder();
        for w in words {
            self.mix(u64::from_le_bytes(w.try_into().unwrap()));
        }
        self.tail[..rest.len()].copy_from_slice(rest);
        self.ntail = rest.len();
    }

    fn finish(mut self) -> Digest {
        if self.ntail > 0 {
            let mut last = [0u8; 8];
            last[..self.ntail].copy_from_slice(&self.tail[..self.ntail]);
            self.mix(u64::from_le_bytes(last));
        }
        self.mix(self.len);
        Digest {
            len: self.len,
            hash: self.hash,
        }
    }
}

/// What `Generated::new(total, seed, _)` hashes to.
fn expected(total: u64, seed: u64) -> Digest {
    let mut d = Digester::default();
    let mut rng = seed;
    for _ in 0..total / 8 {
        let w = next_word(&mut rng);
        d.mix(w);
    }
    d.len = total;
    d.finish()
}

/// Read a body to its end, digesting it frame by frame (never holding it whole).
async fn digest_body(mut body: Incoming) -> Result<Digest, hyper::Error> {
    let mut d = Digester::default();
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            d.update(data);
        }
    }
    Ok(d.finish())
}

/// Send `req` on a new HTTP/1.1 connection and return the response with its body unread.
async fn send<B>(addr: SocketAddr, req: Request<B>) -> Response<Incoming>
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender.send_request(req).await.expect("response headers")
}

/// An upstream that digests each request body and answers `<len> <hash>`, with the request's
/// framing headers echoed as `x-seen-*`.
async fn digesting_upstream() -> Upstream {
    Upstream::start("digest", |req: Request<Incoming>| async move {
        let te = req
            .headers()
            .get("transfer-encoding")
            .map(|v| v.to_str().unwrap().to_string());
        let cl = req
            .headers()
            .get("content-length")
            .map(|v| v.to_str().unwrap().to_string());
        let d = digest_body(req.into_body()).await.expect("request body");
        Response::builder()
            .header("x-seen-transfer-encoding", te.unwrap_or_default())
            .header("x-seen-content-length", cl.unwrap_or_default())
            .body(full(format!("{} {}", d.len, d.hash)))
            .unwrap()
    })
    .await
}

/// An upstream answering every request with `Generated::new(total, seed, exact)`.
async fn generating_upstream(
    total: u64,
    seed: u64,
    exact: bool,
    produced: Arc<AtomicU64>,
) -> Upstream {
    Upstream::start("gen", move |_req| {
        let produced = produced.clone();
        async move {
            let mut body = Generated::new(total, seed, exact);
            body.produced = produced;
            Response::builder().body(BodyExt::boxed(body)).unwrap()
        }
    })
    .await
}

async fn upload(exact: bool) {
    let up = digesting_upstream().await;
    let legate = Legate::start(&config(&route_all_to("svc"), &cluster("svc", &[up.addr]))).await;
    let total = 64 * MIB;
    let seed = 0x0123_4567_89ab_cdef;
    let body = Generated::new(total, seed, exact);
    let req = Request::post("/upload")
        .header("host", "x")
        .body(body)
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(60), async {
        let resp = send(legate.addr, req).await;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, headers, body)
    })
    .await
    .expect("upload finished in time");
    let (status, headers, body) = resp;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let want = expected(total, seed);
    assert_eq!(
        String::from_utf8_lossy(&body),
        format!("{} {}", want.len, want.hash),
        "the upstream got other bytes"
    );
    // The framing the upstream saw matches the client's.
    if exact {
        assert_eq!(headers["x-seen-content-length"], total.to_string().as_str());
        assert_eq!(headers["x-seen-transfer-encoding"], "");
    } else {
        assert_eq!(headers["x-seen-transfer-encoding"], "chunked");
        assert_eq!(headers["x-seen-content-length"], "");
    }
    legate.wait_stat("cluster.svc.upstream_rq_200", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_64mib_request_body_arrives_byte_exact() {
    upload(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_64mib_request_body_arrives_byte_exact() {
    upload(true).await;
}

async fn download(exact: bool) {
    let total = 64 * MIB;
    let seed = 0xfeed_f00d_dead_beef;
    let up = generating_upstream(total, seed, exact, Arc::default()).await;
    let legate = Legate::start(&config(&route_all_to("svc"), &cluster("svc", &[up.addr]))).await;
    let (status, headers, digest) = tokio::time::timeout(Duration::from_secs(60), async {
        let req = Request::get("/download")
            .header("host", "x")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let resp = send(legate.addr, req).await;
        let status = resp.status();
        let headers = resp.headers().clone();
        let digest = digest_body(resp.into_body())
            .await
            .expect("a complete response body");
        (status, headers, digest)
    })
    .await
    .expect("download finished in time");
    assert_eq!(status, 200);
    assert_eq!(digest, expected(total, seed), "the client got other bytes");
    if exact {
        assert_eq!(headers["content-length"], total.to_string().as_str());
        assert!(headers.get("transfer-encoding").is_none(), "{headers:?}");
    } else {
        assert_eq!(headers["transfer-encoding"], "chunked");
        assert!(headers.get("content-length").is_none(), "{headers:?}");
    }
    legate.wait_stat("cluster.svc.upstream_rq_200", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_64mib_response_body_arrives_byte_exact() {
    download(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_64mib_response_body_arrives_byte_exact() {
    download(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_does_not_make_legate_buffer_the_response() {
    let total = 256 * MIB;
    let produced = Arc::new(AtomicU64::new(0));
    let up = generating_upstream(total, 42, false, produced.clone()).await;
    let (port, admin) = (free_port(), free_port());
    let yaml = standalone_config(port, admin, up.addr);
    let mut legate = LegateProcess::spawn(&["--config-yaml", &yaml, "--concurrency", "1"]);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    legate.wait_listening(addr).await;

    // Warm up (runtime, allocator), then take the baseline.
    let warm = get(&format!("http://127.0.0.1:{admin}/stats")).await;
    assert_eq!(warm.status, 200);
    let baseline = legate.rss_kib();

    // A raw client with a small receive buffer, so the kernel does not soak up the body either.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(256 * 1024).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    stream
        .write_all(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();

    let mut buf = vec![0u8; 64 * 1024];
    let mut read = 0u64;
    let mut peak = baseline;
    let start = Instant::now();
    let mut iterations = 0;
    while start.elapsed() < Duration::from_secs(5) && iterations < 1000 {
        iterations += 1;
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("the response keeps coming")
            .unwrap();
        assert!(n > 0, "the response ended early after {read} bytes");
        read += n as u64;
        peak = peak.max(legate.rss_kib());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let upstream_sent = produced.load(Ordering::Relaxed);
    eprintln!(
        "read {} KiB in {:?}; upstream produced {} KiB; legate RSS baseline {baseline} KiB, peak {peak} KiB",
        read / 1024,
        start.elapsed(),
        upstream_sent / 1024
    );
    assert!(
        read > MIB,
        "the slow client read almost nothing ({read} bytes)"
    );
    assert!(
        peak < baseline + 64 * 1024,
        "legate's RSS grew from {baseline} KiB to {peak} KiB while a slow client read {read} bytes: it buffers the body"
    );
    // Backpressure reached the upstream: it did not get to push the whole body out.
    assert!(
        upstream_sent < read + 128 * MIB,
        "the upstream sent {upstream_sent} bytes while the client read {read}"
    );
    assert!(
        legate.child.try_wait().unwrap().is_none(),
        "legate exited:\n{}",
        legate.stderr()
    );
}

/// Envoy starts the route timer once the downstream request is complete: an upload slower than
/// the route timeout still succeeds, and the timeout then applies to the upstream's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeout_starts_when_the_request_body_is_complete() {
    let up = digesting_upstream().await;
    let vh = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: { prefix: \"/\" }\n                route: { cluster: svc, timeout: 0.3s }\n";
    let legate = Legate::start(&config(vh, &cluster("svc", &[up.addr]))).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(1);
    let body = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let req = Request::post("/slow-upload")
        .header("host", "x")
        .body(body)
        .unwrap();
    // Ten chunks, 100 ms apart: the upload takes about three route timeouts.
    tokio::spawn(async move {
        for i in 0..10u8 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if tx
                .send(Ok(Frame::data(Bytes::from(vec![i; 1000]))))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let started = Instant::now();
    let (status, body) = tokio::time::timeout(Duration::from_secs(10), async {
        let resp = send(legate.addr, req).await;
        let status = resp.status();
        (status, resp.into_body().collect().await.unwrap().to_bytes())
    })
    .await
    .expect("upload finished in time");
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(
        String::from_utf8_lossy(&body).starts_with("10000 "),
        "the upstream got {}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(legate.stat("cluster.svc.upstream_rq_timeout"), 0);
}
