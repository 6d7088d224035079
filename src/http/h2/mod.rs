//! Downstream HTTP/2: h2's codec driven by legate ([`server`]), request bodies ([`body`]).
//!
//! Why not hyper's server over h2: it spawns a task per stream, so every request crossed
//! tasks twice (stream to codec and back) and paid a spawn, and its service call boxed the
//! request's future a second time. Here a connection's streams are futures inside the
//! connection's task, as Envoy keeps a connection's streams on its worker.

pub mod body;
pub mod keepalive;
pub mod pipe;
pub mod server;

pub use body::H2Body;
