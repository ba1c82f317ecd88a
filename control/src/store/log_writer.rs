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
//! append is queued its entries are served from the [`Tail`].

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::Duration;

use openraft::storage::LogFlushed;
use tokio::sync::oneshot;

use super::state_machine::Persister;
use super::tail::Tail;
use super::wal::{Appender, Change, Wal};
use crate::error::ControlError;
use crate::types::{Entry, LogId, TypeConfig, Vote};

/// Most operations written in one batch.
const MAX_BATCH: usize = 4096;

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
    tail: Arc<Tail>,
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
        let started = std::time::Instant::now();
        let result = write(&wal, &mut appender, &persister, &batch, durable);
        tracing::debug!(
            ops = batch.len(),
            durable,
            us = started.elapsed().as_micros() as u64,
            "log batch written"
        );
        if let Ok(written) = &result {
            unflushed = !durable;
            tail.written(written);
        }
        for op in batch {
            let r = match &result {
                Ok(_) => Ok(()),
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

/// Writes `batch` in order as one log write; returns the entries written,
/// with their record lengths.
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
) -> Result<Vec<(LogId, u64)>, ControlError> {
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
    let lengths = appender.write(wal, &changes, durable)?;
    Ok(changes
        .iter()
        .zip(lengths)
        .filter_map(|(c, len)| match c {
            Change::Entry(e) => Some((e.log_id, len)),
            _ => None,
        })
        .collect())
}
