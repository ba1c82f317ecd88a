//! One member's control plane runtime: owns the openraft instance, and
//! carries out client calls — on the leader itself, or forwarded to the
//! leader over this member's own connections (application-level
//! forwarding; a follower never proposes).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use elton_proto::FORWARDED_METADATA_KEY;
use elton_proto::control_pb::{
    JoinRequest, JoinResponse, LeaveRequest, StatusRequest, StatusResponse, SubmitRequest,
    SubmitResponse,
};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, RaftMetrics, ServerState};
use tonic::Status;

use crate::batch::BatchLimits;
use crate::batcher::Batcher;
use crate::command::{Command, NodeResult, Request, Targets};
use crate::forward::{Answer, Answers};
use crate::forwarder::Forwarder;
use crate::gate::Caller;
use crate::member_id::raft_id;
use crate::net::network::Network;
use crate::net::peer_versions::PeerVersions;
use crate::net::pool::Pool;
use crate::net::probe::{Probe, probe};
use crate::net::tls::MemberTls;
use crate::node_error::NodeError;
use crate::settings::ControlSettings;
use crate::status::{self, SelfView};
use crate::store::{StateReader, open_store};
use crate::types::{Member, NodeId, Raft, Role};

/// How long a voter being added may take to catch up before `join`
/// gives up waiting (it stays a learner; joining again finishes).
const CATCH_UP_WAIT: Duration = Duration::from_secs(30);
/// Longest deadline an execution may ask for: a member holds the client's
/// call (and a forwarding member its connection) that long.
pub const MAX_EXECUTION_DEADLINE: Duration = Duration::from_secs(600);
/// How often a host reconciles its limits when nothing is applied (new
/// processes matching a name selector are taken within this).
pub const RECONCILE_TICK: Duration = Duration::from_millis(500);

pub struct ControlNode {
    id: NodeId,
    me: Member,
    raft: Raft,
    pool: Pool,
    settings: ControlSettings,
    reader: StateReader,
    batcher: Batcher,
    forwarder: Forwarder,
}

type Metrics = RaftMetrics<NodeId, Member>;

impl ControlNode {
    /// Opens (or creates) the member's store and starts Raft. A fresh
    /// member is in no group until `init` or a `join` adds it.
    pub async fn start(
        me: Member,
        settings: ControlSettings,
        tls: Option<MemberTls>,
    ) -> Result<Arc<Self>, NodeError> {
        elton_trust::pki::check_name("control member", &me.name)
            .map_err(|e| NodeError::BadRequest(e.to_string()))?;
        let config = settings.raft_config().map_err(NodeError::BadRequest)?;
        let path = settings.db_path.clone();
        let (log, sm) = tokio::task::spawn_blocking(move || {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            open_store(&path)
        })
        .await
        .map_err(|e| NodeError::Raft(format!("opening the control store: {e}")))??;
        let reader = sm.reader();
        let pool = Pool::new(tls, settings.rpc_timeout);
        let id = raft_id(&me.name);
        let versions = PeerVersions::default();
        let network = Network::new(pool.clone(), versions.clone());
        let raft = Raft::new(id, config, network, log, sm)
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        tracing::info!(member = %me, id, "control plane member started");
        let batcher = Batcher::start(
            raft.clone(),
            &me.name,
            BatchLimits::default(),
            versions.clone(),
        );
        let forwarder = Forwarder::start(
            pool.clone(),
            versions,
            settings.leader_wait + settings.rpc_timeout,
            &me.name,
            BatchLimits::default(),
        );
        let node = Arc::new(Self {
            id,
            me,
            raft,
            pool,
            settings,
            reader,
            batcher,
            forwarder,
        });
        tokio::spawn(Self::run_executions(Arc::downgrade(&node)));
        tokio::spawn(Self::run_expiry(Arc::downgrade(&node)));
        tokio::spawn(Self::run_reconciler(Arc::downgrade(&node)));
        tokio::spawn(crate::app_reconciler::run(Arc::downgrade(&node)));
        Ok(node)
    }

