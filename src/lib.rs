//! legate: a sidecar and edge proxy on the actor model that speaks Envoy's configuration language.
//!
//! The data plane lives in this crate's modules, named after Envoy's concepts and in the order a
//! request meets them: [`listener`] → [`http`] (connection manager, router) → [`cluster`]
//! (load balancer, endpoint pools). [`bootstrap`] reads configuration, [`observe`] holds stats and
//! access logs, [`admin`] renders the admin API. [`actors`] is the supervised actor tree that owns
//! all of it; [`server`] assembles the tree from a validated config.

pub mod admin;
pub mod bootstrap;
pub mod cluster;
pub mod http;
pub mod latch;
pub mod listener;
pub mod network;
pub mod observe;
pub mod server;
pub mod tls;

#[path = "../actors/mod.rs"]
pub mod actors;

/// legate's version, as `/server_info` and `--version` report it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
