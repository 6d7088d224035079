//! Property test on the wire: requests built from valid pieces, then cut, bent and stacked,
//! sent to a real legate listener. Whatever a client sends, legate answers with well-formed
//! HTTP/1.1 responses or closes, never panics, never hangs a connection it has answered to, and
//! goes on serving other clients. Valid requests come back echoed byte for byte.

use crate::common;

use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, FileFailurePersistence, TestRunner};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One request's pieces; `valid` ones must be answered 200 with their body echoed.
#[derive(Debug, Clone)]
struct Req {
    method: &'static str,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    chunked: bool,
    chunk: usize,
    trailer: bool,
}

impl Req {
    fn wire(&self) -> Vec<u8> {
        let mut w =
            format!("{} {} HTTP/1.1\r\nhost: fuzz\r\n", self.method, self.path).into_bytes();
        for (n, v) in &self.headers {
            w.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
        }
        if self.chunked {
            w.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
            for piece in self.body.chunks(self.chunk.max(1)) {
                w.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                w.extend_from_slice(piece);
                w.extend_from_slice(b"\r\n");
            }
            w.extend_from_slice(b"0\r\n");
            if self.trailer {
                w.extend_from_slice(b"x-trailer: t\r\n");
            }
            w.extend_from_slice(b"\r\n");
        } else {
            w.extend_from_slice(format!("content-length: {}\r\n\r\n", self.body.len()).as_bytes());
            w.extend_from_slice(&self.body);
        }
        w
    }
}

fn req() -> impl Strategy<Value = Req> {
    (
        prop_oneof![
            Just("GET"),
            Just("POST"),
            Just("PUT"),
            Just("DELETE"),
            Just("PATCH")
        ],
        "/[a-z0-9/._~-]{0,24}(\\?[a-z0-9=&]{0,12})?",
        prop::collection::vec(("x-[a-z]{1,8}", "[ -~]{0,16}"), 0..4),
        prop::collection::vec(any::<u8>(), 0..300),
        any::<bool>(),
        1usize..64,
        any::<bool>(),
    )
        .prop_map(
            |(method, path, headers, body, chunked, chunk, trailer)| Req {
                method,
                path,
                headers: headers
                    .into_iter()
                    .map(|(n, v)| (n, v.trim().to_string()))
                    .collect(),
                body,
                chunked,
                chunk,
                trailer,
            },
        )
}

/// What is done to the valid wire bytes.
#[derive(Debug, Clone)]
enum Bend {
    None,
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Cut(usize),
    Drop(usize, usize),
}

fn bend() -> impl Strategy<Value = Bend> {
    prop_oneof![
        3 => Just(Bend::None),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Bend::Flip(i, b)),
        2 => (any::<usize>(), prop::collection::vec(
            prop_oneof![Just(b'\r'), Just(b'\n'), Just(b':'), Just(b' '), Just(0u8), Just(b'0'), any::<u8>()],
            1..6,
        )).prop_map(|(i, v)| Bend::Insert(i, v)),
        1 => any::<usize>().prop_map(Bend::Cut),
        1 => (any::<usize>(), 1usize..20).prop_map(|(i, n)| Bend::Drop(i, n)),
    ]
}

fn apply(mut w: Vec<u8>, b: &Bend) -> Vec<u8> {
    let at = |i: usize, len: usize| if len == 0 { 0 } else { i % len };
    match b {
        Bend::None => {}
        Bend::Flip(i, x) => {
            let i = at(*i, w.len());
            if let Some(c) = w.get_mut(i) {
                *c ^= x | 1;
            }
        }
        Bend::Insert(i, v) => {
            let i = at(*i, w.len() + 1);
            w.splice(i..i, v.iter().copied());
        }
        Bend::Cut(i) => w.truncate(at(*i, w.len())),
        Bend::Drop(i, n) => {
            let i = at(*i, w.len());
            let end = (i + n).min(w.len());
            w.drain(i..end);
        }
    }
    w
}

/// Reads until legate closes or goes quiet for `quiet`; true if it closed.
async fn read_all(s: &mut TcpStream, quiet: Duration) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(quiet, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (out, false),
        }
    }
}

/// Splits a byte stream into responses, checking each is well formed HTTP/1.1 (status line,
/// headers, a body framed by its content-length or chunked). Returns the statuses and bodies of
/// the complete ones. The last may be cut short: its request is not complete yet (an echo
/// cannot finish before its request does), or it broke and legate aborted the connection
/// rather than end it early; either way its framing says it is incomplete.
fn responses(bytes: &[u8]) -> Result<Vec<(u16, Vec<u8>)>, String> {
    let mut out = Vec::new();
    match split_responses(bytes, &mut out) {
        Ok(()) => Ok(out),
        Err(e) if e.starts_with("cut:") => Ok(out),
        Err(e) => Err(e),
    }
}

