//! The master's credentials: its TLS identity (created with the cluster CA
//! on the first start), the CAs of its peers, and the first admin token.

use std::path::Path;

use elton_trust::pki::{self, TlsDir};
use elton_trust::token::{self, Scope};
use elton_trust::{NodeCredentials, TrustAnchors};
use tonic::transport::{ClientTlsConfig, ServerTlsConfig};

use crate::auth::Auth;
use crate::store::MetaStore;
use crate::{MasterConfig, MasterError};

/// What this master proves itself with and whom it trusts. Empty when the
/// master is insecure.
pub struct Identity {
    secure: Option<Secure>,
}

struct Secure {
    creds: NodeCredentials,
    /// (peer cluster name, its CA certificate)
    peer_cas: Vec<(String, String)>,
}

fn trust_error(e: elton_trust::TrustError) -> MasterError {
    MasterError::BadRequest(e.to_string())
}

impl Identity {
    pub fn load(config: &MasterConfig) -> Result<Self, MasterError> {
        if config.insecure {
            tracing::warn!(listen = %config.listen,
                "insecure master: no TLS, every caller may do anything");
            return Ok(Self { secure: None });
        }
        let dir = TlsDir::new(config.tls_dir());
        let fresh = !dir.ca_cert().exists();
        let creds = pki::ensure_master(&dir, config.cluster_name(), &config.id, &config.tls_names)
            .map_err(trust_error)?;
        if fresh {
            tracing::info!(dir = %dir.path().display(), cluster = %config.cluster_name(),
                "created the cluster CA and this master's certificate; issue slave \
                 certificates with `elton cert issue --pki {} --node NAME --out DIR`",
                dir.path().display());
        }
        let mut peer_cas = Vec::new();
        for p in &config.peers {
            let Some(path) = &p.ca else {
                return Err(MasterError::BadRequest(format!(
                    "peer {} has no CA",
                    p.name
                )));
            };
            let pem = std::fs::read_to_string(path).map_err(|e| {
                MasterError::BadRequest(format!("CA of peer {}: {}: {e}", p.name, path.display()))
            })?;
            pki::first_der(&pem).map_err(|e| {
                MasterError::BadRequest(format!("CA of peer {}: {}: {e}", p.name, path.display()))
            })?;
            peer_cas.push((p.name.clone(), pem));
        }
        Ok(Self {
            secure: Some(Secure { creds, peer_cas }),
        })
    }

    /// This master's certificate and key (none when insecure).
    pub fn credentials(&self) -> Option<&NodeCredentials> {
        self.secure.as_ref().map(|s| &s.creds)
    }

    /// The CAs this master accepts client certificates from.
    pub fn anchors(&self) -> Result<Option<TrustAnchors>, MasterError> {
        self.secure
            .as_ref()
            .map(|s| {
                TrustAnchors::new(&s.creds.identity.cluster, &s.creds.ca_pem, &s.peer_cas)
                    .map_err(trust_error)
            })
            .transpose()
    }

    pub fn server_tls(&self) -> Result<Option<ServerTlsConfig>, MasterError> {
        let Some(s) = &self.secure else {
            return Ok(None);
        };
        let anchors = self
            .anchors()?
            .ok_or_else(|| MasterError::Io("no anchors".into()))?;
        Ok(Some(elton_trust::tls::master_server(&s.creds, &anchors)))
    }

    /// How this master calls peer `name`: presenting its own certificate
    /// and trusting only that peer's CA.
    pub fn peer_client_tls(&self, name: &str) -> Option<ClientTlsConfig> {
        let s = self.secure.as_ref()?;
        let (_, ca) = s.peer_cas.iter().find(|(n, _)| n == name)?;
        Some(elton_trust::tls::node_client(&s.creds, ca))
    }
}

/// On a master with no token at all, creates the first admin token: from
/// the bootstrap file when an operator put one there, else a new random one
/// written to it (0600). Nothing happens once any token exists.
pub fn bootstrap_token(
    config: &MasterConfig,
    store: &MetaStore,
    auth: &Auth,
) -> Result<(), MasterError> {
    if config.insecure || !auth.is_empty() {
        return Ok(());
    }
    let path = config.bootstrap_token_file();
    let secret = if path.exists() {
        token::read_secret_file(&path).map_err(trust_error)?
    } else {
        let secret = token::new_secret().map_err(trust_error)?;
        write_secret(&path, &secret)?;
        secret
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let row = auth.add(store, &secret, "bootstrap", Scope::Admin, now)?;
    tracing::info!(id = %row.id, file = %path.display(), "created the first admin token");
    Ok(())
}

fn write_secret(path: &Path, secret: &str) -> Result<(), MasterError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| MasterError::Io(format!("creating {}: {e}", dir.display())))?;
    }
    pki::write_private(path, format!("{secret}\n").as_bytes()).map_err(trust_error)
}
