//! The upper directory reached through directory descriptors. Every upper
//! entry is named by its parent directory's descriptor and its own name,
//! never by an absolute path, so paths inside the mount reach the native
//! limits (PATH_MAX 4,096, NAME_MAX 255) whatever the length of the
//! upper's own path. Descriptors of recently used directories are kept
//! (a bounded cache), which also spares the kernel a walk from `/` on
//! every call.
//!
//! A cached descriptor follows its directory when it moves and keeps
//! naming it when it is removed: whoever moves or removes an upper
//! directory must [`UpperDirs::forget`] it (and everything under it).
//! [`super::layers::Layers`] does for its own changes; code that changes
//! the upper behind its back calls [`UpperDirs::forget_all`].

use std::ffi::{OsStr, OsString};
use std::io;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use lru::LruCache;
use rustix::fs::{AtFlags, CWD, Mode, OFlags};

use super::meta::Meta;

/// Directory descriptors kept open at most (the daemon's descriptor limit
/// is shared with open files).
const MAX_CACHED: usize = 256;

/// How directories are opened: readable (for xattrs and times through the
/// descriptor; the daemon runs as root), never through a symlink.
fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// An upper entry: its parent directory's descriptor and its name (`.`
/// for the upper's root itself).
#[derive(Clone)]
pub struct At {
    pub dir: Arc<OwnedFd>,
    pub name: OsString,
}

