//! The master's durable state, in one redb file.
//!
//! Tables (format documented in `docs/formats.md`, versioned by `meta.schema`):
//! - `volumes`: name → JSON [`VolumeRow`]
//! - `versions`: (name, number) → JSON [`VersionInfo`]
//! - `nodes`: node id → JSON [`NodeRow`]
//! - `locations`: object id (32 bytes) →→ node ids (multimap)
//! - `tokens`: BLAKE3 hash of a bearer token's secret (hex) → JSON
//!   [`TokenRow`] (added in place: a file without it gets it on open)
//! - `node_locations`: (node id, object id) → announce epoch: the same
//!   locations indexed by node, so one node's set can be swept (resync)
//!   without reading every location of the cluster
//!
//! Version commits are durable when they return. Location updates are soft
//! state (slaves re-announce what they hold), so they are written without an
//! fsync and made durable by the next durable commit or by
//! [`flush_periodically`] within a second. A version is only accepted when its
//! root's location is known, and that commit makes the location durable too.

use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use elton_proto::record::RECORD_FORMAT;
use elton_proto::{HttpAddr, NodeId, ObjectId, Version, VersionInfo, VolumeName};
use redb::{
    Database, Durability, MultimapTableDefinition, ReadableDatabase, ReadableMultimapTable,
    ReadableTable, TableDefinition,
};
use serde::{Deserialize, Serialize};

use crate::MasterError;
use crate::file_guard::FileGuard;
use crate::incarnation::{Id, Stamp};
use crate::planner::Holding;

mod admin;
pub use admin::VolumeRemoval;

const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
const VOLUMES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("volumes");
const VERSIONS: TableDefinition<'_, (&str, u64), &[u8]> = TableDefinition::new("versions");
const NODES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("nodes");
const LOCATIONS: MultimapTableDefinition<'_, &[u8], &str> =
    MultimapTableDefinition::new("locations");
const TOKENS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("tokens");
const NODE_LOCATIONS: TableDefinition<'_, (&str, &[u8]), u64> =
    TableDefinition::new("node_locations");
/// `meta` key of the announce epoch: every location written is stamped with
/// it, and a resync starts by raising it (see [`MetaStore::begin_resync`]).
const EPOCH_KEY: &str = "announce_epoch";
/// `meta` keys of the cluster id and incarnation (see [`crate::incarnation`];
/// absent in files of builds before them).
const CLUSTER_KEY: &str = "cluster_id";
const INCARNATION_KEY: &str = "incarnation";
/// `meta` key of the last incarnation whose commits were opened to all
/// (see [`crate::settle`]).
const SERVED_KEY: &str = "served_incarnation";

