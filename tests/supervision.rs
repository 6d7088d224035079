//! Supervision: a failing actor costs as little traffic as possible, restarts are counted, and a
//! manager that keeps failing stops the server.

use crate::common;
use common::*;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use legate::actors::messages::{ClusterManagerMsg, ListenerManagerMsg, RootMsg};
use std::time::Duration;

/// An upstream that answers after `delay` with `ok <name>`.
async fn slow_upstream(name: &'static str, delay: Duration) -> Upstream {
    Upstream::start(name, move |_req| async move {
        tokio::time::sleep(delay).await;
        Response::builder()
            .header("x-upstream", name)
            .body(full(format!("ok {name}")))
            .unwrap()
    })
    .await
}

async fn legate_for(up: &Upstream) -> Legate {
    Legate::start(&config(&route_all_to("svc"), &cluster("svc", &[up.addr]))).await
}

/// A request on a fresh connection, bounded; the status and body when one came back.
async fn try_get(url: &str) -> Option<(u16, String)> {
    let uri: http::Uri = url.parse().unwrap();
    let addr: std::net::SocketAddr = uri.authority().unwrap().as_str().parse().unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut c = Conn::open(addr).await;
        let r = c.get("x", uri.path()).await.ok()?;
        Some((r.status.as_u16(), r.text()))
    })
    .await
    .ok()
    .flatten()
}

