//! What each node last reported of its store (objects, bytes) in its
//! heartbeats: shown by `elton node ls` and the web view; soft state.

use std::collections::HashMap;
use std::sync::Mutex;

use elton_proto::NodeId;

#[derive(Default)]
pub struct NodeUsage {
    reported: Mutex<HashMap<NodeId, (u64, u64)>>,
}

impl NodeUsage {
    /// Records a report; a node that has not counted yet sends zeros,
    /// which do not replace an earlier count.
    pub fn report(&self, node: &NodeId, objects: u64, bytes: u64) {
        if objects == 0 && bytes == 0 {
            return;
        }
        self.reported
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node.clone(), (objects, bytes));
    }

    /// (objects, bytes), zeros when never reported.
    pub fn get(&self, node: &NodeId) -> (u64, u64) {
        self.reported
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(node)
            .copied()
            .unwrap_or_default()
    }
}
