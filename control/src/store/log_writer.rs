//! The log store's writer: one thread owns the log's writes and writes
//! everything queued since its last write as one batch of the control log
//! ([`super::wal`]), with one `fdatasync` (writes from concurrent callers
//! share it).
//!
//! `append` waits for its transaction before it returns, although openraft
//! also takes a `LogFlushed` callback: openraft 0.9.25 answers a leader's
//! AppendEntries as soon as `append` returns, without waiting for the
//! callback (its `Condition::LogFlushed` is unimplemented), so a follower
//! whose `append` returned early would acknowledge entries it could still
//! lose, and a majority crash could lose a committed command. While an
//! append is queued its entries are served from [`Pending`].

use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use openraft::storage::LogFlushed;
use tokio::sync::oneshot;

use super::state_machine::Persister;
use super::wal::{Appender, Change, Wal};
use crate::error::ControlError;
use crate::types::{Entry, LogId, TypeConfig, Vote};

/// Most operations written in one batch.
const MAX_BATCH: usize = 4096;

/// Entries appended but not committed yet, by index.
#[derive(Default)]
pub(crate) struct Pending(RwLock<BTreeMap<u64, Entry>>);

impl Pending {
    pub(crate) fn insert(&self, entries: &[Entry]) {
        let mut p = self.0.write().unwrap_or_else(PoisonError::into_inner);
        for e in entries {
            p.insert(e.log_id.index, e.clone());
        }
    }

    /// Drops pending entries at `index >= from` (a truncation).
    pub(crate) fn truncate(&self, from: u64) {
        let mut p = self.0.write().unwrap_or_else(PoisonError::into_inner);
        p.split_off(&from);
    }

    /// Drops pending entries at `index <= upto` (a purge).
    pub(crate) fn purge(&self, upto: u64) {
        let mut p = self.0.write().unwrap_or_else(PoisonError::into_inner);
        *p = p.split_off(&(upto.saturating_add(1)));
    }

    /// Forgets entries now on disk; an entry replaced meanwhile (truncated
    /// and appended again with another log id) stays.
    fn committed(&self, ids: &[LogId]) {
        let mut p = self.0.write().unwrap_or_else(PoisonError::into_inner);
        for id in ids {
            if p.get(&id.index).is_some_and(|e| e.log_id == *id) {
                p.remove(&id.index);
            }
        }
    }

    pub(crate) fn range(&self, range: (std::ops::Bound<u64>, std::ops::Bound<u64>)) -> Vec<Entry> {
        let p = self.0.read().unwrap_or_else(PoisonError::into_inner);
        p.range(range).map(|(_, e)| e.clone()).collect()
    }

    pub(crate) fn last(&self) -> Option<LogId> {
        let p = self.0.read().unwrap_or_else(PoisonError::into_inner);
        p.last_key_value().map(|(_, e)| e.log_id)
    }
}

type Done = oneshot::Sender<Result<(), ControlError>>;

/// A write for the writer thread. All but `Committed` are awaited by
/// their caller.
pub(crate) enum Op {
    Append {
        entries: Vec<Entry>,
        callback: LogFlushed<TypeConfig>,
        done: Done,
    },
    /// Deletes `index >= from`.
    Truncate {
        from: u64,
        done: Done,
    },
    /// Records `upto` as purged and deletes `index <= upto.index`.
    Purge {
        upto: LogId,
        done: Done,
    },
    Vote {
        vote: Vote,
        done: Done,
    },
    /// Rides on the next flush (see [`FLUSH_AFTER`]).
    Committed {
        committed: Option<LogId>,
    },
}

/// How long a written committed id may wait for another write's flush
/// before the writer flushes the log by itself.
pub(crate) const FLUSH_AFTER: Duration = Duration::from_millis(10);

