//! HTTP/1.1 request heads and bodies as the guard checks them: head boundaries, framing
//! headers, chunk sizes.

use super::*;

#[derive(Debug, PartialEq, Eq)]
pub(super) enum BodyFraming {
    None,
    Length(u64),
    Chunked,
}

#[derive(Debug)]
pub(super) struct Framing {
    pub(super) body: BodyFraming,
    /// An upgrade or CONNECT request: the connection may become a tunnel after it.
    pub(super) upgrade: bool,
}

/// The end of a request head (after its empty line), accepting bare LF line ends as hyper does.
pub(super) fn head_end(buf: &[u8]) -> Option<usize> {
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

pub(super) fn protocol_error(status: u16, details: &'static str) -> LocalReply {
    LocalReply::DownstreamProtocolError { status, details }
}

/// Check a complete request head and find its body framing.
pub(super) fn check_head(head: &[u8], cfg: &GuardConfig) -> Result<Framing, LocalReply> {
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
    match req.parse_with_uninit_headers(head, slots) {
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
    if http::Method::from_bytes(method.as_bytes()).is_err() {
        return Err(protocol_error(400, "http1.codec_error"));
    }
    if http::Uri::try_from(path).is_err() {
        return Err(protocol_error(400, "http1.invalid_url"));
    }
    let mut content_length: Option<u64> = None;
    let mut te: Vec<&[u8]> = Vec::new();
    let mut upgrade = method == "CONNECT";
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let Some(n) = parse_content_length(h.value) else {
                return Err(protocol_error(400, "http1.invalid_content_length"));
            };
            if content_length.is_some_and(|prev| prev != n) {
                return Err(protocol_error(400, "http1.invalid_content_length"));
            }
            content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            te.push(h.value);
        } else if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade = true;
        }
        // httparse already holds values to what `HeaderValue` accepts (HTAB, visible ASCII,
        // obs-text); names are checked against `HeaderName`'s own token rules.
        if http::HeaderName::from_bytes(h.name.as_bytes()).is_err() {
            return Err(protocol_error(400, "http1.invalid_characters"));
        }
    }
    let body = if te.is_empty() {
        match content_length {
            None | Some(0) => BodyFraming::None,
            Some(n) => BodyFraming::Length(n),
        }
    } else {
        if version == 0 {
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
        if content_length.is_some() && !cfg.allow_chunked_length {
            return Err(protocol_error(
                400,
                "http1.content_length_and_chunked_not_allowed",
            ));
        }
        BodyFraming::Chunked
    };
    Ok(Framing { body, upgrade })
}

/// `Content-Length`: digits only (no sign, no list), surrounding whitespace allowed.
pub(super) fn parse_content_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// A chunk-size line, CRLF included: hex digits, optional whitespace and extensions.
pub(super) fn parse_chunk_size(line: &[u8]) -> Option<u64> {
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
