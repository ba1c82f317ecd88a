//! What the upper layer changes relative to the lower: for `status`, and
//! for turning the upper into new manifests and objects at commit.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use elton_proto::listing::{encode_dir, encode_recut, page_spans};
use elton_proto::paged::{self, DirIndex};
use elton_proto::{DirManifest, Entry, EntryKind, ObjectId, ProtoError};
use elton_slave::ObjectStore;
use elton_slave::staging::Staging;
use serde::{Deserialize, Serialize};

use super::commit_reporter::Counters;
use super::layers::{Layers, PRIVATE_XATTR_PREFIX, is_opaque, is_whiteout};

#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChangeSet {
    pub added: Vec<String>,
    pub modified: Vec<String>,
    pub deleted: Vec<String>,
}

impl ChangeSet {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.modified.is_empty() && self.deleted.is_empty()
    }

    /// How many non-directory entries of the upper a commit goes through
    /// (what `build` counts as files): directories carry a trailing `/`.
    pub fn files(&self) -> u64 {
        self.added
            .iter()
            .chain(&self.modified)
            .filter(|p| !p.ends_with('/'))
            .count() as u64
    }

    /// Every changed path and each directory above it, the root (`""`)
    /// included: after a commit only these can look different to the
    /// kernel, so only their cached inodes and names are invalidated (not
    /// every inode of the volume it ever looked up).
    pub fn touched(&self) -> HashSet<PathBuf> {
        let mut out = HashSet::new();
        for p in self.added.iter().chain(&self.modified).chain(&self.deleted) {
            let mut path = PathBuf::from(p.trim_end_matches('/'));
            while out.insert(path.clone()) {
                if !path.pop() {
                    break;
                }
            }
        }
        out
    }
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}/{name}")
    }
}

fn lower_child(layers: &Layers, lower: Option<&Entry>) -> io::Result<Option<Arc<DirManifest>>> {
    match lower {
        Some(e) if e.kind == EntryKind::Dir => {
            e.object.map(|id| layers.lower.manifest(&id)).transpose()
        }
        _ => Ok(None),
    }
}

fn name_of(os: std::ffi::OsString) -> io::Result<String> {
    os.into_string().map_err(|n| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("file name {n:?} is not UTF-8"),
        )
    })
}

/// The lower root merged under the upper root, unless the root is opaque.
fn root_lower(layers: &Layers) -> io::Result<Option<Arc<DirManifest>>> {
    if is_opaque(&layers.upper) {
        return Ok(None);
    }
    layers.root.map(|id| layers.lower.manifest(&id)).transpose()
}

/// Walks only the upper layer (the change set, not the whole tree).
pub fn status(layers: &Layers) -> io::Result<ChangeSet> {
    let mut out = ChangeSet::default();
    let root_lower = root_lower(layers)?;
    walk(layers, Path::new(""), "", root_lower, &mut out)?;
    Ok(out)
}

fn walk(
    layers: &Layers,
    rel: &Path,
    display: &str,
    lower: Option<Arc<DirManifest>>,
    out: &mut ChangeSet,
) -> io::Result<()> {
    let upath = layers.upper_path(rel);
    for e in fs::read_dir(&upath)? {
        let e = e?;
        let name = name_of(e.file_name())?;
        let m = fs::symlink_metadata(e.path())?;
        let shown = join(display, &name);
        let below = lower.as_ref().and_then(|d| d.get(&name)).cloned();
        if is_whiteout(&e.path(), &m) {
            if below.is_some() {
                out.deleted.push(shown);
            }
        } else if m.is_dir() {
            let opaque = is_opaque(&e.path());
            match &below {
                None => out.added.push(format!("{shown}/")),
                Some(b) if b.kind != EntryKind::Dir => out.modified.push(format!("{shown}/")),
                Some(b) if b.mode != m.mode() & 0o7777 || b.uid != m.uid() || b.gid != m.gid() => {
                    out.modified.push(format!("{shown}/"));
                }
                Some(_) => {}
            }
            let child_lower = if opaque {
                None
            } else {
                lower_child(layers, below.as_ref())?
            };
            if opaque && let Some(old) = lower_child(layers, below.as_ref())? {
                // Replaced wholesale: what the lower had and the upper lacks is gone.
                for gone in &old.entries {
                    if !e.path().join(&gone.name).exists() {
                        out.deleted.push(join(&shown, &gone.name));
                    }
                }
            }
            walk(layers, &rel.join(&name), &shown, child_lower, out)?;
        } else if below.is_some() {
            out.modified.push(shown);
        } else {
            out.added.push(shown);
        }
    }
    Ok(())
}

