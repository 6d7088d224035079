//! gRPC through legate: the four call kinds over an HTTP/2 cluster, statuses and trailers passed
//! through, deadlines (`grpc-timeout`) and cancellation, and legate's own gRPC local replies
//! (trailers-only, HTTP 200 with `grpc-status`).

use crate::common;
use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;
use std::time::{Duration, Instant};
use tonic::Code;

const T: Duration = Duration::from_secs(20);

async fn bounded<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(T, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: not done in {T:?}"))
}

fn numbered(n: i64) -> Vec<EchoRequest> {
    (1..=n)
        .map(|i| EchoRequest {
            message: format!("m{i};"),
            number: i,
            ..Default::default()
        })
        .collect()
}

/// Every call kind against `client`, whose server must be the echo service.
async fn all_four_kinds(client: &mut GrpcClient) {
    // Unary.
    let r = bounded("unary", client.unary(EchoRequest::msg("hello"), None))
        .await
        .expect("unary");
    assert_eq!(r.message, "hello");

    // A unary call with a large message (several DATA frames, beyond one flow-control window).
    let big = "x".repeat(300_000);
    let r = bounded("unary big", client.unary(EchoRequest::msg(&big), None))
        .await
        .expect("unary big");
    assert_eq!(r.message, big);

    // Server streaming.
    let req = EchoRequest {
        message: "s".into(),
        count: 5,
        ..Default::default()
    };
    let (replies, end) = bounded("server stream", client.server_stream(req, None)).await;
    end.expect("server stream ends OK");
    let got: Vec<_> = replies.iter().map(|r| r.message.as_str()).collect();
    assert_eq!(got, ["s-0", "s-1", "s-2", "s-3", "s-4"]);

    // Client streaming.
    let r = bounded("client stream", client.client_stream(numbered(10), None))
        .await
        .expect("client stream");
    assert_eq!(r.count, 10);
    assert_eq!(r.sum, 55);
    assert_eq!(r.message, "m1;m2;m3;m4;m5;m6;m7;m8;m9;m10;");

    // Bidi, all requests up front.
    let (replies, end) = bounded("bidi", client.bidi(numbered(4), None)).await;
    end.expect("bidi ends OK");
    let got: Vec<_> = replies.iter().map(|r| r.message.as_str()).collect();
    assert_eq!(got, ["m1;", "m2;", "m3;", "m4;"]);

    // Bidi in lock step: each echo must arrive before the next request is sent, so neither
    // direction may be buffered to its end.
    let (tx, mut replies) = bounded("bidi open", client.bidi_open(None))
        .await
        .expect("bidi open");
    for i in 0..5u32 {
        tx.send(EchoRequest::msg(&format!("ping {i}")))
            .await
            .unwrap();
        let r = tokio::time::timeout(Duration::from_secs(5), replies.message())
            .await
            .expect("echo before the next request is sent")
            .expect("bidi message")
            .expect("bidi reply");
        assert_eq!(r.message, format!("ping {i}"));
        assert_eq!(r.index, i);
    }
    drop(tx);
    let end = bounded("bidi end", replies.message())
        .await
        .expect("ends OK");
    assert!(end.is_none());
}

fn grpc_config(cluster_yaml: &str) -> String {
    config(&route_all_to("grpc"), cluster_yaml)
}

