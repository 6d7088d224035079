//! The integration-test harness: real upstream servers, a real legate, real clients, all on
//! 127.0.0.1 with ephemeral ports.
//!
//! ```ignore
//! let up = Upstream::echo("a").await;
//! let legate = Legate::start(&config(&route_to("c"), &cluster("c", &[&up]))).await;
//! let resp = get(&legate.url("/")).await;
//! ```
#![allow(dead_code)]

pub mod h1wire;
pub mod raw;

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
        Upstream::serve(name, None, handler).await
    }

    /// The server behind [`Upstream::start`] (`h2: None`, HTTP/1.1) and [`Upstream::start_h2`]
    /// (`h2: Some(max_concurrent_streams)`, h2c prior knowledge).
    async fn serve<F, Fut>(name: &'static str, h2: Option<Option<u32>>, handler: F) -> Upstream
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
                    match h2 {
                        None => {
                            let _ = hyper::server::conn::http1::Builder::new()
                                .timer(TokioTimer::new())
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        }
                        Some(max_streams) => {
                            let mut builder =
                                hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                            builder.timer(TokioTimer::new());
                            if let Some(n) = max_streams {
                                builder.max_concurrent_streams(n);
                            }
                            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                        }
                    }
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

/// An address where every connection is refused: its port stays bound, without listening, for
/// as long as this lives, so that no other test running alongside can take it.
pub struct RefusedAddr {
    _socket: tokio::net::TcpSocket,
    pub addr: SocketAddr,
}

impl RefusedAddr {
    pub fn new() -> RefusedAddr {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = socket.local_addr().unwrap();
        RefusedAddr {
            _socket: socket,
            addr,
        }
    }
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

/// As [`config`], with network filters (YAML list items at the chain's `filters` indentation,
/// e.g. `      - name: envoy.filters.network.rbac`) placed before the connection manager.
pub fn config_with_network_filters(
    virtual_hosts: &str,
    clusters: &str,
    network_filters: &str,
) -> String {
    let hcm = "      - name: envoy.filters.network.http_connection_manager\n";
    let yaml = config(virtual_hosts, clusters);
    assert!(
        yaml.contains(hcm),
        "config() out of step with config_with_network_filters"
    );
    yaml.replacen(hcm, &format!("{}\n{hcm}", network_filters.trim_end()), 1)
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

// ---------------------------------------------------------------------------------------------
// HTTP/2: h2c (prior knowledge) upstreams and clients.

use hyper_util::rt::TokioExecutor;

impl Seen {
    /// The authority the request named: the URI's (HTTP/2 `:authority`), else the `Host` header.
    pub fn authority(&self) -> String {
        if let Some(a) = self
            .uri
            .parse::<http::Uri>()
            .ok()
            .and_then(|u| u.authority().map(|a| a.as_str().to_string()))
        {
            return a;
        }
        self.headers
            .get("host")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    }

    /// The path and query the request named.
    pub fn path(&self) -> String {
        self.uri
            .parse::<http::Uri>()
            .ok()
            .and_then(|u| u.path_and_query().map(|p| p.as_str().to_string()))
            .unwrap_or_default()
    }
}

/// The echo of [`Upstream::echo`], also reporting the request's version in
/// `x-upstream-version` (`HTTP/1.1`, `HTTP/2.0`), answering after `delay`.
fn versioned_echo(
    name: &'static str,
    delay: Duration,
) -> impl Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>>
       + Send
       + Sync
       + 'static {
    move |req: Request<Incoming>| {
        Box::pin(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let version = format!("{:?}", req.version());
            let body = req.into_body().boxed();
            Response::builder()
                .header("x-upstream", name)
                .header("x-upstream-version", version)
                .body(body)
                .unwrap()
        })
    }
}

impl Upstream {
    /// An HTTP/1.1 echo as [`Upstream::echo`] that also sets `x-upstream-version`.
    pub async fn h1_echo(name: &'static str) -> Upstream {
        Upstream::start(name, versioned_echo(name, Duration::ZERO)).await
    }

    /// An HTTP/2 (h2c, prior knowledge) echo: `x-upstream: <name>`, `x-upstream-version`, the
    /// request body echoed back.
    pub async fn h2_echo(name: &'static str) -> Upstream {
        Upstream::start_h2(name, None, versioned_echo(name, Duration::ZERO)).await
    }

    /// As [`Upstream::h2_echo`], advertising SETTINGS_MAX_CONCURRENT_STREAMS = `max_streams`
    /// and answering each request only after `delay` (so streams overlap).
    pub async fn h2_with(name: &'static str, max_streams: u32, delay: Duration) -> Upstream {
        Upstream::start_h2(name, Some(max_streams), versioned_echo(name, delay)).await
    }

    /// A real HTTP/2 (h2c, prior knowledge) server on 127.0.0.1; counts connections and requests
    /// like [`Upstream::start`]. `Seen::uri` is absolute (`http://authority/path`).
    pub async fn start_h2<F, Fut>(
        name: &'static str,
        max_streams: Option<u32>,
        handler: F,
    ) -> Upstream
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        Upstream::serve(name, Some(max_streams), handler).await
    }
}

/// One HTTP/2 client connection (h2c, prior knowledge). Requests need absolute URIs
/// (`http://host/path`): the authority becomes `:authority`. Cheap to share: `send` takes
/// `&self` and runs on a clone of the connection's handle, so many streams can be open at once.
pub struct H2Conn {
    pub sender: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    pub local: SocketAddr,
    _task: tokio::task::JoinHandle<()>,
}

impl H2Conn {
    pub async fn open(addr: SocketAddr) -> H2Conn {
        H2Conn::open_with(
            addr,
            hyper::client::conn::http2::Builder::new(TokioExecutor::new()),
        )
        .await
    }

    /// With explicit flow-control windows: a small stream window makes a stream whose body is
    /// not read stall quickly, while a large connection window leaves room for other streams.
    pub async fn open_windows(addr: SocketAddr, stream_window: u32, conn_window: u32) -> H2Conn {
        let mut b = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
        b.initial_stream_window_size(stream_window)
            .initial_connection_window_size(conn_window);
        H2Conn::open_with(addr, b).await
    }

