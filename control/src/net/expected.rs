//! Who a member expects to answer when it dials another (pure).
//!
//! Chaining to a trusted CA only proves that the answer comes from *some*
//! node of a trusted cluster. Raft messages carry no target id, so a member
//! registered at an address where another member answers (a stale or
//! mistyped address, a port reused after a move) would otherwise receive
//! and acknowledge entries meant for someone else, and could be counted in
//! a quorum it is not part of. The certificate's node name (CN) and role
//! (OU) must therefore be the ones of the member dialled.

use elton_trust::{CertIdentity, Role as CertRole};

use crate::types::{Member, Role};

/// What the certificate of the party answering must say.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Expected {
    /// The member's name; `None` only where the caller knows an address but
    /// not the name (a slave host's configured master URL).
    pub name: Option<String>,
    pub role: CertRole,
}

/// The answering party is not the one dialled.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the certificate presented names {found_role} {found}, not {expected}")]
pub struct WrongPeer {
    pub expected: String,
    pub found: String,
    pub found_role: CertRole,
}

impl Expected {
    /// The member itself: its name, and the certificate role of its Raft
    /// role (masters vote, slave hosts learn).
    pub fn member(m: &Member) -> Self {
        Self {
            name: Some(m.name.clone()),
            role: cert_role(m.role),
        }
    }

    /// Any node of `role` of a trusted cluster.
    pub fn any(role: CertRole) -> Self {
        Self { name: None, role }
    }

    /// The TLS name the certificate must also carry (see
    /// `elton_trust::pki::MASTER_SERVER_NAME`).
    pub fn server_name(&self) -> &'static str {
        match self.role {
            CertRole::Master => elton_trust::pki::MASTER_SERVER_NAME,
            CertRole::Slave => elton_trust::pki::SLAVE_SERVER_NAME,
        }
    }

    /// Whether a (chain-verified) certificate's identity is the expected one.
    pub fn check(&self, id: &CertIdentity) -> Result<(), WrongPeer> {
        let name_ok = self.name.as_ref().is_none_or(|n| *n == id.node);
        if name_ok && id.role == self.role {
            return Ok(());
        }
        Err(WrongPeer {
            expected: self.to_string(),
            found: id.node.clone(),
            found_role: id.role,
        })
    }
}

impl std::fmt::Display for Expected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.name {
            Some(n) => write!(f, "{} {n}", self.role),
            None => write!(f, "a {}", self.role),
        }
    }
}

pub fn cert_role(role: Role) -> CertRole {
    match role {
        Role::Voter => CertRole::Master,
        Role::Learner => CertRole::Slave,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(node: &str, role: CertRole) -> CertIdentity {
        CertIdentity {
            cluster: "c".into(),
            node: node.into(),
            role,
        }
    }

    fn member(name: &str, role: Role) -> Member {
        Member {
            name: name.into(),
            addr: "https://127.0.0.1:1".into(),
            role,
        }
    }

    #[test]
    fn only_the_member_dialled_may_answer() {
        let m2 = Expected::member(&member("m2", Role::Voter));
        assert_eq!(m2.check(&id("m2", CertRole::Master)), Ok(()));
        let e = m2.check(&id("m3", CertRole::Master)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the certificate presented names master m3, not master m2"
        );
        // The right name in the wrong role is someone else too.
        assert!(m2.check(&id("m2", CertRole::Slave)).is_err());
        let s1 = Expected::member(&member("s1", Role::Learner));
        assert_eq!(s1.server_name(), elton_trust::pki::SLAVE_SERVER_NAME);
        assert_eq!(s1.check(&id("s1", CertRole::Slave)), Ok(()));
        assert!(s1.check(&id("s2", CertRole::Slave)).is_err());
    }

    #[test]
    fn an_unnamed_expectation_checks_the_role_only() {
        let any = Expected::any(CertRole::Master);
        assert_eq!(any.check(&id("m9", CertRole::Master)), Ok(()));
        let e = any.check(&id("s1", CertRole::Slave)).unwrap_err();
        assert!(e.to_string().ends_with("not a master"), "{e}");
    }
}
