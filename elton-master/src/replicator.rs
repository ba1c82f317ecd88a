//! Keeps every object at its replication factor (backup copies and repair).
//!
//! Pull model: each round, the replicator looks at a bounded batch of
//! objects (first those just announced, then the next slice of a cursor
//! that walks the whole location table over and over), asks the
//! [`planner`](crate::planner) which live slave should copy what, and puts
//! the answer in that slave's mailbox. The slave collects it with its next
//! heartbeat and fetches each object through the ordinary fetch path, which
//! verifies, stores and announces it; the announcement completes the
//! assignment. A slave that goes down stops counting as a holder, so its
//! objects fall below the factor and are copied again from the survivors.
//! Nothing is ever deleted: a slave that comes back simply counts again.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use elton_proto::{NodeId, ObjectId};

use crate::MasterError;
use crate::nodes::Liveness;
use crate::planner::{self, Inflight, Limits};
use crate::store::MetaStore;

/// Objects read from the location table per round (besides new ones).
const SCAN_BATCH: usize = 20_000;
/// Newly announced objects remembered for the next round; beyond that the
/// cursor finds them later.
const RECENT_CAP: usize = 100_000;
/// Newly announced objects examined per round.
const RECENT_BATCH: usize = 20_000;
const LIMITS: Limits = Limits {
    per_round: 2048,
    per_node: 256,
};
/// An assignment not completed within this time may be handed out again.
const ASSIGNMENT_TTL: Duration = Duration::from_secs(120);
/// A copy reported failed is handed out again after this delay, doubled
/// for each further failure of the same object (up to the TTL).
const RETRY_DELAY: Duration = Duration::from_secs(5);
/// Least time between two "pass finished" progress lines.
const PASS_LOG_EVERY: Duration = Duration::from_secs(30);
/// Shortest and longest pause between rounds.
const MIN_ROUND: Duration = Duration::from_millis(100);
const MAX_ROUND: Duration = Duration::from_secs(1);

pub struct Replicator {
    configured: u32,
    state: Mutex<State>,
}

struct State {
    inflight: Inflight,
    mailbox: HashMap<NodeId, Vec<ObjectId>>,
    recent: VecDeque<ObjectId>,
    recent_set: HashSet<ObjectId>,
    cursor: Option<ObjectId>,
    /// Objects found below the factor since the cursor last wrapped.
    cycle_below: usize,
    cycle_lost: usize,
    /// Whether the last full pass found work, to log "caught up" once.
    behind: bool,
    last_pass_log: Option<Instant>,
    /// The effective factor of the previous round, to log changes.
    factor: Option<usize>,
}

impl Replicator {
    pub fn new(configured: u32) -> Self {
        Self {
            configured,
            state: Mutex::new(State {
                inflight: Inflight::new(ASSIGNMENT_TTL, RETRY_DELAY),
                mailbox: HashMap::new(),
                recent: VecDeque::new(),
                recent_set: HashSet::new(),
                cursor: None,
                cycle_below: 0,
                cycle_lost: 0,
                behind: false,
                last_pass_log: None,
                factor: None,
            }),
        }
    }

