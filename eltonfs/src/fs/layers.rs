//! The overlay: a read-only lower tree (manifests) under a writable upper
//! directory, with the kernel overlayfs encoding in the upper so that the
//! same upper can be inspected (or mounted) with `mount -t overlay`:
//!
//! - a *whiteout* (deleted lower entry) is a character device 0:0;
//! - an *opaque* directory (hides the lower directory of the same path)
//!   carries the xattr `trusted.overlay.opaque = "y"`.
//!
//! Everything here works on paths relative to the mount root; the upper is
//! reached through directory descriptors ([`UpperDirs`]), never through
//! absolute paths.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{self, File, Metadata};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use elton_proto::{DirManifest, Entry, EntryKind, ObjectId};
use rustix::fs::{AtFlags, CWD, FileType as RxFileType, Mode, OFlags, Timespec, Timestamps};

use super::lower::LowerSource;
use super::meta::Meta;
pub use super::upper_dirs::{At, UpperDirs};

pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// xattrs of the overlay encoding, hidden from users.
pub const PRIVATE_XATTR_PREFIX: &str = "trusted.overlay.";

/// What one path is, across both layers.
#[derive(Clone, Debug)]
pub struct View {
    /// The upper entry (never a whiteout), if any.
    pub upper: Option<Meta>,
    /// The lower entry at this path, unless hidden by an opaque directory
    /// or a whiteout above it.
    pub lower: Option<Entry>,
}

impl View {
    pub fn is_dir(&self) -> bool {
        match &self.upper {
            Some(m) => m.is_dir(),
            None => self
                .lower
                .as_ref()
                .is_some_and(|e| e.kind == EntryKind::Dir),
        }
    }
}

/// Marks a user's 0:0 character device in the upper, which would otherwise
/// read as a whiteout (format: docs/formats.md, upper encoding).
pub const DEVICE_XATTR: &str = "trusted.overlay.elton.device";

/// Whether the upper entry at `path` (with metadata `m`) is a whiteout: a
/// 0:0 character device that is not a user's device node.
pub fn is_whiteout(path: &Path, m: &Metadata) -> bool {
    m.file_type().is_char_device() && m.rdev() == 0 && !flag_set(path, DEVICE_XATTR)
}

/// [`is_whiteout`] for an entry named through its directory.
pub fn is_whiteout_at(at: &At, m: &Meta) -> bool {
    m.is_char_device() && m.rdev() == 0 && !flag_set(&at.proc_path(), DEVICE_XATTR)
}

/// Whether the xattr `name` of `path` (not following a symlink) is "y".
fn flag_set(path: &Path, name: &str) -> bool {
    let mut buf = [0u8; 2];
    matches!(rustix::fs::lgetxattr(path, name, &mut buf[..]), Ok(1)) && buf[0] == b'y'
}

pub fn is_opaque(upper_path: &Path) -> bool {
    flag_set(upper_path, OPAQUE_XATTR)
}

/// [`is_opaque`] for an open upper directory.
fn is_opaque_dir(dir: &impl AsFd) -> bool {
    let mut buf = [0u8; 2];
    matches!(
        rustix::fs::fgetxattr(dir, OPAQUE_XATTR, &mut buf[..]),
        Ok(1)
    ) && buf[0] == b'y'
}

