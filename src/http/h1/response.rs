//! Downstream HTTP/1.1 response heads: the status line, the headers as the connection manager
//! left them, and the framing this codec chooses (RFC 9112 §6), plus `date`.

use super::wire::itoa_u64;
use bytes::{BufMut, BytesMut};
use http::header::{self, HeaderMap};
use http::{StatusCode, Version};

/// What the response body looks like before it is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLen {
    /// No body at all.
    Empty,
    Known(u64),
    Unknown,
}

/// How the body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// No body bytes are sent (HEAD, 1xx, 204, 304, or an empty body).
    Bodiless,
    Length(u64),
    Chunked,
    /// HTTP/1.0 without a length: the end of the connection ends the body.
    UntilClose,
}

/// What the request said that shapes the response.
#[derive(Debug, Clone, Copy)]
pub struct RequestSide {
    pub version: Version,
    pub head: bool,
    /// The connection closes after this response (the client asked, or legate decided).
    pub close: bool,
    /// The client sent `Connection: close`, or legate is closing and the client should know.
    pub say_close: bool,
}

/// The encoded head's consequences.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encoded {
    pub encoding: Encoding,
    /// The connection must close after this response.
    pub close: bool,
}

/// Write the head of `status`/`headers` to `out`.
pub fn encode_head(
    out: &mut BytesMut,
    status: StatusCode,
    headers: &HeaderMap,
    req: RequestSide,
    body: BodyLen,
) -> Encoded {
    let http10 = req.version == Version::HTTP_10;
    // One allocation for the whole head: the status line, the headers, and room for the
    // framing, `connection` and `date` headers added here.
    let size: usize = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    out.reserve(size + 128);
    if status == StatusCode::OK && !http10 {
        out.put_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.put_slice(if http10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
        out.put_slice(status.as_str().as_bytes());
        out.put_u8(b' ');
        // Envoy's phrase for a code without a standard one.
        out.put_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
        out.put_slice(b"\r\n");
    }

    let mut close = req.close;
    let mut has_date = false;
    let mut has_connection = false;
    let mut length_header: Option<u64> = None;
    // `content-length` as the connection manager left it (an upstream's, or a local reply's).
    for (name, value) in headers {
        if name == header::TRANSFER_ENCODING {
            // Framing is this codec's to choose.
            continue;
        }
        if name == header::CONTENT_LENGTH {
            length_header = crate::http::h1::request::parse_content_length(value.as_bytes());
            continue;
        }
        if name == header::DATE {
            has_date = true;
        } else if name == header::CONNECTION {
            has_connection = true;
            close |= value
                .as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
        }
        put_header(out, name.as_str().as_bytes(), value.as_bytes());
    }

    let encoding = if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || (status == StatusCode::NOT_MODIFIED && body == BodyLen::Empty)
    {
        // 304 keeps the length of the representation it stands for, as a HEAD answer does.
        if status == StatusCode::NOT_MODIFIED {
            if let Some(n) = length_header {
                put_length(out, n);
            }
        }
        Encoding::Bodiless
    } else if req.head {
        if let Some(n) = length_header.or(match body {
            BodyLen::Known(n) => Some(n),
            _ => None,
        }) {
            put_length(out, n);
        }
        Encoding::Bodiless
    } else {
        match (body, length_header) {
            (BodyLen::Empty, _) => {
                put_length(out, 0);
                Encoding::Bodiless
            }
            (BodyLen::Known(n), _) | (BodyLen::Unknown, Some(n)) => {
                put_length(out, n);
                Encoding::Length(n)
            }
            (BodyLen::Unknown, None) if !http10 => {
                out.put_slice(b"transfer-encoding: chunked\r\n");
                Encoding::Chunked
            }
            (BodyLen::Unknown, None) => {
                close = true;
                Encoding::UntilClose
            }
        }
    };
    if req.say_close && !has_connection && !http10 {
        out.put_slice(b"connection: close\r\n");
        close = true;
    }
    // HTTP/1.0 closes unless the response says otherwise.
    if http10 && !close && !has_connection {
        out.put_slice(b"connection: keep-alive\r\n");
    }
    if !has_date {
        out.put_slice(b"date: ");
        out.put_slice(&crate::http::date::now());
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"\r\n");
    Encoded { encoding, close }
}

/// The interim answer to `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

fn put_header(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.put_slice(name);
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

fn put_length(out: &mut BytesMut, n: u64) {
    out.put_slice(b"content-length: ");
    out.put_slice(itoa_u64(n).as_bytes());
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn req() -> RequestSide {
        RequestSide {
            version: Version::HTTP_11,
            head: false,
            close: false,
            say_close: false,
        }
    }

    fn encode(
        status: u16,
        headers: &[(&str, &str)],
        r: RequestSide,
        body: BodyLen,
    ) -> (String, Encoded) {
        let mut map = HeaderMap::new();
        for (n, v) in headers {
            map.append(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let mut out = BytesMut::new();
        let e = encode_head(
            &mut out,
            StatusCode::from_u16(status).unwrap(),
            &map,
            r,
            body,
        );
        let text = String::from_utf8(out.to_vec()).unwrap();
        // The date changes; check its shape and cut it out.
        let (before, after) = text.split_once("date: ").expect("a date");
        let (date, rest) = after.split_once("\r\n").unwrap();
        assert_eq!(date.len(), 29, "{date}");
        assert!(date.ends_with(" GMT"), "{date}");
        (format!("{before}{rest}"), e)
    }

    #[test]
    fn lengths_chunked_and_bodiless() {
        let (t, e) = encode(200, &[("server", "legate")], req(), BodyLen::Known(5));
        assert_eq!(
            t,
            "HTTP/1.1 200 OK\r\nserver: legate\r\ncontent-length: 5\r\n\r\n"
        );
        assert_eq!(e.encoding, Encoding::Length(5));

        let (t, e) = encode(200, &[("content-length", "7")], req(), BodyLen::Unknown);
        assert_eq!(t, "HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\n");
        assert_eq!(e.encoding, Encoding::Length(7));

        let (t, e) = encode(
            200,
            &[("transfer-encoding", "gzip")],
            req(),
            BodyLen::Unknown,
        );
        assert_eq!(t, "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n");
        assert_eq!(e.encoding, Encoding::Chunked);

        // An empty body says so, whatever the map claimed.
        let (t, e) = encode(404, &[("content-length", "9")], req(), BodyLen::Empty);
        assert_eq!(t, "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n");
        assert_eq!(e.encoding, Encoding::Bodiless);

        let (t, _) = encode(204, &[("content-length", "3")], req(), BodyLen::Empty);
        assert_eq!(t, "HTTP/1.1 204 No Content\r\n\r\n");
        let (t, _) = encode(304, &[("content-length", "3")], req(), BodyLen::Empty);
        assert_eq!(t, "HTTP/1.1 304 Not Modified\r\ncontent-length: 3\r\n\r\n");

        let head = RequestSide {
            head: true,
            ..req()
        };
        let (t, e) = encode(200, &[("content-length", "10")], head, BodyLen::Empty);
        assert_eq!(t, "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n");
        assert_eq!(e.encoding, Encoding::Bodiless);
    }

    #[test]
    fn http10_closes_and_delimits_by_close() {
        let r = RequestSide {
            version: Version::HTTP_10,
            close: true,
            ..req()
        };
        let (t, e) = encode(200, &[], r, BodyLen::Unknown);
        assert_eq!(t, "HTTP/1.0 200 OK\r\n\r\n");
        assert_eq!(
            e,
            Encoded {
                encoding: Encoding::UntilClose,
                close: true
            }
        );
    }

    #[test]
    fn http10_keep_alive_is_said_when_the_length_is_known() {
        let r = RequestSide {
            version: Version::HTTP_10,
            ..req()
        };
        let (t, e) = encode(200, &[], r, BodyLen::Known(2));
        assert_eq!(
            t,
            "HTTP/1.0 200 OK\r\ncontent-length: 2\r\nconnection: keep-alive\r\n\r\n"
        );
        assert!(!e.close);
        // Without a length the close ends the body, keep-alive or not.
        let (t, e) = encode(200, &[], r, BodyLen::Unknown);
        assert_eq!(t, "HTTP/1.0 200 OK\r\n\r\n");
        assert!(e.close);
    }

    #[test]
    fn connection_close_is_said_once_and_honoured() {
        let r = RequestSide {
            close: true,
            say_close: true,
            ..req()
        };
        let (t, e) = encode(200, &[], r, BodyLen::Known(0));
        assert_eq!(
            t,
            "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        );
        assert!(e.close);
        // The connection manager's own `connection: close` closes too, and is not doubled.
        let r = RequestSide {
            say_close: true,
            ..req()
        };
        let (t, e) = encode(400, &[("connection", "close")], r, BodyLen::Empty);
        assert_eq!(
            t,
            "HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
        );
        assert!(e.close);
    }

    #[test]
    fn unknown_codes_say_unknown_and_upstream_dates_stay() {
        let mut out = BytesMut::new();
        let mut map = HeaderMap::new();
        map.insert(
            header::DATE,
            HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
        );
        encode_head(
            &mut out,
            StatusCode::from_u16(299).unwrap(),
            &map,
            req(),
            BodyLen::Empty,
        );
        assert_eq!(
            &out[..],
            b"HTTP/1.1 299 Unknown\r\ndate: Sun, 06 Nov 1994 08:49:37 GMT\r\ncontent-length: 0\r\n\r\n"
        );
    }
}
