//! How openraft's messages travel inside `RaftMessage` (JSON, revisioned;
//! docs/formats.md §Control plane).

use elton_proto::CONTROL_WIRE_REVISION;
use elton_proto::control_pb::RaftMessage;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::Status;

use crate::types::{NodeId, SnapshotMeta, Vote};

/// An `InstallSnapshotRequest` without its data, which travels as raw
/// bytes beside it.
#[derive(Serialize, serde::Deserialize)]
pub struct SnapshotHead {
    pub vote: Vote,
    pub meta: SnapshotMeta,
    pub offset: u64,
    pub done: bool,
}

pub fn encode<T: Serialize>(value: &T) -> Result<RaftMessage, Status> {
    Ok(RaftMessage {
        revision: CONTROL_WIRE_REVISION,
        json: to_json(value)?,
    })
}

pub fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>, Status> {
    serde_json::to_vec(value).map_err(|e| Status::internal(format!("encoding: {e}")))
}

/// Decodes a message of a known revision; anything else is refused, so
/// members of different revisions fail loudly instead of misreading.
pub fn decode<T: DeserializeOwned>(revision: u32, json: &[u8]) -> Result<T, Status> {
    if revision != CONTROL_WIRE_REVISION {
        return Err(Status::failed_precondition(format!(
            "control wire revision {revision} is not {CONTROL_WIRE_REVISION} (members of \
             different Elton versions); upgrade every member"
        )));
    }
    serde_json::from_slice(json)
        .map_err(|e| Status::invalid_argument(format!("malformed Raft message: {e}")))
}

/// What a Raft RPC's answer carries: openraft's own result.
pub type Reply<T, E = openraft::error::Infallible> =
    Result<T, openraft::error::RaftError<NodeId, E>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_is_checked_and_round_trips() {
        let m = encode(&vec![1u64, 2]).unwrap();
        assert_eq!(decode::<Vec<u64>>(m.revision, &m.json).unwrap(), vec![1, 2]);
        let err = decode::<Vec<u64>>(m.revision + 1, &m.json).unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        let err = decode::<Vec<u64>>(m.revision, b"{").unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }
}