/// The writer thread's loop: runs until every sender is gone. `persister`
/// writes the state machine's file, flushed before a purge (below).
pub(crate) fn run(
    wal: Arc<Wal>,
    mut appender: Appender,
    persister: Arc<Persister>,
    pending: Arc<Pending>,
    rx: Receiver<Op>,
) {
    // Whether a written committed id is not yet covered by a flush.
    let mut unflushed = false;
    loop {
        let first = if unflushed {
            match rx.recv_timeout(FLUSH_AFTER) {
                Ok(op) => op,
                Err(RecvTimeoutError::Timeout) => {
                    match appender.flush() {
                        Ok(()) => unflushed = false,
                        Err(e) => tracing::warn!("control log: flushing the commit index: {e}"),
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    if let Err(e) = appender.flush() {
                        tracing::warn!("control log: flushing the commit index: {e}");
                    }
                    return;
                }
            }
        } else {
            match rx.recv() {
                Ok(op) => op,
                Err(_) => return,
            }
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        let durable = batch.iter().any(|op| !matches!(op, Op::Committed { .. }));
        let result = write(&wal, &mut appender, &persister, &batch, durable);
        if result.is_ok() {
            unflushed = !durable;
            let ids: Vec<LogId> = batch
                .iter()
                .filter_map(|op| match op {
                    Op::Append { entries, .. } => Some(entries.iter().map(|e| e.log_id)),
                    _ => None,
                })
                .flatten()
                .collect();
            pending.committed(&ids);
        }
        for op in batch {
            let r = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(ControlError::Storage(e.to_string())),
            };
            match op {
                Op::Append { callback, done, .. } => {
                    let flushed = match &r {
                        Ok(()) => Ok(()),
                        Err(e) => Err(std::io::Error::other(e.to_string())),
                    };
                    callback.log_io_completed(flushed);
                    let _ = done.send(r);
                }
                Op::Truncate { done, .. } | Op::Purge { done, .. } | Op::Vote { done, .. } => {
                    // The caller may have given up waiting; nothing to do.
                    let _ = done.send(r);
                }
                Op::Committed { .. } => {}
            }
        }
    }
}

/// Writes `batch` in order as one log write.
///
/// Before a purge, the state machine's applies are written to its file
/// durably: they live in memory until a flush (`state_machine.rs`), and
/// once the log no longer holds the purged entries, nothing could re-apply
/// what a crash took from it. openraft purges only entries a built snapshot
/// covers; the snapshot is a copy beside the rows, not the rows, so this
/// flush is what keeps the log's safety.
fn write(
    wal: &Wal,
    appender: &mut Appender,
    persister: &Persister,
    batch: &[Op],
    durable: bool,
) -> Result<(), ControlError> {
    if batch.iter().any(|op| matches!(op, Op::Purge { .. })) {
        persister.flush()?;
    }
    let mut changes = Vec::with_capacity(batch.len());
    for op in batch {
        match op {
            Op::Append { entries, .. } => changes.extend(entries.iter().map(Change::Entry)),
            Op::Truncate { from, .. } => changes.push(Change::Truncate(*from)),
            Op::Purge { upto, .. } => changes.push(Change::Purged(*upto)),
            Op::Vote { vote, .. } => changes.push(Change::Vote(*vote)),
            Op::Committed { committed } => changes.push(Change::Committed(*committed)),
        }
    }
    appender.write(wal, &changes, durable)
}

#[cfg(test)]
mod tests {
    use std::ops::Bound::{Excluded, Included, Unbounded};

    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;

    fn entry(term: u64, index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    fn indexes(p: &Pending) -> Vec<(u64, u64)> {
        p.range((Unbounded, Unbounded))
            .iter()
            .map(|e| (e.log_id.leader_id.term, e.log_id.index))
            .collect()
    }

    #[test]
    fn queued_entries_are_served_until_committed() {
        let p = Pending::default();
        p.insert(&[entry(1, 1), entry(1, 2), entry(1, 3)]);
        assert_eq!(p.last().map(|l| l.index), Some(3));
        assert_eq!(p.range((Included(2), Excluded(3))).len(), 1);
        p.committed(&[entry(1, 1).log_id, entry(1, 2).log_id]);
        assert_eq!(indexes(&p), [(1, 3)]);
    }

    #[test]
    fn a_replaced_entry_survives_the_commit_of_the_old_one() {
        let p = Pending::default();
        p.insert(&[entry(1, 1), entry(1, 2), entry(1, 3)]);
        // A new leader's entries replace 2 and 3 before the old ones are
        // committed.
        p.truncate(2);
        assert_eq!(indexes(&p), [(1, 1)]);
        p.insert(&[entry(2, 2)]);
        p.committed(&[entry(1, 1).log_id, entry(1, 2).log_id, entry(1, 3).log_id]);
        assert_eq!(indexes(&p), [(2, 2)]);
        assert_eq!(p.last(), Some(entry(2, 2).log_id));
    }

    #[test]
    fn purge_drops_queued_entries_up_to_the_index() {
        let p = Pending::default();
        p.insert(&[entry(1, 4), entry(1, 5), entry(1, 6)]);
        p.purge(5);
        assert_eq!(indexes(&p), [(1, 6)]);
        p.purge(u64::MAX);
        assert_eq!(indexes(&p), []);
        assert_eq!(p.last(), None);
    }
}