/// Schema of this file; bump on any incompatible change. 2 added
/// `node_locations`, which a build that does not maintain it would let go
/// stale, so 1-readers must not open a 2 file; 1 files are upgraded in place.
pub const SCHEMA_VERSION: u64 = 2;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRow {
    pub name: VolumeName,
    pub home: String,
    pub created_unix: u64,
    /// 0 while the volume has no version.
    pub head: u64,
    /// Retention: keep only the newest `keep` versions; absent (or 0) keeps
    /// every version. Absent in rows written before it existed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub keep: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A bearer token as the master keeps it: never the secret itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRow {
    /// Public id: the first 16 hex digits of the secret's hash.
    pub id: String,
    pub name: String,
    /// "read", "write" or "admin".
    pub scope: String,
    pub created_unix: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRow {
    pub id: NodeId,
    pub http_addr: String,
}

/// What a committer asks to publish.
#[derive(Clone, Debug)]
pub struct NewVersion {
    pub volume: VolumeName,
    pub parent: u64,
    pub root: ObjectId,
    pub message: String,
    pub author: String,
    pub host: String,
    pub time: u64,
    /// Whether the root must have a known location in this cluster. False
    /// only for commits forwarded by a peer master, which checked it in its
    /// own cluster (the root lives there).
    pub check_root: bool,
}

pub struct MetaStore {
    db: Database,
    unflushed: AtomicBool,
    /// Notices the file being removed, replaced or truncated under us.
    guard: FileGuard,
}

fn decode<T: for<'de> Deserialize<'de>>(what: &str, bytes: &[u8]) -> Result<T, MasterError> {
    serde_json::from_slice(bytes)
        .map_err(|e| MasterError::Storage(format!("corrupt {what} row: {e}")))
}

fn parse_node(raw: &str) -> Result<NodeId, MasterError> {
    raw.parse()
        .map_err(|e| MasterError::Storage(format!("corrupt location: {e}")))
}

fn encode<T: Serialize>(row: &T) -> Vec<u8> {
    // Rows are plain structs of strings and integers: serializing cannot fail.
    serde_json::to_vec(row).unwrap_or_default()
}

impl MetaStore {
    /// Opens `path`, creating an empty database if there is none.
    pub fn open(path: &Path) -> Result<Self, MasterError> {
        Self::init(path, Database::create(path)?)
    }

    /// Opens `path`, which must exist.
    pub fn open_existing(path: &Path) -> Result<Self, MasterError> {
        let db = Database::open(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => MasterError::InUse(format!(
                "{} is in use by another process (is a master running on it?)",
                path.display()
            )),
            e => MasterError::Storage(e.to_string()),
        })?;
        Self::init(path, db)
    }

    fn init(path: &Path, db: Database) -> Result<Self, MasterError> {
        // A current file is only read here: opening one to check whether it
        // may be served (see `datadir`) must not change it.
        if !is_current(&db) {
            Self::create_tables(path, &db)?;
        }
        Ok(Self {
            db,
            unflushed: AtomicBool::new(false),
            guard: FileGuard::new(path)?,
        })
    }

    /// Creates what a new file lacks, or upgrades an older schema.
    fn create_tables(path: &Path, db: &Database) -> Result<(), MasterError> {
        let txn = db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let schema = meta.get("schema")?.map(|g| g.value());
            match schema {
                None => {
                    meta.insert("schema", SCHEMA_VERSION)?;
                }
                Some(SCHEMA_VERSION) => {}
                Some(1) => {
                    index_by_node(&txn)?;
                    meta.insert("schema", SCHEMA_VERSION)?;
                    tracing::info!(path = %path.display(), "metadata store upgraded to schema 2");
                }
                Some(other) => {
                    return Err(MasterError::Storage(format!(
                        "{} has schema {other}; this build reads {SCHEMA_VERSION}",
                        path.display()
                    )));
                }
            }
            txn.open_table(VOLUMES)?;
            txn.open_table(VERSIONS)?;
            txn.open_table(NODES)?;
            txn.open_multimap_table(LOCATIONS)?;
            txn.open_table(TOKENS)?;
            txn.open_table(NODE_LOCATIONS)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// The cluster id and incarnation recorded in this file; `None` in a
    /// file of a build before them.
    pub fn stamp(&self) -> Result<Option<Stamp>, MasterError> {
        read_stamp(&self.db.begin_read()?)
    }

    /// Reads the stamp of the file at `path` without changing it (redb's
    /// read-only mode), to decide whether it may be served at all. A file
    /// left by a crash cannot be read so: it needs the repair a writable
    /// open makes.
    pub fn peek(path: &Path) -> Result<Peeked, MasterError> {
        let db = match redb::ReadOnlyDatabase::open(path) {
            Ok(db) => db,
            Err(redb::DatabaseError::RepairAborted) => return Ok(Peeked::NeedsRepair),
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(MasterError::InUse(format!(
                    "{} is in use by another process (is a master running on it?)",
                    path.display()
                )));
            }
            Err(e) => return Err(e.into()),
        };
        let txn = db.begin_read()?;
        let schema = match txn.open_table(META) {
            Ok(meta) => meta.get("schema")?.map(|g| g.value()),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(e.into()),
        };
        if let Some(other) = schema.filter(|s| *s > SCHEMA_VERSION) {
            return Err(MasterError::Storage(format!(
                "{} has schema {other}; this build reads {SCHEMA_VERSION}",
                path.display()
            )));
        }
        Ok(Peeked::Stamp(read_stamp(&txn)?))
    }

    /// Records the cluster id and incarnation; durable on return.
    pub fn set_stamp(&self, stamp: Stamp) -> Result<(), MasterError> {
        let txn = self.db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            meta.insert(CLUSTER_KEY, stamp.cluster.get())?;
            meta.insert(INCARNATION_KEY, stamp.incarnation.get())?;
        }
        self.commit_durable(txn)
    }

    /// Whether commits were ever opened under the current incarnation
    /// (false right after a restore or a new incarnation).
    pub fn incarnation_served(&self) -> Result<bool, MasterError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        let served = meta.get(SERVED_KEY)?.map(|g| g.value());
        let current = meta.get(INCARNATION_KEY)?.map(|g| g.value());
        Ok(served.is_some() && served == current)
    }

    /// Records that commits are open under the current incarnation.
    pub fn set_incarnation_served(&self) -> Result<(), MasterError> {
        let txn = self.db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let current = meta.get(INCARNATION_KEY)?.map_or(0, |g| g.value());
            meta.insert(SERVED_KEY, current)?;
        }
        self.commit_durable(txn)
    }

    /// Refuses every write from now on when the file was removed, replaced
    /// or truncated; see [`FileGuard`].
    pub fn check_file(&self) -> Result<(), MasterError> {
        self.guard.check()
    }

    /// Writes a consistent copy of the whole database (one read
    /// transaction) to `dest`, a new redb file: the online backup.
    pub fn backup_to(&self, dest: &Path) -> Result<BackupInfo, MasterError> {
        let src = self.db.begin_read()?;
        let out = Database::create(dest)?;
        let txn = out.begin_write()?;
        let volumes = {
            copy_table(&src, &txn, META)?;
            let volumes = copy_table(&src, &txn, VOLUMES)?;
            copy_table(&src, &txn, VERSIONS)?;
            copy_table(&src, &txn, NODES)?;
            copy_table(&src, &txn, TOKENS)?;
            copy_table(&src, &txn, NODE_LOCATIONS)?;
            let from = src.open_multimap_table(LOCATIONS)?;
            let mut to = txn.open_multimap_table(LOCATIONS)?;
            for item in from.iter()? {
                let (k, values) = item?;
                for v in values {
                    to.insert(k.value(), v?.value())?;
                }
            }
            volumes
        };
        txn.commit()?;
        drop(out);
        let stamp = {
            let meta = src.open_table(META)?;
            let get = |key: &str| -> Result<u64, MasterError> {
                Ok(meta.get(key)?.map_or(0, |g| g.value()))
            };
            (get(CLUSTER_KEY)?, get(INCARNATION_KEY)?)
        };
        Ok(BackupInfo {
            volumes,
            cluster: Id::new(stamp.0),
            incarnation: Id::new(stamp.1),
        })
    }

    pub fn create_volume(
        &self,
        name: &VolumeName,
        home: &str,
        now: u64,
        keep: u64,
    ) -> Result<VolumeRow, MasterError> {
        let txn = self.db.begin_write()?;
        let row = {
            let mut volumes = txn.open_table(VOLUMES)?;
            if volumes.get(name.as_str())?.is_some() {
                return Err(MasterError::VolumeExists(name.to_string()));
            }
            admin::refuse_deleted(&txn, name)?;
            let row = VolumeRow {
                name: name.clone(),
                home: home.into(),
                created_unix: now,
                head: 0,
                keep,
            };
            volumes.insert(name.as_str(), encode(&row).as_slice())?;
            row
        };
        self.commit_durable(txn)?;
        Ok(row)
    }

    pub fn volume(&self, name: &VolumeName) -> Result<VolumeRow, MasterError> {
        let txn = self.db.begin_read()?;
        let volumes = txn.open_table(VOLUMES)?;
        let guard = volumes
            .get(name.as_str())?
            .ok_or_else(|| MasterError::UnknownVolume(name.to_string()))?;
        decode("volume", guard.value())
    }

    pub fn volumes(&self) -> Result<Vec<VolumeRow>, MasterError> {
        let txn = self.db.begin_read()?;
        let volumes = txn.open_table(VOLUMES)?;
        let mut out = Vec::new();
        for item in volumes.iter()? {
            let (_, v) = item?;
            out.push(decode("volume", v.value())?);
        }
        Ok(out)
    }

    /// Compare-and-set on the head, in one durable transaction: either the
    /// version record and the new head are both written, or neither is.
    pub fn commit(&self, new: NewVersion) -> Result<VersionInfo, MasterError> {
        let txn = self.db.begin_write()?;
        let info = {
            let mut volumes = txn.open_table(VOLUMES)?;
            let mut row: VolumeRow = match volumes.get(new.volume.as_str())? {
                Some(g) => decode("volume", g.value())?,
                None => return Err(MasterError::UnknownVolume(new.volume.to_string())),
            };
            if row.head != new.parent {
                return Err(MasterError::Conflict {
                    volume: new.volume.to_string(),
                    head: row.head,
                    parent: new.parent,
                });
            }
            let locations = txn.open_multimap_table(LOCATIONS)?;
            if new.check_root && locations.get(new.root.as_bytes().as_slice())?.is_empty() {
                return Err(MasterError::RootNotStored(new.root.to_string()));
            }
            let version = Version::after(row.head);
            let info = VersionInfo {
                format: RECORD_FORMAT,
                volume: new.volume.clone(),
                version,
                root: new.root,
                parent: Version::new(new.parent),
                message: new.message,
                author: new.author,
                host: new.host,
                time: new.time,
            };
            let mut versions = txn.open_table(VERSIONS)?;
            versions.insert(
                (new.volume.as_str(), version.get()),
                encode(&info).as_slice(),
            )?;
            row.head = version.get();
            volumes.insert(new.volume.as_str(), encode(&row).as_slice())?;
            drop_beyond_retention(&mut versions, &row)?;
            info
        };
        self.commit_durable(txn)?;
        Ok(info)
    }

    /// The root of version `parent` (`None` for 0, a first commit), for
    /// checking a commit on it. A parent that is not the head is answered
    /// with the conflict the compare-and-set would give, before any work.
    pub fn parent_root(
        &self,
        volume: &VolumeName,
        parent: u64,
    ) -> Result<Option<ObjectId>, MasterError> {
        let row = self.volume(volume)?;
        if row.head != parent {
            return Err(MasterError::Conflict {
                volume: volume.to_string(),
                head: row.head,
                parent,
            });
        }
        if parent == 0 {
            return Ok(None);
        }
        Ok(Some(self.version(volume, parent)?.root))
    }

    /// `version` 0 means the head.
    pub fn version(&self, volume: &VolumeName, version: u64) -> Result<VersionInfo, MasterError> {
        let txn = self.db.begin_read()?;
        let number = if version == 0 {
            let volumes = txn.open_table(VOLUMES)?;
            let row: VolumeRow = match volumes.get(volume.as_str())? {
                Some(g) => decode("volume", g.value())?,
                None => return Err(MasterError::UnknownVolume(volume.to_string())),
            };
            if row.head == 0 {
                return Err(MasterError::EmptyVolume(volume.to_string()));
            }
            row.head
        } else {
            version
        };
        let versions = txn.open_table(VERSIONS)?;
        match versions.get((volume.as_str(), number))? {
            Some(g) => decode("version", g.value()),
            None => {
                // Distinguish "no such volume" from "no such version".
                let volumes = txn.open_table(VOLUMES)?;
                if volumes.get(volume.as_str())?.is_none() {
                    Err(MasterError::UnknownVolume(volume.to_string()))
                } else {
                    Err(MasterError::UnknownVersion {
                        volume: volume.to_string(),
                        version,
                    })
                }
            }
        }
    }

    pub fn versions(&self, volume: &VolumeName) -> Result<Vec<VersionInfo>, MasterError> {
        self.volume(volume)?;
        let txn = self.db.begin_read()?;
        let versions = txn.open_table(VERSIONS)?;
        let mut out = Vec::new();
        for item in versions.range((volume.as_str(), 0)..=(volume.as_str(), u64::MAX))? {
            let (_, v) = item?;
            out.push(decode("version", v.value())?);
        }
        Ok(out)
    }

    /// Stores a token under the hash of its secret; durable on return.
    pub fn put_token(&self, hash: &str, row: &TokenRow) -> Result<(), MasterError> {
        let txn = self.db.begin_write()?;
        txn.open_table(TOKENS)?
            .insert(hash, encode(row).as_slice())?;
        self.commit_durable(txn)
    }

    /// Every token, with the hash of its secret.
    pub fn tokens(&self) -> Result<Vec<(String, TokenRow)>, MasterError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(TOKENS)?;
        let mut out = Vec::new();
        for item in table.iter()? {
            let (k, v) = item?;
            out.push((k.value().to_string(), decode("token", v.value())?));
        }
        Ok(out)
    }

    /// Removes the token with public id `id`; false when there is none.
    pub fn remove_token(&self, id: &str) -> Result<bool, MasterError> {
        let hash = self
            .tokens()?
            .into_iter()
            .find(|(_, row)| row.id == id)
            .map(|(hash, _)| hash);
        let Some(hash) = hash else {
            return Ok(false);
        };
        let txn = self.db.begin_write()?;
        txn.open_table(TOKENS)?.remove(hash.as_str())?;
        self.commit_durable(txn)?;
        Ok(true)
    }

    /// Records a node's registration (`row.http_addr` in the canonical form
    /// of [`HttpAddr`]). Refuses an address registered by
    /// another node for which `is_up` holds: the master reads a node's
    /// objects from its address, so a second node there would answer 404
    /// for the first one's objects and every such read would delete one of
    /// its locations. An address of a node that is down may be taken over
    /// (a host replaced under a new id); those nodes are returned: they must
    /// register again before they serve reads, or their reads would go to
    /// the new node. The check runs inside the write transaction, so two
    /// nodes registering one address at once cannot both succeed.
    pub fn put_node(
        &self,
        row: &NodeRow,
        is_up: impl Fn(&NodeId) -> bool,
    ) -> Result<Vec<NodeId>, MasterError> {
        let txn = self.db.begin_write()?;
        let mut displaced = Vec::new();
        {
            let mut nodes = txn.open_table(NODES)?;
            for item in nodes.iter()? {
                let (_, v) = item?;
                let other: NodeRow = decode("node", v.value())?;
                // Rows written before addresses were canonicalised may
                // spell the same address differently.
                let other_addr = other
                    .http_addr
                    .parse::<HttpAddr>()
                    .map_or(other.http_addr.clone(), |a| a.to_string());
                if other.id == row.id || other_addr != row.http_addr {
                    continue;
                }
                if is_up(&other.id) {
                    return Err(MasterError::AddressTaken {
                        addr: row.http_addr.clone(),
                        node: other.id.to_string(),
                    });
                }
                displaced.push(other.id);
            }
            nodes.insert(row.id.as_str(), encode(row).as_slice())?;
        }
        self.commit_durable(txn)?;
        Ok(displaced)
    }

    pub fn nodes(&self) -> Result<Vec<NodeRow>, MasterError> {
        let txn = self.db.begin_read()?;
        let nodes = txn.open_table(NODES)?;
        let mut out = Vec::new();
        for item in nodes.iter()? {
            let (_, v) = item?;
            out.push(decode("node", v.value())?);
        }
        Ok(out)
    }

    /// Commits a durable transaction. It also makes every earlier
    /// non-durable write durable, so the flag is cleared while this
    /// transaction still excludes other writers, and restored on failure.
    fn commit_durable(&self, txn: redb::WriteTransaction) -> Result<(), MasterError> {
        let was = self.unflushed.swap(false, Ordering::AcqRel);
        self.guard
            .commit(|| txn.commit().map_err(MasterError::from))
            .inspect_err(|_| {
                if was {
                    self.unflushed.store(true, Ordering::Release);
                }
            })
    }

    /// Commits a transaction written without an fsync (soft state).
    fn commit_soft(&self, txn: redb::WriteTransaction) -> Result<(), MasterError> {
        self.guard
            .commit(|| txn.commit().map_err(MasterError::from))?;
        self.unflushed.store(true, Ordering::Release);
        Ok(())
    }

    /// Records `node` as a holder of `objects`, stamped with the current
    /// announce epoch.
    pub fn add_locations(&self, node: &NodeId, objects: &[ObjectId]) -> Result<(), MasterError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::None)?;
        {
            let epoch = txn
                .open_table(META)?
                .get(EPOCH_KEY)?
                .map_or(0, |g| g.value());
            let mut locations = txn.open_multimap_table(LOCATIONS)?;
            let mut by_node = txn.open_table(NODE_LOCATIONS)?;
            for id in objects {
                locations.insert(id.as_bytes().as_slice(), node.as_str())?;
                by_node.insert((node.as_str(), id.as_bytes().as_slice()), epoch)?;
            }
        }
        self.commit_soft(txn)?;
        Ok(())
    }

    pub fn remove_location(&self, object: &ObjectId, node: &NodeId) -> Result<(), MasterError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::None)?;
        txn.open_multimap_table(LOCATIONS)?
            .remove(object.as_bytes().as_slice(), node.as_str())?;
        txn.open_table(NODE_LOCATIONS)?
            .remove((node.as_str(), object.as_bytes().as_slice()))?;
        self.commit_soft(txn)?;
        Ok(())
    }

    /// Forgets `node` as a holder of `objects` (those it withdrew after a
    /// scrub, or garbage collection decided it deletes), in one transaction.
    pub fn remove_locations(&self, node: &NodeId, objects: &[ObjectId]) -> Result<(), MasterError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::None)?;
        {
            let mut locations = txn.open_multimap_table(LOCATIONS)?;
            let mut by_node = txn.open_table(NODE_LOCATIONS)?;
            for id in objects {
                locations.remove(id.as_bytes().as_slice(), node.as_str())?;
                by_node.remove((node.as_str(), id.as_bytes().as_slice()))?;
            }
        }
        self.commit_soft(txn)
    }

    /// Starts a resync: raises the announce epoch and returns it as the
    /// resync id. Every location written from now on, by any node and in
    /// any call, carries a stamp of at least this value, so
    /// [`Self::sweep_node`] with it removes exactly the locations of the
    /// node that were not announced since this call. Durable, so an id is
    /// never handed out twice.
    pub fn begin_resync(&self) -> Result<u64, MasterError> {
        let txn = self.db.begin_write()?;
        let epoch = {
            let mut meta = txn.open_table(META)?;
            let epoch = meta.get(EPOCH_KEY)?.map_or(0, |g| g.value()) + 1;
            meta.insert(EPOCH_KEY, epoch)?;
            epoch
        };
        self.commit_durable(txn)?;
        Ok(epoch)
    }

    /// Ends resync `epoch` of `node`: removes the node's locations stamped
    /// before it (not re-announced). Returns how many were removed.
    pub fn sweep_node(&self, node: &NodeId, epoch: u64) -> Result<u64, MasterError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::None)?;
        let removed = {
            let mut by_node = txn.open_table(NODE_LOCATIONS)?;
            // Object ids are 32 bytes: every key of the node lies in here.
            let (first, last): (&[u8], &[u8]) = (&[], &[0xff; ObjectId::LEN]);
            let mut old = Vec::new();
            for item in by_node.range((node.as_str(), first)..=(node.as_str(), last))? {
                let (k, v) = item?;
                if v.value() < epoch {
                    old.push(k.value().1.to_vec());
                }
            }
            let mut locations = txn.open_multimap_table(LOCATIONS)?;
            for object in &old {
                by_node.remove((node.as_str(), object.as_slice()))?;
                locations.remove(object.as_slice(), node.as_str())?;
            }
            old.len() as u64
        };
        self.commit_soft(txn)?;
        Ok(removed)
    }

    pub fn holders(&self, object: &ObjectId) -> Result<Vec<NodeId>, MasterError> {
        let txn = self.db.begin_read()?;
        let locations = txn.open_multimap_table(LOCATIONS)?;
        let mut out = Vec::new();
        for item in locations.get(object.as_bytes().as_slice())? {
            out.push(parse_node(item?.value())?);
        }
        Ok(out)
    }

    /// Up to `limit` objects with their holders, in id order, starting after
    /// `after` (from the first when `None`). Returns the last id read as the
    /// next cursor, `None` once the end is reached.
    pub fn scan_holdings(
        &self,
        after: Option<&ObjectId>,
        limit: usize,
    ) -> Result<(Vec<Holding>, Option<ObjectId>), MasterError> {
        let txn = self.db.begin_read()?;
        let locations = txn.open_multimap_table(LOCATIONS)?;
        let start = after.map(|a| a.as_bytes().to_vec());
        let range = match &start {
            Some(a) => {
                locations.range::<&[u8]>((Bound::Excluded(a.as_slice()), Bound::Unbounded))?
            }
            None => locations.range::<&[u8]>(..)?,
        };
        let mut out = Vec::new();
        for item in range {
            if out.len() == limit {
                let next = out.last().map(|h: &Holding| h.object);
                return Ok((out, next));
            }
            let (key, values) = item?;
            let object = ObjectId::from_bytes(key.value())
                .map_err(|e| MasterError::Storage(format!("corrupt location key: {e}")))?;
            let mut holders = Vec::new();
            for v in values {
                holders.push(parse_node(v?.value())?);
            }
            out.push(Holding { object, holders });
        }
        Ok((out, None))
    }

    /// The holders of each of `objects`, in one read transaction.
    pub fn holdings(&self, objects: &[ObjectId]) -> Result<Vec<Holding>, MasterError> {
        let txn = self.db.begin_read()?;
        let locations = txn.open_multimap_table(LOCATIONS)?;
        let mut out = Vec::with_capacity(objects.len());
        for object in objects {
            let mut holders = Vec::new();
            for v in locations.get(object.as_bytes().as_slice())? {
                holders.push(parse_node(v?.value())?);
            }
            out.push(Holding {
                object: *object,
                holders,
            });
        }
        Ok(out)
    }

    /// Sets a volume's retention (0: keep every version) and drops the
    /// versions beyond it, in one durable transaction. Returns the row and
    /// how many versions were dropped.
    pub fn set_retention(
        &self,
        name: &VolumeName,
        keep: u64,
    ) -> Result<(VolumeRow, u64), MasterError> {
        let txn = self.db.begin_write()?;
        let (row, dropped) = {
            let mut volumes = txn.open_table(VOLUMES)?;
            let mut row: VolumeRow = match volumes.get(name.as_str())? {
                Some(g) => decode("volume", g.value())?,
                None => return Err(MasterError::UnknownVolume(name.to_string())),
            };
            row.keep = keep;
            volumes.insert(name.as_str(), encode(&row).as_slice())?;
            let mut versions = txn.open_table(VERSIONS)?;
            let dropped = drop_beyond_retention(&mut versions, &row)?;
            (row, dropped)
        };
        self.commit_durable(txn)?;
        if dropped > 0 {
            tracing::info!(volume = %name, keep, dropped, "versions beyond retention dropped");
        }
        Ok((row, dropped))
    }

    /// The oldest version of `name` still recorded (0 when none).
    pub fn oldest_version(&self, name: &VolumeName) -> Result<u64, MasterError> {
        let txn = self.db.begin_read()?;
        let versions = txn.open_table(VERSIONS)?;
        let first = versions
            .range((name.as_str(), 0)..=(name.as_str(), u64::MAX))?
            .next()
            .transpose()?;
        Ok(first.map_or(0, |(k, _)| k.value().1))
    }

    /// Makes every earlier non-durable write durable.
    pub fn flush(&self) -> Result<(), MasterError> {
        if self.unflushed.load(Ordering::Acquire) {
            let txn = self.db.begin_write()?;
            self.commit_durable(txn)?;
        }
        Ok(())
    }
}

