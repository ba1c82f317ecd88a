//! What each member said, in its latest answer to a Raft RPC, about the
//! command versions it reads (docs/formats.md §11, "Command versions").
//! Members of this build stamp every Raft answer with
//! [`COMMAND_VERSION_METADATA_KEY`]; an earlier build's answers carry no
//! such header and count as version 1. The leader's batcher reads this to
//! decide whether batches may be written ([`crate::batch::may_batch`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tonic::metadata::{MetadataMap, MetadataValue};

use crate::command::COMMAND_VERSION;
use crate::types::NodeId;

/// gRPC metadata (a response header or trailer) on every answer of the
/// `Raft` service: the newest command version the member reads.
pub const COMMAND_VERSION_METADATA_KEY: &str = "x-elton-command-version";

#[derive(Clone, Default)]
pub struct PeerVersions(Arc<Mutex<HashMap<NodeId, u32>>>);

impl PeerVersions {
    /// Records what `node` said in an answer's metadata.
    pub fn record(&self, node: NodeId, metadata: &MetadataMap) {
        let v = advertised(metadata);
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.insert(node, v) != Some(v) {
            tracing::debug!(node, version = v, "member reads command versions up to {v}");
        }
    }

    /// What `node` said last; `None` before it answered.
    pub fn get(&self, node: NodeId) -> Option<u32> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&node).copied()
    }
}

/// The version an answer's metadata advertises; 1 (the version before
/// the header existed) when it has none or cannot be read.
pub fn advertised(metadata: &MetadataMap) -> u32 {
    metadata
        .get(COMMAND_VERSION_METADATA_KEY)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

/// Stamps an answer with this build's [`COMMAND_VERSION`].
pub fn advertise(metadata: &mut MetadataMap) {
    metadata.insert(
        COMMAND_VERSION_METADATA_KEY,
        MetadataValue::from(COMMAND_VERSION),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_member_reads_version_one() {
        let versions = PeerVersions::default();
        assert_eq!(versions.get(7), None);
        versions.record(7, &MetadataMap::new());
        assert_eq!(versions.get(7), Some(1));
        let mut m = MetadataMap::new();
        advertise(&mut m);
        versions.record(7, &m);
        assert_eq!(versions.get(7), Some(COMMAND_VERSION));
        m.insert(COMMAND_VERSION_METADATA_KEY, "x".parse().unwrap());
        assert_eq!(advertised(&m), 1);
    }
}
