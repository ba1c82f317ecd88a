//! What `elton node rm` does next, decided without IO: forget the node,
//! copy the objects only it holds to other live nodes first, or refuse.

use elton_proto::{NodeId, ObjectId};

/// The decision for one `RemoveNode` call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decommission {
    /// Nothing would be lost (or the admin forced it): forget the node.
    Forget { lost: u64 },
    /// Copy these objects (only the node holds them) to these targets first;
    /// the caller asks again until none is left.
    CopyFirst(Vec<(ObjectId, NodeId)>),
    /// The node is down: its sole copies cannot be read to be copied.
    RefuseDown { sole: u64 },
    /// No other live node to copy to.
    RefuseNoTarget { sole: u64 },
}

/// `sole`: objects no other node holds; `targets`: other live nodes.
pub fn decide(node_up: bool, sole: &[ObjectId], force: bool, targets: &[NodeId]) -> Decommission {
    let n = sole.len() as u64;
    if sole.is_empty() || force {
        return Decommission::Forget { lost: n };
    }
    if !node_up {
        return Decommission::RefuseDown { sole: n };
    }
    if targets.is_empty() {
        return Decommission::RefuseNoTarget { sole: n };
    }
    // Spread the copies over the targets, round robin.
    Decommission::CopyFirst(
        sole.iter()
            .zip(targets.iter().cycle())
            .map(|(o, t)| (*o, t.clone()))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: u8) -> Vec<ObjectId> {
        (0..n).map(|i| ObjectId::of(&[i])).collect()
    }

    fn node(s: &str) -> NodeId {
        s.parse().unwrap_or_else(|_| unreachable!())
    }

    #[test]
    fn a_node_without_sole_copies_is_forgotten_at_once() {
        assert_eq!(
            decide(false, &[], false, &[]),
            Decommission::Forget { lost: 0 }
        );
    }

    #[test]
    fn sole_copies_are_spread_over_the_live_targets_first() {
        let targets = [node("b"), node("c")];
        let Decommission::CopyFirst(copies) = decide(true, &ids(3), false, &targets) else {
            panic!("expected copies");
        };
        let to: Vec<&str> = copies.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(to, ["b", "c", "b"]);
    }

    #[test]
    fn a_down_node_with_sole_copies_is_refused_unless_forced() {
        assert_eq!(
            decide(false, &ids(2), false, &[node("b")]),
            Decommission::RefuseDown { sole: 2 }
        );
        assert_eq!(
            decide(false, &ids(2), true, &[node("b")]),
            Decommission::Forget { lost: 2 }
        );
        assert_eq!(
            decide(true, &ids(1), false, &[]),
            Decommission::RefuseNoTarget { sole: 1 }
        );
    }
}
