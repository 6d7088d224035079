//! `envoy.filters.listener.tls_inspector`: read the ClientHello without consuming it, to learn
//! whether the connection is TLS and, if so, its SNI and ALPN. The bytes stay in the socket for
//! the TLS handshake (or the TLS passthrough) that follows. rustls parses the ClientHello.

use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// What the inspector learnt.
#[derive(Debug, Clone, Default)]
pub struct Inspected {
    /// `tls` or `raw_buffer`.
    pub transport_protocol: &'static str,
    pub server_name: Option<String>,
    pub alpn: Vec<String>,
}

impl Inspected {
    pub fn raw() -> Self {
        Inspected {
            transport_protocol: "raw_buffer",
            ..Default::default()
        }
    }
}

/// The ClientHello must fit in this many bytes (Envoy's `max_client_hello_size` default).
const MAX_CLIENT_HELLO: usize = 16 * 1024;
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// `Err(())` when the peer sent too little before `timeout`.
pub async fn inspect(stream: &TcpStream, timeout: Duration) -> Result<Inspected, ()> {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; MAX_CLIENT_HELLO];
    // `peek` returns whatever is queued at once, so waiting for more bytes of a ClientHello split
    // across segments needs a short sleep between looks.
    let mut pause = Duration::from_millis(1);
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(_)) => return Ok(Inspected::raw()),
            Err(_) => return Err(()),
        };
        if n == 0 {
            return Ok(Inspected::raw());
        }
        if buf[0] != TLS_HANDSHAKE_RECORD {
            return Ok(Inspected::raw());
        }
        match parse_client_hello(&buf[..n]) {
            Some(Ok(found)) => return Ok(found),
            // Not a ClientHello after all: treat as plaintext, as Envoy does.
            Some(Err(())) => return Ok(Inspected::raw()),
            None if n == buf.len() => {
                // Too big to inspect: it is TLS, but nothing more is known.
                return Ok(Inspected {
                    transport_protocol: "tls",
                    ..Default::default()
                });
            }
            None => {
                if Instant::now() + pause > deadline {
                    return Err(());
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(20));
            }
        }
    }
}

/// `None`: need more bytes. `Some(Err)`: not TLS.
fn parse_client_hello(bytes: &[u8]) -> Option<Result<Inspected, ()>> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut rd = bytes;
    while !rd.is_empty() {
        match acceptor.read_tls(&mut rd) {
            Ok(0) => break,
            Ok(_) => {}
            Err(_) => return Some(Err(())),
        }
    }
    match acceptor.accept() {
        Ok(Some(accepted)) => {
            let hello = accepted.client_hello();
            Some(Ok(Inspected {
                transport_protocol: "tls",
                server_name: hello.server_name().map(|s| s.to_ascii_lowercase()),
                alpn: hello
                    .alpn()
                    .map(|it| {
                        it.map(|p| String::from_utf8_lossy(p).into_owned())
                            .collect()
                    })
                    .unwrap_or_default(),
            }))
        }
        Ok(None) => None,
        Err(_) => Some(Err(())),
    }
}
