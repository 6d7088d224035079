//! One downstream HTTP/2 connection: h2's codec, with every stream's request run inside the
//! connection's own task.
//!
//! Envoy runs all of a connection's streams on the worker that owns the connection; so does
//! this. A stream is a future in the connection's [`FuturesUnordered`], not a task of its own, so
//! a request costs no spawn and no cross-task wake-ups between the stream and the codec that
//! writes its frames.

use super::body::H2Body;
use super::keepalive::KeepAlive;
use super::pipe::{set_length, Pipe};
use crate::http::body::{DownstreamBody, ResponseBody};
use crate::http::connection_manager::{ConnectionManager, ConnectionStats, Downstream};
use crate::http::guard::ConnShared;
use crate::http::headers::strip_hop_by_hop;
use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use h2::server::{Connection, Handshake, SendResponse};
use h2::{Reason, RecvStream};
use http::{header, Request, Response, Version};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// The codec's settings, from the connection manager's `http2_protocol_options`.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub max_concurrent_streams: u32,
    pub initial_stream_window_size: u32,
    pub initial_connection_window_size: u32,
    /// `hpack_table_size`: the HPACK table the client may use for what it sends.
    pub header_table_size: u32,
    pub max_header_list_size: u32,
    /// Streams the client resets before they are accepted (Rapid Reset).
    pub max_pending_accept_reset_streams: usize,
    /// Streams legate resets because the client broke the protocol on them (MadeYouReset).
    pub max_local_error_reset_streams: usize,
    /// `connection_keepalive`: PING every `interval`, close if no answer within `timeout`.
    pub keepalive: Option<(Duration, Duration)>,
}

type StreamFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Serves one connection until it closes. A [`Conn::graceful_shutdown`] sends GOAWAY and lets
/// the streams in flight finish.
pub struct Conn<I> {
    state: State<I>,
    streams: FuturesUnordered<StreamFuture>,
    cm: Arc<ConnectionManager>,
    ds: Downstream,
    shared: Arc<ConnShared>,
    stats: Arc<ConnectionStats>,
    keepalive: Option<(Duration, Duration)>,
    ping: Option<KeepAlive>,
    shutdown: bool,
}

enum State<I> {
    Handshaking(Handshake<I, Bytes>),
    Serving(Connection<I, Bytes>),
}

impl<I> Conn<I>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    pub fn new(
        io: I,
        settings: Settings,
        cm: Arc<ConnectionManager>,
        ds: Downstream,
        shared: Arc<ConnShared>,
        stats: Arc<ConnectionStats>,
    ) -> Self {
        let mut b = h2::server::Builder::new();
        b.max_concurrent_streams(settings.max_concurrent_streams)
            .initial_window_size(settings.initial_stream_window_size)
            .initial_connection_window_size(settings.initial_connection_window_size)
            .header_table_size(settings.header_table_size)
            .max_header_list_size(settings.max_header_list_size)
            .max_pending_accept_reset_streams(settings.max_pending_accept_reset_streams)
            .max_local_error_reset_streams(Some(settings.max_local_error_reset_streams));
        Conn {
            state: State::Handshaking(b.handshake(io)),
            streams: FuturesUnordered::new(),
            cm,
            ds,
            shared,
            stats,
            keepalive: settings.keepalive,
            ping: None,
            shutdown: false,
        }
    }

    /// GOAWAY now; the connection ends once the streams in flight have.
    pub fn graceful_shutdown(&mut self) {
        self.shutdown = true;
        if let State::Serving(c) = &mut self.state {
            c.graceful_shutdown();
        }
    }
}

