//! Heap allocations per proxied request, counted on legate's own threads only.
//!
//! legate runs in-process on a runtime of its own whose threads are marked "count me"; the
//! upstream (hyper, HTTP/1.1 keep-alive, 100-byte body) and the client (hyper, one keep-alive
//! connection) run on other threads and are not counted. After a warm-up, N sequential requests
//! are sent and the allocations (`alloc` + `realloc` calls) made meanwhile on legate's threads are
//! divided by N.
//!
//! ```sh
//! cargo bench --bench allocs                  # counts
//! ALLOC_TRACE=1 cargo bench --bench allocs    # and where they come from (needs addr2line)
//! ```
//!
//! It also counts the write system calls legate's threads made per request (`syscw` in
//! `/proc/self/task/<tid>/io`, which counts `write` and `writev` but not `send`): hyper's HTTP/1
//! `writev`s, and any `eventfd` write that wakes tokio's driver. For a proxied HTTP/1.1 request
//! the floor is 2, the request upstream and the response downstream.
//!
//! `ALLOC_TRACE=1` records a stack (glibc `backtrace`) for every counted allocation of a shorter
//! run, resolves the distinct return addresses once with `addr2line`, and prints the allocation
//! sites per request, grouped by the innermost legate function and by the innermost frames.
//! `REQUESTS` and `WARMUP` change the run lengths (`TRACE_REQUESTS`, `TRACE_WARMUP` the traced
//! run's; `TRACE_WARMUP=0 TRACE_REQUESTS=1` shows what a new connection costs).

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use legate::bootstrap::{self, ConfigSource};
use legate::server::{Options, Server};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use tokio::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------------------------------------
// The counting allocator

struct Counting;

#[global_allocator]
static ALLOC: Counting = Counting;

static ENABLED: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicU64 = AtomicU64::new(0);
static REALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);
static TRACE: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// Set on legate's runtime threads.
    static COUNT_ME: Cell<bool> = const { Cell::new(false) };
    /// Set while this thread records a stack (whose own allocations are not counted).
    static IN_TRACE: Cell<bool> = const { Cell::new(false) };
}

const DEPTH: usize = 48;
/// Recorded stacks: return addresses, innermost first (slots of the allocator itself included).
static STACKS: Mutex<Vec<([usize; DEPTH], u64)>> = Mutex::new(Vec::new());
static STACKS_LEN: AtomicUsize = AtomicUsize::new(0);
/// legate's runtime threads, for their system call counters.
static THREADS: Mutex<Vec<libc::pid_t>> = Mutex::new(Vec::new());

/// Write system calls made so far by legate's threads.
fn legate_write_syscalls() -> u64 {
    let threads = THREADS.lock().map(|t| t.clone()).unwrap_or_default();
    threads
        .iter()
        .filter_map(|tid| std::fs::read_to_string(format!("/proc/self/task/{tid}/io")).ok())
        .filter_map(|io| {
            io.lines()
                .find_map(|l| l.strip_prefix("syscw:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .sum()
}

fn count(size: usize, realloc: bool) {
    if !ENABLED.load(Ordering::Relaxed) {
        return;
    }
    let counted = COUNT_ME.try_with(Cell::get).unwrap_or(false)
        && !IN_TRACE.try_with(Cell::get).unwrap_or(true);
    if !counted {
        return;
    }
    if realloc {
        REALLOCS.fetch_add(1, Ordering::Relaxed);
    } else {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
    BYTES.fetch_add(size as u64, Ordering::Relaxed);
    if TRACE.load(Ordering::Relaxed) {
        record_stack(size);
    }
}

fn record_stack(size: usize) {
    IN_TRACE.with(|t| t.set(true));
    let mut frames = [std::ptr::null_mut::<libc::c_void>(); DEPTH];
    // SAFETY: `frames` has room for DEPTH entries; glibc writes at most that many.
    let n = unsafe { libc::backtrace(frames.as_mut_ptr(), DEPTH as libc::c_int) }.max(0) as usize;
    let mut ips = [0usize; DEPTH];
    for (ip, f) in ips.iter_mut().zip(&frames[..n]) {
        *ip = *f as usize;
    }
    if let Ok(mut s) = STACKS.lock() {
        s.push((ips, size as u64));
        STACKS_LEN.store(s.len(), Ordering::Relaxed);
    }
    IN_TRACE.with(|t| t.set(false));
}

// SAFETY: every call is forwarded to `System` unchanged; the counting touches only atomics and
// const-initialised thread-locals, which do not allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size(), false);
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size(), false);
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size, true);
        System.realloc(ptr, layout, new_size)
    }
}

// ---------------------------------------------------------------------------------------------
// The three parties

const BODY: &[u8] = &[b'x'; 100];

/// An HTTP/1.1 keep-alive upstream answering 100 bytes, on a thread of its own.
fn start_upstream() -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("upstream runtime");
        rt.block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            tx.send(listener.local_addr().expect("addr")).expect("send");
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let svc = service_fn(|_req: Request<Incoming>| async {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(BODY))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
    });
    rx.recv().expect("upstream address")
}

