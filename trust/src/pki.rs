//! A cluster's certificate authority, the node certificates it issues, and
//! the directory a node keeps its credentials in.
//!
//! A TLS directory holds (see `docs/operations.md`):
//! - `ca.pem`: the cluster CA's certificate, the trust anchor (public);
//! - `ca.key`: the CA's private key, only on the host that issues
//!   certificates (the master's), mode 0600;
//! - `node.pem`, `node.key`: this node's certificate and key (0600).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use crate::TrustError;
use crate::identity::CertIdentity;

pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca.key";
pub const NODE_CERT_FILE: &str = "node.pem";
pub const NODE_KEY_FILE: &str = "node.key";

/// The TLS name every master certificate carries and every client checks.
/// Clients reach masters by address, which certificates cannot know in
/// advance; what matters is that the master belongs to the expected cluster,
/// which pinning that cluster's CA proves.
pub const MASTER_SERVER_NAME: &str = "elton-master";
/// The same for slaves (served by the control plane's learners).
pub const SLAVE_SERVER_NAME: &str = "elton-slave";

/// How long issued certificates are valid. There is no automatic renewal:
/// `elton cert issue` again before then (docs/operations.md).
const CA_VALIDITY_DAYS: i64 = 20 * 365;
const NODE_VALIDITY_DAYS: i64 = 10 * 365;

/// What a node is to its cluster; written as the certificate's OU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Master,
    Slave,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Master => "master",
            Role::Slave => "slave",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = TrustError;

    fn from_str(s: &str) -> Result<Self, TrustError> {
        match s {
            "master" => Ok(Role::Master),
            "slave" => Ok(Role::Slave),
            _ => Err(TrustError::Invalid(format!(
                "role {s:?}: expected master or slave"
            ))),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Cluster and node names as they may appear in certificates: short, no
/// spaces or separators that could be confused in logs or names.
pub fn check_name(what: &str, name: &str) -> Result<(), TrustError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(TrustError::Invalid(format!(
            "{what} {name:?}: use 1 to 64 letters, digits, '-', '_' or '.'"
        )))
    }
}

/// A certificate and its private key, PEM-encoded.
#[derive(Clone)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A cluster's certificate authority (with its private key).
pub struct ClusterCa {
    cluster: String,
    cert_pem: String,
    key: KeyPair,
}

impl ClusterCa {
    /// A new CA for `cluster`.
    pub fn create(cluster: &str) -> Result<Self, TrustError> {
        check_name("cluster", cluster)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("Elton cluster CA {cluster}"));
        params
            .distinguished_name
            .push(DnType::OrganizationName, cluster);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        set_validity(&mut params, CA_VALIDITY_DAYS);
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cluster: cluster.to_string(),
            cert_pem: cert.pem(),
            key,
        })
    }

    /// The CA kept in `dir` (`ca.pem` and `ca.key`).
    pub fn load(dir: &TlsDir) -> Result<Self, TrustError> {
        let cert_pem = read(&dir.ca_cert())?;
        let key_pem = read(&dir.ca_key())?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| TrustError::Certificate(format!("{}: {e}", dir.ca_key().display())))?;
        let cluster = ca_cluster(&cert_pem)?;
        Ok(Self {
            cluster,
            cert_pem,
            key,
        })
    }

    /// Writes `ca.pem` and `ca.key` (0600) into `dir`.
    pub fn save(&self, dir: &TlsDir) -> Result<(), TrustError> {
        dir.create()?;
        write_private(&dir.ca_key(), self.key.serialize_pem().as_bytes())?;
        write_private(&dir.ca_cert(), self.cert_pem.as_bytes())
    }

    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A certificate for `node` of this cluster in `role`. Masters also get
    /// `extra_names` (DNS names or IP addresses) besides
    /// [`MASTER_SERVER_NAME`].
    pub fn issue(
        &self,
        node: &str,
        role: Role,
        extra_names: &[String],
    ) -> Result<IssuedCert, TrustError> {
        check_name("node", node)?;
        let mut names = vec![match role {
            Role::Master => MASTER_SERVER_NAME.to_string(),
            Role::Slave => SLAVE_SERVER_NAME.to_string(),
        }];
        names.extend(extra_names.iter().cloned());
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, node);
        params
            .distinguished_name
            .push(DnType::OrganizationName, self.cluster.as_str());
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, role.as_str());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, NODE_VALIDITY_DAYS);
        let key = KeyPair::generate()?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)?;
        let cert = params.signed_by(&key, &issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn set_validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    // A little slack for clocks that are slightly behind.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
}

