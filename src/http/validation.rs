//! Request checks hyper does not make, applied to every request before routing (HTTP/1.1 framing
//! and limits are checked earlier, on the wire, by [`super::guard`]):
//!
//! - `Host`: exactly one on HTTP/1.1 (RFC 9112 §3.2), a valid authority; an absolute-form
//!   target's authority replaces it (§3.2.2). On HTTP/2, `host` must agree with `:authority`.
//! - the request target's length (`max_request_uri_kb`, 414), and its form: authority-form
//!   (`host:port`) only for CONNECT;
//! - header names with underscores (`headers_with_underscores_action`);
//! - `HTTP2-Settings` (the h2c upgrade's payload) never travels on.

use super::local_reply::LocalReply;
use crate::bootstrap::{DownstreamLimits, UnderscoreAction};
use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http::uri::Authority;
use http::Version;
use metrics::Counter;

/// How a request that fails a check ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A local reply (HTTP/1.1, and HTTP/2 where Envoy answers).
    Reply(LocalReply),
    /// An HTTP/2 stream reset.
    Reset(h2::Reason),
}

/// The codec counters for underscores (`http1.*` or `http2.*`).
pub struct UnderscoreStats {
    pub dropped: Counter,
    pub rejected: Counter,
}

static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

pub fn check_request(
    parts: &mut Parts,
    limits: &DownstreamLimits,
    underscores: &UnderscoreStats,
) -> Result<(), Verdict> {
    let h2 = parts.version == Version::HTTP_2;
    // HTTP/1.0 (and 0.9) is served only when `accept_http_10` says so; Envoy's codec answers
    // 426 otherwise.
    if parts.version < Version::HTTP_11 {
        if !limits.accept_http_10 {
            return Err(Verdict::Reply(LocalReply::DownstreamProtocolError {
                status: 426,
                details: "low_version",
            }));
        }
        if let Some(host) = &limits.default_host_for_http_10 {
            if !parts.headers.contains_key(header::HOST) && parts.uri.authority().is_none() {
                parts.headers.insert(header::HOST, host.clone());
            }
        }
    }
    let target_len = parts.uri.path_and_query().map_or(0, |p| p.as_str().len());
    if target_len > limits.max_request_uri_bytes {
        return Err(Verdict::Reply(LocalReply::DownstreamProtocolError {
            status: 414,
            details: if h2 {
                "http2.uri_too_long"
            } else {
                "http1.uri_too_long"
            },
        }));
    }
    // A target that is only an authority (`host:port`) is CONNECT's form (RFC 9112 §3.2.3);
    // on any other method Envoy's codec rejects it.
    if !h2
        && parts.uri.scheme().is_none()
        && parts.uri.authority().is_some()
        && parts.method != http::Method::CONNECT
    {
        return Err(Verdict::Reply(LocalReply::DownstreamProtocolError {
            status: 400,
            details: "http1.codec_error",
        }));
    }
    check_host(parts)?;
    match limits.headers_with_underscores {
        UnderscoreAction::Allow => {}
        UnderscoreAction::DropHeader => {
            let names: Vec<HeaderName> = parts
                .headers
                .keys()
                .filter(|n| n.as_str().contains('_'))
                .cloned()
                .collect();
            for n in names {
                parts.headers.remove(&n);
                underscores.dropped.increment(1);
            }
        }
        UnderscoreAction::RejectRequest => {
            if parts.headers.keys().any(|n| n.as_str().contains('_')) {
                underscores.rejected.increment(1);
                return Err(if h2 {
                    Verdict::Reset(h2::Reason::PROTOCOL_ERROR)
                } else {
                    Verdict::Reply(LocalReply::DownstreamProtocolError {
                        status: 400,
                        details: "http1.unexpected_underscore",
                    })
                });
            }
        }
    }
    // The h2c upgrade's settings are for the hop that never happens here.
    parts.headers.remove(&HTTP2_SETTINGS);
    Ok(())
}

fn bad(details: &'static str) -> Verdict {
    Verdict::Reply(LocalReply::BadRequest(details))
}

