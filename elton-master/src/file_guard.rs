//! Notices `master.redb` being removed, replaced or truncated while the
//! master runs, so no write is confirmed that a restart would not find.
//!
//! redb keeps writing to the file it opened: after an `rm` or a `mv` over
//! it, commits succeed into an inode no path names any more, and are lost
//! at the next start. So every commit is bracketed by a `stat` of the path:
//! before (the file is still ours and no shorter than our last commit left
//! it), and after (it still is, so the commit landed in the file a restart
//! opens). The first mismatch is sticky: from then on every write is
//! refused until the master is restarted (which then refuses to start on
//! the missing or foreign file, see [`crate::incarnation`]).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use crate::MasterError;

/// What a `stat` of the path showed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    pub dev: u64,
    pub ino: u64,
    pub len: u64,
}

/// Pure: whether the file seen is still the one opened (`opened`: its dev
/// and inode) and no shorter than `min_len`. `Err` says what happened.
pub fn judge(
    opened: (u64, u64),
    min_len: u64,
    seen: Result<Seen, std::io::Error>,
) -> Result<Seen, String> {
    let seen = match seen {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err("the file was removed".into());
        }
        Err(e) => return Err(format!("the file cannot be checked: {e}")),
    };
    if (seen.dev, seen.ino) != opened {
        return Err("another file was put in its place".into());
    }
    if seen.len < min_len {
        return Err(format!(
            "the file was truncated from {min_len} to {} bytes",
            seen.len
        ));
    }
    Ok(seen)
}

pub struct FileGuard {
    path: PathBuf,
    opened: (u64, u64),
    /// Length after the last commit, held across a commit so two commits
    /// never judge each other's resizing.
    len: Mutex<u64>,
    /// Why writes are refused, once they are.
    lost: OnceLock<String>,
}

fn stat(path: &Path) -> Result<Seen, std::io::Error> {
    let m = std::fs::metadata(path)?;
    Ok(Seen {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
    })
}

impl FileGuard {
    /// Remembers the file now at `path` (just opened) as ours.
    pub fn new(path: &Path) -> Result<Self, MasterError> {
        let seen =
            stat(path).map_err(|e| MasterError::Storage(format!("{}: {e}", path.display())))?;
        Ok(Self {
            path: path.to_path_buf(),
            opened: (seen.dev, seen.ino),
            len: Mutex::new(seen.len),
            lost: OnceLock::new(),
        })
    }

    fn refusal(&self, why: &str) -> MasterError {
        MasterError::MetadataLost(format!("{}: {why}", self.path.display()))
    }

    /// `Err` once the file is no longer the one opened.
    pub fn check(&self) -> Result<(), MasterError> {
        let len = self.len.lock().unwrap_or_else(|p| p.into_inner());
        self.verify(*len).map(|_| ())
    }

    fn verify(&self, min_len: u64) -> Result<Seen, MasterError> {
        if let Some(why) = self.lost.get() {
            return Err(self.refusal(why));
        }
        judge(self.opened, min_len, stat(&self.path)).map_err(|why| {
            let why = self.lost.get_or_init(|| {
                tracing::error!(path = %self.path.display(), "{why}: metadata file lost; \
                    refusing every write from now on (restart the master: it will refuse to \
                    start until the metadata is restored or a new incarnation is started)");
                why
            });
            self.refusal(why)
        })
    }

    /// Runs `commit` between two checks; its result is only returned when
    /// the file was ours before and still is after.
    pub fn commit<T>(
        &self,
        commit: impl FnOnce() -> Result<T, MasterError>,
    ) -> Result<T, MasterError> {
        let mut len = self.len.lock().unwrap_or_else(|p| p.into_inner());
        self.verify(*len)?;
        let out = commit()?;
        *len = self.verify(0)?.len;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(dev: u64, ino: u64, len: u64) -> Result<Seen, std::io::Error> {
        Ok(Seen { dev, ino, len })
    }

    #[test]
    fn only_the_opened_file_at_full_length_passes() {
        assert_eq!(
            judge((1, 2), 10, seen(1, 2, 12)),
            Ok(Seen {
                dev: 1,
                ino: 2,
                len: 12
            })
        );
        assert!(
            judge((1, 2), 10, seen(1, 3, 12))
                .unwrap_err()
                .contains("another file")
        );
        assert!(judge((1, 2), 10, seen(9, 2, 12)).is_err());
        assert!(
            judge((1, 2), 10, seen(1, 2, 4))
                .unwrap_err()
                .contains("truncated")
        );
        let gone = Err(std::io::Error::from(std::io::ErrorKind::NotFound));
        assert!(judge((1, 2), 0, gone).unwrap_err().contains("removed"));
        let denied = Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        assert!(judge((1, 2), 0, denied).is_err());
    }

    #[test]
    fn a_removed_file_fails_every_later_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"abc").unwrap();
        let guard = FileGuard::new(&path).unwrap();
        assert_eq!(guard.commit(|| Ok(1)).unwrap(), 1);
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            guard.commit(|| Ok(2)),
            Err(MasterError::MetadataLost(_))
        ));
        // Putting a file back does not make it ours.
        std::fs::write(&path, b"abc").unwrap();
        assert!(matches!(guard.check(), Err(MasterError::MetadataLost(_))));
        // A commit during which the file goes is not confirmed.
        let path2 = dir.path().join("g");
        std::fs::write(&path2, b"abc").unwrap();
        let guard = FileGuard::new(&path2).unwrap();
        let r = guard
            .commit(|| std::fs::remove_file(&path2).map_err(|e| MasterError::Io(e.to_string())));
        assert!(matches!(r, Err(MasterError::MetadataLost(m)) if m.contains("removed")));
    }
}
