//! legate's own downstream HTTP/1.1 codec: request heads ([`request`]), request bodies
//! ([`body`]), response heads ([`response`]) and the connection that drives them ([`server`]).
//!
//! Why not hyper's server: every request head was parsed twice (once by the guard that
//! enforces Envoy's limits, once by hyper), every body byte crossed a channel, and hyper's
//! per-connection buffers cost more than an idle connection should. Here one parse both checks
//! and builds the request, a body frame is a slice of the read buffer handed over in a slot, and
//! an idle connection holds no buffer at all. HTTP/2 is h2's codec ([`crate::http::h2`]).

pub mod body;
pub mod request;
pub mod response;
pub mod server;
pub mod wire;

pub use body::H1Body;
