//! The TLS material a member proves itself with and trusts others by.

use elton_trust::pki::{MASTER_SERVER_NAME, SLAVE_SERVER_NAME};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::types::Role;

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
    /// How this member calls another: presenting its own certificate,
    /// checking the other's against the trusted CAs and the TLS name of its
    /// role (masters are voters, slaves learners).
    pub fn client(&self, role: Role) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .domain_name(match role {
                Role::Voter => MASTER_SERVER_NAME,
                Role::Learner => SLAVE_SERVER_NAME,
            })
            .ca_certificate(Certificate::from_pem(&self.ca_bundle_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
    }

    /// A slave's control endpoint: only certificates of trusted CAs get in
    /// (slaves hold no tokens).
    pub fn learner_server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_bundle_pem))
    }
}
