//! What both HTTP/1.1 codecs (downstream server, upstream client) write with: a head or chunk
//! framing, then a body frame that is never copied, then the frame's terminator, in one
//! `writev`.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;

/// Bytes waiting to be written, in order: `buf` (a head, chunk-size lines), `data` (a body
/// frame), `tail` (its CRLF, or the last chunk).
#[derive(Default)]
pub struct Outgoing {
    pub buf: BytesMut,
    pub data: Bytes,
    pub tail: &'static [u8],
}

impl Outgoing {
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty() && self.data.is_empty() && self.tail.is_empty()
    }

    /// A body frame can be staged behind what is in `buf` (nothing after it is waiting).
    pub fn can_stage(&self) -> bool {
        self.data.is_empty() && self.tail.is_empty()
    }

    pub fn clear(&mut self) {
        self.buf.clear();
        self.data = Bytes::new();
        self.tail = b"";
    }

    /// Write everything, then flush (TLS keeps records it could not write yet; plain TCP
    /// flushes nothing). `Pending` may follow partial progress; `progressed` says whether any
    /// byte went out in this call.
    pub fn poll_write<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        cx: &mut Context<'_>,
        progressed: &mut bool,
    ) -> Poll<io::Result<()>> {
        while !self.is_empty() {
            let slices = [
                IoSlice::new(&self.buf),
                IoSlice::new(&self.data),
                IoSlice::new(self.tail),
            ];
            let n = std::task::ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *progressed = true;
            self.advance(n);
        }
        Pin::new(io).poll_flush(cx)
    }

    fn advance(&mut self, mut n: usize) {
        let a = n.min(self.buf.len());
        self.buf.advance(a);
        n -= a;
        let b = n.min(self.data.len());
        self.data.advance(b);
        n -= b;
        self.tail = &self.tail[n.min(self.tail.len())..];
    }
}

/// Decimal digits of `n` without going through `fmt`.
pub struct Digits {
    buf: [u8; 20],
    start: usize,
}

impl Digits {
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

pub fn itoa_u64(mut n: u64) -> Digits {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    Digits { buf, start: i }
}

/// The prefix of one chunk: its size in hex and CRLF.
pub fn put_chunk_size(out: &mut BytesMut, len: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 16];
    let mut i = buf.len();
    let mut n = len;
    loop {
        i -= 1;
        buf[i] = HEX[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&buf[i..]);
    out.put_slice(b"\r\n");
}
