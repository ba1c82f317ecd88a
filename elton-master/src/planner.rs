//! Backup-copy planning: which live slave should copy which object.
//!
//! Pure: no store, no clock, no network. The caller ([`crate::replicator`])
//! gathers the holders of a batch of objects, the set of live slaves and the
//! copies already in flight, and turns the returned assignments into work
//! handed out with heartbeats.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use elton_proto::{NodeId, ObjectId};

/// The factor the planner aims for: a cluster cannot keep more copies than
/// it has live slaves.
pub fn effective_factor(configured: u32, live_slaves: usize) -> usize {
    (configured as usize).min(live_slaves)
}

/// One object and every node registered as holding it (live or not).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holding {
    pub object: ObjectId,
    pub holders: Vec<NodeId>,
}

/// `target` should fetch `object`; `source` is a live holder it can come
/// from (the master's fetch proxy picks the actual one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    pub object: ObjectId,
    pub target: NodeId,
    pub source: NodeId,
}

/// How much work one round may create.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// New assignments per round.
    pub per_round: usize,
    /// Copies in flight per target node (old and new together).
    pub per_node: usize,
}

/// What one round decided, with counts for progress logs.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Round {
    pub assignments: Vec<Assignment>,
    /// Objects with fewer live holders than the factor (lost ones included).
    pub below: usize,
    /// Objects without any live holder: nothing to copy from.
    pub lost: Vec<ObjectId>,
    /// Index of the first object left for a later round: the round's budget
    /// ran out, or every node that could take a copy is at its limit. The
    /// objects from there on are not counted above (copies already assigned
    /// to that first object stand).
    pub stopped_at: Option<usize>,
    /// Copies that no live node could ever take (fewer live nodes than the
    /// factor); skipped, not retried by stopping.
    pub unplaceable: usize,
}

/// Objects whose failure count is remembered (for back-off); beyond that
/// the counts are forgotten, which only makes some retries come sooner.
const FAILURE_MEMORY: usize = 65_536;

/// Copies being made: object → (target, deadline). An assignment counts
/// until the target announces the object, its deadline passes, or the
/// target goes down; then the object may be assigned again.
#[derive(Debug)]
pub struct Inflight {
    ttl: Duration,
    /// First wait after a reported failure; doubles with each further one.
    retry: Duration,
    by_object: HashMap<ObjectId, Vec<(NodeId, Instant)>>,
    /// Failed copies per object since its last successful copy.
    failures: HashMap<ObjectId, u32>,
}

impl Inflight {
    pub fn new(ttl: Duration, retry: Duration) -> Self {
        Self {
            ttl,
            retry,
            by_object: HashMap::new(),
            failures: HashMap::new(),
        }
    }

    pub fn add(&mut self, object: ObjectId, target: NodeId, now: Instant) {
        self.by_object
            .entry(object)
            .or_default()
            .push((target, now + self.ttl));
    }

    /// The target announced the object; true if it was an assignment.
    pub fn complete(&mut self, object: &ObjectId, node: &NodeId) -> bool {
        let Some(targets) = self.by_object.get_mut(object) else {
            return false;
        };
        let before = targets.len();
        targets.retain(|(t, _)| t != node);
        let done = targets.len() != before;
        if targets.is_empty() {
            self.by_object.remove(object);
        }
        if done {
            self.failures.remove(object);
        }
        done
    }

    /// The target reported that its copy failed: the assignment stays (so
    /// the object is not handed out again at once) for the retry delay,
    /// doubled for each earlier failure of the object and capped at the
    /// assignment's lifetime, so a copy that cannot succeed is not retried
    /// in a tight loop.
    pub fn failed(&mut self, object: &ObjectId, node: &NodeId, now: Instant) -> bool {
        let Some(targets) = self.by_object.get_mut(object) else {
            return false;
        };
        if !targets.iter().any(|(t, _)| t == node) {
            return false;
        }
        if self.failures.len() >= FAILURE_MEMORY {
            self.failures.clear();
        }
        let count = self.failures.entry(*object).or_default();
        let wait = self
            .retry
            .saturating_mul(1u32 << (*count).min(16))
            .min(self.ttl);
        *count += 1;
        for (t, deadline) in targets.iter_mut() {
            if t == node {
                *deadline = (now + wait).min(*deadline);
            }
        }
        true
    }

    /// Forgets assignments past their deadline or to nodes no longer live;
    /// returns how many were dropped.
    pub fn prune(&mut self, live: &BTreeSet<NodeId>, now: Instant) -> usize {
        let mut dropped = 0;
        self.by_object.retain(|_, targets| {
            let before = targets.len();
            targets.retain(|(t, deadline)| now < *deadline && live.contains(t));
            dropped += before - targets.len();
            !targets.is_empty()
        });
        dropped
    }

