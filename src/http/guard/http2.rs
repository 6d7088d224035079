//! HTTP/2 frames as the guard follows them: a frame parser and the per-connection stream
//! tracking behind the premature-reset rule, flood limits and stalled-stream resets.

use super::*;

pub(super) const FRAME_DATA: u8 = 0x0;
pub(super) const FRAME_HEADERS: u8 = 0x1;
pub(super) const FRAME_RST_STREAM: u8 = 0x3;
pub(super) const FRAME_SETTINGS: u8 = 0x4;
pub(super) const FRAME_PING: u8 = 0x6;
pub(super) const FRAME_GOAWAY: u8 = 0x7;
pub(super) const FRAME_CONTINUATION: u8 = 0x9;
pub(super) const FLAG_END_STREAM: u8 = 0x1;
pub(super) const FLAG_END_HEADERS: u8 = 0x4;
pub(super) const REASON_PROTOCOL_ERROR: u32 = 0x1;
pub(super) const REASON_INTERNAL_ERROR: u32 = 0x2;
pub(super) const REASON_FLOW_CONTROL_ERROR: u32 = 0x3;
pub(super) const REASON_STREAM_CLOSED: u32 = 0x5;
pub(super) const REASON_FRAME_SIZE_ERROR: u32 = 0x6;
pub(super) const REASON_REFUSED_STREAM: u32 = 0x7;
pub(super) const REASON_CANCEL: u32 = 0x8;
pub(super) const REASON_ENHANCE_YOUR_CALM: u32 = 0xb;
/// Payload bytes kept of frames whose payload matters (RST_STREAM, GOAWAY with debug data).
pub(super) const CAPTURE: usize = 64;

#[derive(Debug, Clone, Copy, Default)]
pub(super) struct FrameHead {
    pub(super) len: usize,
    pub(super) kind: u8,
    pub(super) flags: u8,
    pub(super) stream: u32,
}

/// Follows frame boundaries in one direction of an HTTP/2 byte stream.
pub(super) struct FrameParser {
    pub(super) preface_left: usize,
    pub(super) hdr: [u8; 9],
    pub(super) hdr_len: usize,
    pub(super) head: FrameHead,
    pub(super) payload_left: usize,
    pub(super) payload: Vec<u8>,
}

pub(super) enum FrameEvent<'a> {
    Start(FrameHead),
    End(FrameHead, &'a [u8]),
}

impl FrameParser {
    pub(super) fn new(preface: usize) -> Self {
        FrameParser {
            preface_left: preface,
            hdr: [0; 9],
            hdr_len: 0,
            head: FrameHead::default(),
            payload_left: 0,
            payload: Vec::new(),
        }
    }

    pub(super) fn at_boundary(&self) -> bool {
        self.preface_left == 0 && self.hdr_len == 0 && self.payload_left == 0
    }

    /// Bytes until the next boundary (or until the frame header is complete).
    pub(super) fn to_boundary(&self) -> usize {
        if self.preface_left > 0 {
            self.preface_left
        } else if self.hdr_len > 0 && self.hdr_len < 9 {
            9 - self.hdr_len
        } else {
            self.payload_left
        }
    }

