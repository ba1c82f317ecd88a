//! What a verified client certificate says, and which trusted CA said it.
//!
//! rustls has already checked, during the handshake, that the certificate
//! chains to one of the CAs the master trusts (its own cluster's and its
//! peers'). That alone does not tell which: a peer's CA could sign a
//! certificate that claims another cluster. So the issuing CA is found by
//! its signature here, and the certificate's cluster name (O) must be that
//! CA's cluster.

use std::collections::HashMap;
use std::sync::Mutex;

use x509_parser::certificate::X509Certificate;

use crate::TrustError;
use crate::pki::{Role, first_der};

/// The names a node certificate carries.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CertIdentity {
    pub cluster: String,
    pub node: String,
    pub role: Role,
}

/// A verified caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Authenticated {
    /// A node of this master's own cluster.
    Member(CertIdentity),
    /// A master of a configured peer cluster.
    Peer(CertIdentity),
}

/// Reads CN (node), O (cluster) and OU (role) of a certificate.
pub fn parse_identity(der: &[u8]) -> Result<CertIdentity, TrustError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| TrustError::Certificate(e.to_string()))?;
    identity_of(&cert)
}

fn identity_of(cert: &X509Certificate<'_>) -> Result<CertIdentity, TrustError> {
    let subject = cert.subject();
    fn one<'a>(
        what: &str,
        mut it: impl Iterator<Item = &'a x509_parser::x509::AttributeTypeAndValue<'a>>,
    ) -> Result<String, TrustError> {
        let first = it.next().and_then(|a| a.as_str().ok()).map(str::to_string);
        match (first, it.next()) {
            (Some(v), None) => Ok(v),
            _ => Err(TrustError::Untrusted(format!(
                "the certificate must carry exactly one {what}"
            ))),
        }
    }
    Ok(CertIdentity {
        node: one("common name (node)", subject.iter_common_name())?,
        cluster: one("organization (cluster)", subject.iter_organization())?,
        role: one(
            "organizational unit (role)",
            subject.iter_organizational_unit(),
        )?
        .parse()
        .map_err(|e: TrustError| TrustError::Untrusted(e.to_string()))?,
    })
}

struct Anchor {
    cluster: String,
    der: Vec<u8>,
    pem: String,
}

/// Most verified certificates remembered; cleared when full.
const CACHE_CAP: usize = 1024;

/// The CAs a master trusts: its own cluster's first, then one per peer.
pub struct TrustAnchors {
    anchors: Vec<Anchor>,
    /// Leaf certificate hash → what it proved. Certificates are verified
    /// once, not on every call of a long connection.
    cache: Mutex<HashMap<[u8; 32], Result<Authenticated, String>>>,
}

