//! HTTP/1.1 on the wire, for tests where the exact bytes matter: a raw client that keeps what it
//! read past the current message (pipelining, interim responses, bytes that must not be there),
//! over TCP or TLS, and a scripted raw upstream whose every byte and every pause is the test's
//! choice. Every read is bounded in time.

use super::raw::find;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// All values of `name` in a head (a request or status line first), trimmed.
pub fn header_values(head: &str, name: &str) -> Vec<String> {
    head.split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_string())
        .collect()
}

/// The status code of a response head (0 when it is not one).
pub fn status_of(head: &str) -> u16 {
    head.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// One response as the client read it.
#[derive(Debug, Clone)]
pub struct Response {
    /// Through the empty line.
    pub head: String,
    pub status: u16,
    /// The body after undoing the transfer coding.
    pub body: Vec<u8>,
    /// The body came chunked.
    pub chunked: bool,
    /// Trailer lines of a chunked body (the section, without its last empty line).
    pub trailers: String,
}

impl Response {
    /// The only value of `name`, or "" when there is none (panics when there are several).
    pub fn header(&self, name: &str) -> String {
        let mut v = header_values(&self.head, name);
        assert!(v.len() <= 1, "{name} more than once:\n{}", self.head);
        v.pop().unwrap_or_default()
    }

    pub fn has(&self, name: &str) -> bool {
        !header_values(&self.head, name).is_empty()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A raw HTTP/1.1 client connection (plain TCP or TLS).
pub struct Client<S = TcpStream> {
    pub s: S,
    /// Read but not yet taken.
    pub buf: Vec<u8>,
    /// The bound on each call that waits for the server.
    pub wait: Duration,
}

impl Client<TcpStream> {
    pub async fn open(addr: SocketAddr) -> Client<TcpStream> {
        Client::new(TcpStream::connect(addr).await.unwrap())
    }
}

impl<S> Client<S> {
    /// Over any stream (TLS, or the read half of a split one).
    pub fn new(s: S) -> Client<S> {
        Client {
            s,
            buf: Vec::new(),
            wait: Duration::from_secs(5),
        }
    }
}

impl<S: AsyncWrite + Unpin> Client<S> {
    /// Write `bytes` (one `write_all`) and flush; panics if the server is gone.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.unwrap();
        self.s.flush().await.unwrap();
    }
}

impl<S: AsyncRead + Unpin> Client<S> {
    /// Read more into the buffer; false on EOF, error or when `deadline` passes.
    async fn fill(&mut self, deadline: Instant) -> bool {
        let mut tmp = [0u8; 16384];
        match tokio::time::timeout_at(deadline, self.s.read(&mut tmp)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => false,
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&tmp[..n]);
                true
            }
        }
    }

    async fn take(&mut self, n: usize, deadline: Instant) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            if !self.fill(deadline).await {
                return None;
            }
        }
        Some(self.buf.drain(..n).collect())
    }

    /// Exactly `n` bytes (what is buffered first); `None` if they did not come in time.
    pub async fn take_exact(&mut self, n: usize) -> Option<Vec<u8>> {
        let deadline = Instant::now() + self.wait;
        self.take(n, deadline).await
    }

    async fn line(&mut self, deadline: Instant) -> Option<String> {
        loop {
            if let Some(at) = find(&self.buf, b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..at + 2).collect();
                return Some(String::from_utf8_lossy(&line[..at]).into_owned());
            }
            if !self.fill(deadline).await {
                return None;
            }
        }
    }

    /// The next head (through the empty line), without its body; `None` if none came in time.
    pub async fn head(&mut self) -> Option<String> {
        let deadline = Instant::now() + self.wait;
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head: Vec<u8> = self.buf.drain(..end + 4).collect();
                return Some(String::from_utf8_lossy(&head).into_owned());
            }
            if !self.fill(deadline).await {
                return None;
            }
        }
    }

    /// The body that follows `head` (a response to anything but HEAD): none for 1xx, 204 and
    /// 304, else chunked, `content-length`, or everything until the server closes.
    pub async fn body(&mut self, head: &str) -> Option<Response> {
        let deadline = Instant::now() + self.wait;
        let status = status_of(head);
        let mut r = Response {
            head: head.to_string(),
            status,
            body: Vec::new(),
            chunked: false,
            trailers: String::new(),
        };
        if (100..200).contains(&status) || status == 204 || status == 304 {
            return Some(r);
        }
        let te = header_values(head, "transfer-encoding");
        if te.iter().any(|v| v.eq_ignore_ascii_case("chunked")) {
            r.chunked = true;
            loop {
                let line = self.line(deadline).await?;
                let size = line.split(';').next().unwrap_or("").trim();
                let size = usize::from_str_radix(size, 16).ok()?;
                if size == 0 {
                    loop {
                        let t = self.line(deadline).await?;
                        if t.is_empty() {
                            return Some(r);
                        }
                        r.trailers.push_str(&t);
                        r.trailers.push_str("\r\n");
                    }
                }
                let data = self.take(size, deadline).await?;
                r.body.extend_from_slice(&data);
                if self.take(2, deadline).await? != b"\r\n" {
                    return None;
                }
            }
        }
        if let Some(len) = header_values(head, "content-length").first() {
            let len: usize = len.parse().ok()?;
            r.body = self.take(len, deadline).await?;
            return Some(r);
        }
        // Delimited by the close.
        while self.fill(deadline).await {}
        r.body = std::mem::take(&mut self.buf);
        Some(r)
    }

    /// The next response, interim (1xx) ones included.
    pub async fn response(&mut self) -> Option<Response> {
        let head = self.head().await?;
        self.body(&head).await
    }

    /// The next final response, and the heads of the interim ones before it.
    pub async fn final_response(&mut self) -> Option<(Vec<String>, Response)> {
        let mut interim = Vec::new();
        loop {
            let r = self.response().await?;
            if (100..200).contains(&r.status) {
                interim.push(r.head);
            } else {
                return Some((interim, r));
            }
        }
    }

    /// Nothing arrives (no byte, no close) for `d`, and nothing is buffered.
    pub async fn silent_for(&mut self, d: Duration) -> bool {
        let before = self.buf.len();
        let mut tmp = [0u8; 4096];
        match tokio::time::timeout(d, self.s.read(&mut tmp)).await {
            Err(_) => before == 0,
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&tmp[..n]);
                false
            }
            Ok(Err(_)) => false,
        }
    }

    /// Everything still to come (with what is buffered) until the server closes (EOF or reset:
    /// true) or `self.wait` passes (false).
    pub async fn until_close(&mut self) -> (Vec<u8>, bool) {
        let deadline = Instant::now() + self.wait;
        let mut tmp = [0u8; 16384];
        let closed = loop {
            match tokio::time::timeout_at(deadline, self.s.read(&mut tmp)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break true,
                Ok(Ok(n)) => self.buf.extend_from_slice(&tmp[..n]),
                Err(_) => break false,
            }
        };
        (std::mem::take(&mut self.buf), closed)
    }
}

