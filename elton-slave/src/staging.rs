//! Storing many objects with a few filesystem flushes: a mount's commit
//! stages every file, chunk and manifest it stores (hard-linked or written
//! into the store's temp directory, hashed, not fsynced) and publishes them
//! together with [`ObjectStore::publish_batch_into`]: one `syncfs` for all
//! their bytes, the renames, one `syncfs` for the renames. After a crash at
//! any point every object in `objects/` is complete; the temp files of an
//! unpublished stage are deleted (when dropped, or by the slave's start-up
//! cleaning of `tmp/`).

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use elton_proto::ObjectId;

use crate::SlaveError;
use crate::store::{ObjectStore, Staged};

/// A stage publishes what it holds once it has this many objects or bytes:
/// it bounds the bytes one `syncfs` waits for and the temp files a crash
/// leaves behind, while keeping the flushes per object low.
pub const FLUSH_OBJECTS: usize = 4096;
pub const FLUSH_BYTES: u64 = 256 << 20;

/// [`Staging::bytes_many`] writes on at most this many threads…
const WRITERS: usize = 4;
/// …each with at least this many objects (below it a thread costs more
/// than it saves).
const MIN_PER_WRITER: usize = 32;

/// What storing one object did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Put {
    pub id: ObjectId,
    /// The object's size (of the bytes hashed).
    pub size: u64,
    /// False when the object was already stored or staged: nothing was
    /// added for it.
    pub new: bool,
}

/// Objects waiting to be published together; see the module docs.
pub struct Staging<'a> {
    store: &'a ObjectStore,
    staged: Vec<Staged>,
    /// Ids staged and not yet published, so a second copy is not staged.
    pending: HashSet<ObjectId>,
    pending_bytes: u64,
    /// Every object this stage put in `objects/` (for undoing a commit that
    /// fails after a flush).
    added: Vec<ObjectId>,
}

impl<'a> Staging<'a> {
    pub fn new(store: &'a ObjectStore) -> Self {
        Self {
            store,
            staged: Vec::new(),
            pending: HashSet::new(),
            pending_bytes: 0,
            added: Vec::new(),
        }
    }

    /// Whether `id` is stored or staged. A stored object is marked used
    /// (see [`ObjectStore::note_used`]) so garbage collection keeps it for
    /// the commit relying on it.
    pub fn has(&self, id: &ObjectId) -> bool {
        self.pending.contains(id) || self.store.note_used(id)
    }

