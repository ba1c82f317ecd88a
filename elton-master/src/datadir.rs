//! The master's data directory: the `identity` file next to `master.redb`,
//! opening the database only when the two agree ([`crate::incarnation`]
//! decides), and new incarnations. Installing a backup is [`crate::restore`].

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::MasterError;
use crate::incarnation::{self, DbState, FileState, Id, Plan, Stamp};
use crate::store::{MetaStore, Peeked};

pub const DB_FILE: &str = "master.redb";
pub const IDENTITY_FILE: &str = "identity";
/// Format of the identity file; bump on any incompatible change.
pub const IDENTITY_FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityFile {
    format: u32,
    cluster_id: String,
    incarnation: String,
}

/// The metadata a master serves, and which cluster and incarnation it is.
pub struct Opened {
    pub store: MetaStore,
    pub stamp: Stamp,
}

pub(crate) fn io_err(what: &str, path: &Path, e: std::io::Error) -> MasterError {
    MasterError::Io(format!("{what} {}: {e}", path.display()))
}

pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A new random id (never 0).
pub fn new_id() -> Result<Id, MasterError> {
    loop {
        let raw = getrandom::u64().map_err(|e| MasterError::Io(format!("random id: {e}")))?;
        if let Some(id) = Id::new(raw) {
            return Ok(id);
        }
    }
}

/// Reads `<dir>/identity`.
pub fn read_identity(dir: &Path) -> FileState {
    let path = dir.join(IDENTITY_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return FileState::Missing,
        Err(e) => return FileState::Unreadable(format!("{}: {e}", path.display())),
    };
    let parsed = toml::from_str::<IdentityFile>(&text)
        .map_err(|e| e.to_string())
        .and_then(|f| {
            if f.format != IDENTITY_FORMAT {
                return Err(format!(
                    "format {} (this build reads {IDENTITY_FORMAT})",
                    f.format
                ));
            }
            Ok(Stamp {
                cluster: f.cluster_id.parse()?,
                incarnation: f.incarnation.parse()?,
            })
        });
    match parsed {
        Ok(s) => FileState::Present(s),
        Err(e) => FileState::Unreadable(format!("{}: {e}", path.display())),
    }
}

/// Writes `<dir>/identity` durably (temp file, fsync, rename, fsync of the
/// directory): after a crash it holds the old or the new stamp.
pub fn write_identity(dir: &Path, stamp: Stamp) -> Result<(), MasterError> {
    let body = toml::to_string(&IdentityFile {
        format: IDENTITY_FORMAT,
        cluster_id: stamp.cluster.to_string(),
        incarnation: stamp.incarnation.to_string(),
    })
    .map_err(|e| MasterError::Io(format!("encoding the identity file: {e}")))?;
    let text = format!(
        "# Which cluster and incarnation {DB_FILE} in this directory must be; the master\n\
         # refuses to start when they differ. Do not edit; see docs/operations.md.\n{body}"
    );
    write_durably(&dir.join(IDENTITY_FILE), text.as_bytes())
}

pub(crate) fn write_durably(dest: &Path, bytes: &[u8]) -> Result<(), MasterError> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    let mut tmp =
        tempfile::NamedTempFile::new_in(dir).map_err(|e| io_err("creating a file in", dir, e))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| io_err("writing", tmp.path(), e))?;
    tmp.persist(dest)
        .map_err(|e| io_err("renaming into", dest, e.error))?;
    sync_dir(dir)
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), MasterError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("syncing", dir, e))
}

