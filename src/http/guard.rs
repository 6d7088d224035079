//! The downstream connection's guard: an I/O layer between the socket and hyper that enforces
//! what hyper and h2 leave open.
//!
//! - **Protocol detection** (`codec_type: AUTO`): the first bytes decide HTTP/1.1 or HTTP/2
//!   (prior knowledge), bounded like a request head.
//! - **HTTP/1.1 framing.** Every request head is read whole and checked before hyper sees a
//!   byte of it: size (`max_request_headers_kb`, 431), header count (431), target length (414),
//!   `Content-Length` syntax and agreement, `Transfer-Encoding` (exactly `chunked`, else 501),
//!   `Content-Length` with `chunked` (400 unless `allow_chunked_length`), and the head timeout.
//!   Bodies are tracked so the next head is found where hyper will look for it; chunked bodies
//!   are validated chunk by chunk. A rejected head never reaches hyper: it is replaced by a
//!   fixed request whose verdict the connection manager answers (stats, access log and the
//!   local-reply mapping stay in one place), and nothing after it is read. A chunked body that
//!   breaks after its head was forwarded fails the request body, so the upstream request is
//!   aborted and its connection discarded.
//! - **HTTP/2.** Frames are followed in both directions (headers only, payloads pass through):
//!   `http2.rx_reset`/`tx_reset`, Envoy's premature-reset rule (Rapid Reset, MadeYouReset),
//!   outbound frame floods (frames queued here because the peer does not read), and streams
//!   whose response stalls (zero window) past `stream_idle_timeout`, which are reset on both
//!   sides. Such a connection gets a GOAWAY and is closed.
//! - **Slow readers.** A write that makes no progress for `stream_idle_timeout` fails the
//!   connection; after a rejection the socket is drained briefly before closing, so the client
//!   reads the answer instead of a reset.

use super::local_reply::LocalReply;
use bytes::{Buf, BytesMut};
use metrics::Counter;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What hyper parses in place of a rejected head: bodiless, and it closes the connection.
const SYNTHETIC: &[u8] = b"GET / HTTP/1.1\r\nhost: rejected.invalid\r\nconnection: close\r\n\r\n";

/// A chunk-size line (size and extensions) longer than this is an error.
const MAX_CHUNK_LINE: usize = 4096;
/// Bytes of outgoing HTTP/2 frames held here while the peer does not read; above it, h2 waits.
const WBUF_HIGH: usize = 256 * 1024;
/// Envoy's `delayed_close_timeout`: how long a rejected connection is drained before closing.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_MAX_BYTES: usize = 1 << 20;
/// Envoy's premature reset rule: a stream reset within this time of opening is premature; after
/// `PREMATURE_STREAMS` closed streams, more than half premature closes the connection (and
/// `PREMATURE_STREAMS / 2` premature resets close it earlier).
const PREMATURE_LIFETIME: Duration = Duration::from_secs(1);
const PREMATURE_STREAMS: u64 = 500;
/// How long a GOAWAY may take to leave before an aborted connection is closed anyway.
const ABORT_FLUSH: Duration = Duration::from_secs(1);

const READ_CHUNK: usize = 16 * 1024;

/// Limits and counters a guard applies; one per connection manager.
pub struct GuardConfig {
    pub max_head_bytes: usize,
    pub max_headers: usize,
    pub max_uri_bytes: usize,
    pub allow_chunked_length: bool,
    /// The head timer: the shorter of `request_headers_timeout` and `stream_idle_timeout`, and
    /// the reply it gives.
    pub head_timeout: Option<(Duration, LocalReply)>,
    pub stream_idle_timeout: Option<Duration>,
    pub max_outbound_frames: usize,
    pub max_outbound_control_frames: usize,
    pub stats: GuardStats,
}

/// Counters the guard bumps itself (the rest are counted where the reply is made).
#[derive(Clone)]
pub struct GuardStats {
    pub downstream_rq_idle_timeout: Counter,
    pub downstream_rq_too_many_premature_resets: Counter,
    pub downstream_cx_protocol_error: Counter,
    pub http2_rx_reset: Counter,
    pub http2_tx_reset: Counter,
    pub http2_outbound_flood: Counter,
    pub http2_outbound_control_flood: Counter,
    pub http2_tx_flush_timeout: Counter,
    pub http2_header_overflow: Counter,
}

/// State the guard shares with the connection's service and its `serve` loop.
#[derive(Default)]
pub struct ConnShared {
    /// Requests handed to the service so far (HTTP/1.1 requests are numbered from 1).
    requests: AtomicU64,
    /// (request number, reply) for a head the guard replaced.
    reject: Mutex<Option<(u64, LocalReply)>>,
    upgrade: Mutex<UpgradeWait>,
    /// Streams in flight in the service, and when the last one ended.
    active: AtomicUsize,
    idle_since: Mutex<Option<Instant>>,
    /// A request head is being received.
    reading_head: AtomicBool,
}

