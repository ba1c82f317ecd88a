//! What a member's client calls fail with, and the one place those
//! failures become gRPC statuses.

use thiserror::Error;
use tonic::{Code, Status};

use crate::error::ControlError;

#[derive(Debug, Error)]
pub enum NodeError {
    /// Input refused before anything changed.
    #[error("{0}")]
    BadRequest(String),
    /// The caller proved who it is but may not do this.
    #[error("{0}")]
    Denied(String),
    /// A member the call names is not in the group.
    #[error("{0}")]
    NotFound(String),
    /// `init` on a member of an initialised group.
    #[error("{0}")]
    AlreadyInitialized(String),
    /// The group has no leader (yet), or this member is not in a group.
    #[error("{0}")]
    Unavailable(String),
    /// A command the state machine refuses (decoding, versions, members).
    #[error(transparent)]
    Command(#[from] ControlError),
    /// The leader answered a forwarded call with this.
    #[error("{}", .0.message())]
    Forwarded(Status),
    /// openraft failed (storage, shutdown).
    #[error("raft: {0}")]
    Raft(String),
}

impl From<NodeError> for Status {
    fn from(e: NodeError) -> Self {
        let code = match &e {
            NodeError::BadRequest(_) => Code::InvalidArgument,
            NodeError::Denied(_) => Code::PermissionDenied,
            NodeError::NotFound(_) => Code::NotFound,
            NodeError::AlreadyInitialized(_) => Code::AlreadyExists,
            NodeError::Unavailable(_) => Code::Unavailable,
            NodeError::Command(c) => match c {
                ControlError::BadCommand(_) | ControlError::UnsupportedVersion { .. } => {
                    Code::InvalidArgument
                }
                ControlError::UnknownMember(_) => Code::NotFound,
                _ => Code::Internal,
            },
            NodeError::Forwarded(s) => return s.clone(),
            NodeError::Raft(_) => Code::Internal,
        };
        Status::new(code, e.to_string())
    }
}
