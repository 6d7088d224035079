//! Listener-side TLS (`DownstreamTlsContext`).

use super::certs::{self, CertInfo, SanMatcher};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, Error, ServerConfig, SignatureScheme};
use std::sync::Arc;

/// A listener's TLS: the rustls config and what `/certs` reports.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub config: Arc<ServerConfig>,
    /// `config` without ALPN, for clients that offer none of its protocols.
    config_no_alpn: Arc<ServerConfig>,
    pub certs: Vec<CertInfo>,
    pub ca: Option<CertInfo>,
}

/// A certificate and key in PEM, with where they came from.
pub struct PemPair {
    pub chain: String,
    pub key: String,
    pub source: String,
}

pub struct ServerTlsSettings {
    pub certs: Vec<PemPair>,
    pub alpn: Vec<String>,
    pub min_version: Option<String>,
    pub max_version: Option<String>,
    pub require_client_certificate: bool,
    pub trusted_ca: Option<(String, String)>,
    pub san_matchers: Vec<SanMatcher>,
}

/// An error with the field (relative to `common_tls_context`'s parent) it is about.
pub type FieldErr = (String, String);

impl ServerTls {
    pub fn build(s: ServerTlsSettings) -> Result<ServerTls, FieldErr> {
        let provider = super::provider();
        if s.certs.is_empty() {
            return Err((
                "common_tls_context.tls_certificates".into(),
                "a TLS listener needs at least one certificate".into(),
            ));
        }
        let mut keys = Vec::new();
        let mut infos = Vec::new();
        for (i, pair) in s.certs.iter().enumerate() {
            let at = |f: &str| format!("common_tls_context.tls_certificates[{i}].{f}");
            let chain =
                certs::parse_chain(&pair.chain).map_err(|e| (at("certificate_chain"), e))?;
            let key = certs::parse_key(&pair.key).map_err(|e| (at("private_key"), e))?;
            let signing = provider
                .key_provider
                .load_private_key(key)
                .map_err(|e| (at("private_key"), format!("unusable private key: {e}")))?;
            let info = certs::inspect(&chain[0], &pair.source)
                .map_err(|e| (at("certificate_chain"), e))?;
            let names: Vec<String> = info.dns_names().map(str::to_owned).collect();
            keys.push((Arc::new(CertifiedKey::new(chain, signing)), names));
            infos.push(info);
        }
        let versions = super::versions(s.min_version.as_deref(), s.max_version.as_deref(), true)
            .map_err(|e| ("common_tls_context.tls_params".to_string(), e))?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)
            .map_err(|e| ("common_tls_context.tls_params".to_string(), e.to_string()))?;
        let mut ca_info = None;
        let builder = match &s.trusted_ca {
            Some((pem, source)) => {
                let path = "common_tls_context.validation_context.trusted_ca".to_string();
                let (roots, info) =
                    certs::root_store(pem, source).map_err(|e| (path.clone(), e))?;
                ca_info = info;
                let mut vb =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
                if !s.require_client_certificate {
                    vb = vb.allow_unauthenticated();
                }
                let inner = vb.build().map_err(|e| (path, e.to_string()))?;
                builder.with_client_cert_verifier(Arc::new(SanCheckingClientVerifier {
                    inner,
                    matchers: s.san_matchers.clone(),
                }))
            }
            None if s.require_client_certificate => {
                return Err((
                    "require_client_certificate".into(),
                    "requires common_tls_context.validation_context.trusted_ca".into(),
                ))
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(Arc::new(SniResolver { certs: keys }));
        let config_no_alpn = Arc::new(config.clone());
        config.alpn_protocols = s.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Ok(ServerTls {
            config: Arc::new(config),
            config_no_alpn,
            certs: infos,
            ca: ca_info,
        })
    }
}

impl ServerTls {
    /// The server side of a TLS handshake. A client offering ALPN protocols none of which the
    /// listener lists gets a handshake without ALPN, as in Envoy (BoringSSL's select callback
    /// answers NOACK), rather than rustls's `no_application_protocol` alert.
    pub async fn accept<IO>(&self, io: IO) -> std::io::Result<tokio_rustls::server::TlsStream<IO>>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let start =
            tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io).await?;
        let ours = &self.config.alpn_protocols;
        let no_overlap = match start.client_hello().alpn() {
            Some(mut offered) => !ours.is_empty() && !offered.any(|p| ours.iter().any(|o| o == p)),
            None => false,
        };
        let config = if no_overlap {
            self.config_no_alpn.clone()
        } else {
            self.config.clone()
        };
        start.into_stream(config).await
    }
}

/// Envoy picks the certificate whose names cover the SNI (exact names before wildcards) and
/// falls back to the first certificate.
#[derive(Debug)]
struct SniResolver {
    certs: Vec<(Arc<CertifiedKey>, Vec<String>)>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(sni) = hello.server_name() {
            let exact = self.certs.iter().find(|(_, names)| {
                names
                    .iter()
                    .any(|n| !n.starts_with("*.") && n.eq_ignore_ascii_case(sni))
            });
            let wildcard = || {
                self.certs
                    .iter()
                    .find(|(_, names)| names.iter().any(|n| certs::dns_name_matches(n, sni)))
            };
            if let Some((k, _)) = exact.or_else(wildcard) {
                return Some(k.clone());
            }
        }
        self.certs.first().map(|(k, _)| k.clone())
    }
}

/// webpki's chain verification, then Envoy's `match_typed_subject_alt_names` on the client's
/// certificate.
#[derive(Debug)]
struct SanCheckingClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    matchers: Vec<SanMatcher>,
}

impl ClientCertVerifier for SanCheckingClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let ok = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if !certs::sans_match(&self.matchers, end_entity) {
            return Err(Error::General(
                "client certificate SAN does not match".into(),
            ));
        }
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
