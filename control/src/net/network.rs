//! openraft's network over gRPC: each Raft RPC is one unary call of the
//! `elton.control.v1.Raft` service on the target's control endpoint.
//! Every failure to get an answer (connection refused, deadline, refusal)
//! is `Unreachable`, so openraft backs off instead of retrying at once.

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use tonic::Status;

use elton_proto::CONTROL_WIRE_REVISION;
use elton_proto::control_pb::SnapshotChunk;

use crate::net::codec::{self, Reply, SnapshotHead};
use crate::net::peer_versions::PeerVersions;
use crate::net::pool::Pool;
use crate::types::{Member, NodeId, TypeConfig};

/// Makes one [`Connection`] per target; they share the pool's channels,
/// and record what each target says it reads in `versions`.
#[derive(Clone)]
pub struct Network {
    pool: Pool,
    versions: PeerVersions,
}

impl Network {
    pub fn new(pool: Pool, versions: PeerVersions) -> Self {
        Self { pool, versions }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> Connection {
        Connection {
            target,
            member: node.clone(),
            pool: self.pool.clone(),
            versions: self.versions.clone(),
        }
    }
}

pub struct Connection {
    target: NodeId,
    member: Member,
    pool: Pool,
    versions: PeerVersions,
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, Member, RaftError<NodeId, E>>>;

/// The call did not produce an answer from the member.
#[derive(Debug, thiserror::Error)]
#[error("control call to {member}: {status}")]
struct CallFailed {
    member: String,
    status: String,
}

impl Connection {
    fn failed<E: std::error::Error>(&self, status: &Status) -> RPCError<NodeId, Member, E> {
        let e = CallFailed {
            member: self.member.name.clone(),
            status: format!("{:?}: {}", status.code(), status.message()),
        };
        tracing::debug!("{e}");
        RPCError::Unreachable(Unreachable::new(&e))
    }

    fn request<T>(msg: T, option: &RPCOption) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.set_timeout(option.hard_ttl());
        req
    }

    /// The member's answer: its openraft result, or a transport failure.
    // The error type is the one openraft's `RaftNetwork` methods return.
    #[allow(clippy::result_large_err)]
    fn reply<T: serde::de::DeserializeOwned, E>(
        &self,
        answer: Result<tonic::Response<elton_proto::control_pb::RaftMessage>, Status>,
    ) -> Result<T, RPCError<NodeId, Member, RaftError<NodeId, E>>>
    where
        E: std::error::Error + serde::de::DeserializeOwned,
    {
        match &answer {
            Ok(r) => self.versions.record(self.target, r.metadata()),
            // A refusal from the member itself says what it reads too (an
            // earlier build refuses a batch entry it cannot parse); a call
            // that never reached it says nothing.
            Err(s) if answered(s) => self.versions.record(self.target, s.metadata()),
            Err(_) => {}
        }
        let msg = answer.map_err(|s| self.failed(&s))?.into_inner();
        let reply: Reply<T, E> = codec::decode(msg.revision, &msg.json).map_err(|s| {
            let e = CallFailed {
                member: self.member.name.clone(),
                status: s.message().to_string(),
            };
            RPCError::Network(NetworkError::new(&e))
        })?;
        reply.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.member.clone(),
                e,
            ))
        })
    }
}

/// Whether a failed call was answered by the member's Raft service (rather
/// than by the transport: no connection, deadline, refused handshake).
fn answered(status: &Status) -> bool {
    use tonic::Code;
    !matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
    )
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        let started = std::time::Instant::now();
        let entries = rpc.entries.len();
        let msg = codec::encode(&rpc).map_err(|s| self.failed(&s))?;
        let bytes = msg.json.len();
        let mut client = self.pool.raft(&self.member).map_err(|s| self.failed(&s))?;
        let answer = client.append_entries(Self::request(msg, &option)).await;
        tracing::debug!(
            to = %self.member.name,
            entries,
            bytes,
            us = started.elapsed().as_micros() as u64,
            "append sent"
        );
        self.reply(answer)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        let InstallSnapshotRequest {
            vote,
            meta,
            offset,
            data,
            done,
        } = rpc;
        let head = SnapshotHead {
            vote,
            meta,
            offset,
            done,
        };
        let json = codec::to_json(&head).map_err(|s| self.failed(&s))?;
        let chunk = SnapshotChunk {
            revision: CONTROL_WIRE_REVISION,
            json,
            data,
        };
        let mut client = self.pool.raft(&self.member).map_err(|s| self.failed(&s))?;
        let answer = client.install_snapshot(Self::request(chunk, &option)).await;
        self.reply(answer)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        let msg = codec::encode(&rpc).map_err(|s| self.failed(&s))?;
        let mut client = self.pool.raft(&self.member).map_err(|s| self.failed(&s))?;
        let answer = client.vote(Self::request(msg, &option)).await;
        self.reply(answer)
    }
}