#[derive(Default)]
struct UpgradeWait {
    decision: Option<bool>,
    waker: Option<Waker>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ConnShared {
    pub fn new() -> Arc<Self> {
        let s = ConnShared::default();
        *lock(&s.idle_since) = Some(Instant::now());
        Arc::new(s)
    }

    /// Number the next request; returns the guard's verdict on it, if it replaced its head.
    pub fn next_request(&self) -> Option<LocalReply> {
        let n = self.requests.fetch_add(1, Ordering::AcqRel) + 1;
        let mut r = lock(&self.reject);
        match r.as_ref() {
            Some((at, _)) if *at == n => r.take().map(|(_, reply)| reply),
            _ => None,
        }
    }

    /// The service answered an upgrade (or CONNECT) request: `tunnel` when the connection now
    /// belongs to a tunnel.
    pub fn upgrade_decided(&self, tunnel: bool) {
        let mut u = lock(&self.upgrade);
        u.decision = Some(tunnel);
        if let Some(w) = u.waker.take() {
            w.wake();
        }
    }

    pub fn stream_started(self: &Arc<Self>) -> ActiveStream {
        self.active.fetch_add(1, Ordering::AcqRel);
        ActiveStream(self.clone())
    }

    /// `Some(since)` when no stream is in flight and no head is arriving.
    pub fn idle_since(&self) -> Option<Instant> {
        if self.active.load(Ordering::Acquire) > 0 || self.reading_head.load(Ordering::Acquire) {
            return None;
        }
        *lock(&self.idle_since)
    }
}

/// A stream in flight, for the connection's idle timer; ends when dropped.
pub struct ActiveStream(Arc<ConnShared>);

impl Drop for ActiveStream {
    fn drop(&mut self) {
        *lock(&self.0.idle_since) = Some(Instant::now());
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Resolves when the connection has been idle (no stream, no head arriving) for `idle`.
pub async fn idle_timeout(shared: Arc<ConnShared>, idle: Duration) {
    loop {
        match shared.idle_since() {
            Some(since) => {
                let deadline = since + idle;
                if Instant::now() >= deadline {
                    return;
                }
                tokio::time::sleep_until(deadline.into()).await;
                // Re-check: a stream may have started and ended meanwhile.
            }
            None => tokio::time::sleep(idle).await,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

enum Mode {
    Detect,
    H1(H1),
    H2(Box<H2Track>),
    /// An upgraded connection: bytes pass untouched.
    Tunnel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum H1 {
    Head,
    Body(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkCrlf,
    Trailers,
    /// An upgrade or CONNECT request was passed; wait for the service's answer before reading.
    Hold,
    /// The synthetic request is out; nothing more is read.
    Rejected,
    /// The request body's framing broke.
    Failed,
}

enum Linger {
    No,
    Wanted,
    Draining(Pin<Box<Sleep>>, usize),
    Done,
}

pub struct Guard<I> {
    io: I,
    cfg: Arc<GuardConfig>,
    shared: Arc<ConnShared>,
    mode: Mode,
    /// Bytes read from the socket, not yet checked.
    rbuf: BytesMut,
    /// Checked bytes for hyper.
    out: BytesMut,
    /// Bytes for the peer (HTTP/2 only), queued here so floods can be measured.
    wbuf: BytesMut,
    eof: bool,
    /// HTTP/1 heads passed to hyper (the synthetic one included): request numbers.
    heads_emitted: u64,
    /// HTTP/1 framing of the current request: upgrade/CONNECT (hold after it).
    hold_after: bool,
    head_deadline: Option<Instant>,
    head_sleep: Option<Pin<Box<Sleep>>>,
    /// Set while writes make no progress (the peer does not read).
    write_stall: Option<Pin<Box<Sleep>>>,
    linger: Linger,
}

impl<I> Guard<I>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    pub fn new(io: I, cfg: Arc<GuardConfig>, shared: Arc<ConnShared>) -> Self {
        Guard {
            io,
            cfg,
            shared,
            mode: Mode::Detect,
            rbuf: BytesMut::new(),
            out: BytesMut::new(),
            wbuf: BytesMut::new(),
            eof: false,
            heads_emitted: 0,
            hold_after: false,
            head_deadline: None,
            head_sleep: None,
            write_stall: None,
            linger: Linger::No,
        }
    }

    /// Fix the protocol (after [`Guard::detect`] or from configuration/ALPN).
    pub fn set_protocol(&mut self, p: Protocol) {
        self.mode = match p {
            Protocol::Http1 => Mode::H1(H1::Head),
            Protocol::Http2 => Mode::H2(Box::new(H2Track::new())),
        };
    }

    /// Read until the first bytes tell HTTP/2's preface from an HTTP/1 request. EOF and an
    /// expired head timer answer HTTP/1, which then reports them.
    pub fn detect(&mut self) -> impl Future<Output = io::Result<Protocol>> + '_ {
        std::future::poll_fn(move |cx| self.poll_detect(cx))
    }

    fn poll_detect(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Protocol>> {
        loop {
            let n = self.rbuf.len().min(PREFACE.len());
            if self.rbuf[..n] != PREFACE[..n] {
                return Poll::Ready(Ok(Protocol::Http1));
            }
            if n == PREFACE.len() {
                return Poll::Ready(Ok(Protocol::Http2));
            }
            if self.eof {
                return Poll::Ready(Ok(Protocol::Http1));
            }
            match self.read_socket(cx, READ_CHUNK) {
                Poll::Ready(Ok(())) => {
                    if !self.rbuf.is_empty() {
                        self.arm_head_timer();
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    if self.head_timer_expired(cx) {
                        return Poll::Ready(Ok(Protocol::Http1));
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    /// One read from the socket into `rbuf`; sets `eof`.
    fn read_socket(&mut self, cx: &mut Context<'_>, max: usize) -> Poll<io::Result<()>> {
        let mut tmp = [0u8; READ_CHUNK];
        let max = max.clamp(1, READ_CHUNK);
        let mut rb = ReadBuf::new(&mut tmp[..max]);
        match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => {
                if rb.filled().is_empty() {
                    self.eof = true;
                } else {
                    self.rbuf.extend_from_slice(rb.filled());
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn arm_head_timer(&mut self) {
        if self.head_deadline.is_none() {
            if let Some((d, _)) = &self.cfg.head_timeout {
                self.head_deadline = Some(Instant::now() + *d);
            }
            self.shared.reading_head.store(true, Ordering::Release);
        }
    }

    fn disarm_head_timer(&mut self) {
        self.head_deadline = None;
        self.head_sleep = None;
        self.shared.reading_head.store(false, Ordering::Release);
    }

    /// True once the head timer has fired; otherwise registers for it.
    fn head_timer_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(deadline) = self.head_deadline else {
            return false;
        };
        if Instant::now() >= deadline {
            return true;
        }
        let sleep = self
            .head_sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline.into())));
        sleep.as_mut().poll(cx).is_ready()
    }

    // ----------------------------------------------------------------------------------------
    // HTTP/1.1

    /// Replace the head being read with the synthetic request carrying `reply`.
    fn reject(&mut self, reply: LocalReply) {
        self.heads_emitted += 1;
        *lock(&self.shared.reject) = Some((self.heads_emitted, reply));
        self.out.extend_from_slice(SYNTHETIC);
        self.rbuf.clear();
        self.mode = Mode::H1(H1::Rejected);
        self.linger = Linger::Wanted;
        self.disarm_head_timer();
    }

    fn poll_read_h1(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.out.is_empty() {
                let n = self.out.len().min(buf.remaining());
                buf.put_slice(&self.out[..n]);
                self.out.advance(n);
                return Poll::Ready(Ok(()));
            }
            let Mode::H1(state) = self.mode else {
                return Pin::new(&mut self.io).poll_read(cx, buf);
            };
            match state {
                H1::Rejected => return Poll::Pending,
                H1::Failed => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "invalid chunked request body",
                    )))
                }
                H1::Hold => {
                    let mut u = lock(&self.shared.upgrade);
                    match u.decision.take() {
                        Some(true) => {
                            drop(u);
                            self.mode = Mode::Tunnel;
                            let rest = self.rbuf.split();
                            self.out.extend_from_slice(&rest);
                            if self.out.is_empty() {
                                return Pin::new(&mut self.io).poll_read(cx, buf);
                            }
                            continue;
                        }
                        Some(false) => {
                            drop(u);
                            self.mode = Mode::H1(H1::Head);
                            continue;
                        }
                        None => {
                            u.waker = Some(cx.waker().clone());
                            return Poll::Pending;
                        }
                    }
                }
                // Fast path: body bytes straight from the socket.
                H1::Body(left) if self.rbuf.is_empty() && !self.eof => {
                    let max = (left.min(buf.remaining() as u64) as usize).min(READ_CHUNK);
                    let mut tmp = [0u8; READ_CHUNK];
                    let mut rb = ReadBuf::new(&mut tmp[..max.max(1)]);
                    match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
                        Poll::Ready(Ok(())) => {
                            let n = rb.filled().len();
                            if n == 0 {
                                self.eof = true;
                                return Poll::Ready(Ok(()));
                            }
                            buf.put_slice(rb.filled());
                            self.after_body_bytes(left - n as u64);
                            return Poll::Ready(Ok(()));
                        }
                        other => return other,
                    }
                }
                _ => {}
            }
            // Check what is buffered; read more when that is not enough.
            match self.step_h1() {
                Step::Progress => continue,
                Step::NeedMore => {}
            }
            if self.eof {
                // hyper sees the end of the stream (and reports a truncated message).
                let rest = self.rbuf.split();
                self.out.extend_from_slice(&rest);
                if self.out.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            let max = match self.mode {
                Mode::H1(H1::Head) => READ_CHUNK,
                _ => READ_CHUNK.min(buf.remaining().max(1)),
            };
            match self.read_socket(cx, max) {
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    if matches!(self.mode, Mode::H1(H1::Head))
                        && !self.rbuf.is_empty()
                        && self.head_timer_expired(cx)
                    {
                        let reply = self
                            .cfg
                            .head_timeout
                            .as_ref()
                            .map(|(_, r)| r.clone())
                            .unwrap_or(LocalReply::RequestHeaderTimeout);
                        self.reject(reply);
                        continue;
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn after_body_bytes(&mut self, left: u64) {
        self.mode = Mode::H1(if left == 0 {
            self.message_done()
        } else {
            H1::Body(left)
        });
    }

    /// The state after a complete request message.
    fn message_done(&mut self) -> H1 {
        if std::mem::take(&mut self.hold_after) {
            lock(&self.shared.upgrade).decision = None;
            H1::Hold
        } else {
            H1::Head
        }
    }

    /// Move what can be checked from `rbuf` to `out`.
    fn step_h1(&mut self) -> Step {
        let Mode::H1(state) = self.mode else {
            return Step::NeedMore;
        };
        match state {
            H1::Head => self.step_head(),
            H1::Body(left) => {
                if self.rbuf.is_empty() {
                    return Step::NeedMore;
                }
                let n = (left.min(self.rbuf.len() as u64)) as usize;
                let b = self.rbuf.split_to(n);
                self.out.extend_from_slice(&b);
                self.after_body_bytes(left - n as u64);
                Step::Progress
            }
            H1::ChunkSize => {
                let Some(line_end) = self.rbuf.iter().position(|&b| b == b'\n') else {
                    if self.rbuf.len() > MAX_CHUNK_LINE {
                        self.body_error();
                        return Step::Progress;
                    }
                    return Step::NeedMore;
                };
                match parse_chunk_size(&self.rbuf[..=line_end]) {
                    Some(size) => {
                        let line = self.rbuf.split_to(line_end + 1);
                        self.out.extend_from_slice(&line);
                        self.mode = Mode::H1(if size == 0 {
                            H1::Trailers
                        } else {
                            H1::ChunkData(size)
                        });
                    }
                    None => self.body_error(),
                }
                Step::Progress
            }
            H1::ChunkData(left) => {
                if self.rbuf.is_empty() {
                    return Step::NeedMore;
                }
                let n = (left.min(self.rbuf.len() as u64)) as usize;
                let b = self.rbuf.split_to(n);
                self.out.extend_from_slice(&b);
                let left = left - n as u64;
                self.mode = Mode::H1(if left == 0 {
                    H1::ChunkCrlf
                } else {
                    H1::ChunkData(left)
                });
                Step::Progress
            }
            H1::ChunkCrlf => {
                if self.rbuf.len() < 2 {
                    if self.rbuf.first().is_some_and(|&b| b != b'\r') {
                        self.body_error();
                        return Step::Progress;
                    }
                    return Step::NeedMore;
                }
                if &self.rbuf[..2] != b"\r\n" {
                    self.body_error();
                    return Step::Progress;
                }
                let b = self.rbuf.split_to(2);
                self.out.extend_from_slice(&b);
                self.mode = Mode::H1(H1::ChunkSize);
                Step::Progress
            }
            H1::Trailers => {
                let Some(line_end) = self.rbuf.iter().position(|&b| b == b'\n') else {
                    if self.rbuf.len() > self.cfg.max_head_bytes {
                        self.body_error();
                        return Step::Progress;
                    }
                    return Step::NeedMore;
                };
                let line = &self.rbuf[..=line_end];
                if line.len() < 2
                    || line[line.len() - 2] != b'\r'
                    || line[..line.len() - 2].contains(&b'\r')
                {
                    self.body_error();
                    return Step::Progress;
                }
                let last = line.len() == 2;
                let b = self.rbuf.split_to(line_end + 1);
                self.out.extend_from_slice(&b);
                if last {
                    let next = self.message_done();
                    self.mode = Mode::H1(next);
                }
                Step::Progress
            }
            H1::Hold | H1::Rejected | H1::Failed => Step::NeedMore,
        }
    }

    fn body_error(&mut self) {
        self.cfg.stats.downstream_cx_protocol_error.increment(1);
        self.rbuf.clear();
        self.mode = Mode::H1(H1::Failed);
        self.linger = Linger::Wanted;
    }

    fn step_head(&mut self) -> Step {
        // Empty lines before a request line are ignored (RFC 9112 §2.2).
        let skip = self
            .rbuf
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .count();
        self.rbuf.advance(skip);
        if self.rbuf.is_empty() {
            return Step::NeedMore;
        }
        self.arm_head_timer();
        let limit = self.cfg.max_head_bytes;
        let Some(end) = head_end(&self.rbuf) else {
            if self.rbuf.len() > limit {
                self.cfg.stats.downstream_cx_protocol_error.increment(1);
                self.reject(LocalReply::DownstreamProtocolError {
                    status: 431,
                    details: "http1.headers_too_large",
                });
                return Step::Progress;
            }
            return Step::NeedMore;
        };
        if end > limit {
            self.cfg.stats.downstream_cx_protocol_error.increment(1);
            self.reject(LocalReply::DownstreamProtocolError {
                status: 431,
                details: "http1.headers_too_large",
            });
            return Step::Progress;
        }
        match check_head(&self.rbuf[..end], &self.cfg) {
            Ok(framing) => {
                let head = self.rbuf.split_to(end);
                self.out.extend_from_slice(&head);
                self.heads_emitted += 1;
                self.disarm_head_timer();
                self.hold_after = framing.upgrade;
                self.mode = Mode::H1(match framing.body {
                    BodyFraming::None => self.message_done(),
                    BodyFraming::Length(n) => H1::Body(n),
                    BodyFraming::Chunked => H1::ChunkSize,
                });
            }
            Err(reply) => {
                self.cfg.stats.downstream_cx_protocol_error.increment(1);
                self.reject(reply);
            }
        }
        Step::Progress
    }

    // ----------------------------------------------------------------------------------------
    // HTTP/2

    fn poll_read_h2(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let Mode::H2(t) = &mut self.mode else {
            return Poll::Ready(Ok(()));
        };
        let cfg = &self.cfg;
        if !t.inject_out.is_empty() || t.goaway_pending.is_some() {
            t.append_injections(&mut self.wbuf, cfg);
        }
        if !self.wbuf.is_empty() {
            flush_wbuf(&mut self.io, &mut self.wbuf, t, cfg, cx)?;
        }
        // A connection being closed: get the GOAWAY out, then fail every read.
        if let Some(deadline) = t.abort_deadline {
            let _ = flush_wbuf(&mut self.io, &mut self.wbuf, t, cfg, cx);
            if (t.goaway_pending.is_none() && self.wbuf.is_empty()) || Instant::now() >= deadline {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "connection closed by legate",
                )));
            }
            let sleep = t
                .abort_sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline.into())));
            if sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "connection closed by legate",
                )));
            }
            return Poll::Pending;
        }
        // Streams whose fake RST_STREAM h2 has now processed: tell the peer.
        if !t.reset_delivered.is_empty() {
            for id in std::mem::take(&mut t.reset_delivered) {
                t.inject_out.push_back(rst_frame(id, REASON_CANCEL));
                if let Some(s) = t.streams.remove(&id) {
                    t.stream_closed(&s, false, cfg);
                }
            }
            t.append_injections(&mut self.wbuf, cfg);
            let _ = flush_wbuf(&mut self.io, &mut self.wbuf, t, cfg, cx);
        }
        // Stalled responses.
        if t.poll_stall(cfg, cx) || std::mem::take(&mut t.stall_due) {
            if let Some(idle) = cfg.stream_idle_timeout {
                t.scan_stalled(idle, cfg);
            }
            cx.waker().wake_by_ref();
        }
        // Injected frames go in at a frame boundary, never inside a header block.
        if !t.inject_in.is_empty() && t.rd.at_boundary() && t.in_header_block.is_none() {
            while let Some(f) = t.inject_in.front() {
                if buf.remaining() < f.len() {
                    break;
                }
                buf.put_slice(f);
                if let Some(id) = frame_stream(f) {
                    t.reset_delivered.push(id);
                }
                t.inject_in.pop_front();
            }
            return Poll::Ready(Ok(()));
        }
        if !self.rbuf.is_empty() {
            // Bytes read during detection.
            let n = self.rbuf.len().min(buf.remaining());
            let chunk = self.rbuf.split_to(n);
            t.observe_in(&chunk, cfg);
            if t.rd.preface_left == 0 {
                self.head_deadline = None;
                self.head_sleep = None;
                self.shared.reading_head.store(false, Ordering::Release);
            }
            buf.put_slice(&chunk);
            return Poll::Ready(Ok(()));
        }
        let limit = if t.inject_in.is_empty() {
            buf.remaining()
        } else {
            t.rd.to_boundary().max(1)
        };
        let mut tmp = [0u8; READ_CHUNK];
        let max = limit.min(READ_CHUNK).min(buf.remaining()).max(1);
        let mut rb = ReadBuf::new(&mut tmp[..max]);
        match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => {
                let filled = rb.filled();
                if !filled.is_empty() {
                    t.observe_in(filled, cfg);
                    if t.rd.preface_left == 0 {
                        self.head_deadline = None;
                        self.head_sleep = None;
                        self.shared.reading_head.store(false, Ordering::Release);
                    } else if self.head_deadline.is_none() {
                        if let Some((d, _)) = &cfg.head_timeout {
                            self.head_deadline = Some(Instant::now() + *d);
                        }
                        self.shared.reading_head.store(true, Ordering::Release);
                    }
                    buf.put_slice(filled);
                }
                if t.abort_deadline.is_some() {
                    cx.waker().wake_by_ref();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if self.head_timer_expired(cx) {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "HTTP/2 preface timeout",
                    )));
                }
                Poll::Pending
            }
        }
    }

    /// Drain the socket briefly after a rejection so the client reads the answer.
    fn poll_linger(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match &mut self.linger {
                Linger::No | Linger::Done => return Pin::new(&mut self.io).poll_shutdown(cx),
                Linger::Wanted => {
                    let _ = std::task::ready!(Pin::new(&mut self.io).poll_shutdown(cx));
                    self.linger = Linger::Draining(Box::pin(tokio::time::sleep(LINGER)), 0);
                }
                Linger::Draining(sleep, discarded) => {
                    let mut tmp = [0u8; READ_CHUNK];
                    let mut rb = ReadBuf::new(&mut tmp);
                    match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
                        Poll::Ready(Ok(())) if !rb.filled().is_empty() => {
                            *discarded += rb.filled().len();
                            if *discarded > LINGER_MAX_BYTES {
                                self.linger = Linger::Done;
                                return Poll::Ready(Ok(()));
                            }
                        }
                        Poll::Ready(_) => {
                            self.linger = Linger::Done;
                            return Poll::Ready(Ok(()));
                        }
                        Poll::Pending => {
                            if sleep.as_mut().poll(cx).is_ready() {
                                self.linger = Linger::Done;
                                return Poll::Ready(Ok(()));
                            }
                            return Poll::Pending;
                        }
                    }
                }
            }
        }
    }

    /// A write that has made no progress for `stream_idle_timeout` fails the connection.
    fn stalled(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(idle) = self.cfg.stream_idle_timeout else {
            return false;
        };
        let sleep = self
            .write_stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
        if sleep.as_mut().poll(cx).is_ready() {
            self.cfg.stats.downstream_rq_idle_timeout.increment(1);
            return true;
        }
        false
    }
}

