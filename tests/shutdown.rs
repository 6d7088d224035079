//! Graceful shutdown of the real process: SIGTERM drains (in-flight requests finish, new
//! connections are refused, idle ones closed) and exits 0; so does `POST /quitquitquit`.

use crate::common;
use common::*;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;

/// The body the slow upstream answers with: big enough to span many writes.
fn slow_body() -> Vec<u8> {
    (0..256 * 1024u32).map(|i| (i % 251) as u8).collect()
}

/// An upstream that answers every request after 1.5 s with [`slow_body`]: requests stay in
/// flight while legate is told to stop.
async fn slow_upstream() -> Upstream {
    Upstream::start("slow", |_req| async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        Response::builder().body(full(slow_body())).unwrap()
    })
    .await
}

/// Wait (at most 2.5 s) until the upstream has seen `n` requests; fail with `what` otherwise.
async fn wait_upstream_requests(up: &Upstream, n: usize, what: &str) {
    for _ in 0..250 {
        if up.request_count() == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(up.request_count(), n, "{what}");
}

/// SIGTERM, then wait (at most 5 s) until legate logs that it is draining.
async fn sigterm_until_draining(legate: &mut LegateProcess) {
    legate.signal(libc::SIGTERM);
    legate
        .wait_for_log("draining", Duration::from_secs(5))
        .await
        .unwrap_or_else(|| panic!("no drain logged:\n{}", legate.stderr()));
}

/// Starts a legate process in front of `up`; returns it with its listener and admin addresses.
async fn start(up: &Upstream) -> (LegateProcess, SocketAddr, SocketAddr) {
    let (port, admin) = (free_port(), free_port());
    let yaml = standalone_config(port, admin, up.addr);
    let mut legate = LegateProcess::spawn(&["--config-yaml", &yaml, "--concurrency", "1"]);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    legate.wait_listening(addr).await;
    legate.wait_listening(admin).await;
    (legate, addr, admin)
}

fn get_req(path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", "x")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// Whether a new connection to `addr` gets an HTTP response (bounded).
async fn served(addr: SocketAddr) -> bool {
    tokio::time::timeout(Duration::from_secs(2), async {
        let Ok(stream) = TcpStream::connect(addr).await else {
            return false;
        };
        let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        else {
            return false;
        };
        tokio::spawn(conn);
        sender.send_request(get_req("/new")).await.is_ok()
    })
    .await
    .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let up = slow_upstream().await;
    let (mut legate, addr, _admin) = start(&up).await;

    // An idle keep-alive connection: the drain must close it rather than wait for it.
    let mut idle = Conn::open(addr).await;
    let warm = tokio::time::timeout(Duration::from_secs(10), idle.get("x", "/warm"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(warm.status, 200);

    let mut busy = Conn::open(addr).await;
    let in_flight = tokio::spawn(async move {
        tokio::time::timeout(Duration::from_secs(15), busy.send(get_req("/in-flight"))).await
    });
    // The request has reached the upstream: it is in flight.
    wait_upstream_requests(&up, 2, "the in-flight request never reached the upstream").await;

    sigterm_until_draining(&mut legate).await;

    // New connections are turned away while the in-flight request is still running.
    let mut refused = false;
    for _ in 0..50 {
        if !served(addr).await {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "new connections were still served after SIGTERM");
    assert!(
        !in_flight.is_finished(),
        "the in-flight request ended before the drain was checked"
    );

    let r = in_flight
        .await
        .unwrap()
        .expect("the in-flight request finished in time")
        .expect("the in-flight request completed");
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), slow_body().len());
    assert!(r.body == slow_body(), "the in-flight body was corrupted");
    assert_eq!(
        r.header("connection"),
        "close",
        "a draining connection announces its close"
    );

    // The idle connection was closed by the drain.
    let next = tokio::time::timeout(Duration::from_secs(5), idle.get("x", "/after"))
        .await
        .expect("in time");
    assert!(
        next.is_err(),
        "an idle connection was still served after the drain"
    );

    let status = legate
        .wait_exit(Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("legate did not exit after draining:\n{}", legate.stderr()));
    assert_eq!(status.code(), Some(0), "{}", legate.stderr());
    assert_eq!(
        up.request_count(),
        2,
        "a request after the drain reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_when_idle_exits_zero_promptly() {
    let up = Upstream::echo("a").await;
    let (mut legate, addr, _admin) = start(&up).await;
    let mut idle = Conn::open(addr).await;
    assert_eq!(idle.get("x", "/").await.unwrap().status, 200);
    legate.signal(libc::SIGTERM);
    // The default drain time is 600 s; open but idle connections must not hold the exit up.
    let status = legate
        .wait_exit(Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("legate did not exit:\n{}", legate.stderr()));
    assert_eq!(status.code(), Some(0), "{}", legate.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quitquitquit_exits_zero() {
    let up = Upstream::echo("a").await;
    let (mut legate, addr, admin) = start(&up).await;
    assert_eq!(get(&format!("http://{addr}/")).await.status, 200);

    // GET is refused: the process keeps serving.
    let r = get(&format!("http://{admin}/quitquitquit")).await;
    assert!(
        r.status.is_client_error(),
        "GET /quitquitquit: {}",
        r.status
    );
    assert_eq!(get(&format!("http://{addr}/")).await.status, 200);
    assert!(
        legate.child.try_wait().unwrap().is_none(),
        "a GET stopped the server"
    );

    let r = request(
        Request::post(format!("http://{admin}/quitquitquit"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    let status = legate
        .wait_exit(Duration::from_secs(10))
        .await
        .unwrap_or_else(|| {
            panic!(
                "legate did not exit after /quitquitquit:\n{}",
                legate.stderr()
            )
        });
    assert_eq!(status.code(), Some(0), "{}", legate.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_as_soon_as_the_listener_accepts_still_exits_zero() {
    let up = Upstream::echo("a").await;
    let port = free_port();
    let yaml = standalone_config(port, free_port(), up.addr);
    let mut legate = LegateProcess::spawn(&["--config-yaml", &yaml, "--concurrency", "1"]);
    // The listener accepting is the earliest sign of life an orchestrator could act on.
    // Poll tightly (blocking this test thread only): the signal should land as soon after the
    // listener accepts as possible, while the process may still be starting up.
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    for _ in 0..10_000 {
        if std::net::TcpStream::connect(addr).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    legate.signal(libc::SIGTERM);
    let status = legate
        .wait_exit(Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("legate did not exit:\n{}", legate.stderr()));
    assert_eq!(status.code(), Some(0), "{status}: {}", legate.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_http2_streams_in_flight_finish_then_sends_goaway() {
    let up = slow_upstream().await;
    let (mut legate, addr, _admin) = start(&up).await;

    let client = H2Conn::open(addr).await;
    let url = format!("http://{addr}/in-flight");
    let in_flight = {
        let mut sender = client.sender.clone();
        let req = Request::get(url.as_str())
            .body(Full::new(Bytes::new()))
            .unwrap();
        tokio::spawn(async move {
            tokio::time::timeout(Duration::from_secs(15), async move {
                let resp = sender.send_request(req).await?;
                let (parts, body) = resp.into_parts();
                let body = http_body_util::BodyExt::collect(body).await?.to_bytes();
                Ok::<_, hyper::Error>((parts.status, body))
            })
            .await
        })
    };
    wait_upstream_requests(&up, 1, "the stream never reached the upstream").await;

    sigterm_until_draining(&mut legate).await;

    // The stream in flight when the drain began completes, whole.
    let (status, body) = in_flight
        .await
        .unwrap()
        .expect("the in-flight stream finished in time")
        .expect("the in-flight stream completed");
    assert_eq!(status, 200);
    assert!(body == slow_body(), "the in-flight body was corrupted");

    // The connection was told to go away: hyper's client sees it closed.
    let mut closed = false;
    for _ in 0..250 {
        if client.sender.is_closed() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(closed, "the HTTP/2 connection outlived the drain");
    let status = legate
        .wait_exit(Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("legate did not exit after draining:\n{}", legate.stderr()));
    assert_eq!(status.code(), Some(0), "{}", legate.stderr());
    assert_eq!(up.request_count(), 1);
}