    /// Runs the executions this member is a target of, as they are
    /// applied, and reports each result through the group. Unreported ones
    /// (the group had no leader, this member restarted) are tried again on
    /// the next change to the executions or after a pause. Ends with the
    /// member.
    async fn run_executions(node: std::sync::Weak<Self>) {
        let Some(mut epochs) = node.upgrade().map(|n| n.reader.watch_epochs()) else {
            return;
        };
        loop {
            let seen = epochs.borrow_and_update().executions;
            let Some(n) = node.upgrade() else { return };
            for e in n.reader.owed_executions(n.id) {
                let action = e.action.clone();
                let result = tokio::task::spawn_blocking(move || crate::executor::run(&action))
                    .await
                    .unwrap_or_else(|e| NodeResult::Failed {
                        error: format!("the action panicked: {e}"),
                    });
                let report = crate::executor::report(&n.me.name, n.id, e.exec, result);
                if let Err(e) = n.submit(report.encode(), &n.self_caller(), false).await {
                    tracing::debug!("reporting execution {}: {e}", report.id);
                    break;
                }
            }
            let pause = n.settings.leader_wait;
            drop(n);
            // Woken by a new execution (or report); the timeout retries
            // reports that failed while nothing else happens. A closed
            // channel (the store is gone) must not spin.
            let changed = epochs.wait_for(|e| e.executions != seen);
            let closed = matches!(tokio::time::timeout(pause, changed).await, Ok(Err(_)));
            if closed {
                tokio::time::sleep(pause).await;
            }
        }
    }

    /// On the leader: releases the limits whose time is up. Expiry is
    /// decided here once, as a logged `Release`; its request id is fixed
    /// by the limit, so a new leader releasing it again changes nothing.
    async fn run_expiry(node: std::sync::Weak<Self>) {
        loop {
            let Some(n) = node.upgrade() else { return };
            let tick = n.settings.heartbeat;
            if n.metrics().current_leader == Some(n.id) {
                for id in crate::drcond::plan::expired(&n.reader.limits(), now_ms()) {
                    let release = Request::new(
                        crate::command::RequestId {
                            client: "drcond-expiry".into(),
                            seq: id,
                        },
                        Command::Release { id },
                    );
                    if let Err(e) = n.submit(release.encode(), &n.self_caller(), false).await {
                        tracing::debug!("releasing expired limit {id}: {e}");
                        break;
                    }
                    tracing::info!(limit = id, "limit expired and released");
                }
            }
            drop(n);
            tokio::time::sleep(tick).await;
        }
    }

    /// drcond on this host: makes its cgroups match the limits it must
    /// apply, whenever the limits change (a new or released limit takes
    /// effect at once) and every [`RECONCILE_TICK`] (processes that started
    /// since). Off where cgroups are not available.
    async fn run_reconciler(node: std::sync::Weak<Self>) {
        let Some(n) = node.upgrade() else { return };
        let dir = n
            .settings
            .db_path
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default();
        let host = match crate::drcond::host::CgroupHost::open(&n.me.name, &dir) {
            Ok(h) => Arc::new(std::sync::Mutex::new(h)),
            Err(e) => {
                tracing::info!("drcond limits are off on this host: {e}");
                return;
            }
        };
        let mut epochs = n.reader.watch_epochs();
        drop(n);
        let mut last_errors = Vec::new();
        loop {
            let seen = epochs.borrow_and_update().limits;
            let Some(n) = node.upgrade() else { return };
            let limits = crate::drcond::plan::for_host(&n.reader.limits(), n.id);
            drop(n);
            let h = host.clone();
            let errors = tokio::task::spawn_blocking(move || {
                let mut h = h.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                crate::drcond::host::reconcile(&mut h, &limits)
            })
            .await
            .unwrap_or_else(|e| vec![format!("reconcile panicked: {e}")]);
            // Logged when they change, not on every tick.
            if errors != last_errors {
                for e in &errors {
                    tracing::warn!("drcond: {e}");
                }
                last_errors = errors;
            }
            // A closed channel (the store is gone) must not spin.
            let changed = epochs.wait_for(|e| e.limits != seen);
            let closed = matches!(
                tokio::time::timeout(RECONCILE_TICK, changed).await,
                Ok(Err(_))
            );
            if closed {
                tokio::time::sleep(RECONCILE_TICK).await;
            }
        }
    }