    pub async fn open_with(
        addr: SocketAddr,
        mut builder: hyper::client::conn::http2::Builder<TokioExecutor>,
    ) -> H2Conn {
        let stream = TcpStream::connect(addr).await.unwrap();
        let local = stream.local_addr().unwrap();
        let (sender, conn) = builder
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(stream))
            .await
            .unwrap();
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        H2Conn {
            sender,
            local,
            _task: task,
        }
    }

    /// Send `req` and return the response head without reading its body.
    pub async fn send_head(
        &self,
        req: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, hyper::Error> {
        let mut sender = self.sender.clone();
        sender.ready().await?;
        sender.send_request(req).await
    }

    /// Send `req` (absolute URI) and read the whole response; also its version.
    pub async fn send(
        &self,
        req: Request<Full<Bytes>>,
    ) -> Result<(Reply, http::Version), hyper::Error> {
        let resp = self.send_head(req).await?;
        let version = resp.version();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok((
            Reply {
                status: parts.status,
                headers: parts.headers,
                body,
            },
            version,
        ))
    }

    /// GET an absolute URL on this connection.
    pub async fn get(&self, url: &str) -> Result<Reply, hyper::Error> {
        let req = Request::get(url).body(Full::new(Bytes::new())).unwrap();
        self.send(req).await.map(|(r, _)| r)
    }

    /// POST `body` to an absolute URL on this connection.
    pub async fn post(&self, url: &str, body: impl Into<Bytes>) -> Result<Reply, hyper::Error> {
        let req = Request::post(url).body(Full::new(body.into())).unwrap();
        self.send(req).await.map(|(r, _)| r)
    }
}

/// The `typed_extension_protocol_options` that make a cluster speak HTTP/2 upstream, with the
/// given `http2_protocol_options` (a YAML flow mapping such as `{}`).
fn h2_protocol_options(http2_protocol_options: &str) -> String {
    format!(
        r#"    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {http2_protocol_options}
"#
    )
}

/// As [`cluster`], declaring HTTP/2 upstream (Envoy's v3 `HttpProtocolOptions`).
pub fn h2_cluster(name: &str, addrs: &[SocketAddr]) -> String {
    h2_cluster_with(name, addrs, "{}")
}

/// As [`h2_cluster`] with explicit `http2_protocol_options`, e.g.
/// `{ max_concurrent_streams: 10 }`.
pub fn h2_cluster_with(name: &str, addrs: &[SocketAddr], http2_protocol_options: &str) -> String {
    let mut c = cluster(name, addrs);
    c.push_str(&h2_protocol_options(http2_protocol_options));
    c
}

/// Bytes 0..=255 repeated to `len`: a body in which any reordering, loss or transcoding shows.
pub fn pattern_body(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// Poll `f` (bounded: every 10 ms until `timeout`) until it is true; the final value.
pub async fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return f();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// gRPC: a hand-written `legate.test.Echo` service (no protoc) and clients for it.
//
// ```proto
// package legate.test;
// service Echo {
//   rpc Unary(EchoRequest) returns (EchoReply);
//   rpc ServerStream(EchoRequest) returns (stream EchoReply);   // `count` replies
//   rpc ClientStream(stream EchoRequest) returns (EchoReply);   // sums `number`, joins `message`
//   rpc Bidi(stream EchoRequest) returns (stream EchoReply);    // one reply per request
// }
// ```

use futures_util::StreamExt as _;

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    #[prost(string, tag = "1")]
    pub message: String,
    /// ServerStream: how many replies.
    #[prost(uint32, tag = "2")]
    pub count: u32,
    /// Sleep this long before answering (Unary), before each reply (ServerStream, Bidi).
    #[prost(uint64, tag = "3")]
    pub sleep_ms: u64,
    /// Non-zero: end the call with this gRPC status code (ServerStream: after `count` replies).
    #[prost(int32, tag = "4")]
    pub fail_code: i32,
    #[prost(string, tag = "5")]
    pub fail_message: String,
    /// ClientStream: summed.
    #[prost(int64, tag = "6")]
    pub number: i64,
}

impl EchoRequest {
    pub fn msg(message: &str) -> EchoRequest {
        EchoRequest {
            message: message.to_string(),
            ..Default::default()
        }
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    #[prost(string, tag = "1")]
    pub message: String,
    #[prost(uint32, tag = "2")]
    pub index: u32,
    #[prost(int64, tag = "3")]
    pub sum: i64,
    #[prost(uint32, tag = "4")]
    pub count: u32,
}

pub const GRPC_SERVICE: &str = "legate.test.Echo";
pub const GRPC_UNARY: &str = "/legate.test.Echo/Unary";
pub const GRPC_SERVER_STREAM: &str = "/legate.test.Echo/ServerStream";
pub const GRPC_CLIENT_STREAM: &str = "/legate.test.Echo/ClientStream";
pub const GRPC_BIDI: &str = "/legate.test.Echo/Bidi";
/// Metadata the service adds to the trailers of every failed call.
pub const GRPC_FAIL_TRAILER: &str = "x-echo-failed";

/// What the gRPC upstream saw.
#[derive(Default)]
pub struct GrpcCounters {
    pub connections: AtomicUsize,
    /// Calls whose handler started.
    pub calls: AtomicUsize,
    /// Handlers still running (their guard alive).
    pub active: AtomicUsize,
    /// Handlers that ran to the end (reply or status sent).
    pub completed: AtomicUsize,
    /// Handlers dropped before they finished: the call was cancelled (stream reset).
    pub cancelled: AtomicUsize,
    /// The request head of every call: version, URI and headers.
    pub seen: Mutex<Vec<(http::Version, http::Uri, HeaderMap)>>,
}

impl GrpcCounters {
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
    pub fn cancelled(&self) -> usize {
        self.cancelled.load(Ordering::SeqCst)
    }
    pub fn completed(&self) -> usize {
        self.completed.load(Ordering::SeqCst)
    }
    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
    pub fn last(&self) -> (http::Version, http::Uri, HeaderMap) {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("gRPC upstream saw no call")
    }
    /// Wait (bounded) until `cancelled() >= n`.
    pub async fn wait_cancelled(&self, n: usize, timeout: Duration) -> bool {
        eventually(timeout, || self.cancelled() >= n).await
    }
}

/// Held by a running handler; counts it cancelled if dropped before [`CallGuard::finish`].
struct CallGuard {
    counters: Arc<GrpcCounters>,
    finished: bool,
}

impl CallGuard {
    fn new(counters: &Arc<GrpcCounters>) -> CallGuard {
        counters.calls.fetch_add(1, Ordering::SeqCst);
        counters.active.fetch_add(1, Ordering::SeqCst);
        CallGuard {
            counters: counters.clone(),
            finished: false,
        }
    }
    fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.counters.active.fetch_sub(1, Ordering::SeqCst);
        let c = if self.finished {
            &self.counters.completed
        } else {
            &self.counters.cancelled
        };
        c.fetch_add(1, Ordering::SeqCst);
    }
}

