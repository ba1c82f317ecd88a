//! Scans a local directory into Elton's tree form: one canonical manifest per
//! directory and the list of file objects to store. Blocking.
//!
//! Two passes: the directory walk (metadata only, one thread), then the
//! files' contents hashed by a bounded pool of threads ([`hash_all`]), as
//! files are independent; manifests are then built bottom-up. Memory stays
//! bounded by the tree's entries, one read buffer per thread, and the
//! contents of small files kept for the upload (at most [`KEEP_BUDGET`]).

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use anyhow::{Context, Result, bail};
use elton_proto::listing::encode_dir;
use elton_proto::manifest::valid_entry_name;
use elton_proto::{DirManifest, Entry, EntryKind, ObjectId};

/// A scanned tree, ready to upload.
#[derive(Default)]
pub struct Scan {
    /// Encoded manifests, children before parents; the root is last.
    pub manifests: Vec<(ObjectId, Vec<u8>)>,
    /// One local path per distinct file object (small files).
    pub files: HashMap<ObjectId, (PathBuf, u64)>,
    /// The bytes of small files as the scan read and hashed them, so an
    /// upload need not open and read them again (at most [`KEEP_BUDGET`]
    /// bytes in all; files beyond it are only in `files`).
    pub contents: HashMap<ObjectId, Vec<u8>>,
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

/// Hashing threads: one per core, at most this many (the disk, not the
/// CPU, limits a scan beyond that).
pub const MAX_HASH_THREADS: usize = 8;

/// Files up to this size are kept in memory by a scan (see
/// [`Scan::contents`]): for them, opening and reading the file a second
/// time costs more than the bytes.
pub const KEEP_MAX: u64 = 64 << 10;
/// The most bytes of file contents one scan keeps.
pub const KEEP_BUDGET: u64 = 128 << 20;

/// Hashes a file's content.
pub fn hash_file(path: &Path) -> Result<(ObjectId, u64)> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // One read buffer per thread, kept: a fresh 1 MiB buffer per file cost
    // more than hashing a small file (the allocator returned it to the
    // kernel each time; a TLB flush on every core).
    thread_local! {
        static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUF.with_borrow_mut(|buf| {
        if buf.is_empty() {
            buf.resize(1 << 20, 0);
        }
        let mut hasher = blake3::Hasher::new();
        let mut size = 0u64;
        loop {
            let n = f
                .read(buf)
                .with_context(|| format!("reading {}", path.display()))?;
            if n == 0 {
                break;
            }
            size += n as u64;
            hasher.update(&buf[..n]);
        }
        Ok((ObjectId::from_hash(hasher.finalize()), size))
    })
}

/// Reads a whole small file (`expected` bytes at the walk) and hashes it.
fn read_small(path: &Path, expected: u64) -> Result<(ObjectId, Vec<u8>)> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // One byte of room beyond the expected size: a file that grew since the
    // walk is read in full (up to the limit) instead of cut short.
    let mut bytes = Vec::with_capacity(expected as usize + 1);
    f.take(KEEP_MAX + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() as u64 > KEEP_MAX {
        bail!(
            "{} grew while it was being scanned: import again",
            path.display()
        );
    }
    Ok((ObjectId::of(&bytes), bytes))
}

fn mtime_ns(m: &fs::Metadata) -> i64 {
    m.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(m.mtime_nsec())
}

/// A file whose content is to be hashed.
struct Job {
    path: PathBuf,
    /// Its size at the walk.
    size: u64,
    chunked: bool,
}

/// What hashing a file found.
enum Hashed {
    /// A file object: its id, size, and its bytes when kept.
    File(ObjectId, u64, Option<Vec<u8>>),
    /// A large file: its recipe (id, encoded), size, and where each chunk
    /// lies in it (id, offset, size).
    Chunked {
        id: ObjectId,
        recipe: Vec<u8>,
        size: u64,
        chunks: Vec<(ObjectId, u64, u64)>,
    },
}

/// An entry of a walked directory, its content maybe not hashed yet.
enum Pending {
    Ready(Entry),
    /// A file: `jobs[job]`.
    File {
        base: Entry,
        job: usize,
    },
    /// A directory: `dirs[dir]`.
    Dir {
        base: Entry,
        dir: usize,
    },
}

/// A walked directory; a child's index is always above its parent's.
struct Walked {
    path: PathBuf,
    entries: Vec<Pending>,
}

/// Scans `dir`. `on_file(bytes)` is called after each file is hashed, from
/// any hashing thread. Files larger than `chunk_threshold` bytes are
/// chunked (a recipe).
pub fn scan(dir: &Path, chunk_threshold: u64, on_file: &(dyn Fn(u64) + Sync)) -> Result<Scan> {
    let threads = elton_proto::cores::cores().min(MAX_HASH_THREADS);
    scan_with(dir, chunk_threshold, threads, on_file)
}

/// [`scan`] with `threads` hashing threads.
pub fn scan_with(
    dir: &Path,
    chunk_threshold: u64,
    threads: usize,
    on_file: &(dyn Fn(u64) + Sync),
) -> Result<Scan> {
    let meta = fs::metadata(dir).with_context(|| format!("{}", dir.display()))?;
    if !meta.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let mut scan = Scan::default();
    let mut dirs = Vec::new();
    let mut jobs = Vec::new();
    walk(
        dir,
        chunk_threshold,
        &mut dirs,
        &mut jobs,
        &mut scan.skipped,
    )?;
    let mut hashed = hash_all(&jobs, threads, on_file)?;

    // Results merged in walk order: which path names a duplicated content
    // does not depend on the threads' timing.
    for (job, h) in jobs.iter().zip(&mut hashed) {
        scan.file_count += 1;
        match h {
            Hashed::File(id, size, kept) => {
                scan.files.entry(*id).or_insert((job.path.clone(), *size));
                if let Some(bytes) = kept.take() {
                    scan.contents.entry(*id).or_insert(bytes);
                }
            }
            Hashed::Chunked {
                id, recipe, chunks, ..
            } => {
                for (cid, offset, size) in chunks {
                    scan.chunks
                        .entry(*cid)
                        .or_insert_with(|| (job.path.clone(), *offset, *size));
                }
                if scan.recipe_ids.insert(*id) {
                    scan.recipes.push((*id, recipe.clone()));
                }
            }
        }
    }

    // Children have higher indexes than their parents: built from the
    // last, every directory's children are done before it.
    let mut built: Vec<Option<(ObjectId, u64)>> = vec![None; dirs.len()];
    for (i, w) in dirs.iter_mut().enumerate().rev() {
        let mut entries = Vec::with_capacity(w.entries.len());
        for p in std::mem::take(&mut w.entries) {
            entries.push(match p {
                Pending::Ready(e) => e,
                Pending::File { base, job } => match &hashed[job] {
                    Hashed::File(id, size, _) => Entry {
                        size: *size,
                        object: Some(*id),
                        ..base
                    },
                    Hashed::Chunked { id, size, .. } => Entry {
                        size: *size,
                        object: Some(*id),
                        recipe: true,
                        ..base
                    },
                },
                Pending::Dir { base, dir } => {
                    let (id, size) = built[dir].context("a directory was not built")?;
                    Entry {
                        kind: EntryKind::Dir,
                        size,
                        object: Some(id),
                        ..base
                    }
                }
            });
        }
        let m = DirManifest::new(entries).with_context(|| format!("{}", w.path.display()))?;
        // A large directory is stored as pages and an index, the index last.
        let dir = encode_dir(&m).with_context(|| format!("{}", w.path.display()))?;
        built[i] = Some((dir.id, dir.entries));
        scan.manifests.extend(dir.objects);
    }
    scan.root = built.first().copied().flatten().map(|(id, _)| id);
    Ok(scan)
}

/// Hashes every job on `threads` threads taking jobs in turn; the results
/// are in job order. Stops at the first error.
fn hash_all(jobs: &[Job], threads: usize, on_file: &(dyn Fn(u64) + Sync)) -> Result<Vec<Hashed>> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let results: Mutex<Vec<Option<Hashed>>> = Mutex::new((0..jobs.len()).map(|_| None).collect());
    let budget = AtomicU64::new(KEEP_BUDGET);
    let first_error: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads.clamp(1, jobs.len().max(1)) {
            s.spawn(|| {
                while !failed.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(job) = jobs.get(i) else { break };
                    match hash_job(job, &budget) {
                        Ok(h) => {
                            on_file(match &h {
                                Hashed::File(_, size, _) | Hashed::Chunked { size, .. } => *size,
                            });
                            results.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(h);
                        }
                        Err(e) => {
                            failed.store(true, Ordering::Relaxed);
                            first_error
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .get_or_insert(e);
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    results
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .into_iter()
        .map(|h| h.context("a file was not hashed"))
        .collect()
}

/// Hashes one file; keeps a small file's bytes while `budget` (bytes left
/// to keep) allows.
fn hash_job(job: &Job, budget: &AtomicU64) -> Result<Hashed> {
    if !job.chunked {
        let keep = job.size <= KEEP_MAX
            && budget
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                    left.checked_sub(job.size)
                })
                .is_ok();
        if keep {
            let (id, bytes) = read_small(&job.path, job.size)?;
            return Ok(Hashed::File(id, bytes.len() as u64, Some(bytes)));
        }
        let (id, size) = hash_file(&job.path)?;
        return Ok(Hashed::File(id, size, None));
    }
    let path = &job.path;
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut chunks = Vec::new();
    let recipe = crate::chunking::chunk(f, |offset, id, data| {
        chunks.push((id, offset, data.len() as u64));
        Ok(())
    })
    .with_context(|| format!("chunking {}", path.display()))?;
    let bytes = recipe.encode();
    Ok(Hashed::Chunked {
        id: ObjectId::of(&bytes),
        recipe: bytes,
        size: recipe.size,
        chunks,
    })
}

/// Walks `dir` and everything under it (metadata only): pushes a
/// [`Walked`] per directory (`dir` first) and a [`Job`] per file.
fn walk(
    dir: &Path,
    chunk_threshold: u64,
    dirs: &mut Vec<Walked>,
    jobs: &mut Vec<Job>,
    skipped: &mut Vec<PathBuf>,
) -> Result<()> {
    let index = dirs.len();
    dirs.push(Walked {
        path: dir.to_path_buf(),
        entries: Vec::new(),
    });
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
        let pending = if ft.is_file() {
            jobs.push(Job {
                path,
                size: m.len(),
                chunked: crate::chunking::is_chunked(m.len(), chunk_threshold),
            });
            Pending::File {
                base,
                job: jobs.len() - 1,
            }
        } else if ft.is_dir() {
            let child = dirs.len();
            walk(&path, chunk_threshold, dirs, jobs, skipped)?;
            Pending::Dir { base, dir: child }
        } else if ft.is_symlink() {
            let target = fs::read_link(&path)
                .with_context(|| format!("{}", path.display()))?
                .into_os_string()
                .into_string()
                .map_err(|t| {
                    anyhow::anyhow!("{}: link target {t:?} is not UTF-8", path.display())
                })?;
            Pending::Ready(Entry {
                kind: EntryKind::Symlink,
                size: target.len() as u64,
                target: Some(target),
                ..base
            })
        } else {
            // Sockets, FIFOs and devices have no content to share.
            skipped.push(path);
            continue;
        };
        dirs[index].entries.push(pending);
    }
    Ok(())
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
            scan(a.path(), u64::MAX, &|_| {}).unwrap(),
            scan(b.path(), u64::MAX, &|_| {}).unwrap(),
        );
        assert_eq!(sa.root, sb.root);
        assert_eq!(sa.files.len(), 1, "identical content is one object");
        assert_eq!(sa.file_count, 2);
        assert_eq!(sa.manifests.len(), 3);
    }

