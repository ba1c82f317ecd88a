//! `update.json` in a mount's state directory: the whole plan of an update,
//! written before the upper is touched and removed after `mount.json`
//! names the head. Found at start, it is applied again (every action is
//! idempotent), so a crash in the middle finishes the update instead of
//! leaving the upper half-moved (format: docs/formats.md).

use elton_proto::ObjectId;
use serde::{Deserialize, Serialize};

use super::survey::MergePlan;

/// Format of `update.json`.
pub const UPDATE_FORMAT: u32 = 1;

pub const FILE_NAME: &str = "update.json";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UpdateJournal {
    pub format: u32,
    /// The version the upper applied to, and its root.
    pub from: u64,
    pub from_root: Option<ObjectId>,
    /// The head it moves to.
    pub to: u64,
    pub to_root: Option<ObjectId>,
    /// Incarnation of the metadata the head was read from.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub incarnation: String,
    pub plan: MergePlan,
}
