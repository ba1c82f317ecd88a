//! Backup copies asked for by the master.
//!
//! The master hands out object ids with heartbeat answers (see
//! `elton-master/src/replicator.rs`). Each is copied through the ordinary
//! fetch path (`FetchObject` excluding this node, hash check, durable store,
//! announcement), a few at a time. The announcement is what tells the master
//! the copy exists; a copy that fails is reported with the next heartbeat,
//! and the master hands it out again after a short delay.

use std::sync::Arc;

use elton_proto::ObjectId;
use tokio::sync::{Semaphore, mpsc};

use crate::fetcher::Fetcher;
use crate::master_link::MasterLink;
use crate::metrics::{Metrics, inc};

/// Copies made at once; backups share the disk and network with reads.
const PARALLEL_COPIES: usize = 8;
/// Ids waiting to be copied; beyond that they are dropped (and reassigned).
pub const QUEUE: usize = 4096;

pub async fn run_copier(
    mut rx: mpsc::Receiver<ObjectId>,
    fetcher: Arc<Fetcher>,
    link: MasterLink,
    metrics: Arc<Metrics>,
) {
    let slots = Arc::new(Semaphore::new(PARALLEL_COPIES));
    while let Some(id) = rx.recv().await {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (fetcher, link, metrics) = (fetcher.clone(), link.clone(), metrics.clone());
        tokio::spawn(async move {
            let result = match fetcher.ensure(id).await {
                Ok(true) => Ok(()),
                // Already here but the master did not know: tell it.
                Ok(false) => link.announce(vec![id]).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => {
                    inc(&metrics.backup_copies_total, 1);
                    tracing::debug!(object = %id, "backup copy stored");
                }
                Err(e) => {
                    inc(&metrics.backup_failures_total, 1);
                    tracing::warn!(object = %id, "backup copy failed: {e}");
                    link.report_copy_failed(id);
                }
            }
            drop(permit);
            link.copy_finished();
        });
    }
}