fn get_req(path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", "x")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_connection_closes_only_itself() {
    let up = Upstream::echo("a").await;
    let legate = legate_for(&up).await;
    let mut conn1 = Conn::open(legate.addr).await;
    let mut conn2 = Conn::open(legate.addr).await;
    assert_eq!(conn1.get("x", "/1").await.unwrap().status, 200);
    assert_eq!(conn2.get("x", "/2").await.unwrap().status, 200);
    assert_eq!(legate.stat("supervisor.connection.failures"), 0);

    legate
        .server
        .root()
        .cast(RootMsg::ListenerManager(
            ListenerManagerMsg::InjectConnectionFault { peer: conn1.local },
        ))
        .unwrap();
    legate.wait_stat("supervisor.connection.failures", 1).await;

    // conn1 is gone: its next request fails rather than hanging or succeeding.
    let next = tokio::time::timeout(Duration::from_secs(5), conn1.get("x", "/1"))
        .await
        .expect("a request on the failed connection ends in time");
    assert!(
        next.is_err(),
        "the failed connection still answered: {:?}",
        next.map(|r| r.status)
    );

    // conn2 and new connections are untouched.
    for i in 0..3 {
        let r = conn2
            .get("x", &format!("/2/{i}"))
            .await
            .expect("conn2 still serves");
        assert_eq!(r.status, 200);
    }
    let r = get(&legate.url("/new")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-upstream"), "a");
    assert_eq!(legate.stat("supervisor.connection.failures"), 1);
    // A failed connection is not restarted, and no manager was.
    assert_eq!(legate.stat("supervisor.listener_manager.restarts"), 0);
    assert_eq!(legate.stat("supervisor.listener_manager.failures"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_manager_restart_keeps_traffic_flowing() {
    let up = slow_upstream("a", Duration::from_millis(500)).await;
    let legate = legate_for(&up).await;
    let mut conn = Conn::open(legate.addr).await;
    assert_eq!(conn.get("x", "/warm").await.unwrap().status, 200);

    // A request in flight while the manager fails and restarts.
    let addr = legate.addr;
    let in_flight = tokio::spawn(async move {
        let mut c = Conn::open(addr).await;
        tokio::time::timeout(Duration::from_secs(10), c.send(get_req("/during"))).await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    legate
        .server
        .root()
        .cast(RootMsg::ClusterManager(ClusterManagerMsg::InjectFault))
        .unwrap();
    legate
        .wait_stat("supervisor.cluster_manager.restarts", 1)
        .await;

    let r = in_flight
        .await
        .unwrap()
        .expect("in time")
        .expect("in-flight request survives");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "ok a");

    // After: the old keep-alive connection and new ones both reach the upstream.
    for i in 0..3 {
        let r = conn
            .get("x", &format!("/after/{i}"))
            .await
            .expect("keep-alive conn serves");
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "ok a");
    }
    assert_eq!(
        try_get(&legate.url("/new")).await,
        Some((200, "ok a".into()))
    );
    assert_eq!(legate.stat("supervisor.cluster_manager.failures"), 1);
    assert_eq!(legate.stat("supervisor.cluster_manager.restarts"), 1);
    assert_eq!(legate.stat("supervisor.listener_manager.restarts"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_manager_restart_keeps_traffic_flowing() {
    let up = slow_upstream("a", Duration::from_millis(500)).await;
    let legate = legate_for(&up).await;
    let mut conn = Conn::open(legate.addr).await;
    assert_eq!(conn.get("x", "/warm").await.unwrap().status, 200);

    let addr = legate.addr;
    let in_flight = tokio::spawn(async move {
        let mut c = Conn::open(addr).await;
        tokio::time::timeout(Duration::from_secs(10), c.send(get_req("/during"))).await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    legate
        .server
        .root()
        .cast(RootMsg::ListenerManager(ListenerManagerMsg::InjectFault))
        .unwrap();
    legate
        .wait_stat("supervisor.listener_manager.restarts", 1)
        .await;

    let r = in_flight
        .await
        .unwrap()
        .expect("in time")
        .expect("in-flight request survives");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "ok a");

    for i in 0..3 {
        let r = conn
            .get("x", &format!("/after/{i}"))
            .await
            .expect("keep-alive conn serves");
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "ok a");
    }
    // The listener still accepts after the restart.
    for _ in 0..3 {
        assert_eq!(
            try_get(&legate.url("/new")).await,
            Some((200, "ok a".into()))
        );
    }
    assert_eq!(legate.stat("supervisor.listener_manager.failures"), 1);
    assert_eq!(legate.stat("supervisor.listener_manager.restarts"), 1);
    assert_eq!(legate.stat("supervisor.cluster_manager.restarts"), 0);
    // Connections that merely outlived their manager are not connection failures.
    assert_eq!(legate.stat("supervisor.connection.failures"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_fault_after_a_listener_manager_restart_is_still_isolated() {
    let up = Upstream::echo("a").await;
    let legate = legate_for(&up).await;
    legate
        .server
        .root()
        .cast(RootMsg::ListenerManager(ListenerManagerMsg::InjectFault))
        .unwrap();
    legate
        .wait_stat("supervisor.listener_manager.restarts", 1)
        .await;

    let mut conn1 = Conn::open(legate.addr).await;
    let mut conn2 = Conn::open(legate.addr).await;
    assert_eq!(conn1.get("x", "/1").await.unwrap().status, 200);
    assert_eq!(conn2.get("x", "/2").await.unwrap().status, 200);
    legate
        .server
        .root()
        .cast(RootMsg::ListenerManager(
            ListenerManagerMsg::InjectConnectionFault { peer: conn1.local },
        ))
        .unwrap();
    legate.wait_stat("supervisor.connection.failures", 1).await;
    let next = tokio::time::timeout(Duration::from_secs(5), conn1.get("x", "/1"))
        .await
        .expect("in time");
    assert!(next.is_err(), "the failed connection still answered");
    assert_eq!(
        conn2.get("x", "/2").await.expect("conn2 serves").status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_failing_past_its_budget_stops_the_server() {
    let up = Upstream::echo("a").await;
    let mut legate = legate_for(&up).await;
    let root = legate.server.root().clone();
    // Five failures within the window are restarted...
    for i in 1..=5 {
        root.cast(RootMsg::ListenerManager(ListenerManagerMsg::InjectFault))
            .unwrap();
        legate
            .wait_stat("supervisor.listener_manager.restarts", i)
            .await;
        assert_eq!(
            try_get(&legate.url("/")).await.map(|r| r.0),
            Some(200),
            "serving after restart {i}"
        );
    }
    let still_up = tokio::time::timeout(Duration::from_millis(200), legate.server.wait()).await;
    assert!(
        still_up.is_err(),
        "the server stopped within its restart budget"
    );

    // ...the sixth is one too many: the root gives up and the server reports failure.
    root.cast(RootMsg::ListenerManager(ListenerManagerMsg::InjectFault))
        .unwrap();
    let failed = tokio::time::timeout(Duration::from_secs(10), legate.server.wait())
        .await
        .expect("the server stops after exhausting the restart budget");
    assert!(failed, "wait() must report that the actor tree failed");
    assert_eq!(legate.stat("supervisor.listener_manager.failures"), 6);
    assert_eq!(legate.stat("supervisor.listener_manager.restarts"), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_after_a_listener_manager_restart_reaches_older_connections() {
    let up = slow_upstream("a", Duration::from_millis(300)).await;
    let legate = legate_for(&up).await;
    // Two connections from before the restart: one idle, one with a request in flight at drain.
    let mut idle = Conn::open(legate.addr).await;
    let mut busy = Conn::open(legate.addr).await;
    assert_eq!(idle.get("x", "/").await.unwrap().status, 200);
    assert_eq!(busy.get("x", "/").await.unwrap().status, 200);
    legate
        .server
        .root()
        .cast(RootMsg::ListenerManager(ListenerManagerMsg::InjectFault))
        .unwrap();
    legate
        .wait_stat("supervisor.listener_manager.restarts", 1)
        .await;

    let in_flight = tokio::spawn(async move {
        let r = tokio::time::timeout(Duration::from_secs(10), busy.send(get_req("/last"))).await;
        (r, busy)
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let Legate { server, addr } = legate;
    let left = tokio::time::timeout(
        Duration::from_secs(10),
        server.shutdown(Duration::from_secs(5)),
    )
    .await
    .expect("shutdown finishes");
    assert_eq!(
        left, 0,
        "connections from before the restart were not drained"
    );

    let (r, _busy) = in_flight.await.unwrap();
    let r = r
        .expect("in time")
        .expect("the in-flight request completes during the drain");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "ok a");
    // The idle connection was closed by the drain.
    let next = tokio::time::timeout(Duration::from_secs(5), idle.get("x", "/"))
        .await
        .expect("in time");
    assert!(next.is_err(), "an idle connection survived the drain");
    // And the listener no longer accepts.
    let refused = tokio::time::timeout(Duration::from_secs(5), async {
        match tokio::net::TcpStream::connect(addr).await {
            Err(_) => true,
            Ok(s) => {
                let (mut c, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(
                    hyper_util::rt::TokioIo::new(s),
                )
                .await
                .unwrap();
                tokio::spawn(conn);
                c.send_request(get_req("/")).await.is_err()
            }
        }
    })
    .await
    .expect("in time");
    assert!(refused, "a new connection was served after the drain");
}