fn fail_status(req: &EchoRequest) -> Option<tonic::Status> {
    if req.fail_code == 0 {
        return None;
    }
    let mut status = tonic::Status::new(tonic::Code::from_i32(req.fail_code), &req.fail_message);
    status
        .metadata_mut()
        .insert(GRPC_FAIL_TRAILER, "yes".parse().unwrap());
    Some(status)
}

async fn sleep_ms(ms: u64) {
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

type ReplyStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<EchoReply, tonic::Status>> + Send + 'static>>;

/// A closure as a tower `Service`, which tonic's `Grpc::{unary, ...}` take.
struct FnService<F>(F);

impl<F, Req, Resp, Fut> tonic::codegen::Service<Req> for FnService<F>
where
    F: FnMut(Req) -> Fut,
    Fut: Future<Output = Result<Resp, tonic::Status>>,
{
    type Response = Resp;
    type Error = tonic::Status;
    type Future = Fut;
    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), tonic::Status>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: Req) -> Fut {
        (self.0)(req)
    }
}

async fn echo_unary(
    c: Arc<GrpcCounters>,
    req: tonic::Request<EchoRequest>,
) -> Result<tonic::Response<EchoReply>, tonic::Status> {
    let guard = CallGuard::new(&c);
    let req = req.into_inner();
    sleep_ms(req.sleep_ms).await;
    guard.finish();
    if let Some(status) = fail_status(&req) {
        return Err(status);
    }
    Ok(tonic::Response::new(EchoReply {
        message: req.message,
        index: 0,
        sum: req.number,
        count: 1,
    }))
}

async fn echo_server_stream(
    c: Arc<GrpcCounters>,
    req: tonic::Request<EchoRequest>,
) -> Result<tonic::Response<ReplyStream>, tonic::Status> {
    let guard = CallGuard::new(&c);
    let req = req.into_inner();
    // The guard lives in the stream's state: dropping the stream early counts as cancelled.
    let stream =
        futures_util::stream::unfold((0u32, Some(guard), req), |(i, guard, req)| async move {
            let guard = guard?;
            if i < req.count {
                sleep_ms(req.sleep_ms).await;
                let reply = EchoReply {
                    message: format!("{}-{i}", req.message),
                    index: i,
                    sum: 0,
                    count: req.count,
                };
                return Some((Ok(reply), (i + 1, Some(guard), req)));
            }
            guard.finish();
            let status = fail_status(&req)?;
            Some((Err(status), (i, None, req)))
        });
    Ok(tonic::Response::new(Box::pin(stream) as ReplyStream))
}

async fn echo_client_stream(
    c: Arc<GrpcCounters>,
    req: tonic::Request<tonic::Streaming<EchoRequest>>,
) -> Result<tonic::Response<EchoReply>, tonic::Status> {
    let guard = CallGuard::new(&c);
    let mut inbound = req.into_inner();
    let mut reply = EchoReply::default();
    let mut failed = None;
    while let Some(m) = inbound.message().await? {
        reply.count += 1;
        reply.sum += m.number;
        reply.message.push_str(&m.message);
        if failed.is_none() {
            failed = fail_status(&m);
        }
    }
    guard.finish();
    match failed {
        Some(status) => Err(status),
        None => Ok(tonic::Response::new(reply)),
    }
}

async fn echo_bidi(
    c: Arc<GrpcCounters>,
    req: tonic::Request<tonic::Streaming<EchoRequest>>,
) -> Result<tonic::Response<ReplyStream>, tonic::Status> {
    let guard = CallGuard::new(&c);
    let inbound = req.into_inner();
    let stream = futures_util::stream::unfold(
        (0u32, Some(guard), inbound),
        |(i, guard, mut inbound)| async move {
            let guard = guard?;
            match inbound.message().await {
                Ok(Some(m)) => {
                    sleep_ms(m.sleep_ms).await;
                    if let Some(status) = fail_status(&m) {
                        guard.finish();
                        return Some((Err(status), (i, None, inbound)));
                    }
                    let reply = EchoReply {
                        message: m.message,
                        index: i,
                        sum: m.number,
                        count: i + 1,
                    };
                    Some((Ok(reply), (i + 1, Some(guard), inbound)))
                }
                Ok(None) => {
                    guard.finish();
                    None
                }
                Err(status) => Some((Err(status), (i, None, inbound))),
            }
        },
    );
    Ok(tonic::Response::new(Box::pin(stream) as ReplyStream))
}

/// The `legate.test.Echo` service as a tower service of `http` requests, as tonic-build would
/// generate it.
#[derive(Clone)]
pub struct EchoServer {
    pub counters: Arc<GrpcCounters>,
}

impl tonic::server::NamedService for EchoServer {
    const NAME: &'static str = GRPC_SERVICE;
}

