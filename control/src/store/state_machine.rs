//! The state machine: entries go through the pure [`crate::state::apply`]
//! on an in-memory [`State`]; [`persister`] writes the rows they changed to
//! `control.redb`, many applies at a time.
//!
//! An apply touches no file, so it runs on openraft's state machine task
//! with no hop to a blocking thread. The file follows within
//! [`flusher::FLUSH_EVERY`] (and before any purge of the log, and on
//! shutdown): a crash loses at most that much of the applied state, which
//! openraft re-applies from the durable log; the exactly-once rows are
//! written with `last_applied`, so a re-applied request is new only if its
//! first application was lost too. Snapshot installs are durable at once,
//! since they replace state the log no longer has.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, StorageIOError};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::blocking;
use super::log_store::{decode, encode};
use crate::apps::App;
use crate::drcond::Limit;
use crate::error::ControlError;
use crate::execution::Execution;
use crate::state::{self, Epochs, Session, State};
use crate::types::{
    Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};

mod flusher;
mod persister;
mod reader;

use flusher::Flusher;

pub(crate) use persister::Persister;
pub use reader::StateReader;

/// `sm_meta`: "last_applied", "membership", "applied_requests" (JSON).
const SM_META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("sm_meta");
/// `sm_kv`: register key → value.
const SM_KV: TableDefinition<'_, &str, &str> = TableDefinition::new("sm_kv");
/// `sm_sessions`: client id → floor (requests below it are retired).
const SM_SESSIONS: TableDefinition<'_, &str, u64> = TableDefinition::new("sm_sessions");
/// `sm_responses`: (client id, seq) → JSON first `Response`.
const SM_RESPONSES: TableDefinition<'_, (&str, u64), &[u8]> = TableDefinition::new("sm_responses");
/// `sm_executions`: exec (log index) → JSON `Execution`.
const SM_EXECUTIONS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("sm_executions");
/// `sm_limits`: limit id → JSON `Limit` (drcond).
const SM_LIMITS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("sm_limits");
/// `sm_apps`: app name → JSON `App` (FastContainer's configuration DB).
const SM_APPS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("sm_apps");
/// `sm_fleet`: "fleet" → JSON `Fleet` (FastContainer's instance registry
/// and assignments; small, rewritten whole when it changes).
const SM_FLEET: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("sm_fleet");
/// `snapshot`: "meta" → JSON `SnapshotMeta`, "data" → snapshot bytes.
const SNAPSHOT: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("snapshot");

/// Version of the snapshot encoding ([`SnapshotFile`]).
pub const SNAPSHOT_FORMAT: u32 = 1;

/// A snapshot's bytes: the whole state as JSON, versioned.
#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    format: u32,
    state: State,
}

pub(crate) fn create_tables(txn: &WriteTransaction) -> Result<(), ControlError> {
    txn.open_table(SM_META)?;
    txn.open_table(SM_KV)?;
    txn.open_table(SM_SESSIONS)?;
    txn.open_table(SM_RESPONSES)?;
    txn.open_table(SM_EXECUTIONS)?;
    txn.open_table(SM_LIMITS)?;
    txn.open_table(SM_APPS)?;
    txn.open_table(SM_FLEET)?;
    txn.open_table(SNAPSHOT)?;
    Ok(())
}

/// openraft's `RaftStateMachine` over `control.redb`.
pub struct StateMachineStore {
    state: Arc<RwLock<State>>,
    applied: watch::Sender<Option<LogId>>,
    epochs: watch::Sender<Epochs>,
    persister: Arc<Persister>,
    flusher: Arc<Flusher>,
}

/// Builds snapshots from a copy of the state taken under a short lock.
pub struct SnapshotBuilder {
    db: Arc<Database>,
    state: Arc<RwLock<State>>,
}

impl StateMachineStore {
    pub(crate) fn load(db: Arc<Database>) -> Result<Self, ControlError> {
        let state = Arc::new(RwLock::new(load_state(&db)?));
        let last_applied = state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .last_applied;
        let (applied, _) = watch::channel(last_applied);
        let (epochs, _) = watch::channel(Epochs::default());
        let persister = Arc::new(Persister::new(db, state.clone()));
        let flusher = Arc::new(Flusher::start(persister.clone())?);
        Ok(Self {
            state,
            applied,
            epochs,
            persister,
            flusher,
        })
    }

    /// A read handle on the applied state; stays valid after this store is
    /// handed to openraft.
    pub fn reader(&self) -> StateReader {
        StateReader::new(
            self.state.clone(),
            self.applied.subscribe(),
            self.epochs.subscribe(),
        )
    }

    /// The writer of this store's rows (the log writer flushes through it
    /// before a purge).
    pub(crate) fn persister(&self) -> Arc<Persister> {
        self.persister.clone()
    }