/// What the database at `path` is, read without changing it where redb
/// allows (a file left by a crash is repaired: returned open).
pub(crate) fn probe(path: &Path) -> (DbState, Option<MetaStore>) {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (DbState::Missing, None),
        Err(e) => return (DbState::Unreadable(e.to_string()), None),
        Ok(_) => {}
    }
    match MetaStore::peek(path) {
        Ok(Peeked::Stamp(stamp)) => return (DbState::Readable(stamp), None),
        Ok(Peeked::NeedsRepair) => {}
        Err(MasterError::InUse(e)) => return (DbState::InUse(e), None),
        Err(e) => return (DbState::Unreadable(e.to_string()), None),
    }
    tracing::info!(path = %path.display(), "metadata not closed cleanly: repairing");
    let store = match MetaStore::open_existing(path) {
        Ok(s) => s,
        Err(MasterError::InUse(e)) => return (DbState::InUse(e), None),
        Err(e) => return (DbState::Unreadable(e.to_string()), None),
    };
    match store.stamp() {
        Ok(stamp) => (DbState::Readable(stamp), Some(store)),
        Err(e) => (DbState::Unreadable(e.to_string()), None),
    }
}

/// `store` if open, else the existing database at `path`, checked to be
/// still `expected` (it was peeked at without a lock).
fn open_checked(
    store: Option<MetaStore>,
    path: &Path,
    expected: Option<Stamp>,
) -> Result<MetaStore, MasterError> {
    let store = match store {
        Some(s) => s,
        None => MetaStore::open_existing(path)?,
    };
    let found = store.stamp()?;
    if found != expected {
        return Err(MasterError::Refused(format!(
            "{} changed while it was being opened; start again",
            path.display()
        )));
    }
    Ok(store)
}

/// Moves `path` aside (never deleting it) as `<name>.<why>-<unix time>`.
pub(crate) fn set_aside(path: &Path, why: &str) -> Result<PathBuf, MasterError> {
    let name = path
        .file_name()
        .map_or_else(|| DB_FILE.into(), |n| n.to_string_lossy().into_owned());
    let aside = path.with_file_name(format!("{name}.{why}-{}", now_unix()));
    std::fs::rename(path, &aside).map_err(|e| io_err("moving aside", path, e))?;
    Ok(aside)
}

