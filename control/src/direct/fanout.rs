//! The calls of the direct read path: this host's part runs off the
//! async runtime, the other hosts are asked in parallel over this
//! member's connections, and whatever has not answered by the deadline is
//! missing.

use std::time::Duration;

use elton_proto::control_pb::{QueryRequest, QueryResponse};
use tonic::Code;

use super::select::{self, DEFAULT_DIRECT_DEADLINE, DirectResult, HostSelection};
use crate::command::{Action, NodeResult};
use crate::node::ControlNode;
use crate::node_error::NodeError;
use crate::types::Member;

impl ControlNode {
    /// Answers a client's (or, with `local`, another member's) direct
    /// query.
    pub async fn query(&self, req: QueryRequest) -> Result<QueryResponse, NodeError> {
        let action: Action = serde_json::from_slice(&req.action)
            .map_err(|e| NodeError::BadRequest(format!("query: not an action: {e}")))?;
        let deadline = match req.deadline_ms {
            0 => DEFAULT_DIRECT_DEADLINE,
            ms => Duration::from_millis(u64::from(ms)),
        };
        select::check(&action, deadline)
            .map_err(|e| NodeError::BadRequest(format!("query: {e}")))?;
        if action == Action::AppState {
            // A read of the agreed state, not of hosts: `local` marks a
            // member's forward to the leader.
            return self.read_app_state(&req, req.local).await;
        }
        let selection = match (req.local, req.all, req.hosts.is_empty()) {
            (true, _, _) | (false, false, true) => HostSelection::Asked,
            (false, true, true) => HostSelection::All,
            (false, false, false) => HostSelection::Named(req.hosts),
            (false, true, false) => {
                return Err(NodeError::BadRequest(
                    "query: name hosts or ask all of them, not both".into(),
                ));
            }
        };
        let membership = self.raft().metrics().borrow().membership_config.clone();
        let hosts = select::select(&selection, self.member(), membership.membership())
            .map_err(NodeError::NotFound)?;
        let until = tokio::time::Instant::now() + deadline;
        let asks = hosts.into_iter().map(|host| {
            let action = &action;
            async move {
                let outcome = tokio::time::timeout_at(until, self.ask(&host, action, deadline))
                    .await
                    .unwrap_or(None);
                (host.name, outcome)
            }
        });
        let outcomes = futures::future::join_all(asks).await;
        let result = select::assemble(&self.member().name, outcomes);
        let bytes = serde_json::to_vec(&result)
            .map_err(|e| NodeError::Raft(format!("encoding the answer: {e}")))?;
        Ok(QueryResponse { result: bytes })
    }

    /// One host's answer: run here when it is this member, else asked
    /// over the member connection. `None` when it cannot be reached.
    async fn ask(&self, host: &Member, action: &Action, deadline: Duration) -> Option<NodeResult> {
        if host.name == self.member().name {
            let action = action.clone();
            return Some(
                tokio::task::spawn_blocking(move || crate::executor::run(&action))
                    .await
                    .unwrap_or_else(|e| NodeResult::Failed {
                        error: format!("the action panicked: {e}"),
                    }),
            );
        }
        let call = async {
            let mut client = self.pool().control(host)?;
            let mut req = tonic::Request::new(QueryRequest {
                action: serde_json::to_vec(action).unwrap_or_default(),
                hosts: Vec::new(),
                all: false,
                deadline_ms: u32::try_from(deadline.as_millis()).unwrap_or(u32::MAX),
                local: true,
            });
            req.set_timeout(deadline);
            client.query(req).await
        };
        match call.await {
            Ok(resp) => {
                let answer: Result<DirectResult, _> =
                    serde_json::from_slice(&resp.into_inner().result);
                Some(match answer {
                    Ok(mut r) => r.hosts.remove(&host.name).unwrap_or(NodeResult::Failed {
                        error: format!("{} answered for {:?} instead", host.name, r.node),
                    }),
                    Err(e) => NodeResult::Failed {
                        error: format!("unreadable answer: {e}"),
                    },
                })
            }
            // Down, unreachable or out of time: missing, not failed.
            Err(s)
                if matches!(
                    s.code(),
                    Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled
                ) =>
            {
                tracing::debug!(host = %host.name, "direct query: {}", s.message());
                None
            }
            Err(s) if s.code() == Code::Unimplemented => Some(NodeResult::Failed {
                error: "this host's build has no direct queries (upgrade it)".into(),
            }),
            Err(s) => Some(NodeResult::Failed {
                error: format!("{:?}: {}", s.code(), s.message()),
            }),
        }
    }
}