/// What [`MetaStore::peek`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peeked {
    Stamp(Option<Stamp>),
    /// Left by a crash: only a writable open (which repairs it) reads it.
    NeedsRepair,
}

fn read_stamp(txn: &redb::ReadTransaction) -> Result<Option<Stamp>, MasterError> {
    let meta = match txn.open_table(META) {
        Ok(m) => m,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let get =
        |key: &str| -> Result<Option<u64>, MasterError> { Ok(meta.get(key)?.map(|g| g.value())) };
    match (get(CLUSTER_KEY)?, get(INCARNATION_KEY)?) {
        (None, None) => Ok(None),
        (Some(c), Some(i)) => match (Id::new(c), Id::new(i)) {
            (Some(cluster), Some(incarnation)) => Ok(Some(Stamp {
                cluster,
                incarnation,
            })),
            _ => Err(MasterError::Storage("corrupt identity: a zero id".into())),
        },
        _ => Err(MasterError::Storage(
            "corrupt identity: cluster id or incarnation missing".into(),
        )),
    }
}

/// Whether `db` has this build's schema and every table.
fn is_current(db: &Database) -> bool {
    let Ok(txn) = db.begin_read() else {
        return false;
    };
    let schema = txn
        .open_table(META)
        .ok()
        .and_then(|meta| meta.get("schema").ok().flatten().map(|g| g.value()));
    schema == Some(SCHEMA_VERSION)
        && txn.open_table(VOLUMES).is_ok()
        && txn.open_table(VERSIONS).is_ok()
        && txn.open_table(NODES).is_ok()
        && txn.open_multimap_table(LOCATIONS).is_ok()
        && txn.open_table(TOKENS).is_ok()
        && txn.open_table(NODE_LOCATIONS).is_ok()
}

/// What a backup holds, for the report.
#[derive(Clone, Copy, Debug)]
pub struct BackupInfo {
    pub volumes: u64,
    pub cluster: Option<Id>,
    pub incarnation: Option<Id>,
}

/// Copies every row of `table` from `src` into `dest`; returns how many.
fn copy_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    src: &redb::ReadTransaction,
    dest: &redb::WriteTransaction,
    table: TableDefinition<'_, K, V>,
) -> Result<u64, MasterError> {
    let from = src.open_table(table)?;
    let mut to = dest.open_table(table)?;
    let mut n = 0;
    for item in from.iter()? {
        let (k, v) = item?;
        to.insert(k.value(), v.value())?;
        n += 1;
    }
    Ok(n)
}