    /// This member calling itself (reports, expiry).
    pub(crate) fn self_caller(&self) -> Caller {
        Caller {
            node: Some((
                self.me.name.clone(),
                match self.me.role {
                    Role::Voter => elton_trust::Role::Master,
                    Role::Learner => elton_trust::Role::Slave,
                },
            )),
            token: false,
        }
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Connections to other members (and, for a joining learner, to its
    /// master), with this member's certificate.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn member(&self) -> &Member {
        &self.me
    }

    /// The applied state (for k2i, drcond, scheduling, and tests).
    pub fn reader(&self) -> &StateReader {
        &self.reader
    }

    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!("control plane shutdown: {e}");
        }
    }

    fn metrics(&self) -> Metrics {
        self.raft.metrics().borrow().clone()
    }

    /// Makes a one-voter group of this member.
    pub async fn init(&self) -> Result<String, NodeError> {
        let initialized = self
            .raft
            .is_initialized()
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        if initialized {
            return Err(NodeError::AlreadyInitialized(format!(
                "{} is already a member of an initialised control group; a group is \
                 initialised once (add members with `elton control join`)",
                self.me.name
            )));
        }
        if self.me.role != Role::Voter {
            return Err(NodeError::BadRequest(
                "only a master (a voter) can initialise a group".into(),
            ));
        }
        self.raft
            .initialize(BTreeMap::from([(self.id, self.me.clone())]))
            .await
            .map_err(|e| match e {
                RaftError::APIError(e) => NodeError::AlreadyInitialized(e.to_string()),
                RaftError::Fatal(e) => NodeError::Raft(e.to_string()),
            })?;
        let (_, leader) = self.wait_leader().await?;
        Ok(leader.name)
    }

    /// The leader as this member knows it, waiting out an election.
    async fn wait_leader(&self) -> Result<(NodeId, Member), NodeError> {
        // Every write asks; while there is a leader, a look at the metrics
        // answers without the copy of them a wait makes.
        {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            if let Some(leader) = m.current_leader
                && let Some(member) = m.membership_config.membership().get_node(&leader)
            {
                return Ok((leader, member.clone()));
            }
        }
        let wait = self
            .raft
            .wait(Some(self.settings.leader_wait))
            .metrics(|m| m.current_leader.is_some(), "a leader")
            .await;
        let m = match wait {
            Ok(m) => m,
            Err(_) => self.metrics(),
        };
        let Some(leader) = m.current_leader else {
            let why = if in_group(&m) {
                "the control group has no leader (an election is in progress, or a majority \
                 of voters is down)"
            } else {
                "this member is in no control group yet (`elton control init` on one master, \
                 then `elton control join`)"
            };
            return Err(NodeError::Unavailable(why.into()));
        };
        let member = m
            .membership_config
            .membership()
            .get_node(&leader)
            .cloned()
            .ok_or_else(|| NodeError::Unavailable(format!("leader {leader} is not a member")))?;
        Ok((leader, member))
    }

    /// Runs `here` on the leader: itself, or (unless the call was already
    /// forwarded) the leader reached by `there` over this member's pool.
    /// Retries while leadership moves, up to the leader wait.
    pub(crate) async fn on_leader<T, H, HF, R, RF>(
        &self,
        forwarded: bool,
        here: H,
        there: R,
    ) -> Result<T, NodeError>
    where
        H: Fn() -> HF,
        HF: Future<Output = Result<T, NodeError>>,
        R: Fn(Member) -> RF,
        RF: Future<Output = Result<T, Status>>,
    {
        let deadline = tokio::time::Instant::now() + self.settings.leader_wait;
        loop {
            let (leader_id, leader) = self.wait_leader().await?;
            let result = if leader_id == self.id {
                here().await
            } else if forwarded {
                Err(NodeError::Unavailable(format!(
                    "{} is not the leader; {} is",
                    self.me.name, leader.name
                )))
            } else {
                there(leader).await.map_err(NodeError::Forwarded)
            };
            let retry = match &result {
                Err(NodeError::Unavailable(_)) => !forwarded,
                Err(NodeError::Forwarded(s)) => s.code() == tonic::Code::Unavailable,
                _ => false,
            };
            if !retry || tokio::time::Instant::now() >= deadline {
                return result;
            }
            tokio::time::sleep(self.settings.heartbeat).await;
        }
    }

    /// A call to the leader on a client's behalf; `work` is how long the
    /// leader may take beyond committing (an execution's deadline; a
    /// voter catching up).
    fn forward_request<T>(&self, msg: T, work: Duration) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.metadata_mut().insert(
            FORWARDED_METADATA_KEY,
            tonic::metadata::MetadataValue::from_static("1"),
        );
        req.set_timeout(self.settings.leader_wait + self.settings.rpc_timeout + work);
        req
    }

    /// A client's command: decoded and checked here (so nothing malformed
    /// is proposed), committed by the leader, answered once applied.
    pub async fn submit(
        &self,
        bytes: Vec<u8>,
        caller: &Caller,
        forwarded: bool,
    ) -> Result<SubmitResponse, NodeError> {
        // Only another member forwards batches (in an insecure group
        // everyone is trusted alike).
        if forwarded
            && (caller.master() || !self.pool.secure())
            && let Some(requests) = crate::forward::forwarded_batch(&bytes)?
        {
            return self.submit_forwarded_batch(requests).await;
        }
        let request = Request::decode(&bytes)?;
        if let Some(slave) = caller.slave() {
            // A slave host only reports its own results.
            let own =
                matches!(request.command, Command::Report { node, .. } if node == raft_id(slave));
            if !own {
                return Err(NodeError::Denied(format!(
                    "slave {slave} may only report its own results; clients need a token \
                     of scope write"
                )));
            }
        }
        self.check_targets(&request)?;
        if !forwarded {
            self.check_limit_fits(&request).await?;
        }
        let work = match &request.command {
            Command::Execute { deadline_ms, .. } => Duration::from_millis(*deadline_ms),
            _ => Duration::ZERO,
        };
        if work > MAX_EXECUTION_DEADLINE {
            return Err(NodeError::BadRequest(format!(
                "execute: deadline_ms {} is above the limit of {} ms",
                work.as_millis(),
                MAX_EXECUTION_DEADLINE.as_millis()
            )));
        }
        let request = &request;
        let bytes = &bytes;
        self.on_leader(
            forwarded,
            || async move {
                let stamped = stamp_expiry(request.clone(), now_ms());
                let w = self.batcher.write(stamped, bytes.len()).await?;
                Ok(SubmitResponse {
                    response: self.answer(w.response).await?,
                    log_index: w.log_index,
                    leader: self.me.name.clone(),
                })
            },
            |leader| async move {
                if crate::batch::batchable(&request.command) {
                    return self
                        .forwarder
                        .forward(leader, request.clone(), bytes.clone())
                        .await;
                }
                let mut client = self.pool.control(&leader)?;
                let req = self.forward_request(
                    SubmitRequest {
                        command: bytes.clone(),
                    },
                    work,
                );
                Ok(client.submit(req).await?.into_inner())
            },
        )
        .await
    }

    /// On the leader: the requests of a batch another member forwarded,
    /// each checked as a client's and fed to this member's batcher (where
    /// they join everyone else's), each answered on its own.
    async fn submit_forwarded_batch(
        &self,
        requests: Vec<Request>,
    ) -> Result<SubmitResponse, NodeError> {
        if self.raft.metrics().borrow().current_leader != Some(self.id) {
            return Err(NodeError::Unavailable(format!(
                "{} is not the leader",
                self.me.name
            )));
        }
        let one = |request: Request| async move {
            let request = crate::forward::check_forwarded(request)?;
            self.check_targets(&request)?;
            let len = request.encode().len();
            let w = self
                .batcher
                .write(stamp_expiry(request, now_ms()), len)
                .await?;
            Ok::<_, NodeError>(Answer::Ok {
                response: Box::new(w.response),
                log_index: w.log_index,
            })
        };
        let answers: Vec<Answer> = futures::future::join_all(requests.into_iter().map(one))
            .await
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|e| {
                    let s = Status::from(e);
                    Answer::Err {
                        code: s.code() as i32,
                        message: s.message().to_string(),
                    }
                })
            })
            .collect();
        let log_index = answers
            .iter()
            .filter_map(|a| match a {
                Answer::Ok { log_index, .. } => Some(*log_index),
                Answer::Err { .. } => None,
            })
            .max()
            .unwrap_or(0);
        Ok(SubmitResponse {
            response: Answers { answers }.encode(),
            log_index,
            leader: self.me.name.clone(),
        })
    }

    /// The client's answer to an applied command: its response, except for
    /// an execution, whose answer is the targets' results collected until
    /// all answered or its deadline passed (listing those that did not).
    async fn answer(&self, response: crate::command::Response) -> Result<Vec<u8>, NodeError> {
        let encoded = match &response {
            crate::command::Response::Executing {
                exec, deadline_ms, ..
            } => {
                let deadline = tokio::time::Instant::now() + Duration::from_millis(*deadline_ms);
                match self.reader.wait_result(*exec, deadline).await {
                    Some(result) => serde_json::to_vec(&result),
                    None => serde_json::to_vec(&response),
                }
            }
            _ => serde_json::to_vec(&response),
        };
        encoded.map_err(|e| NodeError::Raft(e.to_string()))
    }

    /// Members a command names must be in the group now (they may still
    /// leave before it applies; the state machine then rejects it).
    fn check_targets(&self, request: &Request) -> Result<(), NodeError> {
        let named: Vec<NodeId> = match &request.command {
            Command::Execute {
                targets: Targets::Nodes { ids },
                ..
            } => ids.iter().copied().collect(),
            Command::Report { node, .. } => vec![*node],
            Command::Limit { spec, .. } => match &spec.hosts {
                Targets::Nodes { ids } => ids.iter().copied().collect(),
                _ => Vec::new(),
            },
            _ => Vec::new(),
        };
        if named.is_empty() {
            return Ok(());
        }
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        let known = |id: &NodeId| membership.get_node(id).is_some();
        match named.into_iter().find(|id| !known(id)) {
            Some(id) => Err(NodeError::NotFound(format!(
                "member {id} is not in the control group (see `elton control status`)"
            ))),
            None => Ok(()),
        }
    }

    /// Adds a member: a learner, promoted to voter when asked.
    pub async fn join(
        &self,
        req: JoinRequest,
        caller: &Caller,
        forwarded: bool,
    ) -> Result<JoinResponse, NodeError> {
        let member = joining_member(&req)?;
        if self.pool.secure() && !member.addr.starts_with("https://") {
            return Err(NodeError::BadRequest(format!(
                "address {:?}: members of a secure group are reached over https",
                member.addr
            )));
        }
        if let Some(slave) = caller.slave()
            && (slave != member.name || req.voter)
        {
            return Err(NodeError::Denied(format!(
                "slave {slave} may only join itself, as a learner"
            )));
        }
        let id = raft_id(&member.name);
        let member = &member;
        let req = &req;
        self.on_leader(
            forwarded,
            || async move { self.add_member(id, member.clone(), req.voter).await },
            |leader| async move {
                let mut client = self.pool.control(&leader)?;
                Ok(client
                    .join(self.forward_request(req.clone(), CATCH_UP_WAIT))
                    .await?
                    .into_inner())
            },
        )
        .await
    }

    async fn add_member(
        &self,
        id: NodeId,
        member: Member,
        voter: bool,
    ) -> Result<JoinResponse, NodeError> {
        let m = self.metrics();
        let membership = m.membership_config.membership();
        let is_voter = membership.voter_ids().any(|v| v == id);
        if let Some(existing) = membership.get_node(&id)
            && *existing == member
            && is_voter == voter
        {
            return Ok(JoinResponse { raft_id: id });
        }
        if is_voter && !voter {
            return Err(NodeError::BadRequest(format!(
                "{} is a voter; `elton control leave` it first to make it a learner",
                member.name
            )));
        }
        self.confirm_identity(&member).await?;
        let added = tokio::time::timeout(
            CATCH_UP_WAIT,
            self.raft.add_learner(id, member.clone(), voter),
        )
        .await
        .map_err(|_| {
            NodeError::Unavailable(format!(
                "{} was added as a learner but has not caught up within {}s; is it \
                 reachable at {}? Join again to make it a voter",
                member.name,
                CATCH_UP_WAIT.as_secs(),
                member.addr
            ))
        })?;
        added.map_err(write_error)?;
        if voter {
            self.raft
                .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                .await
                .map_err(write_error)?;
        }
        tracing::info!(member = %member, id, voter, "control member added");
        Ok(JoinResponse { raft_id: id })
    }

    /// Refuses a member whose address is answered by another node (the
    /// handshake itself would refuse it later, but only once it is in the
    /// membership). A member that does not answer yet may still join.
    async fn confirm_identity(&self, member: &Member) -> Result<(), NodeError> {
        let Some(tls) = self.pool.tls() else {
            return Ok(());
        };
        let expected = crate::net::expected::Expected::member(member);
        match probe(tls, &member.addr, expected, self.settings.rpc_timeout).await {
            Probe::Confirmed => Ok(()),
            Probe::WrongPeer(wrong) => Err(NodeError::BadRequest(format!(
                "{} at {}: {wrong}; check the address (nothing was changed)",
                member.name, member.addr
            ))),
            Probe::Inconclusive(why) => {
                tracing::info!(member = %member, "adding a member not answering yet: {why}");
                Ok(())
            }
        }
    }

    /// Removes a member (voter or learner).
    pub async fn leave(
        &self,
        req: LeaveRequest,
        caller: &Caller,
        forwarded: bool,
    ) -> Result<(), NodeError> {
        if let Some(slave) = caller.slave()
            && slave != req.node
        {
            return Err(NodeError::Denied(format!(
                "slave {slave} may only remove itself"
            )));
        }
        let id = raft_id(&req.node);
        let req = &req;
        self.on_leader(
            forwarded,
            || async move {
                let m = self.metrics();
                let membership = m.membership_config.membership();
                if membership.get_node(&id).is_none() {
                    return Err(NodeError::NotFound(format!(
                        "{} is not a member of the control group",
                        req.node
                    )));
                }
                let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
                let change = if voters.contains(&id) {
                    if voters.len() == 1 {
                        return Err(NodeError::BadRequest(format!(
                            "{} is the group's only voter and cannot leave",
                            req.node
                        )));
                    }
                    ChangeMembers::RemoveVoters(BTreeSet::from([id]))
                } else {
                    ChangeMembers::RemoveNodes(BTreeSet::from([id]))
                };
                self.raft
                    .change_membership(change, false)
                    .await
                    .map_err(write_error)?;
                tracing::info!(member = %req.node, id, "control member removed");
                Ok(())
            },
            |leader| async move {
                let mut client = self.pool.control(&leader)?;
                client
                    .leave(self.forward_request(req.clone(), Duration::ZERO))
                    .await?;
                Ok(())
            },
        )
        .await
    }

    /// This member's own view of itself.
    fn self_view(&self, m: &Metrics) -> SelfView {
        SelfView {
            state: state_name(m.state).into(),
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            last_applied: m.last_applied.map_or(0, |l| l.index),
            state_digest: self.reader.digest(),
            applied_requests: self.reader.applied_requests(),
            purged: m.purged.map_or(0, |l| l.index),
        }
    }

    /// The group as this member sees it; unless `local`, every member is
    /// asked for its own progress (in parallel, each within the RPC
    /// timeout).
    pub async fn status(&self, req: StatusRequest) -> StatusResponse {
        let m = self.metrics();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let mut members: Vec<(NodeId, Member, bool)> = membership
            .nodes()
            .map(|(id, n)| (*id, n.clone(), voters.contains(id)))
            .collect();
        if members.is_empty() || req.local {
            members.retain(|(id, _, _)| *id == self.id);
            if members.is_empty() {
                members.push((self.id, self.me.clone(), self.me.role == Role::Voter));
            }
        }
        let mut views = BTreeMap::from([(self.id, Ok(self.self_view(&m)))]);
        let asks =
            members
                .iter()
                .filter(|(id, _, _)| *id != self.id)
                .map(|(id, member, _)| async move {
                    let ask = async {
                        let mut client = self.pool.control(member)?;
                        let mut r = tonic::Request::new(StatusRequest { local: true });
                        r.set_timeout(self.settings.rpc_timeout);
                        client.status(r).await
                    };
                    let view = match ask.await {
                        Ok(resp) => resp
                            .into_inner()
                            .members
                            .into_iter()
                            .next()
                            .map(|row| SelfView {
                                state: row.state,
                                term: row.term,
                                last_log_index: row.last_log_index,
                                last_applied: row.last_applied,
                                state_digest: row.state_digest,
                                applied_requests: row.applied_requests,
                                purged: row.purged,
                            })
                            .ok_or_else(|| "answered no status".to_string()),
                        Err(s) => Err(format!("{:?}: {}", s.code(), s.message())),
                    };
                    (*id, view)
                });
        views.extend(futures::future::join_all(asks).await);
        let leader = m
            .current_leader
            .and_then(|l| membership.get_node(&l))
            .map(|n| n.name.clone())
            .unwrap_or_default();
        StatusResponse {
            node: self.me.name.clone(),
            leader,
            term: m.current_term,
            initialized: in_group(&m),
            members: status::rows(&members, &views),
        }
    }
}

