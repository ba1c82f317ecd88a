//! The leader's write batcher: client requests queue here instead of each
//! calling `Raft::client_write`; while earlier entries are in flight the
//! queue fills, and the next entry carries what it holds (up to
//! [`BatchLimits`]) as one [`crate::command::Command::Batch`]. One entry is
//! one `append`, one fsync per member and one round trip, so under load the
//! cost of a commit is shared by the whole batch; a lone request goes
//! alone, in its own envelope, with no wait added.
//!
//! What goes into a batch is decided by [`crate::batch`] (pure).

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::batch::{self, BatchLimits};
use crate::command::{Request, RequestId, Response};
use crate::net::peer_versions::PeerVersions;
use crate::node_error::NodeError;
use crate::types::{NodeId, Raft};

/// Entries the batcher has in flight at once. Two lets the leader append
/// (and fsync) the next entry while the previous one waits for the
/// followers; more only makes batches smaller.
pub const MAX_IN_FLIGHT: usize = 2;

/// A request applied by the group: its response and its entry's index.
#[derive(Debug)]
pub struct Written {
    pub response: Response,
    pub log_index: u64,
}

type Reply = oneshot::Sender<Result<Written, NodeError>>;

struct Queued {
    request: Request,
    /// Encoded size, for the batch's byte bound.
    bytes: usize,
    reply: Reply,
}

/// Handle to one member's batcher task; the task ends with the handle.
pub struct Batcher {
    tx: mpsc::UnboundedSender<Queued>,
    raft: Raft,
    versions: PeerVersions,
}

impl Batcher {
    /// Starts the batcher of `raft`; `name` (the member's) prefixes the
    /// envelopes' ids.
    /// `versions`: what the other members read; batches are formed only
    /// while all of them read batches ([`batch::may_batch`]).
    pub fn start(raft: Raft, name: &str, limits: BatchLimits, versions: PeerVersions) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let gate = VersionGate {
            versions: versions.clone(),
            holding: None,
        };
        tokio::spawn(run(raft.clone(), rx, limits, gate, format!("batch:{name}")));
        Self { tx, raft, versions }
    }

    /// Refuses a command of a version some member may not read: it would
    /// stop that member's state machine at the entry.
    fn check_readable(&self, request: &Request) -> Result<(), NodeError> {
        let version = request.command.version();
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let members = m.membership_config.membership().nodes().map(|(id, _)| *id);
        batch::every_member_reads(members, m.id, version, |id| self.versions.get(id)).map_err(
            |id| {
                NodeError::BadRequest(format!(
                    "this command needs command version {version}, and member {id} has not \
                     said it reads it (an earlier build, or not heard from yet): upgrade every \
                     member first, or try again in a moment"
                ))
            },
        )
    }

    /// Proposes `request` (of `bytes` encoded bytes) and answers once it is
    /// applied. Call on the leader only: a follower's batch fails with
    /// leadership moved.
    pub async fn write(&self, request: Request, bytes: usize) -> Result<Written, NodeError> {
        self.check_readable(&request)?;
        let (reply, answer) = oneshot::channel();
        let stopped = || NodeError::Unavailable("this member's control plane is stopping".into());
        self.tx
            .send(Queued {
                request,
                bytes,
                reply,
            })
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// Whether this leader may write batches now, logging when that changes.
struct VersionGate {
    versions: PeerVersions,
    /// The member that held batching off last time, if one did.
    holding: Option<NodeId>,
}

impl VersionGate {
    fn allows(&mut self, raft: &Raft) -> bool {
        let metrics = raft.metrics();
        let m = metrics.borrow();
        let members = m.membership_config.membership().nodes().map(|(id, _)| *id);
        let verdict = batch::may_batch(members, m.id, |id| self.versions.get(id));
        let holding = verdict.err();
        if holding != self.holding {
            match holding {
                Some(id) => tracing::info!(
                    member = id,
                    "writes go one per log entry: member {id} has not said it reads batch \
                     entries (an earlier build, or not heard from yet)"
                ),
                None => tracing::info!("every member reads batch entries; writes are batched"),
            }
            self.holding = holding;
        }
        holding.is_none()
    }
}

async fn run(
    raft: Raft,
    mut rx: mpsc::UnboundedReceiver<Queued>,
    limits: BatchLimits,
    mut gate: VersionGate,
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
        // Waiting for a free slot is what lets the queue fill.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        while let Ok(q) = rx.try_recv() {
            queue.push_back(q);
        }
        let limits = if gate.allows(&raft) {
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
            .map(|q| (batch::batchable(&q.request.command), q.bytes))
            .collect();
        let n = batch::take(&shape, limits);
        let taken: Vec<Queued> = queue.drain(..n).collect();
        seq += 1;
        let id = RequestId {
            client: client.clone(),
            seq,
        };
        let raft = raft.clone();
        tokio::spawn(async move {
            write_batch(&raft, taken, id).await;
            drop(slot);
        });
    }
}

/// Proposes one entry for `taken` and answers each waiter.
async fn write_batch(raft: &Raft, taken: Vec<Queued>, id: RequestId) {
    let n = taken.len();
    let (requests, replies): (Vec<Request>, Vec<Reply>) =
        taken.into_iter().map(|q| (q.request, q.reply)).unzip();
    let started = std::time::Instant::now();
    let written = raft.client_write(batch::envelope(requests, id)).await;
    tracing::debug!(
        requests = n,
        us = started.elapsed().as_micros() as u64,
        ok = written.is_ok(),
        "entry written"
    );
    let answers: Vec<Result<Written, NodeError>> = match written {
        Ok(r) => {
            let log_index = r.log_id.index;
            match (n, r.data) {
                (1, response) => vec![Ok(Written {
                    response,
                    log_index,
                })],
                (_, Response::Batch { responses }) if responses.len() == n => responses
                    .into_iter()
                    .map(|response| {
                        Ok(Written {
                            response,
                            log_index,
                        })
                    })
                    .collect(),
                (_, other) => {
                    let e = format!("a batch of {n} requests was answered with {other:?}");
                    (0..n).map(|_| Err(NodeError::Raft(e.clone()))).collect()
                }
            }
        }
        Err(e) => {
            let e = crate::node::write_error(e);
            (0..n).map(|_| Err(copy_error(&e))).collect()
        }
    };
    for (reply, answer) in replies.into_iter().zip(answers) {
        // A caller that gave up is not waiting any more.
        let _ = reply.send(answer);
    }
}

/// The same failure for every request of a batch (a client write fails
/// only with these kinds).
fn copy_error(e: &NodeError) -> NodeError {
    match e {
        NodeError::Unavailable(m) => NodeError::Unavailable(m.clone()),
        NodeError::BadRequest(m) => NodeError::BadRequest(m.clone()),
        NodeError::Raft(m) => NodeError::Raft(m.clone()),
        other => NodeError::Raft(other.to_string()),
    }
}
