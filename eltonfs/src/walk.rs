//! Scans a local directory into Elton's tree form: one canonical manifest per
//! directory and the list of file objects to store. Blocking.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use elton_proto::manifest::valid_entry_name;
use elton_proto::{DirManifest, Entry, EntryKind, ObjectId};

/// A scanned tree, ready to upload.
#[derive(Default)]
pub struct Scan {
    /// Encoded manifests, children before parents; the root is last.
    pub manifests: Vec<(ObjectId, Vec<u8>)>,
    /// One local path per distinct file object (small files).
    pub files: HashMap<ObjectId, (PathBuf, u64)>,
    /// Chunks of large files: where each distinct chunk lies (path, offset, size).
    pub chunks: HashMap<ObjectId, (PathBuf, u64, u64)>,
    /// Encoded recipes of large files, each once.
    pub recipes: Vec<(ObjectId, Vec<u8>)>,
    recipe_ids: HashSet<ObjectId>,
    pub root: Option<ObjectId>,
    pub file_count: u64,
    pub skipped: Vec<PathBuf>,
}

impl Scan {
    pub fn root(&self) -> Result<ObjectId> {
        self.root.context("scan produced no root")
    }
}

/// Hashes a file's content.
pub fn hash_file(path: &Path) -> Result<(ObjectId, u64)> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((ObjectId::from_hash(hasher.finalize()), size))
}

fn mtime_ns(m: &fs::Metadata) -> i64 {
    m.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(m.mtime_nsec())
}

/// Scans `dir`. `on_file(bytes)` is called after each file is hashed.
/// Files larger than `chunk_threshold` bytes are chunked (a recipe).
pub fn scan(dir: &Path, chunk_threshold: u64, on_file: &mut dyn FnMut(u64)) -> Result<Scan> {
    let meta = fs::metadata(dir).with_context(|| format!("{}", dir.display()))?;
    if !meta.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let mut scan = Scan::default();
    let root = scan_dir(dir, chunk_threshold, &mut scan, on_file)?;
    scan.root = Some(root.id());
    scan.manifests.push((root.id(), root.encode()));
    Ok(scan)
}

/// Chunks a large file: records where each chunk lies; returns the recipe
/// (id, encoded) and the file's size.
fn chunk_file(path: &Path, scan: &mut Scan) -> Result<(ObjectId, u64)> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let recipe = crate::chunking::chunk(f, |offset, id, data| {
        scan.chunks
            .entry(id)
            .or_insert_with(|| (path.to_path_buf(), offset, data.len() as u64));
        Ok(())
    })
    .with_context(|| format!("chunking {}", path.display()))?;
    let bytes = recipe.encode();
    let id = ObjectId::of(&bytes);
    if scan.recipe_ids.insert(id) {
        scan.recipes.push((id, bytes));
    }
    Ok((id, recipe.size))
}

