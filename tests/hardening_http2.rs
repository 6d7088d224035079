//! Hostile HTTP/2 input, written frame by frame: stream errors reset only their stream; abuse
//! of the connection (Rapid Reset, MadeYouReset, CONTINUATION and control-frame floods) ends it
//! with a GOAWAY; other clients are served throughout.

use crate::common;

use common::raw::*;
use common::*;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(3);

/// Routes: `/direct` answers `hello` itself, `/hang` waits on the upstream, the rest goes to it.
async fn proxy(up: &Upstream, hcm_extra: &str) -> Legate {
    let vhost = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: { prefix: \"/direct\" }\n                direct_response: { status: 200, body: { inline_string: hello } }\n              - match: { prefix: \"/\" }\n                route: { cluster: c, timeout: 0s }\n";
    Legate::start(&config_with(vhost, &cluster("c", &[up.addr]), hcm_extra)).await
}

async fn hanging_upstream() -> Upstream {
    Upstream::start(
        "hang",
        |req: http::Request<hyper::body::Incoming>| async move {
            if req.uri().path() == "/hang" {
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
            http::Response::new(full(""))
        },
    )
    .await
}

async fn others_served(legate: &Legate) {
    assert_eq!(get(&legate.url("/")).await.status, 200);
}

fn get_on(stream: u32, path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        stream,
        &request_block("GET", path, "a", extra),
    )
}

#[tokio::test]
async fn authority_host_mismatch_is_400() {
    let up = Upstream::echo("a").await;
    let legate = proxy(&up, "").await;
    let mut c = H2::connect(legate.addr).await;
    c.send(&get_on(1, "/", &[("host", "b")])).await;
    assert_eq!(c.outcome(1, WAIT).await, Outcome::Status(400));
    // Same connection, agreeing host: served.
    c.send(&get_on(3, "/", &[("host", "a")])).await;
    assert_eq!(c.outcome(3, WAIT).await, Outcome::Status(200));
    legate.wait_stat("http.ingress.downstream_rq_400", 1).await;
    assert_eq!(up.request_count(), 1);
}

#[tokio::test]
async fn malformed_streams_are_reset_alone() {
    let up = Upstream::echo("a").await;
    let legate = proxy(&up, "").await;
    let mut c = H2::connect(legate.addr).await;
    // Connection-specific header.
    c.send(&get_on(1, "/", &[("connection", "keep-alive")]))
        .await;
    // TE other than trailers.
    c.send(&get_on(3, "/", &[("te", "gzip")])).await;
    // No :path.
    c.send(&frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        5,
        &hpack(&[(":method", "GET"), (":scheme", "http"), (":authority", "a")]),
    ))
    .await;
    // A pseudo-header after a regular one.
    c.send(&frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        7,
        &hpack(&[
            (":method", "GET"),
            ("x-a", "1"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", "a"),
        ]),
    ))
    .await;
    for id in [1, 3, 5, 7] {
        assert_eq!(
            c.outcome(id, WAIT).await,
            Outcome::Reset(PROTOCOL_ERROR),
            "stream {id}"
        );
    }
    // Content-length that the body does not match.
    c.send(&frame(
        HEADERS,
        END_HEADERS,
        9,
        &request_block("POST", "/upload", "a", &[("content-length", "5")]),
    ))
    .await;
    c.send(&frame(DATA, END_STREAM, 9, b"abc")).await;
    let reset = c
        .until(WAIT, |f| f.stream == 9 && f.kind == RST_STREAM)
        .await
        .expect("stream 9 reset");
    assert_eq!(reset.error_code(), PROTOCOL_ERROR);
    // The connection still serves.
    c.send(&get_on(11, "/", &[])).await;
    assert_eq!(c.outcome(11, WAIT).await, Outcome::Status(200));
    assert!(legate.stat("http2.tx_reset") >= 5);
    others_served(&legate).await;
    // Only the content-length stream (aborted) and the good ones reached the upstream.
    assert!(up.request_count() <= 3, "{}", up.request_count());
}

