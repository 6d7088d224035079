//! Replies legate makes itself, and the one place that maps a failure to Envoy's status code,
//! response flag, `%RESPONSE_CODE_DETAILS%` and body.

use super::response_flags::ResponseFlags;
use crate::cluster::endpoint_pool::ConnectError;
use bytes::Bytes;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalReply {
    /// No virtual host or route matched.
    NoRoute,
    /// The cluster has no host to send to.
    NoHealthyUpstream,
    /// Connecting to the chosen host failed; the string is the transport failure reason.
    ConnectFailure(String),
    /// The upstream connection closed or reset before response headers arrived.
    ConnectionTermination,
    /// The route timeout fired before the response headers arrived.
    UpstreamTimeout,
    /// The upstream sent a response hyper could not parse.
    UpstreamProtocolError,
    /// The upstream reset the stream (HTTP/2 RST_STREAM) before response headers.
    RemoteReset,
    /// A circuit breaker of the cluster is at its limit (`max_requests`, `max_connections`,
    /// `max_pending_requests`).
    UpstreamOverflow,
    /// The downstream broke the protocol (framing, limits): 400, 414, 431 or 501.
    DownstreamProtocolError { status: u16, details: &'static str },
    /// A well-formed request legate refuses (missing or conflicting Host, underscores).
    BadRequest(&'static str),
    /// `request_headers_timeout`: the request head did not arrive in time.
    RequestHeaderTimeout,
    /// `request_timeout`: the request did not arrive whole in time (504 if it did meanwhile).
    RequestTimeout { complete: bool },
    /// `stream_idle_timeout` before response headers (504 if the request was complete).
    StreamIdleTimeout { complete: bool },
}

impl LocalReply {
    pub fn status(&self) -> u16 {
        match self {
            LocalReply::NoRoute => 404,
            LocalReply::NoHealthyUpstream
            | LocalReply::ConnectFailure(_)
            | LocalReply::ConnectionTermination
            | LocalReply::RemoteReset
            | LocalReply::UpstreamOverflow => 503,
            LocalReply::UpstreamTimeout => 504,
            LocalReply::UpstreamProtocolError => 502,
            LocalReply::DownstreamProtocolError { status, .. } => *status,
            LocalReply::BadRequest(_) => 400,
            LocalReply::RequestHeaderTimeout => 408,
            LocalReply::RequestTimeout { complete }
            | LocalReply::StreamIdleTimeout { complete } => {
                if *complete {
                    504
                } else {
                    408
                }
            }
        }
    }

    pub fn flag(&self) -> ResponseFlags {
        match self {
            LocalReply::NoRoute => ResponseFlags::NO_ROUTE_FOUND,
            LocalReply::NoHealthyUpstream => ResponseFlags::NO_HEALTHY_UPSTREAM,
            LocalReply::ConnectFailure(_) => ResponseFlags::UPSTREAM_CONNECTION_FAILURE,
            LocalReply::ConnectionTermination => ResponseFlags::UPSTREAM_CONNECTION_TERMINATION,
            LocalReply::UpstreamTimeout => ResponseFlags::UPSTREAM_REQUEST_TIMEOUT,
            LocalReply::UpstreamProtocolError => ResponseFlags::UPSTREAM_PROTOCOL_ERROR,
            LocalReply::RemoteReset => ResponseFlags::UPSTREAM_REMOTE_RESET,
            LocalReply::UpstreamOverflow => ResponseFlags::UPSTREAM_OVERFLOW,
            LocalReply::DownstreamProtocolError { .. } => ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
            LocalReply::StreamIdleTimeout { .. } => ResponseFlags::STREAM_IDLE_TIMEOUT,
            LocalReply::BadRequest(_)
            | LocalReply::RequestHeaderTimeout
            | LocalReply::RequestTimeout { .. } => ResponseFlags::default(),
        }
    }

    /// Envoy's `%RESPONSE_CODE_DETAILS%` for this reply.
    pub fn details(&self) -> &'static str {
        match self {
            LocalReply::NoRoute => "route_not_found",
            LocalReply::NoHealthyUpstream => "no_healthy_upstream",
            LocalReply::ConnectFailure(_) => {
                "upstream_reset_before_response_started{remote_connection_failure}"
            }
            LocalReply::ConnectionTermination => {
                "upstream_reset_before_response_started{connection_termination}"
            }
            LocalReply::UpstreamTimeout => "upstream_response_timeout",
            LocalReply::RemoteReset => "upstream_reset_before_response_started{remote_reset}",
            LocalReply::UpstreamOverflow => "upstream_reset_before_response_started{overflow}",
            LocalReply::UpstreamProtocolError => {
                "upstream_reset_before_response_started{protocol_error}"
            }
            LocalReply::DownstreamProtocolError { details, .. } => details,
            LocalReply::BadRequest(details) => details,
            LocalReply::RequestHeaderTimeout => "request_header_timeout",
            LocalReply::RequestTimeout { .. } => "request_overall_timeout",
            LocalReply::StreamIdleTimeout { .. } => "stream_idle_timeout",
        }
    }

    /// The transport failure reason, for `%UPSTREAM_TRANSPORT_FAILURE_REASON%`.
    pub fn transport_failure_reason(&self) -> &str {
        match self {
            LocalReply::ConnectFailure(reason) => reason,
            _ => "",
        }
    }

    /// The body Envoy sends (plain text; the no-route 404 has none).
    pub fn body(&self) -> Bytes {
        match self {
            LocalReply::NoRoute => Bytes::new(),
            LocalReply::NoHealthyUpstream => Bytes::from_static(b"no healthy upstream"),
            LocalReply::ConnectFailure(reason) => Bytes::from(format!(
                "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure, transport failure reason: {reason}"
            )),
            LocalReply::ConnectionTermination => Bytes::from_static(
                b"upstream connect error or disconnect/reset before headers. reset reason: connection termination",
            ),
            LocalReply::UpstreamTimeout => Bytes::from_static(b"upstream request timeout"),
            LocalReply::UpstreamProtocolError => Bytes::from_static(
                b"upstream connect error or disconnect/reset before headers. reset reason: protocol error",
            ),
            LocalReply::RemoteReset => Bytes::from_static(
                b"upstream connect error or disconnect/reset before headers. reset reason: remote reset",
            ),
            LocalReply::UpstreamOverflow => Bytes::from_static(
                b"upstream connect error or disconnect/reset before headers. reset reason: overflow",
            ),
            LocalReply::DownstreamProtocolError { .. } | LocalReply::BadRequest(_) => Bytes::new(),
            LocalReply::RequestHeaderTimeout => Bytes::from_static(b"request header timeout"),
            LocalReply::RequestTimeout { .. } => Bytes::from_static(b"request timeout"),
            LocalReply::StreamIdleTimeout { .. } => Bytes::from_static(b"stream timeout"),
        }
    }
}

impl From<ConnectError> for LocalReply {
    /// A request that could not get an upstream connection: a circuit breaker said no, or the
    /// dial failed.
    fn from(e: ConnectError) -> Self {
        match e {
            ConnectError::Overflow => LocalReply::UpstreamOverflow,
            e => LocalReply::ConnectFailure(e.to_string()),
        }
    }
}
