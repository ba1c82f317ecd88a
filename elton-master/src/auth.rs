//! Who is calling, and whether they may.
//!
//! A caller proves who it is with a client certificate (nodes of this
//! cluster, masters of peer clusters; verified by [`TrustAnchors`]) and/or a
//! bearer token (clients; looked up by the hash of its secret). Each method
//! states what it needs ([`Need`]); [`Auth::check`] answers UNAUTHENTICATED
//! when the caller proves nothing that could allow it, and
//! PERMISSION_DENIED when what it proves does not. A master started with
//! `--insecure` (loopback only, see [`crate::config`]) checks nothing.

use std::collections::HashMap;
use std::sync::RwLock;

use elton_proto::{NodeId, PEER_METADATA_KEY};
use elton_trust::token::{self, Scope};
use elton_trust::{Authenticated, TrustAnchors};
use tonic::Request;

use crate::MasterError;
use crate::store::{MetaStore, TokenRow};

/// What a call requires.
#[derive(Clone, Debug)]
pub enum Need {
    /// Any authenticated caller: a node, a peer master, or a token.
    Read,
    /// A token of scope write or admin.
    Write,
    /// A token of scope admin.
    Admin,
    /// Node `id` itself (its certificate), or an admin token.
    SpeakAs(NodeId),
    /// A node of this cluster, or an admin token.
    Node,
    /// A commit: a write token, or a peer master forwarding one.
    Commit,
}

/// A verified caller.
#[derive(Clone, Debug, Default)]
pub struct Caller {
    cert: Option<Authenticated>,
    token: Option<TokenRow>,
    /// Insecure mode: the peer name the caller claims, believed.
    claimed_peer: Option<String>,
    insecure: bool,
}

impl Caller {
    /// The peer cluster a call comes from: proven by its certificate (or,
    /// on an insecure master, claimed).
    pub fn peer(&self) -> Option<&str> {
        match &self.cert {
            Some(Authenticated::Peer(id)) => Some(&id.cluster),
            _ => self.claimed_peer.as_deref(),
        }
    }

    fn scope(&self) -> Option<Scope> {
        self.token.as_ref().and_then(|t| t.scope.parse().ok())
    }

    fn describe(&self) -> String {
        match (&self.cert, &self.token) {
            (_, Some(t)) => format!("token {:?} (scope {})", t.name, t.scope),
            (Some(Authenticated::Member(id)), None) => format!("{} {}", id.role, id.node),
            (Some(Authenticated::Peer(id)), None) => {
                format!("master {} of peer {}", id.node, id.cluster)
            }
            (None, None) => "an anonymous caller".into(),
        }
    }

    pub fn who(&self) -> elton_proto::pb::WhoAmIResponse {
        let mut r = elton_proto::pb::WhoAmIResponse::default();
        if self.insecure {
            r.kind = "insecure".into();
            return r;
        }
        if let Some(t) = &self.token {
            r.kind = "token".into();
            r.name = t.name.clone();
            r.scope = t.scope.clone();
        }
        if let Some(cert) = &self.cert {
            let (kind, id) = match cert {
                Authenticated::Member(id) => ("node", id),
                Authenticated::Peer(id) => ("peer", id),
            };
            if self.token.is_none() {
                r.kind = kind.into();
                r.name = id.node.clone();
            }
            r.cluster = id.cluster.clone();
            r.role = id.role.to_string();
        }
        r
    }
}

pub struct Auth {
    /// `None`: insecure mode.
    anchors: Option<TrustAnchors>,
    /// Secret hash → token; mirrors the store's `tokens` table.
    tokens: RwLock<HashMap<String, TokenRow>>,
}

impl Auth {
    pub fn new(anchors: Option<TrustAnchors>, store: &MetaStore) -> Result<Self, MasterError> {
        Ok(Self {
            anchors,
            tokens: RwLock::new(store.tokens()?.into_iter().collect()),
        })
    }

    pub fn insecure(&self) -> bool {
        self.anchors.is_none()
    }