enum Step {
    Progress,
    NeedMore,
}

fn stall_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "peer stopped reading (stream idle timeout)",
    )
}

impl<I> AsyncRead for Guard<I>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.mode {
            Mode::H1(_) => this.poll_read_h1(cx, buf),
            Mode::H2(_) => this.poll_read_h2(cx, buf),
            Mode::Tunnel | Mode::Detect => {
                if !this.out.is_empty() || !this.rbuf.is_empty() {
                    let rest = this.rbuf.split();
                    this.out.extend_from_slice(&rest);
                    let n = this.out.len().min(buf.remaining());
                    buf.put_slice(&this.out[..n]);
                    this.out.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Pin::new(&mut this.io).poll_read(cx, buf)
            }
        }
    }
}

impl<I> AsyncWrite for Guard<I>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Mode::H2(t) = &mut this.mode {
            let cfg = &this.cfg;
            if t.abort_deadline.is_some() && t.goaway_pending.is_none() {
                // Closing: h2's frames are no longer sent.
                let _ = flush_wbuf(&mut this.io, &mut this.wbuf, t, cfg, cx);
                return Poll::Ready(Ok(data.len()));
            }
            flush_wbuf(&mut this.io, &mut this.wbuf, t, cfg, cx)?;
            if this.wbuf.len() >= WBUF_HIGH {
                if t.wstall_check(cfg, cx) {
                    return Poll::Ready(Err(stall_error()));
                }
                return Poll::Pending;
            }
            t.append_out(data, &mut this.wbuf, cfg);
            if t.abort_deadline.is_some() {
                cx.waker().wake_by_ref();
            }
            if t.poll_stall(cfg, cx) {
                // Scanned by the next read.
                t.stall_due = true;
                cx.waker().wake_by_ref();
            }
            flush_wbuf(&mut this.io, &mut this.wbuf, t, cfg, cx)?;
            return Poll::Ready(Ok(data.len()));
        }
        match Pin::new(&mut this.io).poll_write(cx, data) {
            Poll::Ready(r) => {
                this.write_stall = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                if this.stalled(cx) {
                    return Poll::Ready(Err(stall_error()));
                }
                Poll::Pending
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if matches!(this.mode, Mode::H2(_)) {
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &**b);
            return Pin::new(this).poll_write(cx, first);
        }
        match Pin::new(&mut this.io).poll_write_vectored(cx, bufs) {
            Poll::Ready(r) => {
                this.write_stall = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                if this.stalled(cx) {
                    return Poll::Ready(Err(stall_error()));
                }
                Poll::Pending
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        !matches!(self.mode, Mode::H2(_)) && self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Mode::H2(t) = &mut this.mode {
            let cfg = &this.cfg;
            flush_wbuf(&mut this.io, &mut this.wbuf, t, cfg, cx)?;
            if !this.wbuf.is_empty() {
                if t.abort_deadline.is_none() && t.wstall_check(cfg, cx) {
                    return Poll::Ready(Err(stall_error()));
                }
                // Queued frames are legate's to send (reads and writes keep flushing them), so
                // h2 goes on reading: a peer that does not read shows up as a growing queue,
                // which is how a flood is measured.
                if this.wbuf.len() < WBUF_HIGH {
                    return Poll::Ready(Ok(()));
                }
                return Poll::Pending;
            }
        }
        match Pin::new(&mut this.io).poll_flush(cx) {
            Poll::Ready(r) => {
                this.write_stall = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                if this.stalled(cx) {
                    return Poll::Ready(Err(stall_error()));
                }
                Poll::Pending
            }
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Mode::H2(t) = &mut this.mode {
            let cfg = &this.cfg;
            let _ = flush_wbuf(&mut this.io, &mut this.wbuf, t, cfg, cx);
            if !this.wbuf.is_empty() && t.abort_deadline.is_none() {
                return Poll::Pending;
            }
        }
        this.poll_linger(cx)
    }
}

/// Write queued HTTP/2 bytes to the socket; errors only for socket errors.
fn flush_wbuf<I: AsyncWrite + Unpin>(
    io: &mut I,
    wbuf: &mut BytesMut,
    t: &mut H2Track,
    cfg: &GuardConfig,
    cx: &mut Context<'_>,
) -> io::Result<()> {
    while !wbuf.is_empty() {
        match Pin::new(&mut *io).poll_write(cx, wbuf) {
            Poll::Ready(Ok(0)) => {
                return Err(io::Error::new(io::ErrorKind::WriteZero, "socket closed"))
            }
            Poll::Ready(Ok(n)) => {
                wbuf.advance(n);
                t.drained(n as u64);
                t.wstall = None;
            }
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => {
                let _ = cfg;
                return Ok(());
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1 head checks

#[derive(Debug, PartialEq, Eq)]
enum BodyFraming {
    None,
    Length(u64),
    Chunked,
}

#[derive(Debug)]
struct Framing {
    body: BodyFraming,
    /// An upgrade or CONNECT request: the connection may become a tunnel after it.
    upgrade: bool,
}

/// The end of a request head (after its empty line), accepting bare LF line ends as hyper does.
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(p) = buf[i..].iter().position(|&b| b == b'\n') {
        let at = i + p;
        match buf.get(at + 1) {
            Some(b'\n') => return Some(at + 2),
            Some(b'\r') if buf.get(at + 2) == Some(&b'\n') => return Some(at + 3),
            _ => {}
        }
        i = at + 1;
    }
    None
}

fn protocol_error(status: u16, details: &'static str) -> LocalReply {
    LocalReply::DownstreamProtocolError { status, details }
}

/// Check a complete request head and find its body framing.
fn check_head(head: &[u8], cfg: &GuardConfig) -> Result<Framing, LocalReply> {
    let mut headers = vec![httparse::EMPTY_HEADER; cfg.max_headers];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(protocol_error(400, "http1.codec_error")),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(protocol_error(431, "http1.too_many_headers"))
        }
        Err(_) => return Err(protocol_error(400, "http1.codec_error")),
    }
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return Err(protocol_error(400, "http1.codec_error"));
    };
    if path.len() > cfg.max_uri_bytes {
        return Err(protocol_error(414, "http1.uri_too_long"));
    }
    if http::Method::from_bytes(method.as_bytes()).is_err() {
        return Err(protocol_error(400, "http1.codec_error"));
    }
    if http::Uri::try_from(path).is_err() {
        return Err(protocol_error(400, "http1.invalid_url"));
    }
    let mut content_length: Option<u64> = None;
    let mut te: Vec<&[u8]> = Vec::new();
    let mut upgrade = method == "CONNECT";
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let Some(n) = parse_content_length(h.value) else {
                return Err(protocol_error(400, "http1.invalid_content_length"));
            };
            if content_length.is_some_and(|prev| prev != n) {
                return Err(protocol_error(400, "http1.invalid_content_length"));
            }
            content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            te.push(h.value);
        } else if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade = true;
        }
        if http::HeaderName::from_bytes(h.name.as_bytes()).is_err()
            || http::HeaderValue::from_bytes(h.value).is_err()
        {
            return Err(protocol_error(400, "http1.invalid_characters"));
        }
    }
    let body = if te.is_empty() {
        match content_length {
            None | Some(0) => BodyFraming::None,
            Some(n) => BodyFraming::Length(n),
        }
    } else {
        if version == 0 {
            return Err(protocol_error(400, "http1.invalid_transfer_encoding"));
        }
        // Exactly one coding in all: `chunked`. Anything else is not implemented (RFC 9112 §6.1).
        let mut tokens = te
            .iter()
            .flat_map(|v| v.split(|&b| b == b','))
            .map(|t| t.trim_ascii());
        let only_chunked = tokens
            .next()
            .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"))
            && tokens.next().is_none();
        if !only_chunked {
            return Err(protocol_error(501, "http1.invalid_transfer_encoding"));
        }
        if content_length.is_some() && !cfg.allow_chunked_length {
            return Err(protocol_error(
                400,
                "http1.content_length_and_chunked_not_allowed",
            ));
        }
        BodyFraming::Chunked
    };
    Ok(Framing { body, upgrade })
}