impl<B> tonic::codegen::Service<http::Request<B>> for EchoServer
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        self.counters.seen.lock().unwrap().push((
            req.version(),
            req.uri().clone(),
            req.headers().clone(),
        ));
        let c = self.counters.clone();
        let codec = tonic_prost::ProstCodec::<EchoReply, EchoRequest>::default();
        let mut grpc = tonic::server::Grpc::new(codec);
        match req.uri().path() {
            GRPC_UNARY => Box::pin(async move {
                let svc = FnService(move |r| echo_unary(c.clone(), r));
                Ok(grpc.unary(svc, req).await)
            }),
            GRPC_SERVER_STREAM => Box::pin(async move {
                let svc = FnService(move |r| echo_server_stream(c.clone(), r));
                Ok(grpc.server_streaming(svc, req).await)
            }),
            GRPC_CLIENT_STREAM => Box::pin(async move {
                let svc = FnService(move |r| echo_client_stream(c.clone(), r));
                Ok(grpc.client_streaming(svc, req).await)
            }),
            GRPC_BIDI => Box::pin(async move {
                let svc = FnService(move |r| echo_bidi(c.clone(), r));
                Ok(grpc.streaming(svc, req).await)
            }),
            _ => Box::pin(
                async move { Ok(tonic::Status::unimplemented("no such method").into_http()) },
            ),
        }
    }
}

/// The `legate.test.Echo` service on an h2c listener on 127.0.0.1.
pub struct GrpcUpstream {
    pub addr: SocketAddr,
    pub counters: Arc<GrpcCounters>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GrpcUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GrpcUpstream {
    /// Serves the service on hyper's HTTP/2 server directly. Unlike tonic's `Server`, it does
    /// not enforce `grpc-timeout` itself, so what a deadline test sees is what the proxy did,
    /// and a handler ends early only when its stream is reset (`counters.cancelled`).
    /// It serves until the test's runtime ends.
    pub async fn start() -> (SocketAddr, Arc<GrpcCounters>) {
        let (addr, counters, _detached) = GrpcUpstream::serve().await;
        (addr, counters)
    }

    /// As [`GrpcUpstream::start`], stopped when dropped.
    pub async fn spawn() -> GrpcUpstream {
        let (addr, counters, task) = GrpcUpstream::serve().await;
        GrpcUpstream {
            addr,
            counters,
            task,
        }
    }

    async fn serve() -> (SocketAddr, Arc<GrpcCounters>, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counters = Arc::new(GrpcCounters::default());
        let c = counters.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                c.connections.fetch_add(1, Ordering::SeqCst);
                let server = EchoServer {
                    counters: c.clone(),
                };
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let mut server = server.clone();
                        tonic::codegen::Service::call(&mut server, req)
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .timer(TokioTimer::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        (addr, counters, task)
    }

    /// The same service behind tonic's own `Server` (`add_service` + `serve_with_incoming`),
    /// which also enforces `grpc-timeout` (answering CANCELLED when it expires).
    pub async fn start_tonic() -> GrpcUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counters = Arc::new(GrpcCounters::default());
        let c = counters.clone();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(move |s| {
            c.connections.fetch_add(1, Ordering::SeqCst);
            s
        });
        let server = EchoServer {
            counters: counters.clone(),
        };
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(server)
                .serve_with_incoming(incoming)
                .await;
        });
        GrpcUpstream {
            addr,
            counters,
            task,
        }
    }
}

/// How a [`GrpcClient`] reaches its server.
#[derive(Clone)]
pub enum GrpcTransport {
    /// tonic's `Channel`: it also enforces `grpc-timeout` on the client side (a call whose
    /// deadline passes there ends with CANCELLED "Timeout expired").
    Channel(tonic::transport::Channel),
    /// A bare hyper HTTP/2 connection: `grpc-timeout` is only sent, so the status a call ends
    /// with is the one the server (or proxy) sent.
    Raw(hyper::client::conn::http2::SendRequest<tonic::body::Body>),
}

impl tonic::codegen::Service<http::Request<tonic::body::Body>> for GrpcTransport {
    type Response = http::Response<tonic::body::Body>;
    type Error = tonic::codegen::StdError;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        match self {
            GrpcTransport::Channel(c) => {
                tonic::codegen::Service::poll_ready(c, cx).map_err(Into::into)
            }
            GrpcTransport::Raw(s) => s.poll_ready(cx).map_err(Into::into),
        }
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        match self {
            GrpcTransport::Channel(c) => {
                let fut = tonic::codegen::Service::call(c, req);
                Box::pin(async move { fut.await.map_err(Into::into) })
            }
            GrpcTransport::Raw(s) => {
                let fut = s.send_request(req);
                Box::pin(async move {
                    let resp = fut.await?;
                    Ok(resp.map(tonic::body::Body::new))
                })
            }
        }
    }
}

/// A client of `legate.test.Echo`. Every call takes an optional deadline, sent as
/// `grpc-timeout`.
#[derive(Clone)]
pub struct GrpcClient {
    grpc: tonic::client::Grpc<GrpcTransport>,
    _conn: Option<Arc<tokio::task::JoinHandle<()>>>,
}

fn grpc_request<T>(msg: T, timeout: Option<Duration>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Some(t) = timeout {
        req.set_timeout(t);
    }
    req
}

impl GrpcClient {
    /// Over a tonic `Channel` to `http://<addr>`.
    pub async fn connect(addr: SocketAddr) -> GrpcClient {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .expect("gRPC channel connects");
        GrpcClient {
            grpc: tonic::client::Grpc::new(GrpcTransport::Channel(channel)),
            _conn: None,
        }
    }

