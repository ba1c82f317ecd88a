//! Writes the state machine's changed rows to `control.redb`, many applies
//! at a time.
//!
//! An apply changes only the in-memory [`State`], which records the rows it
//! changed ([`State::take_changes`]). [`Persister::flush`] writes those rows,
//! with `last_applied` and the other single values, in one durable
//! transaction. Until it does, the file is behind the applied state, which
//! is safe for the same reason non-durable applies were: openraft re-applies
//! the committed entries after `last_applied` from the log, and the log
//! keeps them until a flush covers them (the log writer flushes before any
//! purge). Rows and `last_applied` are written together, so the file is
//! always the state after some whole entry; the exactly-once rows with it.

use std::sync::{Arc, Mutex, PoisonError, RwLock};

use redb::{Database, Durability, WriteTransaction};

use super::{
    SM_APPS, SM_EXECUTIONS, SM_FLEET, SM_KV, SM_LIMITS, SM_META, SM_RESPONSES, SM_SESSIONS,
};
use crate::error::ControlError;
use crate::state::{Changes, State};
use crate::store::log_store::encode;
use crate::types::LogId;

/// The writer of one store's rows; shared by the flusher thread, the log
/// writer (before a purge), snapshot installs and shutdown.
pub(crate) struct Persister {
    db: Arc<Database>,
    state: Arc<RwLock<State>>,
    /// Held from taking the changes until their commit, and around a
    /// snapshot install: rows must reach the file in the order they were
    /// applied, never an older row over a newer one. Holds the last
    /// `last_applied` written.
    order: Mutex<Option<LogId>>,
}

impl Persister {
    pub(crate) fn new(db: Arc<Database>, state: Arc<RwLock<State>>) -> Self {
        let written = state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .last_applied;
        Self {
            db,
            state,
            order: Mutex::new(written),
        }
    }

    pub(crate) fn db(&self) -> &Arc<Database> {
        &self.db
    }

    /// Makes everything applied so far durable. Cheap when nothing was.
    pub(crate) fn flush(&self) -> Result<(), ControlError> {
        let mut written = self.order.lock().unwrap_or_else(PoisonError::into_inner);
        let (rows, taken) = {
            let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
            if state.last_applied == *written {
                return Ok(());
            }
            let taken = state.take_changes();
            match Rows::collect(&state, &taken) {
                Ok(rows) => (rows, taken),
                Err(e) => {
                    state.restore_changes(taken);
                    return Err(e);
                }
            }
        };
        let committed = (|| {
            let mut txn = self.db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            rows.write(&txn)?;
            txn.commit()?;
            Ok::<_, ControlError>(())
        })();
        match committed {
            Ok(()) => {
                *written = rows.last_applied;
                Ok(())
            }
            Err(e) => {
                // The rows stay owed: the next flush writes them with
                // whatever changed since (their current values).
                self.state
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .restore_changes(taken);
                Err(e)
            }
        }
    }

    /// Runs `install` (which replaces the state and the file's rows in one
    /// durable commit) with no flush in between, and records that the file
    /// now holds the state as of `last_applied`.
    pub(crate) fn replace<F>(&self, install: F) -> Result<(), ControlError>
    where
        F: FnOnce() -> Result<Option<LogId>, ControlError>,
    {
        let mut written = self.order.lock().unwrap_or_else(PoisonError::into_inner);
        *written = install()?;
        Ok(())
    }
}

/// A row to write, or to delete (`None`).
type Row<K, V> = (K, Option<V>);

