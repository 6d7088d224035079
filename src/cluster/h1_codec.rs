//! HTTP/1.1 on the wire, client side: the request head legate writes upstream, the response head
//! it parses, and the chunked body decoder. No I/O here; [`super::h1_conn`] drives it.
//!
//! The response is parsed with httparse (as hyper does); header values are slices of the one
//! buffer the head was read into, so a response head costs no allocation per header.

use crate::http::h1::wire::itoa_u64;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri, Version};

/// Envoy's default `max_headers_count`.
pub const MAX_HEADERS: usize = 100;
/// Envoy's `max_response_headers_kb` default for HTTP/1 responses (80 KiB).
pub const MAX_HEAD_BYTES: usize = 80 * 1024;
/// A chunk-size line longer than this is not a chunk size (hex digits and a short extension).
const MAX_CHUNK_LINE: usize = 4096;
/// Trailers of a chunked response are read and dropped, up to this much.
const MAX_TRAILER_BYTES: usize = 64 * 1024;

/// What is wrong with an upstream response; the request fails with 502 (`UPE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed upstream response: {0}")]
pub struct Malformed(pub &'static str);

/// How the request body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFraming {
    None,
    Length,
    Chunked,
}

/// Write the request head: request line, headers, and the framing header the body needs.
///
/// `body_end` says the body is known to be empty; `body_len` is its exact length when known.
/// A `Content-Length` the request already carries (checked by the downstream codec) is kept.
pub fn encode_request_head(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body_end: bool,
    body_len: Option<u64>,
    out: &mut BytesMut,
) -> RequestFraming {
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    out.reserve(64 + target.len() + headers.len() * 32);
    out.put_slice(method.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(target.as_bytes());
    out.put_slice(b" HTTP/1.1\r\n");
    let mut has_length = false;
    for (name, value) in headers {
        if name == header::TRANSFER_ENCODING {
            // The framing is this hop's choice, made below.
            continue;
        }
        has_length |= name == header::CONTENT_LENGTH;
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    let framing = if body_end {
        // RFC 9110 §8.6: a request without content says so when its method anticipates content
        // (Envoy's codec does the same; some servers answer a bare POST with 411).
        if !has_length && matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
            out.put_slice(b"content-length: 0\r\n");
        }
        RequestFraming::None
    } else if has_length {
        RequestFraming::Length
    } else if let Some(len) = body_len {
        out.put_slice(b"content-length: ");
        out.put_slice(itoa_u64(len).as_bytes());
        out.put_slice(b"\r\n");
        RequestFraming::Length
    } else {
        out.put_slice(b"transfer-encoding: chunked\r\n");
        RequestFraming::Chunked
    };
    out.put_slice(b"\r\n");
    framing
}

/// How the response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyFraming {
    /// Exactly this many bytes remain.
    Length(u64),
    Chunked(ChunkedDecoder),
    /// Until the upstream closes the connection.
    UntilClose,
}

/// A parsed response head.
pub struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    /// `None` for a response without a body (HEAD, 1xx, 204, 304) and for `101`.
    pub body: Option<BodyFraming>,
    /// The connection may carry another request after this response.
    pub keep_alive: bool,
    /// The hop-by-hop headers are not in `headers` (they are, after a `101`, and when
    /// `Connection` names other headers, which the connection manager then removes).
    pub hop_by_hop_removed: bool,
}

