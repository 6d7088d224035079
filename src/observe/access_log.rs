//! Access logs in Envoy's substitution format (`%REQ(USER-AGENT)%`, `%RESPONSE_FLAGS%`, …).
//!
//! A format is parsed once at startup into segments. Per request, only the request headers the
//! format names are kept (cheap `HeaderValue` clones), because the headers themselves travel on
//! to the upstream. Lines go to a writer thread through a bounded channel: a request never waits
//! on a log file.

use http::{HeaderMap, HeaderName, HeaderValue};
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

/// Envoy's default text format.
pub const DEFAULT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n";

#[derive(Debug, Clone, PartialEq)]
pub struct Format {
    segments: Vec<Segment>,
    /// Every request header any `%REQ(...)%` names, in slot order.
    request_headers: Vec<HeaderKey>,
    /// Every response header any `%RESP(...)%` names, in slot order.
    response_headers: Vec<HeaderName>,
}

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Text(String),
    Op(Op, Option<usize>),
}

#[derive(Debug, Clone, PartialEq)]
enum Op {
    StartTime,
    /// Slots into `request_headers`: the main header, then the fallback after `?`.
    Req(usize, Option<usize>),
    Resp(usize),
    Protocol,
    ResponseCode,
    ResponseCodeDetails,
    ResponseFlags,
    BytesReceived,
    BytesSent,
    Duration,
    UpstreamHost,
    UpstreamCluster,
    RouteName,
    DownstreamRemoteAddress,
    DownstreamRemoteAddressWithoutPort,
    DownstreamLocalAddress,
    UpstreamTransportFailureReason,
}

/// A request header as a format names it: a pseudo-header or a regular header.
#[derive(Debug, Clone, PartialEq)]
pub enum HeaderKey {
    Method,
    Path,
    Authority,
    Scheme,
    Header(HeaderName),
}

impl Format {
    pub fn parse(s: &str) -> Result<Format, String> {
        let mut segments = Vec::new();
        let mut request_headers: Vec<HeaderKey> = Vec::new();
        let mut response_headers: Vec<HeaderName> = Vec::new();
        let slot = |k: HeaderKey, hs: &mut Vec<HeaderKey>| -> usize {
            if let Some(i) = hs.iter().position(|h| *h == k) {
                i
            } else {
                hs.push(k);
                hs.len() - 1
            }
        };
        let mut rest = s;
        let mut text = String::new();
        while let Some(start) = rest.find('%') {
            text.push_str(&rest[..start]);
            let after = &rest[start + 1..];
            let end = after
                .find('%')
                .ok_or_else(|| format!("unterminated command operator in '{s}'"))?;
            let token = &after[..end];
            rest = &after[end + 1..];
            if token.is_empty() {
                text.push('%');
                continue;
            }
            if !text.is_empty() {
                segments.push(Segment::Text(std::mem::take(&mut text)));
            }
            // `%OP(arg)%` optionally followed by `:N` (truncate to N characters).
            let (token, max_len) = match token.rsplit_once("):") {
                Some((t, n)) => (
                    &token[..t.len() + 1],
                    Some(
                        n.parse::<usize>()
                            .map_err(|_| format!("bad length in '%{token}%'"))?,
                    ),
                ),
                None => (token, None),
            };
            let (name, arg) = match token.split_once('(') {
                Some((n, a)) => (
                    n,
                    Some(
                        a.strip_suffix(')')
                            .ok_or_else(|| format!("missing ')' in '%{token}%'"))?,
                    ),
                ),
                None => (token, None),
            };
            let op = match (name, arg) {
                ("START_TIME", None) => Op::StartTime,
                ("REQ", Some(arg)) => {
                    let (main, alt) = match arg.split_once('?') {
                        Some((m, a)) => (m, Some(a)),
                        None => (arg, None),
                    };
                    let m = slot(header_key(main)?, &mut request_headers);
                    let a = match alt {
                        Some(a) => Some(slot(header_key(a)?, &mut request_headers)),
                        None => None,
                    };
                    Op::Req(m, a)
                }
                ("RESP", Some(arg)) => {
                    let name = HeaderName::from_bytes(arg.to_ascii_lowercase().as_bytes())
                        .map_err(|_| format!("invalid header name '{arg}'"))?;
                    let slot = match response_headers.iter().position(|h| *h == name) {
                        Some(i) => i,
                        None => {
                            response_headers.push(name);
                            response_headers.len() - 1
                        }
                    };
                    Op::Resp(slot)
                }
                ("PROTOCOL", None) => Op::Protocol,
                ("RESPONSE_CODE", None) => Op::ResponseCode,
                ("RESPONSE_CODE_DETAILS", None) => Op::ResponseCodeDetails,
                ("RESPONSE_FLAGS", None) => Op::ResponseFlags,
                ("BYTES_RECEIVED", None) => Op::BytesReceived,
                ("BYTES_SENT", None) => Op::BytesSent,
                ("DURATION", None) => Op::Duration,
                ("UPSTREAM_HOST", None) => Op::UpstreamHost,
                ("UPSTREAM_CLUSTER", None) => Op::UpstreamCluster,
                ("ROUTE_NAME", None) => Op::RouteName,
                ("DOWNSTREAM_REMOTE_ADDRESS", None) => Op::DownstreamRemoteAddress,
                ("DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT", None) => {
                    Op::DownstreamRemoteAddressWithoutPort
                }
                ("DOWNSTREAM_LOCAL_ADDRESS", None) => Op::DownstreamLocalAddress,
                ("UPSTREAM_TRANSPORT_FAILURE_REASON", None) => Op::UpstreamTransportFailureReason,
                _ => return Err(format!("unsupported command operator '%{token}%'")),
            };
            segments.push(Segment::Op(op, max_len));
        }
        text.push_str(rest);
        if !text.is_empty() {
            segments.push(Segment::Text(text));
        }
        Ok(Format {
            segments,
            request_headers,
            response_headers,
        })
    }

