//! This slave's part of a garbage-collection run (the run itself is the
//! master's, `elton-master/src/gc.rs`): offer the objects stored here that
//! arrived and were last used before the run's cutoff, delete those the
//! master answers as unreferenced (their locations are already gone), and
//! report. An object used again between the offer and the deletion (stored
//! again, or vouched for by a commit on this slave) is kept and announced
//! again.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use elton_proto::pb::{GcCandidatesRequest, GcDoneRequest};
use elton_proto::{MAX_LOCATIONS_PER_CALL, ObjectId};

use crate::SlaveError;
use crate::master_link::MasterLink;
use crate::store::{Arrived, ObjectStore, arrival};

/// Objects offered per `GcCandidates` call.
const OFFER_BATCH: usize = 8192;
const _: () = assert!(OFFER_BATCH <= MAX_LOCATIONS_PER_CALL);

/// Use marks younger than this survive a sweep.
const MARKS_KEPT: Duration = Duration::from_secs(24 * 3600);

/// A run as a heartbeat answer hands it out.
#[derive(Clone, Copy, Debug)]
pub struct Assignment {
    pub id: u64,
    /// Only objects that arrived and were last used longer ago than this.
    pub cutoff: Duration,
    pub dry_run: bool,
}

#[derive(Default)]
struct Totals {
    candidates: u64,
    deleted: u64,
    deleted_bytes: u64,
    kept_in_use: u64,
}

/// Whether a stored object may be offered: it arrived and was last used
/// before `cutoff`.
pub fn offerable(arrived: SystemTime, used_since_cutoff: bool, cutoff: SystemTime) -> bool {
    arrived < cutoff && !used_since_cutoff
}

/// Runs this node's part of `a` and reports it to the master.
pub async fn run(link: MasterLink, store: Arc<ObjectStore>, a: Assignment) {
    let _exclusive = link.maintenance().lock_owned().await;
    let mut totals = Totals::default();
    let outcome = sweep(&link, &store, a, &mut totals).await;
    let error = match &outcome {
        Ok(()) => String::new(),
        Err(e) => e.to_string(),
    };
    match &outcome {
        Ok(()) => tracing::info!(
            gc = a.id,
            dry_run = a.dry_run,
            deleted = totals.deleted,
            bytes = totals.deleted_bytes,
            kept = totals.kept_in_use,
            "gc sweep done"
        ),
        Err(e) => tracing::warn!(gc = a.id, "gc sweep failed: {e}"),
    }
    let done = GcDoneRequest {
        node_id: link.node_id().to_string(),
        gc: a.id,
        deleted: totals.deleted,
        deleted_bytes: totals.deleted_bytes,
        kept_in_use: totals.kept_in_use,
        candidates: totals.candidates,
        error,
    };
    if let Err(e) = link.client().gc_done(done).await {
        tracing::warn!(gc = a.id, "reporting gc sweep: {}", e.message());
    }
}

