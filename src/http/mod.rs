//! HTTP: the connection manager (codec glue, per-request flow), the router, bodies and headers.
//!
//! Life of a request here: [`connection_manager::serve`] runs a codec on one downstream
//! connection (legate's own for HTTP/1.1, [`h1`]; h2's for HTTP/2, [`h2`], behind [`guard`]); each
//! request goes to [`connection_manager::ConnectionManager::handle`], which picks a
//! route ([`router`]), answers locally ([`local_reply`]) or forwards through the router filter
//! ([`router::forward`]) to a pooled upstream connection; the response streams back through
//! [`body::ResponseBody`], whose end writes stats and the access log ([`stream_info`]).

pub mod body;
pub mod connection_manager;
pub mod date;
pub mod grpc;
pub mod guard;
pub mod h1;
pub mod h2;
pub mod headers;
pub mod local_reply;
pub mod response_flags;
pub mod router;
pub mod stream_info;
pub mod validation;