/// Parse a response head from the front of `buf`, consuming it. `Ok(None)`: incomplete.
///
/// Informational (1xx) responses other than `101` come back like any other; the caller skips
/// them.
pub fn parse_response_head(
    buf: &mut BytesMut,
    method: &Method,
) -> Result<Option<ResponseHead>, Malformed> {
    // The header slots stay uninitialised until parsed (initialising 100 costs more than
    // parsing a small head).
    let mut slots =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut slots);
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            if buf.len() > MAX_HEAD_BYTES {
                return Err(Malformed("headers too large"));
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(Malformed("too many headers")),
        Err(_) => return Err(Malformed("invalid response head")),
    };
    if len > MAX_HEAD_BYTES {
        return Err(Malformed("headers too large"));
    }
    let code = resp.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| Malformed("invalid status code"))?;
    let version = match resp.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    // Where each name and value sits in `buf`: the slices borrow it, and it is frozen below so
    // that the values can share it instead of being copied.
    let base = buf.as_ptr() as usize;
    let count = resp.headers.len();
    // Filled where it lives: collecting would build it elsewhere and move its kilobyte.
    let mut spans: smallvec::SmallVec<[(usize, usize, usize, usize); 32]> =
        smallvec::SmallVec::new();
    spans.extend(resp.headers.iter().map(|h| {
        (
            h.name.as_ptr() as usize - base,
            h.name.len(),
            h.value.as_ptr() as usize - base,
            h.value.len(),
        )
    }));
    let head = buf.split_to(len).freeze();
    // After a `101` the headers go to the client as they are (the tunnel needs `Upgrade` and
    // `Connection`); otherwise hop-by-hop headers are read for framing and left out here, so
    // the connection manager need not look for them again.
    let upgrading = status == StatusCode::SWITCHING_PROTOCOLS;
    let mut hop = HopByHop::default();
    // Room for the headers the proxy adds (`server`, `x-envoy-upstream-service-time`), so that
    // adding them does not grow the map.
    let mut headers = HeaderMap::with_capacity(count + 4);
    for &(name_at, name_len, value_at, value_len) in &spans {
        let name = HeaderName::from_bytes(&head[name_at..name_at + name_len])
            .map_err(|_| Malformed("invalid header name"))?;
        if hop.observe(&name, &head[value_at..value_at + value_len]) && !upgrading {
            continue;
        }
        // SAFETY: httparse accepted this value, and it accepts exactly the bytes `HeaderValue`
        // does (HTAB, SP through `~`, and 0x80-0xFF; no other control byte, no DEL), so the
        // check `from_maybe_shared` would repeat cannot fail.
        let value = unsafe {
            HeaderValue::from_maybe_shared_unchecked(head.slice(value_at..value_at + value_len))
        };
        headers.append(name, value);
    }

    let keep_alive = match version {
        Version::HTTP_11 => !hop.close,
        _ => hop.keep_alive,
    };
    let no_body = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || method == Method::HEAD;
    let body = if no_body {
        None
    } else {
        Some(hop.body_framing()?)
    };
    let keep_alive = keep_alive && !matches!(body, Some(BodyFraming::UntilClose));
    Ok(Some(ResponseHead {
        status,
        version,
        headers,
        body,
        keep_alive,
        hop_by_hop_removed: !upgrading && !hop.names_others,
    }))
}

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// What the framing and hop-by-hop headers of a response said.
#[derive(Default)]
struct HopByHop {
    close: bool,
    keep_alive: bool,
    /// `Connection` names other headers, which are hop-by-hop too.
    names_others: bool,
    transfer_encodings: usize,
    chunked: bool,
    length: Option<u64>,
    bad_length: Option<&'static str>,
}

impl HopByHop {
    /// Note one header; true when it is hop-by-hop (`Connection`, `Keep-Alive`,
    /// `Proxy-Connection`, `Upgrade`, `Transfer-Encoding`, and `TE` other than `trailers`, as
    /// [`crate::http::headers::strip_hop_by_hop`] removes).
    fn observe(&mut self, name: &HeaderName, value: &[u8]) -> bool {
        if name == header::CONNECTION {
            for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    self.close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    self.keep_alive = true;
                } else if !token.is_empty() && !token.eq_ignore_ascii_case(b"upgrade") {
                    self.names_others = true;
                }
            }
            true
        } else if name == header::TRANSFER_ENCODING {
            self.transfer_encodings += 1;
            self.chunked = value.trim_ascii().eq_ignore_ascii_case(b"chunked");
            true
        } else if name == header::CONTENT_LENGTH {
            // A list (`10, 10`) is allowed when every member agrees (RFC 9110 §8.6).
            for part in value.split(|&b| b == b',') {
                match parse_decimal(part.trim_ascii()) {
                    None => self.bad_length = Some("invalid content-length"),
                    Some(n) if self.length.is_some_and(|l| l != n) => {
                        self.bad_length = Some("conflicting content-length")
                    }
                    Some(n) => self.length = Some(n),
                }
            }
            false
        } else if name == header::TE {
            !value.trim_ascii().eq_ignore_ascii_case(b"trailers")
        } else {
            name == header::UPGRADE || name == KEEP_ALIVE || name == PROXY_CONNECTION
        }
    }

    /// How the body is delimited (RFC 9112 §6.3), for a response that has one.
    fn body_framing(&self) -> Result<BodyFraming, Malformed> {
        if self.transfer_encodings > 0 {
            if self.length.is_some() || self.bad_length.is_some() {
                return Err(Malformed("content-length with transfer-encoding"));
            }
            if self.transfer_encodings > 1 || !self.chunked {
                return Err(Malformed("transfer-encoding other than chunked"));
            }
            return Ok(BodyFraming::Chunked(ChunkedDecoder::default()));
        }
        if let Some(why) = self.bad_length {
            return Err(Malformed(why));
        }
        Ok(match self.length {
            Some(n) => BodyFraming::Length(n),
            None => BodyFraming::UntilClose,
        })
    }
}

fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &d| {
        d.is_ascii_digit().then(|| acc * 10 + u64::from(d - b'0'))
    })
}

/// Where the chunked decoder is in the body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ChunkedDecoder {
    #[default]
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

/// One step of decoding.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Data(Bytes),
    /// More bytes are needed.
    Incomplete,
    /// The last chunk and any trailers have been read.
    End,
}

impl ChunkedDecoder {
    /// Decode from the front of `buf`, consuming what is decoded.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, Malformed> {
        loop {
            match *self {
                ChunkedDecoder::Size => {
                    let Some(nl) = memchr::memchr(b'\n', buf) else {
                        if buf.len() > MAX_CHUNK_LINE {
                            return Err(Malformed("chunk size line too long"));
                        }
                        return Ok(Decoded::Incomplete);
                    };
                    let line = buf[..nl]
                        .strip_suffix(b"\r")
                        .ok_or(Malformed("chunk size line without CRLF"))?;
                    // Extensions (`;name=value`) are allowed and ignored.
                    let size_part = line.split(|&b| b == b';').next().unwrap_or(line);
                    let size = parse_hex(size_part.trim_ascii_end())
                        .ok_or(Malformed("invalid chunk size"))?;
                    buf.advance(nl + 1);
                    *self = if size == 0 {
                        ChunkedDecoder::Trailers
                    } else {
                        ChunkedDecoder::Data(size)
                    };
                }
                ChunkedDecoder::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::Incomplete);
                    }
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let data = buf.split_to(take).freeze();
                    let left = left - take as u64;
                    *self = if left == 0 {
                        ChunkedDecoder::DataEnd
                    } else {
                        ChunkedDecoder::Data(left)
                    };
                    return Ok(Decoded::Data(data));
                }
                ChunkedDecoder::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::Incomplete);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(Malformed("chunk data not followed by CRLF"));
                    }
                    buf.advance(2);
                    *self = ChunkedDecoder::Size;
                }
                ChunkedDecoder::Trailers => {
                    // Trailer fields are read past and dropped (Envoy forwards HTTP/1 trailers
                    // only when told to).
                    let Some(nl) = memchr::memchr(b'\n', buf) else {
                        if buf.len() > MAX_TRAILER_BYTES {
                            return Err(Malformed("trailers too large"));
                        }
                        return Ok(Decoded::Incomplete);
                    };
                    let line = buf[..nl]
                        .strip_suffix(b"\r")
                        .ok_or(Malformed("trailer line without CRLF"))?;
                    let last = line.is_empty();
                    buf.advance(nl + 1);
                    if last {
                        *self = ChunkedDecoder::Done;
                    }
                }
                ChunkedDecoder::Done => return Ok(Decoded::End),
            }
        }
    }
}

