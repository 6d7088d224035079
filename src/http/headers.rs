//! Header rules a proxy must apply on each hop (RFC 9110 §7.6.1) and Envoy's request headers.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_ENVOY_ORIGINAL_PATH: HeaderName = HeaderName::from_static("x-envoy-original-path");
pub static X_ENVOY_UPSTREAM_SERVICE_TIME: HeaderName =
    HeaderName::from_static("x-envoy-upstream-service-time");
/// Set to `true` on a local reply for a request a circuit breaker refused (Envoy's router).
pub static X_ENVOY_OVERLOADED: HeaderName = HeaderName::from_static("x-envoy-overloaded");
/// `x-envoy-upstream-service-time` for `ms` milliseconds. Values under a second (nearly all)
/// come from a table built once: cloning a shared value costs no allocation, formatting a new
/// one costs two.
pub fn service_time(ms: u64) -> HeaderValue {
    static SMALL: std::sync::LazyLock<Vec<HeaderValue>> =
        std::sync::LazyLock::new(|| (0..1000u64).map(HeaderValue::from).collect());
    match SMALL.get(ms as usize) {
        Some(v) => v.clone(),
        None => HeaderValue::from(ms),
    }
}

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Remove hop-by-hop headers: `Connection` and every header it names, `Keep-Alive`,
/// `Proxy-Connection`, `Upgrade`, `Transfer-Encoding` (hyper re-frames the body for the next hop)
/// and `TE` unless it is exactly `trailers` (the only value meaningful end to end).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry few of these, often only `Connection: keep-alive`: one pass over the
    // names present finds them, instead of a hashed lookup for each absent one.
    const CONNECTION: u8 = 1;
    const TRANSFER_ENCODING: u8 = 2;
    const UPGRADE: u8 = 4;
    const TE: u8 = 8;
    const KEEP_ALIVE_: u8 = 16;
    const PROXY_CONNECTION_: u8 = 32;
    let mut found = 0u8;
    for k in headers.keys() {
        found |= if k == header::CONNECTION {
            CONNECTION
        } else if k == header::TRANSFER_ENCODING {
            TRANSFER_ENCODING
        } else if k == header::UPGRADE {
            UPGRADE
        } else if k == header::TE {
            TE
        } else if k == KEEP_ALIVE {
            KEEP_ALIVE_
        } else if k == PROXY_CONNECTION {
            PROXY_CONNECTION_
        } else {
            0
        };
    }
    if found == 0 {
        return;
    }
    if found & CONNECTION != 0 {
        // Headers the Connection header names go too; the usual tokens name nothing extra.
        let mut named = Vec::new();
        for v in headers.get_all(header::CONNECTION) {
            if let Ok(s) = v.to_str() {
                for name in s.split(',').map(str::trim) {
                    if name.eq_ignore_ascii_case("keep-alive")
                        || name.eq_ignore_ascii_case("close")
                        || name.eq_ignore_ascii_case("upgrade")
                    {
                        continue;
                    }
                    if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
                        named.push(n);
                    }
                }
            }
        }
        headers.remove(header::CONNECTION);
        for n in named {
            headers.remove(&n);
        }
    }
    if found & KEEP_ALIVE_ != 0 {
        headers.remove(&KEEP_ALIVE);
    }
    if found & PROXY_CONNECTION_ != 0 {
        headers.remove(&PROXY_CONNECTION);
    }
    if found & UPGRADE != 0 {
        headers.remove(header::UPGRADE);
    }
    if found & TRANSFER_ENCODING != 0 {
        headers.remove(header::TRANSFER_ENCODING);
    }
    if found & TE != 0 {
        if let Some(te) = headers.get(header::TE) {
            if !te.as_bytes().eq_ignore_ascii_case(b"trailers") {
                headers.remove(header::TE);
            }
        }
    }
}

/// Append the peer to `x-forwarded-for`, joined with a bare `,` as Envoy does (`a, b,peer`).
pub fn append_xff(headers: &mut HeaderMap, peer: std::net::IpAddr) {
    let mut buf = String::new();
    use std::fmt::Write;
    match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(existing) if !existing.is_empty() => {
            let _ = write!(buf, "{existing},{peer}");
        }
        _ => {
            let _ = write!(buf, "{peer}");
        }
    }
    if let Ok(v) = HeaderValue::from_str(&buf) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
}

/// A random UUID v4 as Envoy's request-id extension makes it. `fastrand` keeps this off the
/// getrandom system call: request IDs need uniqueness, not secrecy.
pub fn new_request_id() -> HeaderValue {
    let mut bytes: [u8; 16] = fastrand::u128(..).to_le_bytes();
    bytes[6] = (bytes[6] & 0x0f) | 0x40; // version 4
    bytes[8] = (bytes[8] & 0x3f) | 0x80; // RFC 4122 variant
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 36];
    let mut j = 0;
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out[j] = b'-';
            j += 1;
        }
        out[j] = HEX[(b >> 4) as usize];
        out[j + 1] = HEX[(b & 0xf) as usize];
        j += 2;
    }
    // The buffer holds only hex digits and dashes, always a valid header value.
    let mut id = HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("-"));
    // HPACK "never indexed": a value no later request repeats would only churn an HTTP/2
    // connection's header table (on both ends), evicting the headers that do repeat
    // (callgrind, h2c -> h2c: 70.2k -> 67.1k instructions per request).
    id.set_sensitive(true);
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_time_is_decimal_milliseconds() {
        for ms in [0, 7, 999, 1000, 123_456] {
            assert_eq!(service_time(ms), ms.to_string().as_str());
        }
    }

    #[test]
    fn strips_connection_and_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, X-Secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("te", HeaderValue::from_static("gzip"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn keeps_te_trailers() {
        let mut h = HeaderMap::new();
        h.insert("te", HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.get("te").unwrap(), "trailers");
    }

    #[test]
    fn xff_appends() {
        let mut h = HeaderMap::new();
        append_xff(&mut h, "10.0.0.1".parse().unwrap());
        append_xff(&mut h, "127.0.0.1".parse().unwrap());
        assert_eq!(h.get("x-forwarded-for").unwrap(), "10.0.0.1,127.0.0.1");
    }

    #[test]
    fn request_id_is_uuid_v4() {
        let id = new_request_id();
        let s = id.to_str().unwrap();
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "4");
        assert!(matches!(&s[19..20], "8" | "9" | "a" | "b"));
        assert_ne!(new_request_id(), id);
        // Sent to HTTP/2 peers as "never indexed", out of the header table.
        assert!(id.is_sensitive());
    }
}
