//! The `elton.control.v1.Control` service: authenticates each call with
//! the host's [`Gate`] and hands it to the member's [`ControlNode`].

use std::sync::Arc;

use elton_proto::FORWARDED_METADATA_KEY;
use elton_proto::control_pb::control_server::{Control, ControlServer};
use elton_proto::control_pb::{
    InitRequest, InitResponse, JoinRequest, JoinResponse, LeaveRequest, LeaveResponse,
    QueryRequest, QueryResponse, StatusRequest, StatusResponse, SubmitRequest, SubmitResponse,
};
use tonic::{Request, Response, Status};

use crate::gate::{Caller, ControlNeed, Gate, probe};
use crate::net::peer_versions::advertise;
use crate::net::pool::MAX_MESSAGE_BYTES;
use crate::node::ControlNode;

pub struct ControlService {
    node: Arc<ControlNode>,
    gate: Arc<dyn Gate>,
}

impl ControlService {
    pub fn new(node: Arc<ControlNode>, gate: Arc<dyn Gate>) -> Self {
        Self { node, gate }
    }

    pub fn into_server(self) -> ControlServer<Self> {
        ControlServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// The caller, whether the call was forwarded by another member, and
    /// the message.
    fn admit<T>(&self, req: Request<T>, need: ControlNeed) -> Result<(Caller, bool, T), Status> {
        let forwarded = req.metadata().contains_key(FORWARDED_METADATA_KEY);
        let (probe, msg) = probe(req);
        let caller = self.gate.admit(&probe, need)?;
        Ok((caller, forwarded, msg))
    }
}

#[tonic::async_trait]
impl Control for ControlService {
    async fn submit(
        &self,
        req: Request<SubmitRequest>,
    ) -> Result<Response<SubmitResponse>, Status> {
        let (caller, forwarded, msg) = self.admit(req, ControlNeed::Submit)?;
        let resp = self.node.submit(msg.command, &caller, forwarded).await?;
        let mut resp = Response::new(resp);
        // What this member reads, and so whether a follower may forward
        // it batches.
        advertise(resp.metadata_mut());
        Ok(resp)
    }

    async fn status(
        &self,
        req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let (_, _, msg) = self.admit(req, ControlNeed::Read)?;
        Ok(Response::new(self.node.status(msg).await))
    }

    async fn init(&self, req: Request<InitRequest>) -> Result<Response<InitResponse>, Status> {
        self.admit(req, ControlNeed::Admin)?;
        let leader = self.node.init().await?;
        Ok(Response::new(InitResponse { leader }))
    }

    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        let node = req.get_ref().node.clone();
        let (caller, forwarded, msg) = self.admit(req, ControlNeed::SpeakAs(node))?;
        Ok(Response::new(
            self.node.join(msg, &caller, forwarded).await?,
        ))
    }

    async fn leave(&self, req: Request<LeaveRequest>) -> Result<Response<LeaveResponse>, Status> {
        let node = req.get_ref().node.clone();
        let (caller, forwarded, msg) = self.admit(req, ControlNeed::SpeakAs(node))?;
        self.node.leave(msg, &caller, forwarded).await?;
        Ok(Response::new(LeaveResponse {}))
    }

    async fn query(&self, req: Request<QueryRequest>) -> Result<Response<QueryResponse>, Status> {
        let (_, _, msg) = self.admit(req, ControlNeed::Query)?;
        Ok(Response::new(self.node.query(msg).await?))
    }
}