impl At {
    /// The entry's attributes (not following a symlink); `None` when it
    /// does not exist.
    pub fn stat(&self) -> io::Result<Option<Meta>> {
        match rustix::fs::statat(&*self.dir, &self.name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(s) => Ok(Some(s.into())),
            Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// A short path to the entry, for the calls that have no `*at` form
    /// (the `l*xattr` family): through the directory descriptor's link in
    /// `/proc`, whose length does not depend on the entry's depth.
    pub fn proc_path(&self) -> PathBuf {
        Path::new("/proc/self/fd")
            .join(self.dir.as_raw_fd().to_string())
            .join(&self.name)
    }

    /// Opens the entry, never following a symlink.
    pub fn open(&self, flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
        Ok(rustix::fs::openat(
            &*self.dir,
            &self.name,
            flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            mode,
        )?)
    }
}

struct Cache {
    root: Option<Arc<OwnedFd>>,
    dirs: LruCache<PathBuf, Arc<OwnedFd>>,
}

pub struct UpperDirs {
    path: PathBuf,
    cache: Mutex<Cache>,
}

impl UpperDirs {
    /// The upper at `path`; opened on first use.
    pub fn new(path: &Path) -> Self {
        let cap = NonZeroUsize::new(MAX_CACHED).unwrap_or(NonZeroUsize::MIN);
        Self {
            path: path.to_path_buf(),
            cache: Mutex::new(Cache {
                root: None,
                dirs: LruCache::new(cap),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn root_of(&self, c: &mut Cache) -> io::Result<Arc<OwnedFd>> {
        if let Some(fd) = &c.root {
            return Ok(fd.clone());
        }
        let fd = Arc::new(rustix::fs::openat(
            CWD,
            &self.path,
            dir_flags(),
            Mode::empty(),
        )?);
        c.root = Some(fd.clone());
        Ok(fd)
    }

    /// The upper directory `rel` (relative to the upper's root; empty for
    /// the root). Fails with ENOENT or ENOTDIR when the upper has no
    /// directory there.
    pub fn dir(&self, rel: &Path) -> io::Result<Arc<OwnedFd>> {
        let mut c = self.lock();
        // The nearest ancestor already open, then down from there.
        let mut base = None;
        for anc in rel.ancestors() {
            if anc.as_os_str().is_empty() {
                break;
            }
            if let Some(fd) = c.dirs.get(anc) {
                base = Some((anc, fd.clone()));
                break;
            }
        }
        let (base, mut fd) = match base {
            Some(b) => b,
            None => (Path::new(""), self.root_of(&mut c)?),
        };
        let mut prefix = base.to_path_buf();
        let rest = rel.strip_prefix(base).unwrap_or(rel);
        for name in rest.iter() {
            prefix.push(name);
            fd = Arc::new(open_dir(&fd, name)?);
            c.dirs.put(prefix.clone(), fd.clone());
        }
        Ok(fd)
    }

    /// The upper directory `rel` whose parent directory is `parent` (a walk
    /// down the tree opens each level from the one before).
    pub fn child(&self, parent: &Arc<OwnedFd>, rel: &Path) -> io::Result<Arc<OwnedFd>> {
        let mut c = self.lock();
        if let Some(fd) = c.dirs.get(rel) {
            return Ok(fd.clone());
        }
        let name = rel
            .file_name()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        let fd = Arc::new(open_dir(parent, name)?);
        c.dirs.put(rel.to_path_buf(), fd.clone());
        Ok(fd)
    }

    /// The upper entry at `rel` (whether or not it exists); its parent
    /// directory must exist in the upper.
    pub fn at(&self, rel: &Path) -> io::Result<At> {
        match (rel.parent(), rel.file_name()) {
            (Some(parent), Some(name)) => Ok(At {
                dir: self.dir(parent)?,
                name: name.to_os_string(),
            }),
            _ => Ok(At {
                dir: self.dir(Path::new(""))?,
                name: OsString::from("."),
            }),
        }
    }

    /// Drops the descriptors of `rel` and of every directory under it
    /// (moved or removed).
    pub fn forget(&self, rel: &Path) {
        if rel.as_os_str().is_empty() {
            return self.forget_all();
        }
        let mut c = self.lock();
        let stale: Vec<PathBuf> = c
            .dirs
            .iter()
            .filter(|(k, _)| k.starts_with(rel))
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            c.dirs.pop(&k);
        }
    }

    /// Drops every cached descriptor but the root's (the upper changed in
    /// ways not told one by one: a commit cleared it, an update applied).
    pub fn forget_all(&self) {
        self.lock().dirs.clear();
    }
}

fn open_dir(parent: &impl AsFd, name: &OsStr) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        parent,
        name,
        dir_flags(),
        Mode::empty(),
    )?)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn phase1_reaches_paths_longer_than_path_max() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = UpperDirs::new(dir.path());
        // 40 levels of 200-byte names: 8,040 bytes, twice PATH_MAX.
        let name = "n".repeat(200);
        let mut rel = PathBuf::new();
        for _ in 0..40 {
            rel.push(&name);
            let at = dirs.at(&rel).unwrap();
            rustix::fs::mkdirat(&*at.dir, &at.name, Mode::from_bits_truncate(0o755)).unwrap();
        }
        assert!(rel.as_os_str().len() > 8000);
        let at = dirs.at(&rel.join("f")).unwrap();
        at.open(
            OFlags::CREATE | OFlags::WRONLY,
            Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        assert!(at.stat().unwrap().unwrap().is_file());
        // Found again after the cache is emptied: walked from the root.
        dirs.forget_all();
        assert!(dirs.at(&rel.join("f")).unwrap().stat().unwrap().is_some());
    }

    #[test]
    fn phase2_forgotten_directories_are_found_at_their_new_place() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("a/b")).unwrap();
        fs::write(dir.path().join("a/b/f"), "x").unwrap();
        let dirs = UpperDirs::new(dir.path());
        assert!(
            dirs.at(Path::new("a/b/f"))
                .unwrap()
                .stat()
                .unwrap()
                .is_some()
        );
        fs::rename(dir.path().join("a"), dir.path().join("c")).unwrap();
        fs::create_dir_all(dir.path().join("a/b")).unwrap();
        // Until told, the cached descriptor still names the moved directory.
        assert!(
            dirs.at(Path::new("a/b/f"))
                .unwrap()
                .stat()
                .unwrap()
                .is_some()
        );
        dirs.forget(Path::new("a"));
        assert!(
            dirs.at(Path::new("a/b/f"))
                .unwrap()
                .stat()
                .unwrap()
                .is_none()
        );
        assert!(
            dirs.at(Path::new("c/b/f"))
                .unwrap()
                .stat()
                .unwrap()
                .is_some()
        );
        // A missing or non-directory parent is an error, not a walk past it.
        assert!(dirs.at(Path::new("nope/f")).is_err());
        assert!(dirs.at(Path::new("c/b/f/g")).is_err());
    }
}