    /// The request header values this format will need, taken before the headers move on.
    pub fn capture(&self, req: &RequestParts<'_>) -> Vec<Option<HeaderValue>> {
        self.request_headers
            .iter()
            .map(|k| match k {
                HeaderKey::Method => HeaderValue::from_str(req.method).ok(),
                HeaderKey::Path => HeaderValue::from_str(req.path).ok(),
                HeaderKey::Authority => req.authority.and_then(|a| HeaderValue::from_str(a).ok()),
                HeaderKey::Scheme => HeaderValue::from_str(req.scheme).ok(),
                HeaderKey::Header(h) => req.headers.get(h).cloned(),
            })
            .collect()
    }

    /// The response header values this format will need.
    pub fn capture_response(&self, headers: &HeaderMap) -> Vec<Option<HeaderValue>> {
        self.response_headers
            .iter()
            .map(|h| headers.get(h).cloned())
            .collect()
    }

    pub fn format(&self, entry: &Entry<'_>, captured: &Captured, out: &mut String) {
        for seg in &self.segments {
            match seg {
                Segment::Text(t) => out.push_str(t),
                Segment::Op(op, max_len) => {
                    let start = out.len();
                    self.op(op, entry, captured, out);
                    if out.len() == start {
                        out.push('-');
                    } else if let Some(n) = max_len {
                        truncate_chars(out, start, *n);
                    }
                }
            }
        }
    }

    fn op(&self, op: &Op, e: &Entry<'_>, captured: &Captured, out: &mut String) {
        match op {
            Op::StartTime => {
                let _ = write!(out, "{}", humantime::format_rfc3339_millis(e.start_time));
            }
            Op::Req(main, alt) => {
                let req = &captured.request;
                let v = req
                    .get(*main)
                    .and_then(|v| v.as_ref())
                    .or_else(|| alt.and_then(|a| req.get(a)).and_then(|v| v.as_ref()));
                if let Some(v) = v {
                    out.push_str(&String::from_utf8_lossy(v.as_bytes()));
                }
            }
            Op::Resp(slot) => {
                if let Some(Some(v)) = captured.response.get(*slot) {
                    out.push_str(&String::from_utf8_lossy(v.as_bytes()));
                }
            }
            Op::Protocol => out.push_str(e.protocol),
            Op::ResponseCode => {
                let _ = write!(out, "{}", e.response_code);
            }
            Op::ResponseCodeDetails => out.push_str(e.response_code_details),
            Op::ResponseFlags => out.push_str(e.response_flags),
            Op::BytesReceived => {
                let _ = write!(out, "{}", e.bytes_received);
            }
            Op::BytesSent => {
                let _ = write!(out, "{}", e.bytes_sent);
            }
            Op::Duration => {
                let _ = write!(out, "{}", e.duration.as_millis());
            }
            Op::UpstreamHost => {
                if let Some(h) = e.upstream_host {
                    let _ = write!(out, "{h}");
                }
            }
            Op::UpstreamCluster => out.push_str(e.upstream_cluster),
            Op::RouteName => out.push_str(e.route_name),
            Op::DownstreamRemoteAddress => {
                let _ = write!(out, "{}", e.downstream_remote);
            }
            Op::DownstreamRemoteAddressWithoutPort => {
                let _ = write!(out, "{}", e.downstream_remote.ip());
            }
            Op::DownstreamLocalAddress => {
                let _ = write!(out, "{}", e.downstream_local);
            }
            Op::UpstreamTransportFailureReason => out.push_str(e.upstream_transport_failure_reason),
        }
    }
}

fn truncate_chars(out: &mut String, start: usize, n: usize) {
    if let Some((idx, _)) = out[start..].char_indices().nth(n) {
        out.truncate(start + idx);
    }
}

fn header_key(name: &str) -> Result<HeaderKey, String> {
    Ok(match name.to_ascii_lowercase().as_str() {
        ":method" => HeaderKey::Method,
        ":path" => HeaderKey::Path,
        ":authority" | "host" => HeaderKey::Authority,
        ":scheme" => HeaderKey::Scheme,
        other => HeaderKey::Header(
            HeaderName::from_bytes(other.as_bytes())
                .map_err(|_| format!("invalid header name '{name}'"))?,
        ),
    })
}

