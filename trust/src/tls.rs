//! tonic TLS settings. Masters require TLS 1.3/1.2 from everyone and a
//! client certificate from nodes and peers; the CLI and other clients
//! without a certificate authenticate with a bearer token instead
//! (client certificates are therefore optional at the handshake and the
//! master decides per call).

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::TrustAnchors;
use crate::pki::{MASTER_SERVER_NAME, NodeCredentials};

/// A master's server side: its own certificate, client certificates
/// checked against every trusted CA.
pub fn master_server(creds: &NodeCredentials, anchors: &TrustAnchors) -> ServerTlsConfig {
    ServerTlsConfig::new()
        .identity(Identity::from_pem(&creds.cert_pem, &creds.key_pem))
        .client_ca_root(Certificate::from_pem(anchors.bundle_pem()))
        .client_auth_optional(true)
}

/// A node calling a master of the cluster whose CA is `master_ca_pem`
/// (its own, or a peer's), presenting its certificate.
pub fn node_client(creds: &NodeCredentials, master_ca_pem: &str) -> ClientTlsConfig {
    ClientTlsConfig::new()
        .domain_name(MASTER_SERVER_NAME)
        .ca_certificate(Certificate::from_pem(master_ca_pem))
        .identity(Identity::from_pem(&creds.cert_pem, &creds.key_pem))
}

/// A client without a certificate (it sends a bearer token).
pub fn anonymous_client(master_ca_pem: &str) -> ClientTlsConfig {
    ClientTlsConfig::new()
        .domain_name(MASTER_SERVER_NAME)
        .ca_certificate(Certificate::from_pem(master_ca_pem))
}
