//! `RemoveNode`: surveys the node's objects in the store, asks
//! [`crate::decommission_plan`] what to do, and does it (schedules copies
//! through the replicator's mailboxes, or forgets the node).

use std::time::Instant;

use elton_proto::NodeId;
use elton_proto::pb;

use crate::MasterError;
use crate::decommission_plan::{Decommission, decide};
use crate::nodes::Liveness;
use crate::replicator::Replicator;
use crate::store::MetaStore;

/// One step of decommissioning `node` (blocking: redb reads and writes).
pub fn step(
    store: &MetaStore,
    liveness: &Liveness,
    replicator: &Replicator,
    node: &NodeId,
    force: bool,
    now_unix: u64,
) -> Result<pb::RemoveNodeResponse, MasterError> {
    if !store.nodes()?.iter().any(|r| &r.id == node) {
        return Err(MasterError::UnknownNode(node.to_string()));
    }
    let now = Instant::now();
    let objects = store.node_objects(node)?;
    let mut sole = Vec::new();
    for o in &objects {
        if store.holders(o)?.iter().all(|h| h == node) {
            sole.push(*o);
        }
    }
    let targets: Vec<NodeId> = store
        .nodes()?
        .into_iter()
        .map(|r| r.id)
        .filter(|id| id != node && liveness.is_up(id, now))
        .collect();
    let mut resp = pb::RemoveNodeResponse {
        removed: false,
        objects: objects.len() as u64,
        sole_copies: sole.len() as u64,
        scheduled: 0,
    };
    match decide(liveness.is_up(node, now), &sole, force, &targets) {
        Decommission::Forget { lost } => {
            store.forget_node(node, now_unix)?;
            liveness.forget(node);
            if lost > 0 {
                tracing::warn!(%node, lost, "node removed by force: its only copies are gone");
            } else {
                tracing::info!(%node, objects = objects.len(), "node removed");
            }
            resp.removed = true;
        }
        Decommission::CopyFirst(copies) => {
            resp.scheduled = replicator.copy_now(&copies, now) as u64;
            tracing::info!(%node, sole = sole.len(), scheduled = resp.scheduled, "decommission: copying sole copies first");
        }
        Decommission::RefuseDown { sole } => {
            return Err(MasterError::WouldLoseObjects {
                node: node.to_string(),
                objects: sole,
            });
        }
        Decommission::RefuseNoTarget { sole } => {
            return Err(MasterError::BadRequest(format!(
                "node {node:?} holds the only copy of {sole} object(s) and no other live node \
                 can take them; start another slave first, or remove it anyway with --force"
            )));
        }
    }
    Ok(resp)
}