    pub fn configured(&self) -> u32 {
        self.configured
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every update leaves the state consistent; a panic cannot break it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `node` announced `objects`: completes assignments and queues the
    /// objects so new ones get their copies without waiting for the cursor.
    pub fn announced(&self, node: &NodeId, objects: &[ObjectId]) {
        let mut st = self.state();
        for o in objects {
            if st.inflight.complete(o, node) {
                // A copy we asked for: it needs no second look.
                tracing::debug!(object = %o, %node, "backup copy made");
                continue;
            }
            if self.configured > 1 && st.recent.len() < RECENT_CAP && st.recent_set.insert(*o) {
                st.recent.push_back(*o);
            }
        }
    }

    /// `node` could not make these copies; they are handed out again after
    /// [`RETRY_DELAY`], longer if they keep failing (the target is chosen
    /// again then).
    pub fn failed(&self, node: &NodeId, objects: &[ObjectId], now: Instant) {
        let mut st = self.state();
        for o in objects {
            if st.inflight.failed(o, node, now) {
                tracing::debug!(object = %o, %node, "backup copy failed; will retry");
            }
        }
    }

    /// The copies `node` should make now (emptied by the call).
    pub fn take_work(&self, node: &NodeId) -> Vec<ObjectId> {
        self.state().mailbox.remove(node).unwrap_or_default()
    }

    /// One planning round against the store; blocking (redb reads).
    pub fn round(
        &self,
        store: &MetaStore,
        live: &BTreeSet<NodeId>,
        now: Instant,
    ) -> Result<(), MasterError> {
        let factor = planner::effective_factor(self.configured, live.len());
        let (recent, cursor) = {
            let mut st = self.state();
            if st.factor != Some(factor) && (st.factor.is_some() || factor > 0) {
                // min(configured, live slaves): normal with few slaves, worth a line.
                tracing::info!(
                    factor,
                    configured = self.configured,
                    live_slaves = live.len(),
                    "effective replication factor changed"
                );
            }
            st.factor = Some(factor);
            let expired = st.inflight.prune(live, now);
            if expired > 0 {
                tracing::info!(
                    expired,
                    "backup copies failed, timed out or lost their target; reassigning"
                );
            }
            st.mailbox.retain(|n, _| live.contains(n));
            let take = st.recent.len().min(RECENT_BATCH);
            let recent: Vec<ObjectId> = st.recent.drain(..take).collect();
            for o in &recent {
                st.recent_set.remove(o);
            }
            (recent, st.cursor)
        };
        if factor <= 1 {
            // One live slave (or none): no copy can be made; the cursor
            // stays put so the next real round starts where it left off.
            return Ok(());
        }
        let (scanned, next) = store.scan_holdings(cursor.as_ref(), SCAN_BATCH)?;
        let fresh = store.holdings(&recent)?;

        let mut st = self.state();
        // New objects first; then the cursor's slice, planned against the
        // first part's assignments so nothing is assigned twice.
        let first = planner::plan(&fresh, live, factor, &st.inflight, LIMITS);
        Self::record(&mut st, &first, now);
        if let Some(i) = first.stopped_at {
            for h in fresh[i..].iter().rev() {
                if st.recent_set.insert(h.object) {
                    st.recent.push_front(h.object);
                }
            }
        }
        let limits = Limits {
            per_round: LIMITS.per_round - first.assignments.len(),
            ..LIMITS
        };
        let second = planner::plan(&scanned, live, factor, &st.inflight, limits);
        Self::record(&mut st, &second, now);
        // Resume right before the first object left over, else move on.
        let next = match second.stopped_at {
            Some(0) => cursor,
            Some(i) => Some(scanned[i - 1].object),
            None => next,
        };
        let pass_done = second.stopped_at.is_none() && next.is_none();
        let assigned = first.assignments.len() + second.assignments.len();
        if assigned > 0 {
            tracing::info!(
                assigned,
                below_factor = first.below + second.below,
                budget_spent = first.stopped_at.or(second.stopped_at).is_some(),
                in_flight = st.inflight.len(),
                factor,
                "replication round"
            );
        }
        if first.unplaceable + second.unplaceable > 0 {
            tracing::warn!(
                copies = first.unplaceable + second.unplaceable,
                "copies with no slave to go to"
            );
        }
        for o in first.lost.iter().chain(&second.lost) {
            tracing::debug!(object = %o, "no live holder: cannot be copied until a holder returns");
        }
        // New objects are seen again by the cursor: count the pass only.
        st.cycle_below += second.below;
        st.cycle_lost += second.lost.len();
        st.cursor = next;
        if pass_done {
            // The cursor wrapped: one full pass over every object is done.
            let (below, lost) = (st.cycle_below, st.cycle_lost);
            let quiet = st
                .last_pass_log
                .is_some_and(|t| now.saturating_duration_since(t) < PASS_LOG_EVERY);
            if below > 0 {
                if !quiet {
                    tracing::info!(
                        below_factor = below,
                        lost,
                        factor,
                        in_flight = st.inflight.len(),
                        "replication pass finished"
                    );
                    st.last_pass_log = Some(now);
                }
                st.behind = true;
            } else if st.behind && st.inflight.is_empty() {
                tracing::info!(factor, "replication caught up: every object has its copies");
                st.behind = false;
                st.last_pass_log = None;
            }
            st.cycle_below = 0;
            st.cycle_lost = 0;
        }
        Ok(())
    }

    /// Copies asked for outside the rounds (a node being decommissioned):
    /// each object not already in flight goes to its target's mailbox.
    /// Returns how many were newly assigned.
    pub fn copy_now(&self, copies: &[(ObjectId, NodeId)], now: Instant) -> usize {
        let mut st = self.state();
        let mut n = 0;
        for (object, target) in copies {
            if st.inflight.targets(object).next().is_some() {
                continue;
            }
            st.inflight.add(*object, target.clone(), now);
            st.mailbox.entry(target.clone()).or_default().push(*object);
            n += 1;
        }
        n
    }

    /// Puts a round's assignments in flight and in the targets' mailboxes.
    fn record(st: &mut State, round: &planner::Round, now: Instant) {
        for a in &round.assignments {
            st.inflight.add(a.object, a.target.clone(), now);
            st.mailbox
                .entry(a.target.clone())
                .or_default()
                .push(a.object);
            tracing::debug!(object = %a.object, target = %a.target, source = %a.source, "backup copy assigned");
        }
    }

    /// Runs rounds forever, paced by the heartbeat interval so new work is
    /// ready by the next heartbeat.
    pub async fn run(
        self: Arc<Self>,
        store: Arc<MetaStore>,
        liveness: Arc<Liveness>,
        heartbeat: Duration,
    ) {
        let mut tick = tokio::time::interval(heartbeat.clamp(MIN_ROUND, MAX_ROUND));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let this = self.clone();
            let liveness = liveness.clone();
            let result = crate::store::blocking(&store, move |store| {
                let now = Instant::now();
                let live: BTreeSet<NodeId> = store
                    .nodes()?
                    .into_iter()
                    .map(|n| n.id)
                    .filter(|id| liveness.is_up(id, now))
                    .collect();
                this.round(store, &live, now)
            })
            .await;
            if let Err(e) = result {
                tracing::warn!("replication round: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_objects_are_assigned_once_and_completed_by_announcement() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetaStore::open(&dir.path().join("m.redb")).unwrap();
        let (s1, s2): (NodeId, NodeId) = ("s1".parse().unwrap(), "s2".parse().unwrap());
        let live: BTreeSet<NodeId> = [s1.clone(), s2.clone()].into();
        let r = Replicator::new(2);
        let o = ObjectId::of(b"o");
        store.add_locations(&s1, &[o]).unwrap();
        r.announced(&s1, &[o]);
        let t0 = Instant::now();
        r.round(&store, &live, t0).unwrap();
        assert!(r.take_work(&s1).is_empty());
        assert_eq!(r.take_work(&s2), vec![o]);
        r.round(&store, &live, t0).unwrap();
        assert!(
            r.take_work(&s2).is_empty(),
            "in flight: not handed out twice"
        );

        store.add_locations(&s2, &[o]).unwrap();
        r.announced(&s2, &[o]);
        r.round(&store, &live, t0 + ASSIGNMENT_TTL).unwrap();
        assert!(r.take_work(&s2).is_empty(), "factor met");
    }

    #[test]
    fn a_failed_copy_is_handed_out_again_after_the_retry_delay() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetaStore::open(&dir.path().join("m.redb")).unwrap();
        let (s1, s2): (NodeId, NodeId) = ("s1".parse().unwrap(), "s2".parse().unwrap());
        let live: BTreeSet<NodeId> = [s1.clone(), s2.clone()].into();
        let r = Replicator::new(2);
        let o = ObjectId::of(b"o");
        store.add_locations(&s1, &[o]).unwrap();
        let t0 = Instant::now();
        r.round(&store, &live, t0).unwrap();
        assert_eq!(r.take_work(&s2), vec![o], "found by the cursor");
        r.failed(&s2, &[o], t0);
        r.round(&store, &live, t0 + RETRY_DELAY / 2).unwrap();
        assert!(r.take_work(&s2).is_empty(), "not in a tight loop");
        r.round(&store, &live, t0 + RETRY_DELAY).unwrap();
        assert_eq!(r.take_work(&s2), vec![o]);
    }

    #[test]
    fn work_for_a_slave_that_went_down_goes_to_another() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetaStore::open(&dir.path().join("m.redb")).unwrap();
        let [s1, s2, s3]: [NodeId; 3] = ["s1", "s2", "s3"].map(|s| s.parse().unwrap());
        let o = ObjectId::of(b"o");
        store.add_locations(&s1, &[o]).unwrap();
        let r = Replicator::new(2);
        let t0 = Instant::now();
        r.round(&store, &[s1.clone(), s2.clone(), s3.clone()].into(), t0)
            .unwrap();
        let (first, other) = if r.take_work(&s2).is_empty() {
            (s3.clone(), s2.clone())
        } else {
            (s2.clone(), s3.clone())
        };
        r.round(&store, &[s1.clone(), other.clone()].into(), t0)
            .unwrap();
        assert_eq!(r.take_work(&other), vec![o]);
        assert!(r.take_work(&first).is_empty());
    }

    #[test]
    fn a_long_backlog_resumes_where_the_limits_stopped_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetaStore::open(&dir.path().join("m.redb")).unwrap();
        let (s1, s2): (NodeId, NodeId) = ("s1".parse().unwrap(), "s2".parse().unwrap());
        let live: BTreeSet<NodeId> = [s1.clone(), s2.clone()].into();
        let ids: Vec<ObjectId> = (0..600u32)
            .map(|i| ObjectId::of(&i.to_le_bytes()))
            .collect();
        store.add_locations(&s1, &ids).unwrap();
        let r = Replicator::new(2);
        let t0 = Instant::now();
        let mut copied = BTreeSet::new();
        for round in 0..3 {
            r.round(&store, &live, t0).unwrap();
            let work = r.take_work(&s2);
            assert_eq!(
                work.len(),
                (600 - copied.len()).min(LIMITS.per_node),
                "round {round}"
            );
            for o in &work {
                assert!(copied.insert(*o), "{o} assigned twice");
            }
            store.add_locations(&s2, &work).unwrap();
            r.announced(&s2, &work);
        }
        assert_eq!(copied.len(), 600, "no object skipped");
        r.round(&store, &live, t0).unwrap();
        assert!(r.take_work(&s2).is_empty());
    }

    #[test]
    fn one_live_slave_plans_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetaStore::open(&dir.path().join("m.redb")).unwrap();
        let s1: NodeId = "s1".parse().unwrap();
        let o = ObjectId::of(b"o");
        store.add_locations(&s1, &[o]).unwrap();
        let r = Replicator::new(2);
        r.round(&store, &[s1.clone()].into(), Instant::now())
            .unwrap();
        assert!(r.take_work(&s1).is_empty());
    }
}
