//! WebSocket upgrades through legate (`upgrade_configs: [{ upgrade_type: websocket }]`): text
//! and binary echo, and a close from either side ending the proxied connection.

use crate::common;
use common::*;
use futures_util::SinkExt;
use std::time::Duration;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

const T: Duration = Duration::from_secs(10);

async fn ws_legate(up: &WsUpstream) -> Legate {
    Legate::start(&config_with(
        &route_all_to("ws"),
        &cluster("ws", &[up.addr]),
        WEBSOCKET_UPGRADE,
    ))
    .await
}

/// Text, binary (small and large) and empty messages come back unchanged, in order.
async fn echo_round_trips(ws: &mut WsClient) {
    for i in 0..5 {
        let text = format!("hello {i} ✓");
        let back = ws_roundtrip(ws, WsMessage::text(text.clone())).await;
        assert_eq!(back, WsMessage::text(text));
    }
    let bin: Vec<u8> = (0..=255u8).collect();
    assert_eq!(
        ws_roundtrip(ws, WsMessage::binary(bin.clone())).await,
        WsMessage::binary(bin)
    );
    let big = pattern_body(1 << 20);
    assert_eq!(
        ws_roundtrip(ws, WsMessage::binary(big.clone())).await,
        WsMessage::binary(big)
    );
    assert_eq!(
        ws_roundtrip(ws, WsMessage::text("")).await,
        WsMessage::text("")
    );
}

/// Read until the peer's close frame, then until the stream ends; the close frame.
async fn expect_close(ws: &mut WsClient) -> Option<CloseFrame> {
    let mut frame = None;
    for _ in 0..100 {
        match ws_next(ws, T).await {
            Some(Ok(WsMessage::Close(f))) => frame = f,
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => {}
            Some(Ok(m)) => panic!("unexpected message {m:?}"),
            // tungstenite reports the end of a closed connection as ConnectionClosed.
            Some(Err(tokio_tungstenite::tungstenite::Error::ConnectionClosed)) | None => {
                return frame
            }
            Some(Err(e)) => panic!("error after close: {e}"),
        }
    }
    panic!("the WebSocket did not end");
}

// ---------------------------------------------------------------------------------------------
// The harness itself, without legate.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_websocket_echo_and_close() {
    let up = WsUpstream::echo().await;
    let (mut ws, resp) = ws_connect(&format!("ws://{}/chat?x=1", up.addr))
        .await
        .expect("handshake");
    assert_eq!(resp.status(), 101);
    echo_round_trips(&mut ws).await;
    let (uri, headers) = up.last_handshake();
    assert_eq!(uri, "/chat?x=1");
    assert_eq!(headers["upgrade"], "websocket");

    // Client close: the server echoes the close frame and its session ends.
    ws.close(None).await.unwrap();
    expect_close(&mut ws).await;
    assert!(eventually(T, || up.ended() == 1).await);

    // Server close.
    let (mut ws, _) = ws_connect(&format!("ws://{}/", up.addr)).await.unwrap();
    ws.send(WsMessage::text("close-me")).await.unwrap();
    let frame = expect_close(&mut ws).await.expect("close frame");
    assert_eq!(frame.code, CloseCode::Normal);
    assert_eq!(frame.reason.as_str(), "bye");
    assert!(eventually(T, || up.ended() == 2).await);
    assert_eq!(up.sessions(), 2);
}