    pub(super) fn feed(&mut self, mut data: &[u8], on: &mut dyn FnMut(FrameEvent<'_>)) {
        while !data.is_empty() {
            if self.preface_left > 0 {
                let n = self.preface_left.min(data.len());
                self.preface_left -= n;
                data = &data[n..];
                continue;
            }
            if self.payload_left == 0 {
                let n = (9 - self.hdr_len).min(data.len());
                self.hdr[self.hdr_len..self.hdr_len + n].copy_from_slice(&data[..n]);
                self.hdr_len += n;
                data = &data[n..];
                if self.hdr_len < 9 {
                    continue;
                }
                let h = &self.hdr;
                self.head = FrameHead {
                    len: (h[0] as usize) << 16 | (h[1] as usize) << 8 | h[2] as usize,
                    kind: h[3],
                    flags: h[4],
                    stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
                };
                self.payload.clear();
                on(FrameEvent::Start(self.head));
                if self.head.len == 0 {
                    self.hdr_len = 0;
                    on(FrameEvent::End(self.head, &[]));
                } else {
                    self.payload_left = self.head.len;
                }
                continue;
            }
            let n = self.payload_left.min(data.len());
            let keep = CAPTURE.saturating_sub(self.payload.len()).min(n);
            if keep > 0 && matches!(self.head.kind, FRAME_RST_STREAM | FRAME_GOAWAY) {
                self.payload.extend_from_slice(&data[..keep]);
            }
            self.payload_left -= n;
            data = &data[n..];
            if self.payload_left == 0 {
                self.hdr_len = 0;
                on(FrameEvent::End(self.head, &self.payload));
            }
        }
    }
}

pub(super) struct StreamTrack {
    pub(super) opened: Instant,
    pub(super) remote_end: bool,
    pub(super) local_end: bool,
    pub(super) response: bool,
    pub(super) last_out: Instant,
    pub(super) resetting: bool,
}

/// What the guard knows about one HTTP/2 connection.
pub(super) struct H2Track {
    pub(super) rd: FrameParser,
    pub(super) wr: FrameParser,
    pub(super) in_header_block: Option<u32>,
    /// Keyed by stream id, looked up for every frame each way: foldhash rather than SipHash
    /// (SipHash was 2% of an h2c request's instructions); still seeded per process, as the ids
    /// are the client's to choose.
    pub(super) streams: foldhash::HashMap<u32, StreamTrack>,
    pub(super) max_client_stream: u32,
    pub(super) open_responses: usize,
    pub(super) closed: u64,
    pub(super) premature: u64,
    /// Outgoing frames queued in `wbuf`: (end offset, control frame).
    pub(super) queued: VecDeque<(u64, bool)>,
    pub(super) queued_control: usize,
    pub(super) appended: u64,
    pub(super) sent: u64,
    pub(super) inject_in: VecDeque<Vec<u8>>,
    pub(super) inject_out: VecDeque<Vec<u8>>,
    pub(super) reset_delivered: Vec<u32>,
    pub(super) stall_sleep: Option<Pin<Box<Sleep>>>,
    pub(super) stall_due: bool,
    pub(super) wstall: Option<Pin<Box<Sleep>>>,
    pub(super) abort_deadline: Option<Instant>,
    pub(super) abort_sleep: Option<Pin<Box<Sleep>>>,
    /// GOAWAY to append at the next boundary of the outgoing stream.
    pub(super) goaway_pending: Option<Vec<u8>>,
}

/// One clock read for all the frames of one read or one write: a client's read carries many
/// streams' frames, and h2 writes many responses at once, so reading the clock per frame cost
/// three reads per request for timestamps that only ever measure seconds.
#[derive(Default)]
pub(super) struct BatchClock(Option<Instant>);

impl BatchClock {
    pub(super) fn get(&mut self) -> Instant {
        *self.0.get_or_insert_with(Instant::now)
    }
}

impl H2Track {
    pub(super) fn new() -> Self {
        H2Track {
            rd: FrameParser::new(PREFACE.len()),
            wr: FrameParser::new(0),
            in_header_block: None,
            streams: foldhash::HashMap::default(),
            max_client_stream: 0,
            open_responses: 0,
            closed: 0,
            premature: 0,
            queued: VecDeque::new(),
            queued_control: 0,
            appended: 0,
            sent: 0,
            inject_in: VecDeque::new(),
            inject_out: VecDeque::new(),
            reset_delivered: Vec::new(),
            stall_sleep: None,
            stall_due: false,
            wstall: None,
            abort_deadline: None,
            abort_sleep: None,
            goaway_pending: None,
        }
    }

    /// Frames from the client.
    pub(super) fn observe_in(&mut self, data: &[u8], cfg: &GuardConfig) {
        let mut now = BatchClock::default();
        let mut events: Vec<(bool, FrameHead, u32)> = Vec::new();
        self.rd.feed(data, &mut |ev| match ev {
            FrameEvent::Start(h) => events.push((true, h, 0)),
            FrameEvent::End(h, p) => events.push((false, h, error_code(h.kind, p))),
        });
        for (start, h, code) in events {
            if start {
                self.frame_in_start(h, &mut now);
            } else if h.kind == FRAME_RST_STREAM {
                cfg.stats.http2_rx_reset.increment(1);
                let _ = code;
                if let Some(s) = self.streams.remove(&h.stream) {
                    let done = s.remote_end && s.local_end;
                    let early = now.get().saturating_duration_since(s.opened) < PREMATURE_LIFETIME;
                    self.stream_closed(&s, !done && early && !s.resetting, cfg);
                }
            }
        }
    }

