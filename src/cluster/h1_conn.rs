//! An HTTP/1.1 upstream connection, driven by the task of the request that uses it.
//!
//! legate speaks HTTP/1.1 to upstreams with its own small codec ([`super::h1_codec`]) instead
//! of hyper's client. hyper's client hands each request to the connection through a channel and
//! the response back through a oneshot, and moves the request through its dispatcher; that was
//! a third of legate's instructions per proxied request. Here the request's task writes the
//! head (and the first body bytes) in one `writev` and parses the response from the
//! connection's read buffer; body bytes are handed on as slices of that buffer.
//!
//! The connection is polled only by the request using it: while waiting for the response head
//! ([`H1Conn::send`]) and while the response body is read ([`H1Conn::poll_frame`], which also
//! keeps sending the request body: an upstream may answer before it has read all of it). An idle
//! connection in the pool is polled by nobody; a close by the upstream is noticed at the next
//! checkout or sweep ([`H1Conn::check_open`]).

use super::endpoint_pool::ConnActive;
use super::h1_codec::{
    encode_request_head, parse_response_head, BodyFraming, Decoded, Malformed, RequestFraming,
};
use super::transport::UpstreamIo;
use crate::http::body::RequestBody;
use crate::http::h1::wire::{put_chunk_size, Outgoing};
use bytes::{BufMut, Bytes, BytesMut};
use http::{header, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

/// What the read buffer grows by; a response head and a small body fit in one read.
const READ_BUF: usize = 8 * 1024;

/// Why an exchange on an HTTP/1.1 connection failed.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    #[error("upstream closed the connection")]
    Closed,
    #[error("upstream i/o: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Malformed(#[from] Malformed),
    /// The downstream request body broke (framing error, reset); the exchange is abandoned.
    #[error("request body: {0}")]
    RequestBody(crate::http::body::BoxError),
}

/// The connection failed, and the request comes back when it certainly never reached the
/// upstream's application: a reused connection the upstream had closed, before any response
/// byte, for a request without a body (so it can be sent again as it is).
pub struct H1SendError {
    pub error: H1Error,
    pub unsent: Option<Request<RequestBody>>,
}

pub struct H1Conn {
    io: UpstreamIo,
    rbuf: BytesMut,
    out: Outgoing,
    /// The request body still going out.
    sending: Option<Sending>,
    reading: Reading,
    /// Requests started on this connection (from the second on, it is a reused one).
    exchanges: u32,
    /// Bytes arrived since the current request was sent.
    received: bool,
    keep_alive: bool,
    /// The last response head came without its hop-by-hop headers.
    hop_by_hop_removed: bool,
    /// An error, or bytes nobody asked for: never reused.
    broken: bool,
    active: ConnActive,
}

struct Sending {
    body: RequestBody,
    chunked: bool,
}

#[derive(Debug)]
enum Reading {
    Idle,
    Head { head_request: bool, upgrade: bool },
    Body(BodyFraming),
    Done,
    Upgraded,
}

enum WriteFail {
    /// The upstream stopped reading; its response, if it sent one, is still read.
    Io,
    Body(crate::http::body::BoxError),
}

/// What a `101 Switching Protocols` leaves: the socket, the bytes already read past the
/// response head, and the connection's place in `upstream_cx_active`.
pub struct Upgraded {
    pub io: UpstreamIo,
    pub leftover: Bytes,
    _active: ConnActive,
}

impl H1Conn {
    pub(super) fn new(io: UpstreamIo, active: ConnActive) -> Self {
        H1Conn {
            io,
            rbuf: BytesMut::new(),
            out: Outgoing::default(),
            sending: None,
            reading: Reading::Idle,
            exchanges: 0,
            received: false,
            keep_alive: true,
            hop_by_hop_removed: false,
            broken: false,
            active,
        }
    }

    /// The last response ended cleanly, the request was sent whole, and nothing else arrived:
    /// the connection can take another request.
    pub fn is_reusable(&self) -> bool {
        !self.broken
            && self.keep_alive
            && matches!(self.reading, Reading::Done | Reading::Idle)
            && self.sending.is_none()
            && self.out.is_empty()
            && self.rbuf.is_empty()
    }