/// `Content-Length`: digits only (no sign, no list), surrounding whitespace allowed.
fn parse_content_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// A chunk-size line, CRLF included: hex digits, optional whitespace and extensions.
fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\r\n")?;
    if line.contains(&b'\r') || line.contains(&b'\n') {
        return None;
    }
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return None;
    }
    let rest = &line[digits..];
    let rest_trimmed = rest.trim_ascii_start();
    if !rest_trimmed.is_empty() {
        // chunk-ext: `;` and then visible characters or whitespace, no control characters.
        if rest_trimmed[0] != b';'
            || rest_trimmed
                .iter()
                .any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
        {
            return None;
        }
    } else if rest.iter().any(|&b| b != b' ' && b != b'\t') {
        return None;
    }
    let s = std::str::from_utf8(&line[..digits]).ok()?;
    u64::from_str_radix(s, 16).ok()
}

// ---------------------------------------------------------------------------------------------
// HTTP/2 frame tracking

const FRAME_DATA: u8 = 0x0;
const FRAME_HEADERS: u8 = 0x1;
const FRAME_RST_STREAM: u8 = 0x3;
const FRAME_SETTINGS: u8 = 0x4;
const FRAME_PING: u8 = 0x6;
const FRAME_GOAWAY: u8 = 0x7;
const FRAME_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const REASON_PROTOCOL_ERROR: u32 = 0x1;
const REASON_INTERNAL_ERROR: u32 = 0x2;
const REASON_FLOW_CONTROL_ERROR: u32 = 0x3;
const REASON_STREAM_CLOSED: u32 = 0x5;
const REASON_FRAME_SIZE_ERROR: u32 = 0x6;
const REASON_REFUSED_STREAM: u32 = 0x7;
const REASON_CANCEL: u32 = 0x8;
const REASON_ENHANCE_YOUR_CALM: u32 = 0xb;
/// Payload bytes kept of frames whose payload matters (RST_STREAM, GOAWAY with debug data).
const CAPTURE: usize = 64;

