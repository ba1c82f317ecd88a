//! How well each node's recorded locations hold up, and when to ask a node
//! to re-announce its whole inventory (a *resync*).
//!
//! Locations are soft state announced by slaves; the master learns that one
//! is wrong only when a read fails. Each failure is counted against the
//! node: a 404 for an object it was recorded to hold (a *stale* location,
//! removed at once) or a read that failed otherwise (no answer, an error, a
//! missed deadline). Once a node collects [`RESYNC_AFTER_FAILURES`] of them
//! since its last resync, or an operator asks (`ResyncNode`), its next
//! heartbeat answer asks for a resync; when the node's final resync batch
//! arrives, the store forgets every location of that node that was not
//! announced since the resync began (mark and sweep, see
//! [`crate::store::MetaStore::sweep_node`]). So a wrong location set is
//! corrected by the node itself, not by a master restart.
//!
//! Counters are memory only: they restart at zero with the master, like
//! liveness. Pure bookkeeping: callers pass `now`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use elton_proto::NodeId;

/// Failed reads (stale or otherwise) since a node's last resync after which
/// the master asks it to resync. Low enough that a node whose inventory
/// went wrong (a restored or wiped disk) is corrected after a handful of
/// reads, high enough that a flaky link does not cause a resync per read.
pub const RESYNC_AFTER_FAILURES: u64 = 16;
/// A resync not finished within this time is given up: the node may have
/// restarted or lost its link. Another may then be asked for. A slave
/// announces 8192 ids per call, so this covers tens of millions of objects.
pub const RESYNC_TIMEOUT: Duration = Duration::from_secs(600);

/// A Prometheus counter of [`Counters`]: name, help text, value.
type Metric = (&'static str, &'static str, fn(&Counters) -> u64);

/// One node's counters, as reported in `NodeInfo` and `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub stale_locations: u64,
    pub failed_transfers: u64,
    pub resyncs: u64,
}

#[derive(Debug, Default)]
struct State {
    totals: Counters,
    since_resync: u64,
    /// An operator asked for a resync that has not started yet.
    requested: bool,
    /// The resync under way: its id (0 while the id is being issued) and
    /// when it was handed out.
    pending: Option<(u64, Instant)>,
}

pub struct NodeHealth {
    threshold: u64,
    timeout: Duration,
    nodes: Mutex<HashMap<NodeId, State>>,
}

impl Default for NodeHealth {
    fn default() -> Self {
        Self::new(RESYNC_AFTER_FAILURES, RESYNC_TIMEOUT)
    }
}