    /// Authenticates the caller and checks it may do what `need` says.
    pub fn check<T>(&self, req: &Request<T>, need: Need) -> Result<Caller, MasterError> {
        let caller = self.authenticate(req)?;
        if caller.insecure {
            return Ok(caller);
        }
        let scope = caller.scope();
        let member = match &caller.cert {
            Some(Authenticated::Member(id)) => Some(id),
            _ => None,
        };
        let is_peer = matches!(caller.cert, Some(Authenticated::Peer(_)));
        let allowed = match &need {
            Need::Read => caller.cert.is_some() || scope.is_some(),
            Need::Write => scope.is_some_and(|s| s.allows(Scope::Write)),
            Need::Admin => scope == Some(Scope::Admin),
            Need::SpeakAs(node) => {
                member.is_some_and(|id| id.node == node.as_str()) || scope == Some(Scope::Admin)
            }
            Need::Node => member.is_some() || scope == Some(Scope::Admin),
            Need::Commit => is_peer || scope.is_some_and(|s| s.allows(Scope::Write)),
        };
        if allowed {
            return Ok(caller);
        }
        if caller.cert.is_none() && caller.token.is_none() {
            return Err(MasterError::Unauthenticated(
                "this call needs a client certificate of the cluster or a bearer token \
                 (`authorization: Bearer <token>`)"
                    .into(),
            ));
        }
        let what = match need {
            Need::Read => "read".to_string(),
            Need::Write | Need::Commit => "a token of scope write".to_string(),
            Need::Admin => "a token of scope admin".to_string(),
            Need::SpeakAs(node) => format!("node {node}'s certificate or an admin token"),
            Need::Node => "a node certificate of this cluster or an admin token".to_string(),
        };
        Err(MasterError::PermissionDenied(format!(
            "{} may not do this; it needs {what}",
            caller.describe()
        )))
    }

    /// Authenticates a control plane call and checks it may do what `need`
    /// says (docs/architecture.md §Control plane): Raft RPCs only from
    /// masters (this cluster's or a peer's); client calls by token scope;
    /// a node's own certificate for its own join or leave, and a master's
    /// for calls it forwards to the leader.
    pub fn control<T>(
        &self,
        req: &Request<T>,
        need: elton_control::ControlNeed,
    ) -> Result<elton_control::Caller, MasterError> {
        use elton_control::ControlNeed as N;
        let caller = self.authenticate(req)?;
        if caller.insecure {
            return Ok(elton_control::Caller::trusted());
        }
        let scope = caller.scope();
        let node = match &caller.cert {
            Some(Authenticated::Member(id) | Authenticated::Peer(id)) => {
                Some((id.node.clone(), id.role))
            }
            None => None,
        };
        let master = node
            .as_ref()
            .is_some_and(|(_, role)| *role == elton_trust::Role::Master);
        let allowed = match &need {
            N::Raft => master,
            N::Submit => node.is_some() || scope.is_some_and(|s| s.allows(Scope::Write)),
            N::Read => node.is_some() || scope.is_some(),
            N::Query => master || scope.is_some(),
            N::Admin => scope == Some(Scope::Admin),
            N::SpeakAs(name) => {
                master
                    || node.as_ref().is_some_and(|(n, _)| n == name)
                    || scope == Some(Scope::Admin)
            }
        };
        if !allowed {
            if caller.cert.is_none() && caller.token.is_none() {
                return Err(MasterError::Unauthenticated(
                    "control calls need a node certificate of the cluster or a bearer token".into(),
                ));
            }
            let what = match need {
                N::Raft => "a master's certificate".to_string(),
                N::Submit => "a token of scope write".to_string(),
                N::Read => "read".to_string(),
                N::Query => "a token (scope read or above) or a master's certificate".to_string(),
                N::Admin => "a token of scope admin".to_string(),
                N::SpeakAs(name) => format!("node {name}'s certificate or an admin token"),
            };
            return Err(MasterError::PermissionDenied(format!(
                "{} may not do this; it needs {what}",
                caller.describe()
            )));
        }
        // A token decides what a client may do; a certificate alone limits
        // a slave to its own business.
        let token = caller.token.is_some();
        Ok(elton_control::Caller { node, token })
    }