// ---------------------------------------------------------------------------------------------
// Through legate.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_and_binary_messages_echo_through_legate() {
    let up = WsUpstream::echo().await;
    let legate = ws_legate(&up).await;
    let (mut ws, resp) = ws_connect(&format!("ws://{}/chat?room=1", legate.addr))
        .await
        .expect("handshake through legate");
    assert_eq!(resp.status(), 101);
    assert_eq!(
        resp.headers()["upgrade"].to_str().unwrap().to_lowercase(),
        "websocket"
    );
    echo_round_trips(&mut ws).await;

    let (uri, headers) = up.last_handshake();
    assert_eq!(uri, "/chat?room=1");
    assert_eq!(
        headers["upgrade"].to_str().unwrap().to_lowercase(),
        "websocket"
    );
    assert!(headers.contains_key("sec-websocket-key"));
    assert_eq!(headers["host"].to_str().unwrap(), legate.addr.to_string());
    assert_eq!(up.sessions(), 1);
    legate
        .wait_stat("http.ingress.downstream_cx_upgrades_total", 1)
        .await;

    // A second WebSocket alongside the first, each with its own upstream session.
    let (mut ws2, _) = ws_connect(&format!("ws://{}/other", legate.addr))
        .await
        .unwrap();
    assert_eq!(
        ws_roundtrip(&mut ws2, WsMessage::text("two")).await,
        WsMessage::text("two")
    );
    assert_eq!(
        ws_roundtrip(&mut ws, WsMessage::text("one")).await,
        WsMessage::text("one")
    );
    assert_eq!(up.sessions(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_close_ends_the_proxied_connection() {
    let up = WsUpstream::echo().await;
    let legate = ws_legate(&up).await;
    let (mut ws, _) = ws_connect(&format!("ws://{}/", legate.addr)).await.unwrap();
    assert_eq!(
        ws_roundtrip(&mut ws, WsMessage::text("hi")).await,
        WsMessage::text("hi")
    );
    ws.close(Some(CloseFrame {
        code: CloseCode::Away,
        reason: "done".into(),
    }))
    .await
    .unwrap();
    // The upstream's reply to the close arrives, then the connection ends.
    let frame = expect_close(&mut ws).await.expect("close reply");
    assert_eq!(frame.code, CloseCode::Away);
    assert!(
        eventually(T, || up.ended() == 1).await,
        "upstream session did not end"
    );
    // The upstream closed its TCP connection after the close handshake (RFC 6455 §7.1.1: the
    // server closes first); legate passes that on to the client.
    assert!(
        ws_tcp_closed_by_peer(ws, T).await,
        "legate kept the client's connection open after the upstream closed"
    );
    legate
        .wait_stat("http.ingress.downstream_cx_upgrades_active", 0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_close_ends_the_proxied_connection() {
    let up = WsUpstream::echo().await;
    let legate = ws_legate(&up).await;
    let (mut ws, _) = ws_connect(&format!("ws://{}/", legate.addr)).await.unwrap();
    assert_eq!(
        ws_roundtrip(&mut ws, WsMessage::text("hi")).await,
        WsMessage::text("hi")
    );
    ws.send(WsMessage::text("close-me")).await.unwrap();
    let frame = expect_close(&mut ws)
        .await
        .expect("close frame from upstream");
    assert_eq!(frame.code, CloseCode::Normal);
    assert_eq!(frame.reason.as_str(), "bye");
    assert!(eventually(T, || up.ended() == 1).await);
    assert!(
        ws_tcp_closed_by_peer(ws, T).await,
        "legate kept the client's connection open after the upstream closed"
    );
    legate
        .wait_stat("http.ingress.downstream_cx_upgrades_active", 0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_vanishing_ends_the_upstream_connection() {
    let up = WsUpstream::echo().await;
    let legate = ws_legate(&up).await;
    let (mut ws, _) = ws_connect(&format!("ws://{}/", legate.addr)).await.unwrap();
    assert_eq!(
        ws_roundtrip(&mut ws, WsMessage::text("hi")).await,
        WsMessage::text("hi")
    );
    // No close handshake: the TCP connection just goes away.
    drop(ws);
    assert!(
        eventually(T, || up.ended() == 1).await,
        "upstream session outlived the client's connection"
    );
    legate
        .wait_stat("http.ingress.downstream_cx_upgrades_active", 0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_is_refused_without_upgrade_configs() {
    let up = WsUpstream::echo().await;
    let legate = Legate::start(&config(&route_all_to("ws"), &cluster("ws", &[up.addr]))).await;
    let res = ws_connect(&format!("ws://{}/", legate.addr)).await;
    assert!(
        res.is_err(),
        "WebSocket established without upgrade_configs"
    );
    assert_eq!(up.sessions(), 0);
}