/// The result of turning the upper into a tree.
pub struct Built {
    pub root: ObjectId,
    /// New manifests (ids and bytes) to store, children first. Each is
    /// encoded once: a manifest of 1,000 entries costs more to encode than
    /// the rest of its directory's commit.
    pub manifests: Vec<(ObjectId, Vec<u8>)>,
    /// Every object the new tree's changed entries name (file contents,
    /// recipes and their chunks, child manifests), each once: what the
    /// slave announces to the master for this commit (`docs/formats.md`,
    /// `POST …/versions`, `stored`).
    pub referenced: Vec<ObjectId>,
    /// Objects this commit hard-linked into the store (undone on failure).
    pub linked: Vec<ObjectId>,
    pub skipped: Vec<String>,
}

/// Builds the new tree: lower manifests with the upper's changes applied.
/// File contents are staged in `staging`: hard-linked (no copy) unless the
/// file is open for writing or has other links, in which case a snapshot is
/// copied. What a failed build staged is published only if a full stage
/// flushed itself meanwhile: [`Staging::added`] lists it for undoing.
pub fn build(
    layers: &Layers,
    staging: &mut Staging<'_>,
    open_for_write: &HashSet<(u64, u64)>,
    chunk_threshold: u64,
    progress: &Counters,
) -> io::Result<Built> {
    let mut built = Built {
        root: ObjectId::of(b""),
        manifests: Vec::new(),
        referenced: Vec::new(),
        linked: Vec::new(),
        skipped: Vec::new(),
    };
    let mut ctx = BuildCtx {
        layers,
        staging,
        open_for_write,
        chunk_threshold,
        progress,
    };
    let root_lower = if is_opaque(&layers.upper) {
        None
    } else {
        layers.root.map(|id| lower_dir(layers, &id)).transpose()?
    };
    let root = build_dir(&mut ctx, Path::new(""), root_lower, &mut built)?;
    built.root = root.id;
    built.referenced.push(root.id);
    let mut seen = HashSet::with_capacity(built.referenced.len());
    built.referenced.retain(|id| seen.insert(*id));
    Ok(built)
}

/// What every level of the build needs.
struct BuildCtx<'a, 'b> {
    layers: &'a Layers,
    staging: &'a mut Staging<'b>,
    open_for_write: &'a HashSet<(u64, u64)>,
    chunk_threshold: u64,
    progress: &'a Counters,
}

/// A new directory, stored in `Built::manifests`.
struct Encoded {
    id: ObjectId,
    entries: u64,
}

/// A lower directory as a commit needs it: its listing, and its index if
/// it is paged (only the pages the changes fall in are rewritten).
struct LowerDir {
    manifest: Arc<DirManifest>,
    index: Option<Arc<DirIndex>>,
}

fn lower_dir(layers: &Layers, id: &ObjectId) -> io::Result<LowerDir> {
    Ok(LowerDir {
        manifest: layers.lower.manifest(id)?,
        index: layers.lower.index(id)?,
    })
}

