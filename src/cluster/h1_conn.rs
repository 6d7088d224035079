//! An HTTP/1.1 upstream connection driven by the task of the request that uses it.
//!
//! hyper's client splits a connection into a `SendRequest` handle and a connection future. The
//! usual way is to spawn the future, which puts a task hop (a wake-up and a cross-task handoff)
//! on every request and every body chunk. Here the request's own task polls the connection:
//! while waiting for the response head ([`H1Conn::send`]), while streaming the response body
//! (`ResponseBody` polls [`H1Conn::poll_conn`] before the body), and while checking a pooled
//! connection out ([`H1Conn::ready`]). An idle connection in the pool is polled by nobody; a
//! close by the upstream is noticed at the next checkout or sweep.

use super::endpoint_pool::ConnActive;
use crate::http::body::RequestBody;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, TrySendError};
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::{Context, Poll};

type ConnFuture = Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>;

pub struct H1Conn {
    sender: http1::SendRequest<RequestBody>,
    conn: ConnFuture,
    /// The connection future has finished: the connection is closed (or was upgraded).
    done: bool,
    _active: ConnActive,
}

fn drive(conn: &mut ConnFuture, done: &mut bool, cx: &mut Context<'_>) -> bool {
    if !*done && conn.as_mut().poll(cx).is_ready() {
        *done = true;
    }
    !*done
}

impl H1Conn {
    pub(super) fn new<C>(
        sender: http1::SendRequest<RequestBody>,
        conn: C,
        active: ConnActive,
    ) -> Self
    where
        C: Future<Output = hyper::Result<()>> + Send + 'static,
    {
        H1Conn {
            sender,
            conn: Box::pin(conn),
            done: false,
            _active: active,
        }
    }

    /// Let the connection do its I/O; false once it has closed.
    pub fn poll_conn(&mut self, cx: &mut Context<'_>) -> bool {
        drive(&mut self.conn, &mut self.done, cx)
    }

    /// Poll once without waiting (the pool's idle sweep): false when the connection is closed.
    pub fn check_open(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        self.poll_conn(&mut cx) && !self.sender.is_closed()
    }

    /// Known to be closed already (without polling it).
    pub fn is_closed(&self) -> bool {
        self.done || self.sender.is_closed()
    }

    /// Wait until the connection can take a request; false when it closed instead.
    pub async fn ready(&mut self) -> bool {
        let H1Conn {
            sender, conn, done, ..
        } = self;
        poll_fn(|cx| {
            let open = drive(conn, done, cx);
            match sender.poll_ready(cx) {
                Poll::Ready(r) => Poll::Ready(r.is_ok()),
                Poll::Pending if open => Poll::Pending,
                Poll::Pending => Poll::Ready(false),
            }
        })
        .await
    }

    /// Send a request and drive the connection until its response head arrives.
    pub async fn send(
        &mut self,
        req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, TrySendError<Request<RequestBody>>> {
        let response = self.sender.try_send_request(req);
        let mut response = std::pin::pin!(response);
        let H1Conn { conn, done, .. } = self;
        poll_fn(|cx| {
            // The connection writes the request and reads the response; the response future
            // resolves from what the connection did (or with the error if it closed).
            drive(conn, done, cx);
            response.as_mut().poll(cx)
        })
        .await
    }

    /// Hand the connection to a task of its own: after a `101 Switching Protocols` the upgraded
    /// socket is released only when the connection future completes.
    pub fn spawn_to_completion(mut self) {
        tokio::spawn(async move {
            let H1Conn { conn, done, .. } = &mut self;
            poll_fn(|cx| {
                if drive(conn, done, cx) {
                    Poll::Pending
                } else {
                    Poll::Ready(())
                }
            })
            .await;
        });
    }
}
