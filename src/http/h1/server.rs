//! One downstream HTTP/1.1 connection, driven by one task: read and check a head, hand the
//! request to the connection manager, feed its body, write its response, then the next head.
//!
//! Nothing here goes through a channel or another task. The request's handler (routing, the
//! router filter, the upstream exchange) is polled by this loop, and the request body reaches
//! it through a one-frame slot ([`super::body`]) that this loop fills only when asked, so a
//! client is never read faster than the upstream takes its body. A response frame is written
//! with its framing in one `writev`, and the next frame is not polled before it is out, so a
//! client that reads slowly slows the upstream down instead of growing a buffer here.
//!
//! While a request is in flight the socket is still watched: the client closing it (or
//! half-closing it, as hyper and Envoy treat it) ends the request as a downstream disconnect
//! (`DC`), which also closes the upstream connection instead of waiting on it.

use super::body::{BodyError, Inbound, Need};
use super::request::{head_end, parse_head, protocol_error, BodyFraming, Head};
use super::response::{encode_head, BodyLen, Encoding, RequestSide, CONTINUE};
use super::wire::put_chunk_size;
use super::wire::Outgoing;
use crate::cluster::endpoint_pool::Upgraded;
use crate::http::body::{DownstreamBody, ResponseBody};
use crate::http::connection_manager::{ConnectionManager, ConnectionStats, Downstream};
use crate::http::guard::{ConnShared, GuardConfig};
use crate::http::local_reply::LocalReply;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{Method, Response, StatusCode, Version};
use http_body::Body;
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Sleep;

const READ_CHUNK: usize = 16 * 1024;
/// Bytes read ahead while a request is in flight (a pipelined request, or the client's close).
const READ_AHEAD: usize = 16 * 1024;
/// Envoy's `delayed_close_timeout`: how long a connection closed with unread input (a rejected
/// head, an unread upload) is drained, so the client reads the answer instead of a reset.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_MAX_BYTES: usize = 1 << 20;
/// Small response frames are copied next to their framing when the stream cannot write
/// vectors (TLS), so that one frame is one record.
const COALESCE_MAX: usize = 16 * 1024;
/// How much of a request body still arriving is read ahead when the response starts, to
/// tell whether the request is complete.
const BODY_PEEK: usize = 64 * 1024;
/// Buffers up to this size are kept while the connection is idle.
const IDLE_KEEP: usize = 4 * 1024;
/// Requests answered in one poll before the task yields to others (a pipelining client).
const EXCHANGES_PER_POLL: usize = 16;

type Handler = Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, h2::Error>> + Send>>;

/// A downstream HTTP/1.1 connection. Resolves when it closes; with the upstream side of a
/// WebSocket upgrade when the connection has become a tunnel ([`Conn::tunnel`]).
pub struct Conn<I> {
    io: I,
    cm: Arc<ConnectionManager>,
    cfg: Arc<GuardConfig>,
    ds: Downstream,
    shared: Arc<ConnShared>,
    stats: Arc<ConnectionStats>,
    rbuf: BytesMut,
    /// Room for request body bytes read straight from the socket.
    body_buf: BytesMut,
    eof: bool,
    /// Drain or idle timeout: finish what is in flight, then close.
    draining: bool,
    head_sleep: Option<Pin<Box<Sleep>>>,
    write_stall: Option<Pin<Box<Sleep>>>,
    out: Outgoing,
    ex: Option<Box<Exchange>>,
    closing: Option<Closing>,
}

/// One request and its response.
struct Exchange {
    handler: Option<Handler>,
    inbound: Option<Inbound>,
    req: RequestSide,
    expect_continue: bool,
    /// After a rejected head or a broken body: the connection closes after the answer and
    /// drains what the client still sends.
    linger: bool,
    response: Option<Sending>,
}

struct Sending {
    /// Dropped as soon as it has ended, before its last bytes are written: that finishes the
    /// request (the upstream connection goes back to its pool, the access log is written)
    /// before the client can send its next request.
    body: Option<ResponseBody>,
    encoding: Encoding,
    close: bool,
    /// The terminating chunk (or the last bytes) are staged.
    terminated: bool,
    ended: bool,
    tunnel: Option<Upgraded>,
}