#[tokio::test]
async fn undecodable_header_blocks_end_only_their_connection() {
    // h2 treats an unknown pseudo-header or an uppercase name as a connection error (HPACK
    // decoding), not a stream error: the offending connection gets GOAWAY(PROTOCOL_ERROR).
    let up = Upstream::echo("a").await;
    let legate = proxy(&up, "").await;
    for bad in [(":bogus", "1"), ("X-Upper", "1")] {
        let mut c = H2::connect(legate.addr).await;
        c.send(&get_on(1, "/", &[bad])).await;
        let outcome = c.outcome(1, WAIT).await;
        assert!(
            matches!(
                outcome,
                Outcome::Reset(PROTOCOL_ERROR) | Outcome::GoAway(PROTOCOL_ERROR)
            ),
            "{bad:?}: {outcome:?}"
        );
        others_served(&legate).await;
    }
    assert_eq!(up.request_count(), 2);
}

#[tokio::test]
async fn streams_over_max_concurrent_are_refused() {
    let up = hanging_upstream().await;
    let legate = proxy(
        &up,
        "          http2_protocol_options: { max_concurrent_streams: 2 }",
    )
    .await;
    let mut c = H2::connect(legate.addr).await;
    // Wait for the server's SETTINGS so the limit is known to apply.
    c.until(WAIT, |f| f.kind == SETTINGS && f.flags & ACK != 0)
        .await;
    for id in [1, 3, 5] {
        c.send(&get_on(id, "/hang", &[])).await;
    }
    assert_eq!(c.outcome(5, WAIT).await, Outcome::Reset(REFUSED_STREAM));
    others_served(&legate).await;
}

#[tokio::test]
async fn underscores_rejected_on_http2_reset_the_stream() {
    let up = Upstream::echo("a").await;
    let legate = proxy(
        &up,
        "          common_http_protocol_options: { headers_with_underscores_action: REJECT_REQUEST }",
    )
    .await;
    let mut c = H2::connect(legate.addr).await;
    c.send(&get_on(1, "/", &[("x_y", "1")])).await;
    assert_eq!(c.outcome(1, WAIT).await, Outcome::Reset(PROTOCOL_ERROR));
    c.send(&get_on(3, "/", &[])).await;
    assert_eq!(c.outcome(3, WAIT).await, Outcome::Status(200));
    assert_eq!(
        legate.stat("http2.requests_rejected_with_underscores_in_headers"),
        1
    );
    assert_eq!(up.request_count(), 1);
}

#[tokio::test]
async fn rapid_reset_gets_goaway() {
    let up = Upstream::echo("a").await;
    let legate = proxy(&up, "").await;
    let mut c = H2::connect(legate.addr).await;
    let mut burst = Vec::new();
    for i in 0..600u32 {
        let id = 2 * i + 1;
        burst.extend(get_on(id, "/", &[]));
        burst.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
    }
    c.send(&burst).await;
    let goaway = c.until(WAIT, |f| f.kind == GOAWAY).await.expect("GOAWAY");
    assert_eq!(goaway.error_code(), ENHANCE_YOUR_CALM);
    legate
        .wait_stat("http.ingress.downstream_rq_too_many_premature_resets", 1)
        .await;
    assert!(legate.stat("http2.rx_reset") > 0);
    others_served(&legate).await;
    // Far fewer than the 600 requests reached the upstream.
    assert!(up.request_count() < 300, "{}", up.request_count());
}

