//! A downstream HTTP/1.1 request body: a one-frame slot between the connection, which decodes
//! the body from its read buffer, and whoever forwards the body upstream.
//!
//! Not a channel: the connection fills the slot only when the body has asked for a frame
//! (`want`), so nothing is read from the socket before the upstream side took the previous
//! frame (backpressure end to end), and at most one frame is held. Both sides usually run in
//! the connection's task, so the lock is never contended; an HTTP/2 upstream polls the body
//! from its own task, which is why the slot wakes in both directions.

use super::request::parse_chunk_size;
use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// A chunk-size line (size and extensions) longer than this is an error.
const MAX_CHUNK_LINE: usize = 4096;

/// The request body broke: framing, or the client closed before it ended.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("HTTP/1.1 request body: {0}")]
pub struct BodyError(pub &'static str);

#[derive(Default)]
struct SlotState {
    frame: Option<Frame<Bytes>>,
    /// Every frame has been put in the slot (the last may still be in it).
    end: bool,
    error: Option<BodyError>,
    /// The body has been polled and found the slot empty.
    want: bool,
    /// Dropped before its end: the connection skips what is left.
    dropped: bool,
    body_waker: Option<Waker>,
    conn_waker: Option<Waker>,
    /// Bytes not yet put in the slot, when the length is known.
    remaining: Option<u64>,
}

#[derive(Default)]
struct Slot(Mutex<SlotState>);

impl Slot {
    fn lock(&self) -> MutexGuard<'_, SlotState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The request body as the request's handler sees it.
pub struct H1Body {
    slot: Arc<Slot>,
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let mut s = self.slot.lock();
        if let Some(f) = s.frame.take() {
            return Poll::Ready(Some(Ok(f)));
        }
        if let Some(e) = s.error {
            return Poll::Ready(Some(Err(e)));
        }
        if s.end {
            return Poll::Ready(None);
        }
        s.want = true;
        if !s
            .body_waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            s.body_waker = Some(cx.waker().clone());
        }
        // The connection is polled right after its own task's poll of this body; another task
        // (an HTTP/2 upstream's) has to wake it.
        if let Some(w) = &s.conn_waker {
            if !w.will_wake(cx.waker()) {
                w.wake_by_ref();
            }
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        let s = self.slot.lock();
        s.end && s.frame.is_none() && s.error.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        let s = self.slot.lock();
        match s.remaining {
            Some(n) => {
                let held = s
                    .frame
                    .as_ref()
                    .and_then(|f| f.data_ref())
                    .map_or(0, |d| d.len() as u64);
                SizeHint::with_exact(n + held)
            }
            None => SizeHint::default(),
        }
    }
}

impl Drop for H1Body {
    fn drop(&mut self) {
        let mut s = self.slot.lock();
        s.dropped = true;
        if let Some(w) = s.conn_waker.take() {
            w.wake();
        }
    }
}

/// Where the decoder is in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decoder {
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkCrlf,
    Trailers,
    Done,
}

/// The connection's end of a request body.
pub struct Inbound {
    slot: Arc<Slot>,
    decoder: Decoder,
    /// Trailer lines of a chunked body, parsed at its end.
    trailers: BytesMut,
    max_trailer_bytes: usize,
    failed: bool,
}

/// What the body needs from the connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Need {
    /// Nothing now: the body has not asked (or it is over).
    Nothing,
    /// The body waits for bytes that are not buffered.
    Bytes,
}

impl Inbound {
    /// A body of `len` bytes, or chunked when `None`.
    pub fn new(len: Option<u64>, max_trailer_bytes: usize) -> (Inbound, H1Body) {
        let slot = Arc::new(Slot::default());
        slot.lock().remaining = len;
        let decoder = match len {
            Some(n) => Decoder::Length(n),
            None => Decoder::ChunkSize,
        };
        (
            Inbound {
                slot: slot.clone(),
                decoder,
                trailers: BytesMut::new(),
                max_trailer_bytes,
                failed: false,
            },
            H1Body { slot },
        )
    }

    /// The whole body has been read from the connection.
    pub fn is_complete(&self) -> bool {
        self.decoder == Decoder::Done
    }

