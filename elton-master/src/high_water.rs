//! The `heads` file: the last head of every volume, written next to
//! `master.redb` once a second when it changed, so that a restore can tell
//! what it rolls back even when the database itself is gone.
//!
//! The running master keeps reading its open database after the file was
//! removed (and refuses writes from then on), so within a second of the
//! last confirmed commit this file holds the heads a restore must compare
//! with.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::MasterError;
use crate::datadir::write_durably;
use crate::incarnation::Stamp;
use crate::store::MetaStore;

pub const HEADS_FILE: &str = "heads";
/// Format of the `heads` file; bump on any incompatible change.
pub const HEADS_FORMAT: u32 = 1;

/// Volume name → head.
pub type Heads = BTreeMap<String, u64>;

#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadsFile {
    pub format: u32,
    /// The incarnation the heads were issued in.
    pub incarnation: String,
    pub heads: Heads,
}

/// Reads `<dir>/heads`; `None` when missing, `Err` when unreadable.
pub fn read(dir: &Path) -> Result<Option<HeadsFile>, String> {
    let path = dir.join(HEADS_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let file: HeadsFile =
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    if file.format != HEADS_FORMAT {
        return Err(format!(
            "{}: format {} (this build reads {HEADS_FORMAT})",
            path.display(),
            file.format
        ));
    }
    Ok(Some(file))
}

pub fn write(dir: &Path, file: &HeadsFile) -> Result<(), MasterError> {
    let bytes = serde_json::to_vec(file)
        .map_err(|e| MasterError::Io(format!("encoding the heads file: {e}")))?;
    write_durably(&dir.join(HEADS_FILE), &bytes)
}

/// Pure: per volume, the higher head of `a` and `b`.
pub fn highest(a: &Heads, b: &Heads) -> Heads {
    let mut out = a.clone();
    for (name, &head) in b {
        let e = out.entry(name.clone()).or_insert(0);
        *e = (*e).max(head);
    }
    out
}

/// Rewrites the `heads` file once a second when the heads changed; runs
/// until dropped.
pub async fn keep_written(store: Arc<MetaStore>, dir: std::path::PathBuf, stamp: Stamp) {
    let mut written: Option<Heads> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let heads = match crate::store::blocking(&store, |s| {
            Ok(s.volumes()?
                .into_iter()
                .map(|v| (v.name.to_string(), v.head))
                .collect::<Heads>())
        })
        .await
        {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!("reading heads: {e}");
                continue;
            }
        };
        if written.as_ref() == Some(&heads) {
            continue;
        }
        let file = HeadsFile {
            format: HEADS_FORMAT,
            incarnation: stamp.incarnation.to_string(),
            heads,
        };
        let d = dir.clone();
        let result = tokio::task::spawn_blocking(move || write(&d, &file).map(|()| file.heads))
            .await
            .map_err(|e| MasterError::Io(format!("heads task: {e}")));
        match result {
            Ok(Ok(heads)) => written = Some(heads),
            Ok(Err(e)) | Err(e) => tracing::warn!("writing the heads file: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn highest_takes_each_volumes_larger_head() {
        let a: Heads = [("web".into(), 5), ("docs".into(), 1)].into();
        let b: Heads = [("web".into(), 3), ("img".into(), 2)].into();
        let want: Heads = [("web".into(), 5), ("docs".into(), 1), ("img".into(), 2)].into();
        assert_eq!(highest(&a, &b), want);
    }

    #[test]
    fn the_file_round_trips_and_refuses_other_formats() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()), Ok(None));
        let file = HeadsFile {
            format: HEADS_FORMAT,
            incarnation: "00000000000000ab".into(),
            heads: [("web".into(), 4)].into(),
        };
        write(dir.path(), &file).unwrap();
        assert_eq!(read(dir.path()), Ok(Some(file)));
        std::fs::write(
            dir.path().join(HEADS_FILE),
            br#"{"format":9,"incarnation":"","heads":{}}"#,
        )
        .unwrap();
        assert!(read(dir.path()).unwrap_err().contains("format 9"));
    }
}
