//! HTTP/2 `connection_keepalive`, for downstream and upstream connections alike.

use h2::{Ping, PingPong};
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// `connection_keepalive`: a PING every `interval` (plus Envoy's default jitter, up to 15% of
/// it, so that connections opened together do not ping together); no PONG within `timeout`
/// ends the connection.
pub struct KeepAlive {
    pp: PingPong,
    interval: Duration,
    timeout: Duration,
    timer: Pin<Box<Sleep>>,
    waiting: bool,
}

impl KeepAlive {
    pub fn new(pp: PingPong, interval: Duration, timeout: Duration) -> Self {
        KeepAlive {
            pp,
            interval,
            timeout,
            timer: Box::pin(tokio::time::sleep(jittered(interval))),
            waiting: false,
        }
    }

    /// Ready when the peer has failed to answer in time.
    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if self.waiting {
                match self.pp.poll_pong(cx) {
                    Poll::Ready(Ok(_)) => {
                        self.waiting = false;
                        self.timer
                            .as_mut()
                            .reset(Instant::now() + jittered(self.interval));
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(()),
                    Poll::Pending => {}
                }
            }
            ready!(self.timer.as_mut().poll(cx));
            if self.waiting {
                return Poll::Ready(());
            }
            if self.pp.send_ping(Ping::opaque()).is_err() {
                return Poll::Ready(());
            }
            self.waiting = true;
            self.timer.as_mut().reset(Instant::now() + self.timeout);
        }
    }
}

/// `interval` plus up to 15% of it (Envoy's default `interval_jitter`).
fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(1.0 + 0.15 * fastrand::f64())
}