async fn sweep(
    link: &MasterLink,
    store: &Arc<ObjectStore>,
    a: Assignment,
    totals: &mut Totals,
) -> Result<(), SlaveError> {
    let cutoff = SystemTime::now()
        .checked_sub(a.cutoff)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let s = store.clone();
    let offered = tokio::task::spawn_blocking(move || candidates(&s, cutoff))
        .await
        .map_err(|e| SlaveError::Io(format!("gc listing task: {e}")))??;
    totals.candidates = offered.len() as u64;
    for batch in offered.chunks(OFFER_BATCH) {
        let req = GcCandidatesRequest {
            node_id: link.node_id().to_string(),
            gc: a.id,
            objects: batch.iter().map(|(id, _)| id.as_bytes().to_vec()).collect(),
        };
        let reply = link.client().gc_candidates(req).await?.into_inner();
        if !reply.abort.is_empty() {
            return Err(SlaveError::Master(format!("gc aborted: {}", reply.abort)));
        }
        let delete = reply
            .delete
            .iter()
            .map(|raw| ObjectId::from_bytes(raw))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SlaveError::Master(format!("gc answer: {e}")))?;
        if a.dry_run {
            let sizes: std::collections::HashMap<_, _> = batch.iter().copied().collect();
            totals.deleted += delete.len() as u64;
            totals.deleted_bytes += delete.iter().filter_map(|id| sizes.get(id)).sum::<u64>();
            continue;
        }
        let s = store.clone();
        let (deleted, bytes, kept) = tokio::task::spawn_blocking(move || {
            let (mut n, mut bytes, mut kept) = (0u64, 0u64, Vec::new());
            for id in delete {
                match s.remove_unused(&id, cutoff, Arrived::Before) {
                    Ok(Some(size)) => {
                        n += 1;
                        bytes += size;
                    }
                    Ok(None) => kept.push(id),
                    Err(e) => {
                        tracing::warn!(object = %id, "gc: {e}");
                        kept.push(id);
                    }
                }
            }
            (n, bytes, kept)
        })
        .await
        .map_err(|e| SlaveError::Io(format!("gc delete task: {e}")))?;
        totals.deleted += deleted;
        totals.deleted_bytes += bytes;
        totals.kept_in_use += kept.len() as u64;
        // The master removed these locations with the decision: tell it
        // again about those still here.
        let kept: Vec<ObjectId> = kept.into_iter().filter(|id| store.contains(id)).collect();
        link.announce(kept).await?;
    }
    // Marks also protect the undo of failed writes still running: keep a
    // day of them even when the cutoff is shorter.
    store.forget_uses_before(cutoff.min(SystemTime::now() - MARKS_KEPT));
    Ok(())
}

/// Stored objects that may be offered, with their sizes. Blocking.
fn candidates(store: &ObjectStore, cutoff: SystemTime) -> Result<Vec<(ObjectId, u64)>, SlaveError> {
    let mut out = Vec::new();
    for id in store.list()? {
        let Ok(meta) = std::fs::symlink_metadata(store.path(&id)) else {
            continue; // removed meanwhile
        };
        if offerable(arrival(&meta), store.used_since(&id, cutoff), cutoff) {
            out.push((id, meta.len()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_old_unused_objects_are_offered() {
        let cutoff = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let before = cutoff - Duration::from_secs(1);
        let after = cutoff + Duration::from_secs(1);
        assert!(offerable(before, false, cutoff));
        assert!(!offerable(before, true, cutoff), "used since");
        assert!(!offerable(after, false, cutoff), "arrived since");
        assert!(!offerable(cutoff, false, cutoff), "arrived at the cutoff");
    }

    #[test]
    fn removal_spares_objects_used_or_arrived_since() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::open(dir.path()).unwrap();
        let old = store.put_bytes(b"old").unwrap();
        let reused = store.put_bytes(b"reused").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let cutoff = SystemTime::now();
        std::thread::sleep(Duration::from_millis(20));
        let fresh = store.put_bytes(b"fresh").unwrap();
        assert_eq!(store.put_bytes(b"reused").unwrap(), reused);
        let gc = Arrived::Before;
        assert_eq!(store.remove_unused(&old, cutoff, gc).unwrap(), Some(3));
        assert!(!store.contains(&old));
        assert_eq!(store.remove_unused(&reused, cutoff, gc).unwrap(), None);
        assert_eq!(store.remove_unused(&fresh, cutoff, gc).unwrap(), None);
        assert!(store.contains(&reused) && store.contains(&fresh));
        // Undoing a write removes only what arrived since it began, and not
        // what was used since either.
        let old2 = store.put_bytes(b"old").unwrap();
        let undo = Arrived::Since;
        assert_eq!(store.remove_unused(&reused, cutoff, undo).unwrap(), None);
        assert_eq!(store.remove_unused(&fresh, cutoff, undo).unwrap(), Some(5));
        assert_eq!(store.remove_unused(&old2, cutoff, undo).unwrap(), Some(3));
        let before = store.put_bytes(b"before").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let since = SystemTime::now();
        assert_eq!(store.remove_unused(&before, since, undo).unwrap(), None);
        assert!(store.contains(&before), "there before the write began");
    }
}
