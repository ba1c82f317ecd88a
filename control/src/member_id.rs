//! A member's Raft id, derived from its name: a member knows its own id
//! before it joins (openraft needs it at start), and whoever adds it
//! computes the same one from the name alone.

use crate::types::NodeId;

/// The first 8 bytes of BLAKE3("elton-control-member:" + name), never 0.
/// Names are unique within a group (certificate names; in a WAN group,
/// operators keep node names unique across clusters).
pub fn raft_id(name: &str) -> NodeId {
    let hash = blake3::hash(format!("elton-control-member:{name}").as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_bytes()[..8]);
    u64::from_be_bytes(first).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct() {
        assert_eq!(raft_id("m1"), raft_id("m1"));
        assert_ne!(raft_id("m1"), raft_id("m2"));
        assert_ne!(raft_id(""), 0);
    }
}
