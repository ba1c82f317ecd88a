//! The Raft log and vote. Every write that openraft must be able to rely on
//! after a crash (append, vote, truncate, purge) is committed with
//! immediate durability before it is reported done. Unlike openraft's
//! rocksdb example, `append` calls its callback only after the fsync.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, StorageIOError};
use redb::{Database, Durability, ReadableDatabase, ReadableTable};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{KEY_COMMITTED, KEY_LAST_PURGED, KEY_VOTE, LOG, META, blocking};
use crate::error::ControlError;
use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};

/// openraft's `RaftLogStorage` over `control.redb`. Cheap to clone; clones
/// share the file.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    pub(crate) fn new(db: Arc<Database>) -> Self {
        Self { db }
    }

    fn read_meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, ControlError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        match meta.get(key)? {
            Some(v) => Ok(Some(decode(key, v.value())?)),
            None => Ok(None),
        }
    }

    fn write_meta<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        durability: Durability,
    ) -> Result<(), ControlError> {
        let bytes = encode(value)?;
        let mut txn = self.db.begin_write()?;
        txn.set_durability(durability)?;
        txn.open_table(META)?.insert(key, bytes.as_slice())?;
        txn.commit()?;
        Ok(())
    }

    fn entries(&self, start: Bound<u64>, end: Bound<u64>) -> Result<Vec<Entry>, ControlError> {
        let txn = self.db.begin_read()?;
        let log = txn.open_table(LOG)?;
        let mut out = Vec::new();
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
            out.push(entry);
        }
        Ok(out)
    }

    fn log_state(&self) -> Result<LogState<TypeConfig>, ControlError> {
        let last_purged: Option<LogId> = self.read_meta(KEY_LAST_PURGED)?;
        let txn = self.db.begin_read()?;
        let log = txn.open_table(LOG)?;
        let last = match log.last()? {
            Some((_, v)) => Some(decode::<Entry>("log entry", v.value())?.log_id),
            None => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    fn append_durably(&self, entries: Vec<Entry>) -> Result<(), ControlError> {
        let rows = entries
            .iter()
            .map(|e| Ok((e.log_id.index, encode(e)?)))
            .collect::<Result<Vec<_>, ControlError>>()?;
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        {
            let mut log = txn.open_table(LOG)?;
            for (index, bytes) in &rows {
                log.insert(index, bytes.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Deletes `index >= from` (truncate) in one durable commit.
    fn truncate_from(&self, from: u64) -> Result<(), ControlError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        txn.open_table(LOG)?.retain_in(from.., |_, _| false)?;
        txn.commit()?;
        Ok(())
    }

    /// Records `upto` as purged and deletes `index <= upto.index`, in one
    /// durable commit: the purged id is never behind what is gone.
    fn purge_upto(&self, upto: LogId) -> Result<(), ControlError> {
        let bytes = encode(&upto)?;
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        txn.open_table(META)?
            .insert(KEY_LAST_PURGED, bytes.as_slice())?;
        txn.open_table(LOG)?
            .retain_in(..=upto.index, |_, _| false)?;
        txn.commit()?;
        Ok(())
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
        let this = self.clone();
        let vote = *vote;
        blocking(move || this.write_meta(KEY_VOTE, &vote, Durability::Immediate))
            .await
            .map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        let this = self.clone();
        blocking(move || this.read_meta(KEY_VOTE))
            .await
            .map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Read, e))
    }

    /// The committed id only speeds up a restart (re-applying the committed
    /// tail); losing the latest one in a crash is harmless, so no fsync.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let this = self.clone();
        blocking(move || this.write_meta(KEY_COMMITTED, &committed, Durability::None))
            .await
            .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let this = self.clone();
        blocking(move || Ok(this.read_meta::<Option<LogId>>(KEY_COMMITTED)?.flatten()))
            .await
            .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Read, e))
    }

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
        let this = self.clone();
        match blocking(move || this.append_durably(entries)).await {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(io_err(ErrorSubject::Logs, ErrorVerb::Write, e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let this = self.clone();
        blocking(move || this.truncate_from(log_id.index))
            .await
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let this = self.clone();
        blocking(move || this.purge_upto(log_id))
            .await
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }
}