#[tokio::test]
async fn slow_rapid_reset_trips_the_premature_rule() {
    // Each stream is accepted (and answered from the proxy) before it is reset, so h2's own
    // pending-accept limit never applies: Envoy's ratio rule does.
    let up = Upstream::echo("a").await;
    let legate = proxy(&up, "").await;
    let mut c = H2::connect(legate.addr).await;
    let mut goaway = None;
    for batch in 0..40u32 {
        let mut b = Vec::new();
        for i in 0..10u32 {
            let id = 2 * (batch * 10 + i) + 1;
            b.extend(frame(
                HEADERS,
                END_HEADERS,
                id,
                &request_block("POST", "/direct", "a", &[]),
            ));
        }
        c.send(&b).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        let mut r = Vec::new();
        for i in 0..10u32 {
            let id = 2 * (batch * 10 + i) + 1;
            r.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
        }
        c.send(&r).await;
        if legate.stat("http.ingress.downstream_rq_too_many_premature_resets") > 0 {
            goaway = c.until(WAIT, |f| f.kind == GOAWAY).await;
            break;
        }
    }
    let goaway = match goaway {
        Some(g) => g,
        None => c.until(WAIT, |f| f.kind == GOAWAY).await.expect("GOAWAY"),
    };
    assert_eq!(goaway.error_code(), ENHANCE_YOUR_CALM);
    assert_eq!(
        legate.stat("http.ingress.downstream_rq_too_many_premature_resets"),
        1
    );
    others_served(&legate).await;
}

#[tokio::test]
async fn made_you_reset_gets_goaway() {
    let up = Upstream::echo("a").await;
    let legate = proxy(&up, "").await;
    let mut c = H2::connect(legate.addr).await;
    // Each stream is made invalid by the client (more DATA than its content-length), so the
    // server must reset it: the resets are the server's, the abuse the client's.
    let mut b = Vec::new();
    for i in 0..400u32 {
        let id = 2 * i + 1;
        b.extend(frame(
            HEADERS,
            END_HEADERS,
            id,
            &request_block("POST", "/direct", "a", &[("content-length", "1")]),
        ));
        b.extend(frame(DATA, END_STREAM, id, b"abc"));
    }
    c.send(&b).await;
    let goaway = c.until(WAIT, |f| f.kind == GOAWAY).await.expect("GOAWAY");
    assert_eq!(goaway.error_code(), ENHANCE_YOUR_CALM);
    legate
        .wait_stat("http.ingress.downstream_rq_too_many_premature_resets", 1)
        .await;
    others_served(&legate).await;
}

#[tokio::test]
async fn continuation_flood_gets_goaway() {
    let up = Upstream::echo("a").await;
    let legate = proxy(&up, "").await;
    let mut c = H2::connect(legate.addr).await;
    let mut b = frame(HEADERS, 0, 1, &request_block("GET", "/", "a", &[]));
    for i in 0..2000 {
        let name = format!("x-c{i}");
        b.extend(frame(CONTINUATION, 0, 1, &hpack(&[(name.as_str(), "1")])));
    }
    c.send(&b).await;
    let end = c.until(WAIT, |f| f.kind == GOAWAY).await;
    let end = end.expect("GOAWAY");
    assert_eq!(end.error_code(), ENHANCE_YOUR_CALM);
    legate.wait_stat("http2.header_overflow", 1).await;
    others_served(&legate).await;
    assert_eq!(up.request_count(), 1);
}

#[tokio::test]
async fn hpack_bomb_is_refused() {
    let up = Upstream::echo("a").await;
    let legate = proxy(&up, "").await;
    let mut c = H2::connect(legate.addr).await;
    // One 4 KiB entry in the dynamic table, then referenced 200 times: 800 KiB decoded from
    // under 5 KiB on the wire.
    let mut block = request_block("GET", "/", "a", &[]);
    block.extend(hpack_indexed_literal("x-bomb", &"b".repeat(4000)));
    for _ in 0..200 {
        block.extend(hpack_index(62));
    }
    c.send(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &block))
        .await;
    let outcome = c.outcome(1, WAIT).await;
    assert!(
        matches!(
            outcome,
            Outcome::Reset(_) | Outcome::GoAway(_) | Outcome::Closed
        ) || matches!(outcome, Outcome::Status(s) if s != 200),
        "{outcome:?}"
    );
    others_served(&legate).await;
    assert_eq!(up.request_count(), 1);
}

