//! Name resolution for STRICT_DNS clusters, honouring `dns_lookup_family`.

use crate::bootstrap::DnsLookupFamily;
use std::net::SocketAddr;

/// Resolve `host:port` and keep the addresses the lookup family asks for, in resolver order.
pub async fn resolve(
    host: &str,
    port: u16,
    family: DnsLookupFamily,
) -> std::io::Result<Vec<SocketAddr>> {
    let all: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
    let v4: Vec<SocketAddr> = all.iter().copied().filter(|a| a.is_ipv4()).collect();
    let v6: Vec<SocketAddr> = all.iter().copied().filter(|a| a.is_ipv6()).collect();
    let chosen = match family {
        DnsLookupFamily::V4Only => v4,
        DnsLookupFamily::V6Only => v6,
        // Envoy's AUTO prefers IPv6 and falls back to IPv4.
        DnsLookupFamily::Auto => {
            if v6.is_empty() {
                v4
            } else {
                v6
            }
        }
        DnsLookupFamily::V4Preferred => {
            if v4.is_empty() {
                v6
            } else {
                v4
            }
        }
        DnsLookupFamily::All => all,
    };
    Ok(chosen)
}