#[derive(Debug, Clone, Copy, Default)]
struct FrameHead {
    len: usize,
    kind: u8,
    flags: u8,
    stream: u32,
}

/// Follows frame boundaries in one direction of an HTTP/2 byte stream.
struct FrameParser {
    preface_left: usize,
    hdr: [u8; 9],
    hdr_len: usize,
    head: FrameHead,
    payload_left: usize,
    payload: Vec<u8>,
}

enum FrameEvent<'a> {
    Start(FrameHead),
    End(FrameHead, &'a [u8]),
}

impl FrameParser {
    fn new(preface: usize) -> Self {
        FrameParser {
            preface_left: preface,
            hdr: [0; 9],
            hdr_len: 0,
            head: FrameHead::default(),
            payload_left: 0,
            payload: Vec::new(),
        }
    }

    fn at_boundary(&self) -> bool {
        self.preface_left == 0 && self.hdr_len == 0 && self.payload_left == 0
    }

    /// Bytes until the next boundary (or until the frame header is complete).
    fn to_boundary(&self) -> usize {
        if self.preface_left > 0 {
            self.preface_left
        } else if self.hdr_len > 0 && self.hdr_len < 9 {
            9 - self.hdr_len
        } else {
            self.payload_left
        }
    }

    fn feed(&mut self, mut data: &[u8], on: &mut dyn FnMut(FrameEvent<'_>)) {
        while !data.is_empty() {
            if self.preface_left > 0 {
                let n = self.preface_left.min(data.len());
                self.preface_left -= n;
                data = &data[n..];
                continue;
            }
            if self.payload_left == 0 {
                let n = (9 - self.hdr_len).min(data.len());
                self.hdr[self.hdr_len..self.hdr_len + n].copy_from_slice(&data[..n]);
                self.hdr_len += n;
                data = &data[n..];
                if self.hdr_len < 9 {
                    continue;
                }
                let h = &self.hdr;
                self.head = FrameHead {
                    len: (h[0] as usize) << 16 | (h[1] as usize) << 8 | h[2] as usize,
                    kind: h[3],
                    flags: h[4],
                    stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
                };
                self.payload.clear();
                on(FrameEvent::Start(self.head));
                if self.head.len == 0 {
                    self.hdr_len = 0;
                    on(FrameEvent::End(self.head, &[]));
                } else {
                    self.payload_left = self.head.len;
                }
                continue;
            }
            let n = self.payload_left.min(data.len());
            let keep = CAPTURE.saturating_sub(self.payload.len()).min(n);
            if keep > 0 && matches!(self.head.kind, FRAME_RST_STREAM | FRAME_GOAWAY) {
                self.payload.extend_from_slice(&data[..keep]);
            }
            self.payload_left -= n;
            data = &data[n..];
            if self.payload_left == 0 {
                self.hdr_len = 0;
                on(FrameEvent::End(self.head, &self.payload));
            }
        }
    }
}

struct StreamTrack {
    opened: Instant,
    remote_end: bool,
    local_end: bool,
    response: bool,
    last_out: Instant,
    resetting: bool,
}

/// What the guard knows about one HTTP/2 connection.
struct H2Track {
    rd: FrameParser,
    wr: FrameParser,
    in_header_block: Option<u32>,
    streams: HashMap<u32, StreamTrack>,
    max_client_stream: u32,
    open_responses: usize,
    closed: u64,
    premature: u64,
    /// Outgoing frames queued in `wbuf`: (end offset, control frame).
    queued: VecDeque<(u64, bool)>,
    queued_control: usize,
    appended: u64,
    sent: u64,
    inject_in: VecDeque<Vec<u8>>,
    inject_out: VecDeque<Vec<u8>>,
    reset_delivered: Vec<u32>,
    stall_sleep: Option<Pin<Box<Sleep>>>,
    stall_due: bool,
    wstall: Option<Pin<Box<Sleep>>>,
    abort_deadline: Option<Instant>,
    abort_sleep: Option<Pin<Box<Sleep>>>,
    /// GOAWAY to append at the next boundary of the outgoing stream.
    goaway_pending: Option<Vec<u8>>,
}

impl H2Track {
    fn new() -> Self {
        H2Track {
            rd: FrameParser::new(PREFACE.len()),
            wr: FrameParser::new(0),
            in_header_block: None,
            streams: HashMap::new(),
            max_client_stream: 0,
            open_responses: 0,
            closed: 0,
            premature: 0,
            queued: VecDeque::new(),
            queued_control: 0,
            appended: 0,
            sent: 0,
            inject_in: VecDeque::new(),
            inject_out: VecDeque::new(),
            reset_delivered: Vec::new(),
            stall_sleep: None,
            stall_due: false,
            wstall: None,
            abort_deadline: None,
            abort_sleep: None,
            goaway_pending: None,
        }
    }