    /// Look at an idle connection without waiting (checkout, the pool's sweep): false when the
    /// upstream closed it or sent something unasked. Costs no system call while the socket has
    /// not become readable.
    pub fn check_open(&mut self) -> bool {
        if !self.is_reusable() {
            return false;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.poll_fill(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(_) => {
                self.broken = true;
                false
            }
        }
    }

    /// Send a request and drive the connection until its response head arrives.
    pub async fn send(&mut self, req: Request<RequestBody>) -> Result<Response<()>, H1SendError> {
        self.exchanges += 1;
        let reused = self.exchanges > 1;
        let (parts, body) = req.into_parts();
        let body_end = body.is_end_stream();
        let framing = encode_request_head(
            &parts.method,
            &parts.uri,
            &parts.headers,
            body_end,
            body.size_hint().exact(),
            &mut self.out.buf,
        );
        self.reading = Reading::Head {
            head_request: parts.method == Method::HEAD,
            upgrade: parts.headers.contains_key(header::UPGRADE),
        };
        self.received = false;
        // A bodiless request is kept until the response starts, to be sent again elsewhere if
        // this connection turns out to have been closed.
        let mut body = Some(body);
        if framing != RequestFraming::None {
            self.sending = body.take().map(|body| Sending {
                body,
                chunked: framing == RequestFraming::Chunked,
            });
        }
        let result = poll_fn(|cx| {
            if self.sending.is_some() || !self.out.is_empty() {
                if let Poll::Ready(Err(WriteFail::Body(e))) = self.poll_write_side(cx) {
                    return Poll::Ready(Err(H1Error::RequestBody(e)));
                }
            }
            self.poll_head(cx)
        })
        .await;
        result.map_err(|error| {
            let retry =
                reused && !self.received && matches!(error, H1Error::Closed | H1Error::Io(_));
            H1SendError {
                unsent: body
                    .filter(|_| retry)
                    .map(|body| Request::from_parts(parts, body)),
                error,
            }
        })
    }

    /// Write what is staged and pull the request body on. An I/O error ends the sending (the
    /// upstream may have answered and stopped reading; its response is still read), a body
    /// error ends the exchange.
    fn poll_write_side(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WriteFail>> {
        loop {
            // The next frame is taken before writing, so that a body already here leaves in
            // the same write as the head.
            let mut body_pending = false;
            if self.out.can_stage() {
                if let Some(s) = &mut self.sending {
                    match Pin::new(&mut s.body).poll_frame(cx) {
                        Poll::Pending => body_pending = true,
                        Poll::Ready(Some(Ok(frame))) => {
                            // Trailers are not sent on HTTP/1 (Envoy's default too).
                            if let Ok(data) = frame.into_data() {
                                if !data.is_empty() {
                                    if s.chunked {
                                        put_chunk_size(&mut self.out.buf, data.len());
                                        self.out.tail = b"\r\n";
                                    }
                                    self.out.data = data;
                                }
                            }
                            if s.body.is_end_stream() {
                                self.end_body();
                            }
                        }
                        Poll::Ready(None) => self.end_body(),
                        Poll::Ready(Some(Err(e))) => {
                            self.sending = None;
                            self.out.clear();
                            self.broken = true;
                            return Poll::Ready(Err(WriteFail::Body(e)));
                        }
                    }
                }
            }
            if let Err(e) = ready!(self.out.poll_write(&mut self.io, cx, &mut false)) {
                tracing::debug!("writing to upstream: {e}");
                self.sending = None;
                self.out.clear();
                self.broken = true;
                return Poll::Ready(Err(WriteFail::Io));
            }
            if self.sending.is_none() {
                return Poll::Ready(Ok(()));
            }
            if body_pending {
                return Poll::Pending;
            }
        }
    }

    fn end_body(&mut self) {
        if let Some(s) = self.sending.take() {
            if s.chunked {
                if self.out.tail.is_empty() {
                    self.out.buf.put_slice(b"0\r\n\r\n");
                } else {
                    self.out.tail = b"\r\n0\r\n\r\n";
                }
            }
        }
    }

    /// Read more from the upstream into the read buffer.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.rbuf.capacity() - self.rbuf.len() < READ_BUF / 4 {
            self.rbuf.reserve(READ_BUF);
        }
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.io),
            cx,
            &mut self.rbuf
        ))?;
        self.received = true;
        Poll::Ready(Ok(n))
    }

    fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<Result<Response<()>, H1Error>> {
        let Reading::Head {
            head_request,
            upgrade,
        } = self.reading
        else {
            return Poll::Ready(Err(H1Error::Closed));
        };
        let method = if head_request {
            &Method::HEAD
        } else {
            &Method::GET
        };
        loop {
            if !self.rbuf.is_empty() {
                match parse_response_head(&mut self.rbuf, method) {
                    Err(m) => {
                        self.broken = true;
                        return Poll::Ready(Err(m.into()));
                    }
                    Ok(Some(head)) => {
                        if head.status == StatusCode::SWITCHING_PROTOCOLS {
                            if !upgrade {
                                self.broken = true;
                                return Poll::Ready(Err(Malformed("unrequested 101").into()));
                            }
                            self.reading = Reading::Upgraded;
                        } else if head.status.is_informational() {
                            // 100 Continue, 103 Early Hints: the final response follows.
                            continue;
                        } else {
                            self.keep_alive = head.keep_alive;
                            if !head.keep_alive && self.sending.is_some() {
                                // An early answer that closes the connection (a 413 to an
                                // upload, say): the rest of the request body would only be
                                // discarded, or turn the upstream's close into a reset that
                                // loses this response. Stop sending it.
                                self.sending = None;
                                self.out.clear();
                            }
                            self.reading = match head.body {
                                None | Some(BodyFraming::Length(0)) => Reading::Done,
                                Some(framing) => Reading::Body(framing),
                            };
                        }
                        self.hop_by_hop_removed = head.hop_by_hop_removed;
                        let mut resp = Response::new(());
                        *resp.status_mut() = head.status;
                        *resp.version_mut() = head.version;
                        *resp.headers_mut() = head.headers;
                        return Poll::Ready(Ok(resp));
                    }
                    Ok(None) => {}
                }
            }
            match ready!(self.poll_fill(cx)) {
                Ok(0) => {
                    self.broken = true;
                    return Poll::Ready(Err(H1Error::Closed));
                }
                Ok(_) => {}
                Err(e) => {
                    self.broken = true;
                    return Poll::Ready(Err(e.into()));
                }
            }
        }
    }

    /// The next frame of the response body (and any request body still going out).
    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        if self.sending.is_some() || !self.out.is_empty() {
            if let Poll::Ready(Err(WriteFail::Body(e))) = self.poll_write_side(cx) {
                return Poll::Ready(Some(Err(H1Error::RequestBody(e))));
            }
        }
        loop {
            let Reading::Body(framing) = &mut self.reading else {
                return Poll::Ready(None);
            };
            match framing {
                BodyFraming::Length(0) => {
                    self.reading = Reading::Done;
                    return Poll::Ready(None);
                }
                BodyFraming::Length(left) => {
                    if !self.rbuf.is_empty() {
                        let take = usize::try_from(*left)
                            .unwrap_or(usize::MAX)
                            .min(self.rbuf.len());
                        *left -= take as u64;
                        if *left == 0 {
                            self.reading = Reading::Done;
                        }
                        let data = self.rbuf.split_to(take).freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                BodyFraming::Chunked(decoder) => match decoder.decode(&mut self.rbuf) {
                    Err(m) => {
                        self.broken = true;
                        return Poll::Ready(Some(Err(m.into())));
                    }
                    Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Decoded::End) => {
                        self.reading = Reading::Done;
                        return Poll::Ready(None);
                    }
                    Ok(Decoded::Incomplete) => {}
                },
                BodyFraming::UntilClose => {
                    if !self.rbuf.is_empty() {
                        let data = self.rbuf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
            }
            match ready!(self.poll_fill(cx)) {
                Ok(0) => {
                    self.broken = true;
                    if matches!(self.reading, Reading::Body(BodyFraming::UntilClose)) {
                        self.reading = Reading::Done;
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Err(H1Error::Closed)));
                }
                Ok(_) => {}
                Err(e) => {
                    self.broken = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    /// The codec left the last response's hop-by-hop headers out already.
    pub fn hop_by_hop_removed(&self) -> bool {
        self.hop_by_hop_removed
    }

    /// The response body has been read whole (or there is none).
    pub fn body_is_end(&self) -> bool {
        matches!(self.reading, Reading::Done)
    }

    pub fn body_size_hint(&self) -> SizeHint {
        match self.reading {
            Reading::Body(BodyFraming::Length(n)) => SizeHint::with_exact(n),
            Reading::Body(_) => SizeHint::default(),
            _ => SizeHint::with_exact(0),
        }
    }

    /// Hand the socket over after a `101 Switching Protocols`.
    pub fn into_upgraded(self) -> Upgraded {
        debug_assert!(matches!(self.reading, Reading::Upgraded));
        Upgraded {
            io: self.io,
            leftover: self.rbuf.freeze(),
            _active: self.active,
        }
    }
}
