//! The integration-test harness: real upstream servers, a real legate, real clients, all on
//! 127.0.0.1 with ephemeral ports.
//!
//! ```ignore
//! let up = Upstream::echo("a").await;
//! let legate = Legate::start(&config(&route_to("c"), &cluster("c", &[&up]))).await;
//! let resp = get(&legate.url("/")).await;
//! ```
#![allow(dead_code)]

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use legate::bootstrap::{self, ConfigSource};
use legate::server::{Options, Server};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

pub type Body = BoxBody<Bytes, hyper::Error>;
type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> + Send + Sync,
>;

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// What an upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: HeaderMap,
}

/// A real HTTP/1.1 server on 127.0.0.1 that counts the connections and requests it gets.
pub struct Upstream {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    pub requests: Arc<AtomicUsize>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    /// Answers every request with 200, `x-upstream: <name>` and the request body echoed back.
    pub async fn echo(name: &'static str) -> Upstream {
        Upstream::start(name, move |req: Request<Incoming>| async move {
            let body = req.into_body().boxed();
            Response::builder()
                .header("x-upstream", name)
                .body(body)
                .unwrap()
        })
        .await
    }

    pub async fn start<F, Fut>(name: &'static str, handler: F) -> Upstream
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler: Handler = Arc::new(move |req| Box::pin(handler(req)));
        let (c, r, s) = (connections.clone(), requests.clone(), seen.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let (handler, r, s) = (handler.clone(), r.clone(), s.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        r.fetch_add(1, Ordering::SeqCst);
                        s.lock().unwrap().push(Seen {
                            method: req.method().to_string(),
                            uri: req.uri().to_string(),
                            headers: req.headers().clone(),
                        });
                        let fut = handler(req);
                        async move { Ok::<_, Infallible>(fut.await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream {
            name,
            addr,
            connections,
            requests,
            seen,
            task,
        }
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("upstream saw no request")
    }

    pub fn request_count(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// A port nothing listens on (bound, then released).
pub async fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

/// A legate server started in-process from YAML.
pub struct Legate {
    pub server: Server,
    pub addr: SocketAddr,
}

impl Legate {
    pub async fn start(yaml: &str) -> Legate {
        let config = bootstrap::load(&ConfigSource::yaml(yaml))
            .unwrap_or_else(|e| panic!("config rejected:\n{e}\n---\n{yaml}"));
        let first = config
            .listeners
            .first()
            .map(|l| l.name.clone())
            .unwrap_or_default();
        let server = Server::start(
            config,
            Options {
                concurrency: 2,
                ..Default::default()
            },
        )
        .await
        .expect("legate starts");
        let addr = server
            .listener_address(&first)
            .unwrap_or_else(|| "127.0.0.1:1".parse().unwrap());
        Legate { server, addr }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!(
            "http://{}{}",
            self.server.admin_address().expect("admin configured"),
            path
        )
    }

    /// A counter or gauge by its Envoy name; 0 when it was never created.
    pub fn stat(&self, name: &str) -> i64 {
        self.server.stats().value(name).unwrap_or(0)
    }

    /// Wait (bounded) until `stat(name) == want`; stats of a finishing request are written when
    /// its body ends, a moment after the client has read it.
    pub async fn wait_stat(&self, name: &str, want: i64) {
        for _ in 0..200 {
            if self.stat(name) == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(self.stat(name), want, "stat {name}");
    }
}

/// A bootstrap with one listener (`listener_0` on 127.0.0.1:0, stat prefix `ingress`), an admin
/// listener on port 0, the given virtual hosts (YAML list items, indented for the position) and
/// clusters.
pub fn config(virtual_hosts: &str, clusters: &str) -> String {
    config_with(virtual_hosts, clusters, "")
}

/// As [`config`], with extra connection-manager fields (e.g. an access log).
pub fn config_with(virtual_hosts: &str, clusters: &str, hcm_extra: &str) -> String {
    format!(
        r#"
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
static_resources:
  listeners:
  - name: listener_0
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          use_remote_address: true
{hcm_extra}
          http_filters:
          - name: envoy.filters.http.router
          route_config:
            name: local
            virtual_hosts:
{virtual_hosts}
  clusters:
{clusters}
"#
    )
}

/// A virtual host for `*` with one prefix route to `cluster`.
pub fn route_all_to(cluster: &str) -> String {
    format!(
        r#"            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: {cluster} }}
"#
    )
}

/// A STATIC cluster over the given upstream addresses.
pub fn cluster(name: &str, addrs: &[SocketAddr]) -> String {
    let mut eps = String::new();
    for a in addrs {
        eps.push_str(&format!(
            "        - endpoint: {{ address: {{ socket_address: {{ address: {}, port_value: {} }} }} }}\n",
            a.ip(),
            a.port()
        ));
    }
    if addrs.is_empty() {
        return format!("  - name: {name}\n    connect_timeout: 1s\n");
    }
    format!(
        "  - name: {name}\n    connect_timeout: 1s\n    load_assignment:\n      cluster_name: {name}\n      endpoints:\n      - lb_endpoints:\n{eps}"
    )
}

/// A response read whole.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// One HTTP/1.1 client connection, for tests that care which connection a request uses.
pub struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    pub local: SocketAddr,
    _task: tokio::task::JoinHandle<()>,
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).await.unwrap();
        let local = stream.local_addr().unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        Conn {
            sender,
            local,
            _task: task,
        }
    }

    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<Reply, hyper::Error> {
        self.sender.ready().await?;
        let resp = self.sender.send_request(req).await?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    pub async fn get(&mut self, host: &str, path: &str) -> Result<Reply, hyper::Error> {
        self.send(
            Request::get(path)
                .header("host", host)
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
    }
}

/// GET on a new connection, with a bound on the whole exchange.
pub async fn get(url: &str) -> Reply {
    request(Request::get(url).body(Full::new(Bytes::new())).unwrap()).await
}

/// Send `req` (absolute URL) on a new connection; `Host` comes from the URL unless set.
pub async fn request(mut req: Request<Full<Bytes>>) -> Reply {
    let uri = req.uri().clone();
    let authority = uri.authority().expect("absolute URL").clone();
    if !req.headers().contains_key("host") {
        req.headers_mut()
            .insert("host", authority.as_str().parse().unwrap());
    }
    *req.uri_mut() = uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .parse()
        .unwrap();
    let addr: SocketAddr = tokio::net::lookup_host(authority.as_str())
        .await
        .unwrap()
        .next()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(30), async {
        let mut conn = Conn::open(addr).await;
        conn.send(req).await.expect("response")
    })
    .await
    .expect("request finished in time")
}

// ---------------------------------------------------------------------------------------------
// The real binary: for the command line, signals and process-level properties (memory).

/// A port that was free a moment ago (bound on 127.0.0.1, then released), for configs that
/// must name their ports up front.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The path of the `legate` binary cargo built for these tests.
pub const LEGATE_BIN: &str = env!("CARGO_BIN_EXE_legate");

/// A file in the temp directory, removed on drop.
pub struct TempFile {
    pub path: std::path::PathBuf,
}

impl TempFile {
    /// `name` should be unique per test; the process id keeps parallel test runs apart.
    pub fn new(name: &str, contents: &str) -> TempFile {
        let path = std::env::temp_dir().join(format!("legate-test-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        TempFile { path }
    }

    pub fn path_str(&self) -> &str {
        self.path.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What a finished run of the binary printed.
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Run the binary to completion (bounded: killed after 30 s).
pub async fn run_legate(args: &[&str]) -> Output {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(LEGATE_BIN)
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("legate exited in time")
    .expect("legate runs");
    Output {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A serving legate process. Killed (SIGKILL) when dropped unless it already exited.
pub struct LegateProcess {
    pub child: tokio::process::Child,
    pub pid: i32,
    stderr: Arc<Mutex<String>>,
    _reader: tokio::task::JoinHandle<()>,
}

impl LegateProcess {
    /// Start `legate <args>`; stdout (access logs) is discarded, stderr (logs) is kept.
    pub fn spawn(args: &[&str]) -> LegateProcess {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new(LEGATE_BIN)
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("legate starts");
        let pid = child.id().expect("running") as i32;
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let sink = stderr.clone();
        let reader = tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        LegateProcess {
            child,
            pid,
            stderr,
            _reader: reader,
        }
    }

    /// Everything the process logged so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The first log line containing `needle`, waiting up to `timeout` for it.
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(line) = self.stderr().lines().find(|l| l.contains(needle)) {
                return Some(line.to_string());
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait (bounded) until something accepts connections on `addr`; panics with the logs if not.
    pub async fn wait_listening(&mut self, addr: SocketAddr) {
        for _ in 0..250 {
            if TcpStream::connect(addr).await.is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "legate exited with {status} before listening:\n{}",
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("legate is not listening on {addr}:\n{}", self.stderr());
    }

    /// The exit status, if the process ends within `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .ok()
            .map(|r| r.expect("wait"))
    }

    /// Resident set size in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid)).expect("/proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc status")
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid; no memory is shared.
        let rc = unsafe { libc::kill(self.pid, sig) };
        assert_eq!(rc, 0, "kill({}, {sig})", self.pid);
    }
}

/// A complete bootstrap (as [`config`]) with `listener_0` on `listen_port` routing everything to
/// cluster `svc` = `upstream`, and admin on `admin_port`.
pub fn standalone_config(listen_port: u16, admin_port: u16, upstream: SocketAddr) -> String {
    let yaml = config(&route_all_to("svc"), &cluster("svc", &[upstream]));
    let yaml = yaml.replace(
        "admin:\n  address: { socket_address: { address: 127.0.0.1, port_value: 0 } }",
        &format!("admin:\n  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin_port} }} }}"),
    )
    .replace(
        "    address: { socket_address: { address: 127.0.0.1, port_value: 0 } }\n    filter_chains",
        &format!("    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {listen_port} }} }}\n    filter_chains"),
    );
    assert!(
        yaml.contains(&format!("port_value: {listen_port} "))
            && yaml.contains(&format!("port_value: {admin_port} ")),
        "standalone_config out of step with config():\n{yaml}"
    );
    yaml
}