fn scan_dir(
    dir: &Path,
    chunk_threshold: u64,
    scan: &mut Scan,
    on_file: &mut dyn FnMut(u64),
) -> Result<DirManifest> {
    let mut entries = Vec::new();
    let listing = fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))?;
    for item in listing {
        let item = item.with_context(|| format!("listing {}", dir.display()))?;
        let path = item.path();
        let name = item
            .file_name()
            .into_string()
            .map_err(|n| anyhow::anyhow!("{}: name {n:?} is not UTF-8", dir.display()))?;
        if !valid_entry_name(&name) {
            bail!("{}: invalid name", path.display());
        }
        let m = fs::symlink_metadata(&path).with_context(|| format!("{}", path.display()))?;
        let ft = m.file_type();
        let base = Entry {
            name,
            kind: EntryKind::File,
            mode: m.permissions().mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
            size: 0,
            mtime: mtime_ns(&m),
            object: None,
            recipe: false,
            target: None,
            xattrs: None,
        };
        let entry = if ft.is_file() && crate::chunking::is_chunked(m.len(), chunk_threshold) {
            let (id, size) = chunk_file(&path, scan)?;
            on_file(size);
            scan.file_count += 1;
            Entry {
                size,
                object: Some(id),
                recipe: true,
                ..base
            }
        } else if ft.is_file() {
            let (id, size) = hash_file(&path)?;
            on_file(size);
            scan.file_count += 1;
            scan.files.entry(id).or_insert((path, size));
            Entry {
                size,
                object: Some(id),
                ..base
            }
        } else if ft.is_dir() {
            let child = scan_dir(&path, chunk_threshold, scan, on_file)?;
            let id = child.id();
            let size = child.entries.len() as u64;
            scan.manifests.push((id, child.encode()));
            Entry {
                kind: EntryKind::Dir,
                size,
                object: Some(id),
                ..base
            }
        } else if ft.is_symlink() {
            let target = fs::read_link(&path)
                .with_context(|| format!("{}", path.display()))?
                .into_os_string()
                .into_string()
                .map_err(|t| {
                    anyhow::anyhow!("{}: link target {t:?} is not UTF-8", path.display())
                })?;
            Entry {
                kind: EntryKind::Symlink,
                size: target.len() as u64,
                target: Some(target),
                ..base
            }
        } else {
            // Sockets, FIFOs and devices have no content to share.
            scan.skipped.push(path);
            continue;
        };
        entries.push(entry);
    }
    DirManifest::new(entries).with_context(|| format!("{}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_trees_have_identical_roots() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        for d in [a.path(), b.path()] {
            fs::create_dir_all(d.join("sub/empty")).unwrap();
            fs::write(d.join("sub/f"), b"data").unwrap();
            fs::write(d.join("g"), b"data").unwrap();
            std::os::unix::fs::symlink("sub/f", d.join("link")).unwrap();
            // Every entry, the symlink included, needs the same mtime in both
            // trees, or the manifests (rightly) differ.
            let t = rustix::fs::Timestamps {
                last_access: rustix::fs::Timespec {
                    tv_sec: 1000,
                    tv_nsec: 0,
                },
                last_modification: rustix::fs::Timespec {
                    tv_sec: 1000,
                    tv_nsec: 0,
                },
            };
            for p in ["sub/f", "g", "link", "sub", "sub/empty", ""] {
                rustix::fs::utimensat(
                    rustix::fs::CWD,
                    d.join(p),
                    &t,
                    rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
                )
                .unwrap();
            }
        }
        let (sa, sb) = (
            scan(a.path(), u64::MAX, &mut |_| {}).unwrap(),
            scan(b.path(), u64::MAX, &mut |_| {}).unwrap(),
        );
        assert_eq!(sa.root, sb.root);
        assert_eq!(sa.files.len(), 1, "identical content is one object");
        assert_eq!(sa.file_count, 2);
        assert_eq!(sa.manifests.len(), 3);
    }

    #[test]
    fn large_files_become_recipes_and_small_ones_stay_objects() {
        let d = tempfile::tempdir().unwrap();
        let big: Vec<u8> = (0..6u32 << 20)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        fs::write(d.path().join("big"), &big).unwrap();
        fs::write(d.path().join("small"), b"small").unwrap();
        let s = scan(d.path(), 4 << 20, &mut |_| {}).unwrap();
        assert_eq!(s.files.len(), 1, "only the small file is one object");
        assert_eq!(s.recipes.len(), 1);
        let recipe = elton_proto::Recipe::decode(&s.recipes[0].1).unwrap();
        assert_eq!(recipe.size, big.len() as u64);
        let mut joined = Vec::new();
        for c in &recipe.chunks {
            let (path, offset, size) = &s.chunks[&c.object];
            let bytes = fs::read(path).unwrap();
            joined.extend_from_slice(&bytes[*offset as usize..(*offset + *size) as usize]);
        }
        assert_eq!(joined, big);
        let (_, root) = s.manifests.last().unwrap();
        let root = DirManifest::decode(root).unwrap();
        let e = root.get("big").unwrap();
        assert!(e.recipe && e.object == Some(s.recipes[0].0) && e.size == big.len() as u64);
        assert!(!root.get("small").unwrap().recipe);
    }
}