    /// Stages a local file without copying its bytes: it is hard-linked
    /// into the store's temp directory (copied across filesystems) and
    /// hashed. The caller must not modify `src` afterwards while it still
    /// links the object. Blocking.
    pub fn link(&mut self, src: &Path) -> Result<Put, SlaveError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let tmp = self.store.tmp_dir().join(format!(
            "stage-{}-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        match fs::hard_link(src, &tmp) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => return self.copy(src),
            Err(e) => return Err(io_err("linking", src, e)),
        }
        // Deleted when dropped, unless published.
        let tmp = match tempfile::TempPath::try_from_path(&tmp) {
            Ok(t) => t,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(io_err("staging", &tmp, e));
            }
        };
        let (id, size) = File::open(&tmp)
            .and_then(|mut f| hash_counted(&mut f))
            .map_err(|e| io_err("reading", &tmp, e))?;
        let put = Put {
            id,
            size,
            new: !self.has(&id),
        };
        if put.new {
            self.push(Staged::linked(id, tmp), size)?;
        }
        Ok(put)
    }

    /// Stages a copy of a local file (a snapshot of its current bytes).
    /// Blocking.
    pub fn copy(&mut self, src: &Path) -> Result<Put, SlaveError> {
        let mut f = File::open(src).map_err(|e| io_err("opening", src, e))?;
        let mut w = self.store.batch_writer()?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).map_err(|e| io_err("reading", src, e))?;
            if n == 0 {
                break;
            }
            w.write(&buf[..n])?;
        }
        let size = w.size();
        self.add(w.finish_any(), size)
    }

    /// Stages `bytes`. Blocking.
    pub fn bytes(&mut self, bytes: &[u8]) -> Result<Put, SlaveError> {
        let id = ObjectId::of(bytes);
        let size = bytes.len() as u64;
        if self.has(&id) {
            return Ok(Put {
                id,
                size,
                new: false,
            });
        }
        let mut w = self.store.batch_writer()?;
        w.write(bytes)?;
        self.add(w.finish(id)?, size)
    }

    /// Stages many byte strings, as [`Self::bytes`] each, writing the new
    /// ones on up to [`WRITERS`] threads: a commit's hundreds of small
    /// manifests cost their temp files' creation more than their bytes.
    /// Returns what storing each did, in order. Blocking.
    pub fn bytes_many(&mut self, items: &[&[u8]]) -> Result<Vec<Put>, SlaveError> {
        let mut puts = Vec::with_capacity(items.len());
        let mut new = Vec::new();
        let mut seen = HashSet::new();
        for bytes in items {
            let id = ObjectId::of(bytes);
            let put = Put {
                id,
                size: bytes.len() as u64,
                new: !self.has(&id) && seen.insert(id),
            };
            if put.new {
                new.push((id, *bytes));
            }
            puts.push(put);
        }
        let store = self.store;
        let write = |(id, bytes): &(ObjectId, &[u8])| -> Result<(Staged, u64), SlaveError> {
            let mut w = store.batch_writer()?;
            w.write(bytes)?;
            Ok((w.finish(*id)?, bytes.len() as u64))
        };
        let threads = WRITERS.min(new.len().div_ceil(MIN_PER_WRITER)).max(1);
        let written: Vec<Result<(Staged, u64), SlaveError>> = if threads == 1 {
            new.iter().map(write).collect()
        } else {
            let per = new.len().div_ceil(threads);
            std::thread::scope(|scope| {
                let handles: Vec<_> = new
                    .chunks(per)
                    .map(|part| scope.spawn(move || part.iter().map(write).collect::<Vec<_>>()))
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| {
                        h.join().unwrap_or_else(|_| {
                            vec![Err(SlaveError::Io("a staging thread panicked".into()))]
                        })
                    })
                    .collect()
            })
        };
        for w in written {
            let (staged, size) = w?;
            self.push(staged, size)?;
        }
        Ok(puts)
    }

    fn add(&mut self, staged: Staged, size: u64) -> Result<Put, SlaveError> {
        let id = staged.id();
        let new = !self.has(&id);
        if new {
            self.push(staged, size)?;
        }
        Ok(Put { id, size, new })
    }

    fn push(&mut self, staged: Staged, size: u64) -> Result<(), SlaveError> {
        self.pending.insert(staged.id());
        self.staged.push(staged);
        self.pending_bytes += size;
        if self.staged.len() >= FLUSH_OBJECTS || self.pending_bytes >= FLUSH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Publishes everything staged so far (two `syncfs`). Blocking.
    pub fn flush(&mut self) -> Result<(), SlaveError> {
        let staged = std::mem::take(&mut self.staged);
        self.pending.clear();
        self.pending_bytes = 0;
        self.store.publish_batch_into(staged, &mut self.added)
    }

    /// Whether objects wait to be published (a [`Self::flush`] would then
    /// flush the filesystem).
    pub fn has_pending(&self) -> bool {
        !self.staged.is_empty()
    }

    /// Every object this stage put in `objects/` so far, also when a flush
    /// failed halfway.
    pub fn added(&self) -> &[ObjectId] {
        &self.added
    }
}

fn io_err(what: &str, path: &Path, e: io::Error) -> SlaveError {
    SlaveError::Io(format!("{what} {}: {e}", path.display()))
}

