//! The Raft log and vote, in the control log ([`super::wal`]). Every
//! write that openraft relies on after a crash is durable before it is
//! reported done: `save_vote`, `truncate` and `purge` return after their
//! batch was flushed, and `append` calls its `LogFlushed` callback only
//! then (unlike openraft's rocksdb example, which reports before the
//! fsync). Writes go through one writer thread that writes whatever is
//! queued as one batch ([`super::log_writer`]); `append` too waits for its
//! flush, because openraft 0.9 acknowledges a follower's entries as soon as
//! `append` returns.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;
use std::sync::mpsc::Sender;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, StorageIOError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

use super::blocking;
use super::log_writer::{self, Op};
use super::state_machine::Persister;
use super::tail::Tail;
use super::wal::{Appender, Wal};
use crate::error::ControlError;
use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};

/// openraft's `RaftLogStorage` over the control log. Cheap to clone;
/// clones share the log and the writer thread, which ends with the last
/// clone.
#[derive(Clone)]
pub struct LogStore {
    wal: Arc<Wal>,
    tail: Arc<Tail>,
    writer: Arc<Writer>,
}

/// The writer thread's queue. Dropping the last handle closes the queue and
/// waits for the thread, so the file is closed when the store is gone and
/// can be opened again at once (a restart in the same process).
struct Writer {
    tx: Option<Sender<Op>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn send(&self, op: Op) -> Result<(), ControlError> {
        self.tx
            .as_ref()
            .and_then(|tx| tx.send(op).ok())
            .ok_or_else(|| ControlError::Storage("the log writer has stopped".into()))
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            // A panic in the writer already failed every waiting call.
            let _ = t.join();
        }
    }
}

impl LogStore {
    /// `db` is the state machine's file: the writer makes it durable before
    /// a purge (see `log_writer::write`).
    pub(crate) fn new(
        wal: Arc<Wal>,
        appender: Appender,
        persister: Arc<Persister>,
    ) -> Result<Self, ControlError> {
        let tail = Arc::new(Tail::default());
        let (tx, rx) = std::sync::mpsc::channel();
        let (w, p) = (wal.clone(), tail.clone());
        let thread = std::thread::Builder::new()
            .name("control-log".into())
            .spawn(move || log_writer::run(w, appender, persister, p, rx))?;
        Ok(Self {
            wal,
            tail,
            writer: Arc::new(Writer {
                tx: Some(tx),
                thread: Some(thread),
            }),
        })
    }

    /// Queues `op` (built around its completion sender) and waits for its
    /// flush.
    async fn write(
        &self,
        op: impl FnOnce(oneshot::Sender<Result<(), ControlError>>) -> Op,
    ) -> Result<(), ControlError> {
        let (tx, rx) = oneshot::channel();
        self.writer.send(op(tx))?;
        rx.await
            .map_err(|_| ControlError::Storage("the log writer has stopped".into()))?
    }

    /// Entries in the range, read from the log, overlaid with the tail
    /// (which holds those still queued). The tail is read first: an entry
    /// written and dropped from the tail between the two reads is then found
    /// in the log rather than missed.
    fn entries(&self, start: Bound<u64>, end: Bound<u64>) -> Result<Vec<Entry>, ControlError> {
        let held = self.tail.range((start, end));
        let mut out: std::collections::BTreeMap<u64, Entry> = self
            .wal
            .entries((start, end))?
            .into_iter()
            .map(|e| (e.log_id.index, e))
            .collect();
        for e in held {
            out.insert(e.log_id.index, e);
        }
        Ok(out.into_values().collect())
    }

    fn log_state(&self) -> LogState<TypeConfig> {
        let held = self.tail.last();
        let last_purged = self.wal.purged();
        let last = [held, self.wal.last(), last_purged]
            .into_iter()
            .flatten()
            .max_by_key(|l| l.index);
        LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        }
    }
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, ControlError> {
    serde_json::to_vec(value).map_err(|e| ControlError::Corrupt(format!("encoding: {e}")))
}

pub(crate) fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, ControlError> {
    serde_json::from_slice(bytes).map_err(|e| ControlError::Corrupt(format!("{what}: {e}")))
}

fn io_err(subject: ErrorSubject<u64>, verb: ErrorVerb, e: ControlError) -> StorageError {
    StorageIOError::new(subject, verb, &e).into()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (start, end) = (range.start_bound().cloned(), range.end_bound().cloned());
        // Replication and the state machine read what was just appended:
        // from memory, without a blocking-pool hop.
        if let Some(entries) = self.tail.covering((start, end)) {
            return Ok(entries);
        }
        let this = self.clone();
        blocking(move || this.entries(start, end))
            .await
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        Ok(self.log_state())
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let vote = *vote;
        self.write(|done| Op::Vote { vote, done })
            .await
            .map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.wal.vote())
    }

    /// Written, but not waited for: the record rides on the next append's
    /// flush, or on the writer's own flush [`log_writer::FLUSH_AFTER`]
    /// later when nothing else comes. openraft 0.9 awaits this between
    /// commit and apply, so a flush here was a third fsync on every
    /// write's path. It must reach disk soon, though: after a restart of
    /// every member openraft re-applies up to this id from the log at once;
    /// without it, entries whose non-durable apply was lost waited for a
    /// commit in the new term, and a leader restored in its old term did
    /// not advance the commit index (control_raft phase 3 lost one applied
    /// request that way). It can never get ahead of the log: the entries it
    /// names were appended (durably) before it was queued.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Nobody waits for it; a failed write fails the next append of the
        // same writer too, which openraft does see.
        self.writer
            .send(Op::Committed { committed })
            .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.wal.committed())
    }

    /// Returns, and fires `callback`, after the entries are durable: see
    /// [`super::log_writer`] for why not earlier.
    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        self.tail.insert(&entries);
        self.write(|done| Op::Append {
            entries,
            callback,
            done,
        })
        .await
        .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, e))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.tail.truncate(log_id.index);
        self.write(|done| Op::Truncate {
            from: log_id.index,
            done,
        })
        .await
        .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.tail.purge(log_id.index);
        self.write(|done| Op::Purge { upto: log_id, done })
            .await
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }
}