    pub fn is_failed(&self) -> bool {
        self.failed
    }

    /// Whether the bytes in `buf` hold the rest of the body (without consuming them).
    pub fn completes_with(&self, buf: &[u8]) -> bool {
        let mut state = self.decoder;
        let mut i = 0;
        loop {
            let rest = &buf[i..];
            match state {
                Decoder::Done => return true,
                Decoder::Length(left) => return rest.len() as u64 >= left,
                Decoder::ChunkSize | Decoder::Trailers => {
                    let Some(nl) = memchr::memchr(b'\n', rest) else {
                        return false;
                    };
                    state = if state == Decoder::Trailers {
                        if nl == 1 && rest[0] == b'\r' {
                            return true;
                        }
                        Decoder::Trailers
                    } else {
                        match parse_chunk_size(&rest[..=nl]) {
                            Some(0) => Decoder::Trailers,
                            Some(n) => Decoder::ChunkData(n),
                            None => return false,
                        }
                    };
                    i += nl + 1;
                }
                Decoder::ChunkData(left) => {
                    if (rest.len() as u64) < left {
                        return false;
                    }
                    i += left as usize;
                    state = Decoder::ChunkCrlf;
                }
                Decoder::ChunkCrlf => {
                    if !rest.starts_with(b"\r\n") {
                        return false;
                    }
                    i += 2;
                    state = Decoder::ChunkSize;
                }
            }
        }
    }

    /// The handler let go of the body before its end.
    pub fn is_dropped(&self) -> bool {
        self.slot.lock().dropped
    }

