//! Reads of the replicated state on the direct path (FastContainer's
//! `app_state`): answered by the leader after it confirmed its leadership
//! with a round of heartbeats (openraft's read index), so a proxy polling
//! every few seconds appends nothing to the log. A follower asked forwards
//! to the leader; the answer is the leader's applied state at least as new
//! as the last write committed before the read began.

use elton_proto::control_pb::{QueryRequest, QueryResponse};

use super::select::DirectResult;
use crate::command::{Action, NodeResult};
use crate::node::ControlNode;
use crate::node_error::NodeError;

impl ControlNode {
    /// Answers `app_state`; `forwarded`: a member asked on a client's
    /// behalf, so this member must be the leader.
    pub(crate) async fn read_app_state(
        &self,
        req: &QueryRequest,
        forwarded: bool,
    ) -> Result<QueryResponse, NodeError> {
        self.on_leader(
            forwarded,
            || async move {
                self.raft()
                    .ensure_linearizable()
                    .await
                    .map_err(|e| NodeError::Unavailable(format!("confirming leadership: {e}")))?;
                let view = self.reader().app_view();
                let output = serde_json::to_value(&view)
                    .map_err(|e| NodeError::Raft(format!("encoding the apps: {e}")))?;
                let name = self.member().name.clone();
                let result = DirectResult {
                    node: name.clone(),
                    hosts: [(name, NodeResult::Ok { output })].into(),
                    missing: Vec::new(),
                };
                let result = serde_json::to_vec(&result)
                    .map_err(|e| NodeError::Raft(format!("encoding the answer: {e}")))?;
                Ok(QueryResponse { result })
            },
            |leader| async move {
                let mut client = self.pool().control(&leader)?;
                let mut fwd = tonic::Request::new(QueryRequest {
                    action: serde_json::to_vec(&Action::AppState).unwrap_or_default(),
                    hosts: Vec::new(),
                    all: false,
                    deadline_ms: req.deadline_ms,
                    local: true,
                });
                fwd.set_timeout(self_timeout(req));
                Ok(client.query(fwd).await?.into_inner())
            },
        )
        .await
    }
}

fn self_timeout(req: &QueryRequest) -> std::time::Duration {
    match req.deadline_ms {
        0 => super::select::DEFAULT_DIRECT_DEADLINE,
        ms => std::time::Duration::from_millis(u64::from(ms)),
    }
}
