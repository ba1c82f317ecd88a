//! Elton's control plane: the masters form a Raft group (openraft 0.9,
//! storage-v2), slave hosts join as learners, and every member applies the
//! same typed commands. See `docs/architecture.md`, "Control plane".
//!
//! Contents:
//! - [`types`]: the openraft type config ([`TypeConfig`]), [`NodeId`],
//!   [`Member`] (name, https address, intended role) and type aliases.
//! - [`command`]: the log payload — [`Request`] (version, [`RequestId`],
//!   [`Command`]) and [`Response`]; [`Request::decode`] rejects malformed and
//!   unknown commands before they are proposed.
//! - [`state`] (pure): the replicated [`state::State`] and
//!   [`state::apply`], one entry at a time, with exactly-once sessions.
//! - [`execution`] (pure): which members must answer an `Execute`, and the
//!   result once all answered or the deadline passed.
//! - [`store`]: `control.redb` and `control.wal/`; [`open_store`] returns the [`LogStore`]
//!   (group-committed, durable before openraft is told) and
//!   [`StateMachineStore`] halves for `openraft::Raft::new`;
//!   [`StateMachineStore::reader`] gives a [`StateReader`] for local reads,
//!   progress watching and execution results.
//! - [`error`]: [`ControlError`], mapped to gRPC statuses by the network edge.
//!
//! What the networking side calls:
//! ```ignore
//! let (log, sm) = elton_control::open_store(&dir.join("control.redb"))?;
//! let reader = sm.reader();            // read applied state, watch progress
//! // (get, membership, wait_applied, owed_executions, wait_result, digest)
//! let raft = elton_control::Raft::new(id, config, network, log, sm).await?;
//! let req = elton_control::Request::decode(&bytes)?;   // client bytes
//! let resp = raft.client_write(req).await?.data;        // a Response
//! ```

pub mod apps;
pub mod batch;
pub mod command;
pub mod direct;
pub mod drcond;
pub mod error;
pub mod execution;
pub mod forward;
pub mod k2i;
pub mod state;
pub mod store;
pub mod types;

// The network edge and the member runtime (see docs/architecture.md).
pub mod app_reconciler;
pub mod batcher;
pub mod executor;
pub mod forwarder;
pub mod gate;
pub mod member_id;
pub mod net;
pub mod node;
pub mod node_error;
pub mod settings;
pub mod status;

pub use command::{
    Action, COMMAND_VERSION, Command, ExecutionResult, NodeResult, Request, RequestId, Response,
    Targets,
};
pub use error::ControlError;
pub use store::{LogStore, StateMachineStore, StateReader, open_store};
pub use types::{Member, NodeId, Raft, Role, TypeConfig};

pub use gate::{Caller, ControlNeed, Gate};
pub use member_id::raft_id;
pub use net::tls::MemberTls;
pub use node::ControlNode;
pub use node_error::NodeError;
pub use settings::ControlSettings;