/// The cluster a CA certificate is for (its O).
fn ca_cluster(cert_pem: &str) -> Result<String, TrustError> {
    let der = first_der(cert_pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| TrustError::Certificate(format!("CA certificate: {e}")))?;
    cert.subject()
        .iter_organization()
        .next()
        .and_then(|o| o.as_str().ok())
        .map(str::to_string)
        .ok_or_else(|| TrustError::Certificate("CA certificate names no cluster (O)".into()))
}

/// The DER bytes of the first certificate in a PEM text.
pub fn first_der(pem: &str) -> Result<Vec<u8>, TrustError> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| TrustError::Certificate(format!("not a PEM certificate: {e}")))?;
    Ok(p.contents)
}

/// A node's own credentials: its certificate and key, and its cluster's CA.
#[derive(Clone)]
pub struct NodeCredentials {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub identity: CertIdentity,
}

/// A directory holding a node's TLS files (and, on a master, the CA key).
#[derive(Clone, Debug)]
pub struct TlsDir {
    path: PathBuf,
}

impl TlsDir {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.path.join(CA_CERT_FILE)
    }

    pub fn ca_key(&self) -> PathBuf {
        self.path.join(CA_KEY_FILE)
    }

    pub fn node_cert(&self) -> PathBuf {
        self.path.join(NODE_CERT_FILE)
    }

    pub fn node_key(&self) -> PathBuf {
        self.path.join(NODE_KEY_FILE)
    }

    pub fn has_ca_key(&self) -> bool {
        self.ca_key().exists()
    }

    pub fn has_node(&self) -> bool {
        self.node_cert().exists() && self.node_key().exists() && self.ca_cert().exists()
    }

    fn create(&self) -> Result<(), TrustError> {
        std::fs::create_dir_all(&self.path).map_err(|e| TrustError::io(&self.path, e))?;
        std::fs::set_permissions(
            &self.path,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .map_err(|e| TrustError::io(&self.path, e))
    }

    /// Stores a node's certificate and key, and the CA that issued them.
    pub fn save_node(&self, issued: &IssuedCert, ca_pem: &str) -> Result<(), TrustError> {
        self.create()?;
        write_private(&self.node_key(), issued.key_pem.as_bytes())?;
        write_private(&self.node_cert(), issued.cert_pem.as_bytes())?;
        if !self.ca_cert().exists() {
            write_private(&self.ca_cert(), ca_pem.as_bytes())?;
        }
        Ok(())
    }

    /// Reads this node's credentials; the certificate must have been issued
    /// by the CA in the same directory.
    pub fn load_node(&self) -> Result<NodeCredentials, TrustError> {
        if !self.has_node() {
            return Err(TrustError::Missing(format!(
                "no node certificate in {} (expected {CA_CERT_FILE}, {NODE_CERT_FILE}, \
                 {NODE_KEY_FILE}); issue one on the master's host with \
                 `elton cert issue --node NAME --out DIR`",
                self.path.display()
            )));
        }
        let ca_pem = read(&self.ca_cert())?;
        let cert_pem = read(&self.node_cert())?;
        let key_pem = read(&self.node_key())?;
        let leaf = first_der(&cert_pem)?;
        let anchors = crate::TrustAnchors::new(&ca_cluster(&ca_pem)?, &ca_pem, &[])?;
        // One anchor: whatever verifies is a member of its cluster.
        let (crate::Authenticated::Member(identity) | crate::Authenticated::Peer(identity)) =
            anchors.authenticate(&leaf)?;
        // A key that is not a key fails here, with its path, not at the
        // first handshake.
        KeyPair::from_pem(&key_pem)
            .map_err(|e| TrustError::Certificate(format!("{}: {e}", self.node_key().display())))?;
        Ok(NodeCredentials {
            ca_pem,
            cert_pem,
            key_pem,
            identity,
        })
    }

    /// The cluster CA's certificate kept here.
    pub fn ca_pem(&self) -> Result<String, TrustError> {
        read(&self.ca_cert())
    }
}

