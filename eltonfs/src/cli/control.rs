//! `elton control`: the control plane's group — initialise it, add and
//! remove members, show its state, submit a command. Every call goes to
//! the master (`--master`); any member answers, and a follower forwards
//! what only the leader can do.

use anyhow::{Context, Result, anyhow};
use clap::{Args, Subcommand};
use elton_proto::control_pb::control_client::ControlClient;
use elton_proto::control_pb::{
    InitRequest, JoinRequest, LeaveRequest, StatusRequest, StatusResponse, SubmitRequest,
};
use elton_trust::BearerAuth;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use super::Endpoints;
use super::client::status;

pub(super) type Client = ControlClient<InterceptedService<Channel, BearerAuth>>;

#[derive(Subcommand, Debug)]
pub enum ControlCommand {
    /// Make a one-voter group of the master (once per group; admin).
    Init,
    /// Add a member: a master as a voter, a slave host as a learner (admin).
    Join(JoinArgs),
    /// Remove a member (admin).
    Leave {
        /// The member's node name.
        node: String,
    },
    /// Members, roles, leader, term, and each member's log and applied
    /// index with its lag.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Submit a command (JSON, e.g. '{"kind":"put","key":"a","value":"b"}')
    /// and print its response once it is committed (token of scope write).
    Submit(SubmitArgs),
}

#[derive(Args, Debug)]
pub struct JoinArgs {
    /// The member's node name (its certificate's).
    #[arg(long)]
    pub node: String,
    /// Its control endpoint: a master's gRPC URL, a slave's
    /// `--control-listen` address as https://HOST:PORT.
    #[arg(long)]
    pub addr: String,
    /// master (a voter) or slave (a learner).
    #[arg(long, default_value = "master")]
    pub role: String,
    /// Join a master as a learner only (it receives the log but does not
    /// vote; e.g. a distant cluster's master over a slow WAN link).
    #[arg(long)]
    pub learner: bool,
}

#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// The command (JSON), or with --raw the whole request envelope.
    pub command: String,
    /// Send the argument as the complete request, unchecked (to test a
    /// member's validation).
    #[arg(long)]
    pub raw: bool,
    /// Client id of the request [default: one per invocation]. A retry
    /// with the same client and sequence number is applied once.
    #[arg(long)]
    pub client: Option<String>,
    /// Sequence number of the request for this client.
    #[arg(long, default_value_t = 1)]
    pub seq: u64,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub(super) async fn client(ep: &Endpoints) -> Result<Client> {
    let channel = ep.master_channel().await?;
    Ok(ControlClient::with_interceptor(channel, ep.auth()?))
}

pub async fn control(ep: &Endpoints, cmd: ControlCommand) -> Result<()> {
    let mut c = client(ep).await?;
    match cmd {
        ControlCommand::Init => {
            let r = c.init(InitRequest {}).await.map_err(status)?.into_inner();
            println!("initialised; leader {}", r.leader);
        }
        ControlCommand::Join(a) => {
            let voter = a.role == "master" && !a.learner;
            let r = c
                .join(JoinRequest {
                    node: a.node.clone(),
                    addr: a.addr,
                    voter,
                    role: a.role,
                })
                .await
                .map_err(status)?
                .into_inner();
            let role = if voter { "voter" } else { "learner" };
            println!("{} joined as a {role} (raft id {})", a.node, r.raft_id);
        }
        ControlCommand::Leave { node } => {
            c.leave(LeaveRequest { node: node.clone() })
                .await
                .map_err(status)?;
            println!("{node} left the group");
        }
        ControlCommand::Status { json } => {
            let r = c
                .status(StatusRequest { local: false })
                .await
                .map_err(status)?
                .into_inner();
            if json {
                println!("{}", status_json(&r));
            } else {
                print_status(&r);
            }
        }
        ControlCommand::Submit(a) => {
            let bytes = if a.raw {
                a.command.into_bytes()
            } else {
                let command: elton_control::Command = serde_json::from_str(&a.command)
                    .map_err(|e| anyhow!("command {:?}: {e}", a.command))?;
                let client = a.client.unwrap_or_else(default_client_id);
                let id = elton_control::RequestId { client, seq: a.seq };
                elton_control::Request::new(id, command).encode()
            };
            let r = c
                .submit(SubmitRequest { command: bytes })
                .await
                .map_err(status)?
                .into_inner();
            let response: serde_json::Value =
                serde_json::from_slice(&r.response).context("the member's response")?;
            if a.json {
                let out = serde_json::json!({
                    "response": response,
                    "log_index": r.log_index,
                    "leader": r.leader,
                });
                println!("{out}");
            } else {
                println!(
                    "{response} (log index {}, leader {})",
                    r.log_index, r.leader
                );
            }
        }
    }
    Ok(())
}