/// legate on a runtime of its own (one worker, as `--concurrency 1`) whose threads are counted.
fn start_legate(upstream: SocketAddr) -> SocketAddr {
    let yaml = format!(
        r#"
static_resources:
  listeners:
  - name: bench
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          http_filters: [{{ name: envoy.filters.http.router }}]
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{{ match: {{ prefix: "/" }}, route: {{ cluster: up }} }}]
  clusters:
  - name: up
    load_assignment:
      cluster_name: up
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: {}, port_value: {} }} }} }}
"#,
        upstream.ip(),
        upstream.port()
    );
    let config = bootstrap::load(&ConfigSource::yaml(&yaml)).expect("bench config");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .on_thread_start(|| {
                COUNT_ME.with(|c| c.set(true));
                // SAFETY: gettid has no preconditions.
                let tid = unsafe { libc::gettid() };
                if let Ok(mut t) = THREADS.lock() {
                    t.push(tid);
                }
            })
            .enable_all()
            .build()
            .expect("legate runtime");
        rt.block_on(async move {
            let server = Server::start(
                config,
                Options {
                    concurrency: 1,
                    ..Default::default()
                },
            )
            .await
            .expect("legate starts");
            tx.send(server.listener_address("bench").expect("listener"))
                .expect("send");
            std::future::pending::<()>().await;
        });
    });
    rx.recv().expect("legate address")
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