fn split_responses(mut bytes: &[u8], out: &mut Vec<(u16, Vec<u8>)>) -> Result<(), String> {
    while !bytes.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Response::new(&mut headers);
        let n = match r.parse(bytes) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Err("partial response head".into()),
            Err(e) => return Err(format!("malformed response head: {e}")),
        };
        let status = r.code.ok_or("no status")?;
        let cl = r
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .map(|h| String::from_utf8_lossy(h.value).parse::<usize>());
        let chunked = r.headers.iter().any(|h| {
            h.name.eq_ignore_ascii_case("transfer-encoding")
                && h.value.eq_ignore_ascii_case(b"chunked")
        });
        bytes = &bytes[n..];
        let body = if status == 100 {
            Vec::new()
        } else if chunked {
            let mut body = Vec::new();
            loop {
                let line_end = bytes
                    .windows(2)
                    .position(|w| w == b"\r\n")
                    .ok_or("cut: chunk size line")?;
                let size = usize::from_str_radix(
                    std::str::from_utf8(&bytes[..line_end]).map_err(|e| e.to_string())?,
                    16,
                )
                .map_err(|e| e.to_string())?;
                bytes = &bytes[line_end + 2..];
                if size == 0 {
                    if bytes.len() < 2 {
                        return Err("cut: last chunk".into());
                    }
                    if !bytes.starts_with(b"\r\n") {
                        return Err("no end after the last chunk".into());
                    }
                    bytes = &bytes[2..];
                    break;
                }
                if bytes.len() < size + 2 {
                    return Err("cut: chunk".into());
                }
                body.extend_from_slice(&bytes[..size]);
                bytes = &bytes[size + 2..];
            }
            body
        } else {
            let len = match cl {
                Some(Ok(len)) => len,
                Some(Err(e)) => return Err(format!("bad content-length: {e}")),
                None => return Err("a response without framing".into()),
            };
            if bytes.len() < len {
                return Err("cut: body".into());
            }
            let body = bytes[..len].to_vec();
            bytes = &bytes[len..];
            body
        };
        if status != 100 {
            out.push((status, body));
        }
    }
    Ok(())
}

#[test]
fn any_bytes_get_well_formed_answers_or_a_close() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (up, legate) = rt.block_on(async {
        let up = Upstream::echo("a").await;
        let legate = Legate::start(&config_with(
            &route_all_to("c"),
            &cluster("c", &[up.addr]),
            "          request_headers_timeout: 2s\n",
        ))
        .await;
        (up, legate)
    });
    let addr = legate.addr;
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 64,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/proptest-regressions/wire_fuzz_http1.txt",
        ))),
        ..ProptestConfig::default()
    });
    let strategy = (prop::collection::vec(req(), 1..3), bend());
    let result = runner.run(&strategy, |(reqs, bend)| {
        let mut wire = Vec::new();
        for r in &reqs {
            wire.extend(r.wire());
        }
        let bent = apply(wire.clone(), &bend);
        let unchanged = bent == wire;
        rt.block_on(async {
            let mut s = TcpStream::connect(addr).await.unwrap();
            // Legate may close (and reset) mid-write after refusing what it read.
            let _ = s.write_all(&bent).await;
            let (got, _closed) = read_all(&mut s, Duration::from_millis(100)).await;
            let answers = responses(&got).map_err(|e| {
                TestCaseError::fail(format!("{e}: {:?}", String::from_utf8_lossy(&got)))
            })?;
            if unchanged {
                prop_assert_eq!(
                    answers.len(),
                    reqs.len(),
                    "{:?}",
                    String::from_utf8_lossy(&got)
                );
                for ((status, body), r) in answers.iter().zip(&reqs) {
                    prop_assert_eq!(*status, 200);
                    prop_assert!(body == &r.body, "body changed");
                }
            } else {
                // Never more answers than requests, and only statuses Envoy gives.
                prop_assert!(answers.len() <= reqs.len() + 1);
                for (status, _) in &answers {
                    prop_assert!(
                        matches!(
                            status,
                            200 | 400 | 404 | 408 | 413 | 414 | 426 | 431 | 501 | 503
                        ),
                        "status {}",
                        status
                    );
                }
            }
            Ok(())
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    // Still serving, and no connection left behind once the clients are gone.
    rt.block_on(async {
        let r = get(&legate.url("/after")).await;
        assert_eq!(r.status, 200);
        tokio::time::timeout(Duration::from_secs(10), async {
            while legate.stat("http.ingress.downstream_cx_active") > 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("every connection closed");
    });
    drop(up);
}