// ---------------------------------------------------------------------------------------------
// A scripted upstream.

/// Every read of a scripted upstream gives up after this long.
const PEER_WAIT: Duration = Duration::from_secs(10);

/// One request as a scripted upstream read it.
#[derive(Debug, Clone)]
pub struct PeerRequest {
    /// Through the empty line.
    pub head: String,
    /// The body after undoing the transfer coding.
    pub body: Vec<u8>,
    /// Trailer lines of a chunked body.
    pub trailers: String,
}

impl PeerRequest {
    /// `GET /p HTTP/1.1`.
    pub fn line(&self) -> &str {
        self.head.split("\r\n").next().unwrap_or("")
    }

    pub fn path(&self) -> &str {
        self.line().split(' ').nth(1).unwrap_or("")
    }

    pub fn header(&self, name: &str) -> Option<String> {
        header_values(&self.head, name).into_iter().next()
    }
}

/// The upstream's end of one connection.
pub struct Peer {
    pub stream: TcpStream,
    /// Read but not yet taken.
    pub buf: Vec<u8>,
    /// Which accepted connection this is (0 = the first).
    pub conn: usize,
    events: Arc<Mutex<Vec<String>>>,
}

impl Peer {
    /// Record `what` in the upstream's event list ([`ScriptedUpstream::events`]).
    pub fn note(&self, what: impl Into<String>) {
        self.events.lock().unwrap().push(what.into());
    }

