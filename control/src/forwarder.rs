//! A follower's forwarding batcher: client requests this member forwards
//! to the leader queue here; while earlier forwards are in flight the
//! queue fills, and the next forward carries what it holds as one
//! `Submit` of a `batch` envelope ([`crate::forward`]). Without it every
//! forwarded request is its own gRPC call on both members, and on a small
//! machine those calls, not the disk, bound the group's throughput. A lone
//! request is forwarded as it came, with no wait added.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use elton_proto::FORWARDED_METADATA_KEY;
use elton_proto::control_pb::{SubmitRequest, SubmitResponse};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tonic::{Code, Status};

use crate::batch::{self, BatchLimits};
use crate::command::{BATCH_VERSION, Request, RequestId};
use crate::forward::{Answer, Answers};
use crate::member_id::raft_id;
use crate::net::peer_versions::PeerVersions;
use crate::net::pool::Pool;
use crate::types::Member;

/// Forwards in flight at once; as for the leader's batcher, two let the
/// queue fill while keeping the pipe busy.
pub const MAX_IN_FLIGHT: usize = 2;

type Reply = oneshot::Sender<Result<SubmitResponse, Status>>;

struct Queued {
    leader: Member,
    request: Request,
    /// The client's bytes, forwarded as they are when the request goes
    /// alone.
    bytes: Vec<u8>,
    reply: Reply,
}

/// Handle to one member's forwarding task; the task ends with the handle.
pub struct Forwarder {
    tx: mpsc::UnboundedSender<Queued>,
}

/// What a forward needs besides its requests.
#[derive(Clone)]
struct Link {
    pool: Pool,
    versions: PeerVersions,
    timeout: Duration,
}

impl Forwarder {
    /// `timeout`: how long the leader may take to commit (its leader wait
    /// plus an RPC timeout). `name` (this member's) prefixes envelope ids.
    pub fn start(
        pool: Pool,
        versions: PeerVersions,
        timeout: Duration,
        name: &str,
        limits: BatchLimits,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let link = Link {
            pool,
            versions,
            timeout,
        };
        tokio::spawn(run(link, rx, limits, format!("forward:{name}")));
        Self { tx }
    }

    /// Forwards `request` (a client's `bytes`, batchable) to `leader` and
    /// answers with the leader's answer to it alone.
    pub async fn forward(
        &self,
        leader: Member,
        request: Request,
        bytes: Vec<u8>,
    ) -> Result<SubmitResponse, Status> {
        let (reply, answer) = oneshot::channel();
        let stopped = || Status::unavailable("this member's control plane is stopping");
        self.tx
            .send(Queued {
                leader,
                request,
                bytes,
                reply,
            })
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn run(
    link: Link,
    mut rx: mpsc::UnboundedReceiver<Queued>,
    limits: BatchLimits,
    client: String,
) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut queue: VecDeque<Queued> = VecDeque::new();
    let mut seq = 0u64;
    loop {
        if queue.is_empty() {
            match rx.recv().await {
                Some(q) => queue.push_back(q),
                None => return,
            }
        }
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        while let Ok(q) = rx.try_recv() {
            queue.push_back(q);
        }
        // Requests for another leader (leadership moved meanwhile) end the
        // batch, as an unbatchable request does.
        let leader = queue.front().map(|q| q.leader.clone()).unwrap_or_default();
        // A leader of an earlier build cannot take a batch: one request a
        // call until it has said otherwise.
        let reads = link.versions.get(raft_id(&leader.name)).unwrap_or(1);
        let limits = if reads >= BATCH_VERSION {
            limits
        } else {
            BatchLimits {
                max_requests: 1,
                ..limits
            }
        };
        let shape: Vec<(bool, usize)> = queue
            .iter()
            .take(limits.max_requests.saturating_add(1))
            .map(|q| (q.leader == leader, q.bytes.len()))
            .collect();
        let n = batch::take(&shape, limits).max(1);
        let taken: Vec<Queued> = queue.drain(..n.min(queue.len())).collect();
        seq += 1;
        let id = RequestId {
            client: client.clone(),
            seq,
        };
        let link = link.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let n = taken.len();
            link.send(leader, taken, id).await;
            tracing::debug!(
                requests = n,
                us = started.elapsed().as_micros() as u64,
                "forwarded"
            );
            drop(slot);
        });
    }
}

impl Link {
    async fn send(&self, leader: Member, taken: Vec<Queued>, id: RequestId) {
        let n = taken.len();
        let mut taken = taken;
        if n == 1
            && let Some(one) = taken.pop()
        {
            let answer = self.call(&leader, one.bytes).await;
            let _ = one.reply.send(answer);
            return;
        }
        let (requests, replies): (Vec<Request>, Vec<Reply>) =
            taken.into_iter().map(|q| (q.request, q.reply)).unzip();
        let envelope = batch::envelope(requests, id).encode();
        let answers = match self.call(&leader, envelope).await {
            Ok(r) => match Answers::decode(&r.response, n) {
                Ok(a) => a.into_iter().map(|a| one_answer(a, &r.leader)).collect(),
                Err(e) => (0..n).map(|_| Err(Status::internal(e.clone()))).collect(),
            },
            Err(s) => (0..n).map(|_| Err(s.clone())).collect::<Vec<_>>(),
        };
        for (reply, answer) in replies.into_iter().zip(answers) {
            // A caller that gave up is not waiting any more.
            let _ = reply.send(answer);
        }
    }

    /// One `Submit` to the leader on the clients' behalf.
    async fn call(&self, leader: &Member, command: Vec<u8>) -> Result<SubmitResponse, Status> {
        let mut client = self.pool.control(leader)?;
        let mut req = tonic::Request::new(SubmitRequest { command });
        req.metadata_mut().insert(
            FORWARDED_METADATA_KEY,
            tonic::metadata::MetadataValue::from_static("1"),
        );
        req.set_timeout(self.timeout);
        let resp = client.submit(req).await?;
        self.versions.record(raft_id(&leader.name), resp.metadata());
        Ok(resp.into_inner())
    }
}

fn one_answer(a: Answer, leader: &str) -> Result<SubmitResponse, Status> {
    match a {
        Answer::Ok {
            response,
            log_index,
        } => Ok(SubmitResponse {
            // Plain data with string keys: serialising cannot fail.
            response: serde_json::to_vec(&response).unwrap_or_default(),
            log_index,
            leader: leader.to_string(),
        }),
        Answer::Err { code, message } => Err(Status::new(Code::from_i32(code), message)),
    }
}
