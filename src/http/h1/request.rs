//! Downstream HTTP/1.1 request heads: where a head ends, the checks Envoy's codec makes on it
//! (size, header count, target, framing headers), and the `http::Request` it becomes, built
//! from one parse with header values sharing the head's bytes.

use crate::http::guard::GuardConfig;
use crate::http::local_reply::LocalReply;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Uri, Version};

/// How a request's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    None,
    Length(u64),
    Chunked,
}

/// A checked request head.
#[derive(Debug)]
pub struct Head {
    /// Method, target, version and headers; the body is the codec's to deliver.
    pub request: http::Request<()>,
    pub body: BodyFraming,
    /// The client asked to close after this exchange (`Connection: close`, or HTTP/1.0
    /// without `Connection: keep-alive`, or a `Content-Length` dropped for `chunked`).
    pub close: bool,
    /// `Connection: close` was asked for explicitly: the response says it back.
    pub close_requested: bool,
    /// `Expect: 100-continue` on an HTTP/1.1 request with a body.
    pub expect_continue: bool,
}

/// The end of a request head (after its empty line), accepting bare LF line ends as hyper does.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(p) = memchr::memchr(b'\n', &buf[i..]) {
        let at = i + p;
        match buf.get(at + 1) {
            Some(b'\n') => return Some(at + 2),
            Some(b'\r') if buf.get(at + 2) == Some(&b'\n') => return Some(at + 3),
            _ => {}
        }
        i = at + 1;
    }
    None
}

pub fn protocol_error(status: u16, details: &'static str) -> LocalReply {
    LocalReply::DownstreamProtocolError { status, details }
}

