//! Sending a body into an HTTP/2 stream with the peer's flow control: responses downstream,
//! request bodies upstream.

use crate::http::body::BoxError;
use bytes::{Buf, Bytes};
use h2::{Reason, SendStream};
use http_body::Body;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

/// Whether `body` is empty (the head then ends the stream); if not and its size is known,
/// `content-length` says so unless the head has one already.
pub fn set_length<B: Body>(headers: &mut http::HeaderMap, body: &B) -> bool {
    if body.is_end_stream() {
        return true;
    }
    if let Some(len) = body.size_hint().exact() {
        headers
            .entry(http::header::CONTENT_LENGTH)
            .or_insert_with(|| http::HeaderValue::from(len));
    }
    false
}

/// A body into an HTTP/2 stream, a frame at a time: the next frame is not taken from the body
/// before the peer's window has room for this one. Ends on the body's end, the peer's reset, or
/// the body's error (which resets the stream).
pub struct Pipe<B> {
    body: B,
    tx: SendStream<Bytes>,
    /// A frame waiting for the peer's window.
    pending: Option<(Bytes, bool)>,
}

impl<B> Pipe<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    pub fn new(body: B, tx: SendStream<Bytes>) -> Self {
        Pipe {
            body,
            tx,
            pending: None,
        }
    }

    pub fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Pipe { body, tx, pending } = self;
        let mut body = Pin::new(body);
        loop {
            if tx.poll_reset(cx).is_ready() {
                return Poll::Ready(());
            }
            if let Some((data, end)) = pending.take() {
                while tx.capacity() == 0 {
                    match tx.poll_capacity(cx) {
                        Poll::Ready(Some(Ok(0))) => {}
                        Poll::Ready(Some(Ok(_))) => break,
                        Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(()),
                        Poll::Pending => {
                            *pending = Some((data, end));
                            return Poll::Pending;
                        }
                    }
                }
                if tx.send_data(data, end).is_err() || end {
                    return Poll::Ready(());
                }
                continue;
            }
            match ready!(body.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let end = body.is_end_stream();
                        if !data.has_remaining() {
                            if tx.send_data(data, end).is_err() || end {
                                return Poll::Ready(());
                            }
                            continue;
                        }
                        // A claim on the window, not the whole frame: h2 raises it to what is
                        // buffered, and a small claim cannot pin the connection's window for a
                        // body that has nothing more to send (hyper #4003).
                        tx.reserve_capacity(1);
                        *pending = Some((data, end));
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            tx.reserve_capacity(0);
                            let _ = tx.send_trailers(trailers);
                            return Poll::Ready(());
                        }
                    }
                },
                Some(Err(e)) => {
                    tx.send_reset(reset_reason(&e));
                    return Poll::Ready(());
                }
                None => {
                    let _ = tx.send_data(Bytes::new(), true);
                    return Poll::Ready(());
                }
            }
        }
    }
}

/// The peer's own reset code, found in the body's error, passes through; anything else is
/// INTERNAL_ERROR.
fn reset_reason(e: &BoxError) -> Reason {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e.as_ref());
    while let Some(c) = cause {
        if let Some(r) = c.downcast_ref::<h2::Error>().and_then(h2::Error::reason) {
            return r;
        }
        cause = c.source();
    }
    Reason::INTERNAL_ERROR
}

impl<B> Future for Pipe<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.poll_send(cx)
    }
}