/// The id and size of what `r` yields.
fn hash_counted(r: &mut impl Read) -> io::Result<(ObjectId, u64)> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((ObjectId::from_hash(hasher.finalize()), size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_visible_before_the_flush_and_duplicates_stage_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::open(&dir.path().join("data")).unwrap();
        let src = dir.path().join("f");
        fs::write(&src, b"linked bytes").unwrap();
        let mut s = Staging::new(&store);
        let a = s.link(&src).unwrap();
        assert_eq!(
            (a.id, a.size, a.new),
            (ObjectId::of(b"linked bytes"), 12, true)
        );
        // The same bytes again, by any route, add nothing.
        assert!(!s.copy(&src).unwrap().new);
        assert!(!s.bytes(b"linked bytes").unwrap().new);
        let b = s.bytes(b"written bytes").unwrap();
        assert!(b.new);
        assert!(!store.contains(&a.id) && !store.contains(&b.id));
        s.flush().unwrap();
        assert_eq!(s.added(), &[a.id, b.id]);
        assert_eq!(store.read(&a.id).unwrap().unwrap(), b"linked bytes");
        assert_eq!(store.read(&b.id).unwrap().unwrap(), b"written bytes");
        // Stored now: staging it again adds nothing.
        assert!(!s.bytes(b"written bytes").unwrap().new);
        assert_eq!(
            fs::read_dir(dir.path().join("data/tmp")).unwrap().count(),
            0
        );
    }

    #[test]
    fn many_bytes_stage_like_one_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::open(&dir.path().join("data")).unwrap();
        let mut s = Staging::new(&store);
        let before = s.bytes(b"staged before").unwrap();
        let items: Vec<Vec<u8>> = (0..200u32)
            .map(|i| format!("manifest {i}").into_bytes())
            .collect();
        let mut refs: Vec<&[u8]> = items.iter().map(Vec::as_slice).collect();
        // A duplicate within the batch and one already staged add nothing.
        refs.push(b"manifest 7");
        refs.push(b"staged before");
        let puts = s.bytes_many(&refs).unwrap();
        assert_eq!(puts.len(), 202);
        for (put, bytes) in puts.iter().zip(&refs) {
            assert_eq!(
                (put.id, put.size),
                (ObjectId::of(bytes), bytes.len() as u64)
            );
        }
        assert!(puts[..200].iter().all(|p| p.new));
        assert!(!puts[200].new && !puts[201].new);
        assert!(
            !store.contains(&puts[0].id),
            "nothing visible before the flush"
        );
        s.flush().unwrap();
        assert_eq!(s.added().len(), 201);
        assert_eq!(s.added()[0], before.id);
        for (put, bytes) in puts.iter().zip(&refs) {
            assert_eq!(store.read(&put.id).unwrap().unwrap(), *bytes);
        }
        assert_eq!(
            fs::read_dir(dir.path().join("data/tmp")).unwrap().count(),
            0
        );
        // Stored now: staging them again adds nothing.
        assert!(s.bytes_many(&refs).unwrap().iter().all(|p| !p.new));
    }

    #[test]
    fn a_dropped_stage_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::open(&dir.path().join("data")).unwrap();
        let src = dir.path().join("f");
        fs::write(&src, b"upper file").unwrap();
        let mut s = Staging::new(&store);
        let a = s.link(&src).unwrap();
        let b = s.copy(&src).unwrap();
        assert_eq!(a.id, b.id);
        drop(s);
        assert!(!store.contains(&a.id));
        assert_eq!(
            fs::read_dir(dir.path().join("data/tmp")).unwrap().count(),
            0
        );
        // The source keeps its single link: nothing aliases it.
        use std::os::unix::fs::MetadataExt;
        assert_eq!(fs::metadata(&src).unwrap().nlink(), 1);
    }

    #[test]
    fn a_full_stage_publishes_itself() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::open(&dir.path().join("data")).unwrap();
        let mut s = Staging::new(&store);
        let mut ids = Vec::new();
        for i in 0..FLUSH_OBJECTS as u32 + 1 {
            ids.push(s.bytes(&i.to_le_bytes()).unwrap().id);
        }
        assert_eq!(s.added().len(), FLUSH_OBJECTS);
        assert!(store.contains(&ids[0]) && !store.contains(&ids[FLUSH_OBJECTS]));
        s.flush().unwrap();
        assert!(store.contains(&ids[FLUSH_OBJECTS]));
    }
}