/// Submits one command as a fresh client (sequence 1) and reads the
/// member's answer.
pub(super) async fn submit(
    c: &mut Client,
    command: elton_control::Command,
) -> Result<elton_control::Response> {
    let request = elton_control::Request::new(
        elton_control::RequestId {
            client: default_client_id(),
            seq: 1,
        },
        command,
    );
    let r = c
        .submit(SubmitRequest {
            command: request.encode(),
        })
        .await
        .map_err(status)?
        .into_inner();
    serde_json::from_slice(&r.response).context("the member's response")
}

/// FastContainer's apps and instance registry, read on the direct path:
/// the leader answers from its applied state after confirming its
/// leadership, and nothing is appended to the log.
pub(super) async fn app_view(ep: &Endpoints) -> Result<elton_control::apps::fleet::AppView> {
    use elton_control::NodeResult;
    let mut c = client(ep).await?;
    let r = c
        .query(elton_proto::control_pb::QueryRequest {
            action: serde_json::to_vec(&elton_control::Action::AppState)?,
            hosts: Vec::new(),
            all: false,
            deadline_ms: 5000,
            local: false,
        })
        .await
        .map_err(status)?
        .into_inner();
    let result: elton_control::direct::DirectResult =
        serde_json::from_slice(&r.result).context("the member's answer")?;
    match result.hosts.into_values().next() {
        Some(NodeResult::Ok { output }) => {
            serde_json::from_value(output).context("the apps in the answer")
        }
        Some(NodeResult::Failed { error }) => Err(anyhow!("reading the apps: {error}")),
        None => Err(anyhow!("reading the apps: {} did not answer", result.node)),
    }
}

pub(super) fn default_client_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("cli-{}-{nanos}", std::process::id())
}

fn status_json(r: &StatusResponse) -> serde_json::Value {
    let members: Vec<serde_json::Value> = r
        .members
        .iter()
        .map(|m| {
            serde_json::json!({
                "name": m.name,
                "raft_id": m.raft_id,
                "addr": m.addr,
                "role": m.role,
                "state": m.state,
                "term": m.term,
                "last_log_index": m.last_log_index,
                "last_applied": m.last_applied,
                "lag": m.lag,
                "state_digest": m.state_digest,
                "applied_requests": m.applied_requests,
                "purged": m.purged,
                "error": if m.error.is_empty() { None } else { Some(&m.error) },
            })
        })
        .collect();
    serde_json::json!({
        "answered_by": r.node,
        "initialized": r.initialized,
        "leader": if r.leader.is_empty() { None } else { Some(&r.leader) },
        "term": r.term,
        "members": members,
    })
}

fn print_status(r: &StatusResponse) {
    if !r.initialized {
        println!(
            "{} is in no control group (run `elton control init` on one master)",
            r.node
        );
        return;
    }
    let leader = if r.leader.is_empty() {
        "(none)"
    } else {
        &r.leader
    };
    println!("leader {leader}, term {} (answered by {})", r.term, r.node);
    println!(
        "{:<20} {:<8} {:<12} {:>6} {:>10} {:>10} {:>8}  ADDR",
        "NAME", "ROLE", "STATE", "TERM", "LAST LOG", "APPLIED", "LAG"
    );
    for m in &r.members {
        println!(
            "{:<20} {:<8} {:<12} {:>6} {:>10} {:>10} {:>8}  {}{}",
            m.name,
            m.role,
            m.state,
            m.term,
            m.last_log_index,
            m.last_applied,
            m.lag,
            m.addr,
            if m.error.is_empty() {
                String::new()
            } else {
                format!("  ({})", m.error)
            }
        );
    }
}
