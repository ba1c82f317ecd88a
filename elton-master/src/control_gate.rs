//! The master's side of the control plane: who may call it (its
//! [`Auth`]), and starting this master as a voter of the group.

use std::sync::Arc;

use elton_control::{Caller, ControlNeed, ControlNode, Gate, Member, MemberTls, Role};
use tokio::net::TcpListener;
use tonic::{Request, Status};

use crate::auth::Auth;
use crate::provision::Identity;
use crate::{MasterConfig, MasterError};

/// Admits control calls with the master's certificates and tokens.
pub struct MasterGate(pub Arc<Auth>);

impl Gate for MasterGate {
    fn admit(&self, req: &Request<()>, need: ControlNeed) -> Result<Caller, Status> {
        self.0.control(req, need).map_err(Status::from)
    }
}

/// Starts this master's control member: a voter named after the master,
/// reachable at the advertised (or listening) address, proving itself with
/// the master's certificate and trusting the cluster's and peers' CAs.
pub async fn start(
    config: &MasterConfig,
    identity: &Identity,
    listener: &TcpListener,
) -> Result<Arc<ControlNode>, MasterError> {
    let scheme = if config.insecure { "http" } else { "https" };
    let addr = match &config.control.advertise {
        Some(a) => a.clone(),
        None => format!(
            "{scheme}://{}",
            listener
                .local_addr()
                .map_err(|e| MasterError::Io(e.to_string()))?
        ),
    };
    let me = Member {
        name: config.id.clone(),
        addr,
        role: Role::Voter,
    };
    let tls = match (identity.credentials(), identity.anchors()?) {
        (Some(creds), Some(anchors)) => Some(MemberTls {
            cert_pem: creds.cert_pem.clone(),
            key_pem: creds.key_pem.clone(),
            ca_bundle_pem: anchors.bundle_pem(),
        }),
        _ => None,
    };
    let node = ControlNode::start(me, config.control.settings(&config.data_dir), tls)
        .await
        .map_err(|e| MasterError::Io(format!("control plane: {e}")))?;
    if config.control.init {
        let n = node.clone();
        tokio::spawn(async move {
            let initialized = n.raft().is_initialized().await.unwrap_or(true);
            if !initialized {
                match n.init().await {
                    Ok(leader) => tracing::info!(%leader, "control group initialised"),
                    Err(e) => tracing::warn!("initialising the control group: {e}"),
                }
            }
        });
    }
    Ok(node)
}
