//! Bodies on both hops. Frames pass through as they arrive, without copying: a downstream body
//! is an h2 stream ([`crate::http::h2::H2Body`]) or what legate's HTTP/1.1 codec decoded from its read buffer
//! ([`crate::http::h1::H1Body`]), an upstream one hyper's HTTP/2 stream or a slice of legate's
//! own HTTP/1.1 connection's read buffer. Backpressure is end to end: nothing is read from one side
//! before the other side has taken the previous frame.

use super::stream_info::StreamInfo;
use crate::cluster::endpoint_pool::{Upgraded, Upstream, UpstreamBody};
use crate::cluster::Host;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::time::Sleep;

/// How far a downstream request body has got: its bytes (`%BYTES_RECEIVED%`) and its end, which
/// starts the route timeout (Envoy times the upstream from the complete downstream request, so
/// a long upload is not cut off by it).
#[derive(Default)]
pub struct RequestProgress {
    pub bytes: AtomicU64,
    done: crate::latch::Latch,
    /// The downstream broke the body (framing, reset): the upstream request is aborted with it,
    /// and its connection is not reused.
    pub failed: AtomicBool,
}

impl RequestProgress {
    /// The whole request body has been read.
    pub fn is_done(&self) -> bool {
        self.done.is_set()
    }

    fn finish(&self) {
        self.done.set();
    }

    /// Resolves once the whole request body has been read.
    pub async fn finished(&self) {
        self.done.wait().await
    }
}

/// A downstream request body as its codec delivers it.
pub enum DownstreamBody {
    H1(crate::http::h1::H1Body),
    H2(crate::http::h2::H2Body),
    Empty,
}

impl Body for DownstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            DownstreamBody::H1(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(BoxError::from))),
            DownstreamBody::H2(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(BoxError::from))),
            DownstreamBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            DownstreamBody::H1(b) => b.is_end_stream(),
            DownstreamBody::H2(b) => b.is_end_stream(),
            DownstreamBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            DownstreamBody::H1(b) => b.size_hint(),
            DownstreamBody::H2(b) => b.size_hint(),
            DownstreamBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// A downstream request body on its way upstream; reports its progress.
pub struct RequestBody {
    inner: Option<DownstreamBody>,
    progress: Arc<RequestProgress>,
}

impl RequestBody {
    pub fn new(inner: DownstreamBody, progress: Arc<RequestProgress>) -> Self {
        if inner.is_end_stream() {
            progress.finish();
        }
        RequestBody {
            inner: Some(inner),
            progress,
        }
    }

