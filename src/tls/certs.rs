//! Reading PEM certificates and keys, and the certificate facts Envoy matches on and reports:
//! subject alternative names and expiry.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::time::{Duration, SystemTime};

pub fn parse_chain(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("invalid PEM certificate: {e}"))?;
    if chain.is_empty() {
        return Err("no certificate found in PEM".into());
    }
    Ok(chain)
}

pub fn parse_key(pem: &str) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| format!("invalid PEM private key: {e}"))
}

/// A `trusted_ca` bundle as a root store, with what `/certs` shows about its first certificate.
pub fn root_store(
    pem: &str,
    source: &str,
) -> Result<(rustls::RootCertStore, Option<CertInfo>), String> {
    let cas = parse_chain(pem)?;
    let info = inspect(&cas[0], source).ok();
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        roots
            .add(ca)
            .map_err(|e| format!("unusable CA certificate: {e}"))?;
    }
    Ok((roots, info))
}

/// What `/certs` shows about one certificate.
#[derive(Debug, Clone)]
pub struct CertInfo {
    /// Where it came from: a file path, or `<inline>`.
    pub path: String,
    pub serial_number: String,
    pub subject_alt_names: Vec<San>,
    pub not_after: SystemTime,
    pub valid_from: SystemTime,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum San {
    Dns(String),
    Uri(String),
    Email(String),
    Ip(String),
}

impl CertInfo {
    pub fn days_until_expiration(&self) -> i64 {
        match self.not_after.duration_since(SystemTime::now()) {
            Ok(d) => (d.as_secs() / 86_400) as i64,
            Err(e) => -((e.duration().as_secs() / 86_400) as i64),
        }
    }

    pub fn dns_names(&self) -> impl Iterator<Item = &str> {
        self.subject_alt_names.iter().filter_map(|s| match s {
            San::Dns(d) => Some(d.as_str()),
            _ => None,
        })
    }
}

pub fn inspect(der: &CertificateDer<'_>, path: &str) -> Result<CertInfo, String> {
    use x509_parser::prelude::*;
    let (_, cert) =
        X509Certificate::from_der(der.as_ref()).map_err(|e| format!("invalid certificate: {e}"))?;
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                GeneralName::DNSName(d) => sans.push(San::Dns(d.to_string())),
                GeneralName::URI(u) => sans.push(San::Uri(u.to_string())),
                GeneralName::RFC822Name(e) => sans.push(San::Email(e.to_string())),
                GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => <[u8; 4]>::try_from(*b)
                            .ok()
                            .map(|a| std::net::IpAddr::from(a).to_string()),
                        16 => <[u8; 16]>::try_from(*b)
                            .ok()
                            .map(|a| std::net::IpAddr::from(a).to_string()),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        sans.push(San::Ip(ip));
                    }
                }
                _ => {}
            }
        }
    }
    let to_time = |t: &ASN1Time| {
        let secs = t.timestamp();
        if secs >= 0 {
            SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
        } else {
            SystemTime::UNIX_EPOCH
        }
    };
    Ok(CertInfo {
        path: path.to_string(),
        serial_number: cert.raw_serial_as_string().replace(':', ""),
        subject_alt_names: sans,
        not_after: to_time(&cert.validity().not_after),
        valid_from: to_time(&cert.validity().not_before),
    })
}

/// Does a certificate DNS name (possibly `*.example.com`) cover `host`? A wildcard covers exactly
/// one left-most label (RFC 6125 §6.4.3).
pub fn dns_name_matches(pattern: &str, host: &str) -> bool {
    if let Some(suffix) = pattern.strip_prefix("*.") {
        match host.split_once('.') {
            Some((label, rest)) => !label.is_empty() && rest.eq_ignore_ascii_case(suffix),
            None => false,
        }
    } else {
        pattern.eq_ignore_ascii_case(host)
    }
}

/// `match_typed_subject_alt_names[]`: a SAN type and a string matcher.
#[derive(Debug, Clone)]
pub struct SanMatcher {
    pub san_type: SanType,
    pub matcher: StringMatch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SanType {
    Dns,
    Uri,
    Email,
    IpAddress,
}

#[derive(Debug, Clone)]
pub enum StringMatch {
    Exact(String, bool),
    Prefix(String, bool),
    Suffix(String, bool),
    Contains(String, bool),
}

impl StringMatch {
    pub fn matches(&self, s: &str) -> bool {
        let fold = |v: &str, ic: bool| {
            if ic {
                v.to_ascii_lowercase()
            } else {
                v.to_string()
            }
        };
        match self {
            StringMatch::Exact(p, ic) => fold(s, *ic) == fold(p, *ic),
            StringMatch::Prefix(p, ic) => fold(s, *ic).starts_with(&fold(p, *ic)),
            StringMatch::Suffix(p, ic) => fold(s, *ic).ends_with(&fold(p, *ic)),
            StringMatch::Contains(p, ic) => fold(s, *ic).contains(&fold(p, *ic)),
        }
    }
}

impl SanMatcher {
    fn matches(&self, san: &San) -> bool {
        match (self.san_type, san) {
            // A DNS matcher given an exact name also accepts a wildcard certificate covering it,
            // as Envoy's DNS SAN matching does.
            (SanType::Dns, San::Dns(d)) => {
                self.matcher.matches(d)
                    || matches!(&self.matcher, StringMatch::Exact(p, _) if dns_name_matches(d, p))
            }
            (SanType::Uri, San::Uri(u)) => self.matcher.matches(u),
            (SanType::Email, San::Email(e)) => self.matcher.matches(e),
            (SanType::IpAddress, San::Ip(i)) => self.matcher.matches(i),
            _ => false,
        }
    }
}

/// Envoy accepts a peer certificate when any SAN matches any matcher (or no matcher is set).
pub fn sans_match(matchers: &[SanMatcher], der: &CertificateDer<'_>) -> bool {
    if matchers.is_empty() {
        return true;
    }
    let Ok(info) = inspect(der, "") else {
        return false;
    };
    info.subject_alt_names
        .iter()
        .any(|san| matchers.iter().any(|m| m.matches(san)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_one_label() {
        assert!(dns_name_matches("*.example.com", "a.example.com"));
        assert!(dns_name_matches("*.example.com", "A.Example.com"));
        assert!(!dns_name_matches("*.example.com", "a.b.example.com"));
        assert!(!dns_name_matches("*.example.com", "example.com"));
        assert!(dns_name_matches("example.com", "EXAMPLE.com"));
    }

    #[test]
    fn string_matchers() {
        assert!(StringMatch::Exact("a.B".into(), true).matches("A.b"));
        assert!(!StringMatch::Exact("a.B".into(), false).matches("A.b"));
        assert!(StringMatch::Suffix(".svc".into(), false).matches("x.svc"));
        assert!(StringMatch::Prefix("spiffe://".into(), false).matches("spiffe://a/b"));
    }
}