impl NodeHealth {
    pub fn new(threshold: u64, timeout: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            timeout,
            nodes: Mutex::default(),
        }
    }

    fn with<T>(&self, node: &NodeId, f: impl FnOnce(&mut State) -> T) -> T {
        // Plain counters: a panic while holding the lock leaves them usable.
        let mut map = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        f(map.entry(node.clone()).or_default())
    }

    /// A read found the object missing on `node`; its location was removed.
    pub fn stale(&self, node: &NodeId) {
        self.with(node, |s| {
            s.totals.stale_locations += 1;
            s.since_resync += 1;
        });
    }

    /// A read from `node` failed (no answer, error, missed deadline).
    pub fn failed(&self, node: &NodeId) {
        self.with(node, |s| {
            s.totals.failed_transfers += 1;
            s.since_resync += 1;
        });
    }

    /// Reads `node`'s state without creating a record for it, so lookups
    /// (every fetch, every `ListNodes`) add no entries to `/metrics`.
    fn read<T: Default>(&self, node: &NodeId, f: impl FnOnce(&State) -> T) -> T {
        let map = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        map.get(node).map(f).unwrap_or_default()
    }

    /// Failures since the node's last resync; fetches try such nodes last.
    pub fn recent_failures(&self, node: &NodeId) -> u64 {
        self.read(node, |s| s.since_resync)
    }

    pub fn counters(&self, node: &NodeId) -> Counters {
        self.read(node, |s| s.totals)
    }

    /// Every node with a record, in id order (for `/metrics`).
    pub fn snapshot(&self) -> BTreeMap<NodeId, Counters> {
        let map = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|(k, v)| (k.clone(), v.totals)).collect()
    }

    /// Prometheus text exposition (format 0.0.4) of every node's counters.
    /// Node ids need no escaping: they are `[A-Za-z0-9._-]` only.
    pub fn prometheus(&self) -> String {
        let snap = self.snapshot();
        let mut out = String::new();
        let metrics: [Metric; 3] = [
            (
                "elton_master_node_stale_locations_total",
                "Reads from a node answered 404 for an object it was recorded to hold.",
                |c| c.stale_locations,
            ),
            (
                "elton_master_node_failed_transfers_total",
                "Reads from a node that failed: no answer, error, or a missed deadline.",
                |c| c.failed_transfers,
            ),
            (
                "elton_master_node_resyncs_total",
                "Inventory resyncs a node completed.",
                |c| c.resyncs,
            ),
        ];
        for (name, help, value) in metrics {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n"));
            for (node, c) in &snap {
                out.push_str(&format!("{name}{{node=\"{node}\"}} {}\n", value(c)));
            }
        }
        out
    }

    /// An operator asks for a resync of `node` (at its next heartbeat).
    pub fn request(&self, node: &NodeId) {
        self.with(node, |s| s.requested = true);
    }

    /// Whether `node` should be asked to resync now; if so, the resync is
    /// claimed (no second one is handed out) until [`Self::started`] gives
    /// it an id, [`Self::abandon`] drops it, or it times out.
    pub fn claim(&self, node: &NodeId, now: Instant) -> bool {
        let mut map = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        // Asked at every heartbeat: a node without a record has nothing due.
        map.get_mut(node).is_some_and(|s| {
            if let Some((_, since)) = s.pending
                && now.saturating_duration_since(since) < self.timeout
            {
                return false;
            }
            if !(s.requested || s.since_resync >= self.threshold) {
                s.pending = None;
                return false;
            }
            s.pending = Some((0, now));
            // A request made from now on needs another resync after this one.
            s.requested = false;
            true
        })
    }

    /// The claimed resync of `node` got its id.
    pub fn started(&self, node: &NodeId, id: u64, now: Instant) {
        self.with(node, |s| s.pending = Some((id, now)));
    }

    /// The claimed resync could not be issued; try again at a later beat.
    pub fn abandon(&self, node: &NodeId) {
        self.with(node, |s| {
            s.pending = None;
            s.requested = true;
        });
    }

    /// Whether `id` is the resync under way for `node` (and not timed out):
    /// only then may its final batch sweep the node's locations.
    pub fn is_current(&self, node: &NodeId, id: u64, now: Instant) -> bool {
        id != 0
            && self.read(node, |s| {
                s.pending.is_some_and(|(p, since)| {
                    p == id && now.saturating_duration_since(since) < self.timeout
                })
            })
    }

    /// The resync `id` of `node` completed: the failure count starts over.
    pub fn finished(&self, node: &NodeId, id: u64) {
        self.with(node, |s| {
            if s.pending.is_some_and(|(p, _)| p == id) {
                s.pending = None;
                s.since_resync = 0;
                s.totals.resyncs += 1;
            }
        });
    }

    /// The node registered (again): whatever resync it was doing is gone
    /// with its previous process, and registration re-announces everything.
    pub fn registered(&self, node: &NodeId) {
        let mut map = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = map.get_mut(node) {
            s.pending = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> NodeId {
        s.parse().unwrap()
    }

    #[test]
    fn failures_past_the_threshold_ask_for_one_resync_at_a_time() {
        let h = NodeHealth::new(3, Duration::from_secs(60));
        let (a, t0) = (n("a"), Instant::now());
        h.stale(&a);
        h.failed(&a);
        assert!(!h.claim(&a, t0));
        h.failed(&a);
        assert_eq!(h.recent_failures(&a), 3);
        assert!(h.claim(&a, t0));
        assert!(!h.claim(&a, t0), "claimed already");
        h.started(&a, 7, t0);
        assert!(!h.claim(&a, t0 + Duration::from_secs(1)));
        assert!(h.is_current(&a, 7, t0));
        assert!(!h.is_current(&a, 6, t0));
        assert!(!h.is_current(&n("b"), 7, t0));
        h.finished(&a, 7);
        assert_eq!(h.recent_failures(&a), 0);
        assert!(!h.is_current(&a, 7, t0));
        assert_eq!(
            h.counters(&a),
            Counters {
                stale_locations: 1,
                failed_transfers: 2,
                resyncs: 1
            }
        );
        assert!(!h.claim(&a, t0 + Duration::from_secs(2)));
    }

    #[test]
    fn a_resync_that_never_finishes_times_out() {
        let h = NodeHealth::new(1, Duration::from_secs(60));
        let (a, t0) = (n("a"), Instant::now());
        h.failed(&a);
        assert!(h.claim(&a, t0));
        h.started(&a, 1, t0);
        let later = t0 + Duration::from_secs(61);
        assert!(!h.is_current(&a, 1, later), "too late to sweep");
        assert!(h.claim(&a, later), "asked again");
        h.started(&a, 2, later);
        h.finished(&a, 1);
        assert!(h.is_current(&a, 2, later), "an old id finishes nothing");
    }

    #[test]
    fn operator_requests_and_restarts() {
        let h = NodeHealth::new(100, Duration::from_secs(60));
        let (a, t0) = (n("a"), Instant::now());
        assert!(!h.claim(&a, t0));
        h.request(&a);
        assert!(h.claim(&a, t0));
        // Issuing the id failed: asked again later.
        h.abandon(&a);
        assert!(h.claim(&a, t0));
        h.started(&a, 3, t0);
        // A request during a resync is served by another one afterwards.
        h.request(&a);
        h.finished(&a, 3);
        assert!(h.claim(&a, t0));
        h.started(&a, 4, t0);
        h.registered(&a);
        assert!(!h.is_current(&a, 4, t0));
        assert!(!h.claim(&a, t0));
        assert_eq!(h.counters(&n("b")), Counters::default());
        h.registered(&n("c"));
        assert_eq!(h.snapshot().len(), 1, "lookups create no records");
        let text = h.prometheus();
        assert!(text.contains("elton_master_node_resyncs_total{node=\"a\"} 1\n"));
        assert!(text.contains("# TYPE elton_master_node_failed_transfers_total counter\n"));
    }
}