    #[test]
    fn any_number_of_hashing_threads_gives_the_same_scan() {
        let d = tempfile::tempdir().unwrap();
        for i in 0..40u32 {
            let sub = d
                .path()
                .join(format!("d{}", i % 7))
                .join(format!("e{}", i % 3));
            fs::create_dir_all(&sub).unwrap();
            // Some contents repeat: which path names them must not vary.
            fs::write(sub.join(format!("f{i}")), (i % 11).to_le_bytes()).unwrap();
        }
        let big: Vec<u8> = (0..5u32 << 20)
            .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
            .collect();
        fs::write(d.path().join("big"), &big).unwrap();
        let one = scan_with(d.path(), 4 << 20, 1, &|_| {}).unwrap();
        let counted = std::sync::atomic::AtomicU64::new(0);
        let four = scan_with(d.path(), 4 << 20, 4, &|n| {
            counted.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        })
        .unwrap();
        assert_eq!(one.root, four.root);
        assert_eq!(one.manifests, four.manifests);
        assert_eq!(one.files, four.files);
        assert_eq!(one.chunks, four.chunks);
        assert_eq!(one.recipes, four.recipes);
        assert_eq!((one.file_count, four.file_count), (41, 41));
        assert_eq!(one.files.len(), 11);
        // Every small file's bytes are kept, under the id they hash to.
        assert_eq!(one.contents.len(), 11);
        assert!(one.contents.iter().all(|(id, b)| ObjectId::of(b) == *id));
        assert_eq!(one.contents, four.contents);
        assert_eq!(counted.into_inner(), 40 * 4 + big.len() as u64);
        let (root_id, root) = one.manifests.last().unwrap();
        assert_eq!(Some(*root_id), one.root);
        assert!(
            DirManifest::decode(root)
                .unwrap()
                .get("big")
                .unwrap()
                .recipe
        );
    }

