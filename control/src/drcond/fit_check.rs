//! Asks the hosts a limit names for their cores before it is proposed
//! (the decision is [`super::fit::check`]).

use std::time::Duration;

use elton_proto::control_pb::QueryRequest;

use crate::command::{Action, Command, Request, Targets};
use crate::direct::DirectResult;
use crate::execution::resolve_targets;
use crate::node::ControlNode;
use crate::node_error::NodeError;

/// How long hosts have to say how many cores they have; a silent host
/// is not waited for (it checks again when it reconciles).
const FACTS_DEADLINE: Duration = Duration::from_secs(2);

impl ControlNode {
    /// Refuses a `Limit` whose CPU is above the cores of a host it names;
    /// other commands pass.
    pub async fn check_limit_fits(&self, request: &Request) -> Result<(), NodeError> {
        let Command::Limit { spec, .. } = &request.command else {
            return Ok(());
        };
        if spec.resources.cpu_percent.is_none() {
            return Ok(());
        }
        let membership = self.raft().metrics().borrow().membership_config.clone();
        let membership = membership.membership();
        let ids = match &spec.hosts {
            Targets::Nodes { ids } => ids.clone(),
            targets => resolve_targets(targets, membership)?,
        };
        let hosts: Vec<String> = ids
            .iter()
            .filter_map(|id| membership.get_node(id).map(|m| m.name.clone()))
            .collect();
        if hosts.is_empty() {
            return Ok(());
        }
        let answer = self
            .query(QueryRequest {
                action: serde_json::to_vec(&Action::Host).unwrap_or_default(),
                hosts,
                all: false,
                deadline_ms: u32::try_from(FACTS_DEADLINE.as_millis()).unwrap_or(u32::MAX),
                local: false,
            })
            .await?;
        let answers: DirectResult = serde_json::from_slice(&answer.result)
            .map_err(|e| NodeError::Raft(format!("reading the hosts' facts: {e}")))?;
        super::fit::check(&spec.resources, &answers)
            .map_err(|e| NodeError::BadRequest(format!("limit: {e}")))
    }
}
