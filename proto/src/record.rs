//! Version records in their JSON form (served over HTTP, printed by `log`).

use serde::{Deserialize, Serialize};

use crate::{ObjectId, ProtoError, Version, VolumeName, pb};

pub const RECORD_FORMAT: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    pub format: u32,
    pub volume: VolumeName,
    pub version: Version,
    pub root: ObjectId,
    /// `None` for the first version.
    pub parent: Option<Version>,
    pub message: String,
    pub author: String,
    pub host: String,
    /// Seconds since the Unix epoch.
    pub time: u64,
}

impl TryFrom<pb::VersionRecord> for VersionInfo {
    type Error = ProtoError;
    fn try_from(r: pb::VersionRecord) -> Result<Self, ProtoError> {
        Ok(Self {
            format: RECORD_FORMAT,
            volume: r.volume.parse()?,
            version: Version::new(r.version).ok_or(ProtoError::Version("0".into()))?,
            root: ObjectId::from_bytes(&r.root)?,
            parent: Version::new(r.parent),
            message: r.message,
            author: r.author,
            host: r.host,
            time: r.time_unix,
        })
    }
}

impl From<&VersionInfo> for pb::VersionRecord {
    fn from(v: &VersionInfo) -> Self {
        Self {
            volume: v.volume.to_string(),
            version: v.version.get(),
            root: v.root.as_bytes().to_vec(),
            parent: v.parent.map_or(0, Version::get),
            message: v.message.clone(),
            author: v.author.clone(),
            host: v.host.clone(),
            time_unix: v.time,
            // Filled in by the master that serves the record.
            incarnation: String::new(),
            along_path: Vec::new(),
        }
    }
}