    pub fn targets(&self, object: &ObjectId) -> impl Iterator<Item = &NodeId> {
        self.by_object
            .get(object)
            .into_iter()
            .flat_map(|v| v.iter().map(|(t, _)| t))
    }

    /// Copies in flight per target node.
    pub fn loads(&self) -> HashMap<NodeId, usize> {
        let mut out = HashMap::new();
        for (t, _) in self.by_object.values().flatten() {
            *out.entry(t.clone()).or_default() += 1;
        }
        out
    }

    pub fn len(&self) -> usize {
        self.by_object.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.by_object.is_empty()
    }
}

/// Rendezvous score: spreads the copies of different objects over the
/// candidates while staying deterministic.
fn score(object: &ObjectId, node: &NodeId) -> [u8; 32] {
    let mut key = object.as_bytes().to_vec();
    key.extend_from_slice(node.as_str().as_bytes());
    *ObjectId::of(&key).as_bytes()
}

/// Decides the copies to make for `objects`. Each object should have
/// `factor` live holders; copies in flight (`inflight`, already pruned by
/// the caller) count as made. A target is a live node that does not hold
/// the object (a down holder keeps its data but is not counted), with the
/// fewest copies in flight, then the best rendezvous score.
///
/// Objects are examined in order; planning stops at the first object that
/// cannot get all its copies because of the limits (see
/// [`Round::stopped_at`]), so a caller walking the objects in order can
/// resume there instead of skipping work.
pub fn plan(
    objects: &[Holding],
    live: &BTreeSet<NodeId>,
    factor: usize,
    inflight: &Inflight,
    limits: Limits,
) -> Round {
    let mut round = Round::default();
    let mut loads = inflight.loads();
    for (i, h) in objects.iter().enumerate() {
        let live_holders: Vec<&NodeId> = h.holders.iter().filter(|n| live.contains(n)).collect();
        if live_holders.len() >= factor {
            continue;
        }
        round.below += 1;
        let Some(source) = live_holders.first() else {
            round.lost.push(h.object);
            continue;
        };
        let mut taken: Vec<&NodeId> = inflight.targets(&h.object).collect();
        let mut need = factor.saturating_sub(live_holders.len() + taken.len());
        while need > 0 {
            let mut candidates = live
                .iter()
                .filter(|n| !h.holders.contains(n) && !taken.contains(n))
                .peekable();
            if candidates.peek().is_none() {
                round.unplaceable += need;
                break;
            }
            let target = candidates
                .filter(|n| loads.get(*n).copied().unwrap_or(0) < limits.per_node)
                .min_by_key(|n| (loads.get(*n).copied().unwrap_or(0), score(&h.object, n)));
            let (Some(target), true) = (target, round.assignments.len() < limits.per_round) else {
                // Left for later, so not counted now (it will be then).
                round.below -= 1;
                round.stopped_at = Some(i);
                return round;
            };
            *loads.entry(target.clone()).or_default() += 1;
            taken.push(target);
            round.assignments.push(Assignment {
                object: h.object,
                target: target.clone(),
                source: (*source).clone(),
            });
            need -= 1;
        }
    }
    round
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> NodeId {
        s.parse().unwrap()
    }

    fn live(names: &[&str]) -> BTreeSet<NodeId> {
        names.iter().map(|s| n(s)).collect()
    }

    fn holding(seed: &str, holders: &[&str]) -> Holding {
        Holding {
            object: ObjectId::of(seed.as_bytes()),
            holders: holders.iter().map(|s| n(s)).collect(),
        }
    }

    const WIDE: Limits = Limits {
        per_round: 1000,
        per_node: 1000,
    };

    #[test]
    fn effective_factor_is_capped_by_live_slaves() {
        assert_eq!(effective_factor(2, 1), 1);
        assert_eq!(effective_factor(2, 5), 2);
        assert_eq!(effective_factor(3, 0), 0);
    }

    #[test]
    fn new_object_gets_a_copy_on_another_live_node() {
        let objects = [holding("a", &["s1"])];
        let inflight = Inflight::new(Duration::from_secs(60), Duration::from_secs(5));
        let r = plan(&objects, &live(&["s1", "s2"]), 2, &inflight, WIDE);
        assert_eq!(
            r.assignments,
            vec![Assignment {
                object: objects[0].object,
                target: n("s2"),
                source: n("s1"),
            }]
        );
        assert_eq!((r.below, r.stopped_at, r.unplaceable), (1, None, 0));
        assert!(r.lost.is_empty());
    }

    #[test]
    fn objects_at_factor_need_nothing() {
        let objects = [
            holding("a", &["s1", "s2"]),
            holding("b", &["s1", "s2", "s3"]),
        ];
        let inflight = Inflight::new(Duration::from_secs(60), Duration::from_secs(5));
        let r = plan(&objects, &live(&["s1", "s2", "s3"]), 2, &inflight, WIDE);
        assert_eq!(r, Round::default());
    }

    #[test]
    fn down_holders_do_not_count_and_are_not_targets() {
        // s1 holds it but is down: s2 is the only live copy, so s3 copies.
        let objects = [holding("a", &["s1", "s2"])];
        let inflight = Inflight::new(Duration::from_secs(60), Duration::from_secs(5));
        let r = plan(&objects, &live(&["s2", "s3"]), 2, &inflight, WIDE);
        assert_eq!(r.assignments.len(), 1);
        assert_eq!(r.assignments[0].target, n("s3"));
        assert_eq!(r.assignments[0].source, n("s2"));
        // The down holder comes back: the factor is met again, no extra copy.
        let r = plan(&objects, &live(&["s1", "s2", "s3"]), 2, &inflight, WIDE);
        assert!(r.assignments.is_empty());
        assert_eq!(r.below, 0);
    }

    #[test]
    fn objects_without_live_holder_are_lost_not_assigned() {
        let objects = [holding("a", &["s1"])];
        let inflight = Inflight::new(Duration::from_secs(60), Duration::from_secs(5));
        let r = plan(&objects, &live(&["s2", "s3"]), 2, &inflight, WIDE);
        assert!(r.assignments.is_empty());
        assert_eq!(r.lost, vec![objects[0].object]);
        assert_eq!(r.below, 1);
    }

    #[test]
    fn copies_in_flight_are_not_assigned_twice_until_they_expire() {
        let t0 = Instant::now();
        let objects = [holding("a", &["s1"])];
        let nodes = live(&["s1", "s2", "s3"]);
        let mut inflight = Inflight::new(Duration::from_secs(60), Duration::from_secs(5));
        let r = plan(&objects, &nodes, 2, &inflight, WIDE);
        assert_eq!(r.assignments.len(), 1);
        let first = r.assignments[0].target.clone();
        inflight.add(objects[0].object, first.clone(), t0);

        assert_eq!(inflight.prune(&nodes, t0 + Duration::from_secs(59)), 0);
        let r = plan(&objects, &nodes, 2, &inflight, WIDE);
        assert!(r.assignments.is_empty(), "one copy in flight is enough");
        assert_eq!(r.below, 1, "still below until announced");

        assert_eq!(inflight.prune(&nodes, t0 + Duration::from_secs(60)), 1);
        let r = plan(&objects, &nodes, 2, &inflight, WIDE);
        assert_eq!(r.assignments.len(), 1, "expired: assigned again");
    }

    #[test]
    fn a_target_going_down_frees_its_assignment() {
        let t0 = Instant::now();
        let a = holding("a", &["s1"]);
        let mut inflight = Inflight::new(Duration::from_secs(60), Duration::from_secs(5));
        inflight.add(a.object, n("s2"), t0);
        assert_eq!(inflight.prune(&live(&["s1", "s3"]), t0), 1);
        let r = plan(&[a], &live(&["s1", "s3"]), 2, &inflight, WIDE);
        assert_eq!(r.assignments[0].target, n("s3"));
    }

    #[test]
    fn a_reported_failure_shortens_the_wait_and_repeated_ones_back_off() {
        let secs = Duration::from_secs;
        let t0 = Instant::now();
        let a = holding("a", &["s1"]);
        let nodes = live(&["s1", "s2"]);
        let mut inflight = Inflight::new(secs(120), secs(5));
        inflight.add(a.object, n("s2"), t0);
        assert!(!inflight.failed(&a.object, &n("s9"), t0), "not its target");
        assert!(inflight.failed(&a.object, &n("s2"), t0));
        assert_eq!(inflight.prune(&nodes, t0 + secs(4)), 0);
        let r = plan(std::slice::from_ref(&a), &nodes, 2, &inflight, WIDE);
        assert!(r.assignments.is_empty(), "not before the retry delay");
        assert_eq!(inflight.prune(&nodes, t0 + secs(5)), 1);
        let r = plan(std::slice::from_ref(&a), &nodes, 2, &inflight, WIDE);
        assert_eq!(r.assignments.len(), 1);

        // Second failure: twice the wait; then capped at the lifetime.
        let t1 = t0 + secs(5);
        inflight.add(a.object, n("s2"), t1);
        assert!(inflight.failed(&a.object, &n("s2"), t1));
        assert_eq!(inflight.prune(&nodes, t1 + secs(9)), 0);
        assert_eq!(inflight.prune(&nodes, t1 + secs(10)), 1);
        for _ in 0..10 {
            inflight.add(a.object, n("s2"), t1);
            inflight.failed(&a.object, &n("s2"), t1);
            inflight.prune(&nodes, t1 + secs(120));
        }
        inflight.add(a.object, n("s2"), t1);
        inflight.failed(&a.object, &n("s2"), t1);
        assert_eq!(inflight.prune(&nodes, t1 + secs(119)), 0, "capped at 120 s");

        // A success resets the count.
        assert!(inflight.complete(&a.object, &n("s2")));
        inflight.add(a.object, n("s2"), t1);
        inflight.failed(&a.object, &n("s2"), t1);
        assert_eq!(inflight.prune(&nodes, t1 + secs(5)), 1);
    }

    #[test]
    fn completion_clears_only_that_target() {
        let t0 = Instant::now();
        let a = ObjectId::of(b"a");
        let mut inflight = Inflight::new(Duration::from_secs(60), Duration::from_secs(5));
        inflight.add(a, n("s2"), t0);
        inflight.add(a, n("s3"), t0);
        assert!(!inflight.complete(&a, &n("s9")));
        assert!(inflight.complete(&a, &n("s2")));
        assert_eq!(inflight.targets(&a).collect::<Vec<_>>(), vec![&n("s3")]);
        assert!(inflight.complete(&a, &n("s3")));
        assert!(inflight.is_empty());
    }

    #[test]
    fn higher_factor_uses_distinct_targets() {
        let objects = [holding("a", &["s1"])];
        let inflight = Inflight::new(Duration::from_secs(60), Duration::from_secs(5));
        let r = plan(
            &objects,
            &live(&["s1", "s2", "s3", "s4"]),
            3,
            &inflight,
            WIDE,
        );
        let mut targets: Vec<_> = r.assignments.iter().map(|a| a.target.clone()).collect();
        targets.sort();
        targets.dedup();
        assert_eq!(targets.len(), 2);
        assert!(!targets.contains(&n("s1")));
    }

    #[test]
    fn work_is_bounded_per_round_and_per_node_and_spread() {
        let objects: Vec<_> = (0..100)
            .map(|i| holding(&format!("o{i}"), &["s1"]))
            .collect();
        let nodes = live(&["s1", "s2", "s3"]);
        let inflight = Inflight::new(Duration::from_secs(60), Duration::from_secs(5));
        let r = plan(
            &objects,
            &nodes,
            2,
            &inflight,
            Limits {
                per_round: 30,
                per_node: 1000,
            },
        );
        assert_eq!(r.assignments.len(), 30);
        assert_eq!(r.stopped_at, Some(30), "resume at the first object left");
        assert_eq!(r.below, 30, "objects from the stop on are not counted");
        let on_s2 = r.assignments.iter().filter(|a| a.target == n("s2")).count();
        assert_eq!(on_s2, 15, "least-loaded first spreads evenly");
        let rest = plan(
            &objects[30..],
            &nodes,
            2,
            &inflight,
            Limits {
                per_round: 1000,
                per_node: 1000,
            },
        );
        assert_eq!(rest.assignments.len(), 70);
        assert_eq!(rest.stopped_at, None);

        let r = plan(
            &objects,
            &nodes,
            2,
            &inflight,
            Limits {
                per_round: 1000,
                per_node: 10,
            },
        );
        assert_eq!(r.assignments.len(), 20, "both targets full");
        assert_eq!(r.stopped_at, Some(20));
    }

    #[test]
    fn a_factor_the_cluster_cannot_reach_skips_instead_of_stopping() {
        // Caller passes the configured factor without capping: only one
        // other node exists, so one copy is made, one cannot be placed, and
        // planning goes on with the next object.
        let objects = [holding("a", &["s1"]), holding("b", &["s2"])];
        let inflight = Inflight::new(Duration::from_secs(60), Duration::from_secs(5));
        let r = plan(&objects, &live(&["s1", "s2"]), 3, &inflight, WIDE);
        assert_eq!(r.assignments.len(), 2);
        assert_eq!(r.unplaceable, 2);
        assert_eq!(r.stopped_at, None);
    }
}