    fn authenticate<T>(&self, req: &Request<T>) -> Result<Caller, MasterError> {
        let Some(anchors) = &self.anchors else {
            let claimed_peer = req
                .metadata()
                .get(PEER_METADATA_KEY)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty())
                .map(str::to_string);
            return Ok(Caller {
                claimed_peer,
                insecure: true,
                ..Caller::default()
            });
        };
        let cert = match req.peer_certs() {
            Some(chain) => match chain.first() {
                Some(leaf) => Some(
                    anchors
                        .authenticate(leaf.as_ref())
                        .map_err(|e| MasterError::Unauthenticated(e.to_string()))?,
                ),
                None => None,
            },
            None => None,
        };
        let token = match token::bearer(req.metadata())
            .map_err(|e| MasterError::Unauthenticated(e.to_string()))?
        {
            Some(secret) => Some(self.lookup(secret)?),
            None => None,
        };
        Ok(Caller {
            cert,
            token,
            ..Caller::default()
        })
    }

    /// The token whose secret this is; a wrong or revoked one is refused.
    pub fn lookup(&self, secret: &str) -> Result<TokenRow, MasterError> {
        token::check_secret(secret).map_err(|e| MasterError::Unauthenticated(e.to_string()))?;
        self.tokens
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&token::secret_hash(secret))
            .cloned()
            .ok_or_else(|| MasterError::Unauthenticated("unknown or revoked token".into()))
    }

    /// Stores a token for `secret` (durably) and starts accepting it.
    pub fn add(
        &self,
        store: &MetaStore,
        secret: &str,
        name: &str,
        scope: Scope,
        now_unix: u64,
    ) -> Result<TokenRow, MasterError> {
        token::check_secret(secret).map_err(|e| MasterError::BadRequest(e.to_string()))?;
        if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
            return Err(MasterError::BadRequest(
                "a token name is 1 to 64 characters, no control characters".into(),
            ));
        }
        let hash = token::secret_hash(secret);
        let row = TokenRow {
            id: hash[..16].to_string(),
            name: name.to_string(),
            scope: scope.to_string(),
            created_unix: now_unix,
        };
        store.put_token(&hash, &row)?;
        self.tokens
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(hash, row.clone());
        Ok(row)
    }

    /// Revokes the token with public id `id`, durably, then stops accepting
    /// it.
    pub fn revoke(&self, store: &MetaStore, id: &str) -> Result<(), MasterError> {
        if !store.remove_token(id)? {
            return Err(MasterError::BadRequest(format!("no token with id {id:?}")));
        }
        self.tokens
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, row| row.id != id);
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.tokens
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }
}

#[cfg(test)]
mod tests {
    use elton_control::ControlNeed as N;
    use tonic::Code;

    use super::*;

    fn request(token: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(t) = token {
            r.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        r
    }

    #[test]
    fn control_calls_need_the_right_token_and_raft_never_takes_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetaStore::open(&dir.path().join("m.redb")).unwrap();
        let ca = elton_trust::ClusterCa::create("c").unwrap();
        let anchors = TrustAnchors::new("c", ca.cert_pem(), &[]).unwrap();
        let auth = Auth::new(Some(anchors), &store).unwrap();
        let mut secrets = Vec::new();
        for scope in [Scope::Read, Scope::Write, Scope::Admin] {
            let secret = token::new_secret().unwrap();
            auth.add(&store, &secret, &scope.to_string(), scope, 0)
                .unwrap();
            secrets.push(secret);
        }
        let (read, write, admin) = (&secrets[0], &secrets[1], &secrets[2]);
        let code = |t: Option<&str>, need: N| {
            auth.control(&request(t), need)
                .map(|_| Code::Ok)
                .unwrap_or_else(|e| tonic::Status::from(e).code())
        };
        let speak = || N::SpeakAs("s1".into());
        for need in [N::Raft, N::Submit, N::Read, N::Query, N::Admin, speak()] {
            assert_eq!(code(None, need), Code::Unauthenticated);
        }
        assert_eq!(code(Some(read), N::Read), Code::Ok);
        assert_eq!(code(Some(read), N::Query), Code::Ok);
        assert_eq!(code(Some(read), N::Submit), Code::PermissionDenied);
        assert_eq!(code(Some(write), N::Submit), Code::Ok);
        assert_eq!(code(Some(write), N::Admin), Code::PermissionDenied);
        assert_eq!(code(Some(write), speak()), Code::PermissionDenied);
        assert_eq!(code(Some(admin), N::Admin), Code::Ok);
        assert_eq!(code(Some(admin), speak()), Code::Ok);
        // Only masters' certificates carry Raft, whatever the token.
        assert_eq!(code(Some(admin), N::Raft), Code::PermissionDenied);
        let caller = auth.control(&request(Some(write)), N::Submit).unwrap();
        assert!(caller.token && caller.node.is_none());
    }
}
