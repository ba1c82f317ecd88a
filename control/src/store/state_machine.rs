//! The state machine's persistence: the pure [`crate::state`] applied, and
//! its changed rows written to `control.redb`.

use std::sync::Arc;

use redb::{Database, WriteTransaction};

use crate::error::ControlError;

/// openraft's `RaftStateMachine` over `control.redb`.
pub struct StateMachineStore {
    db: Arc<Database>,
}

/// A cloneable read handle on the applied state, for the service edge
/// (status, execution results, comparing members in tests).
#[derive(Clone)]
pub struct StateReader {
    db: Arc<Database>,
}

impl StateMachineStore {
    pub(crate) fn load(db: Arc<Database>) -> Result<Self, ControlError> {
        Ok(Self { db })
    }

    pub fn reader(&self) -> StateReader {
        StateReader {
            db: self.db.clone(),
        }
    }
}

pub(crate) fn create_tables(_txn: &WriteTransaction) -> Result<(), ControlError> {
    Ok(())
}