impl Sending {
    /// The body is over: drop it (which finishes the request) and stage the last chunk.
    fn end(&mut self, out: &mut Outgoing) {
        self.body = None;
        self.ended = true;
        if self.encoding == Encoding::Chunked && !self.terminated {
            self.terminated = true;
            out.buf.put_slice(b"0\r\n\r\n");
        }
    }
}

enum Closing {
    Shutdown { linger: bool },
    Draining(Pin<Box<Sleep>>, usize),
}

/// How an exchange ended.
enum Done {
    KeepAlive,
    Close {
        linger: bool,
    },
    /// The connection is broken (client gone, write failed or stalled): drop it.
    Abort,
    Tunnel(Upgraded),
}

impl<I> Conn<I>
where
    I: AsyncRead + AsyncWrite + Unpin + Send,
{
    /// `rbuf` holds what was read while telling HTTP/1.1 from HTTP/2.
    pub fn new(
        io: I,
        rbuf: BytesMut,
        cm: Arc<ConnectionManager>,
        ds: Downstream,
        shared: Arc<ConnShared>,
        stats: Arc<ConnectionStats>,
    ) -> Self {
        Conn {
            io,
            cfg: cm.guard_config(),
            cm,
            ds,
            shared,
            stats,
            rbuf,
            body_buf: BytesMut::new(),
            eof: false,
            draining: false,
            head_sleep: None,
            write_stall: None,
            out: Outgoing::default(),
            ex: None,
            closing: None,
        }
    }

    /// Finish the request in flight (its response says `connection: close` if its head is not
    /// out yet), then close; an idle connection closes at once, without a word.
    pub fn drain(&mut self) {
        self.draining = true;
    }

    /// Splice the upgraded connection to its upstream until either side closes.
    pub async fn tunnel(self, mut up: Upgraded) {
        let Conn {
            mut io, rbuf, cm, ..
        } = self;
        // What each side sent behind the upgrade's head was read with it.
        if !up.leftover.is_empty() && io.write_all(&up.leftover).await.is_err() {
            return;
        }
        if !rbuf.is_empty() && up.io.write_all(&rbuf).await.is_err() {
            return;
        }
        drop(rbuf);
        let stats = &cm.stats;
        stats.downstream_cx_upgrades_total.increment(1);
        stats.downstream_cx_upgrades_active.increment(1.0);
        let _ = tokio::io::copy_bidirectional(&mut io, &mut up.io).await;
        stats.downstream_cx_upgrades_active.decrement(1.0);
    }

    fn poll_conn(&mut self, cx: &mut Context<'_>) -> Poll<Option<Upgraded>> {
        let mut exchanges = 0;
        loop {
            if self.closing.is_some() {
                ready!(self.poll_close(cx));
                return Poll::Ready(None);
            }
            if self.ex.is_none() {
                if exchanges == EXCHANGES_PER_POLL {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                match ready!(self.poll_head(cx)) {
                    Some(linger) => {
                        self.closing = Some(Closing::Shutdown { linger });
                        continue;
                    }
                    None => exchanges += 1,
                }
            }
            match ready!(self.poll_exchange(cx)) {
                Done::KeepAlive => {
                    self.ex = None;
                    self.write_stall = None;
                }
                Done::Close { linger } => {
                    self.ex = None;
                    self.closing = Some(Closing::Shutdown { linger });
                }
                Done::Abort => {
                    self.ex = None;
                    return Poll::Ready(None);
                }
                Done::Tunnel(up) => {
                    self.ex = None;
                    return Poll::Ready(Some(up));
                }
            }
        }
    }

    // --------------------------------------------------------------------------------------
    // Heads

    /// Read until a request head is complete and start its exchange (`None`), or the
    /// connection is to close (`Some(linger)`).
    fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<Option<bool>> {
        loop {
            // Empty lines before a request line are ignored (RFC 9112 §2.2).
            let skip = self
                .rbuf
                .iter()
                .take_while(|&&b| b == b'\r' || b == b'\n')
                .count();
            self.rbuf.advance(skip);
            if !self.rbuf.is_empty() {
                self.arm_head_timer();
                let limit = self.cfg.max_head_bytes;
                match head_end(&self.rbuf) {
                    Some(end) if end <= limit => {
                        let head = self.rbuf.split_to(end).freeze();
                        self.disarm_head_timer();
                        match parse_head(head, &self.cfg) {
                            Ok(head) => self.start(head),
                            Err(reply) => self.reject(reply),
                        }
                        return Poll::Ready(None);
                    }
                    Some(_) => {
                        self.reject(protocol_error(431, "http1.headers_too_large"));
                        return Poll::Ready(None);
                    }
                    None if self.rbuf.len() > limit => {
                        self.reject(protocol_error(431, "http1.headers_too_large"));
                        return Poll::Ready(None);
                    }
                    None => {}
                }
            }
            // Between requests (or mid-head, as hyper does) a drain closes without a word.
            if self.draining || self.eof {
                return Poll::Ready(Some(false));
            }
            match self.read_socket(cx) {
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(_)) => return Poll::Ready(Some(false)),
                Poll::Pending => {
                    if !self.rbuf.is_empty() && self.head_timer_expired(cx) {
                        let reply = self
                            .cfg
                            .head_timeout
                            .as_ref()
                            .map_or(LocalReply::RequestHeaderTimeout, |(_, r)| r.clone());
                        self.reject(reply);
                        return Poll::Ready(None);
                    }
                    // An idle connection keeps small buffers for its next request (the read
                    // buffer is only ever as large as its largest read, typically a few
                    // hundred bytes) and gives back what a large head or response grew.
                    if self.rbuf.is_empty() && self.rbuf.capacity() > IDLE_KEEP {
                        self.rbuf = BytesMut::new();
                    }
                    if self.out.buf.capacity() > IDLE_KEEP {
                        self.out.buf = BytesMut::new();
                    }
                    self.body_buf = BytesMut::new();
                    return Poll::Pending;
                }
            }
        }
    }

    fn start(&mut self, head: Head) {
        let Head {
            request,
            body,
            close,
            close_requested,
            expect_continue,
        } = head;
        self.stats.saw(request.version());
        let (inbound, body) = match body {
            BodyFraming::None => (None, DownstreamBody::Empty),
            BodyFraming::Length(n) => {
                let (i, b) = Inbound::new(Some(n), self.cfg.max_head_bytes);
                (Some(i), DownstreamBody::H1(b))
            }
            BodyFraming::Chunked => {
                let (i, b) = Inbound::new(None, self.cfg.max_head_bytes);
                (Some(i), DownstreamBody::H1(b))
            }
        };
        let req = RequestSide {
            version: request.version(),
            head: request.method() == Method::HEAD,
            close,
            say_close: close_requested,
        };
        let request = request.map(|()| body);
        // Boxed: an idle connection then holds a pointer, not the request's whole state.
        let handler: Handler = Box::pin(self.cm.clone().handle(
            request,
            self.ds,
            self.shared.stream_started(),
        ));
        self.ex = Some(Box::new(Exchange {
            handler: Some(handler),
            inbound,
            req,
            expect_continue,
            linger: false,
            response: None,
        }));
    }

    /// Answer a head that failed its checks, then close; nothing after it is read.
    fn reject(&mut self, reply: LocalReply) {
        self.disarm_head_timer();
        self.rbuf.clear();
        self.cm.stats.downstream_cx_protocol_error.increment(1);
        self.stats.saw(Version::HTTP_11);
        let resp = self.cm.reject(self.ds, &self.shared, reply);
        let mut ex = Box::new(Exchange {
            handler: None,
            inbound: None,
            req: RequestSide {
                version: Version::HTTP_11,
                head: false,
                close: true,
                say_close: true,
            },
            expect_continue: false,
            linger: true,
            response: None,
        });
        self.start_response(&mut ex, resp);
        self.ex = Some(ex);
    }

    /// A head has begun: the connection is not idle any more.
    fn arm_head_timer(&mut self) {
        self.shared.reading_head.store(true, Ordering::Release);
    }

    fn disarm_head_timer(&mut self) {
        self.head_sleep = None;
        self.shared.reading_head.store(false, Ordering::Release);
    }

    /// The head timer runs from when a partial head first made the connection wait (not
    /// from its very first byte, which would cost a clock read for every head that arrives
    /// whole; the difference is one poll). True once it has fired.
    fn head_timer_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let Some((limit, _)) = &self.cfg.head_timeout else {
            return false;
        };
        let limit = *limit;
        let sleep = self
            .head_sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        sleep.as_mut().poll(cx).is_ready()
    }

    // --------------------------------------------------------------------------------------
    // The exchange

    fn poll_exchange(&mut self, cx: &mut Context<'_>) -> Poll<Done> {
        let Some(mut ex) = self.ex.take() else {
            return Poll::Ready(Done::KeepAlive);
        };
        let r = self.drive(&mut ex, cx);
        self.ex = Some(ex);
        r
    }

    fn drive(&mut self, ex: &mut Exchange, cx: &mut Context<'_>) -> Poll<Done> {
        loop {
            let mut progress = false;

            if let Some(handler) = ex.handler.as_mut() {
                if let Poll::Ready(r) = handler.as_mut().poll(cx) {
                    ex.handler = None;
                    match r {
                        Ok(resp) => {
                            self.read_ahead(ex, cx);
                            self.start_response(ex, resp);
                        }
                        // Only HTTP/2 resets a stream; an HTTP/1.1 connection has nothing else.
                        Err(_) => return Poll::Ready(Done::Abort),
                    }
                    progress = true;
                }
            }

            // The request body, when the handler (just polled) asks for a frame, or when nobody
            // will read the rest.
            if let Some(inbound) = ex.inbound.as_mut() {
                if !inbound.is_complete() {
                    let dropped = inbound.is_dropped();
                    if dropped || inbound.wants(cx) {
                        if ex.expect_continue && !dropped && ex.response.is_none() {
                            // The client waits for this before it sends the body.
                            ex.expect_continue = false;
                            self.out.buf.put_slice(CONTINUE);
                            progress = true;
                        }
                        match inbound.feed(&mut self.rbuf, dropped) {
                            // A frame (or the end) is in the slot for the handler.
                            Ok(Need::Nothing) => progress = true,
                            Ok(Need::Bytes) if dropped => {}
                            Ok(Need::Bytes) => match self.read_body(inbound, cx) {
                                Poll::Ready(Ok(true)) => progress = true,
                                Poll::Ready(Ok(false)) => {
                                    // The client closed mid-body: it is gone.
                                    inbound.fail(BodyError("client closed mid-body"));
                                    return Poll::Ready(Done::Abort);
                                }
                                Poll::Ready(Err(_)) => return Poll::Ready(Done::Abort),
                                Poll::Pending => {}
                            },
                            Err(_) => {
                                self.cm.stats.downstream_cx_protocol_error.increment(1);
                                self.rbuf.clear();
                                ex.linger = true;
                                ex.req.close = true;
                                progress = true;
                            }
                        }
                    }
                }
            }

            if let Some(s) = ex.response.as_mut() {
                // Batch the next frame with what is staged when possible.
                if let (Some(body), true) = (s.body.as_mut(), self.out.can_stage()) {
                    match Pin::new(&mut *body).poll_frame(cx) {
                        Poll::Ready(Some(Ok(frame))) => {
                            let last = body.is_end_stream();
                            if let Ok(data) = frame.into_data() {
                                stage(&mut self.out, s, data, last, self.io.is_write_vectored());
                            }
                            if last {
                                s.end(&mut self.out);
                            }
                            progress = true;
                        }
                        Poll::Ready(None) => {
                            s.end(&mut self.out);
                            progress = true;
                        }
                        // The upstream broke mid-response: the client must see a broken
                        // response, never a short one that looks complete.
                        Poll::Ready(Some(Err(_))) => return Poll::Ready(Done::Abort),
                        Poll::Pending => {}
                    }
                }
            }

            if !self.out.is_empty() {
                match self.poll_write_out(cx) {
                    Poll::Ready(Ok(())) => progress = true,
                    Poll::Ready(Err(_)) => return Poll::Ready(Done::Abort),
                    Poll::Pending => {}
                }
            }

            if let Some(s) = ex.response.as_mut() {
                if s.ended && self.out.is_empty() {
                    if let Some(up) = s.tunnel.take() {
                        return Poll::Ready(Done::Tunnel(up));
                    }
                    let close = s.close || ex.req.close;
                    return Poll::Ready(self.finish(ex, close));
                }
            }

            // With the request read whole, watch for the client leaving; keep what it
            // pipelines for later.
            let body_read = ex
                .inbound
                .as_ref()
                .is_none_or(|i| i.is_complete() || i.is_dropped());
            if body_read && !ex.linger && !self.eof && self.rbuf.len() < READ_AHEAD {
                match self.read_socket(cx) {
                    Poll::Ready(Ok(())) if self.eof => return Poll::Ready(Done::Abort),
                    Poll::Ready(Ok(())) => progress = true,
                    Poll::Ready(Err(_)) => return Poll::Ready(Done::Abort),
                    Poll::Pending => {}
                }
            }

            if !progress {
                return Poll::Pending;
            }
        }
    }

    /// The response is out: keep the connection, or close it.
    fn finish(&mut self, ex: &mut Exchange, close: bool) -> Done {
        let mut unread = false;
        if let Some(inbound) = ex.inbound.as_mut() {
            if !inbound.is_complete() {
                // What is buffered may finish it; the rest is not waited for.
                let _ = inbound.feed(&mut self.rbuf, true);
                unread = !inbound.is_complete() || inbound.is_failed();
            }
        }
        if close || unread || self.draining || self.eof {
            Done::Close {
                linger: ex.linger || unread,
            }
        } else {
            Done::KeepAlive
        }
    }

    /// Before a response starts while its request body is still arriving: what the client has
    /// sent already counts as received, as it would for a proxy that reads ahead (Envoy
    /// buffers it), so take it from the socket, up to a bound.
    fn read_ahead(&mut self, ex: &Exchange, cx: &mut Context<'_>) {
        if ex.inbound.as_ref().is_none_or(|i| i.is_complete()) {
            return;
        }
        while self.rbuf.len() < BODY_PEEK && !self.eof {
            if !matches!(self.read_socket(cx), Poll::Ready(Ok(()))) {
                break;
            }
        }
    }

    fn start_response(&mut self, ex: &mut Exchange, resp: Response<ResponseBody>) {
        let (parts, mut body) = resp.into_parts();
        let tunnel = body.take_tunnel();
        // A response that starts before the request has arrived whole (what the client has
        // sent already counts, see `read_ahead`) is counted as in Envoy. If nobody will read
        // the rest of the request, the connection ends after this response and says so now;
        // if the handler still streams it upstream (an upstream answering as it reads), the
        // connection lives on when the request does end before the response.
        if let Some(inbound) = ex.inbound.as_mut() {
            if !inbound.is_complete() && !inbound.completes_with(&self.rbuf) {
                self.cm
                    .stats
                    .downstream_rq_response_before_rq_complete
                    .increment(1);
                if inbound.is_dropped() {
                    ex.linger = true;
                    ex.req.close = true;
                    ex.req.say_close = true;
                }
            }
        }
        if self.draining {
            ex.req.close = true;
            ex.req.say_close = true;
        }
        let len = if body.is_end_stream() {
            BodyLen::Empty
        } else if let Some(n) = body.size_hint().exact() {
            BodyLen::Known(n)
        } else {
            BodyLen::Unknown
        };
        let encoded = encode_head(&mut self.out.buf, parts.status, &parts.headers, ex.req, len);
        let ended = len == BodyLen::Empty;
        // A `101` without a tunnel to splice (nothing asked for it) leaves nothing to speak.
        let close =
            encoded.close || (parts.status == StatusCode::SWITCHING_PROTOCOLS && tunnel.is_none());
        ex.response = Some(Sending {
            // A bodiless response is over now.
            body: (!ended).then_some(body),
            encoding: encoded.encoding,
            close,
            terminated: false,
            ended,
            tunnel,
        });
    }

    // --------------------------------------------------------------------------------------
    // I/O

    /// One read from the socket into `rbuf`; sets `eof`.
    fn read_socket(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Read into uninitialised scratch and keep only what came: an idle connection's buffer
        // stays the size of its last request, not of the read.
        let mut tmp = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut rb = ReadBuf::uninit(&mut tmp);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut rb))?;
        if rb.filled().is_empty() {
            self.eof = true;
        } else {
            self.rbuf.extend_from_slice(rb.filled());
        }
        Poll::Ready(Ok(()))
    }

    /// Read body bytes: straight into a frame of their own when the length is known and
    /// nothing is buffered (never past the body's end: what follows is the next request),
    /// else into `rbuf`. `Ok(false)` at EOF.
    fn read_body(&mut self, inbound: &mut Inbound, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        if let (Some(left), true) = (inbound.direct_read(), self.rbuf.is_empty()) {
            // The buffer outlives a read that finds nothing, and what a read leaves of it
            // takes the next frame.
            if self.body_buf.capacity() < 1024 {
                self.body_buf.reserve(left.clamp(1, READ_CHUNK));
            }
            let n = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut self.io),
                cx,
                &mut (&mut self.body_buf).limit(left),
            ))?;
            if n == 0 {
                self.eof = true;
                return Poll::Ready(Ok(false));
            }
            inbound.put_direct(self.body_buf.split().freeze());
            return Poll::Ready(Ok(true));
        }
        ready!(self.read_socket(cx))?;
        Poll::Ready(Ok(!self.eof))
    }

    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut progressed = false;
        let r = self.out.poll_write(&mut self.io, cx, &mut progressed);
        if progressed {
            self.write_stall = None;
        }
        match r {
            Poll::Pending => self.stalled(cx),
            ready => ready,
        }
    }

    /// A write that makes no progress for `stream_idle_timeout` fails the connection.
    fn stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(idle) = self.cfg.stream_idle_timeout else {
            return Poll::Pending;
        };
        let sleep = self
            .write_stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
        if sleep.as_mut().poll(cx).is_ready() {
            self.cfg.stats.downstream_rq_idle_timeout.increment(1);
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "peer stopped reading (stream idle timeout)",
            )));
        }
        Poll::Pending
    }

    /// Shut the write side, then (after a rejection or an unread body) drain what the client
    /// still sends for a moment, so that it reads the answer rather than a reset.
    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match self.closing.as_mut() {
                None => return Poll::Ready(()),
                Some(Closing::Shutdown { linger }) => {
                    let linger = *linger;
                    let _ = ready!(Pin::new(&mut self.io).poll_shutdown(cx));
                    if !linger || self.eof {
                        self.closing = None;
                        return Poll::Ready(());
                    }
                    self.closing = Some(Closing::Draining(Box::pin(tokio::time::sleep(LINGER)), 0));
                }
                Some(Closing::Draining(sleep, discarded)) => {
                    let mut tmp = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
                    let mut rb = ReadBuf::uninit(&mut tmp);
                    match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
                        Poll::Ready(Ok(())) if !rb.filled().is_empty() => {
                            *discarded += rb.filled().len();
                            if *discarded > LINGER_MAX_BYTES {
                                self.closing = None;
                            }
                        }
                        Poll::Ready(_) => self.closing = None,
                        Poll::Pending => {
                            ready!(sleep.as_mut().poll(cx));
                            self.closing = None;
                        }
                    }
                }
            }
        }
    }
}

