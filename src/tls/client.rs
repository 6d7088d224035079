//! Cluster-side TLS (`UpstreamTlsContext`).

use super::certs::{self, CertInfo, SanMatcher};
use super::server::{FieldErr, PemPair};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, Error, RootCertStore, SignatureScheme};
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct ClientTls {
    pub config: Arc<ClientConfig>,
    /// `sni`: sent in the ClientHello when set (Envoy sends none otherwise).
    pub sni: Option<ServerName<'static>>,
    pub ca: Option<CertInfo>,
    pub certs: Vec<CertInfo>,
}

pub struct ClientTlsSettings {
    pub sni: Option<String>,
    pub client_cert: Option<PemPair>,
    pub trusted_ca: Option<(String, String)>,
    pub san_matchers: Vec<SanMatcher>,
    pub alpn: Vec<String>,
    pub min_version: Option<String>,
    pub max_version: Option<String>,
}

impl ClientTls {
    pub fn build(s: ClientTlsSettings) -> Result<ClientTls, FieldErr> {
        let provider = super::provider();
        let sni = match &s.sni {
            Some(name) => Some(
                ServerName::try_from(name.clone())
                    .map_err(|e| ("sni".to_string(), format!("invalid server name: {e}")))?,
            ),
            None => None,
        };
        let mut ca_info = None;
        let roots = match &s.trusted_ca {
            Some((pem, source)) => {
                let (roots, info) = certs::root_store(pem, source).map_err(|e| {
                    (
                        "common_tls_context.validation_context.trusted_ca".to_string(),
                        e,
                    )
                })?;
                ca_info = info;
                Some(Arc::new(roots))
            }
            None => None,
        };
        let versions = super::versions(s.min_version.as_deref(), s.max_version.as_deref(), false)
            .map_err(|e| ("common_tls_context.tls_params".to_string(), e))?;
        let verifier = Arc::new(UpstreamVerifier {
            roots,
            matchers: s.san_matchers.clone(),
            provider: provider.clone(),
        });
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)
            .map_err(|e| ("common_tls_context.tls_params".to_string(), e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut infos = Vec::new();
        let mut config = match &s.client_cert {
            Some(pair) => {
                let at = |f: &str| format!("common_tls_context.tls_certificates[0].{f}");
                let chain =
                    certs::parse_chain(&pair.chain).map_err(|e| (at("certificate_chain"), e))?;
                if let Ok(info) = certs::inspect(&chain[0], &pair.source) {
                    infos.push(info);
                }
                let key = certs::parse_key(&pair.key).map_err(|e| (at("private_key"), e))?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    (
                        at("private_key"),
                        format!("unusable client certificate: {e}"),
                    )
                })?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = s.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        // Without an SNI, an IP address is used as the rustls server name; rustls then sends no
        // SNI extension, which is what Envoy does when `sni` is unset.
        config.enable_sni = sni.is_some();
        Ok(ClientTls {
            config: Arc::new(config),
            sni,
            ca: ca_info,
            certs: infos,
        })
    }
}

/// Envoy's upstream validation: with `trusted_ca`, the chain must lead to it (expiry included);
/// with SAN matchers, a SAN must match. Without a validation context the certificate is not
/// verified, as in Envoy (which is why this verifier sits behind rustls's `dangerous()`): the
/// operator asked for encryption, not authentication. The host name is not checked against `sni`
/// unless a matcher says so, also as in Envoy.
#[derive(Debug)]
struct UpstreamVerifier {
    roots: Option<Arc<RootCertStore>>,
    matchers: Vec<SanMatcher>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for UpstreamVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        if let Some(roots) = &self.roots {
            let cert = ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.provider.signature_verification_algorithms.all,
            )?;
        }
        if !certs::sans_match(&self.matchers, end_entity) {
            return Err(Error::General(
                "upstream certificate SAN does not match".into(),
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