#[tokio::test]
async fn ping_flood_from_a_peer_that_does_not_read_gets_goaway() {
    let up = Upstream::echo("a").await;
    let legate = proxy(&up, "").await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(legate.addr).await.unwrap();
    use tokio::io::AsyncWriteExt;
    let mut hello = PREFACE.to_vec();
    hello.extend(settings(&[]));
    s.write_all(&hello).await.unwrap();
    let mut pings = Vec::new();
    for i in 0..5000u64 {
        pings.extend(frame(PING, 0, 0, &i.to_be_bytes()));
    }
    // Write PINGs (never reading) until the proxy gives up on this connection.
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        for _ in 0..200 {
            if wr.write_all(&pings).await.is_err() {
                return;
            }
        }
    });
    legate.wait_stat("http2.outbound_control_flood", 1).await;
    writer.abort();
    // The peer finds the connection closed once it reads what was sent; a GOAWAY, if it got
    // through ahead of the close, says ENHANCE_YOUR_CALM.
    let mut saw = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    saw.extend_from_slice(&buf[..n]);
                    if saw.len() > 64 << 20 {
                        return;
                    }
                }
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "connection closed");
    if let Some(at) = find_goaway(&saw) {
        assert_eq!(&saw[at + 13..at + 17], &ENHANCE_YOUR_CALM.to_be_bytes());
    }
    others_served(&legate).await;
}

/// The offset of a GOAWAY frame header among PING ACKs (17-byte frames) after SETTINGS.
fn find_goaway(bytes: &[u8]) -> Option<usize> {
    let mut at = 0;
    while at + 9 <= bytes.len() {
        let len =
            (bytes[at] as usize) << 16 | (bytes[at + 1] as usize) << 8 | bytes[at + 2] as usize;
        if bytes[at + 3] == GOAWAY {
            return (at + 17 <= bytes.len()).then_some(at);
        }
        at += 9 + len;
    }
    None
}

#[tokio::test]
async fn zero_window_reader_is_reset_after_stream_idle_timeout() {
    let up = Upstream::echo("a").await;
    let legate = proxy(&up, "          stream_idle_timeout: 0.3s").await;
    // A window of 0: the response body can never be sent.
    let mut c = H2::connect_with(legate.addr, &[(0x4, 0)]).await;
    c.send(&get_on(1, "/direct", &[])).await;
    assert_eq!(c.outcome(1, WAIT).await, Outcome::Status(200));
    let reset = c
        .until(WAIT, |f| f.stream == 1 && f.kind == RST_STREAM)
        .await
        .expect("stream reset");
    assert_eq!(reset.error_code(), CANCEL);
    assert_eq!(legate.stat("http2.tx_flush_timeout"), 1);
    legate
        .wait_stat("http.ingress.downstream_rq_idle_timeout", 1)
        .await;
    // The connection itself is still fine.
    c.send(&get_on(3, "/", &[])).await;
    assert_eq!(c.outcome(3, WAIT).await, Outcome::Status(200));
    others_served(&legate).await;
}