impl Sender {
    async fn connect(addr: SocketAddr, h2: bool) -> Sender {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let io = TokioIo::new(stream);
        if h2 {
            let (s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .expect("h2 handshake");
            tokio::spawn(conn);
            Sender::H2(s)
        } else {
            let (s, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .expect("handshake");
            tokio::spawn(conn);
            Sender::H1(s)
        }
    }

    async fn get(&mut self) {
        let resp = match self {
            Sender::H1(s) => {
                let req = Request::get("/")
                    .header("host", "bench")
                    .body(Empty::new())
                    .expect("request");
                s.send_request(req).await
            }
            Sender::H2(s) => {
                let req = Request::get("http://bench/")
                    .body(Empty::new())
                    .expect("request");
                s.send_request(req).await
            }
        }
        .expect("response");
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(body.len(), BODY.len());
    }
}

struct Counts {
    write_syscalls: u64,
    allocs: u64,
    reallocs: u64,
    bytes: u64,
}

/// Warm up, then count `n` sequential requests on one connection.
fn measure(
    rt: &tokio::runtime::Runtime,
    addr: SocketAddr,
    h2: bool,
    warmup: usize,
    n: usize,
) -> Counts {
    rt.block_on(async {
        let mut c = Sender::connect(addr, h2).await;
        for _ in 0..warmup {
            c.get().await;
        }
        ALLOCS.store(0, Ordering::SeqCst);
        REALLOCS.store(0, Ordering::SeqCst);
        BYTES.store(0, Ordering::SeqCst);
        let writes = legate_write_syscalls();
        ENABLED.store(true, Ordering::SeqCst);
        for _ in 0..n {
            c.get().await;
        }
        ENABLED.store(false, Ordering::SeqCst);
        Counts {
            write_syscalls: legate_write_syscalls() - writes,
            allocs: ALLOCS.load(Ordering::SeqCst),
            reallocs: REALLOCS.load(Ordering::SeqCst),
            bytes: BYTES.load(Ordering::SeqCst),
        }
    })
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; without it (`cargo test --all-targets`) this is a smoke test.
    let full = std::env::args().any(|a| a == "--bench");
    let upstream = start_upstream();
    let legate = start_legate(upstream);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    let n = env("REQUESTS", if full { 10_000 } else { 100 });
    let warmup = env("WARMUP", if full { 1_000 } else { 10 });
    let cases = [("http1 keep-alive", false), ("h2c → http1 upstream", true)];
    for (name, h2) in cases {
        let c = measure(&rt, legate, h2, warmup, n);
        let per = |x: u64| x as f64 / n as f64;
        println!(
            "{name}: {:.1} allocations/request ({:.1} alloc + {:.1} realloc), {:.0} bytes/request, {:.2} write system calls/request",
            per(c.allocs + c.reallocs),
            per(c.allocs),
            per(c.reallocs),
            per(c.bytes),
            per(c.write_syscalls)
        );
    }
    if std::env::var("ALLOC_TRACE").is_ok_and(|v| v == "1") {
        // Let glibc load its unwinder before anything is recorded (that allocates).
        let mut warm = [std::ptr::null_mut::<libc::c_void>(); 4];
        // SAFETY: room for 4 entries.
        unsafe { libc::backtrace(warm.as_mut_ptr(), 4) };
        let n = env("TRACE_REQUESTS", 2_000);
        for (name, h2) in cases {
            STACKS.lock().expect("stacks").clear();
            TRACE.store(true, Ordering::SeqCst);
            let c = measure(&rt, legate, h2, env("TRACE_WARMUP", 100), n);
            TRACE.store(false, Ordering::SeqCst);
            let stacks = std::mem::take(&mut *STACKS.lock().expect("stacks"));
            println!(
                "\n=== {name}: where the {:.1} allocations/request come from ({} stacks over {n} requests)",
                (c.allocs + c.reallocs) as f64 / n as f64,
                STACKS_LEN.load(Ordering::Relaxed)
            );
            report(&stacks, n);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// ALLOC_TRACE: resolve and aggregate

/// One resolved (possibly inlined) frame.
#[derive(Clone)]
struct Frame {
    function: String,
    location: String,
}

/// Address → frames (innermost first), resolved with addr2line against this executable.
fn resolve(ips: &[usize]) -> HashMap<usize, Vec<Frame>> {
    let exe = std::env::current_exe().expect("current_exe");
    let exe_name = exe.to_string_lossy().into_owned();
    // The executable is position independent: addr2line wants offsets from its load address.
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let base = maps
        .lines()
        .filter(|l| l.ends_with(&exe_name))
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let range = it.next()?;
            let offset = usize::from_str_radix(it.nth(1)?, 16).ok()?;
            let start = usize::from_str_radix(range.split('-').next()?, 16).ok()?;
            Some(start - offset)
        })
        .min()
        .unwrap_or(0);
    let mut args: Vec<String> = vec!["-a".into(), "-f".into(), "-C".into(), "-i".into()];
    args.push("-e".into());
    args.push(exe_name);
    // Return addresses point after the call: look up the call instruction.
    args.extend(
        ips.iter()
            .map(|ip| format!("{:#x}", ip.saturating_sub(base + 1))),
    );
    let out = match std::process::Command::new("addr2line").args(&args).output() {
        Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
        Err(e) => {
            eprintln!("addr2line failed: {e}");
            return HashMap::new();
        }
    };
    let mut map = HashMap::new();
    let mut lines = out.lines().peekable();
    let mut i = 0;
    while let Some(l) = lines.next() {
        if !l.starts_with("0x") {
            continue;
        }
        let mut frames = Vec::new();
        while let Some(f) = lines.peek() {
            if f.starts_with("0x") {
                break;
            }
            let function = lines.next().unwrap_or_default().to_string();
            let location = lines.next().unwrap_or_default().to_string();
            frames.push(Frame { function, location });
        }
        if let Some(ip) = ips.get(i) {
            map.insert(*ip, frames);
        }
        i += 1;
    }
    map
}

/// Frames that say nothing about who allocated: the allocator, std's collections, the glue.
fn is_plumbing(f: &str) -> bool {
    const SKIP: &[&str] = &[
        "allocs::",
        "<allocs::",
        "__rust",
        "__rdl",
        "alloc::",
        "<alloc::",
        "core::",
        "<core::",
        "std::",
        "<std::",
        "hashbrown::",
        "<hashbrown::",
        "bytes::",
        "<bytes::",
        "??",
    ];
    SKIP.iter().any(|s| f.starts_with(s))
}

fn short(f: &Frame) -> String {
    // Generic arguments make names unreadable: keep `<Type as Trait>` but drop the arguments
    // inside it and after paths.
    let keep = if f.function.starts_with('<') { 1 } else { 0 };
    let mut name = String::new();
    let mut depth = 0;
    for ch in f.function.chars() {
        match ch {
            '<' => {
                depth += 1;
                if depth <= keep {
                    name.push(ch);
                }
            }
            '>' if depth > 0 => {
                if depth <= keep {
                    name.push(ch);
                }
                depth -= 1;
            }
            _ if depth <= keep => name.push(ch),
            _ => {}
        }
    }
    let loc = f.location.rsplit('/').next().unwrap_or(&f.location);
    format!("{name} ({loc})")
}

fn report(stacks: &[([usize; DEPTH], u64)], requests: usize) {
    let mut ips: Vec<usize> = stacks
        .iter()
        .flat_map(|(s, _)| s.iter().copied().filter(|ip| *ip != 0))
        .collect();
    ips.sort_unstable();
    ips.dedup();
    let frames = resolve(&ips);
    let mut by_legate: HashMap<String, (u64, u64)> = HashMap::new();
    let mut by_site: HashMap<String, (u64, u64)> = HashMap::new();
    for (stack, size) in stacks {
        let flat: Vec<&Frame> = stack
            .iter()
            .filter(|ip| **ip != 0)
            .flat_map(|ip| frames.get(ip).into_iter().flatten())
            .collect();
        let legate = flat
            .iter()
            .find(|f| f.function.contains("legate::") && !f.function.starts_with("allocs::"))
            .map(|f| short(f))
            .unwrap_or_else(|| "(no legate frame: runtime)".into());
        let site: Vec<String> = flat
            .iter()
            .filter(|f| !is_plumbing(&f.function))
            .take(3)
            .map(|f| short(f))
            .collect();
        let site = format!("{}\n        in {legate}", site.join("\n        ← "));
        let e = by_legate.entry(legate).or_default();
        e.0 += 1;
        e.1 += size;
        let e = by_site.entry(site).or_default();
        e.0 += 1;
        e.1 += size;
    }
    let n = requests as f64;
    let mut rows: Vec<_> = by_legate.into_iter().collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.1));
    println!("-- by innermost legate function (allocations/request, bytes/request):");
    for (k, (c, b)) in rows.iter().take(30) {
        println!("{:7.2} {:8.0}  {k}", *c as f64 / n, *b as f64 / n);
    }
    let mut rows: Vec<_> = by_site.into_iter().collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.1));
    println!("-- by allocation site (innermost non-std frames):");
    for (k, (c, b)) in rows.iter().take(40) {
        if (*c as f64 / n) < 0.05 {
            break;
        }
        println!("{:7.2} {:8.0}  {k}", *c as f64 / n, *b as f64 / n);
    }
}
