//! TLS on both hops, on rustls: server configs for listeners (certificates chosen by SNI, ALPN,
//! client certificates), client configs for clusters (CA, SAN matching, client certificates),
//! and what the admin API reports about loaded certificates.
//!
//! Configs are built once, during config validation, so that a bad certificate or key is a
//! startup error with its field path.

pub mod certs;
pub mod client;
pub mod server;

pub use certs::{CertInfo, SanMatcher};
pub use client::ClientTls;
pub use server::ServerTls;

use rustls::crypto::CryptoProvider;
use std::sync::Arc;

/// legate uses ring for TLS crypto (no C toolchain beyond a compiler is needed to build it).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Envoy's `tls_minimum_protocol_version` / `tls_maximum_protocol_version` values legate can
/// honour; rustls implements TLS 1.2 and 1.3 only.
pub fn versions(
    min: Option<&str>,
    max: Option<&str>,
    default_max_13: bool,
) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, String> {
    let rank = |v: Option<&str>, default: u8| -> Result<u8, String> {
        match v {
            None | Some("TLS_AUTO") => Ok(default),
            Some("TLSv1_2") => Ok(2),
            Some("TLSv1_3") => Ok(3),
            Some(other @ ("TLSv1_0" | "TLSv1_1")) => Err(format!(
                "unsupported value '{other}': legate supports TLS 1.2 and 1.3 only"
            )),
            Some(other) => Err(format!("unsupported value '{other}'")),
        }
    };
    // Envoy's defaults: minimum TLS 1.2; maximum 1.3 for servers, 1.2 for clients.
    let lo = rank(min, 2)?;
    let hi = rank(max, if default_max_13 { 3 } else { 2 })?;
    if lo > hi {
        return Err("minimum protocol version is above the maximum".into());
    }
    let mut out = Vec::new();
    if lo <= 3 && hi >= 3 {
        out.push(&rustls::version::TLS13);
    }
    if lo <= 2 && hi >= 2 {
        out.push(&rustls::version::TLS12);
    }
    Ok(out)
}