impl<I> Future for Conn<I>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if let State::Handshaking(h) = &mut this.state {
            let Ok(mut conn) = ready!(Pin::new(h).poll(cx)) else {
                return Poll::Ready(());
            };
            if this.shutdown {
                conn.graceful_shutdown();
            }
            if let Some((interval, timeout)) = this.keepalive {
                this.ping = conn
                    .ping_pong()
                    .map(|pp| KeepAlive::new(pp, interval, timeout));
            }
            this.state = State::Serving(conn);
        }
        let State::Serving(conn) = &mut this.state else {
            return Poll::Ready(());
        };
        loop {
            // The codec first: it reads frames, writes what the streams queued, and hands over
            // new streams. `None` comes once GOAWAY has been exchanged and every stream is done;
            // an error has already been sent to the client as GOAWAY.
            let mut any = false;
            loop {
                match conn.poll_accept(cx) {
                    Poll::Ready(Some(Ok((req, respond)))) => {
                        any = true;
                        this.streams.push(Box::pin(stream(
                            &this.cm,
                            this.ds,
                            &this.shared,
                            &this.stats,
                            req,
                            respond,
                        )));
                    }
                    Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(()),
                    Poll::Pending => break,
                }
            }
            // Then the streams; what they send wakes this task to write it.
            while let Poll::Ready(Some(())) = this.streams.poll_next_unpin(cx) {}
            if !any {
                break;
            }
        }
        // No PONG in time: the peer is gone or stuck; close without waiting on it.
        match this.ping.as_mut().map(|ka| ka.poll(cx)) {
            Some(Poll::Ready(())) => {
                this.cm
                    .guard_config()
                    .stats
                    .http2_keepalive_timeout
                    .increment(1);
                Poll::Ready(())
            }
            _ => Poll::Pending,
        }
    }
}

/// One stream: the request through the connection manager, then the response out.
fn stream(
    cm: &Arc<ConnectionManager>,
    ds: Downstream,
    shared: &Arc<ConnShared>,
    stats: &ConnectionStats,
    req: Request<RecvStream>,
    respond: SendResponse<Bytes>,
) -> impl Future<Output = ()> + Send + 'static {
    stats.saw(Version::HTTP_2);
    let (parts, recv) = req.into_parts();
    let body = DownstreamBody::H2(H2Body::new(recv, &parts.headers));
    let req = Request::from_parts(parts, body);
    Stream {
        handler: cm.clone().handle(req, ds, shared.stream_started()),
        respond,
        sending: None,
    }
}

pin_project_lite::pin_project! {
    /// A hand-written future rather than an `async fn`: the handler's state (kilobytes: the
    /// upstream exchange lives in it) is kept once, where an `async fn` taking it would hold
    /// it twice, as its argument and as the pinned local it is polled from.
    struct Stream<F> {
        #[pin]
        handler: F,
        respond: SendResponse<Bytes>,
        sending: Option<Pipe<ResponseBody>>,
    }
}

impl<F> Future for Stream<F>
where
    F: Future<Output = Result<Response<ResponseBody>, h2::Error>>,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if let Some(p) = this.sending.as_mut() {
            return p.poll_send(cx);
        }
        let resp = match this.handler.poll(cx) {
            Poll::Ready(Ok(resp)) => resp,
            Poll::Ready(Err(e)) => {
                this.respond
                    .send_reset(e.reason().unwrap_or(Reason::INTERNAL_ERROR));
                return Poll::Ready(());
            }
            // The client's RST_STREAM cancels the request: dropping the handler ends its
            // upstream exchange and logs the stream.
            Poll::Pending => return this.respond.poll_reset(cx).map(|_| ()),
        };
        let (mut head, body) = resp.into_parts();
        // h2 refuses connection-specific headers; the connection manager has removed them from
        // upstream responses already, so this is one pass over the names.
        strip_hop_by_hop(&mut head.headers);
        if !head.headers.contains_key(header::DATE) {
            head.headers
                .insert(header::DATE, crate::http::date::value());
        }
        let end = set_length(&mut head.headers, &body);
        match this
            .respond
            .send_response(Response::from_parts(head, ()), end)
        {
            Ok(tx) if !end => this.sending.insert(Pipe::new(body, tx)).poll_send(cx),
            Ok(_) => Poll::Ready(()),
            Err(_) => {
                this.respond.send_reset(Reason::INTERNAL_ERROR);
                Poll::Ready(())
            }
        }
    }
}