    /// The body has asked for a frame (the first time: the moment to send `100 Continue`).
    pub fn wants(&self, cx: &Context<'_>) -> bool {
        let mut s = self.slot.lock();
        if !s
            .conn_waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            s.conn_waker = Some(cx.waker().clone());
        }
        s.want && !s.dropped
    }

    /// How many body bytes may be read straight from the socket into a frame of their own (a
    /// known length, nothing buffered).
    pub fn direct_read(&self) -> Option<usize> {
        match self.decoder {
            Decoder::Length(left) => Some(usize::try_from(left).unwrap_or(usize::MAX)),
            _ => None,
        }
    }

    /// Decode from `rbuf` into the slot if the body wants a frame (or, `discard`, drop what is
    /// buffered because nobody will read it). Returns what the body still needs.
    pub fn feed(&mut self, rbuf: &mut BytesMut, discard: bool) -> Result<Need, BodyError> {
        loop {
            if self.decoder == Decoder::Done {
                return Ok(Need::Nothing);
            }
            if !discard {
                let s = self.slot.lock();
                if !s.want || s.frame.is_some() || s.dropped {
                    return Ok(Need::Nothing);
                }
            }
            match self.step(rbuf) {
                Ok(Some(frame)) => {
                    if !discard {
                        self.put(frame);
                    }
                }
                Ok(None) => {
                    if self.decoder == Decoder::Done {
                        if !discard {
                            self.finish();
                        }
                        return Ok(Need::Nothing);
                    }
                    if rbuf.is_empty() || self.needs_more(rbuf) {
                        return Ok(Need::Bytes);
                    }
                }
                Err(e) => {
                    self.fail(e);
                    return Err(e);
                }
            }
        }
    }

    /// A frame read straight from the socket (known length only).
    pub fn put_direct(&mut self, data: Bytes) {
        if let Decoder::Length(left) = self.decoder {
            let left = left.saturating_sub(data.len() as u64);
            self.decoder = if left == 0 {
                Decoder::Done
            } else {
                Decoder::Length(left)
            };
            self.put(Frame::data(data));
            if self.decoder == Decoder::Done {
                self.finish();
            }
        }
    }

    /// The body can never end: the client closed, or its framing broke.
    pub fn fail(&mut self, e: BodyError) {
        self.failed = true;
        self.decoder = Decoder::Done;
        let mut s = self.slot.lock();
        s.error = Some(e);
        if let Some(w) = s.body_waker.take() {
            w.wake();
        }
    }

    fn put(&mut self, frame: Frame<Bytes>) {
        let mut s = self.slot.lock();
        if let (Some(r), Some(d)) = (s.remaining.as_mut(), frame.data_ref()) {
            *r = r.saturating_sub(d.len() as u64);
        }
        s.frame = Some(frame);
        s.want = false;
        if self.decoder == Decoder::Done {
            s.end = true;
        }
        if let Some(w) = s.body_waker.take() {
            w.wake();
        }
    }

    fn finish(&mut self) {
        let mut s = self.slot.lock();
        s.end = true;
        if let Some(w) = s.body_waker.take() {
            w.wake();
        }
    }

    /// Buffered bytes are not enough for the next step.
    fn needs_more(&self, rbuf: &BytesMut) -> bool {
        match self.decoder {
            Decoder::ChunkSize | Decoder::Trailers => memchr::memchr(b'\n', rbuf).is_none(),
            Decoder::ChunkCrlf => rbuf.len() < 2,
            Decoder::Length(_) | Decoder::ChunkData(_) => rbuf.is_empty(),
            Decoder::Done => false,
        }
    }

    /// One decoding step: a frame, or `None` when the state moved on (or more bytes are needed).
    fn step(&mut self, rbuf: &mut BytesMut) -> Result<Option<Frame<Bytes>>, BodyError> {
        match self.decoder {
            Decoder::Length(left) | Decoder::ChunkData(left) => {
                if rbuf.is_empty() {
                    return Ok(None);
                }
                let n = usize::try_from(left).unwrap_or(usize::MAX).min(rbuf.len());
                let data = rbuf.split_to(n).freeze();
                let left = left - n as u64;
                self.decoder = match (self.decoder, left) {
                    (Decoder::Length(_), 0) => Decoder::Done,
                    (Decoder::Length(_), l) => Decoder::Length(l),
                    (_, 0) => Decoder::ChunkCrlf,
                    (_, l) => Decoder::ChunkData(l),
                };
                Ok(Some(Frame::data(data)))
            }
            Decoder::ChunkSize => {
                let Some(nl) = memchr::memchr(b'\n', rbuf) else {
                    if rbuf.len() > MAX_CHUNK_LINE {
                        return Err(BodyError("chunk size line too long"));
                    }
                    return Ok(None);
                };
                let size = parse_chunk_size(&rbuf[..=nl]).ok_or(BodyError("invalid chunk size"))?;
                rbuf.advance(nl + 1);
                self.decoder = if size == 0 {
                    Decoder::Trailers
                } else {
                    Decoder::ChunkData(size)
                };
                Ok(None)
            }
            Decoder::ChunkCrlf => {
                if rbuf.first().is_some_and(|&b| b != b'\r') {
                    return Err(BodyError("chunk data not followed by CRLF"));
                }
                if rbuf.len() < 2 {
                    return Ok(None);
                }
                if &rbuf[..2] != b"\r\n" {
                    return Err(BodyError("chunk data not followed by CRLF"));
                }
                rbuf.advance(2);
                self.decoder = Decoder::ChunkSize;
                Ok(None)
            }
            Decoder::Trailers => {
                let Some(nl) = memchr::memchr(b'\n', rbuf) else {
                    if rbuf.len() + self.trailers.len() > self.max_trailer_bytes {
                        return Err(BodyError("trailers too large"));
                    }
                    return Ok(None);
                };
                let line = &rbuf[..=nl];
                if line.len() < 2
                    || line[line.len() - 2] != b'\r'
                    || line[..line.len() - 2].contains(&b'\r')
                {
                    return Err(BodyError("invalid trailer line"));
                }
                let last = line.len() == 2;
                let line = rbuf.split_to(nl + 1);
                if self.trailers.len() + line.len() > self.max_trailer_bytes {
                    return Err(BodyError("trailers too large"));
                }
                self.trailers.extend_from_slice(&line);
                if !last {
                    return Ok(None);
                }
                self.decoder = Decoder::Done;
                if self.trailers.len() <= 2 {
                    return Ok(None);
                }
                Ok(parse_trailers(&self.trailers).map(Frame::trailers))
            }
            Decoder::Done => Ok(None),
        }
    }
}