    /// Frames from the client.
    fn observe_in(&mut self, data: &[u8], cfg: &GuardConfig) {
        let mut events: Vec<(bool, FrameHead, u32)> = Vec::new();
        self.rd.feed(data, &mut |ev| match ev {
            FrameEvent::Start(h) => events.push((true, h, 0)),
            FrameEvent::End(h, p) => events.push((false, h, error_code(h.kind, p))),
        });
        for (start, h, code) in events {
            if start {
                self.frame_in_start(h);
            } else if h.kind == FRAME_RST_STREAM {
                cfg.stats.http2_rx_reset.increment(1);
                let _ = code;
                if let Some(s) = self.streams.remove(&h.stream) {
                    let done = s.remote_end && s.local_end;
                    let early = s.opened.elapsed() < PREMATURE_LIFETIME;
                    self.stream_closed(&s, !done && early && !s.resetting, cfg);
                }
            }
        }
    }

    fn frame_in_start(&mut self, h: FrameHead) {
        match h.kind {
            FRAME_HEADERS => {
                if h.flags & FLAG_END_HEADERS == 0 {
                    self.in_header_block = Some(h.stream);
                }
                if h.stream > self.max_client_stream && h.stream % 2 == 1 {
                    self.max_client_stream = h.stream;
                    let now = Instant::now();
                    self.streams.insert(
                        h.stream,
                        StreamTrack {
                            opened: now,
                            remote_end: h.flags & FLAG_END_STREAM != 0,
                            local_end: false,
                            response: false,
                            last_out: now,
                            resetting: false,
                        },
                    );
                } else if h.flags & FLAG_END_STREAM != 0 {
                    if let Some(s) = self.streams.get_mut(&h.stream) {
                        s.remote_end = true;
                    }
                }
            }
            FRAME_CONTINUATION if h.flags & FLAG_END_HEADERS != 0 => {
                self.in_header_block = None;
            }
            FRAME_DATA if h.flags & FLAG_END_STREAM != 0 => {
                if let Some(s) = self.streams.get_mut(&h.stream) {
                    s.remote_end = true;
                }
            }
            _ => {}
        }
        if let Some(s) = self.streams.get(&h.stream) {
            if s.remote_end && s.local_end {
                self.finish_stream(h.stream);
            }
        }
    }

