//! The TLS material a member proves itself with and trusts others by.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::net::expected::Expected;
use crate::net::verifier::{MemberVerifier, provider};

/// This member's certificate and key, and the CAs whose members it talks
/// to: its own cluster's, plus peer clusters' in a WAN group.
#[derive(Clone)]
pub struct MemberTls {
    pub cert_pem: String,
    pub key_pem: String,
    /// Every trusted CA, PEM-concatenated.
    pub ca_bundle_pem: String,
}

impl MemberTls {
    /// How this member calls another: presenting its own certificate, and
    /// accepting only the certificate `expected` describes, chained to a
    /// trusted CA (see [`MemberVerifier`]).
    pub fn client(
        &self,
        expected: Expected,
    ) -> Result<(ClientTlsConfig, Arc<MemberVerifier>), String> {
        let config = ClientTlsConfig::new()
            .domain_name(expected.server_name())
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem));
        let verifier = MemberVerifier::new(&self.ca_bundle_pem, expected)?;
        Ok((config, Arc::new(verifier)))
    }

    /// The same as a rustls configuration, for a bare handshake
    /// ([`crate::net::probe`]).
    pub fn rustls_client(&self, expected: Expected) -> Result<rustls::ClientConfig, String> {
        let certs = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("own certificate: {e}"))?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| format!("own key: {e}"))?;
        let verifier = MemberVerifier::new(&self.ca_bundle_pem, expected)?;
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(certs, key)
            .map_err(|e| format!("own certificate: {e}"))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }

    /// A slave's control endpoint: only certificates of trusted CAs get in
    /// (slaves hold no tokens).
    pub fn learner_server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_bundle_pem))
    }
}
