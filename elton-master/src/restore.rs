//! Installing a backup into a data directory (offline): under a new
//! incarnation, reporting which volumes it moves back.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::MasterError;
use crate::datadir::{
    DB_FILE, io_err, new_id, probe, read_identity, set_aside, sync_dir, write_identity,
};
use crate::high_water;
use crate::incarnation::{DbState, FileState, Stamp};
use crate::store::MetaStore;

/// A volume whose head the restore moves back (or drops).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RolledBack {
    pub volume: String,
    /// Head in the database being replaced.
    pub last_head: u64,
    /// Head after the restore; `None`: the backup does not have the volume.
    pub restored_head: Option<u64>,
}

/// Pure: the volumes whose head moves back when `restored` replaces
/// `current` (name → head).
pub fn rolled_back(
    current: &BTreeMap<String, u64>,
    restored: &BTreeMap<String, u64>,
) -> Vec<RolledBack> {
    current
        .iter()
        .filter_map(|(name, &last)| {
            let now = restored.get(name).copied();
            (now.unwrap_or(0) < last).then(|| RolledBack {
                volume: name.clone(),
                last_head: last,
                restored_head: now,
            })
        })
        .collect()
}

/// What a restore did, for the operator (printed, or as JSON).
#[derive(Clone, Debug, Serialize)]
pub struct RestoreReport {
    pub cluster_id: String,
    /// Incarnation recorded in the backup.
    pub backup_incarnation: Option<String>,
    /// Incarnation of the data directory before the restore.
    pub previous_incarnation: Option<String>,
    /// The new incarnation the restored metadata serves under.
    pub incarnation: String,
    pub volumes: u64,
    /// Whether the last heads were known (the replaced database, or the
    /// `heads` file the master keeps) to compare with.
    pub compared: bool,
    /// Why they were not, if so.
    pub not_compared_because: Option<String>,
    pub rolled_back: Vec<RolledBack>,
    /// Where the replaced database was moved.
    pub set_aside: Option<PathBuf>,
}

fn heads(store: &MetaStore) -> Result<BTreeMap<String, u64>, MasterError> {
    Ok(store
        .volumes()?
        .into_iter()
        .map(|v| (v.name.to_string(), v.head))
        .collect())
}

/// Installs the backup `backup` as the data directory's metadata, under a
/// new incarnation (version numbers the lost metadata handed out after the
/// backup may be handed out again, so slaves must tell them apart), and
/// reports which volumes it moves back. The master must not be running.
pub fn restore(dir: &Path, backup: &Path) -> Result<RestoreReport, MasterError> {
    std::fs::create_dir_all(dir).map_err(|e| io_err("creating", dir, e))?;
    let dir_stamp = match read_identity(dir) {
        FileState::Unreadable(e) => {
            return Err(MasterError::Refused(format!(
                "the identity file cannot be read ({e}); repair or remove it first"
            )));
        }
        FileState::Present(s) => Some(s),
        FileState::Missing => None,
    };
    let db_path = dir.join(DB_FILE);
    // Checked on a copy in the data directory, so the backup file itself
    // is never written, and the final rename stays on one filesystem.
    let staging = dir.join(format!("{DB_FILE}.restoring"));
    std::fs::copy(backup, &staging).map_err(|e| io_err("copying", backup, e))?;
    let result = stage(dir, dir_stamp, &staging, &db_path);
    if result.is_err() {
        let _ = std::fs::remove_file(&staging);
    }
    result
}