    fn finish_stream(&mut self, id: u32) {
        if let Some(s) = self.streams.remove(&id) {
            if s.response && !s.local_end {
                self.open_responses = self.open_responses.saturating_sub(1);
            }
            self.closed += 1;
        }
    }

    /// A stream ended by a reset; `premature` when the client caused it early.
    fn stream_closed(&mut self, s: &StreamTrack, premature: bool, cfg: &GuardConfig) {
        if s.response && !s.local_end {
            self.open_responses = self.open_responses.saturating_sub(1);
        }
        self.closed += 1;
        if premature {
            self.premature += 1;
        }
        // Envoy's rule (ConnectionManagerImpl::maybeDrainDueToPrematureResets).
        let trip = if self.closed < PREMATURE_STREAMS {
            self.premature * 2 >= PREMATURE_STREAMS
        } else {
            self.premature * 2 >= self.closed
        };
        if trip && self.abort_deadline.is_none() {
            cfg.stats
                .downstream_rq_too_many_premature_resets
                .increment(1);
            self.start_abort(b"too_many_premature_resets", false);
        }
    }

    /// Queue a GOAWAY (ENHANCE_YOUR_CALM) and close once it is out. On a flood, frames queued
    /// behind the one being written are dropped so the GOAWAY is next.
    fn start_abort(&mut self, debug: &[u8], flood: bool) {
        let mut f = Vec::with_capacity(17 + debug.len());
        f.extend_from_slice(&((8 + debug.len()) as u32).to_be_bytes()[1..]);
        f.push(FRAME_GOAWAY);
        f.push(0);
        f.extend_from_slice(&0u32.to_be_bytes());
        f.extend_from_slice(&self.max_client_stream.to_be_bytes());
        f.extend_from_slice(&REASON_ENHANCE_YOUR_CALM.to_be_bytes());
        f.extend_from_slice(debug);
        self.goaway_pending = Some(f);
        self.abort_deadline = Some(Instant::now() + ABORT_FLUSH);
        let _ = flood;
    }

    /// Frames from h2 on their way to the client.
    fn append_out(&mut self, data: &[u8], wbuf: &mut BytesMut, cfg: &GuardConfig) {
        // Feed frame by frame so injected frames can go in at each boundary.
        let mut rest = data;
        while !rest.is_empty() {
            let step = if self.wr.at_boundary() {
                9.min(rest.len())
            } else {
                self.wr.to_boundary().min(rest.len())
            };
            let (now, later) = rest.split_at(step.max(1));
            let mut ended = None;
            self.wr.feed(now, &mut |ev| {
                if let FrameEvent::End(h, p) = ev {
                    let code = error_code(h.kind, p);
                    let debug = if h.kind == FRAME_GOAWAY && p.len() > 8 {
                        p[8..].to_vec()
                    } else {
                        Vec::new()
                    };
                    ended = Some((h, code, debug));
                }
            });
            wbuf.extend_from_slice(now);
            self.appended += now.len() as u64;
            rest = later;
            if let Some((h, code, debug)) = ended {
                self.frame_out(h, code, &debug, cfg);
                self.append_injections(wbuf, cfg);
            }
        }
    }

    /// Record one complete outgoing frame.
    fn frame_out(&mut self, h: FrameHead, code: u32, debug: &[u8], cfg: &GuardConfig) {
        let control = matches!(h.kind, FRAME_PING | FRAME_SETTINGS | FRAME_RST_STREAM);
        self.queued.push_back((self.appended, control));
        if control {
            self.queued_control += 1;
        }
        let now = Instant::now();
        match h.kind {
            FRAME_HEADERS | FRAME_DATA => {
                if let Some(s) = self.streams.get_mut(&h.stream) {
                    if h.kind == FRAME_HEADERS && !s.response {
                        s.response = true;
                        self.open_responses += 1;
                    }
                    s.last_out = now;
                    if h.flags & FLAG_END_STREAM != 0 && !s.local_end {
                        s.local_end = true;
                        if s.response {
                            self.open_responses = self.open_responses.saturating_sub(1);
                        }
                    }
                    if s.remote_end && s.local_end {
                        self.finish_stream(h.stream);
                    }
                }
            }
            FRAME_RST_STREAM => {
                cfg.stats.http2_tx_reset.increment(1);
                if let Some(s) = self.streams.remove(&h.stream) {
                    match code {
                        // A refused stream was never opened.
                        REASON_REFUSED_STREAM => {
                            if s.response && !s.local_end {
                                self.open_responses = self.open_responses.saturating_sub(1);
                            }
                        }
                        // The client broke the protocol on this stream (MadeYouReset).
                        REASON_PROTOCOL_ERROR
                        | REASON_FLOW_CONTROL_ERROR
                        | REASON_STREAM_CLOSED
                        | REASON_FRAME_SIZE_ERROR => {
                            let early = s.opened.elapsed() < PREMATURE_LIFETIME;
                            self.stream_closed(&s, early && !s.resetting, cfg);
                        }
                        _ => self.stream_closed(&s, false, cfg),
                    }
                }
            }
            FRAME_GOAWAY if code == REASON_ENHANCE_YOUR_CALM => match debug {
                b"too_many_resets" | b"too_many_internal_resets" => {
                    cfg.stats
                        .downstream_rq_too_many_premature_resets
                        .increment(1);
                }
                b"too_many_continuations" | b"header_list_way_too_large" => {
                    cfg.stats.http2_header_overflow.increment(1);
                }
                _ => {}
            },
            _ => {}
        }
        let _ = REASON_INTERNAL_ERROR;
        if self.abort_deadline.is_none() {
            if self.queued_control > cfg.max_outbound_control_frames {
                cfg.stats.http2_outbound_control_flood.increment(1);
                self.start_abort(b"outbound_control_flood", true);
            } else if self.queued.len() > cfg.max_outbound_frames {
                cfg.stats.http2_outbound_flood.increment(1);
                self.start_abort(b"outbound_flood", true);
            }
        }
    }

    /// Frames legate adds to the outgoing stream (at a boundary): resets, then a GOAWAY.
    fn append_injections(&mut self, wbuf: &mut BytesMut, cfg: &GuardConfig) {
        if !self.wr.at_boundary() {
            return;
        }
        while let Some(f) = self.inject_out.pop_front() {
            wbuf.extend_from_slice(&f);
            self.appended += f.len() as u64;
            self.queued.push_back((self.appended, true));
            self.queued_control += 1;
            cfg.stats.http2_tx_reset.increment(1);
        }
        if let Some(g) = self.goaway_pending.take() {
            // Drop queued frames behind the one being written: the GOAWAY goes next.
            let cut = self
                .queued
                .iter()
                .find(|(end, _)| *end > self.sent)
                .map_or(self.appended, |(end, _)| *end);
            let keep = (cut - self.sent) as usize;
            if keep <= wbuf.len() {
                wbuf.truncate(keep);
                self.appended = cut;
                while self.queued.back().is_some_and(|(end, _)| *end > cut) {
                    if let Some((_, c)) = self.queued.pop_back() {
                        if c {
                            self.queued_control -= 1;
                        }
                    }
                }
            }
            wbuf.extend_from_slice(&g);
            self.appended += g.len() as u64;
            self.inject_out.clear();
        }
    }

