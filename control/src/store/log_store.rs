//! The Raft log and vote. Every write that openraft relies on after a
//! crash is durable before it is reported done: `save_vote`, `truncate`
//! and `purge` return after their transaction committed with immediate
//! durability, and `append` calls its `LogFlushed` callback only then
//! (unlike openraft's rocksdb example, which reports before the fsync).
//! Writes go through one writer thread that commits whatever is queued in
//! one transaction ([`super::log_writer`]); `append` too waits for its
//! commit, because openraft 0.9 acknowledges a follower's entries as soon as
//! `append` returns.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;
use std::sync::mpsc::Sender;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, StorageIOError};
use redb::{Database, ReadableDatabase, ReadableTable};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

use super::log_writer::{self, Op, Pending};
use super::{KEY_COMMITTED, KEY_LAST_PURGED, KEY_VOTE, LOG, META, blocking};
use crate::error::ControlError;
use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};

/// openraft's `RaftLogStorage` over `control.redb`. Cheap to clone; clones
/// share the file and the writer thread, which ends with the last clone.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    pending: Arc<Pending>,
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
    pub(crate) fn new(db: Arc<Database>) -> Result<Self, ControlError> {
        let pending = Arc::new(Pending::default());
        let (tx, rx) = std::sync::mpsc::channel();
        let (d, p) = (db.clone(), pending.clone());
        let thread = std::thread::Builder::new()
            .name("control-log".into())
            .spawn(move || log_writer::run(d, p, rx))?;
        Ok(Self {
            db,
            pending,
            writer: Arc::new(Writer {
                tx: Some(tx),
                thread: Some(thread),
            }),
        })
    }

    /// Queues `op` (built around its completion sender) and waits for its
    /// commit.
    async fn write(
        &self,
        op: impl FnOnce(oneshot::Sender<Result<(), ControlError>>) -> Op,
    ) -> Result<(), ControlError> {
        let (tx, rx) = oneshot::channel();
        self.writer.send(op(tx))?;
        rx.await
            .map_err(|_| ControlError::Storage("the log writer has stopped".into()))?
    }

    async fn write_meta<T: Serialize>(
        &self,
        key: &'static str,
        value: &T,
        durable: bool,
    ) -> Result<(), ControlError> {
        let value = encode(value)?;
        self.write(|done| Op::Meta {
            key,
            value,
            durable,
            done,
        })
        .await
    }

    fn read_meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, ControlError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        match meta.get(key)? {
            Some(v) => Ok(Some(decode(key, v.value())?)),
            None => Ok(None),
        }
    }

    /// Entries in the range: committed ones from disk, overlaid with those
    /// still queued. The queue is read first: an entry committed between
    /// the two reads is then found on disk rather than missed.
    fn entries(&self, start: Bound<u64>, end: Bound<u64>) -> Result<Vec<Entry>, ControlError> {
        let queued = self.pending.range((start, end));
        let txn = self.db.begin_read()?;
        let log = txn.open_table(LOG)?;
        let mut out = std::collections::BTreeMap::new();
        for item in log.range::<u64>((start, end))? {
            let (k, v) = item?;
            let entry: Entry = decode("log entry", v.value())?;
            if entry.log_id.index != k.value() {
                return Err(ControlError::Corrupt(format!(
                    "log row {} holds entry {}",
                    k.value(),
                    entry.log_id.index
                )));
            }
            out.insert(k.value(), entry);
        }
        for e in queued {
            out.insert(e.log_id.index, e);
        }
        Ok(out.into_values().collect())
    }

    fn log_state(&self) -> Result<LogState<TypeConfig>, ControlError> {
        let queued = self.pending.last();
        let last_purged: Option<LogId> = self.read_meta(KEY_LAST_PURGED)?;
        let txn = self.db.begin_read()?;
        let log = txn.open_table(LOG)?;
        let on_disk = match log.last()? {
            Some((_, v)) => Some(decode::<Entry>("log entry", v.value())?.log_id),
            None => None,
        };
        let last = [queued, on_disk, last_purged]
            .into_iter()
            .flatten()
            .max_by_key(|l| l.index);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
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
        let this = self.clone();
        let (start, end) = (range.start_bound().cloned(), range.end_bound().cloned());
        blocking(move || this.entries(start, end))
            .await
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let this = self.clone();
        blocking(move || this.log_state())
            .await
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.write_meta(KEY_VOTE, vote, true)
            .await
            .map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        let this = self.clone();
        blocking(move || this.read_meta(KEY_VOTE))
            .await
            .map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Read, e))
    }

    /// Persisted, but not waited for: the row rides on the next append's
    /// fsync, or on the writer's own flush [`log_writer::FLUSH_AFTER`]
    /// later when nothing else comes. openraft 0.9 awaits this between
    /// commit and apply, so a durable write here was a third fsync on every
    /// write's path. The row must reach disk soon, though: after a restart
    /// of every member openraft re-applies up to this id from the log at
    /// once; without it, entries whose non-durable apply was lost waited
    /// for a commit in the new term, and a leader restored in its old term
    /// did not advance the commit index (control_raft phase 3 lost one
    /// applied request that way). It can never get ahead of the log: the
    /// entries it names were appended (durably) before it was queued.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let value =
            encode(&committed).map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, e))?;
        // Nobody waits for the answer; a failed commit fails the next
        // append of the same writer too, which openraft does see.
        let (done, _) = oneshot::channel();
        self.writer
            .send(Op::Meta {
                key: KEY_COMMITTED,
                value,
                durable: false,
                done,
            })
            .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let this = self.clone();
        blocking(move || Ok(this.read_meta::<Option<LogId>>(KEY_COMMITTED)?.flatten()))
            .await
            .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Read, e))
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
        self.pending.insert(&entries);
        self.write(|done| Op::Append {
            entries,
            callback,
            done,
        })
        .await
        .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, e))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.pending.truncate(log_id.index);
        self.write(|done| Op::Truncate {
            from: log_id.index,
            done,
        })
        .await
        .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.pending.purge(log_id.index);
        self.write(|done| Op::Purge { upto: log_id, done })
            .await
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }
}