fn in_group(m: &Metrics) -> bool {
    m.membership_config.membership().nodes().next().is_some()
}

fn state_name(s: ServerState) -> &'static str {
    match s {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

/// A client write or membership change that failed on this member.
pub(crate) fn write_error(e: RaftError<NodeId, ClientWriteError<NodeId, Member>>) -> NodeError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            NodeError::Unavailable(format!("leadership moved (now {:?}); retry", f.leader_id))
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            NodeError::BadRequest(e.to_string())
        }
        RaftError::Fatal(e) => NodeError::Unavailable(format!("this member stopped: {e}")),
    }
}

/// The member a `join` describes, checked.
fn joining_member(req: &JoinRequest) -> Result<Member, NodeError> {
    elton_trust::pki::check_name("node", &req.node)
        .map_err(|e| NodeError::BadRequest(e.to_string()))?;
    let role = match req.role.as_str() {
        "master" => Role::Voter,
        "slave" => Role::Learner,
        other => {
            return Err(NodeError::BadRequest(format!(
                "role {other:?}: expected master or slave"
            )));
        }
    };
    if req.voter && role != Role::Voter {
        return Err(NodeError::BadRequest(
            "a slave host joins as a learner; only masters vote".into(),
        ));
    }
    let scheme_ok = req.addr.starts_with("https://") || req.addr.starts_with("http://");
    let has_port = req
        .addr
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok());
    if !scheme_ok || !has_port {
        return Err(NodeError::BadRequest(format!(
            "address {:?}: expected https://HOST:PORT of the member's control endpoint",
            req.addr
        )));
    }
    Ok(Member {
        name: req.node.clone(),
        addr: req.addr.clone(),
        role,
    })
}

