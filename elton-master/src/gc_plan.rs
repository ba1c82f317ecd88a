//! Pure decisions of garbage collection and retention (no IO): which
//! versions a retention policy keeps, which offered objects a node deletes,
//! and when a run is complete. The IO around them is in [`crate::gc`].

use std::collections::{BTreeMap, HashSet};

use elton_proto::{NodeId, ObjectId};

/// First version a volume at `head` keeps under retention `keep` (0 keeps
/// all); `None` when nothing is to be dropped.
pub fn retained_from(head: u64, keep: u64) -> Option<u64> {
    if keep == 0 || head <= keep {
        return None;
    }
    Some(head - keep + 1)
}

/// The offered objects that no walked version references. Order is kept;
/// duplicates are offered once.
pub fn deletable(offered: &[ObjectId], live: &HashSet<ObjectId>) -> Vec<ObjectId> {
    let mut seen = HashSet::new();
    offered
        .iter()
        .filter(|o| !live.contains(o) && seen.insert(**o))
        .copied()
        .collect()
}

/// What one node reported at the end of its part.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeReport {
    pub candidates: u64,
    pub deleted: u64,
    pub deleted_bytes: u64,
    pub kept_in_use: u64,
    /// Why the node gave up, if it did.
    pub error: Option<String>,
}

/// Which nodes of a run still owe their part. A node that was not live when
/// the run began is never asked; a node that does not finish in time is
/// reported as skipped.
#[derive(Debug, Default)]
pub struct SweepProgress {
    expected: BTreeMap<NodeId, Option<NodeReport>>,
}

impl SweepProgress {
    pub fn new(nodes: impl IntoIterator<Item = NodeId>) -> Self {
        Self {
            expected: nodes.into_iter().map(|n| (n, None)).collect(),
        }
    }

    pub fn expects(&self, node: &NodeId) -> bool {
        self.expected.contains_key(node)
    }

    /// Records `node`'s report; false when the node was not asked or has
    /// reported already (a duplicate changes nothing).
    pub fn finish(&mut self, node: &NodeId, report: NodeReport) -> bool {
        match self.expected.get_mut(node) {
            Some(slot @ None) => {
                *slot = Some(report);
                true
            }
            _ => false,
        }
    }

    pub fn done(&self) -> usize {
        self.expected.values().filter(|r| r.is_some()).count()
    }

    pub fn total(&self) -> usize {
        self.expected.len()
    }

    pub fn is_complete(&self) -> bool {
        self.done() == self.total()
    }

    /// Nodes that owe nothing more: `(node, report)`, reported or not.
    pub fn reports(&self) -> impl Iterator<Item = (&NodeId, Option<&NodeReport>)> {
        self.expected.iter().map(|(n, r)| (n, r.as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ObjectId {
        ObjectId::of(&[n])
    }

    #[test]
    fn retention_keeps_the_newest() {
        assert_eq!(retained_from(10, 0), None);
        assert_eq!(retained_from(3, 3), None);
        assert_eq!(retained_from(2, 3), None);
        assert_eq!(retained_from(4, 3), Some(2));
        assert_eq!(retained_from(10, 1), Some(10));
    }

    #[test]
    fn only_unreferenced_offers_are_deleted() {
        let live: HashSet<_> = [id(1), id(3)].into();
        let offered = [id(1), id(2), id(3), id(4), id(2)];
        assert_eq!(deletable(&offered, &live), vec![id(2), id(4)]);
        assert!(deletable(&[], &live).is_empty());
    }

    #[test]
    fn sweep_completes_when_every_node_reported_once() {
        let a: NodeId = "a".parse().unwrap();
        let b: NodeId = "b".parse().unwrap();
        let c: NodeId = "c".parse().unwrap();
        let mut p = SweepProgress::new([a.clone(), b.clone()]);
        assert!(!p.is_complete());
        assert!(!p.finish(&c, NodeReport::default()), "not asked");
        let r = NodeReport {
            deleted: 3,
            ..NodeReport::default()
        };
        assert!(p.finish(&a, r.clone()));
        assert!(!p.finish(&a, NodeReport::default()), "duplicate");
        assert_eq!(p.done(), 1);
        assert!(p.finish(&b, NodeReport::default()));
        assert!(p.is_complete());
        let reports: Vec<_> = p.reports().collect();
        assert_eq!(reports[0].1, Some(&r));
    }
}
