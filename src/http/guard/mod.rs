//! The downstream connection's guard: protocol detection for every connection, and for HTTP/2
//! an I/O layer between the socket and h2 that enforces what it leaves open. (HTTP/1.1
//! has legate's own codec, [`crate::http::h1`], which applies the same limits itself.)
//!
//! - **Protocol detection** (`codec_type: AUTO`): the first bytes decide HTTP/1.1 or HTTP/2
//!   (prior knowledge), bounded like a request head.
//! - **HTTP/2.** Frames are followed in both directions (headers only, payloads pass through):
//!   `http2.rx_reset`/`tx_reset`, Envoy's premature-reset rule (Rapid Reset, MadeYouReset),
//!   outbound frame floods (frames queued here because the peer does not read), and streams
//!   whose response stalls (zero window) past `stream_idle_timeout`, which are reset on both
//!   sides. Such a connection gets a GOAWAY and is closed.
//! - **Slow readers.** A write that makes no progress for `stream_idle_timeout` fails the
//!   connection.

mod http2;

use super::local_reply::LocalReply;
use bytes::{Buf, BytesMut};
use http2::*;
use metrics::Counter;
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Bytes of outgoing HTTP/2 frames held here while the peer does not read; above it, h2 waits.
const WBUF_HIGH: usize = 256 * 1024;
/// Envoy's premature reset rule: a stream reset within this time of opening is premature; after
/// `PREMATURE_STREAMS` closed streams, more than half premature closes the connection (and
/// `PREMATURE_STREAMS / 2` premature resets close it earlier).
const PREMATURE_LIFETIME: Duration = Duration::from_secs(1);
const PREMATURE_STREAMS: u64 = 500;
/// How long a GOAWAY may take to leave before an aborted connection is closed anyway.
const ABORT_FLUSH: Duration = Duration::from_secs(1);

const READ_CHUNK: usize = 16 * 1024;
/// Buffers up to this size are kept; larger ones (a burst of HTTP/2 frames) are released while
/// the connection is idle.
const IDLE_KEEP: usize = 4 * 1024;

/// The downstream limits and counters of one connection manager: the guard applies them to
/// HTTP/2, and legate's HTTP/1.1 codec ([`crate::http::h1`]) to its heads and bodies.
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
    /// Connections closed because a keepalive PING went unanswered.
    pub http2_keepalive_timeout: Counter,
    pub http2_header_overflow: Counter,
}

/// State the guard shares with the connection's service and its `serve` loop.
#[derive(Default)]
pub struct ConnShared {
    /// Streams in flight in the service, and when the last one ended.
    active: AtomicUsize,
    idle_since: Mutex<Option<Instant>>,
    /// A request head is being received.
    pub reading_head: AtomicBool,
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

    pub fn stream_started(self: &Arc<Self>) -> ActiveStream {
        self.active.fetch_add(1, Ordering::AcqRel);
        ActiveStream(Some(self.clone()))
    }

    /// `Some(since)` when no stream is in flight and no head is arriving.
    pub fn idle_since(&self) -> Option<Instant> {
        if self.active.load(Ordering::Acquire) > 0 || self.reading_head.load(Ordering::Acquire) {
            return None;
        }
        *lock(&self.idle_since)
    }
}

/// A stream in flight, for the connection's idle timer; ends when dropped (or, with a time the
/// caller has already read, [`ActiveStream::end_at`]).
pub struct ActiveStream(Option<Arc<ConnShared>>);

impl ActiveStream {
    pub fn end_at(mut self, now: Instant) {
        self.end(|| now);
    }

    fn end(&mut self, now: impl FnOnce() -> Instant) {
        if let Some(shared) = self.0.take() {
            *lock(&shared.idle_since) = Some(now());
            shared.active.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for ActiveStream {
    fn drop(&mut self) {
        self.end(Instant::now);
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
    H2(Box<H2Track>),
}

pub struct Guard<I> {
    io: I,
    cfg: Arc<GuardConfig>,
    shared: Arc<ConnShared>,
    mode: Mode,
    /// Bytes read from the socket, not yet checked.
    rbuf: BytesMut,
    /// Bytes for the peer (HTTP/2 only), queued here so floods can be measured.
    wbuf: BytesMut,
    eof: bool,
    head_deadline: Option<Instant>,
    head_sleep: Option<Pin<Box<Sleep>>>,
    /// Set while writes make no progress (the peer does not read).
    write_stall: Option<Pin<Box<Sleep>>>,
    /// A buffer held more than `IDLE_KEEP` bytes since the connection was last idle.
    big_buffers: bool,
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
            wbuf: BytesMut::new(),
            eof: false,
            head_deadline: None,
            head_sleep: None,
            write_stall: None,
            big_buffers: false,
        }
    }

    /// Serve HTTP/2 (after [`Guard::detect`] or from configuration/ALPN).
    pub fn set_http2(&mut self) {
        self.mode = Mode::H2(Box::new(H2Track::new()));
    }

    /// The socket and what was read from it while detecting the protocol (for HTTP/1.1,
    /// whose codec reads the socket itself).
    pub fn into_parts(self) -> (I, BytesMut) {
        (self.io, self.rbuf)
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
        // Uninitialised scratch: zeroing 16 KiB on every read would cost more than the read.
        let mut tmp = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let max = max.clamp(1, READ_CHUNK);
        let mut rb = ReadBuf::uninit(&mut tmp[..max]);
        match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => {
                if rb.filled().is_empty() {
                    self.eof = true;
                } else {
                    self.rbuf.extend_from_slice(rb.filled());
                    self.big_buffers |= self.rbuf.len() > IDLE_KEEP;
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
        let mut tmp = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let max = limit.min(READ_CHUNK).min(buf.remaining()).max(1);
        let mut rb = ReadBuf::uninit(&mut tmp[..max]);
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
                if self.shared.active.load(Ordering::Acquire) == 0 {
                    self.shed_buffers();
                }
                Poll::Pending
            }
        }
    }

    /// An idle connection keeps no large buffer: what a large head, a chunked upload or a burst
    /// of HTTP/2 frames grew is released (as nginx releases its large header buffers when a
    /// connection goes keep-alive). Small buffers stay for reuse, so the common request costs no
    /// allocation here.
    fn shed_buffers(&mut self) {
        if self.big_buffers && self.rbuf.is_empty() && self.wbuf.is_empty() {
            self.rbuf = BytesMut::new();
            self.wbuf = BytesMut::new();
            self.big_buffers = false;
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
            Mode::H2(_) => this.poll_read_h2(cx, buf),
            Mode::Detect => {
                if !this.rbuf.is_empty() {
                    let n = this.rbuf.len().min(buf.remaining());
                    buf.put_slice(&this.rbuf[..n]);
                    this.rbuf.advance(n);
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
            this.big_buffers |= this.wbuf.len() > IDLE_KEEP;
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
        Pin::new(&mut this.io).poll_shutdown(cx)
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

/// Limits for unit tests: Envoy's defaults, counters in a private store.
#[cfg(test)]
pub(crate) fn test_config() -> GuardConfig {
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
            http2_keepalive_timeout: s.counter("j"),
            http2_header_overflow: s.counter("i"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

        /// Any bytes: the HTTP/2 frame follower answers, never panics.
        #[test]
        fn frame_parser_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let mut p = FrameParser::new(0);
            p.feed(&bytes, &mut |_| {});
        }
    }
}