// ---------------------------------------------------------------------------------------------
// The harness itself, without legate.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_grpc_client_to_grpc_upstream() {
    let (addr, counters) = GrpcUpstream::start().await;
    let mut client = GrpcClient::connect(addr).await;
    all_four_kinds(&mut client).await;
    let mut raw = GrpcClient::connect_raw(addr).await;
    all_four_kinds(&mut raw).await;
    assert_eq!(counters.calls(), 12);
    assert_eq!(counters.completed(), 12);
    assert_eq!(counters.cancelled(), 0);
    assert_eq!(counters.connections(), 2);
    let (version, uri, headers) = counters.last();
    assert_eq!(version, http::Version::HTTP_2);
    assert_eq!(uri.path(), GRPC_BIDI);
    assert_eq!(headers["content-type"], "application/grpc");
    assert_eq!(headers["te"], "trailers");

    // The same service behind tonic's own server.
    let tonic_up = GrpcUpstream::start_tonic().await;
    let mut client = GrpcClient::connect(tonic_up.addr).await;
    all_four_kinds(&mut client).await;
    assert_eq!(tonic_up.counters.completed(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_grpc_status_deadline_and_cancellation() {
    let (addr, counters) = GrpcUpstream::start().await;
    let mut client = GrpcClient::connect_raw(addr).await;

    // A failed call's status, message and trailer metadata.
    let req = EchoRequest {
        fail_code: Code::NotFound as i32,
        fail_message: "no such thing: ünïcode 100%".into(),
        ..Default::default()
    };
    let status = client.unary(req, None).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), "no such thing: ünïcode 100%");
    assert_eq!(status.metadata().get(GRPC_FAIL_TRAILER).unwrap(), "yes");

    // With no proxy in between, nothing enforces a deadline on the raw client: the call runs.
    let req = EchoRequest {
        message: "late".into(),
        sleep_ms: 300,
        ..Default::default()
    };
    let r = client
        .unary(req, Some(Duration::from_millis(100)))
        .await
        .expect("the upstream does not enforce grpc-timeout");
    assert_eq!(r.message, "late");
    assert_eq!(counters.last().2["grpc-timeout"], "100000u");

    // Dropping a call resets its stream: the handler is dropped.
    let before = counters.cancelled();
    let req = EchoRequest {
        message: "slow".into(),
        count: 50,
        sleep_ms: 100,
        ..Default::default()
    };
    let mut stream = client.server_stream_open(req, None).await.unwrap();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.message, "slow-0");
    drop(stream);
    assert!(
        counters
            .wait_cancelled(before + 1, Duration::from_secs(5))
            .await,
        "upstream handler not dropped"
    );
}