    fn apply_batch(&self, entries: Vec<Entry>) -> Result<Vec<crate::Response>, ControlError> {
        let mut state = self
            .state
            .write()
            .map_err(|_| ControlError::Storage("state lock poisoned".into()))?;
        let responses = entries
            .iter()
            .map(|e| state::apply(&mut state, e))
            .collect();
        self.published(&state);
        Ok(responses)
    }

    /// Tells the watchers what changed: every apply moves `applied`; the
    /// epochs move only when rows that hosts act on did.
    fn published(&self, state: &State) {
        self.applied.send_replace(state.last_applied);
        let epochs = state.epochs();
        self.epochs.send_if_modified(|e| {
            let changed = *e != epochs;
            *e = epochs;
            changed
        });
    }

    fn install(&self, meta: SnapshotMeta, bytes: Vec<u8>) -> Result<(), ControlError> {
        let file: SnapshotFile = decode("snapshot", &bytes)?;
        if file.format != SNAPSHOT_FORMAT {
            return Err(ControlError::Format {
                found: u64::from(file.format),
                supported: u64::from(SNAPSHOT_FORMAT),
            });
        }
        let mut incoming = file.state;
        if incoming.last_applied != meta.last_log_id || incoming.membership != meta.last_membership
        {
            return Err(ControlError::Corrupt(format!(
                "snapshot {} content does not match its metadata",
                meta.snapshot_id
            )));
        }
        self.persister.replace(|| {
            let mut state = self
                .state
                .write()
                .map_err(|_| ControlError::Storage("state lock poisoned".into()))?;
            self.write_snapshot_state(&meta, &bytes, &incoming)?;
            incoming.take_changes();
            incoming.follow_epochs(state.epochs());
            *state = incoming;
            self.published(&state);
            Ok(state.last_applied)
        })
    }

    /// Replaces every row of the file with `incoming`'s, durably.
    fn write_snapshot_state(
        &self,
        meta: &SnapshotMeta,
        bytes: &[u8],
        incoming: &State,
    ) -> Result<(), ControlError> {
        let mut txn = self.persister.db().begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        // Replace, not merge: rows the snapshot lacks must go.
        txn.delete_table(SM_KV)?;
        txn.delete_table(SM_SESSIONS)?;
        txn.delete_table(SM_RESPONSES)?;
        txn.delete_table(SM_EXECUTIONS)?;
        txn.delete_table(SM_LIMITS)?;
        txn.delete_table(SM_APPS)?;
        txn.delete_table(SM_FLEET)?;
        create_tables(&txn)?;
        write_all(&txn, incoming)?;
        save_snapshot(&txn, meta, bytes)?;
        txn.commit()?;
        Ok(())
    }

    fn current_snapshot(&self) -> Result<Option<Snapshot>, ControlError> {
        let txn = self.persister.db().begin_read()?;
        let table = txn.open_table(SNAPSHOT)?;
        let (Some(meta), Some(data)) = (table.get("meta")?, table.get("data")?) else {
            return Ok(None);
        };
        Ok(Some(Snapshot {
            meta: decode("snapshot meta", meta.value())?,
            snapshot: Box::new(std::io::Cursor::new(data.value().to_vec())),
        }))
    }
}

impl SnapshotBuilder {
    fn build(&self) -> Result<Snapshot, ControlError> {
        let state = self
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let built_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let snapshot_id = match state.last_applied {
            Some(l) => format!("{}-{}-{built_ms}", l.leader_id, l.index),
            None => format!("empty-{built_ms}"),
        };
        let meta = SnapshotMeta {
            last_log_id: state.last_applied,
            last_membership: state.membership.clone(),
            snapshot_id,
        };
        let bytes = encode(&SnapshotFile {
            format: SNAPSHOT_FORMAT,
            state,
        })?;
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        save_snapshot(&txn, &meta, &bytes)?;
        txn.commit()?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(std::io::Cursor::new(bytes)),
        })
    }
}

fn save_snapshot(
    txn: &WriteTransaction,
    meta: &SnapshotMeta,
    bytes: &[u8],
) -> Result<(), ControlError> {
    let mut table = txn.open_table(SNAPSHOT)?;
    table.insert("meta", encode(meta)?.as_slice())?;
    table.insert("data", bytes)?;
    Ok(())
}

fn write_meta(txn: &WriteTransaction, state: &State) -> Result<(), ControlError> {
    let mut table = txn.open_table(SM_META)?;
    for (key, value) in persister::meta(state)? {
        table.insert(key, value.as_slice())?;
    }
    Ok(())
}

