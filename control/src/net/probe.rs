//! A bare TLS handshake with a member's address, to learn before adding it
//! whether the party answering there is that member. Replication would
//! refuse a wrong one anyway ([`crate::net::verifier`]), but only after it
//! was in the membership; a join with a wrong address is better refused
//! with nothing changed.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tonic::codegen::http::Uri;

use crate::net::expected::{Expected, WrongPeer};
use crate::net::tls::MemberTls;
use crate::net::verifier::wrong_peer;

/// What answered at an address.
#[derive(Debug)]
pub enum Probe {
    /// The expected member.
    Confirmed,
    /// Someone else (a trusted node, but not the one expected).
    WrongPeer(WrongPeer),
    /// Nothing that finished a handshake (down, not listening, an
    /// untrusted certificate): the member may not have started yet.
    Inconclusive(String),
}

pub async fn probe(tls: &MemberTls, addr: &str, expected: Expected, timeout: Duration) -> Probe {
    match tokio::time::timeout(timeout, handshake(tls, addr, expected)).await {
        Ok(p) => p,
        Err(_) => Probe::Inconclusive(format!("no TLS handshake within {timeout:?}")),
    }
}

async fn handshake(tls: &MemberTls, addr: &str, expected: Expected) -> Probe {
    let uri: Uri = match addr.parse() {
        Ok(u) => u,
        Err(e) => return Probe::Inconclusive(format!("address {addr:?}: {e}")),
    };
    let Some(host) = uri.host() else {
        return Probe::Inconclusive(format!("address {addr:?} has no host"));
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(443);
    let server_name = match ServerName::try_from(expected.server_name()) {
        Ok(n) => n,
        Err(e) => return Probe::Inconclusive(e.to_string()),
    };
    let config = match tls.rustls_client(expected) {
        Ok(c) => c,
        Err(e) => return Probe::Inconclusive(e),
    };
    let tcp = match TcpStream::connect((host, port)).await {
        Ok(t) => t,
        Err(e) => return Probe::Inconclusive(format!("connecting to {addr}: {e}")),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    match connector.connect(server_name, tcp).await {
        Ok(_) => Probe::Confirmed,
        Err(e) => {
            let tls_error = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
            match tls_error.and_then(wrong_peer) {
                Some(wrong) => Probe::WrongPeer(wrong.clone()),
                None => Probe::Inconclusive(format!("TLS with {addr}: {e}")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use elton_trust::{ClusterCa, Role as CertRole};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    use crate::net::verifier::provider;
    use crate::types::{Member, Role};

    /// A TLS server on 127.0.0.1 presenting `node`'s certificate; returns
    /// its https URL.
    async fn serve_as(ca: &ClusterCa, node: &str) -> String {
        let issued = ca.issue(node, CertRole::Master, &[]).unwrap();
        let certs = CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let _ = acceptor.accept(tcp).await;
            }
        });
        format!("https://{addr}")
    }

    #[tokio::test]
    async fn an_address_answered_by_another_member_is_refused() {
        let ca = ClusterCa::create("c").unwrap();
        let me = ca.issue("m1", CertRole::Master, &[]).unwrap();
        let tls = MemberTls {
            cert_pem: me.cert_pem,
            key_pem: me.key_pem,
            ca_bundle_pem: ca.cert_pem().to_string(),
        };
        let m2 = |addr: &str| {
            Expected::member(&Member {
                name: "m2".into(),
                addr: addr.into(),
                role: Role::Voter,
            })
        };
        let wait = Duration::from_secs(5);
        let at_m2 = serve_as(&ca, "m2").await;
        let p = probe(&tls, &at_m2, m2(&at_m2), wait).await;
        assert!(matches!(p, Probe::Confirmed), "{p:?}");
        let at_m3 = serve_as(&ca, "m3").await;
        match probe(&tls, &at_m3, m2(&at_m3), wait).await {
            Probe::WrongPeer(w) => assert_eq!(w.found, "m3"),
            other => panic!("{other:?}"),
        }
        // Nobody listening: the member may not have started.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("https://{}", l.local_addr().unwrap())
        };
        let p = probe(&tls, &closed, m2(&closed), wait).await;
        assert!(matches!(p, Probe::Inconclusive(_)), "{p:?}");
    }
}