/// Stage one response frame behind what is staged.
fn stage(out: &mut Outgoing, s: &mut Sending, data: Bytes, last: bool, vectored: bool) {
    if data.is_empty() && !(last && s.encoding == Encoding::Chunked) {
        return;
    }
    match s.encoding {
        Encoding::Bodiless => {}
        Encoding::Length(_) | Encoding::UntilClose => {
            if !vectored && data.len() <= COALESCE_MAX {
                out.buf.extend_from_slice(&data);
            } else {
                out.data = data;
            }
        }
        Encoding::Chunked => {
            if !data.is_empty() {
                put_chunk_size(&mut out.buf, data.len());
            }
            let tail: &'static [u8] = match (data.is_empty(), last) {
                (true, _) => b"0\r\n\r\n",
                (false, true) => b"\r\n0\r\n\r\n",
                (false, false) => b"\r\n",
            };
            s.terminated |= last;
            if !vectored && data.len() <= COALESCE_MAX {
                out.buf.extend_from_slice(&data);
                out.buf.extend_from_slice(tail);
            } else {
                out.data = data;
                out.tail = tail;
            }
        }
    }
}

impl<I> Future for Conn<I>
where
    I: AsyncRead + AsyncWrite + Unpin + Send,
{
    type Output = Option<Upgraded>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.get_mut().poll_conn(cx)
    }
}
