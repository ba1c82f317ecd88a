//! A member's control store: the Raft log, vote and committed id in the
//! control log (`<name>.wal/`, append-only segments, [`wal`]), and the
//! state machine in `<name>.redb` (layouts in `docs/formats.md` §12.2).
//!
//! The state machine's file follows its in-memory state: after a crash it
//! is at worst behind the durable log, and openraft re-applies the committed
//! tail. The log therefore must hold every entry the file has not: a
//! background flush writes the applies within 250 ms
//! (`state_machine/flusher.rs`), and the log writer flushes them before any
//! purge.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, Durability, ReadableTable, TableDefinition};

use crate::error::ControlError;
use crate::types::{Entry, LogId, Vote};

mod log_store;
mod log_writer;
mod state_machine;
mod tail;
mod wal;

pub use log_store::LogStore;
pub use state_machine::{SNAPSHOT_FORMAT, SnapshotBuilder, StateMachineStore, StateReader};

/// Format of the store; bump on any incompatible change. 1: the log in
/// redb's `log` and `meta` tables; 2: the log in `<name>.wal/` (format 1
/// files are migrated when opened).
pub const STORE_FORMAT: u64 = 2;

/// `meta`: format version (and, in format 1, the log's single values).
pub(crate) const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");
/// Format 1's `log`: index → JSON `Entry`. Empty and unused from format 2.
const LOG_V1: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("log");

pub(crate) const KEY_FORMAT: &str = "format";
const KEY_VOTE_V1: &str = "vote";
const KEY_COMMITTED_V1: &str = "committed";
const KEY_LAST_PURGED_V1: &str = "last_purged";

/// Runs blocking redb work off the async threads.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, ControlError>
where
    F: FnOnce() -> Result<T, ControlError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ControlError::Storage(format!("storage task failed: {e}")))?
}

/// Where the control log of the store at `path` lives: `control.redb` →
/// `control.wal/`.
pub fn log_dir(path: &Path) -> PathBuf {
    path.with_extension("wal")
}

/// Opens (creating if absent) the control store at `path` (the state
/// machine's redb file; the log beside it, [`log_dir`]) and returns its two
/// halves, ready to hand to `openraft::Raft::new`.
pub fn open_store(path: &Path) -> Result<(LogStore, StateMachineStore), ControlError> {
    let dir = log_dir(path);
    // Checked before redb creates the file, so that a refusal leaves
    // nothing behind.
    if !path.exists() && wal::Wal::exists(&dir)? {
        return Err(orphan_log(&dir));
    }
    let db = Arc::new(Database::create(path)?);
    prepare(&db, &dir)?;
    let (wal, appender) = wal::Wal::open(&dir)?;
    let sm = StateMachineStore::load(db)?;
    let log = LogStore::new(wal, appender, sm.persister())?;
    Ok((log, sm))
}

/// Brings a new store, or one of format 1, to [`STORE_FORMAT`] and refuses
/// a file of any other format, changing nothing then.
fn prepare(db: &Database, dir: &Path) -> Result<(), ControlError> {
    match read_format(db)? {
        Some(STORE_FORMAT) => {
            if !wal::Wal::exists(dir)? {
                return Err(ControlError::Corrupt(format!(
                    "the control log {} is missing (the state machine beside it needs it)",
                    dir.display()
                )));
            }
            Ok(())
        }
        Some(1) => migrate_v1(db, dir),
        Some(found) => Err(ControlError::Format {
            found,
            supported: STORE_FORMAT,
        }),
        None => {
            if wal::Wal::exists(dir)? {
                return Err(orphan_log(dir));
            }
            // A directory without segments is left from a creation that
            // did not finish.
            remove_dir_if_present(dir)?;
            wal::Wal::create(dir, None, None, None, &[])?;
            stamp(db, |_| Ok(()))
        }
    }
}

