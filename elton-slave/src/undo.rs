//! Undoing the objects a failed request stored: an HTTP upload that fails
//! part-way (ENOSPC while chunking, a dropped body) or whose commit is
//! refused must not leave its chunks, recipe and manifests behind.
//!
//! Every object the request stored is recorded, new or not; on failure
//! each is removed if its file arrived after the request began (so it did
//! not exist before) and nobody stored it again since (storing an object
//! that is already there marks it used, [`ObjectStore::note_used`]).

use std::time::SystemTime;

use elton_proto::ObjectId;

use crate::store::{Arrived, ObjectStore};

pub struct Undo {
    since: SystemTime,
    stored: Vec<ObjectId>,
}

impl Default for Undo {
    fn default() -> Self {
        Self::new()
    }
}

impl Undo {
    pub fn new() -> Self {
        Self {
            since: crate::store::file_clock_now(),
            stored: Vec::new(),
        }
    }

    pub fn record(&mut self, id: ObjectId) {
        self.stored.push(id);
    }

    pub fn record_all(&mut self, ids: impl IntoIterator<Item = ObjectId>) {
        self.stored.extend(ids);
    }

    /// Removes what this request alone stored; returns (objects, bytes)
    /// removed. Blocking.
    pub fn undo(self, store: &ObjectStore) -> (u64, u64) {
        let (mut n, mut bytes) = (0, 0);
        for id in self.stored {
            match store.remove_unused(&id, self.since, Arrived::Since) {
                Ok(Some(size)) => {
                    n += 1;
                    bytes += size;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(object = %id, "undoing a failed upload: {e}"),
            }
        }
        if n > 0 {
            tracing::info!(objects = n, bytes, "removed the objects of a failed upload");
        }
        (n, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undo_removes_what_was_stored_in_the_tick_it_began() {
        // The store's files carry the kernel's coarse timestamps; an undo
        // that began on the precise clock took an object stored within the
        // same tick for an older one and kept it.
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::open(dir.path()).unwrap();
        for i in 0..50u32 {
            let mut undo = Undo::new();
            let id = store.put_bytes(&i.to_le_bytes()).unwrap();
            undo.record(id);
            assert_eq!(undo.undo(&store).0, 1, "round {i}");
            assert!(!store.contains(&id), "round {i}");
        }
    }
}