    pub fn empty() -> Self {
        let progress = Arc::new(RequestProgress::default());
        progress.finish();
        RequestBody {
            inner: None,
            progress,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = ready!(Pin::new(&mut *inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    // Relaxed: read once, after the stream has ended.
                    this.progress
                        .bytes
                        .fetch_add(d.len() as u64, Ordering::Relaxed);
                }
                if inner.is_end_stream() {
                    this.progress.finish();
                }
            }
            None => this.progress.finish(),
            Some(Err(_)) => this.progress.failed.store(true, Ordering::Release),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}

/// A response on its way downstream: an upstream body or a local one. It carries the request's
/// [`StreamInfo`]; when the body ends (or is dropped early) the request is finished: the
/// upstream connection goes back to its pool if the response completed, stats and access logs
/// are written.
pub struct ResponseBody {
    kind: Kind,
    stream: Option<Box<StreamInfo>>,
    /// The upstream connection (HTTP/1.1, returned to the pool once the response is complete)
    /// or stream slot (HTTP/2, released when the response ends either way).
    conn: Option<(Upstream, Arc<Host>)>,
    done: bool,
    /// `stream_idle_timeout` while waiting on the upstream for the next frame.
    idle: Option<Duration>,
    idle_sleep: Option<Pin<Box<Sleep>>>,
    /// A WebSocket upgrade's upstream side, for the downstream codec to splice after the `101`.
    tunnel: Option<Box<Upgraded>>,
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The response stalled past `stream_idle_timeout`; the stream is reset.
#[derive(Debug, thiserror::Error)]
#[error("stream idle timeout")]
pub struct StreamIdle;

enum Kind {
    Upstream(UpstreamBody),
    Full(Option<Bytes>),
}

impl ResponseBody {
    pub fn upstream(
        body: UpstreamBody,
        stream: Box<StreamInfo>,
        conn: Upstream,
        host: Arc<Host>,
    ) -> Self {
        let idle = stream.cm.limits.stream_idle_timeout;
        ResponseBody {
            kind: Kind::Upstream(body),
            stream: Some(stream),
            conn: Some((conn, host)),
            done: false,
            idle,
            idle_sleep: None,
            tunnel: None,
        }
    }

    pub fn full(body: Bytes, stream: Option<Box<StreamInfo>>) -> Self {
        ResponseBody {
            kind: Kind::Full(if body.is_empty() { None } else { Some(body) }),
            stream,
            conn: None,
            done: false,
            idle: None,
            idle_sleep: None,
            tunnel: None,
        }
    }

    pub fn with_tunnel(mut self, up: Upgraded) -> Self {
        self.tunnel = Some(Box::new(up));
        self
    }

    pub fn take_tunnel(&mut self) -> Option<Upgraded> {
        self.tunnel.take().map(|b| *b)
    }

    fn finish(&mut self) {
        let complete = self.done || self.is_end_stream();
        if let Some((upstream, host)) = self.conn.take() {
            if let (Upstream::H1(sender), true) = (upstream, complete) {
                host.pool.checkin(sender);
            }
        }
        if let Some(mut stream) = self.stream.take() {
            stream.finish(complete);
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let frame = match &mut this.kind {
            Kind::Full(b) => b.take().map(|b| Ok(Frame::data(b))),
            Kind::Upstream(body) => {
                let polled = match (body, &mut this.conn) {
                    (UpstreamBody::H2(body), _) => Pin::new(body)
                        .poll_frame(cx)
                        .map(|f| f.map(|r| r.map_err(BoxError::from))),
                    // An HTTP/1.1 body is read from the connection, by this task.
                    (UpstreamBody::H1, Some((Upstream::H1(conn), _))) => conn
                        .poll_frame(cx)
                        .map(|f| f.map(|r| r.map_err(BoxError::from))),
                    (UpstreamBody::H1, _) => Poll::Ready(None),
                };
                match polled {
                    Poll::Ready(f) => {
                        this.idle_sleep = None;
                        f
                    }
                    Poll::Pending => {
                        // The upstream has sent nothing since this wait began.
                        if let Some(idle) = this.idle {
                            let sleep = this
                                .idle_sleep
                                .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                            if sleep.as_mut().poll(cx).is_ready() {
                                this.idle_sleep = None;
                                if let Some(s) = this.stream.as_mut() {
                                    s.stream_idle_timeout();
                                }
                                this.conn = None;
                                this.finish();
                                return Poll::Ready(Some(Err(Box::new(StreamIdle))));
                            }
                        }
                        return Poll::Pending;
                    }
                }
            }
        };
        match &frame {
            Some(Ok(f)) => {
                if let (Some(d), Some(s)) = (f.data_ref(), this.stream.as_mut()) {
                    s.bytes_sent += d.len() as u64;
                }
            }
            Some(Err(_)) => {
                // The upstream reset mid-response (or the downstream broke the request body).
                // The error makes the downstream codec abort: HTTP/1.1 closes the connection,
                // HTTP/2 resets the stream, so the client sees a broken response, never a short
                // one that looks complete.
                if let Some(s) = this.stream.as_mut() {
                    s.upstream_reset_mid_response();
                }
                this.conn = None;
                this.finish();
            }
            None => {
                this.done = true;
                this.finish();
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        match (&self.kind, &self.conn) {
            (Kind::Full(b), _) => b.is_none(),
            (Kind::Upstream(UpstreamBody::H2(b)), _) => b.is_end_stream(),
            (Kind::Upstream(UpstreamBody::H1), Some((Upstream::H1(c), _))) => c.body_is_end(),
            // The connection is gone: the body ended early, or is over already (`finish`).
            (Kind::Upstream(UpstreamBody::H1), _) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.kind, &self.conn) {
            (Kind::Full(b), _) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            (Kind::Upstream(UpstreamBody::H2(b)), _) => b.size_hint(),
            (Kind::Upstream(UpstreamBody::H1), Some((Upstream::H1(c), _))) => c.body_size_hint(),
            (Kind::Upstream(UpstreamBody::H1), _) => SizeHint::default(),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        self.finish();
    }
}