fn orphan_log(dir: &Path) -> ControlError {
    ControlError::Corrupt(format!(
        "a control log {} exists without its state machine file; move it aside to start afresh",
        dir.display()
    ))
}

fn read_format(db: &Database) -> Result<Option<u64>, ControlError> {
    // A write transaction, aborted: in a new file `meta` does not exist
    // yet, and a read transaction could not open it.
    let txn = db.begin_write()?;
    let found = {
        let meta = txn.open_table(META)?;
        let found = meta.get(KEY_FORMAT)?;
        match found {
            Some(v) => Some(
                <[u8; 8]>::try_from(v.value())
                    .map(u64::from_le_bytes)
                    .map_err(|_| ControlError::Corrupt("format version is not 8 bytes".into()))?,
            ),
            None => None,
        }
    };
    txn.abort()?;
    Ok(found)
}

/// In one durable transaction: the state machine's tables exist, `extra`
/// ran, and the file says [`STORE_FORMAT`].
fn stamp(
    db: &Database,
    extra: impl FnOnce(&redb::WriteTransaction) -> Result<(), ControlError>,
) -> Result<(), ControlError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    extra(&txn)?;
    state_machine::create_tables(&txn)?;
    txn.open_table(META)?
        .insert(KEY_FORMAT, STORE_FORMAT.to_le_bytes().as_slice())?;
    txn.commit()?;
    Ok(())
}

fn remove_dir_if_present(dir: &Path) -> Result<(), ControlError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ControlError::Io(format!("{}: {e}", dir.display()))),
    }
}

/// Moves a format-1 log (redb's `log` table and `meta` rows) into a new
/// control log, then drops it from redb and stamps format 2. Until that
/// last commit, redb's copy is the one that counts: a log directory found
/// beside a format-1 file is an earlier migration cut short, and is built
/// again.
fn migrate_v1(db: &Database, dir: &Path) -> Result<(), ControlError> {
    let (vote, committed, purged, entries) = {
        let txn = db.begin_write()?;
        let got = {
            let meta = txn.open_table(META)?;
            let row = |key: &str| -> Result<Option<Vec<u8>>, ControlError> {
                Ok(meta.get(key)?.map(|v| v.value().to_vec()))
            };
            let vote: Option<Vote> = row(KEY_VOTE_V1)?
                .map(|b| log_store::decode("vote", &b))
                .transpose()?;
            let committed: Option<LogId> = row(KEY_COMMITTED_V1)?
                .map(|b| log_store::decode::<Option<LogId>>("committed", &b))
                .transpose()?
                .flatten();
            let purged: Option<LogId> = row(KEY_LAST_PURGED_V1)?
                .map(|b| log_store::decode("last_purged", &b))
                .transpose()?;
            // A write transaction: a missing table opens empty (and the
            // transaction is aborted), any other failure is an error, never
            // an empty log.
            let mut entries = Vec::new();
            for item in txn.open_table(LOG_V1)?.iter()? {
                let (k, v) = item?;
                let e: Entry = log_store::decode("log entry", v.value())?;
                if e.log_id.index != k.value() {
                    return Err(ControlError::Corrupt(format!(
                        "log row {} holds entry {}",
                        k.value(),
                        e.log_id.index
                    )));
                }
                entries.push(e);
            }
            (vote, committed, purged, entries)
        };
        txn.abort()?;
        got
    };
    remove_dir_if_present(dir)?;
    wal::Wal::create(dir, vote, committed, purged, &entries)?;
    stamp(db, |txn| {
        txn.delete_table(LOG_V1)?;
        let mut meta = txn.open_table(META)?;
        for key in [KEY_VOTE_V1, KEY_COMMITTED_V1, KEY_LAST_PURGED_V1] {
            meta.remove(key)?;
        }
        Ok(())
    })?;
    tracing::info!(
        entries = entries.len(),
        log = %dir.display(),
        "control store: moved the Raft log out of redb (format 1 to 2)"
    );
    Ok(())
}