    /// Over one bare HTTP/2 connection (no client-side deadline enforcement).
    pub async fn connect_raw(addr: SocketAddr) -> GrpcClient {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(stream))
            .await
            .unwrap();
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        let origin: http::Uri = format!("http://{addr}").parse().unwrap();
        GrpcClient {
            grpc: tonic::client::Grpc::with_origin(GrpcTransport::Raw(sender), origin),
            _conn: Some(Arc::new(task)),
        }
    }

    fn codec() -> tonic_prost::ProstCodec<EchoRequest, EchoReply> {
        tonic_prost::ProstCodec::default()
    }

    async fn ready(&mut self) -> Result<(), tonic::Status> {
        self.grpc
            .ready()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("not ready: {e}")))
    }

    pub async fn unary_full(
        &mut self,
        req: EchoRequest,
        timeout: Option<Duration>,
    ) -> Result<tonic::Response<EchoReply>, tonic::Status> {
        self.ready().await?;
        self.grpc
            .unary(
                grpc_request(req, timeout),
                http::uri::PathAndQuery::from_static(GRPC_UNARY),
                Self::codec(),
            )
            .await
    }

    pub async fn unary(
        &mut self,
        req: EchoRequest,
        timeout: Option<Duration>,
    ) -> Result<EchoReply, tonic::Status> {
        self.unary_full(req, timeout).await.map(|r| r.into_inner())
    }

    /// The response stream, unread.
    pub async fn server_stream_open(
        &mut self,
        req: EchoRequest,
        timeout: Option<Duration>,
    ) -> Result<tonic::Streaming<EchoReply>, tonic::Status> {
        self.ready().await?;
        self.grpc
            .server_streaming(
                grpc_request(req, timeout),
                http::uri::PathAndQuery::from_static(GRPC_SERVER_STREAM),
                Self::codec(),
            )
            .await
            .map(|r| r.into_inner())
    }

    /// The replies received before the call ended, and how it ended.
    pub async fn server_stream(
        &mut self,
        req: EchoRequest,
        timeout: Option<Duration>,
    ) -> (Vec<EchoReply>, Result<(), tonic::Status>) {
        let mut stream = match self.server_stream_open(req, timeout).await {
            Ok(s) => s,
            Err(status) => return (Vec::new(), Err(status)),
        };
        let mut replies = Vec::new();
        for _ in 0..100_000 {
            match stream.message().await {
                Ok(Some(m)) => replies.push(m),
                Ok(None) => return (replies, Ok(())),
                Err(status) => return (replies, Err(status)),
            }
        }
        panic!("server stream did not end");
    }

    pub async fn client_stream(
        &mut self,
        reqs: Vec<EchoRequest>,
        timeout: Option<Duration>,
    ) -> Result<EchoReply, tonic::Status> {
        self.ready().await?;
        self.grpc
            .client_streaming(
                grpc_request(tokio_stream::iter(reqs), timeout),
                http::uri::PathAndQuery::from_static(GRPC_CLIENT_STREAM),
                Self::codec(),
            )
            .await
            .map(|r| r.into_inner())
    }

    /// Bidi with the requests fed from a channel: send one, read its echo, send the next.
    pub async fn bidi_open(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<
        (
            tokio::sync::mpsc::Sender<EchoRequest>,
            tonic::Streaming<EchoReply>,
        ),
        tonic::Status,
    > {
        self.ready().await?;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let outbound = tokio_stream::wrappers::ReceiverStream::new(rx);
        let stream = self
            .grpc
            .streaming(
                grpc_request(outbound, timeout),
                http::uri::PathAndQuery::from_static(GRPC_BIDI),
                Self::codec(),
            )
            .await?
            .into_inner();
        Ok((tx, stream))
    }

    /// Bidi with all requests sent up front; the replies and how the call ended.
    pub async fn bidi(
        &mut self,
        reqs: Vec<EchoRequest>,
        timeout: Option<Duration>,
    ) -> (Vec<EchoReply>, Result<(), tonic::Status>) {
        if let Err(status) = self.ready().await {
            return (Vec::new(), Err(status));
        }
        let res = self
            .grpc
            .streaming(
                grpc_request(tokio_stream::iter(reqs), timeout),
                http::uri::PathAndQuery::from_static(GRPC_BIDI),
                Self::codec(),
            )
            .await;
        let mut stream = match res {
            Ok(r) => r.into_inner(),
            Err(status) => return (Vec::new(), Err(status)),
        };
        let mut replies = Vec::new();
        for _ in 0..100_000 {
            match stream.message().await {
                Ok(Some(m)) => replies.push(m),
                Ok(None) => return (replies, Ok(())),
                Err(status) => return (replies, Err(status)),
            }
        }
        panic!("bidi stream did not end");
    }
}

// ---------------------------------------------------------------------------------------------
// WebSocket: an echo upstream and a client.

pub use tokio_tungstenite::tungstenite::Message as WsMessage;

