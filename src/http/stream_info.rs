//! What legate knows about one request while it is in flight, and its ending: stats and access
//! log lines are written once, when the response body ends or is dropped.

use super::body::RequestProgress;
use super::connection_manager::{ConnectionManager, Downstream};
use super::guard::ActiveStream;
use super::response_flags::ResponseFlags;
use crate::cluster::circuit_breaker::Slot;
use crate::cluster::{Cluster, Host};
use crate::observe::access_log::{Captured, Entry};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

pub struct StreamInfo {
    pub cm: Arc<ConnectionManager>,
    pub start: Instant,
    /// Wall-clock start, for `%START_TIME%` (the epoch when no access log is configured).
    pub start_time: SystemTime,
    pub downstream: Downstream,
    pub protocol: &'static str,
    pub status: u16,
    pub flags: ResponseFlags,
    pub details: &'static str,
    /// (virtual host, route) indexes into the connection manager's route table.
    pub route: Option<(usize, usize)>,
    pub upstream: Option<(Arc<Cluster>, Arc<Host>)>,
    /// The cluster's `max_requests` circuit-breaker slot, released when the request finishes.
    pub rq_slot: Option<Slot>,
    pub upstream_start: Option<Instant>,
    pub transport_failure_reason: Option<Box<str>>,
    pub request: Arc<RequestProgress>,
    pub bytes_sent: u64,
    /// One per configured access log.
    pub captured: Vec<Captured>,
    /// Keeps the connection from idling out while the stream lives.
    pub active: Option<ActiveStream>,
    /// legate reset the stream (timeout, framing) rather than the client.
    pub local_reset: bool,
    finished: bool,
}

impl StreamInfo {
    pub fn new(cm: Arc<ConnectionManager>, downstream: Downstream, protocol: &'static str) -> Self {
        // The wall-clock start is for access logs only: no clock read without one.
        let start_time = if cm.access_logs.is_empty() {
            SystemTime::UNIX_EPOCH
        } else {
            SystemTime::now()
        };
        StreamInfo {
            cm,
            start: Instant::now(),
            start_time,
            downstream,
            protocol,
            status: 0,
            flags: ResponseFlags::default(),
            details: "",
            route: None,
            upstream: None,
            rq_slot: None,
            upstream_start: None,
            transport_failure_reason: None,
            request: Arc::default(),
            bytes_sent: 0,
            captured: Vec::new(),
            active: None,
            local_reset: false,
            finished: false,
        }
    }

    /// `stream_idle_timeout` fired after response headers: the stream is reset.
    pub fn stream_idle_timeout(&mut self) {
        self.flags.set(ResponseFlags::STREAM_IDLE_TIMEOUT);
        self.details = "stream_idle_timeout";
        self.local_reset = true;
        self.cm.stats.downstream_rq_idle_timeout.increment(1);
    }

    /// legate resets the stream without a response (HTTP/2 RST_STREAM).
    pub fn reset_locally(&mut self, details: &'static str) {
        self.details = details;
        self.local_reset = true;
        self.finish(false);
    }

    /// The upstream reset while the response body was streaming.
    pub fn upstream_reset_mid_response(&mut self) {
        self.flags.set(ResponseFlags::UPSTREAM_REMOTE_RESET);
        self.details = "upstream_reset_after_response_started{remote_reset}";
        if let Some((cluster, _)) = &self.upstream {
            cluster.stats.upstream_rq_rx_reset.increment(1);
        }
    }

    /// Called exactly once, by the response body, when the request is over.
    pub fn finish(&mut self, complete: bool) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        if !complete && self.local_reset {
            self.cm.stats.downstream_rq_tx_reset.increment(1);
        } else if !complete && !self.flags.contains(ResponseFlags::UPSTREAM_REMOTE_RESET) {
            self.cm.stats.downstream_rq_rx_reset.increment(1);
        }
        if !complete
            && !self.local_reset
            && !self.flags.contains(ResponseFlags::UPSTREAM_REMOTE_RESET)
        {
            // The response did not reach its end and the upstream did not cause it: the
            // downstream went away.
            self.flags
                .set(ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION);
            if self.details.is_empty() || self.details == "via_upstream" {
                self.details = "downstream_remote_disconnect";
            }
        }
        // One clock read for both durations.
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.start);
        let ms = elapsed.as_secs_f64() * 1000.0;
        let cm = &self.cm;
        cm.stats.downstream_rq_active.decrement(1.0);
        cm.stats.downstream_rq_completed.increment(1);
        cm.stats.downstream_rq.record(self.status);
        cm.stats.downstream_rq_time.record_value(ms);
        // `http2.rx_reset` / `tx_reset` count RST_STREAM frames: the connection's guard does.
        if let Some((cluster, host)) = &self.upstream {
            let s = &cluster.stats;
            s.upstream_rq_active.decrement(1.0);
            host.stats.rq_active.fetch_sub(1, Ordering::Relaxed);
            self.rq_slot = None;
            if self.upstream_start.is_some()
                && self.status != 0
                && !self.flags.contains(ResponseFlags::UPSTREAM_REQUEST_TIMEOUT)
            {
                s.upstream_rq_completed.increment(1);
                s.upstream_rq.record(self.status);
                if let Some(t) = self.upstream_start {
                    s.upstream_rq_time
                        .record_value(now.saturating_duration_since(t).as_secs_f64() * 1000.0);
                }
            }
            let ok = self.status < 500 && self.flags.is_empty();
            let counter = if ok {
                &host.stats.rq_success
            } else {
                &host.stats.rq_error
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        if !cm.access_logs.is_empty() {
            self.write_access_logs(elapsed);
        }
        // The connection may idle from now on (timed from the clock read above).
        if let Some(active) = self.active.take() {
            active.end_at(now);
        }
    }

    fn write_access_logs(&self, duration: std::time::Duration) {
        let flags = self.flags.to_string();
        let route_name = self
            .route
            .map(|(v, r)| self.cm.routes.virtual_hosts[v].routes[r].name.as_str())
            .unwrap_or("");
        let entry = Entry {
            start_time: self.start_time,
            protocol: self.protocol,
            response_code: self.status,
            response_code_details: self.details,
            response_flags: &flags,
            bytes_received: self.request.bytes.load(Ordering::Relaxed),
            bytes_sent: self.bytes_sent,
            duration,
            upstream_host: self.upstream.as_ref().map(|(_, h)| h.address),
            upstream_cluster: self.upstream.as_ref().map_or("", |(c, _)| c.name.as_str()),
            route_name,
            downstream_remote: self.downstream.remote,
            downstream_local: self.downstream.local,
            upstream_transport_failure_reason: self
                .transport_failure_reason
                .as_deref()
                .unwrap_or(""),
        };
        for (log, captured) in self.cm.access_logs.iter().zip(&self.captured) {
            log.log(&entry, captured);
        }
    }
}

impl Drop for StreamInfo {
    /// A stream dropped before its response began (the client reset it, or the connection
    /// closed) is finished here, so its stats and access log are never lost.
    fn drop(&mut self) {
        self.finish(false);
    }
}
