//! Raw clients for hostile-input tests: HTTP/1.1 bytes written as they are, and HTTP/2 frames
//! built by hand (HPACK literals without Huffman coding). Every read is bounded in time.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Write `bytes`, then read until the server closes or `wait` passes.
pub async fn exchange(addr: SocketAddr, bytes: &[u8], wait: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    read_until_close(&mut s, wait).await.0
}

/// Everything read until EOF (true) or until `wait` passes (false).
pub async fn read_until_close(s: &mut TcpStream, wait: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = [0u8; 16384];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            // A reset after the answer counts as closed.
            Ok(Err(_)) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), false),
        }
    }
}

/// Read one HTTP/1.1 response (head and a Content-Length body) from `s`, bounded by `wait`;
/// what was read when the peer closed or the time ran out, `None` if nothing was.
pub async fn read_response(s: &mut (impl AsyncReadExt + Unpin), wait: Duration) -> Option<String> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = find(&out, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if out.len() >= end + 4 + len {
                return Some(String::from_utf8_lossy(&out[..end + 4 + len]).into_owned());
            }
        }
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => {
                return (!out.is_empty()).then(|| String::from_utf8_lossy(&out).into_owned())
            }
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The status code of the first response in `text` (0 when there is none).
pub fn status(text: &str) -> u16 {
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// HTTP/2

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;
pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const ACK: u8 = 0x1;

pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// SETTINGS with the given (id, value) pairs.
pub fn settings(values: &[(u16, u32)]) -> Vec<u8> {
    let mut p = Vec::new();
    for (id, v) in values {
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&v.to_be_bytes());
    }
    frame(SETTINGS, 0, 0, &p)
}

fn hpack_int(out: &mut Vec<u8>, first: u8, prefix_bits: u8, mut v: usize) {
    let max = (1usize << prefix_bits) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// A header block of literal fields without indexing (new names, no Huffman).
pub fn hpack(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in fields {
        out.push(0x00);
        hpack_int(&mut out, 0, 7, k.len());
        out.extend_from_slice(k.as_bytes());
        hpack_int(&mut out, 0, 7, v.len());
        out.extend_from_slice(v.as_bytes());
    }
    out
}

/// A literal field *with* incremental indexing (it enters the dynamic table).
pub fn hpack_indexed_literal(name: &str, value: &str) -> Vec<u8> {
    let mut out = vec![0x40];
    hpack_int(&mut out, 0, 7, name.len());
    out.extend_from_slice(name.as_bytes());
    hpack_int(&mut out, 0, 7, value.len());
    out.extend_from_slice(value.as_bytes());
    out
}

/// A reference to table entry `index` (62 is the newest dynamic entry).
pub fn hpack_index(index: usize) -> Vec<u8> {
    let mut out = Vec::new();
    hpack_int(&mut out, 0x80, 7, index);
    out
}

/// Request pseudo-headers and `extra` fields for `GET path` on `authority`.
pub fn request_block(method: &str, path: &str, authority: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut fields = vec![
        (":method", method),
        (":scheme", "http"),
        (":path", path),
        (":authority", authority),
    ];
    fields.extend_from_slice(extra);
    hpack(&fields)
}

#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The error code of a RST_STREAM or GOAWAY.
    pub fn error_code(&self) -> u32 {
        let at = if self.kind == GOAWAY { 4 } else { 0 };
        self.payload
            .get(at..at + 4)
            .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// An HTTP/2 client connection speaking raw frames.
pub struct H2 {
    pub s: TcpStream,
    pub buf: Vec<u8>,
}

impl H2 {
    /// Connect, send the preface and empty SETTINGS, ACK the server's SETTINGS.
    pub async fn connect(addr: SocketAddr) -> H2 {
        H2::connect_with(addr, &[]).await
    }

    pub async fn connect_with(addr: SocketAddr, settings_values: &[(u16, u32)]) -> H2 {
        let s = TcpStream::connect(addr).await.unwrap();
        let mut h = H2 { s, buf: Vec::new() };
        let mut hello = PREFACE.to_vec();
        hello.extend(settings(settings_values));
        hello.extend(frame(SETTINGS, ACK, 0, &[]));
        h.send(&hello).await;
        h
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        let _ = self.s.write_all(bytes).await;
    }

    /// The next frame, or `None` on EOF, error or after `wait`.
    pub async fn next(&mut self, wait: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if self.buf.len() >= 9 {
                let len = (self.buf[0] as usize) << 16
                    | (self.buf[1] as usize) << 8
                    | self.buf[2] as usize;
                if self.buf.len() >= 9 + len {
                    let f = Frame {
                        kind: self.buf[3],
                        flags: self.buf[4],
                        stream: u32::from_be_bytes([
                            self.buf[5],
                            self.buf[6],
                            self.buf[7],
                            self.buf[8],
                        ]) & 0x7fff_ffff,
                        payload: self.buf[9..9 + len].to_vec(),
                    };
                    self.buf.drain(..9 + len);
                    return Some(f);
                }
            }
            let mut tmp = [0u8; 16384];
            match tokio::time::timeout_at(deadline, self.s.read(&mut tmp)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(n)) => self.buf.extend_from_slice(&tmp[..n]),
            }
        }
    }

    /// Frames until one matches `pred` (returned) or the connection ends / `wait` passes.
    pub async fn until(&mut self, wait: Duration, pred: impl Fn(&Frame) -> bool) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let f = self.next(left).await?;
            if pred(&f) {
                return Some(f);
            }
        }
    }

    /// The `:status` of the response HEADERS on `stream` (a HEADERS frame whose block starts
    /// with an indexed `:status`; h2 encodes 200 as 0x88), or the RST_STREAM/GOAWAY that ended it.
    pub async fn outcome(&mut self, stream: u32, wait: Duration) -> Outcome {
        match self
            .until(wait, |f| {
                (f.stream == stream && (f.kind == HEADERS || f.kind == RST_STREAM))
                    || f.kind == GOAWAY
            })
            .await
        {
            Some(f) if f.kind == HEADERS => Outcome::Status(status_of(&f.payload)),
            Some(f) if f.kind == RST_STREAM => Outcome::Reset(f.error_code()),
            Some(f) => Outcome::GoAway(f.error_code()),
            None => Outcome::Closed,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Status(u16),
    Reset(u32),
    GoAway(u32),
    Closed,
}

/// Decode `:status` from the start of a response header block: static-table indexes 8-14, or a
/// literal `:status` (name index 8) with a 3-digit value.
pub fn status_of(block: &[u8]) -> u16 {
    match block.first() {
        Some(0x88) => 200,
        Some(0x89) => 204,
        Some(0x8a) => 206,
        Some(0x8b) => 304,
        Some(0x8c) => 400,
        Some(0x8d) => 404,
        Some(0x8e) => 500,
        Some(&b) if b & 0x0f == 8 && (b & 0xf0 == 0x00 || b & 0xf0 == 0x10 || b & 0xc0 == 0x40) => {
            // Literal with name index 8; value length then digits (no Huffman).
            block
                .get(2..5)
                .and_then(|d| std::str::from_utf8(d).ok())
                .and_then(|d| d.parse().ok())
                .unwrap_or(0)
        }
        _ => 0,
    }
}

pub const PROTOCOL_ERROR: u32 = 0x1;
pub const REFUSED_STREAM: u32 = 0x7;
pub const CANCEL: u32 = 0x8;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;