/// Makes sure `dir` holds a CA for `cluster` and a master certificate for
/// `node`, creating what is missing (the first start of a master, or
/// `elton up`). An existing CA of another cluster is an error: the name a
/// cluster's certificates carry cannot change under them.
pub fn ensure_master(
    dir: &TlsDir,
    cluster: &str,
    node: &str,
    extra_names: &[String],
) -> Result<NodeCredentials, TrustError> {
    let ca = if dir.ca_cert().exists() {
        if !dir.has_ca_key() {
            // Credentials issued elsewhere: use them as they are.
            return check_master(dir.load_node()?, cluster, node);
        }
        ClusterCa::load(dir)?
    } else {
        let ca = ClusterCa::create(cluster)?;
        ca.save(dir)?;
        ca
    };
    if ca.cluster() != cluster {
        return Err(TrustError::Invalid(format!(
            "{} is the CA of cluster {:?}, not {cluster:?}; a cluster cannot be renamed \
             (start with another data directory)",
            dir.ca_cert().display(),
            ca.cluster()
        )));
    }
    if dir.has_node() {
        let creds = dir.load_node()?;
        if creds.identity.node == node && creds.identity.role == Role::Master {
            return Ok(creds);
        }
    }
    let issued = ca.issue(node, Role::Master, extra_names)?;
    dir.save_node(&issued, ca.cert_pem())?;
    check_master(dir.load_node()?, cluster, node)
}

fn check_master(
    creds: NodeCredentials,
    cluster: &str,
    node: &str,
) -> Result<NodeCredentials, TrustError> {
    let id = &creds.identity;
    if id.cluster != cluster || id.node != node || id.role != Role::Master {
        return Err(TrustError::Invalid(format!(
            "the certificate names {} {} of cluster {}, but this is master {node} of cluster \
             {cluster}",
            id.role, id.node, id.cluster
        )));
    }
    Ok(creds)
}

fn read(path: &Path) -> Result<String, TrustError> {
    std::fs::read_to_string(path).map_err(|e| TrustError::io(path, e))
}

/// Writes a file that is private from its first byte (mode 0600 at
/// creation), durably: temp file, fsync, rename, fsync of the directory.
/// Not the slave's durable-write helper because that one cannot set the
/// mode before the bytes land, and this crate depends on no other of ours.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TrustError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        TrustError::io(path, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_issues_certificates_naming_node_cluster_and_role() {
        let dir = tempfile::tempdir().unwrap();
        let tls = TlsDir::new(dir.path().join("pki"));
        let creds = ensure_master(&tls, "a", "m1", &["127.0.0.1".into()]).unwrap();
        assert_eq!(creds.identity.cluster, "a");
        assert_eq!(creds.identity.node, "m1");
        assert_eq!(creds.identity.role, Role::Master);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(tls.ca_key()).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        // A second start reuses everything.
        let again = ensure_master(&tls, "a", "m1", &[]).unwrap();
        assert_eq!(again.cert_pem, creds.cert_pem);
        // The cluster cannot be renamed under its certificates.
        assert!(ensure_master(&tls, "b", "m1", &[]).is_err());

        let ca = ClusterCa::load(&tls).unwrap();
        let slave_dir = TlsDir::new(dir.path().join("s1"));
        slave_dir
            .save_node(&ca.issue("s1", Role::Slave, &[]).unwrap(), ca.cert_pem())
            .unwrap();
        let s = slave_dir.load_node().unwrap();
        assert_eq!(
            (s.identity.node.as_str(), s.identity.role),
            ("s1", Role::Slave)
        );
        assert!(!slave_dir.has_ca_key());
    }

    #[test]
    fn names_are_checked() {
        assert!(ClusterCa::create("a b").is_err());
        let ca = ClusterCa::create("a").unwrap();
        assert!(ca.issue("x/y", Role::Slave, &[]).is_err());
        assert!(ca.issue("", Role::Slave, &[]).is_err());
    }
}
