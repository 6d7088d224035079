//! Choosing a filter chain for a new connection (`filter_chain_match`), in Envoy's order: each
//! criterion keeps only the chains with the most specific matching value, a chain that leaves the
//! criterion unset matches anything less specifically, and there is no backtracking: if the
//! survivors of one criterion all fail a later one, the connection gets no chain (then the
//! listener's `default_filter_chain`, if any).

use std::net::{IpAddr, SocketAddr};

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ChainMatch {
    pub destination_port: Option<u16>,
    pub prefix_ranges: Vec<Cidr>,
    /// Lower-case; `*.example.com` wildcards allowed.
    pub server_names: Vec<String>,
    pub transport_protocol: Option<String>,
    pub application_protocols: Vec<String>,
    pub direct_source_prefix_ranges: Vec<Cidr>,
    pub source_type: SourceType,
    pub source_prefix_ranges: Vec<Cidr>,
    pub source_ports: Vec<u16>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum SourceType {
    #[default]
    Any,
    SameIpOrLoopback,
    External,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl ChainMatch {
    /// No criterion set: the chain takes any connection.
    pub fn matches_all(&self) -> bool {
        *self == ChainMatch::default()
    }
}

impl Cidr {
    pub fn parse(prefix: &str, len: Option<u32>) -> Result<Cidr, String> {
        let addr: IpAddr = prefix
            .parse()
            .map_err(|_| format!("'{prefix}' is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = len.unwrap_or(max);
        if len > max {
            return Err(format!(
                "prefix_len {len} is longer than the address ({max} bits)"
            ));
        }
        Ok(Cidr {
            addr,
            len: len as u8,
        })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => prefix_eq(&a.octets(), &b.octets(), self.len),
            (IpAddr::V6(a), IpAddr::V6(b)) => prefix_eq(&a.octets(), &b.octets(), self.len),
            (IpAddr::V6(a), IpAddr::V4(b)) => {
                prefix_eq(&a.octets(), &b.to_ipv6_mapped().octets(), self.len)
            }
            (IpAddr::V4(_), IpAddr::V6(b)) => b
                .to_ipv4_mapped()
                .is_some_and(|b| self.contains(IpAddr::V4(b))),
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let full = (bits / 8) as usize;
    if a[..full] != b[..full] {
        return false;
    }
    let rem = bits % 8;
    if rem == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rem);
    a[full] & mask == b[full] & mask
}

/// What is known about a connection when its chain is chosen.
#[derive(Debug, Clone)]
pub struct ConnMeta<'a> {
    pub destination: SocketAddr,
    pub source: SocketAddr,
    pub server_name: Option<&'a str>,
    /// `tls` or `raw_buffer`.
    pub transport_protocol: &'a str,
    pub application_protocols: &'a [String],
}

/// Specificity of a value for one criterion: `None` = does not match, `Some(0)` = the chain does
/// not constrain it, larger = more specific.
type Score = Option<u32>;

/// Keep the candidates that match with the best score. In place: a new connection's chain
/// choice runs nine of these and should not allocate for each.
fn narrow(candidates: &mut Vec<usize>, score: impl Fn(usize) -> Score) {
    let best = candidates.iter().filter_map(|&i| score(i)).max();
    candidates.retain(|&i| best.is_some() && score(i) == best);
}

fn cidr_score(ranges: &[Cidr], ip: IpAddr) -> Score {
    if ranges.is_empty() {
        return Some(0);
    }
    ranges
        .iter()
        .filter(|c| c.contains(ip))
        .map(|c| c.len as u32 + 1)
        .max()
}

fn server_name_score(names: &[String], sni: Option<&str>) -> Score {
    if names.is_empty() {
        return Some(0);
    }
    let sni = sni?.to_ascii_lowercase();
    names
        .iter()
        .filter_map(|n| {
            if *n == sni {
                Some(u32::MAX)
            } else if let Some(suffix) = n.strip_prefix('*') {
                // `*.example.com` covers any name ending in `.example.com`; longer suffixes are
                // more specific.
                (sni.len() > suffix.len() && sni.ends_with(suffix))
                    .then_some(suffix.len() as u32 + 1)
            } else {
                None
            }
        })
        .max()
}

pub fn select(chains: &[&ChainMatch], m: &ConnMeta<'_>) -> Option<usize> {
    let mut c: Vec<usize> = (0..chains.len()).collect();
    let dst_ip = m.destination.ip();
    let src_ip = m.source.ip();
    narrow(&mut c, |i| match chains[i].destination_port {
        None => Some(0),
        Some(p) => (p == m.destination.port()).then_some(1),
    });
    narrow(&mut c, |i| cidr_score(&chains[i].prefix_ranges, dst_ip));
    narrow(&mut c, |i| {
        server_name_score(&chains[i].server_names, m.server_name)
    });
    narrow(&mut c, |i| match &chains[i].transport_protocol {
        None => Some(0),
        Some(t) => (t == m.transport_protocol).then_some(1),
    });
    narrow(&mut c, |i| {
        let ps = &chains[i].application_protocols;
        if ps.is_empty() {
            Some(0)
        } else {
            ps.iter()
                .any(|p| m.application_protocols.contains(p))
                .then_some(1)
        }
    });
    narrow(&mut c, |i| {
        cidr_score(&chains[i].direct_source_prefix_ranges, src_ip)
    });
    narrow(&mut c, |i| match chains[i].source_type {
        SourceType::Any => Some(0),
        SourceType::SameIpOrLoopback => (src_ip.is_loopback() || src_ip == dst_ip).then_some(1),
        SourceType::External => (!(src_ip.is_loopback() || src_ip == dst_ip)).then_some(1),
    });
    narrow(&mut c, |i| {
        cidr_score(&chains[i].source_prefix_ranges, src_ip)
    });
    narrow(&mut c, |i| {
        let ps = &chains[i].source_ports;
        if ps.is_empty() {
            Some(0)
        } else {
            ps.contains(&m.source.port()).then_some(1)
        }
    });
    c.first().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_empty_match_matches_all() {
        assert!(ChainMatch::default().matches_all());
        let sni = ChainMatch {
            server_names: vec!["a.example.com".into()],
            ..Default::default()
        };
        assert!(!sni.matches_all());
        let port = ChainMatch {
            destination_port: Some(443),
            ..Default::default()
        };
        assert!(!port.matches_all());
    }

    fn meta<'a>(sni: Option<&'a str>, transport: &'a str, alpn: &'a [String]) -> ConnMeta<'a> {
        ConnMeta {
            destination: "127.0.0.1:443".parse().unwrap(),
            source: "127.0.0.1:5555".parse().unwrap(),
            server_name: sni,
            transport_protocol: transport,
            application_protocols: alpn,
        }
    }

    #[test]
    fn server_names_exact_then_longest_wildcard() {
        let a = ChainMatch {
            server_names: vec!["*.example.com".into()],
            ..Default::default()
        };
        let b = ChainMatch {
            server_names: vec!["api.example.com".into()],
            ..Default::default()
        };
        let c = ChainMatch {
            server_names: vec!["*.b.example.com".into()],
            ..Default::default()
        };
        let d = ChainMatch::default();
        let chains = [&a, &b, &c, &d];
        assert_eq!(
            select(&chains, &meta(Some("api.example.com"), "tls", &[])),
            Some(1)
        );
        assert_eq!(
            select(&chains, &meta(Some("x.b.example.com"), "tls", &[])),
            Some(2)
        );
        assert_eq!(
            select(&chains, &meta(Some("x.example.com"), "tls", &[])),
            Some(0)
        );
        assert_eq!(
            select(&chains, &meta(Some("other.org"), "tls", &[])),
            Some(3)
        );
        assert_eq!(select(&chains, &meta(None, "raw_buffer", &[])), Some(3));
    }

    #[test]
    fn no_backtracking_after_a_more_specific_level() {
        // The port-specific chain wins the first level, then fails on transport: no chain.
        let a = ChainMatch {
            destination_port: Some(443),
            transport_protocol: Some("tls".into()),
            ..Default::default()
        };
        let b = ChainMatch::default();
        assert_eq!(select(&[&a, &b], &meta(None, "raw_buffer", &[])), None);
        assert_eq!(select(&[&a, &b], &meta(None, "tls", &[])), Some(0));
    }

    #[test]
    fn alpn_and_cidr() {
        let h2 = vec!["h2".to_string()];
        let a = ChainMatch {
            application_protocols: vec!["h2".into()],
            ..Default::default()
        };
        let b = ChainMatch::default();
        assert_eq!(select(&[&a, &b], &meta(None, "tls", &h2)), Some(0));
        assert_eq!(select(&[&a, &b], &meta(None, "tls", &[])), Some(1));
        let narrow = ChainMatch {
            source_prefix_ranges: vec![Cidr::parse("127.0.0.0", Some(8)).unwrap()],
            ..Default::default()
        };
        let other = ChainMatch {
            source_prefix_ranges: vec![Cidr::parse("10.0.0.0", Some(8)).unwrap()],
            ..Default::default()
        };
        assert_eq!(select(&[&other, &narrow], &meta(None, "tls", &[])), Some(1));
        assert!(Cidr::parse("10.1.2.3", Some(33)).is_err());
        assert!(Cidr::parse("10.1.2.3", Some(16))
            .unwrap()
            .contains("10.1.9.9".parse().unwrap()));
    }
}
