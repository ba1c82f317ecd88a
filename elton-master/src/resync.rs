//! Handing out inventory resyncs and ending them: the glue between
//! [`NodeHealth`] (when) and [`MetaStore`] (mark and sweep). The protocol is
//! in `docs/formats.md` (§6, "Resync").

use std::sync::Arc;
use std::time::Instant;

use elton_proto::NodeId;

use crate::MasterError;
use crate::health::NodeHealth;
use crate::store::{self, MetaStore};

pub struct Resyncs {
    store: Arc<MetaStore>,
    health: Arc<NodeHealth>,
}

impl Resyncs {
    pub fn new(store: Arc<MetaStore>, health: Arc<NodeHealth>) -> Self {
        Self { store, health }
    }

    /// The resync id for `node`'s heartbeat answer: non-zero when one is due
    /// and none is under way. A failure to issue one is logged and retried
    /// at a later beat; the heartbeat itself never fails for it.
    pub async fn issue(&self, node: &NodeId, now: Instant) -> u64 {
        if !self.health.claim(node, now) {
            return 0;
        }
        match store::blocking(&self.store, |s| s.begin_resync()).await {
            Ok(id) => {
                self.health.started(node, id, now);
                tracing::info!(%node, resync = id, "asking node to re-announce its inventory");
                id
            }
            Err(e) => {
                self.health.abandon(node);
                tracing::warn!(%node, "starting a resync: {e}");
                0
            }
        }
    }

    /// An `AddLocations` call of `node` was recorded. When it was the last
    /// call of the resync under way, the node's locations not announced
    /// since the resync began are removed. A call of a resync that is no
    /// longer current (timed out, or the node re-registered) sweeps
    /// nothing: the master cannot tell whether it saw all of that resync.
    pub async fn announced(
        &self,
        node: &NodeId,
        resync_id: u64,
        last: bool,
    ) -> Result<(), MasterError> {
        if resync_id == 0 || !last {
            return Ok(());
        }
        if !self.health.is_current(node, resync_id, Instant::now()) {
            tracing::warn!(%node, resync = resync_id, "ignoring the end of a resync that is not current");
            return Ok(());
        }
        let n = node.clone();
        let removed = store::blocking(&self.store, move |s| s.sweep_node(&n, resync_id)).await?;
        self.health.finished(node, resync_id);
        tracing::info!(%node, resync = resync_id, removed, "resync finished");
        Ok(())
    }
}
