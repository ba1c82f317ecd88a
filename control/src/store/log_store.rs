//! The Raft log and vote, persisted durably before openraft is told.

use std::sync::Arc;

use redb::Database;

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
}