// ---------------------------------------------------------------------------------------------
// Through legate.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_four_call_kinds_through_legate() {
    let (addr, counters) = GrpcUpstream::start().await;
    let legate = Legate::start(&grpc_config(&h2_cluster("grpc", &[addr]))).await;
    let mut client = GrpcClient::connect(legate.addr).await;
    all_four_kinds(&mut client).await;
    assert_eq!(counters.calls(), 6);
    assert_eq!(counters.completed(), 6);
    assert_eq!(counters.cancelled(), 0);
    let (version, uri, headers) = counters.last();
    assert_eq!(version, http::Version::HTTP_2);
    assert_eq!(uri.path(), GRPC_BIDI);
    assert_eq!(headers["content-type"], "application/grpc");
    assert_eq!(headers["te"], "trailers", "TE: trailers is kept for gRPC");
    assert!(legate.stat("cluster.grpc.upstream_cx_http2_total") > 0);
    legate
        .wait_stat("http.ingress.downstream_rq_http2_total", 6)
        .await;

    // The same calls on a bare HTTP/2 connection.
    let mut raw = GrpcClient::connect_raw(legate.addr).await;
    all_four_kinds(&mut raw).await;
    assert_eq!(counters.completed(), 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_status_message_and_trailers_pass_through() {
    let (addr, _counters) = GrpcUpstream::start().await;
    let legate = Legate::start(&grpc_config(&h2_cluster("grpc", &[addr]))).await;
    let mut client = GrpcClient::connect(legate.addr).await;

    // Unary: tonic answers an error as trailers-only (status in the response headers).
    let msg = "no such thing: ünïcode 100% \"quoted\"";
    let req = EchoRequest {
        fail_code: Code::NotFound as i32,
        fail_message: msg.into(),
        ..Default::default()
    };
    let status = bounded("unary", client.unary(req, None)).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(status.message(), msg);
    assert_eq!(status.metadata().get(GRPC_FAIL_TRAILER).unwrap(), "yes");

    // Server streaming: two messages, then the status in real HTTP/2 trailers.
    let req = EchoRequest {
        message: "s".into(),
        count: 2,
        fail_code: Code::ResourceExhausted as i32,
        fail_message: "quota spent".into(),
        ..Default::default()
    };
    let (replies, end) = bounded("server stream", client.server_stream(req, None)).await;
    assert_eq!(replies.len(), 2);
    let status = end.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(status.message(), "quota spent");
    assert_eq!(status.metadata().get(GRPC_FAIL_TRAILER).unwrap(), "yes");

    // Client streaming ending in an error after reading everything.
    let mut reqs = numbered(3);
    reqs[1].fail_code = Code::InvalidArgument as i32;
    reqs[1].fail_message = "bad second".into();
    let status = bounded("client stream", client.client_stream(reqs, None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "bad second");

    // The raw response: HTTP 200 with grpc-status/grpc-message as the upstream sent them.
    let conn = H2Conn::open(legate.addr).await;
    let r = bounded(
        "raw",
        conn.send(grpc_raw_request(
            GRPC_UNARY,
            &EchoRequest {
                fail_code: Code::PermissionDenied as i32,
                fail_message: "nope".into(),
                ..Default::default()
            },
        )),
    )
    .await
    .unwrap()
    .0;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("grpc-status"), "7");
    assert_eq!(r.header("grpc-message"), "nope");
}

/// A unary gRPC request by hand: the message framed (no compression) for `path`.
fn grpc_raw_request(path: &str, msg: &EchoRequest) -> Request<Full<Bytes>> {
    use prost::Message as _;
    let payload = msg.encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    framed.extend_from_slice(&payload);
    Request::post(format!("http://example.test{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from(framed)))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_shorter_than_the_call_is_deadline_exceeded_and_cancels_upstream() {
    let (addr, counters) = GrpcUpstream::start().await;
    let legate = Legate::start(&grpc_config(&h2_cluster("grpc", &[addr]))).await;
    // The raw client only sends grpc-timeout; the status it gets is legate's.
    let mut client = GrpcClient::connect_raw(legate.addr).await;
    let req = EchoRequest {
        message: "late".into(),
        sleep_ms: 10_000,
        ..Default::default()
    };
    let start = Instant::now();
    let status = bounded(
        "deadline",
        client.unary(req, Some(Duration::from_millis(300))),
    )
    .await
    .unwrap_err();
    let took = start.elapsed();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(took >= Duration::from_millis(250), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(counters.calls(), 1);
    assert!(
        counters.wait_cancelled(1, Duration::from_secs(5)).await,
        "the upstream call was not cancelled"
    );
    assert_eq!(counters.completed(), 0);

    // A deadline that is long enough does not interfere.
    let req = EchoRequest {
        message: "in time".into(),
        sleep_ms: 50,
        ..Default::default()
    };
    let r = bounded("in time", client.unary(req, Some(Duration::from_secs(5))))
        .await
        .expect("in time");
    assert_eq!(r.message, "in time");

    // With tonic's Channel the client's own timer races legate's: either way the call fails
    // with a deadline status and the upstream handler is dropped.
    let mut channel_client = GrpcClient::connect(legate.addr).await;
    let req = EchoRequest {
        message: "late".into(),
        sleep_ms: 10_000,
        ..Default::default()
    };
    let status = bounded(
        "channel deadline",
        channel_client.unary(req, Some(Duration::from_millis(300))),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    assert!(
        counters.wait_cancelled(2, Duration::from_secs(5)).await,
        "the second upstream call was not cancelled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_abandoning_a_stream_cancels_it_upstream() {
    let (addr, counters) = GrpcUpstream::start().await;
    let legate = Legate::start(&grpc_config(&h2_cluster("grpc", &[addr]))).await;
    let mut client = GrpcClient::connect(legate.addr).await;
    // No deadline anywhere: only the client's RST_STREAM can end this call early.
    let req = EchoRequest {
        message: "slow".into(),
        count: 100,
        sleep_ms: 100,
        ..Default::default()
    };
    let mut stream = bounded("open", client.server_stream_open(req, None))
        .await
        .unwrap();
    let first = bounded("first", stream.message()).await.unwrap().unwrap();
    assert_eq!(first.message, "slow-0");
    drop(stream);
    assert!(
        counters.wait_cancelled(1, Duration::from_secs(5)).await,
        "the upstream stream outlived the client's"
    );
    // Envoy's codec stat for a stream the downstream reset.
    legate.wait_stat("http2.rx_reset", 1).await;

    // Bidi abandoned mid-call.
    let (tx, mut replies) = bounded("bidi", client.bidi_open(None)).await.unwrap();
    tx.send(EchoRequest::msg("one")).await.unwrap();
    let r = bounded("bidi reply", replies.message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.message, "one");
    // The next request keeps the handler busy for 3 s. Dropping the call now ends the request
    // side (END_STREAM) and resets the stream; the busy handler cannot finish on the former
    // before the reset drops it.
    tx.send(EchoRequest {
        message: "two".into(),
        sleep_ms: 3_000,
        ..Default::default()
    })
    .await
    .unwrap();
    // Give it time to reach the handler.
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(replies);
    drop(tx);
    assert!(
        counters.wait_cancelled(2, Duration::from_secs(2)).await,
        "the upstream bidi call outlived the client's"
    );
    // The connection is still good for new calls.
    let r = bounded("after", client.unary(EchoRequest::msg("after"), None))
        .await
        .unwrap();
    assert_eq!(r.message, "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_without_endpoints_is_unavailable() {
    let legate = Legate::start(&grpc_config(&h2_cluster("grpc", &[]))).await;
    let mut client = GrpcClient::connect(legate.addr).await;
    let status = bounded("unary", client.unary(EchoRequest::msg("x"), None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let (_, end) = bounded(
        "server stream",
        client.server_stream(
            EchoRequest {
                count: 3,
                ..Default::default()
            },
            None,
        ),
    )
    .await;
    assert_eq!(end.unwrap_err().code(), Code::Unavailable);

    // On the wire: a trailers-only gRPC reply (HTTP 200, grpc-status 14), as Envoy sends.
    let conn = H2Conn::open(legate.addr).await;
    let (r, _) = bounded(
        "raw",
        conn.send(grpc_raw_request(GRPC_UNARY, &EchoRequest::msg("x"))),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), "application/grpc");
    assert_eq!(r.header("grpc-status"), "14");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_is_unimplemented() {
    let (addr, counters) = GrpcUpstream::start().await;
    let vhosts = r#"            - name: grpc
              domains: ["*"]
              routes:
              - match: { prefix: "/legate.test.Echo/Unary" }
                route: { cluster: grpc }
"#;
    let legate = Legate::start(&config(vhosts, &h2_cluster("grpc", &[addr]))).await;
    let mut client = GrpcClient::connect(legate.addr).await;
    // The routed method works ...
    let r = bounded("unary", client.unary(EchoRequest::msg("routed"), None))
        .await
        .unwrap();
    assert_eq!(r.message, "routed");
    // ... the others have no route.
    let status = bounded("client stream", client.client_stream(numbered(2), None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    let (_, end) = bounded("bidi", client.bidi(numbered(2), None)).await;
    assert_eq!(end.unwrap_err().code(), Code::Unimplemented);
    assert_eq!(counters.calls(), 1, "unrouted calls reached the upstream");

    // On the wire: HTTP 200 with grpc-status 12, not a bare 404.
    let conn = H2Conn::open(legate.addr).await;
    let (r, _) = bounded(
        "raw",
        conn.send(grpc_raw_request(GRPC_SERVER_STREAM, &EchoRequest::msg("x"))),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("grpc-status"), "12");
    legate.wait_stat("http.ingress.no_route", 3).await;
}