/// Wall clock in Unix milliseconds (0 before 1970: a broken clock
/// expires nothing early).
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The leader's stamp on a limit: its expiry is now + its duration, so
/// every member applies the same instant (a client's own value is
/// replaced).
fn stamp_expiry(mut request: Request, now_ms: u64) -> Request {
    if let Command::Limit {
        spec,
        expires_at_ms,
    } = &mut request.command
    {
        *expires_at_ms = spec.for_ms.map(|ms| now_ms.saturating_add(ms));
    }
    // FastContainer's reports and scale-outs carry the leader's time too.
    if let Command::InstanceReport { at_ms, .. }
    | Command::AppScaleOut { at_ms, .. }
    | Command::AppAssign { at_ms, .. } = &mut request.command
    {
        *at_ms = now_ms;
    }
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(node: &str, addr: &str, voter: bool, role: &str) -> JoinRequest {
        JoinRequest {
            node: node.into(),
            addr: addr.into(),
            voter,
            role: role.into(),
        }
    }

    #[test]
    fn joins_are_checked_before_anything_changes() {
        let ok = joining_member(&join("s1", "https://127.0.0.1:7300", false, "slave")).unwrap();
        assert_eq!(ok.role, Role::Learner);
        for bad in [
            join("s 1", "https://127.0.0.1:7300", false, "slave"),
            join("s1", "https://127.0.0.1:7300", true, "slave"),
            join("s1", "127.0.0.1:7300", false, "slave"),
            join("s1", "https://127.0.0.1", false, "slave"),
            join("s1", "https://127.0.0.1:7300", false, "boss"),
        ] {
            assert!(
                matches!(joining_member(&bad), Err(NodeError::BadRequest(_))),
                "{bad:?}"
            );
        }
    }
}
