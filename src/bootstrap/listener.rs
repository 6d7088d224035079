//! Validating listeners: listener filters, filter chains with their match criteria, transport
//! sockets and network filters.

use super::duration::ProtoDuration;
use super::load::deserialize_at;
use super::proto::{self, *};
use super::validate::{
    address_stat_name, http_connection_manager, listen_address, type_url, Errors, HcmConfig,
};
use crate::listener::filter_chain::{ChainMatch, Cidr, SourceType};
use crate::network::NetworkFilterConfig;
use crate::tls::ServerTls;
use serde_json::Value;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub name: String,
    pub address: SocketAddr,
    /// `listener.<stat_prefix>.`; Envoy defaults it to the address with `:` replaced by `_`.
    pub stat_prefix: String,
    pub filter_chains: Vec<FilterChainConfig>,
    pub default_filter_chain: Option<FilterChainConfig>,
    /// `envoy.filters.listener.tls_inspector` is configured.
    pub tls_inspector: bool,
    pub listener_filters_timeout: Duration,
    pub continue_on_listener_filters_timeout: bool,
}

#[derive(Debug, Clone)]
pub struct FilterChainConfig {
    pub name: String,
    pub matcher: ChainMatch,
    pub tls: Option<ServerTls>,
    pub filters: Vec<NetworkFilterConfig>,
    pub terminal: TerminalConfig,
}

/// The filter that ends a chain and owns the connection's bytes.
#[derive(Debug, Clone)]
pub enum TerminalConfig {
    Http(Arc<HcmConfig>),
    TcpProxy(Arc<crate::network::tcp_proxy::TcpProxyConfig>),
}

/// Envoy's default `listener_filters_timeout`.
const DEFAULT_LISTENER_FILTERS_TIMEOUT: Duration = Duration::from_secs(15);
/// What `listener_filters_timeout: 0s` (no timeout) becomes: a bound never reached.
const NO_LISTENER_FILTERS_TIMEOUT: Duration = Duration::from_secs(u32::MAX as u64);

pub(crate) fn listener(
    l: proto::Listener,
    path: &str,
    clusters: &HashSet<String>,
    errs: &mut Errors,
) -> Option<ListenerConfig> {
    let address = listen_address(&l.address, &format!("{path}.address"), errs);
    let mut tls_inspector = false;
    for (i, f) in l.listener_filters.into_iter().enumerate() {
        let fpath = format!("{path}.listener_filters[{i}]");
        match type_url(&f.typed_config) {
            Some(TLS_INSPECTOR_TYPE) => tls_inspector = true,
            Some(other) => errs.add(
                format!("{fpath}.typed_config.@type"),
                format!("unsupported listener filter type '{other}'"),
            ),
            None if f.name == TLS_INSPECTOR_NAME => tls_inspector = true,
            None => errs.add(
                format!("{fpath}.name"),
                format!("unsupported listener filter '{}'", f.name),
            ),
        }
    }
    if l.filter_chains.is_empty() && l.default_filter_chain.is_none() {
        errs.add(
            format!("{path}.filter_chains"),
            "a listener needs at least one filter chain",
        );
        return None;
    }
    let mut chains = Vec::new();
    let mut seen: Vec<(ChainMatch, usize)> = Vec::new();
    for (ci, chain) in l.filter_chains.into_iter().enumerate() {
        let cpath = format!("{path}.filter_chains[{ci}]");
        if let Some(c) = filter_chain(chain, &cpath, clusters, errs) {
            // Envoy rejects chains that no connection could tell apart.
            if let Some((_, other)) = seen.iter().find(|(m, _)| *m == c.matcher) {
                errs.add(
                    format!("{cpath}.filter_chain_match"),
                    format!("multiple filter chains with the same matching rules (filter_chains[{other}])"),
                );
            }
            seen.push((c.matcher.clone(), ci));
            chains.push(c);
        }
    }
    let default_filter_chain = l
        .default_filter_chain
        .and_then(|c| filter_chain(c, &format!("{path}.default_filter_chain"), clusters, errs));
    let needs_inspector = chains.iter().any(|c| {
        !c.matcher.server_names.is_empty()
            || c.matcher.transport_protocol.as_deref() == Some("tls")
            || !c.matcher.application_protocols.is_empty()
    });
    if needs_inspector && !tls_inspector {
        // Envoy accepts this and silently never matches; an error is kinder.
        errs.add(
            format!("{path}.listener_filters"),
            "filter chains match on server_names/transport_protocol/application_protocols, which needs envoy.filters.listener.tls_inspector",
        );
    }
    let address = address?;
    let stat_prefix = l.stat_prefix.unwrap_or_else(|| address_stat_name(&address));
    Some(ListenerConfig {
        name: l.name,
        address,
        stat_prefix,
        filter_chains: chains,
        default_filter_chain,
        tls_inspector,
        listener_filters_timeout: match l.listener_filters_timeout {
            // Envoy: 0 disables the timeout.
            Some(ProtoDuration(d)) if d.is_zero() => NO_LISTENER_FILTERS_TIMEOUT,
            Some(ProtoDuration(d)) => d,
            None => DEFAULT_LISTENER_FILTERS_TIMEOUT,
        },
        continue_on_listener_filters_timeout: l
            .continue_on_listener_filters_timeout
            .unwrap_or(false),
    })
}

