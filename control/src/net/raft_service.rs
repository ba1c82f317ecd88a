//! The `elton.control.v1.Raft` service: hands authenticated Raft RPCs to
//! this member's openraft instance and sends back its result as is.

use std::sync::Arc;

use elton_proto::control_pb::raft_server::{Raft as RaftRpc, RaftServer};
use elton_proto::control_pb::{RaftMessage, SnapshotChunk};
use openraft::raft::InstallSnapshotRequest;
use tonic::{Request, Response, Status};

use crate::gate::{ControlNeed, Gate, probe};
use crate::net::codec::{self, SnapshotHead};
use crate::net::peer_versions::advertise;
use crate::net::pool::MAX_MESSAGE_BYTES;
use crate::types::Raft;

pub struct RaftService {
    raft: Raft,
    gate: Arc<dyn Gate>,
}

impl RaftService {
    pub fn new(raft: Raft, gate: Arc<dyn Gate>) -> Self {
        Self { raft, gate }
    }

    pub fn into_server(self) -> RaftServer<Self> {
        RaftServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    fn admit<T>(&self, req: Request<T>) -> Result<T, Status> {
        let (probe, msg) = probe(req);
        self.gate.admit(&probe, ControlNeed::Raft)?;
        Ok(msg)
    }
}

/// Every answer, refusals included, tells the caller which command
/// versions this member reads.
fn stamped(answer: Result<RaftMessage, Status>) -> Result<Response<RaftMessage>, Status> {
    match answer {
        Ok(msg) => {
            let mut r = Response::new(msg);
            advertise(r.metadata_mut());
            Ok(r)
        }
        Err(mut s) => {
            advertise(s.metadata_mut());
            Err(s)
        }
    }
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        stamped(self.answer_vote(req).await)
    }

    async fn append_entries(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        stamped(self.answer_append(req).await)
    }

    async fn install_snapshot(
        &self,
        req: Request<SnapshotChunk>,
    ) -> Result<Response<RaftMessage>, Status> {
        stamped(self.answer_snapshot(req).await)
    }
}

impl RaftService {
    async fn answer_vote(&self, req: Request<RaftMessage>) -> Result<RaftMessage, Status> {
        let msg = self.admit(req)?;
        let rpc = codec::decode(msg.revision, &msg.json)?;
        let reply = self.raft.vote(rpc).await;
        codec::encode(&reply)
    }

    async fn answer_append(&self, req: Request<RaftMessage>) -> Result<RaftMessage, Status> {
        let started = std::time::Instant::now();
        let msg = self.admit(req)?;
        let rpc: openraft::raft::AppendEntriesRequest<crate::types::TypeConfig> =
            codec::decode(msg.revision, &msg.json)?;
        let entries = rpc.entries.len();
        let decoded_us = started.elapsed().as_micros() as u64;
        let reply = self.raft.append_entries(rpc).await;
        tracing::debug!(
            entries,
            bytes = msg.json.len(),
            decoded_us,
            us = started.elapsed().as_micros() as u64,
            "append answered"
        );
        codec::encode(&reply)
    }

    async fn answer_snapshot(&self, req: Request<SnapshotChunk>) -> Result<RaftMessage, Status> {
        let chunk = self.admit(req)?;
        let head: SnapshotHead = codec::decode(chunk.revision, &chunk.json)?;
        let rpc = InstallSnapshotRequest {
            vote: head.vote,
            meta: head.meta,
            offset: head.offset,
            data: chunk.data,
            done: head.done,
        };
        let reply = self.raft.install_snapshot(rpc).await;
        codec::encode(&reply)
    }
}
