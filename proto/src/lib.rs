//! Elton's contracts, shared by every crate.
//!
//! - [`ids`]: typed identifiers (`ObjectId`, `VolumeName`, `Version`, `NodeId`).
//! - [`addr`]: a node's HTTP address (`HttpAddr`, exactly `host:port`).
//! - [`manifest`]: directory manifests and their one canonical JSON encoding.
//! - [`manifest_delta`]: decoding a manifest that differs a little from one
//!   already checked, parsing only what differs.
//! - [`paged`]: large directories cut into pages, and their index (a design
//!   step: not yet read or written by any node).
//! - [`recipe`]: chunk lists of large files (content-defined chunking).
//! - [`batch`]: the body of a batch upload of many objects.
//! - [`chunking`]: how a large file is cut into the chunks of its recipe.
//! - [`cores`]: the CPUs this process may use, read once.
//! - [`record`]: version records as served in JSON.
//! - [`path`]: validated relative paths inside a volume.
//! - [`validate`]: the check a tree passes before it is published (slave
//!   and master run the same one).
//! - [`pb`]: the generated gRPC types and services (`elton.v1`).
//! - [`control_pb`]: the control plane's Raft and Control services
//!   (`elton.control.v1`).
//!
//! Formats are documented in `docs/formats.md`.

pub mod addr;
pub mod batch;
pub mod chunking;
pub mod cores;
pub mod error;
pub mod ids;
pub mod listing;
pub mod manifest;
pub mod manifest_delta;
pub mod manifest_diff;
pub mod paged;
pub mod path;
pub mod recipe;
pub mod record;
pub mod validate;

pub use addr::HttpAddr;
pub use error::{FetchError, ProtoError, TreeError};
pub use ids::{NodeId, ObjectId, Version, VolumeName};
pub use manifest::{DirManifest, Entry, EntryKind};
pub use path::VolumePath;
pub use recipe::{Chunk, ChunkIndex, Recipe};
pub use record::VersionInfo;
pub use validate::{TreeSource, validate_tree};

/// Generated code for `proto/elton.proto`.
#[allow(clippy::all, clippy::unwrap_used, rust_2018_idioms)]
pub mod pb {
    tonic::include_proto!("elton.v1");
}

/// Generated code for `proto/control.proto`.
#[allow(clippy::all, clippy::unwrap_used, rust_2018_idioms)]
pub mod control_pb {
    tonic::include_proto!("elton.control.v1");
}

/// Revision of the control plane's Raft encoding (JSON of openraft 0.9's
/// types inside `RaftMessage`); see docs/formats.md §Control plane.
pub const CONTROL_WIRE_REVISION: u32 = 1;
/// gRPC metadata key a member sets when it forwards a client call to the
/// leader: the leader answers itself and never forwards again.
pub const FORWARDED_METADATA_KEY: &str = "x-elton-forwarded";

/// Metadata key carrying the current head on a commit conflict.
pub const HEAD_METADATA_KEY: &str = "x-elton-head";
/// Metadata key carrying an object's size on `FetchObject`.
pub const SIZE_METADATA_KEY: &str = "x-elton-size";

/// The size a `FetchObject` answer announces, when it carries a valid one.
pub fn announced_size(metadata: &tonic::metadata::MetadataMap) -> Option<u64> {
    metadata
        .get(SIZE_METADATA_KEY)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}
/// HTTP header a master sets when it proxies a fetch from a slave: answer
/// from the local store only, never fetch (no recursion between nodes).
pub const LOCAL_ONLY_HEADER: &str = "x-elton-local-only";
/// gRPC metadata key on calls between peer masters: the calling master's
/// cluster name. The callee answers from its own state only (no recursion).
pub const PEER_METADATA_KEY: &str = "x-elton-peer";
/// Largest HTTP/2 frame a gRPC endpoint of ours accepts. Object bytes cross
/// every hop in messages of up to 1 MiB; HTTP/2's default of 16 KiB would cut
/// each into 64 frames, each handled on its own by sender and receiver.
pub const GRPC_MAX_FRAME_BYTES: u32 = 1 << 20;
/// Connections a slave keeps to its master, and a master to each peer, for
/// object transfers (see `Fetcher`, `PeerSet`): parallel transfers spread
/// over several HTTP/2 connections instead of sharing one.
pub const TRANSFER_CONNECTIONS: usize = 4;
/// Most object ids one `AddLocations` call may carry. A slave sends at most
/// 8192 per call; the margin leaves room for other clients' batch sizes
/// while keeping one call's work (one redb transaction) bounded.
pub const MAX_LOCATIONS_PER_CALL: usize = 10_000;
