//! This host as a learner of the control plane's Raft group: its own
//! gRPC endpoint (`--control-listen`, mutual TLS: masters' certificates
//! only), and joining the group through its master on every start.

use std::sync::Arc;
use std::time::Duration;

use elton_control::{
    Caller, ControlNeed, ControlNode, ControlSettings, Gate, Member, MemberTls, Role,
};
use elton_proto::NodeId;
use elton_proto::control_pb::JoinRequest;
use elton_trust::{Authenticated, NodeCredentials, TrustAnchors};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Status};

use crate::{SlaveConfig, SlaveError};

/// Longest pause between two attempts to join the group.
const JOIN_RETRY_MAX: Duration = Duration::from_secs(10);

/// Admits calls to a slave's control endpoint: Raft RPCs and forwarded
/// calls from masters of this cluster, status queries from any node of it.
/// Slaves hold no tokens, so client calls go to a master.
pub struct SlaveGate {
    /// `None`: insecure.
    anchors: Option<TrustAnchors>,
}

impl Gate for SlaveGate {
    fn admit(&self, req: &Request<()>, need: ControlNeed) -> Result<Caller, Status> {
        let Some(anchors) = &self.anchors else {
            return Ok(Caller::trusted());
        };
        let leaf = req
            .peer_certs()
            .and_then(|chain| chain.first().cloned())
            .ok_or_else(|| {
                Status::unauthenticated("a slave's control endpoint needs a node certificate")
            })?;
        let id = match anchors
            .authenticate(leaf.as_ref())
            .map_err(|e| Status::unauthenticated(e.to_string()))?
        {
            Authenticated::Member(id) | Authenticated::Peer(id) => id,
        };
        let master = id.role == elton_trust::Role::Master;
        let allowed = match need {
            ControlNeed::Raft => master,
            ControlNeed::Read => true,
            // Another host's processes: only a master fanning out a query.
            ControlNeed::Query => master,
            _ => false,
        };
        if !allowed {
            return Err(Status::permission_denied(format!(
                "{} {} may not do this on a slave; send control commands to a master",
                id.role, id.node
            )));
        }
        Ok(Caller {
            node: Some((id.node, id.role)),
            token: false,
        })
    }
}

/// Starts the learner and its endpoint on `listener`; returns the member
/// and the server task (which ends when `shutdown` resolves).
pub async fn start(
    config: &SlaveConfig,
    node_id: &NodeId,
    creds: Option<&NodeCredentials>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(Arc<ControlNode>, tokio::task::JoinHandle<()>), SlaveError> {
    let scheme = if creds.is_some() { "https" } else { "http" };
    let addr = match &config.control_advertise {
        Some(a) => a.clone(),
        None => format!(
            "{scheme}://{}",
            listener
                .local_addr()
                .map_err(|e| SlaveError::Io(e.to_string()))?
        ),
    };
    let me = Member {
        name: node_id.to_string(),
        addr,
        role: Role::Learner,
    };
    let tls = creds.map(|c| MemberTls {
        cert_pem: c.cert_pem.clone(),
        key_pem: c.key_pem.clone(),
        ca_bundle_pem: c.ca_pem.clone(),
    });
    let anchors = creds
        .map(|c| TrustAnchors::new(&c.identity.cluster, &c.ca_pem, &[]))
        .transpose()
        .map_err(|e| SlaveError::BadRequest(e.to_string()))?;
    let settings = ControlSettings::new(config.data_dir.join("control.redb"));
    let node = ControlNode::start(me, settings, tls.clone())
        .await
        .map_err(|e| SlaveError::BadRequest(format!("control plane: {e}")))?;
    let gate: Arc<dyn Gate> = Arc::new(SlaveGate { anchors });
    let raft_service =
        elton_control::net::raft_service::RaftService::new(node.raft().clone(), gate.clone());
    let control_service =
        elton_control::net::control_service::ControlService::new(node.clone(), gate);
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = &tls {
        server = server
            .tls_config(tls.learner_server())
            .map_err(|e| SlaveError::BadRequest(format!("control TLS: {e}")))?;
    }
    let router = server
        .add_service(raft_service.into_server())
        .add_service(control_service.into_server());
    tracing::info!(member = %node.member(), "control learner serving");
    // TCP_NODELAY, as on the master (see there).
    let task = tokio::spawn(async move {
        if let Err(e) = router
            .serve_with_incoming_shutdown(
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                shutdown,
            )
            .await
        {
            tracing::error!("control endpoint: {e}");
        }
    });
    Ok((node, task))
}

/// Asks the group (through this slave's master, which forwards to the
/// leader) to add this host as a learner, until it is in; a member
/// already in answers at once. A group not initialised yet is retried.
pub async fn join_loop(node: Arc<ControlNode>, master_url: String) {
    let pool = node.pool().clone();
    let me = node.member().clone();
    let mut pause = Duration::from_millis(200);
    loop {
        let attempt = async {
            // The URL names no master; any master of the cluster may answer.
            let mut client = pool.control_at_master(&master_url)?;
            client
                .join(JoinRequest {
                    node: me.name.clone(),
                    addr: me.addr.clone(),
                    voter: false,
                    role: "slave".into(),
                })
                .await
        };
        match attempt.await {
            Ok(_) => {
                tracing::info!(member = %me, "joined the control group as a learner");
                return;
            }
            Err(e) => tracing::debug!("joining the control group: {}", e.message()),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(JOIN_RETRY_MAX);
    }
}
