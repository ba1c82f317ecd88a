//! Who may call the control plane: the host process (a master, a slave)
//! decides, with the identities it already checks for its own services.
//! The control services ask before doing anything.

use tonic::{Request, Status};

/// What a control call requires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControlNeed {
    /// A Raft RPC: the certificate of a master of this cluster or of a
    /// trusted peer cluster (the only hosts that ever send Raft RPCs).
    Raft,
    /// `Submit`: a token of scope write, or a member's certificate (a
    /// master forwarding a client's call, a slave reporting its own result;
    /// the node checks which commands each may send).
    Submit,
    /// `Status`: any authenticated caller.
    Read,
    /// `Query` (the direct read path, e.g. `elton ps`): a token of any
    /// scope, or a master's certificate (a member fanning out a client's
    /// query). A slave's certificate alone does not read other hosts.
    Query,
    /// `Init`: an admin token.
    Admin,
    /// `Join`/`Leave` of node `name`: an admin token, or that node's own
    /// certificate.
    SpeakAs(String),
}

/// Checks a call's credentials. `req` carries the call's metadata and TLS
/// extensions (peer certificates) with an empty body.
pub trait Gate: Send + Sync + 'static {
    /// `Ok` when the caller may do what `need` says; UNAUTHENTICATED when it
    /// proves nothing that could allow it, PERMISSION_DENIED when what it
    /// proves does not.
    fn admit(&self, req: &Request<()>, need: ControlNeed) -> Result<Caller, Status>;
}

/// Who a call came from, as far as the control plane cares.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caller {
    /// The node certificate it presented: node name and role.
    pub node: Option<(String, elton_trust::Role)>,
    /// Whether it was admitted by a bearer token (or an insecure group,
    /// where everyone is).
    pub token: bool,
}

impl Caller {
    /// A caller with full rights (insecure groups, tokens).
    pub fn trusted() -> Self {
        Self {
            node: None,
            token: true,
        }
    }

    /// Whether the caller is a master, by its own certificate (another
    /// member forwarding).
    pub fn master(&self) -> bool {
        matches!(&self.node, Some((_, elton_trust::Role::Master))) && !self.token
    }

    /// The name of the slave host calling with its own certificate; such a
    /// caller may only act for itself.
    pub fn slave(&self) -> Option<&str> {
        match &self.node {
            Some((name, elton_trust::Role::Slave)) if !self.token => Some(name),
            _ => None,
        }
    }
}

/// Splits a request into the probe a [`Gate`] reads and its message.
pub fn probe<T>(req: Request<T>) -> (Request<()>, T) {
    let (meta, ext, msg) = req.into_parts();
    (Request::from_parts(meta, ext, ()), msg)
}
