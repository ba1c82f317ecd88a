use elton_proto::{HEAD_METADATA_KEY, ProtoError};
use thiserror::Error;
use tonic::{Code, Status};

#[derive(Debug, Error)]
pub enum MasterError {
    #[error(transparent)]
    Invalid(#[from] ProtoError),
    #[error("{0}")]
    BadRequest(String),
    #[error("unknown volume {0:?}")]
    UnknownVolume(String),
    #[error("volume {volume:?} has no version {version}")]
    UnknownVersion { volume: String, version: u64 },
    #[error("volume {0:?} has no version yet")]
    EmptyVolume(String),
    #[error("volume {0:?} already exists")]
    VolumeExists(String),
    #[error(
        "conflict: volume {volume:?} is at version {head}, not {parent}: another commit came \
         first; import again, or move the mount onto the head with `elton update` and commit"
    )]
    Conflict {
        volume: String,
        head: u64,
        parent: u64,
    },
    /// A commit's tree that must not be published; `path` names the first
    /// bad entry (see `elton_proto::validate`).
    #[error("invalid tree: {path}: {reason}")]
    InvalidTree { path: String, reason: String },
    #[error("root object {0} is not stored on any node; upload it before committing")]
    RootNotStored(String),
    #[error("http_addr {addr} is registered by node {node:?}, which is up")]
    AddressTaken { addr: String, node: String },
    #[error(
        "volume {volume:?} was deleted (its head was version {head}); its version numbers may \
         still be cached by slaves and CDNs as immutable, so the name cannot be used again: \
         choose another name"
    )]
    VolumeDeleted { volume: String, head: u64 },
    #[error(
        "node {0:?} was removed from this cluster (elton node rm); it cannot register again \
         under this id: give the slave a new --node-id and a fresh data directory"
    )]
    NodeRemoved(String),
    #[error(
        "node {node:?} is down and holds the only copy of {objects} object(s); removing it \
         would lose them: bring it up so they can be copied first, or remove it anyway with \
         --force"
    )]
    WouldLoseObjects { node: String, objects: u64 },
    #[error("unknown node {0:?}; register first")]
    UnknownNode(String),
    #[error("no live node holds object {0}")]
    NoHolder(String),
    #[error("volume {volume:?} already exists: cluster {home} homes it")]
    HomedByPeer { volume: String, home: String },
    #[error("home master {home} unreachable: {reason}")]
    HomeUnreachable { home: String, reason: String },
    #[error("{what}: not found in this cluster, and peer master(s) unreachable: {peers}")]
    PeersUnreachable { what: String, peers: String },
    /// A peer's error answer, passed on with its code (and conflict head).
    #[error("{message}")]
    Remote {
        code: Code,
        message: String,
        head: Option<u64>,
    },
    #[error("object {object}: every holder failed; last: {last}")]
    HoldersFailed { object: String, last: String },
    /// No credentials, or credentials that prove nothing.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// Credentials that do not allow this call.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// Garbage collection could not walk a version's tree: it deletes
    /// nothing (fail-closed).
    #[error(
        "gc deleted nothing: {volume}@{version} cannot be walked: {path}: object {object}: {reason}"
    )]
    GcUnwalkable {
        volume: String,
        version: u64,
        path: String,
        object: String,
        reason: String,
    },
    #[error("gc: {0}")]
    GcBusy(String),
    #[error("metadata store: {0}")]
    Storage(String),
    /// `master.redb` was removed, replaced or truncated under the running
    /// master: nothing more is confirmed (see `file_guard`).
    #[error(
        "metadata file lost ({0}); this master confirms no more writes: restart it, then \
         restore the metadata (`elton master --restore FILE`) or start a new incarnation \
         (`elton master --new-incarnation`)"
    )]
    MetadataLost(String),
    /// The database file is locked by another process.
    #[error("{0}")]
    InUse(String),
    /// The data directory's metadata cannot be served (see `incarnation`).
    #[error("refusing to start: {0}")]
    Refused(String),
    /// A new incarnation waits for every slave to hear of it before it
    /// issues versions (see `settle`).
    #[error(
        "the metadata is a new incarnation: commits open in {} ms, once every slave has \
         heard of it; retry",
        .0.as_millis()
    )]
    Settling(std::time::Duration),
    /// A client's view of the metadata is from another incarnation.
    #[error("{0}")]
    WrongIncarnation(String),
    #[error("{0}")]
    Io(String),
}

impl From<redb::Error> for MasterError {
    fn from(e: redb::Error) -> Self {
        Self::Storage(e.to_string())
    }
}

macro_rules! storage_from {
    ($($t:ty),*) => {$(
        impl From<$t> for MasterError {
            fn from(e: $t) -> Self {
                Self::Storage(e.to_string())
            }
        }
    )*};
}
storage_from!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// The one place where master errors become gRPC statuses.
impl From<MasterError> for Status {
    fn from(e: MasterError) -> Self {
        let code = match &e {
            MasterError::Invalid(_)
            | MasterError::BadRequest(_)
            | MasterError::InvalidTree { .. } => Code::InvalidArgument,
            MasterError::UnknownVolume(_)
            | MasterError::UnknownVersion { .. }
            | MasterError::EmptyVolume(_)
            | MasterError::NoHolder(_) => Code::NotFound,
            MasterError::VolumeExists(_)
            | MasterError::HomedByPeer { .. }
            | MasterError::AddressTaken { .. } => Code::AlreadyExists,
            MasterError::HomeUnreachable { .. }
            | MasterError::PeersUnreachable { .. }
            | MasterError::HoldersFailed { .. }
            | MasterError::Settling(_) => Code::Unavailable,
            MasterError::Remote { code, .. } => *code,
            MasterError::Conflict { .. } => Code::Aborted,
            MasterError::RootNotStored(_)
            | MasterError::UnknownNode(_)
            | MasterError::MetadataLost(_)
            | MasterError::Refused(_)
            | MasterError::InUse(_)
            | MasterError::WrongIncarnation(_)
            | MasterError::GcUnwalkable { .. }
            | MasterError::WouldLoseObjects { .. } => Code::FailedPrecondition,
            MasterError::VolumeDeleted { .. } => Code::AlreadyExists,
            MasterError::NodeRemoved(_) => Code::PermissionDenied,
            MasterError::GcBusy(_) => Code::Aborted,
            MasterError::Unauthenticated(_) => Code::Unauthenticated,
            MasterError::PermissionDenied(_) => Code::PermissionDenied,
            MasterError::Storage(_) | MasterError::Io(_) => Code::Internal,
        };
        let mut status = Status::new(code, e.to_string());
        let head = match e {
            MasterError::Conflict { head, .. } => Some(head),
            MasterError::Remote { head, .. } => head,
            _ => None,
        };
        if let Some(head) = head
            && let Ok(v) = head.to_string().parse()
        {
            status.metadata_mut().insert(HEAD_METADATA_KEY, v);
        }
        status
    }
}