/// Writes every row of `state` into freshly created tables.
pub(super) fn write_all(txn: &WriteTransaction, state: &State) -> Result<(), ControlError> {
    write_meta(txn, state)?;
    let mut kv = txn.open_table(SM_KV)?;
    for (k, v) in &state.kv {
        kv.insert(k.as_str(), v.as_str())?;
    }
    let mut sessions = txn.open_table(SM_SESSIONS)?;
    let mut responses = txn.open_table(SM_RESPONSES)?;
    for (client, s) in &state.sessions {
        sessions.insert(client.as_str(), s.floor)?;
        for (seq, r) in &s.responses {
            responses.insert((client.as_str(), *seq), encode(r)?.as_slice())?;
        }
    }
    let mut executions = txn.open_table(SM_EXECUTIONS)?;
    for (exec, e) in &state.executions {
        executions.insert(exec, encode(e)?.as_slice())?;
    }
    let mut limits = txn.open_table(SM_LIMITS)?;
    for (id, l) in &state.limits {
        limits.insert(id, encode(l)?.as_slice())?;
    }
    let mut apps = txn.open_table(SM_APPS)?;
    for (name, a) in &state.apps {
        apps.insert(name.as_str(), encode(a)?.as_slice())?;
    }
    let mut fleet = txn.open_table(SM_FLEET)?;
    fleet.insert("fleet", encode(&state.fleet)?.as_slice())?;
    Ok(())
}

pub(super) fn load_state(db: &Database) -> Result<State, ControlError> {
    let txn = db.begin_read()?;
    let mut state = State::default();
    let meta = txn.open_table(SM_META)?;
    if let Some(v) = meta.get("last_applied")? {
        state.last_applied = decode("last_applied", v.value())?;
    }
    if let Some(v) = meta.get("membership")? {
        state.membership = decode::<StoredMembership>("membership", v.value())?;
    }
    if let Some(v) = meta.get("applied_requests")? {
        state.applied_requests = decode("applied_requests", v.value())?;
    }
    for item in txn.open_table(SM_KV)?.iter()? {
        let (k, v) = item?;
        state
            .kv
            .insert(k.value().to_string(), v.value().to_string());
    }
    for item in txn.open_table(SM_SESSIONS)?.iter()? {
        let (k, v) = item?;
        state.sessions.insert(
            k.value().to_string(),
            Session {
                floor: v.value(),
                ..Session::default()
            },
        );
    }
    for item in txn.open_table(SM_RESPONSES)?.iter()? {
        let (k, v) = item?;
        let (client, seq) = k.value();
        let response = decode("response", v.value())?;
        state
            .sessions
            .entry(client.to_string())
            .or_default()
            .responses
            .insert(seq, response);
    }
    for item in txn.open_table(SM_EXECUTIONS)?.iter()? {
        let (k, v) = item?;
        let e: Execution = decode("execution", v.value())?;
        state.executions.insert(k.value(), e);
    }
    // A store written before drcond has no such table (opening it in a
    // read transaction would fail): no limits.
    match txn.open_table(SM_LIMITS) {
        Ok(table) => {
            for item in table.iter()? {
                let (k, v) = item?;
                let l: Limit = decode("limit", v.value())?;
                state.limits.insert(k.value(), l);
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(e.into()),
    }
    // Likewise before FastContainer: no apps.
    match txn.open_table(SM_APPS) {
        Ok(table) => {
            for item in table.iter()? {
                let (k, v) = item?;
                let a: App = decode("app", v.value())?;
                state.apps.insert(k.value().to_string(), a);
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(e.into()),
    }
    // And before the instance registry: an empty fleet.
    match txn.open_table(SM_FLEET) {
        Ok(table) => {
            if let Some(v) = table.get("fleet")? {
                state.fleet = decode("fleet", v.value())?;
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(state)
}

fn sm_err(verb: ErrorVerb, e: ControlError) -> StorageError {
    StorageIOError::new(ErrorSubject::StateMachine, verb, &e).into()
}

fn snap_err(verb: ErrorVerb, e: ControlError) -> StorageError {
    StorageIOError::new(ErrorSubject::Snapshot(None), verb, &e).into()
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let this = Self {
            db: self.db.clone(),
            state: self.state.clone(),
        };
        blocking(move || this.build())
            .await
            .map_err(|e| snap_err(ErrorVerb::Write, e))
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<crate::Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // In memory only (see the module's comment): no blocking hop.
        let entries: Vec<Entry> = entries.into_iter().collect();
        self.apply_batch(entries)
            .map_err(|e| sm_err(ErrorVerb::Write, e))
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            db: self.persister.db().clone(),
            state: self.state.clone(),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<std::io::Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(std::io::Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<std::io::Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let this = self.handle();
        let meta = meta.clone();
        let bytes = snapshot.into_inner();
        blocking(move || this.install(meta, bytes))
            .await
            .map_err(|e| snap_err(ErrorVerb::Write, e))
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let this = self.handle();
        blocking(move || this.current_snapshot())
            .await
            .map_err(|e| snap_err(ErrorVerb::Read, e))
    }
}

impl StateMachineStore {
    /// A second handle on the same store, to move into blocking tasks.
    fn handle(&self) -> Self {
        Self {
            state: self.state.clone(),
            applied: self.applied.clone(),
            epochs: self.epochs.clone(),
            persister: self.persister.clone(),
            flusher: self.flusher.clone(),
        }
    }
}