impl TrustAnchors {
    /// `own` is this cluster's CA; `peers` are (peer cluster name, its CA).
    pub fn new(
        own_cluster: &str,
        own_ca_pem: &str,
        peers: &[(String, String)],
    ) -> Result<Self, TrustError> {
        let mut anchors = vec![Anchor {
            cluster: own_cluster.to_string(),
            der: first_der(own_ca_pem)?,
            pem: own_ca_pem.to_string(),
        }];
        for (name, pem) in peers {
            let der = first_der(pem)
                .map_err(|e| TrustError::Certificate(format!("CA of peer {name:?}: {e}")))?;
            if anchors.iter().any(|a| a.der == der) {
                return Err(TrustError::Invalid(format!(
                    "peer {name:?} has the same CA as another cluster; every cluster needs its own"
                )));
            }
            anchors.push(Anchor {
                cluster: name.clone(),
                der,
                pem: pem.clone(),
            });
        }
        for a in &anchors {
            x509_parser::parse_x509_certificate(&a.der).map_err(|e| {
                TrustError::Certificate(format!("CA of cluster {:?}: {e}", a.cluster))
            })?;
        }
        Ok(Self {
            anchors,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Every trusted CA, PEM-concatenated (the TLS server's client roots).
    pub fn bundle_pem(&self) -> String {
        self.anchors.iter().map(|a| a.pem.as_str()).collect()
    }

    /// Who the holder of this (handshake-verified) leaf certificate is.
    pub fn authenticate(&self, leaf_der: &[u8]) -> Result<Authenticated, TrustError> {
        let key = *blake3::hash(leaf_der).as_bytes();
        if let Some(hit) = self.cache().get(&key) {
            return hit.clone().map_err(TrustError::Untrusted);
        }
        let result = self.verify(leaf_der);
        let mut cache = self.cache();
        if cache.len() >= CACHE_CAP {
            cache.clear();
        }
        cache.insert(key, result.as_ref().map_err(ToString::to_string).cloned());
        result
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Result<Authenticated, String>>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn verify(&self, leaf_der: &[u8]) -> Result<Authenticated, TrustError> {
        let (_, leaf) = x509_parser::parse_x509_certificate(leaf_der)
            .map_err(|e| TrustError::Untrusted(e.to_string()))?;
        let id = identity_of(&leaf)?;
        if !leaf.validity().is_valid() {
            return Err(TrustError::Untrusted(format!(
                "the certificate of {} is outside its validity period",
                id.node
            )));
        }
        for (i, anchor) in self.anchors.iter().enumerate() {
            let Ok((_, ca)) = x509_parser::parse_x509_certificate(&anchor.der) else {
                continue;
            };
            if leaf.verify_signature(Some(ca.public_key())).is_err() {
                continue;
            }
            if id.cluster != anchor.cluster {
                return Err(TrustError::Untrusted(format!(
                    "a certificate issued by the CA of cluster {:?} claims cluster {:?}",
                    anchor.cluster, id.cluster
                )));
            }
            if i == 0 {
                return Ok(Authenticated::Member(id));
            }
            if id.role != Role::Master {
                return Err(TrustError::Untrusted(format!(
                    "{} {} of peer cluster {:?}: only a peer's masters may call",
                    id.role, id.node, id.cluster
                )));
            }
            return Ok(Authenticated::Peer(id));
        }
        Err(TrustError::Untrusted(format!(
            "{} of cluster {:?} was not issued by a trusted CA",
            id.node, id.cluster
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::ClusterCa;

    fn leaf(ca: &ClusterCa, node: &str, role: Role) -> Vec<u8> {
        first_der(&ca.issue(node, role, &[]).unwrap().cert_pem).unwrap()
    }

    #[test]
    fn the_issuing_ca_decides_the_cluster() {
        let a = ClusterCa::create("a").unwrap();
        let b = ClusterCa::create("b").unwrap();
        let stranger = ClusterCa::create("c").unwrap();
        let anchors =
            TrustAnchors::new("a", a.cert_pem(), &[("b".into(), b.cert_pem().into())]).unwrap();
        match anchors.authenticate(&leaf(&a, "s1", Role::Slave)).unwrap() {
            Authenticated::Member(id) => assert_eq!(id.node, "s1"),
            other => panic!("{other:?}"),
        }
        match anchors.authenticate(&leaf(&b, "mb", Role::Master)).unwrap() {
            Authenticated::Peer(id) => assert_eq!(id.cluster, "b"),
            other => panic!("{other:?}"),
        }
        // A peer's slave may not call; nor may any unknown CA's node.
        assert!(anchors.authenticate(&leaf(&b, "sb", Role::Slave)).is_err());
        assert!(
            anchors
                .authenticate(&leaf(&stranger, "x", Role::Master))
                .is_err()
        );
        // Twice, from the cache.
        assert!(
            anchors
                .authenticate(&leaf(&stranger, "x", Role::Master))
                .is_err()
        );
    }

    #[test]
    fn a_peer_cannot_claim_another_cluster() {
        let a = ClusterCa::create("a").unwrap();
        // Cluster b's operator makes a CA whose certificates claim "a".
        let b_posing = ClusterCa::create("a").unwrap();
        let anchors = TrustAnchors::new(
            "a",
            a.cert_pem(),
            &[("b".into(), b_posing.cert_pem().into())],
        )
        .unwrap();
        let err = anchors
            .authenticate(&leaf(&b_posing, "m", Role::Master))
            .unwrap_err();
        assert!(err.to_string().contains("claims cluster"), "{err}");
    }
}