fn filter_chain(
    chain: proto::FilterChain,
    path: &str,
    clusters: &HashSet<String>,
    errs: &mut Errors,
) -> Option<FilterChainConfig> {
    let matcher = chain_match(
        chain.filter_chain_match.unwrap_or_default(),
        &format!("{path}.filter_chain_match"),
        errs,
    );
    let tls = chain
        .transport_socket
        .and_then(|ts| super::tls::downstream(ts, &format!("{path}.transport_socket"), errs));
    if chain.filters.is_empty() {
        errs.add(
            format!("{path}.filters"),
            "a filter chain needs a terminal filter",
        );
        return None;
    }
    let count = chain.filters.len();
    let mut filters = Vec::new();
    let mut terminal = None;
    for (fi, f) in chain.filters.into_iter().enumerate() {
        let fpath = format!("{path}.filters[{fi}]");
        let last = fi + 1 == count;
        let url = type_url(&f.typed_config).map(str::to_owned);
        let is_hcm = match url.as_deref() {
            Some(HCM_TYPE) => true,
            None => f.name == HCM_NAME,
            Some(_) => false,
        };
        if is_hcm {
            if !last {
                errs.add(
                    fpath.clone(),
                    "http_connection_manager is a terminal filter and must be last",
                );
            }
            let tpath = format!("{fpath}.typed_config");
            let Some(mut cfg) = f.typed_config else {
                errs.add(
                    tpath,
                    "http_connection_manager needs a typed_config (stat_prefix is required)",
                );
                continue;
            };
            if let Value::Object(map) = &mut cfg {
                map.remove("@type");
            }
            match deserialize_at::<HttpConnectionManager>(cfg, &tpath) {
                Ok(parsed) => {
                    terminal = http_connection_manager(parsed, &tpath, clusters, errs)
                        .map(|h| TerminalConfig::Http(Arc::new(h)))
                }
                Err(e) => errs.0.push(e),
            }
            continue;
        }
        match crate::network::parse_filter(
            &f.name,
            url.as_deref(),
            f.typed_config,
            &fpath,
            clusters,
            errs,
        ) {
            Some(crate::network::Parsed::Filter(nf)) => {
                if last {
                    errs.add(fpath, "the last filter of a chain must be a terminal filter (http_connection_manager or tcp_proxy)");
                }
                filters.push(nf);
            }
            Some(crate::network::Parsed::Terminal(t)) => {
                if !last {
                    errs.add(fpath.clone(), "a terminal filter must be last");
                }
                terminal = Some(t);
            }
            None => {}
        }
    }
    Some(FilterChainConfig {
        name: chain.name.unwrap_or_default(),
        matcher,
        tls,
        filters,
        terminal: terminal?,
    })
}

fn cidrs(ranges: &[CidrRange], path: &str, errs: &mut Errors) -> Vec<Cidr> {
    ranges
        .iter()
        .enumerate()
        .filter_map(
            |(i, r)| match Cidr::parse(&r.address_prefix, r.prefix_len) {
                Ok(c) => Some(c),
                Err(e) => {
                    errs.add(format!("{path}[{i}]"), e);
                    None
                }
            },
        )
        .collect()
}

fn chain_match(m: FilterChainMatch, path: &str, errs: &mut Errors) -> ChainMatch {
    let port = |v: u32, p: String, errs: &mut Errors| match u16::try_from(v) {
        Ok(p) if p > 0 => Some(p),
        _ => {
            errs.add(p, format!("{v} is not a port (1-65535)"));
            None
        }
    };
    let destination_port = m
        .destination_port
        .and_then(|v| port(v, format!("{path}.destination_port"), errs));
    let mut server_names = Vec::new();
    for (i, n) in m.server_names.iter().enumerate() {
        let n = n.to_ascii_lowercase();
        // Envoy: no partial wildcards and no bare `*`.
        let ok = !n.is_empty()
            && (!n.contains('*') || (n.starts_with("*.") && n.matches('*').count() == 1));
        if ok {
            server_names.push(n);
        } else {
            errs.add(
                format!("{path}.server_names[{i}]"),
                format!("'{n}': only a leading '*.' wildcard is allowed"),
            );
        }
    }
    if let Some(t) = &m.transport_protocol {
        if t != "tls" && t != "raw_buffer" {
            errs.unsupported(format!("{path}.transport_protocol"), t);
        }
    }
    let source_type = match m.source_type.as_deref() {
        None | Some("ANY") => SourceType::Any,
        Some("SAME_IP_OR_LOOPBACK") => SourceType::SameIpOrLoopback,
        Some("EXTERNAL") => SourceType::External,
        Some(other) => {
            errs.unsupported(format!("{path}.source_type"), other);
            SourceType::Any
        }
    };
    let source_ports = m
        .source_ports
        .iter()
        .enumerate()
        .filter_map(|(i, v)| port(*v, format!("{path}.source_ports[{i}]"), errs))
        .collect();
    ChainMatch {
        destination_port,
        prefix_ranges: cidrs(&m.prefix_ranges, &format!("{path}.prefix_ranges"), errs),
        server_names,
        transport_protocol: m.transport_protocol,
        application_protocols: m.application_protocols,
        direct_source_prefix_ranges: cidrs(
            &m.direct_source_prefix_ranges,
            &format!("{path}.direct_source_prefix_ranges"),
            errs,
        ),
        source_type,
        source_prefix_ranges: cidrs(
            &m.source_prefix_ranges,
            &format!("{path}.source_prefix_ranges"),
            errs,
        ),
        source_ports,
    }
}