fn stage(
    dir: &Path,
    dir_stamp: Option<Stamp>,
    staging: &Path,
    db_path: &Path,
) -> Result<RestoreReport, MasterError> {
    File::open(staging)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_err("syncing", staging, e))?;
    let restored = MetaStore::open_existing(staging)
        .map_err(|e| MasterError::BadRequest(format!("the backup cannot be read: {e}")))?;
    let backup_stamp = restored
        .stamp()
        .map_err(|e| MasterError::BadRequest(format!("the backup cannot be read: {e}")))?;
    let cluster = match (dir_stamp, backup_stamp) {
        (Some(d), Some(b)) if d.cluster != b.cluster => {
            return Err(MasterError::Refused(format!(
                "the backup is of cluster {}, this data directory of cluster {}",
                b.cluster, d.cluster
            )));
        }
        (Some(d), _) => d.cluster,
        (None, Some(b)) => b.cluster,
        (None, None) => new_id()?,
    };
    let restored_heads = heads(&restored)?;
    let (in_db, why_not) = match probe(db_path) {
        (DbState::InUse(e), _) => return Err(MasterError::Refused(format!("{e}; stop it first"))),
        (DbState::Missing, _) => (None, Some("there is no current database".to_string())),
        (DbState::Unreadable(e), _) => (None, Some(format!("the current database: {e}"))),
        (DbState::Readable(s), _) if s.is_some_and(|s| s.cluster != cluster) => (
            None,
            Some("the current database is another cluster's".to_string()),
        ),
        (DbState::Readable(_), Some(store)) => (Some(heads(&store)?), None),
        (DbState::Readable(_), None) => match MetaStore::open_existing(db_path) {
            Ok(store) => (Some(heads(&store)?), None),
            Err(e) => (None, Some(format!("the current database: {e}"))),
        },
    };
    // The heads the running master last wrote down, of the incarnation
    // this directory was at: they also cover a database that is gone.
    let written = match (high_water::read(dir), dir_stamp) {
        (Ok(Some(f)), Some(d)) if f.incarnation == d.incarnation.to_string() => Some(f.heads),
        (Ok(_), _) => None,
        (Err(e), _) => {
            tracing::warn!("ignoring the heads file: {e}");
            None
        }
    };
    let (current, why_not) = match (in_db, written) {
        (Some(a), Some(b)) => (Some(high_water::highest(&a, &b)), None),
        (Some(a), None) => (Some(a), None),
        (None, Some(b)) => (Some(b), None),
        (None, None) => (None, why_not),
    };
    let stamp = Stamp {
        cluster,
        incarnation: new_id()?,
    };
    restored.set_stamp(stamp)?;
    drop(restored);
    let moved = if db_path.exists() {
        Some(set_aside(db_path, "before-restore")?)
    } else {
        None
    };
    std::fs::rename(staging, db_path).map_err(|e| io_err("installing", db_path, e))?;
    sync_dir(dir)?;
    write_identity(dir, stamp)?;
    Ok(RestoreReport {
        cluster_id: cluster.to_string(),
        backup_incarnation: backup_stamp.map(|s| s.incarnation.to_string()),
        previous_incarnation: dir_stamp.map(|s| s.incarnation.to_string()),
        incarnation: stamp.incarnation.to_string(),
        volumes: restored_heads.len() as u64,
        compared: current.is_some(),
        not_compared_because: why_not,
        rolled_back: current
            .map(|c| rolled_back(&c, &restored_heads))
            .unwrap_or_default(),
        set_aside: moved,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datadir::open;

    #[test]
    fn rolled_back_lists_heads_that_move_back_or_vanish() {
        let current: BTreeMap<String, u64> = [
            ("a".into(), 5),
            ("b".into(), 2),
            ("c".into(), 3),
            ("d".into(), 0),
        ]
        .into();
        let restored: BTreeMap<String, u64> = [
            ("a".into(), 3),
            ("b".into(), 2),
            ("e".into(), 1),
            ("d".into(), 0),
        ]
        .into();
        assert_eq!(
            rolled_back(&current, &restored),
            vec![
                RolledBack {
                    volume: "a".into(),
                    last_head: 5,
                    restored_head: Some(3)
                },
                RolledBack {
                    volume: "c".into(),
                    last_head: 3,
                    restored_head: None
                },
            ]
        );
    }

    #[test]
    fn restore_starts_a_new_incarnation_and_reports_what_moved_back() {
        let dir = tempfile::tempdir().unwrap();
        let vol: elton_proto::VolumeName = "web".parse().unwrap();
        let backup = dir.path().join("backup.redb");
        let first = {
            let opened = open(dir.path(), false).unwrap();
            opened.store.create_volume(&vol, "m", 0, 0).unwrap();
            opened.store.backup_to(&backup).unwrap();
            opened.stamp
        };
        {
            let opened = open(dir.path(), false).unwrap();
            let root = elton_proto::ObjectId::of(b"r");
            opened
                .store
                .add_locations(&"n".parse().unwrap(), &[root])
                .unwrap();
            let new = crate::store::NewVersion {
                volume: vol.clone(),
                parent: 0,
                root,
                message: String::new(),
                author: String::new(),
                host: String::new(),
                time: 0,
                check_root: true,
            };
            opened.store.commit(new).unwrap();
        }
        let report = restore(dir.path(), &backup).unwrap();
        assert!(report.compared);
        assert_eq!(
            report.rolled_back,
            vec![RolledBack {
                volume: "web".into(),
                last_head: 1,
                restored_head: Some(0)
            }]
        );
        let opened = open(dir.path(), false).unwrap();
        assert!(
            !opened.store.incarnation_served().unwrap(),
            "commits wait for slaves"
        );
        assert_eq!(opened.stamp.cluster, first.cluster);
        assert_ne!(opened.stamp.incarnation, first.incarnation);
        assert_eq!(report.incarnation, opened.stamp.incarnation.to_string());
        assert_eq!(opened.store.volume(&vol).unwrap().head, 0);
        drop(opened);
        // Another cluster's backup is refused and changes nothing.
        let other = tempfile::tempdir().unwrap();
        let foreign = other.path().join("b.redb");
        open(other.path(), false)
            .unwrap()
            .store
            .backup_to(&foreign)
            .unwrap();
        assert!(matches!(
            restore(dir.path(), &foreign),
            Err(MasterError::Refused(_))
        ));
        assert!(open(dir.path(), false).is_ok());
    }

    #[test]
    fn without_the_database_the_heads_file_tells_what_is_rolled_back() {
        let dir = tempfile::tempdir().unwrap();
        let backup = dir.path().join("backup.redb");
        let opened = open(dir.path(), false).unwrap();
        let vol: elton_proto::VolumeName = "web".parse().unwrap();
        opened.store.create_volume(&vol, "m", 0, 0).unwrap();
        opened.store.backup_to(&backup).unwrap();
        // What the running master wrote down before its database was lost.
        let file = high_water::HeadsFile {
            format: high_water::HEADS_FORMAT,
            incarnation: opened.stamp.incarnation.to_string(),
            heads: [("web".into(), 7)].into(),
        };
        high_water::write(dir.path(), &file).unwrap();
        drop(opened);
        std::fs::remove_file(dir.path().join(DB_FILE)).unwrap();
        let report = restore(dir.path(), &backup).unwrap();
        assert!(report.compared, "{report:?}");
        assert_eq!(
            report.rolled_back,
            vec![RolledBack {
                volume: "web".into(),
                last_head: 7,
                restored_head: Some(0)
            }]
        );
    }
}