    /// Read more into the buffer: the number of bytes, 0 on EOF, error or timeout.
    pub async fn fill(&mut self) -> usize {
        let mut tmp = [0u8; 16384];
        match tokio::time::timeout(PEER_WAIT, self.stream.read(&mut tmp)).await {
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&tmp[..n]);
                n
            }
            Ok(Err(_)) | Err(_) => 0,
        }
    }

    async fn take(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            if self.fill().await == 0 {
                return None;
            }
        }
        Some(self.buf.drain(..n).collect())
    }

    async fn line(&mut self) -> Option<String> {
        loop {
            if let Some(at) = find(&self.buf, b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..at + 2).collect();
                return Some(String::from_utf8_lossy(&line[..at]).into_owned());
            }
            if self.fill().await == 0 {
                return None;
            }
        }
    }

    /// The next request head (through the empty line); its body stays unread.
    pub async fn head(&mut self) -> Option<String> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head: Vec<u8> = self.buf.drain(..end + 4).collect();
                return Some(String::from_utf8_lossy(&head).into_owned());
            }
            if self.fill().await == 0 {
                return None;
            }
        }
    }

    /// The next request, its body (`content-length` or chunked) read whole.
    pub async fn request(&mut self) -> Option<PeerRequest> {
        let head = self.head().await?;
        let mut req = PeerRequest {
            head,
            body: Vec::new(),
            trailers: String::new(),
        };
        if req
            .header("transfer-encoding")
            .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
        {
            loop {
                let line = self.line().await?;
                let size = line.split(';').next().unwrap_or("").trim();
                let size = usize::from_str_radix(size, 16).ok()?;
                if size == 0 {
                    loop {
                        let t = self.line().await?;
                        if t.is_empty() {
                            return Some(req);
                        }
                        req.trailers.push_str(&t);
                        req.trailers.push_str("\r\n");
                    }
                }
                let data = self.take(size).await?;
                req.body.extend_from_slice(&data);
                if self.take(2).await? != b"\r\n" {
                    return None;
                }
            }
        }
        if let Some(len) = req.header("content-length") {
            let len: usize = len.parse().ok()?;
            req.body = self.take(len).await?;
        }
        Some(req)
    }

    /// Write and flush; false when the peer is gone.
    pub async fn write(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).await.is_ok() && self.stream.flush().await.is_ok()
    }
}

/// A raw TCP upstream on 127.0.0.1: every accepted connection runs the script with its
/// [`Peer`]; the script records what matters with [`Peer::note`].
pub struct ScriptedUpstream {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    events: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ScriptedUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ScriptedUpstream {
    pub async fn start<F, Fut>(script: F) -> ScriptedUpstream
    where
        F: Fn(Peer) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let events = Arc::new(Mutex::new(Vec::new()));
        let (c, e) = (connections.clone(), events.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let peer = Peer {
                    stream,
                    buf: Vec::new(),
                    conn: c.fetch_add(1, Ordering::SeqCst),
                    events: e.clone(),
                };
                // Bounded: no script outlives a test by much.
                let run = script(peer);
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(30), run).await;
                });
            }
        });
        ScriptedUpstream {
            addr,
            connections,
            events,
            task,
        }
    }

    /// What the scripts noted, in order.
    pub fn events(&self) -> Vec<String> {
        self.events.lock().unwrap().clone()
    }

    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}
