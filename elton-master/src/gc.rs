//! Garbage collection runs: the master decides, the slaves delete.
//!
//! 1. Walk every version of every volume homed here ([`LiveSet`]);
//!    fail-closed: a version that cannot be walked ends the run before any
//!    slave is asked.
//! 2. Every slave live at that moment is asked (heartbeat answer) to offer
//!    the objects it stores that arrived and were last used more than the
//!    run's cutoff age ago: the grace period, or the time since the walk
//!    began if that is longer, so nothing stored after the walk began is
//!    ever offered.
//! 3. For each batch offered, under the commit fence (no commit is between
//!    validation and record), versions committed since the walk are walked
//!    too, and the offered objects no version references lose their
//!    location on that node and are answered as deletable. A commit after
//!    the fence no longer finds those locations, so it cannot publish a
//!    tree whose objects are about to be deleted.
//! 4. Each slave deletes what it was told unless it used the object since
//!    its offer, and reports; the run ends when all asked slaves reported
//!    or after [`SWEEP_TIMEOUT`].
//!
//! The pure decisions are in [`crate::gc_plan`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use elton_proto::pb::{GcProgress, GcSummary};
use elton_proto::{NodeId, ObjectId, VersionInfo};
use tokio::sync::{Notify, RwLock};

use crate::MasterError;
use crate::gc_plan::{NodeReport, SweepProgress, deletable};
use crate::gc_walk::LiveSet;
use crate::nodes::Liveness;
use crate::store::{self, MetaStore};

/// How long a run waits for the slaves' reports.
pub const SWEEP_TIMEOUT: Duration = Duration::from_secs(600);
/// Least time between two progress events.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);
/// Added to the time since the walk began, computed when the heartbeat
/// answer is made: covers its transit to the slave.
const CUTOFF_SLACK: Duration = Duration::from_secs(1);

/// What a heartbeat answer hands a slave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Assignment {
    pub id: u64,
    pub cutoff_ms: u64,
    pub dry_run: bool,
}

struct Run {
    id: u64,
    dry_run: bool,
    live: LiveSet,
    sweep: SweepProgress,
    /// Set when a later walk failed: nothing more is deleted.
    aborted: Option<String>,
}

pub struct Gc {
    store: Arc<MetaStore>,
    liveness: Arc<Liveness>,
    http: reqwest::Client,
    /// Commits hold it shared from validation to record; a batch decision
    /// holds it exclusively.
    fence: Arc<RwLock<()>>,
    pub default_grace: Duration,
    run: tokio::sync::Mutex<Option<Run>>,
    /// Slaves still to be handed the current run (taken by heartbeats),
    /// with when its walk began and its grace period.
    pending: Mutex<HashMap<NodeId, (Assignment, Instant, Duration)>>,
    busy: Mutex<bool>,
    reported: Notify,
}

pub type ProgressSender = tokio::sync::mpsc::Sender<GcProgress>;

fn now_id() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_millis() as u64)
}

impl Gc {
    pub fn new(
        store: Arc<MetaStore>,
        liveness: Arc<Liveness>,
        http: reqwest::Client,
        default_grace: Duration,
    ) -> Self {
        Self {
            store,
            liveness,
            http,
            fence: Arc::new(RwLock::new(())),
            default_grace,
            run: tokio::sync::Mutex::new(None),
            pending: Mutex::new(HashMap::new()),
            busy: Mutex::new(false),
            reported: Notify::new(),
        }
    }

    /// Held shared by a commit from its validation to its record.
    pub fn fence(&self) -> Arc<RwLock<()>> {
        self.fence.clone()
    }