fn parse_hex(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 15 {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &d| {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            b'A'..=b'F' => d - b'A' + 10,
            _ => return None,
        };
        Some(acc << 4 | u64::from(v))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::h1::wire::put_chunk_size;
    use http::Request;

    fn encode<B>(
        req: &Request<B>,
        end: bool,
        len: Option<u64>,
        out: &mut BytesMut,
    ) -> RequestFraming {
        encode_request_head(req.method(), req.uri(), req.headers(), end, len, out)
    }

    fn head(text: &str, method: Method) -> Result<Option<ResponseHead>, Malformed> {
        let mut buf = BytesMut::from(text.as_bytes());
        parse_response_head(&mut buf, &method)
    }

    #[test]
    fn request_head_frames_the_body() {
        let req = Request::post("/a?b=1")
            .header("host", "up")
            .header("transfer-encoding", "chunked")
            .body(())
            .unwrap();
        let mut out = BytesMut::new();
        assert_eq!(encode(&req, false, None, &mut out), RequestFraming::Chunked);
        assert_eq!(
            &out[..],
            b"POST /a?b=1 HTTP/1.1\r\nhost: up\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        let mut out = BytesMut::new();
        assert_eq!(
            encode(&req, false, Some(1234567), &mut out),
            RequestFraming::Length
        );
        assert!(out.ends_with(b"content-length: 1234567\r\n\r\n"));
        let post = Request::post("/").body(()).unwrap();
        let mut out = BytesMut::new();
        encode(&post, true, Some(0), &mut out);
        assert_eq!(&out[..], b"POST / HTTP/1.1\r\ncontent-length: 0\r\n\r\n");
        let get = Request::get("/").body(()).unwrap();
        let mut out = BytesMut::new();
        assert_eq!(encode(&get, true, Some(0), &mut out), RequestFraming::None);
        assert_eq!(&out[..], b"GET / HTTP/1.1\r\n\r\n");
    }

    #[test]
    fn chunk_sizes_are_hex() {
        let mut out = BytesMut::new();
        put_chunk_size(&mut out, 0x1a2b);
        put_chunk_size(&mut out, 0);
        assert_eq!(&out[..], b"1a2b\r\n0\r\n");
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let h = head(
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: b c\r\n\r\nhello",
            Method::GET,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.status, 200);
        assert_eq!(h.body, Some(BodyFraming::Length(5)));
        assert_eq!(h.headers["x-a"], "b c");
        assert!(h.keep_alive);
        let h = head("HTTP/1.1 200 OK\r\n\r\n", Method::GET)
            .unwrap()
            .unwrap();
        assert_eq!(h.body, Some(BodyFraming::UntilClose));
        assert!(!h.keep_alive);
        let h = head("HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n", Method::HEAD)
            .unwrap()
            .unwrap();
        assert_eq!(h.body, None);
        let h = head("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n", Method::GET)
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive);
        let h = head(
            "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n",
            Method::GET,
        )
        .unwrap()
        .unwrap();
        assert!(h.keep_alive);
        let h = head(
            "HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\n",
            Method::GET,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.body, Some(BodyFraming::Length(3)));
        assert!(head("HTTP/1.1 200 OK\r\ncontent-length: 5", Method::GET)
            .unwrap()
            .is_none());
    }

    #[test]
    fn hop_by_hop_headers_are_left_out() {
        let h = head(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\
             Transfer-Encoding: chunked\r\nTE: gzip\r\nx-a: 1\r\n\r\n",
            Method::GET,
        )
        .unwrap()
        .unwrap();
        assert!(h.hop_by_hop_removed);
        assert_eq!(h.headers.len(), 1, "{:?}", h.headers);
        assert!(matches!(h.body, Some(BodyFraming::Chunked(_))));
        // A header named by Connection is hop-by-hop too: the connection manager removes it.
        let h = head(
            "HTTP/1.1 200 OK\r\nConnection: close, x-a\r\nx-a: 1\r\ncontent-length: 0\r\n\r\n",
            Method::GET,
        )
        .unwrap()
        .unwrap();
        assert!(!h.hop_by_hop_removed);
        assert!(!h.keep_alive);
        assert!(h.headers.contains_key("x-a"));
        // After a 101 the tunnel needs them.
        let h = head(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
            Method::GET,
        )
        .unwrap()
        .unwrap();
        assert!(!h.hop_by_hop_removed);
        assert_eq!(h.headers["upgrade"], "websocket");
        assert_eq!(h.headers["connection"], "upgrade");
    }

    #[test]
    fn bad_response_heads_are_malformed() {
        for bad in [
            "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "garbage\r\n\r\n",
            "HTTP/1.1 200 OK\r\nbad header: x\r\n\r\n",
        ] {
            assert!(head(bad, Method::GET).is_err(), "{bad:?}");
        }
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: v\r\n")).collect();
        let text = format!("HTTP/1.1 200 OK\r\n{many}\r\n");
        assert_eq!(
            head(&text, Method::GET).err(),
            Some(Malformed("too many headers"))
        );
        let big = format!("HTTP/1.1 200 OK\r\nx: {}\r\n", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(
            head(&big, Method::GET).err(),
            Some(Malformed("headers too large"))
        );
    }

    #[test]
    fn chunked_bodies_decode_across_splits() {
        let wire = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-t: v\r\n\r\nNEXT";
        // Every split point of the input, fed in two parts.
        for split in 0..wire.len() {
            let mut dec = ChunkedDecoder::default();
            let mut buf = BytesMut::from(&wire[..split]);
            let mut body = Vec::new();
            let mut rest = &wire[split..];
            loop {
                match dec.decode(&mut buf).unwrap() {
                    Decoded::Data(d) => body.extend_from_slice(&d),
                    Decoded::Incomplete => {
                        assert!(!rest.is_empty(), "split {split}: stalled");
                        buf.extend_from_slice(rest);
                        rest = &[];
                    }
                    Decoded::End => break,
                }
            }
            buf.extend_from_slice(rest);
            assert_eq!(body, b"hello world", "split {split}");
            assert_eq!(&buf[..], b"NEXT", "split {split}");
        }
    }

    #[test]
    fn bad_chunks_are_malformed() {
        for bad in [
            &b"zz\r\n"[..],
            b"5\r\nhelloXX",
            b"5\nhello\r\n",
            b"10000000000000000\r\n",
        ] {
            let mut dec = ChunkedDecoder::default();
            let mut buf = BytesMut::from(bad);
            let mut result = Ok(Decoded::Incomplete);
            for _ in 0..4 {
                result = dec.decode(&mut buf);
                if !matches!(result, Ok(Decoded::Data(_))) {
                    break;
                }
            }
            assert!(result.is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
