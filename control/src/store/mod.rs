//! `control.redb`: the Raft log, vote, committed index and the state
//! machine, in one redb file of its own (layout in `docs/formats.md`,
//! "control.redb").
//!
//! One file for both halves matters for crash safety: redb commits are
//! totally ordered, so the durable commits of the log (append, vote,
//! truncate, purge) also make every earlier state machine commit durable.
//! State machine commits can therefore skip the fsync: after a crash the
//! state machine is at worst behind the durable log, and openraft re-applies
//! the committed tail.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableTable, TableDefinition};

use crate::error::ControlError;

mod log_store;
mod log_writer;
mod state_machine;

pub use log_store::LogStore;
pub use state_machine::{SNAPSHOT_FORMAT, SnapshotBuilder, StateMachineStore, StateReader};

/// Format of `control.redb`; bump on any incompatible change.
pub const STORE_FORMAT: u64 = 1;

/// `meta`: format version and the log store's single values (JSON).
pub(crate) const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");
/// `log`: index → JSON `Entry`.
pub(crate) const LOG: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("log");

pub(crate) const KEY_FORMAT: &str = "format";
pub(crate) const KEY_VOTE: &str = "vote";
pub(crate) const KEY_COMMITTED: &str = "committed";
pub(crate) const KEY_LAST_PURGED: &str = "last_purged";

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

/// Opens (creating if absent) the control store at `path` and returns its
/// two halves, ready to hand to `openraft::Raft::new`.
pub fn open_store(path: &Path) -> Result<(LogStore, StateMachineStore), ControlError> {
    let db = Arc::new(Database::create(path)?);
    check_format(&db)?;
    let log = LogStore::new(db.clone())?;
    let sm = StateMachineStore::load(db)?;
    Ok((log, sm))
}

/// Stamps a new file with [`STORE_FORMAT`], refuses a file of another one.
fn check_format(db: &Database) -> Result<(), ControlError> {
    let txn = db.begin_write()?;
    {
        let mut meta = txn.open_table(META)?;
        let found = match meta.get(KEY_FORMAT)? {
            Some(v) => Some(
                <[u8; 8]>::try_from(v.value())
                    .map(u64::from_le_bytes)
                    .map_err(|_| ControlError::Corrupt("format version is not 8 bytes".into()))?,
            ),
            None => None,
        };
        match found {
            Some(STORE_FORMAT) => {}
            Some(found) => {
                return Err(ControlError::Format {
                    found,
                    supported: STORE_FORMAT,
                });
            }
            None => {
                meta.insert(KEY_FORMAT, STORE_FORMAT.to_le_bytes().as_slice())?;
            }
        }
        txn.open_table(LOG)?;
        state_machine::create_tables(&txn)?;
    }
    txn.commit()?;
    Ok(())
}