/// Trailer fields (the section ends with its empty line); unparseable ones are dropped, as
/// they would be by an HTTP/1.1 upstream anyway.
fn parse_trailers(section: &[u8]) -> Option<HeaderMap> {
    let mut slots = [httparse::EMPTY_HEADER; 32];
    let Ok(httparse::Status::Complete((_, fields))) = httparse::parse_headers(section, &mut slots)
    else {
        return None;
    };
    let mut map = HeaderMap::with_capacity(fields.len());
    for f in fields {
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(f.name.as_bytes()),
            http::HeaderValue::from_bytes(f.value),
        ) {
            map.append(n, v);
        }
    }
    (!map.is_empty()).then_some(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noop_cx() -> Context<'static> {
        Context::from_waker(Waker::noop())
    }

    /// Feed `wire` in pieces of `step` bytes, taking every frame; returns data and trailers.
    fn decode(wire: &[u8], step: usize) -> Result<(Vec<u8>, Option<HeaderMap>), BodyError> {
        let (mut inbound, mut body) = Inbound::new(None, 1024);
        let mut cx = noop_cx();
        let mut rbuf = BytesMut::new();
        let mut data = Vec::new();
        let mut trailers = None;
        let mut pieces = wire.chunks(step.max(1));
        loop {
            match Pin::new(&mut body).poll_frame(&mut cx) {
                Poll::Ready(Some(Ok(f))) => match f.into_data() {
                    Ok(d) => data.extend_from_slice(&d),
                    Err(f) => trailers = f.into_trailers().ok(),
                },
                Poll::Ready(Some(Err(e))) => return Err(e),
                Poll::Ready(None) => return Ok((data, trailers)),
                Poll::Pending => match inbound.feed(&mut rbuf, false)? {
                    Need::Bytes => match pieces.next() {
                        Some(p) => rbuf.extend_from_slice(p),
                        None => return Err(BodyError("truncated")),
                    },
                    Need::Nothing => {}
                },
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_at_every_split() {
        let wire = b"5;ext=1\r\nhello\r\n1\r\n \r\n6\r\nworld!\r\n0\r\nx-sum: 9\r\n\r\n";
        for step in 1..wire.len() {
            let (data, trailers) = decode(wire, step).unwrap();
            assert_eq!(data, b"hello world!", "step {step}");
            assert_eq!(trailers.unwrap()["x-sum"], "9", "step {step}");
        }
    }

    #[test]
    fn broken_chunks_fail() {
        for bad in [
            &b"zz\r\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhelloXX0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"0\r\nbad\rtrailer\r\n\r\n",
        ] {
            assert!(decode(bad, 3).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn buffered_rest_of_a_body_is_recognised() {
        let (chunked, _b) = Inbound::new(None, 1024);
        assert!(chunked.completes_with(b"5\r\nhello\r\n0\r\n\r\n"));
        assert!(chunked.completes_with(b"5\r\nhello\r\n0\r\nx: 1\r\n\r\nGET / HTTP/1.1\r\n"));
        assert!(!chunked.completes_with(b"5\r\nhello\r\n0\r\n"));
        assert!(!chunked.completes_with(b"5\r\nhel"));
        assert!(!chunked.completes_with(b"zz\r\n"));
        let (length, _b) = Inbound::new(Some(5), 1024);
        assert!(length.completes_with(b"hello"));
        assert!(!length.completes_with(b"hell"));
    }

    #[test]
    fn length_bodies_end_and_hint_exactly() {
        let (mut inbound, mut body) = Inbound::new(Some(5), 1024);
        assert_eq!(body.size_hint().exact(), Some(5));
        let mut cx = noop_cx();
        assert!(Pin::new(&mut body).poll_frame(&mut cx).is_pending());
        let mut rbuf = BytesMut::from(&b"helloGET"[..]);
        assert_eq!(inbound.feed(&mut rbuf, false).unwrap(), Need::Nothing);
        assert!(inbound.is_complete());
        assert_eq!(&rbuf[..], b"GET", "the next request's bytes stay");
        match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(f))) => assert_eq!(f.into_data().unwrap(), "hello"),
            _ => panic!("a frame"),
        }
        assert!(body.is_end_stream());
    }
}