/// The values of changed rows, encoded under the state lock and written
/// after it is released.
struct Rows {
    last_applied: Option<LogId>,
    meta: Vec<(&'static str, Vec<u8>)>,
    kv: Vec<Row<String, String>>,
    sessions: Vec<Row<String, u64>>,
    responses: Vec<Row<(String, u64), Vec<u8>>>,
    executions: Vec<Row<u64, Vec<u8>>>,
    limits: Vec<Row<u64, Vec<u8>>>,
    apps: Vec<Row<String, Vec<u8>>>,
    fleet: Option<Vec<u8>>,
}

impl Rows {
    fn collect(state: &State, changes: &Changes) -> Result<Self, ControlError> {
        Ok(Self {
            last_applied: state.last_applied,
            meta: meta(state)?,
            kv: changes
                .kv
                .iter()
                .map(|k| (k.clone(), state.kv.get(k).cloned()))
                .collect(),
            sessions: changes
                .sessions
                .iter()
                .map(|c| (c.clone(), state.sessions.get(c).map(|s| s.floor)))
                .collect(),
            responses: changes
                .responses
                .iter()
                .map(|(c, seq)| Ok(((c.clone(), *seq), encoded(state.response(c, *seq))?)))
                .collect::<Result<_, ControlError>>()?,
            executions: changes
                .executions
                .iter()
                .map(|e| Ok((*e, encoded(state.executions.get(e))?)))
                .collect::<Result<_, ControlError>>()?,
            limits: changes
                .limits
                .iter()
                .map(|id| Ok((*id, encoded(state.limits.get(id))?)))
                .collect::<Result<_, ControlError>>()?,
            apps: changes
                .apps
                .iter()
                .map(|n| Ok((n.clone(), encoded(state.apps.get(n))?)))
                .collect::<Result<_, ControlError>>()?,
            fleet: changes.fleet.then(|| encode(&state.fleet)).transpose()?,
        })
    }

    fn write(&self, txn: &WriteTransaction) -> Result<(), ControlError> {
        let mut meta = txn.open_table(SM_META)?;
        for (key, value) in &self.meta {
            meta.insert(*key, value.as_slice())?;
        }
        let mut kv = txn.open_table(SM_KV)?;
        for (key, value) in &self.kv {
            match value {
                Some(v) => kv.insert(key.as_str(), v.as_str())?,
                None => kv.remove(key.as_str())?,
            };
        }
        let mut sessions = txn.open_table(SM_SESSIONS)?;
        for (client, floor) in &self.sessions {
            match floor {
                Some(f) => sessions.insert(client.as_str(), *f)?,
                None => sessions.remove(client.as_str())?,
            };
        }
        let mut responses = txn.open_table(SM_RESPONSES)?;
        for ((client, seq), value) in &self.responses {
            match value {
                Some(v) => responses.insert((client.as_str(), *seq), v.as_slice())?,
                None => responses.remove((client.as_str(), *seq))?,
            };
        }
        let mut executions = txn.open_table(SM_EXECUTIONS)?;
        for (exec, value) in &self.executions {
            match value {
                Some(v) => executions.insert(exec, v.as_slice())?,
                None => executions.remove(exec)?,
            };
        }
        let mut limits = txn.open_table(SM_LIMITS)?;
        for (id, value) in &self.limits {
            match value {
                Some(v) => limits.insert(id, v.as_slice())?,
                None => limits.remove(id)?,
            };
        }
        let mut apps = txn.open_table(SM_APPS)?;
        for (name, value) in &self.apps {
            match value {
                Some(v) => apps.insert(name.as_str(), v.as_slice())?,
                None => apps.remove(name.as_str())?,
            };
        }
        if let Some(fleet) = &self.fleet {
            txn.open_table(SM_FLEET)?
                .insert("fleet", fleet.as_slice())?;
        }
        Ok(())
    }
}

/// A present row's encoding, or `None` for a row to delete.
fn encoded<T: serde::Serialize>(value: Option<&T>) -> Result<Option<Vec<u8>>, ControlError> {
    value.map(encode).transpose()
}

/// `sm_meta`'s single values.
pub(super) fn meta(state: &State) -> Result<Vec<(&'static str, Vec<u8>)>, ControlError> {
    Ok(vec![
        ("last_applied", encode(&state.last_applied)?),
        ("membership", encode(&state.membership)?),
        ("applied_requests", encode(&state.applied_requests)?),
    ])
}

#[cfg(test)]
mod tests;