    pub(super) fn frame_in_start(&mut self, h: FrameHead, now: &mut BatchClock) {
        match h.kind {
            FRAME_HEADERS => {
                if h.flags & FLAG_END_HEADERS == 0 {
                    self.in_header_block = Some(h.stream);
                }
                if h.stream > self.max_client_stream && h.stream % 2 == 1 {
                    self.max_client_stream = h.stream;
                    let now = now.get();
                    self.streams.insert(
                        h.stream,
                        StreamTrack {
                            opened: now,
                            remote_end: h.flags & FLAG_END_STREAM != 0,
                            local_end: false,
                            response: false,
                            last_out: now,
                            resetting: false,
                        },
                    );
                } else if h.flags & FLAG_END_STREAM != 0 {
                    if let Some(s) = self.streams.get_mut(&h.stream) {
                        s.remote_end = true;
                    }
                }
            }
            FRAME_CONTINUATION if h.flags & FLAG_END_HEADERS != 0 => {
                self.in_header_block = None;
            }
            FRAME_DATA if h.flags & FLAG_END_STREAM != 0 => {
                if let Some(s) = self.streams.get_mut(&h.stream) {
                    s.remote_end = true;
                }
            }
            _ => {}
        }
        if let Some(s) = self.streams.get(&h.stream) {
            if s.remote_end && s.local_end {
                self.finish_stream(h.stream);
            }
        }
    }

    pub(super) fn finish_stream(&mut self, id: u32) {
        if let Some(s) = self.streams.remove(&id) {
            if s.response && !s.local_end {
                self.open_responses = self.open_responses.saturating_sub(1);
            }
            self.closed += 1;
        }
    }

    /// A stream ended by a reset; `premature` when the client caused it early.
    pub(super) fn stream_closed(&mut self, s: &StreamTrack, premature: bool, cfg: &GuardConfig) {
        if s.response && !s.local_end {
            self.open_responses = self.open_responses.saturating_sub(1);
        }
        self.closed += 1;
        if premature {
            self.premature += 1;
        }
        // Envoy's rule (ConnectionManagerImpl::maybeDrainDueToPrematureResets).
        let trip = if self.closed < PREMATURE_STREAMS {
            self.premature * 2 >= PREMATURE_STREAMS
        } else {
            self.premature * 2 >= self.closed
        };
        if trip && self.abort_deadline.is_none() {
            cfg.stats
                .downstream_rq_too_many_premature_resets
                .increment(1);
            self.start_abort(b"too_many_premature_resets", false);
        }
    }

    /// Queue a GOAWAY (ENHANCE_YOUR_CALM) and close once it is out. On a flood, frames queued
    /// behind the one being written are dropped so the GOAWAY is next.
    pub(super) fn start_abort(&mut self, debug: &[u8], flood: bool) {
        let mut f = Vec::with_capacity(17 + debug.len());
        f.extend_from_slice(&((8 + debug.len()) as u32).to_be_bytes()[1..]);
        f.push(FRAME_GOAWAY);
        f.push(0);
        f.extend_from_slice(&0u32.to_be_bytes());
        f.extend_from_slice(&self.max_client_stream.to_be_bytes());
        f.extend_from_slice(&REASON_ENHANCE_YOUR_CALM.to_be_bytes());
        f.extend_from_slice(debug);
        self.goaway_pending = Some(f);
        self.abort_deadline = Some(Instant::now() + ABORT_FLUSH);
        let _ = flood;
    }