/// Check a complete request head (`head` ends with its empty line) and build the request.
pub fn parse_head(head: Bytes, cfg: &GuardConfig) -> Result<Head, LocalReply> {
    // Up to the default limit the headers live on the stack, uninitialised until parsed.
    let mut stack = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; 100];
    let mut heap = Vec::new();
    let slots = if cfg.max_headers <= stack.len() {
        &mut stack[..cfg.max_headers]
    } else {
        heap.resize_with(cfg.max_headers, std::mem::MaybeUninit::uninit);
        &mut heap[..]
    };
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(&head, slots) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(protocol_error(400, "http1.codec_error")),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(protocol_error(431, "http1.too_many_headers"))
        }
        Err(_) => return Err(protocol_error(400, "http1.codec_error")),
    }
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return Err(protocol_error(400, "http1.codec_error"));
    };
    if path.len() > cfg.max_uri_bytes {
        return Err(protocol_error(414, "http1.uri_too_long"));
    }
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Err(protocol_error(400, "http1.codec_error"));
    };
    let base = head.as_ptr() as usize;
    let span = |s: &[u8]| {
        let at = s.as_ptr() as usize - base;
        at..at + s.len()
    };
    // The target shares the head's bytes.
    let Ok(uri) = Uri::from_maybe_shared(head.slice(span(path.as_bytes()))) else {
        return Err(protocol_error(400, "http1.invalid_url"));
    };
    let version = if version == 1 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };

    let mut headers = HeaderMap::with_capacity(req.headers.len() + 4);
    let mut content_length: Option<u64> = None;
    let mut te: smallvec::SmallVec<[&[u8]; 2]> = smallvec::SmallVec::new();
    let mut close_requested = false;
    let mut keep_alive_requested = false;
    let mut expect_continue = false;
    for h in req.headers.iter() {
        // httparse already holds values to what `HeaderValue` accepts (HTAB, visible ASCII,
        // obs-text); names are checked against `HeaderName`'s own token rules.
        let Ok(name) = HeaderName::from_bytes(h.name.as_bytes()) else {
            return Err(protocol_error(400, "http1.invalid_characters"));
        };
        if name == header::CONTENT_LENGTH {
            let Some(n) = parse_content_length(h.value) else {
                return Err(protocol_error(400, "http1.invalid_content_length"));
            };
            if content_length.is_some_and(|prev| prev != n) {
                return Err(protocol_error(400, "http1.invalid_content_length"));
            }
            if content_length.is_some() {
                // Equal repeats are one header.
                continue;
            }
            content_length = Some(n);
        } else if name == header::TRANSFER_ENCODING {
            te.push(h.value);
        } else if name == header::CONNECTION {
            for token in h.value.split(|&b| b == b',').map(|t| t.trim_ascii()) {
                close_requested |= token.eq_ignore_ascii_case(b"close");
                keep_alive_requested |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name == header::EXPECT {
            expect_continue |= h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        }
        // SAFETY: httparse accepted this value, and it accepts exactly the bytes `HeaderValue`
        // does (HTAB, SP through `~`, and 0x80-0xFF; no other control byte, no DEL), so the
        // check `from_maybe_shared` would repeat cannot fail.
        let value = unsafe { HeaderValue::from_maybe_shared_unchecked(head.slice(span(h.value))) };
        headers.append(name, value);
    }
    // HTTP/1.0 keeps the connection only when asked to (`Connection: keep-alive`, as ApacheBench
    // `-k` sends it), and only if the response can say where it ends.
    let mut close = close_requested || (version == Version::HTTP_10 && !keep_alive_requested);
    let body = if te.is_empty() {
        match content_length {
            None | Some(0) => BodyFraming::None,
            Some(n) => BodyFraming::Length(n),
        }
    } else {
        if version == Version::HTTP_10 {
            return Err(protocol_error(400, "http1.invalid_transfer_encoding"));
        }
        // Exactly one coding in all: `chunked`. Anything else is not implemented (RFC 9112 §6.1).
        let mut tokens = te
            .iter()
            .flat_map(|v| v.split(|&b| b == b','))
            .map(|t| t.trim_ascii());
        let only_chunked = tokens
            .next()
            .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"))
            && tokens.next().is_none();
        if !only_chunked {
            return Err(protocol_error(501, "http1.invalid_transfer_encoding"));
        }
        if content_length.is_some() {
            if !cfg.allow_chunked_length {
                return Err(protocol_error(
                    400,
                    "http1.content_length_and_chunked_not_allowed",
                ));
            }
            // `chunked` wins; the length is dropped, and the connection is not reused after a
            // message that was framed two ways.
            headers.remove(header::CONTENT_LENGTH);
            close = true;
        }
        BodyFraming::Chunked
    };
    let expect_continue =
        expect_continue && version == Version::HTTP_11 && body != BodyFraming::None;
    let mut request = http::Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    Ok(Head {
        request,
        body,
        close,
        close_requested,
        expect_continue,
    })
}

/// `Content-Length`: digits only (no sign, no list), surrounding whitespace allowed.
pub fn parse_content_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// A chunk-size line, CRLF included: hex digits, optional whitespace and extensions.
pub fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\r\n")?;
    if line.contains(&b'\r') || line.contains(&b'\n') {
        return None;
    }
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return None;
    }
    let rest = &line[digits..];
    let rest_trimmed = rest.trim_ascii_start();
    if !rest_trimmed.is_empty() {
        // chunk-ext: `;` and then visible characters or whitespace, no control characters.
        if rest_trimmed[0] != b';'
            || rest_trimmed
                .iter()
                .any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
        {
            return None;
        }
    } else if rest.iter().any(|&b| b != b' ' && b != b'\t') {
        return None;
    }
    let s = std::str::from_utf8(&line[..digits]).ok()?;
    u64::from_str_radix(s, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::guard::test_config as cfg;

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config {
            cases: 512,
            failure_persistence: Some(Box::new(
                proptest::test_runner::FileFailurePersistence::Direct(
                    "tests/proptest-regressions/h1_request.txt",
                ),
            )),
            ..Default::default()
        })]

        /// Any bytes: the head checks answer, never panic.
        #[test]
        fn head_checks_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            if let Some(end) = head_end(&bytes) {
                let _ = parse_head(Bytes::copy_from_slice(&bytes[..end]), &cfg());
            }
            let _ = parse_chunk_size(&bytes);
        }

        /// Head-like text around the framing headers.
        #[test]
        fn framing_verdicts_are_consistent(
            cl in proptest::option::of("[ +0-9,a-f]{0,6}"),
            te in proptest::option::of("(chunked|gzip|identity|, ){0,3}"),
        ) {
            let mut head = String::from("POST / HTTP/1.1\r\nhost: a\r\n");
            if let Some(cl) = &cl { head.push_str(&format!("content-length: {cl}\r\n")); }
            if let Some(te) = &te { head.push_str(&format!("transfer-encoding: {te}\r\n")); }
            head.push_str("\r\n");
            match parse_head(Bytes::from(head.clone()), &cfg()) {
                Ok(f) => {
                    // Accepted framing is never ambiguous.
                    if te.is_some() {
                        proptest::prop_assert_eq!(f.body, BodyFraming::Chunked);
                        proptest::prop_assert!(cl.is_none());
                    }
                }
                Err(LocalReply::DownstreamProtocolError { status, .. }) => {
                    proptest::prop_assert!(status == 400 || status == 501);
                }
                Err(other) => proptest::prop_assert!(false, "{:?}", other),
            }
        }
    }

    #[test]
    fn head_end_finds_crlf_and_lf() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nhost: a\r\n\r\nrest"), Some(27));
        assert_eq!(head_end(b"GET / HTTP/1.1\nhost: a\n\n"), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nhost: a\r\n"), None);
    }

    #[test]
    fn content_length_is_digits_only() {
        assert_eq!(parse_content_length(b" 42 "), Some(42));
        for bad in [
            &b"+4"[..],
            b"-1",
            b"4, 4",
            b"",
            b"0x4",
            b"4 4",
            b"99999999999999999999",
        ] {
            assert_eq!(parse_content_length(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn chunk_sizes() {
        assert_eq!(parse_chunk_size(b"1a\r\n"), Some(26));
        assert_eq!(parse_chunk_size(b"3;name=value\r\n"), Some(3));
        assert_eq!(parse_chunk_size(b"3 \r\n"), Some(3));
        for bad in [
            &b"zz\r\n"[..],
            b"0x3\r\n",
            b"\r\n",
            b" 3\r\n",
            b"3\n",
            b"3\rx\r\n",
            b"fffffffffffffffff1\r\n",
            b"3 x\r\n",
        ] {
            assert_eq!(parse_chunk_size(bad), None, "{bad:?}");
        }
    }

    /// The `unsafe` in `parse_head` (and the upstream codec's) rests on this: a byte httparse
    /// lets into a header value is a byte `HeaderValue` accepts, for every byte.
    #[test]
    fn httparse_values_are_valid_header_values() {
        for b in 0..=255u8 {
            let head = [&b"GET / HTTP/1.1\r\nx: a"[..], &[b], b"a\r\n\r\n"].concat();
            let mut headers = [httparse::EMPTY_HEADER; 4];
            let parsed = httparse::Request::new(&mut headers).parse(&head);
            if let Ok(httparse::Status::Complete(_)) = parsed {
                let value = [b'a', b, b'a'];
                assert!(
                    http::HeaderValue::from_bytes(&value).is_ok(),
                    "httparse accepts {b:#04x}, HeaderValue does not"
                );
            }
        }
    }
}
