//! Reads of the applied state for the service edge: local (possibly stale)
//! reads, progress watching, and execution results.

use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};

use tokio::sync::watch;
use tokio::time::Instant;

use crate::command::ExecutionResult;
use crate::execution::{self, Execution};
use crate::state::{Epochs, State};
use crate::types::{LogId, NodeId, StoredMembership};

/// A cloneable read handle on the applied state. Reads are local: they see
/// what this member has applied, which may lag the leader; a linearizable
/// read goes through the log (`Command::Get`).
#[derive(Clone)]
pub struct StateReader {
    state: Arc<RwLock<State>>,
    applied: watch::Receiver<Option<LogId>>,
    epochs: watch::Receiver<Epochs>,
}

impl StateReader {
    pub(crate) fn new(
        state: Arc<RwLock<State>>,
        applied: watch::Receiver<Option<LogId>>,
        epochs: watch::Receiver<Epochs>,
    ) -> Self {
        Self {
            state,
            applied,
            epochs,
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        // The writer holds the lock only around pure code and a commit; a
        // panic there leaves a state that is still whole entries applied.
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn applied(&self) -> Option<LogId> {
        self.read().last_applied
    }

    /// Changes whenever a batch is applied or a snapshot installed.
    pub fn watch_applied(&self) -> watch::Receiver<Option<LogId>> {
        self.applied.clone()
    }

    /// Changes when drcond's limits or the executions change (or a
    /// snapshot is installed), not on every applied write: what a host's
    /// loops wait on.
    pub fn watch_epochs(&self) -> watch::Receiver<Epochs> {
        self.epochs.clone()
    }

    /// Waits until at least `index` is applied, or `deadline`. Returns
    /// whether it was.
    pub async fn wait_applied(&self, index: u64, deadline: Instant) -> bool {
        let mut rx = self.applied.clone();
        let reached = |l: &Option<LogId>| l.is_some_and(|l| l.index >= index);
        matches!(
            tokio::time::timeout_at(deadline, rx.wait_for(reached)).await,
            Ok(Ok(_))
        )
    }

    pub fn get(&self, key: &str) -> Option<String> {
        self.read().kv.get(key).cloned()
    }

    pub fn membership(&self) -> StoredMembership {
        self.read().membership.clone()
    }

    pub fn execution(&self, exec: u64) -> Option<Execution> {
        self.read().executions.get(&exec).cloned()
    }

    /// Executions `node` must still run and report, oldest first.
    pub fn owed_executions(&self, node: NodeId) -> Vec<Execution> {
        self.read()
            .executions
            .values()
            .filter(|e| execution::owes_answer(e, node))
            .cloned()
            .collect()
    }

    /// Waits for execution `exec`'s answers until all targets reported or
    /// `deadline`, then returns what was collected. `None` if this member
    /// has no such execution (not applied here yet, or forgotten).
    pub async fn wait_result(&self, exec: u64, deadline: Instant) -> Option<ExecutionResult> {
        let mut rx = self.applied.clone();
        loop {
            let passed = Instant::now() >= deadline;
            let e = self.execution(exec)?;
            if let Some(result) = execution::collect(&e, passed) {
                return Some(result);
            }
            // Wakes on the next apply; at the deadline the loop collects
            // what is there.
            let _ = tokio::time::timeout_at(deadline, rx.changed()).await;
        }
    }

    /// drcond's limits in force, by id.
    pub fn limits(&self) -> std::collections::BTreeMap<u64, crate::drcond::Limit> {
        self.read().limits.clone()
    }

    /// FastContainer's apps, by name.
    pub fn apps(&self) -> std::collections::BTreeMap<String, crate::apps::App> {
        self.read().apps.clone()
    }

    /// FastContainer's apps and fleet, as of one applied index.
    pub fn app_view(&self) -> crate::apps::fleet::AppView {
        let s = self.read();
        crate::apps::fleet::AppView {
            apps: s.apps.values().cloned().collect(),
            fleet: s.fleet.clone(),
            applied: s.last_applied.map_or(0, |l| l.index),
        }
    }

    /// Client requests applied with effect (retries excluded).
    pub fn applied_requests(&self) -> u64 {
        self.read().applied_requests
    }

    /// Hash of the agreed content; equal on members at the same applied
    /// index.
    pub fn digest(&self) -> String {
        self.read().digest()
    }

    /// A copy of the whole state (tests, status dumps).
    pub fn snapshot(&self) -> State {
        self.read().clone()
    }
}