    fn pending(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<NodeId, (Assignment, Instant, Duration)>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The run `node` is to take part in, once (for its heartbeat answer).
    /// Its cutoff age is fixed now, so that nothing stored after the walk
    /// began is older than it when the slave applies it.
    pub fn assignment(&self, node: &NodeId) -> Option<Assignment> {
        let (a, walk_started, grace) = self.pending().remove(node)?;
        let cutoff = grace.max(walk_started.elapsed() + CUTOFF_SLACK);
        Some(Assignment {
            cutoff_ms: cutoff.as_millis() as u64,
            ..a
        })
    }

    async fn all_versions(&self) -> Result<Vec<VersionInfo>, MasterError> {
        store::blocking(&self.store, |s| {
            let mut all = Vec::new();
            for v in s.volumes()? {
                all.extend(s.versions(&v.name)?);
            }
            Ok(all)
        })
        .await
    }

    /// One whole run. Progress goes to `progress` when given.
    pub async fn run(
        &self,
        dry_run: bool,
        grace: Duration,
        progress: Option<ProgressSender>,
    ) -> Result<GcSummary, MasterError> {
        {
            let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
            if *busy {
                return Err(MasterError::GcBusy("another run is under way".into()));
            }
            *busy = true;
        }
        let result = self.run_claimed(dry_run, grace, progress).await;
        self.pending().clear();
        *self.run.lock().await = None;
        *self.busy.lock().unwrap_or_else(|p| p.into_inner()) = false;
        result
    }

    async fn run_claimed(
        &self,
        dry_run: bool,
        grace: Duration,
        progress: Option<ProgressSender>,
    ) -> Result<GcSummary, MasterError> {
        let started = Instant::now();
        let id = now_id();
        let send = |p: GcProgress| {
            if let Some(tx) = &progress {
                let _ = tx.try_send(p);
            }
        };
        let nodes = store::blocking(&self.store, |s| s.nodes()).await?;
        let live_addrs: HashMap<NodeId, String> = nodes
            .iter()
            .filter(|n| self.liveness.is_up(&n.id, Instant::now()))
            .map(|n| (n.id.clone(), n.http_addr.clone()))
            .collect();
        tracing::info!(
            run = id,
            dry_run,
            grace_ms = grace.as_millis() as u64,
            "gc started"
        );
        let mut live = LiveSet::new(crate::gc_walk::reader(
            self.store.clone(),
            self.http.clone(),
            live_addrs.clone(),
        ));
        let versions = self.all_versions().await?;
        let total = versions.len() as u64;
        let mut last = Instant::now();
        for (i, v) in versions.iter().enumerate() {
            if let Err(e) = live.walk(v).await {
                tracing::warn!(run = id, "gc deletes nothing: {e}");
                return Err(e);
            }
            if last.elapsed() >= PROGRESS_EVERY || i + 1 == versions.len() {
                last = Instant::now();
                send(GcProgress {
                    phase: "walk".into(),
                    done: i as u64 + 1,
                    total,
                });
            }
        }
        let asked: Vec<NodeId> = live_addrs.keys().cloned().collect();
        let assignment = Assignment {
            id,
            cutoff_ms: 0,
            dry_run,
        };
        *self.run.lock().await = Some(Run {
            id,
            dry_run,
            live,
            sweep: SweepProgress::new(asked.iter().cloned()),
            aborted: None,
        });
        self.pending().extend(
            asked
                .iter()
                .map(|n| (n.clone(), (assignment, started, grace))),
        );
        let deadline = Instant::now() + SWEEP_TIMEOUT;
        loop {
            let notified = self.reported.notified();
            let (done, total) = match self.run.lock().await.as_ref() {
                Some(r) => (r.sweep.done(), r.sweep.total()),
                None => (0, 0),
            };
            send(GcProgress {
                phase: "sweep".into(),
                done: done as u64,
                total: total as u64,
            });
            if done == total || Instant::now() >= deadline {
                break;
            }
            let _ = tokio::time::timeout(PROGRESS_EVERY, notified).await;
        }
        let run = self.run.lock().await.take();
        let Some(run) = run else {
            return Err(MasterError::Io("gc run state lost".into()));
        };
        let mut summary = GcSummary {
            dry_run,
            grace_ms: grace.as_millis() as u64,
            versions: run.live.versions_walked(),
            live_objects: run.live.objects().len() as u64,
            ..GcSummary::default()
        };
        for (node, report) in run.sweep.reports() {
            match report {
                Some(r) => {
                    summary.candidates += r.candidates;
                    summary.deleted += r.deleted;
                    summary.deleted_bytes += r.deleted_bytes;
                    summary.kept_in_use += r.kept_in_use;
                    match &r.error {
                        Some(e) => summary.nodes_skipped.push(format!("{node}: {e}")),
                        None => summary.nodes_swept.push(node.to_string()),
                    }
                }
                None => summary
                    .nodes_skipped
                    .push(format!("{node}: did not finish in time")),
            }
        }
        for n in &nodes {
            if !run.sweep.expects(&n.id) {
                summary.nodes_skipped.push(format!("{}: down", n.id));
            }
        }
        summary.duration_ms = started.elapsed().as_millis() as u64;
        if let Some(reason) = run.aborted {
            tracing::warn!(run = id, "gc stopped deleting: {reason}");
            return Err(MasterError::GcBusy(format!("stopped deleting: {reason}")));
        }
        tracing::info!(
            run = id,
            deleted = summary.deleted,
            bytes = summary.deleted_bytes,
            live = summary.live_objects,
            skipped = summary.nodes_skipped.len(),
            "gc finished"
        );
        Ok(summary)
    }

    /// A batch offered by `node`: answers the objects to delete (their
    /// locations on `node` already removed), or why nothing is deleted.
    pub async fn offered(
        &self,
        node: &NodeId,
        id: u64,
        objects: Vec<ObjectId>,
    ) -> Result<Result<Vec<ObjectId>, String>, MasterError> {
        let mut guard = self.run.lock().await;
        let Some(run) = guard.as_mut().filter(|r| r.id == id) else {
            return Ok(Err(format!("gc run {id} is not under way")));
        };
        if !run.sweep.expects(node) {
            return Ok(Err(format!("node {node} is not part of gc run {id}")));
        }
        if let Some(reason) = &run.aborted {
            return Ok(Err(reason.clone()));
        }
        let _fence = self.fence.write().await;
        // Versions committed since the walk: their trees are live too.
        for v in self.all_versions().await? {
            if run.live.has_walked(&v) {
                continue;
            }
            if let Err(e) = run.live.walk(&v).await {
                let reason = e.to_string();
                tracing::warn!(run = id, "gc stops deleting: {reason}");
                run.aborted = Some(reason.clone());
                return Ok(Err(reason));
            }
        }
        let delete = deletable(&objects, run.live.objects());
        if !run.dry_run && !delete.is_empty() {
            let (n, d) = (node.clone(), delete.clone());
            store::blocking(&self.store, move |s| s.remove_locations(&n, &d)).await?;
        }
        Ok(Ok(delete))
    }

    /// `node` finished its part of run `id`.
    pub async fn finished(&self, node: &NodeId, id: u64, report: NodeReport) {
        let mut guard = self.run.lock().await;
        if let Some(run) = guard.as_mut().filter(|r| r.id == id) {
            if let Some(e) = &report.error {
                tracing::warn!(run = id, %node, "gc on node failed: {e}");
            }
            run.sweep.finish(node, report);
            self.reported.notify_waiters();
        }
    }

    /// Runs garbage collection every `interval` (never when zero).
    pub async fn run_periodically(self: Arc<Self>, interval: Duration) {
        if interval.is_zero() {
            return;
        }
        let mut tick = tokio::time::interval(interval);
        tick.tick().await; // not at start-up
        loop {
            tick.tick().await;
            match self.run(false, self.default_grace, None).await {
                Ok(s) => tracing::info!(
                    deleted = s.deleted,
                    bytes = s.deleted_bytes,
                    "periodic gc done"
                ),
                Err(e) => tracing::warn!("periodic gc: {e}"),
            }
        }
    }
}
