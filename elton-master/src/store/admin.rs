//! Administrative removals in the metadata: forgetting a decommissioned
//! node and deleting a volume. Both leave a tombstone in `meta` (see
//! docs/formats.md §5) so that the id or name is not silently reused: a
//! removed node may not register again, a deleted volume's name may not
//! be created again (its version numbers are cached as immutable).

use elton_proto::{NodeId, ObjectId, VolumeName};
use redb::{ReadableDatabase, ReadableTable, WriteTransaction};

use super::{LOCATIONS, META, MetaStore, NODE_LOCATIONS, NODES, VERSIONS, VOLUMES, decode};
use crate::MasterError;
use crate::store::VolumeRow;

fn removed_node_key(id: &NodeId) -> String {
    format!("removed_node/{id}")
}

fn deleted_volume_key(name: &VolumeName) -> String {
    format!("deleted_volume/{name}")
}

/// What deleting a volume removes (or would).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VolumeRemoval {
    pub versions: u64,
    pub head: u64,
}

impl MetaStore {
    /// The objects `node` is recorded to hold.
    pub fn node_objects(&self, node: &NodeId) -> Result<Vec<ObjectId>, MasterError> {
        let txn = self.db.begin_read()?;
        let by_node = txn.open_table(NODE_LOCATIONS)?;
        let (first, last): (&[u8], &[u8]) = (&[], &[0xff; ObjectId::LEN]);
        let mut out = Vec::new();
        for item in by_node.range((node.as_str(), first)..=(node.as_str(), last))? {
            let (k, _) = item?;
            let raw = k.value().1;
            let id = ObjectId::from_bytes(raw)
                .map_err(|e| MasterError::Storage(format!("corrupt node location: {e}")))?;
            out.push(id);
        }
        Ok(out)
    }

    /// How many objects each node is recorded to hold.
    pub fn node_object_count(&self, node: &NodeId) -> Result<u64, MasterError> {
        let txn = self.db.begin_read()?;
        let by_node = txn.open_table(NODE_LOCATIONS)?;
        let (first, last): (&[u8], &[u8]) = (&[], &[0xff; ObjectId::LEN]);
        let mut n = 0;
        for item in by_node.range((node.as_str(), first)..=(node.as_str(), last))? {
            item?;
            n += 1;
        }
        Ok(n)
    }

    /// Forgets `node`: its row, every location it had, in one durable
    /// transaction, and leaves a tombstone that refuses its registration.
    pub fn forget_node(&self, node: &NodeId, now_unix: u64) -> Result<u64, MasterError> {
        let objects = self.node_objects(node)?;
        let txn = self.db.begin_write()?;
        {
            let mut nodes = txn.open_table(NODES)?;
            if nodes.remove(node.as_str())?.is_none() {
                return Err(MasterError::UnknownNode(node.to_string()));
            }
            let mut locations = txn.open_multimap_table(LOCATIONS)?;
            let mut by_node = txn.open_table(NODE_LOCATIONS)?;
            for id in &objects {
                locations.remove(id.as_bytes().as_slice(), node.as_str())?;
                by_node.remove((node.as_str(), id.as_bytes().as_slice()))?;
            }
            txn.open_table(META)?
                .insert(removed_node_key(node).as_str(), now_unix)?;
        }
        self.commit_durable(txn)?;
        Ok(objects.len() as u64)
    }

    /// Whether `node` was removed by an admin (`forget_node`).
    pub fn node_removed(&self, node: &NodeId) -> Result<bool, MasterError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta.get(removed_node_key(node).as_str())?.is_some())
    }

    /// Deletes volume `name` and every version record of it (unless
    /// `dry_run`), leaving a tombstone with its head.
    pub fn delete_volume(
        &self,
        name: &VolumeName,
        dry_run: bool,
    ) -> Result<VolumeRemoval, MasterError> {
        let txn = self.db.begin_write()?;
        let removal = {
            let mut volumes = txn.open_table(VOLUMES)?;
            let row: VolumeRow = match volumes.get(name.as_str())? {
                Some(g) => decode("volume", g.value())?,
                None => return Err(MasterError::UnknownVolume(name.to_string())),
            };
            let mut versions = txn.open_table(VERSIONS)?;
            let numbers: Vec<u64> = versions
                .range((name.as_str(), 0)..=(name.as_str(), u64::MAX))?
                .map(|item| item.map(|(k, _)| k.value().1))
                .collect::<Result<_, _>>()?;
            if !dry_run {
                for n in &numbers {
                    versions.remove((name.as_str(), *n))?;
                }
                volumes.remove(name.as_str())?;
                txn.open_table(META)?
                    .insert(deleted_volume_key(name).as_str(), row.head)?;
            }
            VolumeRemoval {
                versions: numbers.len() as u64,
                head: row.head,
            }
        };
        if dry_run {
            txn.abort()?;
        } else {
            self.commit_durable(txn)?;
        }
        Ok(removal)
    }
}

/// Refuses to create a volume under a deleted volume's name (inside the
/// creating transaction).
pub(super) fn refuse_deleted(txn: &WriteTransaction, name: &VolumeName) -> Result<(), MasterError> {
    let meta = txn.open_table(META)?;
    if let Some(head) = meta.get(deleted_volume_key(name).as_str())? {
        return Err(MasterError::VolumeDeleted {
            volume: name.to_string(),
            head: head.value(),
        });
    }
    Ok(())
}