#[tokio::test]
async fn connection_keepalive_closes_a_peer_that_stops_answering_pings() {
    let up = Upstream::echo("a").await;
    let legate = proxy(
        &up,
        "          http2_protocol_options: { connection_keepalive: { interval: 0.2s, timeout: 0.3s } }",
    )
    .await;
    // A peer that answers: hyper's client ACKs every PING, so its connection outlives many
    // intervals and still serves requests.
    let live = H2Conn::open(legate.addr).await;
    assert_eq!(live.get(&legate.url("/")).await.unwrap().status, 200);

    // A peer that never answers gets PINGs, then the connection closes after one timeout.
    let mut mute = H2::connect(legate.addr).await;
    let started = std::time::Instant::now();
    let ping = mute
        .until(WAIT, |f| f.kind == PING && f.flags & ACK == 0)
        .await;
    assert!(ping.is_some(), "legate sends a keepalive PING");
    let ended = mute.until(WAIT, |_| false).await;
    assert!(ended.is_none());
    let lived = started.elapsed();
    assert!(
        lived >= Duration::from_millis(450) && lived < Duration::from_millis(2500),
        "closed one interval plus one timeout after it opened, not {lived:?}"
    );
    // A mute peer's connection is gone, not merely quiet: the socket reads EOF.
    use tokio::io::AsyncReadExt;
    let mut byte = [0u8; 1];
    let eof = tokio::time::timeout(WAIT, mute.s.read(&mut byte)).await;
    assert!(matches!(eof, Ok(Ok(0)) | Ok(Err(_))), "{eof:?}");
    assert_eq!(legate.stat("http2.keepalive_timeout"), 1);

    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(live.get(&legate.url("/")).await.unwrap().status, 200);
    assert!(!live.sender.is_closed());
}

#[tokio::test]
async fn a_stream_reset_while_its_upstream_thinks_ends_alone() {
    let up = hanging_upstream().await;
    let legate = proxy(&up, "").await;
    let mut h = H2::connect(legate.addr).await;
    h.send(&get_on(1, "/hang", &[])).await;
    legate.wait_stat("cluster.c.upstream_rq_active", 1).await;
    h.send(&frame(RST_STREAM, 0, 1, &CANCEL.to_be_bytes()))
        .await;
    // The request ends at once, not when the upstream would have answered (10 s): its
    // upstream exchange is dropped with it and the stream counts as reset by the client.
    legate
        .wait_stat("http.ingress.downstream_rq_rx_reset", 1)
        .await;
    legate
        .wait_stat("http.ingress.downstream_rq_active", 0)
        .await;
    legate.wait_stat("cluster.c.upstream_rq_active", 0).await;
    // The connection carries on.
    h.send(&get_on(3, "/direct", &[])).await;
    match h.outcome(3, WAIT).await {
        Outcome::Status(s) => assert_eq!(s, 200),
        other => panic!("stream 3: {other:?}"),
    }
}

/// The SETTINGS legate sends first, as (identifier, value) pairs.
async fn server_settings(legate: &Legate) -> Vec<(u16, u32)> {
    let mut c = H2::connect(legate.addr).await;
    let f = c
        .until(WAIT, |f| f.kind == SETTINGS && f.flags & ACK == 0)
        .await
        .expect("server SETTINGS");
    f.payload
        .chunks(6)
        .map(|p| {
            (
                u16::from_be_bytes([p[0], p[1]]),
                u32::from_be_bytes([p[2], p[3], p[4], p[5]]),
            )
        })
        .collect()
}

#[tokio::test]
async fn http2_protocol_options_reach_the_client_in_settings() {
    let up = Upstream::echo("a").await;
    let legate = proxy(
        &up,
        "          http2_protocol_options: { hpack_table_size: 8192, max_concurrent_streams: 7, initial_stream_window_size: 131072 }",
    )
    .await;
    let s = server_settings(&legate).await;
    // HEADER_TABLE_SIZE, MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE.
    assert!(s.contains(&(0x1, 8192)), "{s:?}");
    assert!(s.contains(&(0x3, 7)), "{s:?}");
    assert!(s.contains(&(0x4, 131072)), "{s:?}");
    // A local reply over HTTP/2 carries its length and a date, as over HTTP/1.1.
    let c = H2Conn::open(legate.addr).await;
    let r = c.get(&legate.url("/direct")).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "hello");
    assert_eq!(r.header("content-length"), "5");
    assert!(r.header("date").ends_with(" GMT"), "{:?}", r.header("date"));
    others_served(&legate).await;
}
