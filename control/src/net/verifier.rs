//! The rustls check of the certificate a member answers with: the chain
//! and TLS name exactly as before (webpki against the trusted CAs), then
//! the node name and role of [`Expected`].

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, RootCertStore, SignatureScheme};

use crate::net::expected::{Expected, WrongPeer};

#[derive(Debug)]
pub struct MemberVerifier {
    chain: Arc<WebPkiServerVerifier>,
    expected: Expected,
}

impl MemberVerifier {
    /// `ca_bundle_pem`: every trusted CA, PEM-concatenated.
    pub fn new(ca_bundle_pem: &str, expected: Expected) -> Result<Self, String> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_bundle_pem.as_bytes()) {
            let cert = cert.map_err(|e| format!("trusted CAs: {e}"))?;
            roots.add(cert).map_err(|e| format!("trusted CAs: {e}"))?;
        }
        let chain = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| format!("trusted CAs: {e}"))?;
        Ok(Self { chain, expected })
    }
}

/// The process's default provider if one was installed, else ring (the
/// one tonic is built with).
pub fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// The [`WrongPeer`] a failed handshake reports, if that was why it failed.
pub fn wrong_peer(e: &rustls::Error) -> Option<&WrongPeer> {
    match e {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
            inner.downcast_ref::<WrongPeer>()
        }
        _ => None,
    }
}

impl ServerCertVerifier for MemberVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.chain.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        let id = elton_trust::identity::parse_identity(end_entity.as_ref()).map_err(|e| {
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
        })?;
        self.expected.check(&id).map_err(|wrong| {
            tracing::warn!("control call refused: {wrong}");
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(wrong))))
        })?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use elton_trust::{ClusterCa, Role as CertRole};

    use crate::types::{Member, Role};

    fn der(ca: &ClusterCa, node: &str, role: CertRole) -> CertificateDer<'static> {
        let pem = ca.issue(node, role, &[]).unwrap().cert_pem;
        CertificateDer::from(elton_trust::pki::first_der(&pem).unwrap())
    }

    fn verify(v: &MemberVerifier, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let name = ServerName::try_from(v.expected.server_name()).unwrap();
        v.verify_server_cert(cert, &[], &name, &[], UnixTime::now())
            .map(|_| ())
    }

    #[test]
    fn another_member_of_the_cluster_is_refused() {
        let ca = ClusterCa::create("c").unwrap();
        let m2 = Member {
            name: "m2".into(),
            addr: "https://127.0.0.1:1".into(),
            role: Role::Voter,
        };
        let v = MemberVerifier::new(ca.cert_pem(), Expected::member(&m2)).unwrap();
        verify(&v, &der(&ca, "m2", CertRole::Master)).unwrap();
        let err = verify(&v, &der(&ca, "m3", CertRole::Master)).unwrap_err();
        let wrong = wrong_peer(&err).expect("a wrong peer");
        assert_eq!(wrong.found, "m3");
        // A certificate of an untrusted CA naming m2 fails the chain, as
        // before; that is not a wrong peer but no peer at all.
        let stranger = ClusterCa::create("c").unwrap();
        let err = verify(&v, &der(&stranger, "m2", CertRole::Master)).unwrap_err();
        assert!(wrong_peer(&err).is_none(), "{err}");
    }
}
