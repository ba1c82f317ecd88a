use thiserror::Error;

use crate::types::NodeId;

/// Everything the control crate can fail with. The networking edge maps
/// these to gRPC statuses; nothing below it knows about transports.
#[derive(Debug, Error)]
pub enum ControlError {
    /// A command that does not parse, or parses to something invalid.
    /// Rejected before it is proposed, so nothing changes.
    #[error("bad command: {0}")]
    BadCommand(String),
    /// A command encoded by a newer Elton than this member understands.
    #[error("command version {found} is not supported (this member speaks up to {supported})")]
    UnsupportedVersion { found: u32, supported: u32 },
    /// A command targets a node id that is not in the group's membership.
    #[error("unknown member {0}")]
    UnknownMember(NodeId),
    /// `control.redb` was written by an incompatible build.
    #[error("control store format {found} is not supported (this build reads {supported})")]
    Format { found: u64, supported: u64 },
    /// Bytes from disk that do not decode: the file is damaged or was
    /// written by something else.
    #[error("control store is corrupt: {0}")]
    Corrupt(String),
    #[error("control store: {0}")]
    Storage(String),
    #[error("{0}")]
    Io(String),
}

macro_rules! storage_from {
    ($($t:ty),*) => {$(
        impl From<$t> for ControlError {
            fn from(e: $t) -> Self {
                Self::Storage(e.to_string())
            }
        }
    )*};
}
storage_from!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

impl From<std::io::Error> for ControlError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e.to_string())
    }
}