/// Converts manifest nanoseconds to a `SystemTime`.
pub fn mtime_of(e: &Entry) -> std::time::SystemTime {
    if e.mtime >= 0 {
        UNIX_EPOCH + Duration::from_nanos(e.mtime as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(e.mtime.unsigned_abs())
    }
}

pub struct Layers {
    pub upper: PathBuf,
    /// Scratch space on the upper's filesystem for atomic copy-ups.
    pub work: PathBuf,
    pub lower: Arc<dyn LowerSource>,
    /// Root manifest of the mounted version; `None` for an empty volume.
    pub root: Option<ObjectId>,
    /// The upper's directories, by descriptor.
    pub dirs: UpperDirs,
}

impl Layers {
    pub fn new(
        upper: PathBuf,
        work: PathBuf,
        lower: Arc<dyn LowerSource>,
        root: Option<ObjectId>,
    ) -> Self {
        Self {
            dirs: UpperDirs::new(&upper),
            upper,
            work,
            lower,
            root,
        }
    }

    /// The absolute path of `rel` in the upper, for code that walks the
    /// upper as a whole (status, commit, update). Mount operations use
    /// [`Layers::at`] instead: an absolute path may exceed PATH_MAX.
    pub fn upper_path(&self, rel: &Path) -> PathBuf {
        if rel.as_os_str().is_empty() {
            self.upper.clone()
        } else {
            self.upper.join(rel)
        }
    }

    /// The upper entry at `rel`, named through its parent directory (which
    /// must exist in the upper).
    pub fn at(&self, rel: &Path) -> io::Result<At> {
        self.dirs.at(rel)
    }

    fn root_manifest(&self) -> io::Result<Option<Arc<DirManifest>>> {
        self.root.map(|id| self.lower.manifest(&id)).transpose()
    }

    /// Resolves `rel` across the layers; `None` when it does not exist.
    /// Walks down the upper by descriptor, and stops looking there once a
    /// level is missing (nothing can be under it).
    pub fn view(&self, rel: &Path) -> io::Result<Option<View>> {
        let root = self.dirs.dir(Path::new(""))?;
        let components: Vec<_> = rel.iter().collect();
        if components.is_empty() {
            let lower = self.root.map(|id| Entry {
                name: String::new(),
                kind: EntryKind::Dir,
                mode: 0o755,
                uid: 0,
                gid: 0,
                size: 0,
                mtime: 0,
                object: Some(id),
                recipe: false,
                target: None,
                xattrs: None,
            });
            return Ok(Some(View {
                upper: Some(rustix::fs::fstat(&*root)?.into()),
                lower,
            }));
        }
        let mut lower_dir = if is_opaque_dir(&*root) {
            None
        } else {
            self.root_manifest()?
        };
        // The upper directory of the current level, while there is one.
        let mut dir = Some(root);
        let mut prefix = PathBuf::new();
        for (i, name) in components.iter().enumerate() {
            let last = i + 1 == components.len();
            prefix.push(name);
            let (upper, at) = match &dir {
                Some(d) => {
                    let at = At {
                        dir: d.clone(),
                        name: name.to_os_string(),
                    };
                    (at.stat()?, Some(at))
                }
                None => (None, None),
            };
            if let (Some(m), Some(at)) = (&upper, &at)
                && is_whiteout_at(at, m)
            {
                return Ok(None);
            }
            let lower = match (&lower_dir, name.to_str()) {
                (Some(d), Some(n)) => d.get(n).cloned(),
                _ => None,
            };
            if last {
                if upper.is_none() && lower.is_none() {
                    return Ok(None);
                }
                return Ok(Some(View { upper, lower }));
            }
            let opaque = match (&upper, &dir) {
                (Some(m), _) if !m.is_dir() => return Ok(None),
                (Some(_), Some(parent)) => {
                    let d = self.dirs.child(parent, &prefix)?;
                    let opaque = is_opaque_dir(&*d);
                    dir = Some(d);
                    opaque
                }
                _ => {
                    dir = None;
                    false
                }
            };
            lower_dir = if opaque {
                None
            } else {
                match &lower {
                    Some(e) if e.kind == EntryKind::Dir => match e.object {
                        Some(id) => Some(self.lower.manifest(&id)?),
                        None => None,
                    },
                    _ => None,
                }
            };
            if dir.is_none() && lower_dir.is_none() {
                return Ok(None);
            }
        }
        Ok(None)
    }

    /// The lower directory merged under directory `rel`, if any: none when
    /// the upper has an opaque directory or a non-directory there.
    pub fn merged_lower(&self, rel: &Path, view: &View) -> io::Result<Option<ObjectId>> {
        let Some(lower) = view.lower.as_ref().filter(|e| e.kind == EntryKind::Dir) else {
            return Ok(None);
        };
        Ok(match &view.upper {
            None => lower.object,
            Some(m) if m.is_dir() && !is_opaque_dir(&*self.dirs.dir(rel)?) => lower.object,
            Some(_) => None,
        })
    }

    /// Directory `rel`'s two layers, for resolving many of its children
    /// without walking from the root for each; `None` when `rel` is not a
    /// directory.
    pub fn children(&self, rel: &Path) -> io::Result<Option<Children>> {
        let Some(view) = self.view(rel)? else {
            return Ok(None);
        };
        if !view.is_dir() {
            return Ok(None);
        }
        let upper = match &view.upper {
            Some(_) => Some(self.dirs.dir(rel)?),
            None => None,
        };
        let lower = match self.merged_lower(rel, &view)? {
            Some(id) => Some(self.lower.manifest(&id)?),
            None => None,
        };
        Ok(Some(Children { upper, lower }))
    }

    /// The merged listing of directory `rel`: name → whether it is a dir,
    /// plus the kind for readdir.
    pub fn list(
        &self,
        rel: &Path,
        view: &View,
    ) -> io::Result<BTreeMap<OsString, EntryKindOrUpper>> {
        let mut out = BTreeMap::new();
        let mut whiteouts = Vec::new();
        if view.upper.as_ref().is_some_and(Meta::is_dir) {
            let dir = self.dirs.dir(rel)?;
            for e in rustix::fs::Dir::read_from(&*dir)? {
                let e = e?;
                let name = e.file_name().to_bytes();
                if name == b"." || name == b".." {
                    continue;
                }
                let at = At {
                    dir: dir.clone(),
                    name: OsString::from_vec(name.to_vec()),
                };
                // Gone since the listing was read: left out.
                let Some(m) = at.stat()? else { continue };
                if is_whiteout_at(&at, &m) {
                    whiteouts.push(at.name);
                } else {
                    out.insert(at.name, EntryKindOrUpper::Upper(m));
                }
            }
        }
        if let Some(id) = self.merged_lower(rel, view)? {
            let manifest = self.lower.manifest(&id)?;
            let lower = manifest
                .entries
                .iter()
                .map(|e| (OsString::from(&e.name), EntryKindOrUpper::Lower(e.kind)));
            if out.is_empty() && whiteouts.is_empty() {
                // Only the lower has entries: already sorted, built in bulk.
                out = lower.collect();
            } else {
                // Sorted, so that many deletions do not make a listing
                // quadratic.
                whiteouts.sort_unstable();
                for (name, kind) in lower {
                    if !out.contains_key(&name) && whiteouts.binary_search(&name).is_err() {
                        out.insert(name, kind);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Makes sure every ancestor of `rel` exists as a directory in the upper.
    pub fn copy_up_parents(&self, rel: &Path) -> io::Result<()> {
        let mut prefix = PathBuf::new();
        let parents: Vec<_> = rel.parent().map(|p| p.iter().collect()).unwrap_or_default();
        for c in parents {
            prefix.push(c);
            if self.at(&prefix)?.stat()?.is_none() {
                let view = self
                    .view(&prefix)?
                    .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
                let lower = view
                    .lower
                    .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
                self.copy_up_entry(&prefix, &lower)?;
            }
        }
        Ok(())
    }

    /// Copies a lower entry into the upper (its ancestors must exist there).
    /// Files are copied through the work directory and renamed into place,
    /// so a crash never leaves a half-copied upper file. Like overlayfs,
    /// a copy-up changes nothing visible: the upper directory the entry
    /// lands in keeps its times.
    pub fn copy_up_entry(&self, rel: &Path, lower: &Entry) -> io::Result<()> {
        self.copy_up_entry_with(rel, lower, true)
    }

    /// `copy_up_entry`; without `data`, a file is copied up empty (about to
    /// be truncated).
    fn copy_up_entry_with(&self, rel: &Path, lower: &Entry, data: bool) -> io::Result<()> {
        let dest = self.at(rel)?;
        let parent_times = rustix::fs::fstat(&*dest.dir)?;
        self.copy_up_entry_inner(&dest, lower, data)?;
        let ts = |secs: i64, nsecs: i64| Timespec {
            tv_sec: secs,
            tv_nsec: nsecs as _,
        };
        let m = Meta::from(parent_times);
        let ((a, an), (mt, mn)) = (m.atime(), m.mtime());
        rustix::fs::futimens(
            &*dest.dir,
            &Timestamps {
                last_access: ts(a, an),
                last_modification: ts(mt, mn),
            },
        )?;
        Ok(())
    }

    fn copy_up_entry_inner(&self, dest: &At, lower: &Entry, data: bool) -> io::Result<()> {
        match lower.kind {
            EntryKind::Dir => {
                rustix::fs::mkdirat(&*dest.dir, &dest.name, Mode::from_bits_truncate(0o700))?;
            }
            EntryKind::Symlink => {
                let target = lower.target.as_deref().unwrap_or_default();
                rustix::fs::symlinkat(target, &*dest.dir, &dest.name)?;
            }
            EntryKind::File => {
                let tmp = tempfile::NamedTempFile::new_in(&self.work)?;
                if data && lower.recipe {
                    // The full bytes, chunk by chunk (fetching missing ones).
                    let (_, recipe) = super::chunked::recipe_of(&*self.lower, lower)?;
                    let mut out = tmp.reopen()?;
                    super::chunked::write_all(&*self.lower, &recipe, &mut out)?;
                } else if data {
                    let id = lower
                        .object
                        .ok_or_else(|| io::Error::from_raw_os_error(libc::EIO))?;
                    let src = self.lower.object_path(&id)?;
                    fs::copy(&src, tmp.path())?;
                }
                move_into(tmp.into_temp_path(), dest)?;
            }
        }
        apply_lower_attrs(dest, lower)
    }

    /// Copies `rel` up if it only exists in the lower; returns its upper
    /// entry.
    pub fn copy_up(&self, rel: &Path) -> io::Result<At> {
        self.copy_up_with(rel, true)
    }

    /// `copy_up`; without `data`, a lower file is copied up empty (for
    /// O_TRUNC and truncation to zero, which need none of its content).
    pub fn copy_up_with(&self, rel: &Path, data: bool) -> io::Result<At> {
        let view = self
            .view(rel)?
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        if view.upper.is_none() {
            self.copy_up_parents(rel)?;
            let lower = view
                .lower
                .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
            self.copy_up_entry_with(rel, &lower, data)?;
        }
        self.at(rel)
    }

    /// Copies a whole subtree up (for renaming a directory with lower
    /// content); the result is self-contained, so it is marked opaque.
    pub fn copy_up_tree(&self, rel: &Path) -> io::Result<()> {
        let view = self
            .view(rel)?
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        self.copy_up(rel)?;
        if view.is_dir() {
            for (name, _) in self.list(rel, &view)? {
                self.copy_up_tree(&rel.join(name))?;
            }
            set_opaque_at(&self.at(rel)?)?;
        }
        Ok(())
    }

    /// Removes whatever the upper has at `rel` (file, link, whiteout, or a
    /// directory holding only whiteouts).
    pub fn remove_upper(&self, rel: &Path) -> io::Result<()> {
        let at = match self.at(rel) {
            Ok(at) => at,
            // No parent directory in the upper: nothing there.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        match at.stat()? {
            None => Ok(()),
            Some(m) if m.is_dir() => {
                self.dirs.forget(rel);
                remove_tree(&at.dir, &at.name)
            }
            Some(_) => Ok(rustix::fs::unlinkat(&*at.dir, &at.name, AtFlags::empty())?),
        }
    }

    /// Moves the upper entry `from` to `to` (replacing an entry there as
    /// rename(2) does), keeping the directory cache true.
    pub fn rename_upper(
        &self,
        from: &At,
        from_rel: &Path,
        to: &At,
        to_rel: &Path,
    ) -> io::Result<()> {
        rustix::fs::renameat(&*from.dir, &from.name, &*to.dir, &to.name)?;
        self.dirs.forget(from_rel);
        self.dirs.forget(to_rel);
        Ok(())
    }

    /// Makes a user's 0:0 character device at `rel` (whose parents exist
    /// in the upper): made and marked in the work directory, then renamed
    /// into place, so that a crash never leaves an unmarked one (which
    /// would read as a whiteout) where the caller expects a device.
    pub fn make_zero_device(&self, rel: &Path, perm: Mode) -> io::Result<()> {
        let tmp = tempfile::Builder::new()
            .prefix("device")
            .make_in(&self.work, |p| {
                rustix::fs::mknodat(CWD, p, RxFileType::CharacterDevice, perm, 0)?;
                Ok(())
            })?;
        rustix::fs::lsetxattr(
            tmp.path(),
            DEVICE_XATTR,
            b"y",
            rustix::fs::XattrFlags::empty(),
        )?;
        let (_, path) = tmp.into_parts();
        move_into(path, &self.at(rel)?)
    }

    /// Records that the lower entry at `rel` is deleted.
    pub fn whiteout(&self, rel: &Path) -> io::Result<()> {
        self.copy_up_parents(rel)?;
        let at = self.at(rel)?;
        rustix::fs::mknodat(
            &*at.dir,
            &at.name,
            RxFileType::CharacterDevice,
            Mode::empty(),
            0,
        )?;
        Ok(())
    }
}

/// A directory's upper directory and merged lower manifest (see
/// [`Layers::children`]).
pub struct Children {
    upper: Option<Arc<OwnedFd>>,
    lower: Option<Arc<DirManifest>>,
}

impl Children {
    /// What [`Layers::view`] gives for the child `name`, at the cost of at
    /// most one `fstatat` (none under a directory only the lower has).
    pub fn view(&self, name: &std::ffi::OsStr) -> io::Result<Option<View>> {
        let upper = match &self.upper {
            Some(dir) => {
                let at = At {
                    dir: dir.clone(),
                    name: name.to_os_string(),
                };
                match at.stat()? {
                    Some(m) if is_whiteout_at(&at, &m) => return Ok(None),
                    m => m,
                }
            }
            None => None,
        };
        let lower = match (&self.lower, name.to_str()) {
            (Some(d), Some(n)) => d.get(n).cloned(),
            _ => None,
        };
        if upper.is_none() && lower.is_none() {
            return Ok(None);
        }
        Ok(Some(View { upper, lower }))
    }
}

/// Kind of a merged directory entry, from whichever layer provides it.
pub enum EntryKindOrUpper {
    Upper(Meta),
    Lower(EntryKind),
}

/// Renames a finished file of the work directory to `dest`; on failure the
/// work file is removed.
fn move_into(tmp: tempfile::TempPath, dest: &At) -> io::Result<()> {
    rustix::fs::renameat(CWD, &*tmp, &*dest.dir, &dest.name)?;
    // Renamed away: nothing left for the guard to delete.
    let _ = tmp.keep();
    Ok(())
}

/// Removes the directory `name` in `parent` and everything in it, relative
/// to descriptors all the way down (its depth is not bounded by PATH_MAX).
fn remove_tree(parent: &OwnedFd, name: &OsString) -> io::Result<()> {
    let dir = rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut names = Vec::new();
    for e in rustix::fs::Dir::read_from(&dir)? {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push((n.to_vec(), e.file_type()));
        }
    }
    for (n, kind) in names {
        let n = OsString::from_vec(n);
        // Some filesystems leave the kind out of listings: ask then.
        let kind = match kind {
            RxFileType::Unknown => {
                Meta::from(rustix::fs::statat(&dir, &n, AtFlags::SYMLINK_NOFOLLOW)?).file_type()
            }
            k => k,
        };
        if kind == RxFileType::Directory {
            remove_tree(&dir, &n)?;
        } else {
            rustix::fs::unlinkat(&dir, &n, AtFlags::empty())?;
        }
    }
    rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR)?;
    Ok(())
}

pub fn make_whiteout(path: &Path) -> io::Result<()> {
    rustix::fs::mknodat(CWD, path, RxFileType::CharacterDevice, Mode::empty(), 0)?;
    Ok(())
}

pub fn set_opaque(path: &Path) -> io::Result<()> {
    rustix::fs::lsetxattr(path, OPAQUE_XATTR, b"y", rustix::fs::XattrFlags::empty())?;
    Ok(())
}

/// [`set_opaque`] for an entry named through its directory.
pub fn set_opaque_at(at: &At) -> io::Result<()> {
    set_opaque(&at.proc_path())
}

fn apply_lower_attrs(dest: &At, e: &Entry) -> io::Result<()> {
    rustix::fs::chownat(
        &*dest.dir,
        &dest.name,
        Some(rustix::fs::Uid::from_raw(e.uid)),
        Some(rustix::fs::Gid::from_raw(e.gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )?;
    if e.kind != EntryKind::Symlink {
        rustix::fs::chmodat(
            &*dest.dir,
            &dest.name,
            Mode::from_bits_truncate(e.mode),
            AtFlags::empty(),
        )?;
    }
    if let Some(x) = &e.xattrs {
        let path = dest.proc_path();
        for (k, v) in x {
            let value = hex::decode(v).map_err(|_| io::Error::from_raw_os_error(libc::EIO))?;
            rustix::fs::lsetxattr(&path, k.as_str(), &value, rustix::fs::XattrFlags::empty())?;
        }
    }
    let t = Timespec {
        tv_sec: e.mtime.div_euclid(1_000_000_000),
        tv_nsec: e.mtime.rem_euclid(1_000_000_000) as _,
    };
    rustix::fs::utimensat(
        &*dest.dir,
        &dest.name,
        &Timestamps {
            last_access: t,
            last_modification: t,
        },
        AtFlags::SYMLINK_NOFOLLOW,
    )?;
    Ok(())
}

/// Opens an upper file for writing (never through a symlink).
pub fn open_write(at: &At) -> io::Result<File> {
    Ok(File::from(at.open(OFlags::WRONLY, Mode::empty())?))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// Lower data held in memory.
    struct FakeLower {
        manifests: HashMap<ObjectId, Arc<DirManifest>>,
        recipes: HashMap<ObjectId, Arc<elton_proto::Recipe>>,
        objects: tempfile::TempDir,
    }

    impl LowerSource for FakeLower {
        fn manifest(&self, id: &ObjectId) -> io::Result<Arc<DirManifest>> {
            self.manifests
                .get(id)
                .cloned()
                .ok_or_else(|| io::Error::from_raw_os_error(libc::EIO))
        }
        fn object_path(&self, id: &ObjectId) -> io::Result<PathBuf> {
            Ok(self.objects.path().join(id.to_hex()))
        }
        fn recipe(&self, id: &ObjectId) -> io::Result<Arc<elton_proto::Recipe>> {
            self.recipes
                .get(id)
                .cloned()
                .ok_or_else(|| io::Error::from_raw_os_error(libc::EIO))
        }
        fn is_local(&self, id: &ObjectId) -> bool {
            self.objects.path().join(id.to_hex()).is_file()
        }
    }

    fn entry(name: &str, kind: EntryKind, object: Option<ObjectId>) -> Entry {
        Entry {
            name: name.into(),
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: 1,
            mtime: 1_000_000_000,
            object,
            recipe: false,
            target: (kind == EntryKind::Symlink).then(|| "t".to_string()),
            xattrs: None,
        }
    }

    fn fixture() -> (tempfile::TempDir, Layers) {
        let objects = tempfile::tempdir().unwrap();
        let content = ObjectId::of(b"x");
        fs::write(objects.path().join(content.to_hex()), b"x").unwrap();
        let sub = DirManifest::new(vec![entry("inner", EntryKind::File, Some(content))]).unwrap();
        // "big" is chunked: "0123" + "45" + "6789".
        let mut chunks = Vec::new();
        for part in [&b"0123"[..], b"45", b"6789"] {
            fs::write(objects.path().join(ObjectId::of(part).to_hex()), part).unwrap();
            chunks.push(elton_proto::Chunk {
                object: ObjectId::of(part),
                size: part.len() as u64,
            });
        }
        let recipe = elton_proto::Recipe::new(chunks).unwrap();
        let mut big = entry("big", EntryKind::File, Some(recipe.id()));
        big.recipe = true;
        big.size = 10;
        // "liar" names the same recipe with the wrong size.
        let mut liar = big.clone();
        liar.name = "liar".into();
        liar.size = 11;
        let root = DirManifest::new(vec![
            big,
            entry("d", EntryKind::Dir, Some(sub.id())),
            entry("f", EntryKind::File, Some(content)),
            liar,
        ])
        .unwrap();
        let recipes = [(recipe.id(), Arc::new(recipe))].into();
        let root_id = root.id();
        let mut manifests = HashMap::new();
        manifests.insert(sub.id(), Arc::new(sub));
        manifests.insert(root_id, Arc::new(root));
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("upper")).unwrap();
        fs::create_dir(dir.path().join("work")).unwrap();
        let layers = Layers::new(
            dir.path().join("upper"),
            dir.path().join("work"),
            Arc::new(FakeLower {
                manifests,
                recipes,
                objects,
            }),
            Some(root_id),
        );
        (dir, layers)
    }

    #[test]
    fn phase1_whiteouts_hide_and_opaque_dirs_replace() {
        let (_dir, l) = fixture();
        assert!(l.view(Path::new("d/inner")).unwrap().is_some());
        l.whiteout(Path::new("d/inner")).unwrap();
        assert!(l.view(Path::new("d/inner")).unwrap().is_none());
        let d = l.view(Path::new("d")).unwrap().unwrap();
        assert!(l.list(Path::new("d"), &d).unwrap().is_empty());

        // Remove and recreate "d": opaque, the lower content stays hidden.
        l.remove_upper(Path::new("d")).unwrap();
        l.whiteout(Path::new("d")).unwrap();
        assert!(l.view(Path::new("d")).unwrap().is_none());
        l.remove_upper(Path::new("d")).unwrap();
        fs::create_dir(l.upper_path(Path::new("d"))).unwrap();
        set_opaque(&l.upper_path(Path::new("d"))).unwrap();
        assert!(l.view(Path::new("d/inner")).unwrap().is_none());
    }

    #[test]
    fn phase1a_a_listing_merges_the_upper_and_hides_whiteouts() {
        let (_dir, l) = fixture();
        let names = |l: &Layers| {
            let root = l.view(Path::new("")).unwrap().unwrap();
            l.list(Path::new(""), &root)
                .unwrap()
                .into_iter()
                .map(|(n, k)| {
                    (
                        n.into_string().unwrap(),
                        matches!(k, EntryKindOrUpper::Upper(_)),
                    )
                })
                .collect::<Vec<_>>()
        };
        // Lower only: the manifest's order.
        let lower = [("big", false), ("d", false), ("f", false), ("liar", false)];
        assert_eq!(names(&l), lower.map(|(n, u)| (n.to_string(), u)));
        // An upper file, a copied-up one, and two lower names deleted.
        fs::write(l.upper_path(Path::new("a-new")), b"n").unwrap();
        l.copy_up(Path::new("f")).unwrap();
        l.whiteout(Path::new("liar")).unwrap();
        l.whiteout(Path::new("big")).unwrap();
        let merged = [("a-new", true), ("d", false), ("f", true)];
        assert_eq!(names(&l), merged.map(|(n, u)| (n.to_string(), u)));
    }

    #[test]
    fn phase1b_children_resolve_as_view_does() {
        let (_dir, l) = fixture();
        let same = |l: &Layers, dir: &str, name: &str| {
            let c = l.children(Path::new(dir)).unwrap().unwrap();
            let child = c.view(std::ffi::OsStr::new(name)).unwrap();
            let whole = l.view(&Path::new(dir).join(name)).unwrap();
            assert_eq!(
                child.map(|v| (v.upper.map(|m| m.ino()), v.lower)),
                whole.map(|v| (v.upper.map(|m| m.ino()), v.lower)),
                "{dir}/{name}"
            );
        };
        // Lower only, then merged, then hidden by a whiteout.
        same(&l, "d", "inner");
        same(&l, "", "f");
        l.copy_up(Path::new("d/inner")).unwrap();
        same(&l, "d", "inner");
        l.whiteout(Path::new("f")).unwrap();
        same(&l, "", "f");
        assert!(l.children(Path::new("f")).unwrap().is_none());
        assert!(l.children(Path::new("big")).unwrap().is_none());
    }

    #[test]
    fn phase2_copy_up_keeps_content_and_attrs() {
        let (_dir, l) = fixture();
        l.copy_up(Path::new("d/inner")).unwrap();
        let up = l.upper_path(Path::new("d/inner"));
        assert_eq!(fs::read(&up).unwrap(), b"x");
        assert!(l.upper_path(Path::new("d")).is_dir());
        let m = fs::metadata(&up).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o644);
        assert_eq!(m.mtime(), 1);
        let root = l.view(Path::new("")).unwrap().unwrap();
        let names: Vec<_> = l.list(Path::new(""), &root).unwrap().into_keys().collect();
        assert_eq!(names, ["big", "d", "f", "liar"]);
    }

    #[test]
    fn phase3_copy_up_keeps_directory_times_and_can_skip_data() {
        let (_dir, l) = fixture();
        l.copy_up(Path::new("d/inner")).unwrap();
        // "d" was made in the upper, then "inner" in it: both copy-ups
        // leave the times of the directory they land in alone.
        assert_eq!(
            fs::metadata(l.upper_path(Path::new("d"))).unwrap().mtime(),
            1
        );

        l.copy_up_with(Path::new("f"), false).unwrap();
        let up = l.upper_path(Path::new("f"));
        let m = fs::metadata(&up).unwrap();
        assert_eq!(m.len(), 0, "copied up empty, for O_TRUNC");
        assert_eq!(m.permissions().mode() & 0o7777, 0o644);
        assert_eq!(m.mtime(), 1);
    }

    #[test]
    fn phase4_chunked_files_read_by_chunk_and_copy_up_whole() {
        let (dir, l) = fixture();
        let big = l.view(Path::new("big")).unwrap().unwrap().lower.unwrap();
        let (id, recipe) = super::super::chunked::recipe_of(&*l.lower, &big).unwrap();
        let reader = super::super::chunked::ChunkedReader::new(
            l.lower.clone(),
            recipe.clone(),
            Default::default(),
        );
        assert_eq!(reader.read_at(0, 100).unwrap(), b"0123456789");
        assert_eq!(reader.read_at(3, 4).unwrap(), b"3456");
        assert_eq!(reader.read_at(10, 4).unwrap(), b"");

        let cache = super::super::chunked::Assembled::new(dir.path().join("assembled"), 1 << 20);
        assert!(cache.get(&id, &recipe).is_none());
        let whole = cache
            .assemble_if_local(&*l.lower, &id, &recipe, &Default::default())
            .unwrap();
        assert_eq!(fs::read(whole.unwrap()).unwrap(), b"0123456789");
        assert!(cache.get(&id, &recipe).is_some());

        l.copy_up(Path::new("big")).unwrap();
        let up = l.upper_path(Path::new("big"));
        assert_eq!(fs::read(&up).unwrap(), b"0123456789");

        // A recipe whose size disagrees with the entry is an error.
        let liar = l.view(Path::new("liar")).unwrap().unwrap().lower.unwrap();
        assert!(super::super::chunked::recipe_of(&*l.lower, &liar).is_err());
        assert!(l.copy_up(Path::new("liar")).is_err());
    }
}