    #[test]
    fn small_files_are_kept_only_within_the_budget() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("f");
        fs::write(&path, b"four").unwrap();
        let job = Job {
            path: path.clone(),
            size: 4,
            chunked: false,
        };
        let budget = AtomicU64::new(6);
        let Hashed::File(id, 4, Some(bytes)) = hash_job(&job, &budget).unwrap() else {
            panic!("the first file fits the budget");
        };
        assert_eq!(
            (id, bytes.as_slice()),
            (ObjectId::of(b"four"), &b"four"[..])
        );
        assert_eq!(budget.load(Ordering::Relaxed), 2);
        let Hashed::File(again, 4, None) = hash_job(&job, &budget).unwrap() else {
            panic!("the second is over the budget: hashed, not kept");
        };
        assert_eq!(again, id);
        // A file larger than `KEEP_MAX` is never kept.
        fs::write(&path, vec![7u8; KEEP_MAX as usize + 1]).unwrap();
        let big = Job {
            size: KEEP_MAX + 1,
            ..job
        };
        let budget = AtomicU64::new(u64::MAX);
        assert!(matches!(
            hash_job(&big, &budget).unwrap(),
            Hashed::File(_, _, None)
        ));
    }

    #[test]
    fn an_unreadable_file_fails_the_scan() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("ok"), b"fine").unwrap();
        // A dangling path stands in for a file gone between walk and hash.
        let jobs = vec![
            Job {
                path: d.path().join("ok"),
                size: 4,
                chunked: false,
            },
            Job {
                path: d.path().join("gone"),
                size: 4,
                chunked: false,
            },
        ];
        let err = hash_all(&jobs, 2, &|_| {}).err().unwrap();
        assert!(format!("{err:#}").contains("gone"), "{err:#}");
    }

    #[test]
    fn large_files_become_recipes_and_small_ones_stay_objects() {
        let d = tempfile::tempdir().unwrap();
        let big: Vec<u8> = (0..6u32 << 20)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        fs::write(d.path().join("big"), &big).unwrap();
        fs::write(d.path().join("small"), b"small").unwrap();
        let s = scan(d.path(), 4 << 20, &|_| {}).unwrap();
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