/// The request as the access log sees it on arrival (after legate's own header edits).
pub struct RequestParts<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub authority: Option<&'a str>,
    pub scheme: &'a str,
    pub headers: &'a HeaderMap,
}

/// Header values kept for one access log while the request is in flight.
#[derive(Debug, Default, Clone)]
pub struct Captured {
    pub request: Vec<Option<HeaderValue>>,
    pub response: Vec<Option<HeaderValue>>,
}

/// Everything a finished request contributes to its log line.
pub struct Entry<'a> {
    pub start_time: SystemTime,
    pub protocol: &'a str,
    pub response_code: u16,
    pub response_code_details: &'a str,
    pub response_flags: &'a str,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub duration: Duration,
    pub upstream_host: Option<SocketAddr>,
    pub upstream_cluster: &'a str,
    pub route_name: &'a str,
    pub downstream_remote: SocketAddr,
    pub downstream_local: SocketAddr,
    pub upstream_transport_failure_reason: &'a str,
}

/// One configured access log: a format and a writer thread.
#[derive(Clone)]
pub struct AccessLogger {
    pub format: std::sync::Arc<Format>,
    tx: flume::Sender<String>,
    dropped: metrics::Counter,
}

impl std::fmt::Debug for AccessLogger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLogger").finish_non_exhaustive()
    }
}

/// Lines queued beyond this are dropped (and counted) rather than slowing requests down.
const QUEUE_LINES: usize = 65_536;

impl AccessLogger {
    pub fn open(
        sink: &crate::bootstrap::AccessLogSink,
        format: std::sync::Arc<Format>,
        stats: &crate::observe::Stats,
    ) -> std::io::Result<AccessLogger> {
        use crate::bootstrap::AccessLogSink;
        let writer: Box<dyn std::io::Write + Send> = match sink {
            AccessLogSink::Stdout => Box::new(std::io::stdout()),
            AccessLogSink::Stderr => Box::new(std::io::stderr()),
            AccessLogSink::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
        };
        let (tx, rx) = flume::bounded::<String>(QUEUE_LINES);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(rx, writer))?;
        Ok(AccessLogger {
            format,
            tx,
            dropped: stats.counter("access_log.dropped_lines"),
        })
    }

    pub fn log(&self, entry: &Entry<'_>, captured: &Captured) {
        let mut line = String::with_capacity(256);
        self.format.format(entry, captured, &mut line);
        if self.tx.try_send(line).is_err() {
            self.dropped.increment(1);
        }
    }
}

/// Batches whatever is queued into one write, so a burst costs one system call.
fn write_lines(rx: flume::Receiver<String>, writer: Box<dyn std::io::Write + Send>) {
    let mut w = std::io::BufWriter::with_capacity(64 * 1024, writer);
    while let Ok(line) = rx.recv() {
        let _ = w.write_all(line.as_bytes());
        while let Ok(more) = rx.try_recv() {
            let _ = w.write_all(more.as_bytes());
        }
        let _ = w.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry<'static> {
        Entry {
            start_time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_500),
            protocol: "HTTP/1.1",
            response_code: 503,
            response_code_details: "no_healthy_upstream",
            response_flags: "UH",
            bytes_received: 0,
            bytes_sent: 19,
            duration: Duration::from_millis(3),
            upstream_host: None,
            upstream_cluster: "c",
            route_name: "",
            downstream_remote: "127.0.0.1:5000".parse().unwrap(),
            downstream_local: "127.0.0.1:10000".parse().unwrap(),
            upstream_transport_failure_reason: "",
        }
    }

    #[test]
    fn default_format_line() {
        let f = Format::parse(DEFAULT_FORMAT).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("user-agent", HeaderValue::from_static("curl/8"));
        headers.insert("x-request-id", HeaderValue::from_static("abc"));
        let captured = Captured {
            request: f.capture(&RequestParts {
                method: "GET",
                path: "/x?y",
                authority: Some("example.com"),
                scheme: "http",
                headers: &headers,
            }),
            response: f.capture_response(&HeaderMap::new()),
        };
        let mut out = String::new();
        f.format(&entry(), &captured, &mut out);
        assert_eq!(
            out,
            "[1970-01-01T00:00:01.500Z] \"GET /x?y HTTP/1.1\" 503 UH 0 19 3 - \"-\" \"curl/8\" \"abc\" \"example.com\" \"-\"\n"
        );
    }

    #[test]
    fn fallback_truncation_and_errors() {
        let f =
            Format::parse("%REQ(X-ENVOY-ORIGINAL-PATH?:PATH):3% 100%% %UPSTREAM_CLUSTER%").unwrap();
        let headers = HeaderMap::new();
        let captured = Captured {
            request: f.capture(&RequestParts {
                method: "GET",
                path: "/abcdef",
                authority: None,
                scheme: "http",
                headers: &headers,
            }),
            response: Vec::new(),
        };
        let mut out = String::new();
        f.format(&entry(), &captured, &mut out);
        assert_eq!(out, "/ab 100% c");
        assert!(Format::parse("%NOPE%")
            .unwrap_err()
            .contains("unsupported command operator"));
        assert!(Format::parse("%REQ(x").is_err());
    }
}