    /// Frames from h2 on their way to the client.
    pub(super) fn append_out(&mut self, data: &[u8], wbuf: &mut BytesMut, cfg: &GuardConfig) {
        // Feed frame by frame so injected frames can go in at each boundary.
        let mut rest = data;
        let mut clock = BatchClock::default();
        while !rest.is_empty() {
            let step = if self.wr.at_boundary() {
                9.min(rest.len())
            } else {
                self.wr.to_boundary().min(rest.len())
            };
            let (now, later) = rest.split_at(step.max(1));
            let mut ended = None;
            self.wr.feed(now, &mut |ev| {
                if let FrameEvent::End(h, p) = ev {
                    let code = error_code(h.kind, p);
                    let debug = if h.kind == FRAME_GOAWAY && p.len() > 8 {
                        p[8..].to_vec()
                    } else {
                        Vec::new()
                    };
                    ended = Some((h, code, debug));
                }
            });
            wbuf.extend_from_slice(now);
            self.appended += now.len() as u64;
            rest = later;
            if let Some((h, code, debug)) = ended {
                self.frame_out(h, code, &debug, cfg, &mut clock);
                self.append_injections(wbuf, cfg);
            }
        }
    }

    /// Record one complete outgoing frame.
    pub(super) fn frame_out(
        &mut self,
        h: FrameHead,
        code: u32,
        debug: &[u8],
        cfg: &GuardConfig,
        clock: &mut BatchClock,
    ) {
        let control = matches!(h.kind, FRAME_PING | FRAME_SETTINGS | FRAME_RST_STREAM);
        self.queued.push_back((self.appended, control));
        if control {
            self.queued_control += 1;
        }
        let now = clock.get();
        match h.kind {
            FRAME_HEADERS | FRAME_DATA => {
                if let Some(s) = self.streams.get_mut(&h.stream) {
                    if h.kind == FRAME_HEADERS && !s.response {
                        s.response = true;
                        self.open_responses += 1;
                    }
                    s.last_out = now;
                    if h.flags & FLAG_END_STREAM != 0 && !s.local_end {
                        s.local_end = true;
                        if s.response {
                            self.open_responses = self.open_responses.saturating_sub(1);
                        }
                    }
                    if s.remote_end && s.local_end {
                        self.finish_stream(h.stream);
                    }
                }
            }
            FRAME_RST_STREAM => {
                cfg.stats.http2_tx_reset.increment(1);
                if let Some(s) = self.streams.remove(&h.stream) {
                    match code {
                        // A refused stream was never opened.
                        REASON_REFUSED_STREAM => {
                            if s.response && !s.local_end {
                                self.open_responses = self.open_responses.saturating_sub(1);
                            }
                        }
                        // The client broke the protocol on this stream (MadeYouReset).
                        REASON_PROTOCOL_ERROR
                        | REASON_FLOW_CONTROL_ERROR
                        | REASON_STREAM_CLOSED
                        | REASON_FRAME_SIZE_ERROR => {
                            let early =
                                now.saturating_duration_since(s.opened) < PREMATURE_LIFETIME;
                            self.stream_closed(&s, early && !s.resetting, cfg);
                        }
                        _ => self.stream_closed(&s, false, cfg),
                    }
                }
            }
            FRAME_GOAWAY if code == REASON_ENHANCE_YOUR_CALM => match debug {
                b"too_many_resets" | b"too_many_internal_resets" => {
                    cfg.stats
                        .downstream_rq_too_many_premature_resets
                        .increment(1);
                }
                b"too_many_continuations" | b"header_list_way_too_large" => {
                    cfg.stats.http2_header_overflow.increment(1);
                }
                _ => {}
            },
            _ => {}
        }
        let _ = REASON_INTERNAL_ERROR;
        if self.abort_deadline.is_none() {
            if self.queued_control > cfg.max_outbound_control_frames {
                cfg.stats.http2_outbound_control_flood.increment(1);
                self.start_abort(b"outbound_control_flood", true);
            } else if self.queued.len() > cfg.max_outbound_frames {
                cfg.stats.http2_outbound_flood.increment(1);
                self.start_abort(b"outbound_flood", true);
            }
        }
    }