/// A client's WebSocket.
pub type WsClient =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// A WebSocket echo server on 127.0.0.1 (tokio-tungstenite on a raw TcpListener). Text and
/// binary messages come back as they were sent; the text message `close-me` makes the server
/// close the WebSocket (code 1000, reason `bye`).
pub struct WsUpstream {
    pub addr: SocketAddr,
    /// TCP connections accepted.
    pub connections: Arc<AtomicUsize>,
    /// WebSocket handshakes completed.
    pub sessions: Arc<AtomicUsize>,
    /// Sessions whose read side ended (close handshake or the connection going away).
    pub ended: Arc<AtomicUsize>,
    /// The head of every handshake request: URI and headers.
    pub handshakes: Arc<Mutex<Vec<(String, HeaderMap)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WsUpstream {
    pub async fn echo() -> WsUpstream {
        use futures_util::SinkExt as _;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let sessions = Arc::new(AtomicUsize::new(0));
        let ended = Arc::new(AtomicUsize::new(0));
        let handshakes = Arc::new(Mutex::new(Vec::new()));
        let (c, s, e, h) = (
            connections.clone(),
            sessions.clone(),
            ended.clone(),
            handshakes.clone(),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let (s, e, h) = (s.clone(), e.clone(), h.clone());
                tokio::spawn(async move {
                    // The error type is tungstenite's (an HTTP response), not ours to shrink.
                    #[allow(clippy::result_large_err)]
                    let record =
                        |req: &tokio_tungstenite::tungstenite::handshake::server::Request, resp| {
                            h.lock()
                                .unwrap()
                                .push((req.uri().to_string(), req.headers().clone()));
                            Ok(resp)
                        };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, record).await
                    else {
                        return;
                    };
                    s.fetch_add(1, Ordering::SeqCst);
                    // Bounded: a test sends far fewer messages than this.
                    for _ in 0..100_000 {
                        let Some(Ok(msg)) = ws.next().await else {
                            break;
                        };
                        let sent = match msg {
                            WsMessage::Text(t) if t.as_str() == "close-me" => {
                                use tokio_tungstenite::tungstenite::protocol::{
                                    frame::coding::CloseCode, CloseFrame,
                                };
                                ws.close(Some(CloseFrame {
                                    code: CloseCode::Normal,
                                    reason: "bye".into(),
                                }))
                                .await
                            }
                            m @ (WsMessage::Text(_) | WsMessage::Binary(_)) => ws.send(m).await,
                            // Pings are answered and close frames echoed by tungstenite itself.
                            _ => Ok(()),
                        };
                        if sent.is_err() {
                            break;
                        }
                    }
                    e.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        WsUpstream {
            addr,
            connections,
            sessions,
            ended,
            handshakes,
            task,
        }
    }

    pub fn sessions(&self) -> usize {
        self.sessions.load(Ordering::SeqCst)
    }

    pub fn ended(&self) -> usize {
        self.ended.load(Ordering::SeqCst)
    }

    pub fn last_handshake(&self) -> (String, HeaderMap) {
        self.handshakes
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("no WebSocket handshake")
    }
}

/// Open a WebSocket to `url` (`ws://host:port/path`), bounded to 10 s.
pub async fn ws_connect(
    url: &str,
) -> Result<
    (
        WsClient,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ),
    tokio_tungstenite::tungstenite::Error,
> {
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(url),
    )
    .await
    .expect("WebSocket handshake finished in time")
}

/// The next message (`None`: the stream ended), waiting at most `timeout`; panics on timeout.
pub async fn ws_next(
    ws: &mut WsClient,
    timeout: Duration,
) -> Option<Result<WsMessage, tokio_tungstenite::tungstenite::Error>> {
    tokio::time::timeout(timeout, ws.next())
        .await
        .expect("WebSocket message in time")
}

/// Send `msg` and return the next data message (pings/pongs skipped), bounded to 10 s.
pub async fn ws_roundtrip(ws: &mut WsClient, msg: WsMessage) -> WsMessage {
    use futures_util::SinkExt as _;
    tokio::time::timeout(Duration::from_secs(10), ws.send(msg))
        .await
        .expect("sent in time")
        .expect("send");
    for _ in 0..100 {
        match ws_next(ws, Duration::from_secs(10)).await {
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
            Some(Ok(m)) => return m,
            other => panic!("expected a message, got {other:?}"),
        }
    }
    panic!("only pings and pongs");
}

/// The connection-manager field that enables WebSocket upgrades, indented for [`config_with`].
pub const WEBSOCKET_UPGRADE: &str = "          upgrade_configs: [{ upgrade_type: websocket }]";

/// After a close handshake: whether the peer (legate) also closes the client's TCP connection
/// (a read returns 0) within `timeout`. Bytes still arriving are skipped (bounded).
pub async fn ws_tcp_closed_by_peer(ws: WsClient, timeout: Duration) -> bool {
    use tokio::io::AsyncReadExt as _;
    let tokio_tungstenite::MaybeTlsStream::Plain(mut tcp) = ws.into_inner() else {
        panic!("plain ws:// expected");
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    for _ in 0..1000 {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
    false
}

// ---------------------------------------------------------------------------------------------
// TLS: certificates made at test time (rcgen), TLS clients, TLS upstreams (rustls, ring).

#[allow(unused_imports)]
pub use self::tls_kit::*;

mod tls_kit {
    use super::*;
    use rcgen::{
        date_time_ymd, BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
        Issuer, KeyPair, KeyUsagePurpose,
    };
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
    use rustls::{
        ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme,
    };
    use tokio_rustls::client::TlsStream;

    pub fn tls_provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// A certificate and its private key, in PEM.
    pub struct TestCert {
        pub cert_pem: String,
        pub key_pem: String,
    }

    /// A test certificate authority that issues server and client certificates.
    pub struct TestCa {
        pub cert: TestCert,
        issuer: Issuer<'static, KeyPair>,
    }

    enum Use {
        Server,
        Client,
    }

    impl TestCa {
        pub fn new(name: &str) -> TestCa {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params
                .distinguished_name
                .push(DnType::CommonName, format!("legate test CA {name}"));
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            params.not_before = date_time_ymd(2020, 1, 1);
            params.not_after = date_time_ymd(2090, 1, 1);
            let key = KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            TestCa {
                cert: TestCert {
                    cert_pem: cert.pem(),
                    key_pem: key.serialize_pem(),
                },
                issuer: Issuer::new(params, key),
            }
        }

        pub fn pem(&self) -> &str {
            &self.cert.cert_pem
        }

        /// A server certificate for `dns` names, valid 2020–2080.
        pub fn server_cert(&self, dns: &[&str]) -> TestCert {
            self.issue(dns, Use::Server, (2020, 2080))
        }

        /// A server certificate that expired at the start of 2021.
        pub fn expired_server_cert(&self, dns: &[&str]) -> TestCert {
            self.issue(dns, Use::Server, (2020, 2021))
        }

        /// A client certificate with `dns` SANs.
        pub fn client_cert(&self, dns: &[&str]) -> TestCert {
            self.issue(dns, Use::Client, (2020, 2080))
        }

        fn issue(&self, dns: &[&str], usage: Use, (from, to): (i32, i32)) -> TestCert {
            let names: Vec<String> = dns.iter().map(|s| s.to_string()).collect();
            let mut params = CertificateParams::new(names).unwrap();
            params
                .distinguished_name
                .push(DnType::CommonName, dns.first().copied().unwrap_or("leaf"));
            params.use_authority_key_identifier_extension = true;
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![match usage {
                Use::Server => ExtendedKeyUsagePurpose::ServerAuth,
                Use::Client => ExtendedKeyUsagePurpose::ClientAuth,
            }];
            params.not_before = date_time_ymd(from, 1, 1);
            params.not_after = date_time_ymd(to, 1, 1);
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &self.issuer).unwrap();
            TestCert {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
            }
        }
    }

    fn chain_der(pem: &str) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// `key:` with an `inline_string: |` block holding `pem`, the key at column `col`.
    pub fn inline_pem(key: &str, pem: &str, col: usize) -> String {
        let pad = " ".repeat(col);
        let mut out = format!("{pad}{key}:\n{pad}  inline_string: |\n");
        for line in pem.lines() {
            out.push_str(&format!("{pad}    {line}\n"));
        }
        out
    }

    /// A rustls server config serving `cert`, offering `alpn`.
    pub fn tls_server_config(cert: &TestCert, alpn: &[&str]) -> Arc<ServerConfig> {
        let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap();
        let mut cfg = ServerConfig::builder_with_provider(tls_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain_der(&cert.cert_pem), key)
            .unwrap();
        cfg.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Arc::new(cfg)
    }

    /// A client config trusting `ca` (or, with `None`, accepting any certificate, so that a test
    /// can look at whatever the server presented), sending `client_cert` if asked for one.
    pub fn tls_client_config(
        ca: Option<&TestCa>,
        client_cert: Option<&TestCert>,
        alpn: &[&str],
    ) -> Arc<ClientConfig> {
        let builder = ClientConfig::builder_with_provider(tls_provider())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for c in chain_der(ca.pem()) {
                    roots.add(c).unwrap();
                }
                builder.with_root_certificates(roots)
            }
            None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(tls_provider()))),
        };
        let mut cfg = match client_cert {
            Some(c) => builder
                .with_client_auth_cert(
                    chain_der(&c.cert_pem),
                    PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        cfg.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Arc::new(cfg)
    }

    #[derive(Debug)]
    struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

    impl ServerCertVerifier for AcceptAnyCert {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    /// Connect and complete a TLS handshake with `sni` (bounded: 10 s).
    pub async fn tls_connect(
        addr: SocketAddr,
        sni: &str,
        config: Arc<ClientConfig>,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let name = ServerName::try_from(sni.to_string()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), async {
            let tcp = TcpStream::connect(addr).await?;
            tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
        })
        .await
        .map_err(|_| std::io::Error::other("TLS handshake timed out"))?
    }

    /// The DNS SANs of the certificate the server presented.
    pub fn peer_dns_names(s: &TlsStream<TcpStream>) -> Vec<String> {
        let certs = s.get_ref().1.peer_certificates().expect("peer certificate");
        let info = legate::tls::certs::inspect(&certs[0], "").unwrap();
        info.dns_names().map(str::to_owned).collect()
    }

    /// What an HTTPS exchange showed the client.
    pub struct TlsReply {
        pub reply: Reply,
        pub version: http::Version,
        pub alpn: Option<String>,
        pub peer_names: Vec<String>,
    }

    /// GET `path` (with `Host: sni`) over TLS: HTTP/2 if ALPN chose `h2`, HTTP/1.1 otherwise.
    /// Any failure (handshake, a reset on first read) is an `Err` with its description.
    pub async fn https_get(
        addr: SocketAddr,
        sni: &str,
        config: Arc<ClientConfig>,
        path: &str,
    ) -> Result<TlsReply, String> {
        let tls = tls_connect(addr, sni, config)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let alpn = tls
            .get_ref()
            .1
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        let peer_names = peer_dns_names(&tls);
        let io = TokioIo::new(tls);
        let exchange = async {
            let resp = if alpn.as_deref() == Some("h2") {
                let (mut send, conn) =
                    hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                        .await?;
                tokio::spawn(conn);
                let req = Request::get(format!("https://{sni}{path}"))
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                send.send_request(req).await?
            } else {
                let (mut send, conn) = hyper::client::conn::http1::handshake(io).await?;
                tokio::spawn(conn);
                let req = Request::get(path)
                    .header("host", sni)
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                send.send_request(req).await?
            };
            let version = resp.version();
            let (parts, body) = resp.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok::<_, hyper::Error>((
                Reply {
                    status: parts.status,
                    headers: parts.headers,
                    body,
                },
                version,
            ))
        };
        match tokio::time::timeout(Duration::from_secs(10), exchange).await {
            Ok(Ok((reply, version))) => Ok(TlsReply {
                reply,
                version,
                alpn,
                peer_names,
            }),
            Ok(Err(e)) => Err(format!("request: {e}")),
            Err(_) => Err("request timed out".into()),
        }
    }

    // -- Listener bootstraps with filter chains (YAML) ---------------------------------------

    /// `listener_filters` with the TLS inspector (listener fields are at column 4).
    pub const TLS_INSPECTOR: &str = r#"    listener_filters:
    - name: envoy.filters.listener.tls_inspector
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector
"#;

    /// A bootstrap with admin on port 0 and one listener `edge` (127.0.0.1:0, stat prefix
    /// `edge`): `listener_extra` are listener fields (column 4), `chains` come from
    /// [`chain_item`] / [`default_chain`].
    pub fn listener_bootstrap(listener_extra: &str, chains: &str, clusters: &str) -> String {
        format!(
            r#"
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
static_resources:
  listeners:
  - name: edge
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    stat_prefix: edge
{listener_extra}    filter_chains:
{chains}  clusters:
{clusters}"#
        )
    }

    /// A filter chain's fields at column 6: an optional `filter_chain_match` (flow mapping
    /// body, e.g. `server_names: [a.example.com]`), a transport socket from [`downstream_tls`]
    /// (or ""), and a terminal from [`hcm_to`] / [`tcp_proxy_to`].
    pub fn chain_body(matcher: &str, transport: &str, terminal: &str) -> String {
        let m = if matcher.is_empty() {
            String::new()
        } else {
            format!("      filter_chain_match: {{ {matcher} }}\n")
        };
        format!("{m}{transport}{terminal}")
    }

    /// `body` as an item of `filter_chains`.
    pub fn chain_item(body: &str) -> String {
        format!("    - {}", &body[6..])
    }

    /// `body` as the listener's `default_filter_chain`.
    pub fn default_chain(body: &str) -> String {
        format!("    default_filter_chain:\n{body}")
    }

    /// A `filters` list ending in an HTTP connection manager sending everything to `cluster`.
    pub fn hcm_to(stat_prefix: &str, cluster: &str, hcm_extra: &str) -> String {
        format!(
            r#"      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {stat_prefix}
{hcm_extra}          http_filters:
          - name: envoy.filters.http.router
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: {cluster} }}
"#
        )
    }

    /// A `filters` list with a TCP proxy; `target` is `cluster: x` or a `weighted_clusters`
    /// flow mapping, `extra` more flow-mapping fields (e.g. `idle_timeout: 0.3s`).
    pub fn tcp_proxy_to(stat_prefix: &str, target: &str, extra: &str) -> String {
        let extra = if extra.is_empty() {
            String::new()
        } else {
            format!(", {extra}")
        };
        format!(
            r#"      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: {stat_prefix}, {target}{extra} }}
"#
        )
    }

    /// `tls_certificates` at column `col` with each certificate and key inline.
    pub fn tls_certificates_at(certs: &[&TestCert], col: usize) -> String {
        let mut out = format!("{}tls_certificates:\n", " ".repeat(col));
        for c in certs {
            let mut item = inline_pem("certificate_chain", &c.cert_pem, col + 2);
            item.replace_range(col..col + 2, "- ");
            out.push_str(&item);
            out.push_str(&inline_pem("private_key", &c.key_pem, col + 2));
        }
        out
    }

    /// A `validation_context` (column 12) trusting `ca`, accepting only the DNS `sans` (if any).
    pub fn validation_context(ca: &TestCa, sans: &[&str]) -> String {
        let mut out = String::from("            validation_context:\n");
        out.push_str(&inline_pem("trusted_ca", ca.pem(), 14));
        if !sans.is_empty() {
            out.push_str("              match_typed_subject_alt_names:\n");
            for s in sans {
                out.push_str(&format!(
                    "              - {{ san_type: DNS, matcher: {{ exact: \"{s}\" }} }}\n"
                ));
            }
        }
        out
    }

    /// A chain's `transport_socket` with a `DownstreamTlsContext` serving `certs`;
    /// `common_extra` goes into `common_tls_context` (column 12, e.g. `alpn_protocols` or
    /// [`validation_context`]), `ctx_extra` next to it (column 10).
    pub fn downstream_tls(certs: &[&TestCert], common_extra: &str, ctx_extra: &str) -> String {
        format!(
            r#"      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
{ctx_extra}          common_tls_context:
{}{common_extra}"#,
            tls_certificates_at(certs, 12)
        )
    }

    impl Upstream {
        /// As [`Upstream::echo`], over TLS with `cert`; responses also carry `x-upstream-sni`,
        /// the server name the client sent. `connections` counts TCP connections, `requests`
        /// only requests that arrived over a completed handshake.
        pub async fn echo_tls(name: &'static str, cert: &TestCert) -> Upstream {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls_server_config(cert, &[]));
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let connections = Arc::new(AtomicUsize::new(0));
            let requests = Arc::new(AtomicUsize::new(0));
            let seen = Arc::new(Mutex::new(Vec::new()));
            let (c, r, s) = (connections.clone(), requests.clone(), seen.clone());
            let task = tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    c.fetch_add(1, Ordering::SeqCst);
                    let (acceptor, r, s) = (acceptor.clone(), r.clone(), s.clone());
                    tokio::spawn(async move {
                        let accept = acceptor.accept(stream);
                        let Ok(Ok(tls)) =
                            tokio::time::timeout(Duration::from_secs(10), accept).await
                        else {
                            return;
                        };
                        let sni = tls.get_ref().1.server_name().unwrap_or("").to_string();
                        let svc = service_fn(move |req: Request<Incoming>| {
                            r.fetch_add(1, Ordering::SeqCst);
                            s.lock().unwrap().push(Seen {
                                method: req.method().to_string(),
                                uri: req.uri().to_string(),
                                headers: req.headers().clone(),
                            });
                            let resp = Response::builder()
                                .header("x-upstream", name)
                                .header("x-upstream-sni", sni.as_str())
                                .body(req.into_body().boxed())
                                .unwrap();
                            async move { Ok::<_, Infallible>(resp) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .timer(TokioTimer::new())
                            .serve_connection(TokioIo::new(tls), svc)
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
    }
}

/// A file access log for a test's connection manager, read back as the writer thread flushes it
/// and removed on drop.
pub struct AccessLog {
    path: std::path::PathBuf,
    format: Option<String>,
}

impl AccessLog {
    /// Envoy's default format.
    pub fn new(tag: &str) -> AccessLog {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = std::env::temp_dir().join(format!(
            "legate-test-{tag}-{}-{nanos}.log",
            std::process::id()
        ));
        AccessLog { path, format: None }
    }

    /// One `text_format` line per request (the newline is added).
    pub fn with_format(tag: &str, format: &str) -> AccessLog {
        let mut log = AccessLog::new(tag);
        log.format = Some(format.to_string());
        log
    }

    /// The connection-manager fields that turn the log on.
    pub fn hcm_extra(&self) -> String {
        let format = self.format.as_ref().map_or(String::new(), |f| {
            format!("              log_format: {{ text_format: \"{f}\\n\" }}\n")
        });
        format!(
            r#"          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: "{}"
{format}"#,
            self.path.display()
        )
    }

    pub fn contents(&self) -> String {
        std::fs::read_to_string(&self.path).unwrap_or_default()
    }

    /// The first logged line that `matches`, waiting (bounded) for the writer thread.
    async fn find(&self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        for _ in 0..500 {
            if let Some(line) = self.contents().lines().find(|l| matches(l)) {
                return line.to_string();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no access log line {what}; log:\n{}", self.contents());
    }

    /// The first logged line containing `needle`.
    pub async fn line_with(&self, needle: &str) -> String {
        self.find(&format!("contains {needle:?}"), |l| l.contains(needle))
            .await
    }

    /// The first logged line starting with `prefix`.
    pub async fn line_starting(&self, prefix: &str) -> String {
        self.find(&format!("starts with {prefix:?}"), |l| {
            l.starts_with(prefix)
        })
        .await
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
