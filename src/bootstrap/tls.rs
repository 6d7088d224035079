//! Validating TLS transport sockets into rustls configs (errors carry their field paths).

use super::proto::*;
use super::validate::{data_source, type_url, Errors, UpstreamProtocol};
use crate::tls::certs::{SanMatcher, SanType, StringMatch};
use crate::tls::client::ClientTlsSettings;
use crate::tls::server::{PemPair, ServerTlsSettings};
use crate::tls::{ClientTls, ServerTls};

fn source_name(d: &DataSource) -> String {
    d.filename.clone().unwrap_or_else(|| "<inline>".into())
}

fn pem_pair(c: &TlsCertificate, path: &str, errs: &mut Errors) -> Option<PemPair> {
    let chain = data_source(
        &c.certificate_chain,
        &format!("{path}.certificate_chain"),
        errs,
    );
    let key = data_source(&c.private_key, &format!("{path}.private_key"), errs);
    Some(PemPair {
        chain: chain?,
        key: key?,
        source: source_name(&c.certificate_chain),
    })
}

fn san_matchers(
    v: &CertificateValidationContext,
    path: &str,
    errs: &mut Errors,
) -> Vec<SanMatcher> {
    let mut out = Vec::new();
    for (i, m) in v.match_typed_subject_alt_names.iter().enumerate() {
        let mpath = format!("{path}.match_typed_subject_alt_names[{i}]");
        let san_type = match m.san_type.as_str() {
            "DNS" => SanType::Dns,
            "URI" => SanType::Uri,
            "EMAIL" => SanType::Email,
            "IP_ADDRESS" => SanType::IpAddress,
            other => {
                errs.unsupported(format!("{mpath}.san_type"), other);
                continue;
            }
        };
        let ic = m.matcher.ignore_case.unwrap_or(false);
        let sm = &m.matcher;
        let matcher = match (&sm.exact, &sm.prefix, &sm.suffix, &sm.contains) {
            (Some(e), None, None, None) => StringMatch::Exact(e.clone(), ic),
            (None, Some(p), None, None) => StringMatch::Prefix(p.clone(), ic),
            (None, None, Some(s), None) => StringMatch::Suffix(s.clone(), ic),
            (None, None, None, Some(c)) => StringMatch::Contains(c.clone(), ic),
            _ => {
                errs.add(
                    format!("{mpath}.matcher"),
                    "set exactly one of exact, prefix, suffix, contains",
                );
                continue;
            }
        };
        out.push(SanMatcher { san_type, matcher });
    }
    out
}

fn trusted_ca(
    v: &CertificateValidationContext,
    path: &str,
    errs: &mut Errors,
) -> Option<(String, String)> {
    let ca = v.trusted_ca.as_ref()?;
    let pem = data_source(ca, &format!("{path}.trusted_ca"), errs)?;
    Some((pem, source_name(ca)))
}

/// Strip `@type` after checking it is `expected`; `None` (error recorded) otherwise.
fn typed<T: serde::de::DeserializeOwned + Default>(
    ts: TypedExtension,
    expected: &str,
    path: &str,
    errs: &mut Errors,
) -> Option<T> {
    match type_url(&ts.typed_config) {
        Some(t) if t == expected => {
            errs.typed::<T>(ts.typed_config, &format!("{path}.typed_config"))
        }
        Some(RAW_BUFFER_TYPE) => None,
        Some(other) => {
            errs.add(
                format!("{path}.typed_config.@type"),
                format!("unsupported transport socket type '{other}'"),
            );
            None
        }
        None => {
            errs.add(
                format!("{path}.typed_config"),
                format!(
                    "transport socket '{}' needs a typed_config with @type",
                    ts.name
                ),
            );
            None
        }
    }
}

pub(crate) fn downstream(ts: TypedExtension, path: &str, errs: &mut Errors) -> Option<ServerTls> {
    let ctx: DownstreamTlsContext = typed(ts, DOWNSTREAM_TLS_TYPE, path, errs)?;
    let tpath = format!("{path}.typed_config");
    let common = ctx.common_tls_context.unwrap_or_default();
    let cpath = format!("{tpath}.common_tls_context");
    let mut certs = Vec::new();
    for (i, c) in common.tls_certificates.iter().enumerate() {
        certs.push(pem_pair(
            c,
            &format!("{cpath}.tls_certificates[{i}]"),
            errs,
        )?);
    }
    let (ca, sans) = match &common.validation_context {
        Some(v) => {
            let vpath = format!("{cpath}.validation_context");
            (trusted_ca(v, &vpath, errs), san_matchers(v, &vpath, errs))
        }
        None => (None, Vec::new()),
    };
    let params = common.tls_params.unwrap_or_default();
    let settings = ServerTlsSettings {
        certs,
        alpn: common.alpn_protocols,
        min_version: params.tls_minimum_protocol_version,
        max_version: params.tls_maximum_protocol_version,
        require_client_certificate: ctx.require_client_certificate.unwrap_or(false),
        trusted_ca: ca,
        san_matchers: sans,
    };
    match ServerTls::build(settings) {
        Ok(t) => Some(t),
        Err((field, msg)) => {
            errs.add(format!("{tpath}.{field}"), msg);
            None
        }
    }
}

pub(crate) fn upstream(
    ts: TypedExtension,
    path: &str,
    protocol: UpstreamProtocol,
    errs: &mut Errors,
) -> Option<ClientTls> {
    let ctx: UpstreamTlsContext = typed(ts, UPSTREAM_TLS_TYPE, path, errs)?;
    let tpath = format!("{path}.typed_config");
    let common = ctx.common_tls_context.unwrap_or_default();
    let cpath = format!("{tpath}.common_tls_context");
    if common.tls_certificates.len() > 1 {
        errs.add(
            format!("{cpath}.tls_certificates"),
            "at most one client certificate is supported",
        );
    }
    let client_cert = match common.tls_certificates.first() {
        Some(c) => Some(pem_pair(c, &format!("{cpath}.tls_certificates[0]"), errs)?),
        None => None,
    };
    let (ca, sans) = match &common.validation_context {
        Some(v) => {
            let vpath = format!("{cpath}.validation_context");
            (trusted_ca(v, &vpath, errs), san_matchers(v, &vpath, errs))
        }
        None => (None, Vec::new()),
    };
    // ALPN as configured, else what the cluster's protocol needs.
    let alpn = if !common.alpn_protocols.is_empty() {
        common.alpn_protocols
    } else {
        match protocol {
            UpstreamProtocol::Http1 => vec!["http/1.1".into()],
            UpstreamProtocol::Http2(_) => vec!["h2".into()],
            UpstreamProtocol::UseDownstream(_) => vec!["h2".into(), "http/1.1".into()],
        }
    };
    let params = common.tls_params.unwrap_or_default();
    let settings = ClientTlsSettings {
        sni: ctx.sni,
        client_cert,
        trusted_ca: ca,
        san_matchers: sans,
        alpn,
        min_version: params.tls_minimum_protocol_version,
        max_version: params.tls_maximum_protocol_version,
    };
    match ClientTls::build(settings) {
        Ok(t) => Some(t),
        Err((field, msg)) => {
            errs.add(format!("{tpath}.{field}"), msg);
            None
        }
    }
}