    /// Frames legate adds to the outgoing stream (at a boundary): resets, then a GOAWAY.
    pub(super) fn append_injections(&mut self, wbuf: &mut BytesMut, cfg: &GuardConfig) {
        if !self.wr.at_boundary() {
            return;
        }
        while let Some(f) = self.inject_out.pop_front() {
            wbuf.extend_from_slice(&f);
            self.appended += f.len() as u64;
            self.queued.push_back((self.appended, true));
            self.queued_control += 1;
            cfg.stats.http2_tx_reset.increment(1);
        }
        if let Some(g) = self.goaway_pending.take() {
            // Drop queued frames behind the one being written: the GOAWAY goes next.
            let cut = self
                .queued
                .iter()
                .find(|(end, _)| *end > self.sent)
                .map_or(self.appended, |(end, _)| *end);
            let keep = (cut - self.sent) as usize;
            if keep <= wbuf.len() {
                wbuf.truncate(keep);
                self.appended = cut;
                while self.queued.back().is_some_and(|(end, _)| *end > cut) {
                    if let Some((_, c)) = self.queued.pop_back() {
                        if c {
                            self.queued_control -= 1;
                        }
                    }
                }
            }
            wbuf.extend_from_slice(&g);
            self.appended += g.len() as u64;
            self.inject_out.clear();
        }
    }

    /// `n` more bytes reached the socket.
    pub(super) fn drained(&mut self, n: u64) {
        self.sent += n;
        while self
            .queued
            .front()
            .is_some_and(|(end, _)| *end <= self.sent)
        {
            if let Some((_, c)) = self.queued.pop_front() {
                if c {
                    self.queued_control -= 1;
                }
            }
        }
    }

    /// The stall check's timer: armed while a response is open, polled from reads and writes
    /// (h2 may write a response's headers and then wait on the window without reading).
    pub(super) fn poll_stall(&mut self, cfg: &GuardConfig, cx: &mut Context<'_>) -> bool {
        let Some(idle) = cfg.stream_idle_timeout else {
            return false;
        };
        if self.open_responses == 0 {
            self.stall_sleep = None;
            return false;
        }
        let every = (idle / 4).max(Duration::from_millis(10));
        let sleep = self
            .stall_sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(every)));
        if sleep.as_mut().poll(cx).is_ready() {
            self.stall_sleep = None;
            return true;
        }
        false
    }

    /// Responses that sent nothing for `idle`: reset them on both sides.
    pub(super) fn scan_stalled(&mut self, idle: Duration, cfg: &GuardConfig) {
        let now = Instant::now();
        for (id, s) in self.streams.iter_mut() {
            if s.response && !s.local_end && !s.resetting && now.duration_since(s.last_out) >= idle
            {
                s.resetting = true;
                cfg.stats.http2_tx_flush_timeout.increment(1);
                cfg.stats.downstream_rq_idle_timeout.increment(1);
                self.inject_in.push_back(rst_frame(*id, REASON_CANCEL));
            }
        }
    }

    /// The socket accepts nothing while frames wait: a peer that stopped reading.
    pub(super) fn wstall_check(&mut self, cfg: &GuardConfig, cx: &mut Context<'_>) -> bool {
        let Some(idle) = cfg.stream_idle_timeout else {
            return false;
        };
        let sleep = self
            .wstall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
        if sleep.as_mut().poll(cx).is_ready() {
            cfg.stats.downstream_rq_idle_timeout.increment(1);
            return true;
        }
        false
    }
}

/// The error code of a RST_STREAM or GOAWAY payload.
pub(super) fn error_code(kind: u8, p: &[u8]) -> u32 {
    let at = if kind == FRAME_GOAWAY { 4 } else { 0 };
    match p.get(at..at + 4) {
        Some(b) => u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        None => 0,
    }
}

pub(super) fn rst_frame(stream: u32, reason: u32) -> Vec<u8> {
    let mut f = vec![0, 0, 4, FRAME_RST_STREAM, 0];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(&reason.to_be_bytes());
    f
}

pub(super) fn frame_stream(f: &[u8]) -> Option<u32> {
    (f.len() >= 9 && f[3] == FRAME_RST_STREAM)
        .then(|| u32::from_be_bytes([f[5], f[6], f[7], f[8]]) & 0x7fff_ffff)
}
