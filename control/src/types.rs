//! The openraft type configuration and the member description every Raft
//! message carries.

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::command::{Request, Response};

/// A member's Raft id. Chosen by whoever adds the member (`elton control
/// join`); unique within the group for its whole life.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Elton's Raft types: JSON-encoded [`Request`]s in the log, members
    /// described by [`Member`], snapshots as one in-memory buffer (the state
    /// machine's tables serialised, see `docs/formats.md`).
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// What a member is meant to be. The membership's voter and learner sets are
/// the authority on the effective role; this records the intent, so that a
/// learner being promoted or a voter being demoted is visible in `status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A master: votes and may lead.
    #[default]
    Voter,
    /// A slave host: receives the log and executes commands, never votes.
    Learner,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Voter => "voter",
            Role::Learner => "learner",
        })
    }
}

/// A member of the control group as the membership config stores it.
///
/// `Default` exists because openraft builds placeholder nodes for
/// memberships given by id only; a real member always has a name and address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The member's identity name (its certificate's name in the trust
    /// issue's PKI); a peer presenting another name is refused.
    pub name: String,
    /// Where its Raft gRPC service listens, as an `https://host:port` URL.
    pub addr: String,
    pub role: Role,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}, {})", self.name, self.role, self.addr)
    }
}

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Member>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Member>;
pub type Membership = openraft::Membership<NodeId, Member>;
pub type StorageError = openraft::StorageError<NodeId>;