/// Opens the data directory's metadata for serving, or says why not.
pub fn open(dir: &Path, new_incarnation: bool) -> Result<Opened, MasterError> {
    std::fs::create_dir_all(dir).map_err(|e| io_err("creating", dir, e))?;
    let db_path = dir.join(DB_FILE);
    let file = read_identity(dir);
    let (db, store) = probe(&db_path);
    match incarnation::plan(&file, &db, new_incarnation) {
        Plan::Open(stamp) => Ok(Opened {
            store: open_checked(store, &db_path, Some(stamp))?,
            stamp,
        }),
        Plan::RewriteFile(stamp) => {
            tracing::warn!(%stamp, "identity file missing: written again from {DB_FILE}");
            let store = open_checked(store, &db_path, Some(stamp))?;
            write_identity(dir, stamp)?;
            Ok(Opened { store, stamp })
        }
        Plan::Init | Plan::Adopt => {
            let store = match (store, &db) {
                (store, DbState::Readable(None)) => open_checked(store, &db_path, None)?,
                (_, _) => MetaStore::open(&db_path)?,
            };
            let stamp = Stamp {
                cluster: new_id()?,
                incarnation: new_id()?,
            };
            store.set_stamp(stamp)?;
            // Nothing was ever issued under another incarnation of these
            // versions: commits need not wait for slaves (see `settle`).
            store.set_incarnation_served()?;
            write_identity(dir, stamp)?;
            tracing::info!(%stamp, dir = %dir.display(), "metadata initialised");
            Ok(Opened { store, stamp })
        }
        Plan::NewIncarnation {
            cluster,
            set_aside: aside,
        } => {
            drop(store);
            let previous = match &file {
                FileState::Present(s) => s.incarnation.to_string(),
                _ => "none".into(),
            };
            let moved = if aside {
                Some(set_aside(&db_path, "set-aside")?)
            } else {
                None
            };
            let store = MetaStore::open(&db_path)?;
            let stamp = Stamp {
                cluster: match cluster {
                    Some(c) => c,
                    None => new_id()?,
                },
                incarnation: new_id()?,
            };
            store.set_stamp(stamp)?;
            write_identity(dir, stamp)?;
            tracing::error!(%stamp, previous_incarnation = %previous,
                set_aside = %moved.as_ref().map_or("-".into(), |p| p.display().to_string()),
                "NEW INCARNATION: starting on EMPTY metadata; version numbers start again at 1; \
                 slaves drop what they cached of earlier incarnations");
            Ok(Opened { store, stamp })
        }
        Plan::Refuse(why) => Err(MasterError::Refused(format!("{}: {why}", dir.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_directory_opens_again_and_refuses_a_lost_database() {
        let dir = tempfile::tempdir().unwrap();
        let first = open(dir.path(), false).unwrap().stamp;
        let again = open(dir.path(), false).unwrap();
        assert!(again.store.incarnation_served().unwrap());
        let again = again.stamp;
        assert_eq!(first, again);
        std::fs::remove_file(dir.path().join(DB_FILE)).unwrap();
        match open(dir.path(), false) {
            Err(MasterError::Refused(m)) => assert!(m.contains("--new-incarnation"), "{m}"),
            other => panic!("expected a refusal, got {:?}", other.err()),
        }
        let next = open(dir.path(), true).unwrap();
        assert!(!next.store.incarnation_served().unwrap());
        // Never while the database is open elsewhere.
        assert!(
            matches!(open(dir.path(), true), Err(MasterError::Refused(m)) if m.contains("in use"))
        );
        let next = next.stamp;
        assert_eq!(next.cluster, first.cluster);
        assert_ne!(next.incarnation, first.incarnation);
        assert!(matches!(
            open(dir.path(), true),
            Err(MasterError::Refused(_))
        ));
    }

    #[test]
    fn a_database_of_an_earlier_build_is_adopted_with_its_contents() {
        let dir = tempfile::tempdir().unwrap();
        let vol: elton_proto::VolumeName = "web".parse().unwrap();
        MetaStore::open(&dir.path().join(DB_FILE))
            .unwrap()
            .create_volume(&vol, "m", 0, 0)
            .unwrap();
        let opened = open(dir.path(), false).unwrap();
        assert_eq!(opened.store.stamp().unwrap(), Some(opened.stamp));
        assert_eq!(read_identity(dir.path()), FileState::Present(opened.stamp));
        assert!(opened.store.volume(&vol).is_ok());
        assert!(opened.store.incarnation_served().unwrap());
        drop(opened);
        // The identity file lost alone is written again from the database.
        let stamp = open(dir.path(), false).unwrap().stamp;
        std::fs::remove_file(dir.path().join(IDENTITY_FILE)).unwrap();
        assert_eq!(open(dir.path(), false).unwrap().stamp, stamp);
        assert_eq!(read_identity(dir.path()), FileState::Present(stamp));
    }

    #[test]
    fn a_truncated_or_foreign_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join(DB_FILE);
        drop(open(dir.path(), false).unwrap());
        let full = std::fs::read(&db).unwrap();
        for len in [0, 100, full.len() / 2] {
            std::fs::write(&db, &full[..len]).unwrap();
            match open(dir.path(), false) {
                Err(MasterError::Refused(m)) => assert!(m.contains("cannot be read"), "{m}"),
                other => panic!(
                    "truncated to {len}: expected a refusal, got {:?}",
                    other.err()
                ),
            }
        }
        let other = tempfile::tempdir().unwrap();
        drop(open(other.path(), false).unwrap());
        std::fs::copy(other.path().join(DB_FILE), &db).unwrap();
        let foreign = std::fs::read(&db).unwrap();
        match open(dir.path(), false) {
            Err(MasterError::Refused(m)) => assert!(m.contains("belongs to cluster"), "{m}"),
            other => panic!("expected a refusal, got {:?}", other.err()),
        }
        assert!(
            std::fs::read(&db).unwrap() == foreign,
            "a refusal changed the file"
        );
    }
}