fn invalid_data(e: ProtoError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

fn build_dir(
    ctx: &mut BuildCtx<'_, '_>,
    rel: &Path,
    lower: Option<LowerDir>,
    built: &mut Built,
) -> io::Result<Encoded> {
    let layers = ctx.layers;
    // What the upper changes in this directory: a name's new entry, or
    // `None` where the name is gone.
    let mut changes: BTreeMap<String, Option<Entry>> = BTreeMap::new();
    let below = |name: &str| lower.as_ref().and_then(|l| l.manifest.get(name));
    let upath = layers.upper_path(rel);
    for item in fs::read_dir(&upath)? {
        let item = item?;
        let name = name_of(item.file_name())?;
        let path = item.path();
        let m = fs::symlink_metadata(&path)?;
        if is_whiteout(&path, &m) {
            changes.insert(name, None);
            continue;
        }
        let base = Entry {
            name: name.clone(),
            kind: EntryKind::File,
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
            size: 0,
            mtime: m
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(m.mtime_nsec()),
            object: None,
            recipe: false,
            target: None,
            xattrs: user_xattrs(&path)?,
        };
        let entry = if m.is_dir() {
            let child_lower = match below(&name) {
                Some(Entry {
                    kind: EntryKind::Dir,
                    object: Some(id),
                    ..
                }) if !is_opaque(&path) => Some(lower_dir(layers, id)?),
                _ => None,
            };
            let child = build_dir(ctx, &rel.join(&name), child_lower, built)?;
            Entry {
                kind: EntryKind::Dir,
                size: child.entries,
                object: Some(child.id),
                ..base
            }
        } else if m.is_file() && crate::chunking::is_chunked(m.len(), ctx.chunk_threshold) {
            // Large files are stored as chunks (copies, so nothing to undo
            // on failure): unchanged chunks of an edited file keep their ids
            // and are already stored.
            let (id, size, added) = store_chunked(ctx.staging, &path, &mut built.referenced)?;
            ctx.progress.file(size, false);
            ctx.progress.objects(added);
            Entry {
                size,
                object: Some(id),
                recipe: true,
                ..base
            }
        } else if m.is_file() {
            let snapshot = m.nlink() > 1 || ctx.open_for_write.contains(&(m.dev(), m.ino()));
            let put = if snapshot {
                ctx.staging.copy(&path)
            } else {
                ctx.staging.link(&path)
            }
            .map_err(|e| io::Error::other(e.to_string()))?;
            if put.new && !snapshot {
                built.linked.push(put.id);
            }
            // The size is what was hashed.
            ctx.progress.file(put.size, put.new);
            Entry {
                size: put.size,
                object: Some(put.id),
                ..base
            }
        } else if m.file_type().is_symlink() {
            let target = name_of(fs::read_link(&path)?.into_os_string())?;
            ctx.progress.entry();
            Entry {
                kind: EntryKind::Symlink,
                size: target.len() as u64,
                target: Some(target),
                xattrs: None,
                ..base
            }
        } else {
            // FIFOs, sockets and devices are not committed; one that
            // replaced a lower entry still deleted it.
            built.skipped.push(rel.join(&name).display().to_string());
            ctx.progress.entry();
            changes.insert(name, None);
            continue;
        };
        changes.insert(name, Some(entry));
    }
    ctx.progress.dir();
    built.referenced.extend(
        changes
            .values()
            .filter_map(|change| change.as_ref().and_then(|e| e.object)),
    );
    let dir = match lower {
        // A paged directory: only the pages the changes fall in are read
        // from the listing and written again; the others keep their ids.
        Some(LowerDir {
            manifest,
            index: Some(index),
        }) => {
            let spans = page_spans(&index);
            let page = |i: usize| -> Result<Vec<Entry>, ProtoError> {
                spans
                    .get(i)
                    .and_then(|span| manifest.entries.get(span.clone()))
                    .map(<[Entry]>::to_vec)
                    .ok_or_else(|| ProtoError::Manifest("a page beyond its listing".into()))
            };
            let pages = paged::recut(&index, &changes, page).map_err(invalid_data)?;
            encode_recut(&index, pages, page).map_err(invalid_data)?
        }
        lower => {
            let mut entries: BTreeMap<&str, &Entry> = lower
                .as_ref()
                .map(|l| {
                    l.manifest
                        .entries
                        .iter()
                        .map(|e| (e.name.as_str(), e))
                        .collect()
                })
                .unwrap_or_default();
            for (name, change) in &changes {
                match change {
                    Some(e) => entries.insert(name, e),
                    None => entries.remove(name.as_str()),
                };
            }
            let manifest =
                DirManifest::new(entries.into_values().cloned().collect()).map_err(invalid_data)?;
            encode_dir(&manifest).map_err(invalid_data)?
        }
    };
    built
        .referenced
        .extend(dir.objects.iter().map(|(id, _)| *id));
    built.manifests.extend(dir.objects);
    Ok(Encoded {
        id: dir.id,
        entries: dir.entries,
    })
}

/// Chunks a large upper file into the stage; returns the recipe's id, the
/// content's size and how many objects were new. The chunks' ids go to
/// `referenced`. The bytes are read once, so the recipe is a consistent
/// snapshot of them even if the file is being written.
fn store_chunked(
    staging: &mut Staging<'_>,
    path: &Path,
    referenced: &mut Vec<ObjectId>,
) -> io::Result<(ObjectId, u64, u64)> {
    let file = fs::File::open(path)?;
    let mut added = 0;
    let recipe = crate::chunking::chunk(file, |_, id, data| {
        referenced.push(id);
        if !staging.has(&id) && staging.bytes(data).map_err(io::Error::other)?.new {
            added += 1;
        }
        Ok(())
    })?;
    let put = staging
        .bytes(&recipe.encode())
        .map_err(|e| io::Error::other(e.to_string()))?;
    Ok((put.id, recipe.size, added + u64::from(put.new)))
}

/// Removes objects a failed commit stored, unless they were there before
/// `since` or this process stored them again since (see
/// `ObjectStore::remove_unused`).
pub fn remove_stored(store: &ObjectStore, stored: &[ObjectId], since: std::time::SystemTime) {
    let mut bytes = 0;
    for id in stored {
        match store.remove_unused(id, since, elton_slave::store::Arrived::Since) {
            Ok(Some(n)) => bytes += n,
            Ok(None) => {}
            Err(e) => tracing::warn!(object = %id, "undoing a failed commit: {e}"),
        }
    }
    if bytes > 0 {
        tracing::info!(
            objects = stored.len(),
            bytes,
            "removed the objects of a failed commit"
        );
    }
}

/// Users' xattrs of an upper entry (hex-encoded), without the overlay's own.
fn user_xattrs(path: &Path) -> io::Result<Option<BTreeMap<String, String>>> {
    let mut buf = vec![0u8; 65536];
    let n = match rustix::fs::llistxattr(path, &mut buf[..]) {
        Ok(n) => n,
        Err(rustix::io::Errno::NOTSUP) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut out = BTreeMap::new();
    for name in buf[..n].split(|b| *b == 0).filter(|s| !s.is_empty()) {
        let Ok(name) = std::str::from_utf8(name) else {
            continue;
        };
        if name.starts_with(PRIVATE_XATTR_PREFIX) {
            continue;
        }
        let mut value = vec![0u8; 65536];
        let len = rustix::fs::lgetxattr(path, name, &mut value[..])?;
        out.insert(name.to_string(), hex::encode(&value[..len]));
    }
    Ok((!out.is_empty()).then_some(out))
}

/// Empties the upper after a successful commit, keeping files still open
/// for writing (and the directories holding them): their later writes
/// belong to the next version.
pub fn clear_upper(layers: &Layers, keep: &HashSet<(u64, u64)>) -> io::Result<()> {
    // Directories are removed behind the descriptor cache's back.
    layers.dirs.forget_all();
    if keep.is_empty() {
        move_to_trash(&layers.upper, &layers.work)?;
    } else {
        clear_dir(&layers.upper, keep)?;
    }
    let _ = rustix::fs::lremovexattr(&layers.upper, super::layers::OPAQUE_XATTR);
    Ok(())
}

/// Names of the work directory's trash directories.
const TRASH_PREFIX: &str = "trash-";

/// Empties `upper` by moving each of its entries into a new trash
/// directory under `work` (one rename each) and deleting the trash on a
/// thread of its own: a commit that touched 100 directories waits for 100
/// renames, not for 200 unlinks (issue 16). The upper directory itself
/// stays (its own attributes are the volume root's). A crash leaves the
/// trash for [`empty_trash`] at the next start.
fn move_to_trash(upper: &Path, work: &Path) -> io::Result<()> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let trash = work.join(format!(
        "{TRASH_PREFIX}{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let mut made = false;
    for item in fs::read_dir(upper)? {
        let item = item?;
        if !made {
            fs::create_dir(&trash)?;
            made = true;
        }
        fs::rename(item.path(), trash.join(item.file_name()))?;
    }
    if made {
        std::thread::Builder::new()
            .name("upper-trash".into())
            .spawn(move || remove_trash(&trash))?;
    }
    Ok(())
}

fn remove_trash(trash: &Path) {
    if let Err(e) = fs::remove_dir_all(trash) {
        tracing::warn!("deleting {} (a committed upper): {e}", trash.display());
    }
}

/// Deletes the trash a crash left in `work` (see [`move_to_trash`]), on a
/// thread of its own.
pub fn empty_trash(work: &Path) -> io::Result<()> {
    let left: Vec<std::path::PathBuf> = fs::read_dir(work)?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(TRASH_PREFIX))
        .map(|e| e.path())
        .collect();
    if !left.is_empty() {
        std::thread::Builder::new()
            .name("upper-trash".into())
            .spawn(move || left.iter().for_each(|t| remove_trash(t)))?;
    }
    Ok(())
}

/// Returns whether anything was kept.
fn clear_dir(dir: &Path, keep: &HashSet<(u64, u64)>) -> io::Result<bool> {
    let mut kept = false;
    for item in fs::read_dir(dir)? {
        let path = item?.path();
        let m = fs::symlink_metadata(&path)?;
        if m.is_dir() {
            if clear_dir(&path, keep)? {
                let _ = rustix::fs::lremovexattr(&path, super::layers::OPAQUE_XATTR);
                kept = true;
            } else {
                fs::remove_dir(&path)?;
            }
        } else if m.is_file() && keep.contains(&(m.dev(), m.ino())) {
            kept = true;
        } else {
            fs::remove_file(&path)?;
        }
    }
    Ok(kept)
}

/// Undoes hard links between upper files and the store (left by a commit
/// that did not publish): an upper file stays writable, so the store must
/// not share its inode. Only files with several links are hashed.
pub fn unlink_aliases(layers: &Layers, store: &ObjectStore) -> io::Result<()> {
    let mut stack = vec![layers.upper.clone()];
    while let Some(dir) = stack.pop() {
        for item in fs::read_dir(&dir)? {
            let path = item?.path();
            let m = fs::symlink_metadata(&path)?;
            if m.is_dir() {
                stack.push(path);
            } else if m.is_file() && m.nlink() > 1 {
                let (id, _) = crate::walk::hash_file(&path)
                    .map_err(|e| io::Error::other(format!("{e:#}")))?;
                let stored = fs::symlink_metadata(store.path(&id));
                if stored.is_ok_and(|s| s.dev() == m.dev() && s.ino() == m.ino()) {
                    store
                        .remove(&id)
                        .map_err(|e| io::Error::other(e.to_string()))?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn touched_is_the_changes_and_their_ancestors() {
        let c = ChangeSet {
            added: vec!["a/b/new".into(), "top/".into()],
            modified: vec!["a/b/".into()],
            deleted: vec!["x/gone".into()],
        };
        let mut got: Vec<PathBuf> = c.touched().into_iter().collect();
        got.sort();
        let want: Vec<PathBuf> = ["", "a", "a/b", "a/b/new", "top", "x", "x/gone"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(got, want);
        assert!(ChangeSet::default().touched().is_empty());
    }

    fn upper_with_changes() -> (tempfile::TempDir, Layers) {
        let dir = tempfile::tempdir().unwrap();
        let (upper, work) = (dir.path().join("upper"), dir.path().join("work"));
        fs::create_dir_all(upper.join("a/b")).unwrap();
        fs::create_dir(&work).unwrap();
        fs::write(upper.join("a/b/f"), b"f").unwrap();
        fs::write(upper.join("top"), b"t").unwrap();
        let layers = Layers::new(upper, work, Arc::new(super::super::mount::NoLower), None);
        (dir, layers)
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn clearing_the_upper_leaves_it_empty_at_once_and_the_trash_goes() {
        let (_dir, layers) = upper_with_changes();
        clear_upper(&layers, &HashSet::new()).unwrap();
        assert!(names(&layers.upper).is_empty());
        // The trash is deleted on its own thread.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !names(&layers.work).is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "{:?}",
                names(&layers.work)
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        // An empty upper makes no trash.
        clear_upper(&layers, &HashSet::new()).unwrap();
        assert!(names(&layers.work).is_empty());
    }

    #[test]
    fn a_file_open_for_writing_stays_in_the_upper() {
        let (_dir, layers) = upper_with_changes();
        let m = fs::metadata(layers.upper.join("a/b/f")).unwrap();
        let keep = HashSet::from([(m.dev(), m.ino())]);
        clear_upper(&layers, &keep).unwrap();
        assert_eq!(names(&layers.upper), ["a"]);
        assert_eq!(names(&layers.upper.join("a/b")), ["f"]);
    }

    #[test]
    fn trash_left_by_a_crash_is_emptied_at_the_next_start() {
        let (_dir, layers) = upper_with_changes();
        fs::create_dir_all(layers.work.join("trash-1-0/a/b")).unwrap();
        fs::write(layers.work.join("trash-1-0/a/b/f"), b"f").unwrap();
        fs::write(layers.work.join("copy-up-temp"), b"x").unwrap();
        empty_trash(&layers.work).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while names(&layers.work) != ["copy-up-temp"] {
            assert!(
                std::time::Instant::now() < deadline,
                "{:?}",
                names(&layers.work)
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}
