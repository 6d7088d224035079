//! Every integration test, compiled into one binary.
//!
//! One file per feature, as before, but as modules of a single test crate: each separate test
//! binary linked its own copy of tokio, hyper, h2 and rustls (about 35 MB apiece), which made a
//! clean `make test` need 3 GB of disk and two dozen links. Filter as usual, by module:
//! `cargo test --test integration tcp_proxy::`.

mod common;

mod admin;
mod cli;
mod dns;
mod downstream_h1_codec;
mod downstream_http1;
mod errors;
mod grpc;
mod hardening_http1;
mod hardening_http2;
mod http2;
mod load_balancing;
mod network_filters;
mod properties;
mod routing;
mod shutdown;
mod streaming;
mod supervision;
mod tcp_proxy;
mod timeouts;
mod tls;
mod upstream_http1;
mod websocket;
mod wire_fuzz_http1;