fn check_host(parts: &mut Parts) -> Result<(), Verdict> {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let first = hosts.next().cloned();
    if hosts.next().is_some() {
        return Err(bad("multiple_host_headers"));
    }
    if let Some(h) = &first {
        if Authority::try_from(h.as_bytes()).is_err() {
            return Err(bad("invalid_host_header"));
        }
    }
    match parts.version {
        Version::HTTP_2 => {
            if let (Some(host), Some(authority)) = (&first, parts.uri.authority()) {
                if !host
                    .as_bytes()
                    .eq_ignore_ascii_case(authority.as_str().as_bytes())
                {
                    return Err(bad("authority_host_mismatch"));
                }
            }
            Ok(())
        }
        version => {
            if first.is_none() && version == Version::HTTP_11 {
                return Err(bad("missing_host_header"));
            }
            // Absolute form: the target's authority is the host (RFC 9112 §3.2.2).
            if let Some(a) = parts.uri.authority() {
                if let Ok(v) = HeaderValue::from_str(a.as_str()) {
                    parts.headers.insert(header::HOST, v);
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(version: Version, uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().version(version).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn stats() -> UnderscoreStats {
        let s = crate::observe::Stats::new();
        UnderscoreStats {
            dropped: s.counter("d"),
            rejected: s.counter("r"),
        }
    }

    fn check(p: &mut Parts, limits: &DownstreamLimits) -> Result<(), Verdict> {
        check_request(p, limits, &stats())
    }

    #[test]
    fn host_rules() {
        let l = DownstreamLimits::default();
        assert!(check(&mut parts(Version::HTTP_11, "/", &[("host", "a")]), &l).is_ok());
        assert_eq!(
            check(&mut parts(Version::HTTP_11, "/", &[]), &l),
            Err(bad("missing_host_header"))
        );
        assert_eq!(
            check(
                &mut parts(Version::HTTP_11, "/", &[("host", "a"), ("host", "b")]),
                &l
            ),
            Err(bad("multiple_host_headers"))
        );
        // HTTP/1.0 is refused by default (Envoy's 426); accepted, it needs no Host, and
        // `default_host_for_http_10` supplies one.
        assert_eq!(
            check(&mut parts(Version::HTTP_10, "/", &[]), &l),
            Err(Verdict::Reply(LocalReply::DownstreamProtocolError {
                status: 426,
                details: "low_version"
            }))
        );
        let mut accepting = DownstreamLimits {
            accept_http_10: true,
            ..DownstreamLimits::default()
        };
        assert!(check(&mut parts(Version::HTTP_10, "/", &[]), &accepting).is_ok());
        accepting.default_host_for_http_10 = Some(HeaderValue::from_static("d.example"));
        let mut p = parts(Version::HTTP_10, "/", &[]);
        assert!(check(&mut p, &accepting).is_ok());
        assert_eq!(p.headers["host"], "d.example");
        let mut p = parts(
            Version::HTTP_11,
            "http://target.example:8080/x",
            &[("host", "other")],
        );
        assert!(check(&mut p, &l).is_ok());
        assert_eq!(p.headers["host"], "target.example:8080");
        assert_eq!(
            check(
                &mut parts(Version::HTTP_2, "http://a/", &[("host", "b")]),
                &l
            ),
            Err(bad("authority_host_mismatch"))
        );
        assert!(check(
            &mut parts(Version::HTTP_2, "http://a/", &[("host", "A")]),
            &l
        )
        .is_ok());
    }

    #[test]
    fn underscores() {
        let mut l = DownstreamLimits {
            headers_with_underscores: UnderscoreAction::DropHeader,
            ..Default::default()
        };
        let mut p = parts(Version::HTTP_11, "/", &[("host", "a"), ("x_y", "1")]);
        assert!(check(&mut p, &l).is_ok());
        assert!(p.headers.get("x_y").is_none());
        l.headers_with_underscores = UnderscoreAction::RejectRequest;
        let mut p = parts(Version::HTTP_2, "http://a/", &[("x_y", "1")]);
        assert_eq!(
            check(&mut p, &l),
            Err(Verdict::Reset(h2::Reason::PROTOCOL_ERROR))
        );
    }

    #[test]
    fn uri_limit_and_h2c_settings() {
        let l = DownstreamLimits {
            max_request_uri_bytes: 8,
            ..Default::default()
        };
        let mut long = parts(Version::HTTP_11, "/123456789", &[("host", "a")]);
        assert!(matches!(
            check(&mut long, &l),
            Err(Verdict::Reply(LocalReply::DownstreamProtocolError {
                status: 414,
                ..
            }))
        ));
        let mut p = parts(
            Version::HTTP_11,
            "/",
            &[
                ("host", "a"),
                ("http2-settings", "AAMAAABkAAQCAAAAAAIAAAAA"),
            ],
        );
        assert!(check(&mut p, &l).is_ok());
        assert!(p.headers.get("http2-settings").is_none());
    }
}