/// Removes the version records of `row`'s volume that its retention no
/// longer keeps (see [`crate::gc_plan::retained_from`]); returns how many.
fn drop_beyond_retention(
    versions: &mut redb::Table<'_, (&str, u64), &[u8]>,
    row: &VolumeRow,
) -> Result<u64, MasterError> {
    let Some(first_kept) = crate::gc_plan::retained_from(row.head, row.keep) else {
        return Ok(0);
    };
    let name = row.name.as_str();
    let mut old = Vec::new();
    for item in versions.range((name, 0)..(name, first_kept))? {
        old.push(item?.0.value().1);
    }
    for v in &old {
        versions.remove((name, *v))?;
    }
    Ok(old.len() as u64)
}

/// Schema 1 to 2: indexes every existing location by node, at epoch 0 (so
/// the first resync of each node sweeps what it does not re-announce).
fn index_by_node(txn: &redb::WriteTransaction) -> Result<(), MasterError> {
    let locations = txn.open_multimap_table(LOCATIONS)?;
    let mut by_node = txn.open_table(NODE_LOCATIONS)?;
    for item in locations.iter()? {
        let (key, values) = item?;
        for v in values {
            by_node.insert((v?.value(), key.value()), 0)?;
        }
    }
    Ok(())
}

/// Runs a blocking store operation off the async workers: the one way the
/// service, fsck and the version walk reach redb from async code.
pub async fn blocking<T: Send + 'static>(
    store: &Arc<MetaStore>,
    f: impl FnOnce(&MetaStore) -> Result<T, MasterError> + Send + 'static,
) -> Result<T, MasterError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(|e| MasterError::Io(format!("store task: {e}")))?
}