    /// `n` more bytes reached the socket.
    fn drained(&mut self, n: u64) {
        self.sent += n;
        while self
            .queued
            .front()
            .is_some_and(|(end, _)| *end <= self.sent)
        {
            if let Some((_, c)) = self.queued.pop_front() {
                if c {
                    self.queued_control -= 1;
                }
            }
        }
    }

    /// The stall check's timer: armed while a response is open, polled from reads and writes
    /// (h2 may write a response's headers and then wait on the window without reading).
    fn poll_stall(&mut self, cfg: &GuardConfig, cx: &mut Context<'_>) -> bool {
        let Some(idle) = cfg.stream_idle_timeout else {
            return false;
        };
        if self.open_responses == 0 {
            self.stall_sleep = None;
            return false;
        }
        let every = (idle / 4).max(Duration::from_millis(10));
        let sleep = self
            .stall_sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(every)));
        if sleep.as_mut().poll(cx).is_ready() {
            self.stall_sleep = None;
            return true;
        }
        false
    }

    /// Responses that sent nothing for `idle`: reset them on both sides.
    fn scan_stalled(&mut self, idle: Duration, cfg: &GuardConfig) {
        let now = Instant::now();
        for (id, s) in self.streams.iter_mut() {
            if s.response && !s.local_end && !s.resetting && now.duration_since(s.last_out) >= idle
            {
                s.resetting = true;
                cfg.stats.http2_tx_flush_timeout.increment(1);
                cfg.stats.downstream_rq_idle_timeout.increment(1);
                self.inject_in.push_back(rst_frame(*id, REASON_CANCEL));
            }
        }
    }

    /// The socket accepts nothing while frames wait: a peer that stopped reading.
    fn wstall_check(&mut self, cfg: &GuardConfig, cx: &mut Context<'_>) -> bool {
        let Some(idle) = cfg.stream_idle_timeout else {
            return false;
        };
        let sleep = self
            .wstall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
        if sleep.as_mut().poll(cx).is_ready() {
            cfg.stats.downstream_rq_idle_timeout.increment(1);
            return true;
        }
        false
    }
}

/// The error code of a RST_STREAM or GOAWAY payload.
fn error_code(kind: u8, p: &[u8]) -> u32 {
    let at = if kind == FRAME_GOAWAY { 4 } else { 0 };
    match p.get(at..at + 4) {
        Some(b) => u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        None => 0,
    }
}

fn rst_frame(stream: u32, reason: u32) -> Vec<u8> {
    let mut f = vec![0, 0, 4, FRAME_RST_STREAM, 0];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(&reason.to_be_bytes());
    f
}

fn frame_stream(f: &[u8]) -> Option<u32> {
    (f.len() >= 9 && f[3] == FRAME_RST_STREAM)
        .then(|| u32::from_be_bytes([f[5], f[6], f[7], f[8]]) & 0x7fff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> GuardConfig {
        let s = crate::observe::Stats::new();
        GuardConfig {
            max_head_bytes: 60 * 1024,
            max_headers: 100,
            max_uri_bytes: 16 * 1024,
            allow_chunked_length: false,
            head_timeout: None,
            stream_idle_timeout: None,
            max_outbound_frames: 10000,
            max_outbound_control_frames: 1000,
            stats: GuardStats {
                downstream_rq_idle_timeout: s.counter("a"),
                downstream_rq_too_many_premature_resets: s.counter("b"),
                downstream_cx_protocol_error: s.counter("c"),
                http2_rx_reset: s.counter("d"),
                http2_tx_reset: s.counter("e"),
                http2_outbound_flood: s.counter("f"),
                http2_outbound_control_flood: s.counter("g"),
                http2_tx_flush_timeout: s.counter("h"),
                http2_header_overflow: s.counter("i"),
            },
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config {
            cases: 512,
            failure_persistence: Some(Box::new(
                proptest::test_runner::FileFailurePersistence::Direct(
                    "tests/proptest-regressions/guard.txt",
                ),
            )),
            ..Default::default()
        })]

        /// Any bytes: the head checks answer, never panic.
        #[test]
        fn head_checks_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let c = cfg();
            if let Some(end) = head_end(&bytes) {
                let _ = check_head(&bytes[..end], &c);
            }
            let _ = parse_chunk_size(&bytes);
            let mut p = FrameParser::new(0);
            p.feed(&bytes, &mut |_| {});
        }

        /// Head-like text around the framing headers.
        #[test]
        fn framing_verdicts_are_consistent(
            cl in proptest::option::of("[ +0-9,a-f]{0,6}"),
            te in proptest::option::of("(chunked|gzip|identity|, ){0,3}"),
        ) {
            let mut head = String::from("POST / HTTP/1.1\r\nhost: a\r\n");
            if let Some(cl) = &cl { head.push_str(&format!("content-length: {cl}\r\n")); }
            if let Some(te) = &te { head.push_str(&format!("transfer-encoding: {te}\r\n")); }
            head.push_str("\r\n");
            match check_head(head.as_bytes(), &cfg()) {
                Ok(f) => {
                    // Accepted framing is never ambiguous.
                    if te.is_some() {
                        proptest::prop_assert_eq!(f.body, BodyFraming::Chunked);
                        proptest::prop_assert!(cl.is_none());
                    }
                }
                Err(LocalReply::DownstreamProtocolError { status, .. }) => {
                    proptest::prop_assert!(status == 400 || status == 501);
                }
                Err(other) => proptest::prop_assert!(false, "{:?}", other),
            }
        }
    }

    #[test]
    fn head_end_finds_crlf_and_lf() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nhost: a\r\n\r\nrest"), Some(27));
        assert_eq!(head_end(b"GET / HTTP/1.1\nhost: a\n\n"), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nhost: a\r\n"), None);
    }

    #[test]
    fn content_length_is_digits_only() {
        assert_eq!(parse_content_length(b" 42 "), Some(42));
        for bad in [
            &b"+4"[..],
            b"-1",
            b"4, 4",
            b"",
            b"0x4",
            b"4 4",
            b"99999999999999999999",
        ] {
            assert_eq!(parse_content_length(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn chunk_sizes() {
        assert_eq!(parse_chunk_size(b"1a\r\n"), Some(26));
        assert_eq!(parse_chunk_size(b"3;name=value\r\n"), Some(3));
        assert_eq!(parse_chunk_size(b"3 \r\n"), Some(3));
        for bad in [
            &b"zz\r\n"[..],
            b"0x3\r\n",
            b"\r\n",
            b" 3\r\n",
            b"3\n",
            b"3\rx\r\n",
            b"fffffffffffffffff1\r\n",
            b"3 x\r\n",
        ] {
            assert_eq!(parse_chunk_size(bad), None, "{bad:?}");
        }
    }
}
