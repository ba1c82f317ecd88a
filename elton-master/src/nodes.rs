//! Liveness of registered slaves, decided from heartbeats.
//!
//! Pure bookkeeping: callers pass `now`, so tests need no clock.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use elton_proto::NodeId;

pub struct Liveness {
    down_after: Duration,
    /// Last heartbeat, and whether the node registered with this process.
    last_seen: Mutex<HashMap<NodeId, (Instant, bool)>>,
}

impl Liveness {
    /// Nodes known from before a restart count as seen at `now`: they get
    /// one `down_after` period to heartbeat before they are marked down.
    /// Until they register again their heartbeats are answered "unknown", so
    /// they re-announce what they hold: locations written just before a
    /// crash may not have been durable.
    pub fn new(
        down_after: Duration,
        known: impl IntoIterator<Item = NodeId>,
        now: Instant,
    ) -> Self {
        let last_seen = known.into_iter().map(|id| (id, (now, false))).collect();
        Self {
            down_after,
            last_seen: Mutex::new(last_seen),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, (Instant, bool)>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.last_seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a heartbeat; false when the node must register (again).
    pub fn beat(&self, id: &NodeId, now: Instant) -> bool {
        match self.map().get_mut(id) {
            Some((t, registered)) => {
                *t = now;
                *registered
            }
            None => false,
        }
    }

    pub fn register(&self, id: NodeId, now: Instant) {
        self.map().insert(id, (now, true));
    }

    /// Forgets `id` until it registers again: it is down, its heartbeats
    /// are answered "unknown" and do not bring it up (its address was given
    /// to another node while it was down, so reads must not go there).
    pub fn forget(&self, id: &NodeId) {
        self.map().remove(id);
    }

    pub fn is_up(&self, id: &NodeId, now: Instant) -> bool {
        self.map()
            .get(id)
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) < self.down_after)
    }

    pub fn last_seen(&self, id: &NodeId) -> Option<Instant> {
        self.map().get(id).map(|(t, _)| *t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silent_nodes_go_down_and_come_back() {
        let t0 = Instant::now();
        let n: NodeId = "n".parse().unwrap();
        let l = Liveness::new(Duration::from_secs(10), [n.clone()], t0);
        assert!(l.is_up(&n, t0 + Duration::from_secs(9)));
        assert!(!l.is_up(&n, t0 + Duration::from_secs(10)));
        assert!(
            !l.beat(&n, t0 + Duration::from_secs(11)),
            "known from disk: register again"
        );
        l.register(n.clone(), t0 + Duration::from_secs(11));
        assert!(l.beat(&n, t0 + Duration::from_secs(11)));
        assert!(l.is_up(&n, t0 + Duration::from_secs(12)));
        assert!(!l.beat(&"other".parse().unwrap(), t0));
        l.forget(&n);
        assert!(!l.beat(&n, t0 + Duration::from_secs(12)));
        assert!(!l.is_up(&n, t0 + Duration::from_secs(12)));
    }
}