/// Bounds how long a soft-state write stays volatile, and notices a
/// removed or replaced database file within a second even when nothing
/// writes (the guard logs it once; every write is refused from then on).
pub async fn flush_periodically(store: Arc<MetaStore>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let store = store.clone();
        let flushed = tokio::task::spawn_blocking(move || {
            store.check_file()?;
            store.flush()
        });
        match flushed.await {
            Ok(Err(MasterError::MetadataLost(_))) => {}
            Ok(Err(e)) => tracing::warn!("flushing locations: {e}"),
            Err(e) => tracing::warn!("flush task: {e}"),
            Ok(Ok(())) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_version(volume: &VolumeName, parent: u64, root: ObjectId) -> NewVersion {
        NewVersion {
            volume: volume.clone(),
            parent,
            root,
            message: "m".into(),
            author: "a".into(),
            host: "h".into(),
            time: 1,
            check_root: true,
        }
    }

    #[test]
    fn phase1_commit_is_compare_and_set_without_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.redb");
        let store = MetaStore::open(&path).unwrap();
        let vol: VolumeName = "web".parse().unwrap();
        let node: NodeId = "n1".parse().unwrap();
        let root = ObjectId::of(b"root");
        store.create_volume(&vol, "m", 0, 0).unwrap();
        assert!(matches!(
            store.create_volume(&vol, "m", 0, 0),
            Err(MasterError::VolumeExists(_))
        ));

        assert!(matches!(
            store.commit(new_version(&vol, 0, root)),
            Err(MasterError::RootNotStored(_))
        ));
        store.add_locations(&node, &[root]).unwrap();
        assert_eq!(
            store
                .commit(new_version(&vol, 0, root))
                .unwrap()
                .version
                .get(),
            1
        );
        match store.commit(new_version(&vol, 0, root)) {
            Err(MasterError::Conflict {
                head: 1, parent: 0, ..
            }) => {}
            other => panic!("expected conflict, got {other:?}"),
        }
        assert_eq!(
            store
                .commit(new_version(&vol, 1, root))
                .unwrap()
                .version
                .get(),
            2
        );
        drop(store);

        let store = MetaStore::open(&path).unwrap();
        assert_eq!(store.volume(&vol).unwrap().head, 2);
        assert_eq!(store.versions(&vol).unwrap().len(), 2);
        assert_eq!(store.holders(&root).unwrap(), vec![node.clone()]);
        assert_eq!(store.version(&vol, 0).unwrap().version.get(), 2);
        assert_eq!(
            store.holdings(&[root]).unwrap(),
            vec![Holding {
                object: root,
                holders: vec![node.clone()]
            }]
        );
        assert!(matches!(
            store.version(&vol, 9),
            Err(MasterError::UnknownVersion { .. })
        ));
        let other: VolumeName = "nope".parse().unwrap();
        assert!(matches!(
            store.version(&other, 1),
            Err(MasterError::UnknownVolume(_))
        ));
    }

    #[test]
    fn parent_root_is_the_parents_root_or_the_conflict_to_come() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetaStore::open(&dir.path().join("m.redb")).unwrap();
        let vol: VolumeName = "v".parse().unwrap();
        let node: NodeId = "n".parse().unwrap();
        let root = ObjectId::of(b"r1");
        store.create_volume(&vol, "m", 0, 0).unwrap();
        assert_eq!(store.parent_root(&vol, 0).unwrap(), None);
        store.add_locations(&node, &[root]).unwrap();
        store.commit(new_version(&vol, 0, root)).unwrap();
        assert_eq!(store.parent_root(&vol, 1).unwrap(), Some(root));
        for stale in [0, 2] {
            assert!(matches!(
                store.parent_root(&vol, stale),
                Err(MasterError::Conflict { head: 1, .. })
            ));
        }
        let other: VolumeName = "w".parse().unwrap();
        assert!(matches!(
            store.parent_root(&other, 0),
            Err(MasterError::UnknownVolume(_))
        ));
    }

    #[test]
    fn forwarded_commit_skips_only_the_root_location_check() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetaStore::open(&dir.path().join("m.redb")).unwrap();
        let vol: VolumeName = "shared".parse().unwrap();
        store.create_volume(&vol, "a", 0, 0).unwrap();
        let root = ObjectId::of(b"held in the peer's cluster");
        let forwarded = NewVersion {
            check_root: false,
            ..new_version(&vol, 0, root)
        };
        assert_eq!(store.commit(forwarded.clone()).unwrap().version.get(), 1);
        // The compare-and-set still applies.
        assert!(matches!(
            store.commit(forwarded),
            Err(MasterError::Conflict { head: 1, .. })
        ));
        assert!(store.holders(&root).unwrap().is_empty());
    }

    #[test]
    fn scanning_holdings_pages_through_every_object_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetaStore::open(&dir.path().join("m.redb")).unwrap();
        let (a, b): (NodeId, NodeId) = ("a".parse().unwrap(), "b".parse().unwrap());
        let ids: Vec<ObjectId> = (0..7u8).map(|i| ObjectId::of(&[i])).collect();
        store.add_locations(&a, &ids).unwrap();
        store.add_locations(&b, &ids[..2]).unwrap();
        let mut seen = Vec::new();
        let mut cursor = None;
        let mut pages = 0;
        loop {
            let (page, next) = store.scan_holdings(cursor.as_ref(), 3).unwrap();
            assert!(page.len() <= 3);
            seen.extend(page);
            pages += 1;
            match next {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
        assert_eq!(pages, 3);
        let mut want = ids.clone();
        want.sort();
        assert_eq!(seen.iter().map(|h| h.object).collect::<Vec<_>>(), want);
        let two = seen.iter().filter(|h| h.holders.len() == 2).count();
        assert_eq!(two, 2);
    }

    fn node(id: &str, addr: &str) -> NodeRow {
        NodeRow {
            id: id.parse().unwrap(),
            http_addr: addr.into(),
        }
    }

    #[test]
    fn sweep_removes_only_what_was_not_announced_since_the_resync_began() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetaStore::open(&dir.path().join("m.redb")).unwrap();
        let (a, b): (NodeId, NodeId) = ("a".parse().unwrap(), "b".parse().unwrap());
        let ids: Vec<ObjectId> = (0..6u8).map(|i| ObjectId::of(&[i])).collect();
        store.add_locations(&a, &ids).unwrap();
        store.add_locations(&b, &ids).unwrap();

        let epoch = store.begin_resync().unwrap();
        assert!(store.begin_resync().unwrap() > epoch, "ids never repeat");
        // a re-announces 0..3 in its resync, and 5 in an ordinary call
        // (fetched while the resync ran): both count.
        store.add_locations(&a, &ids[..3]).unwrap();
        store.add_locations(&a, &ids[5..]).unwrap();
        assert_eq!(store.sweep_node(&a, epoch).unwrap(), 2);
        for (i, id) in ids.iter().enumerate() {
            let holders = store.holders(id).unwrap();
            assert_eq!(holders.contains(&a), i != 3 && i != 4, "object {i}");
            assert!(holders.contains(&b), "another node's locations stay");
        }
        // Sweeping again removes nothing; a later resync with nothing
        // announced empties the node.
        assert_eq!(store.sweep_node(&a, epoch).unwrap(), 0);
        let next = store.begin_resync().unwrap();
        assert_eq!(store.sweep_node(&a, next).unwrap(), 4);
        assert!(
            ids.iter()
                .all(|id| store.holders(id).unwrap() == [b.clone()])
        );
        // A removed stale location leaves no index entry behind.
        store.remove_location(&ids[0], &b).unwrap();
        let last = store.begin_resync().unwrap();
        assert_eq!(store.sweep_node(&b, last).unwrap(), 5);
    }

    #[test]
    fn withdrawn_locations_go_from_both_indexes_and_only_for_that_node() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetaStore::open(&dir.path().join("m.redb")).unwrap();
        let a: NodeId = "a".parse().unwrap();
        let b: NodeId = "b".parse().unwrap();
        let ids: Vec<ObjectId> = (0..3u8).map(|i| ObjectId::of(&[i])).collect();
        store.add_locations(&a, &ids).unwrap();
        store.add_locations(&b, &ids[..1]).unwrap();
        // One unknown id among them changes nothing else.
        let unknown = ObjectId::of(b"never announced");
        store
            .remove_locations(&a, &[ids[0], ids[2], unknown])
            .unwrap();
        assert_eq!(store.holders(&ids[0]).unwrap(), std::slice::from_ref(&b));
        assert_eq!(store.holders(&ids[1]).unwrap(), std::slice::from_ref(&a));
        assert!(store.holders(&ids[2]).unwrap().is_empty());
        // The node index agrees: a resync with nothing announced sweeps
        // exactly the one location left.
        let epoch = store.begin_resync().unwrap();
        assert_eq!(store.sweep_node(&a, epoch).unwrap(), 1);
    }

    #[test]
    fn a_schema_1_file_is_indexed_by_node_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.redb");
        let a: NodeId = "a".parse().unwrap();
        let ids: Vec<ObjectId> = (0..3u8).map(|i| ObjectId::of(&[i])).collect();
        {
            let store = MetaStore::open(&path).unwrap();
            store.add_locations(&a, &ids).unwrap();
            // Make it look like a file written by a schema-1 build.
            let txn = store.db.begin_write().unwrap();
            txn.delete_table(NODE_LOCATIONS).unwrap();
            txn.open_table(META).unwrap().insert("schema", 1).unwrap();
            txn.commit().unwrap();
        }
        let store = MetaStore::open(&path).unwrap();
        let epoch = store.begin_resync().unwrap();
        store.add_locations(&a, &ids[..1]).unwrap();
        assert_eq!(store.sweep_node(&a, epoch).unwrap(), 2);
        drop(store);
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META).unwrap().insert("schema", 3).unwrap();
            txn.commit().unwrap();
        }
        assert!(matches!(
            MetaStore::open(&path),
            Err(MasterError::Storage(e)) if e.contains("schema 3")
        ));
    }

    #[test]
    fn an_address_of_a_node_that_is_up_cannot_be_taken() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetaStore::open(&dir.path().join("m.redb")).unwrap();
        store.put_node(&node("a", "h:1"), |_| true).unwrap();
        match store.put_node(&node("b", "h:1"), |n| n.as_str() == "a") {
            Err(MasterError::AddressTaken { node, .. }) => assert_eq!(node, "a"),
            other => panic!("expected AddressTaken, got {other:?}"),
        }
        // The same node may register again, also under a new address.
        store.put_node(&node("a", "h:1"), |_| true).unwrap();
        store.put_node(&node("a", "h:2"), |_| true).unwrap();
        store.put_node(&node("b", "h:1"), |_| true).unwrap();
        // A node that is down leaves its address to a new one.
        assert_eq!(
            store.put_node(&node("c", "h:2"), |_| false).unwrap(),
            vec!["a".parse::<NodeId>().unwrap()]
        );
        let rows = store.nodes().unwrap();
        assert_eq!(rows.len(), 3);
    }
}
