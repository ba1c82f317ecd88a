//! Chunked lower files (entries whose object is a recipe).
//!
//! Until every chunk of such a file is in the local store, the daemon
//! serves its reads ([`ChunkedReader`]), fetching the chunks a read
//! touches and, for a sequential reader, the next few in the background
//! ([`super::readahead`]). Once all chunks are local, an open assembles
//! the whole file once into the mount's cache ([`Assembled`],
//! `<state>/assembled/<recipe id>`) and later opens pass that file through
//! to the kernel like any other lower file. Copy-up writes the full bytes,
//! chunk by chunk.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use elton_proto::recipe::{Chunk, Piece};
use elton_proto::{ChunkIndex, Entry, ObjectId, Recipe};

use super::lower::LowerSource;
use super::readahead::{AheadPlan, ReadAhead};
use super::stamp::FileStamp;

fn eio(why: String) -> io::Error {
    tracing::error!("{why}");
    io::Error::from_raw_os_error(libc::EIO)
}

/// The recipe of a chunked entry, checked against the entry's size: a
/// recipe describing another length is an error, never a short read.
pub fn recipe_of(lower: &dyn LowerSource, entry: &Entry) -> io::Result<(ObjectId, Arc<Recipe>)> {
    let id = entry
        .object
        .ok_or_else(|| eio(format!("{:?}: chunked file without object", entry.name)))?;
    let recipe = lower.recipe(&id)?;
    if recipe.size != entry.size {
        return Err(eio(format!(
            "{:?}: recipe {id} describes {} bytes, the entry says {}",
            entry.name, recipe.size, entry.size
        )));
    }
    Ok((id, recipe))
}

/// Opens a chunk's local copy (fetched first if missing; the slave
/// verifies it against its id) and checks its length against the recipe.
fn open_chunk(lower: &dyn LowerSource, chunk: &Chunk) -> io::Result<File> {
    let id = chunk.object;
    let path = lower.object_path(&id)?;
    let file = File::open(&path)?;
    let len = file.metadata()?.len();
    if len != chunk.size {
        return Err(eio(format!(
            "chunk {id} is {len} bytes, its recipe says {}",
            chunk.size
        )));
    }
    Ok(file)
}

/// Reads one piece from its chunk's local copy.
fn read_piece(lower: &dyn LowerSource, p: &Piece, buf: &mut [u8]) -> io::Result<()> {
    open_chunk(lower, &p.chunk)?.read_exact_at(buf, p.start)
}

/// How many chunk files a reader keeps open. A READ usually lies in one
/// chunk or straddles two, and the READs of one sequential stream arrive
/// close together, so a few cover them; each costs a file descriptor per
/// open handle for as long as the handle stays open.
const OPEN_CHUNKS: usize = 4;

/// The chunk files a reader opened last, most recent first, so that the
/// many READs within one chunk open it (and check its length) once.
#[derive(Default)]
struct OpenChunks {
    files: VecDeque<(ObjectId, Arc<File>)>,
}

impl OpenChunks {
    fn get(&mut self, id: &ObjectId) -> Option<Arc<File>> {
        let at = self.files.iter().position(|(i, _)| i == id)?;
        let hit = self.files.remove(at)?;
        let file = hit.1.clone();
        self.files.push_front(hit);
        Some(file)
    }

    fn put(&mut self, id: ObjectId, file: Arc<File>) {
        // A concurrent READ may have opened it too: keep one.
        self.files.retain(|(i, _)| *i != id);
        self.files.push_front((id, file));
        self.files.truncate(OPEN_CHUNKS);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Serves the reads of one open of a chunked file that is not assembled
/// yet: keeps its chunk files open across READs and, for a sequential
/// reader, has the mount's [`ReadAhead`] make the next chunks local.
pub struct ChunkedReader {
    lower: Arc<dyn LowerSource>,
    recipe: Arc<Recipe>,
    index: ChunkIndex,
    read_ahead: Arc<ReadAhead>,
    plan: Mutex<AheadPlan>,
    open: Mutex<OpenChunks>,
}

impl ChunkedReader {
    pub fn new(
        lower: Arc<dyn LowerSource>,
        recipe: Arc<Recipe>,
        read_ahead: Arc<ReadAhead>,
    ) -> Self {
        Self {
            lower,
            index: ChunkIndex::new(&recipe),
            recipe,
            read_ahead,
            plan: Mutex::new(AheadPlan::default()),
            open: Mutex::new(OpenChunks::default()),
        }
    }

    /// The file's length.
    pub fn size(&self) -> u64 {
        self.recipe.size
    }

    /// Bytes `offset .. offset + size` (fewer only at the end of the file).
    pub fn read_at(&self, offset: u64, size: u32) -> io::Result<Vec<u8>> {
        let pieces = self.recipe.pieces_in(&self.index, offset, size.into());
        let mut out = vec![0u8; pieces.iter().map(|p| p.len as usize).sum()];
        if let Some(last) = pieces.last() {
            // Asked for before this READ's own fetches, so they overlap.
            let end = offset + out.len() as u64;
            let ahead =
                lock(&self.plan).after_read(offset, end, last.index, self.recipe.chunks.len());
            for c in ahead.iter().filter_map(|&i| self.recipe.chunks.get(i)) {
                self.read_ahead.request(&self.lower, c.object);
            }
        }
        let mut at = 0;
        for p in &pieces {
            let end = at + p.len as usize;
            self.chunk_file(&p.chunk)?
                .read_exact_at(&mut out[at..end], p.start)?;
            at = end;
        }
        Ok(out)
    }

    /// The open local copy of `chunk`, fetched first if missing.
    fn chunk_file(&self, chunk: &Chunk) -> io::Result<Arc<File>> {
        if let Some(f) = lock(&self.open).get(&chunk.object) {
            return Ok(f);
        }
        // Not under the lock: this may wait for a fetch, and other READs of
        // this file need not.
        let file = Arc::new(open_chunk(&*self.lower, chunk)?);
        lock(&self.open).put(chunk.object, file.clone());
        Ok(file)
    }
}

/// `lseek` on a chunked file of `size` bytes: it has no holes. The kernel
/// keeps the file position itself; only SEEK_DATA/SEEK_HOLE (and, for
/// completeness, the others) reach the filesystem.
pub fn seek(size: u64, offset: i64, whence: i32) -> io::Result<i64> {
    let size = i64::try_from(size).map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
    let invalid = || io::Error::from_raw_os_error(libc::EINVAL);
    let pos = match whence {
        libc::SEEK_DATA | libc::SEEK_HOLE if offset < 0 => return Err(invalid()),
        libc::SEEK_DATA | libc::SEEK_HOLE if offset >= size => {
            return Err(io::Error::from_raw_os_error(libc::ENXIO));
        }
        libc::SEEK_DATA => offset,
        libc::SEEK_HOLE => size,
        libc::SEEK_END => size.checked_add(offset).ok_or_else(invalid)?,
        _ => offset,
    };
    if pos < 0 {
        return Err(invalid());
    }
    Ok(pos)
}

/// Writes the whole file into `out`, chunk by chunk, checking each chunk's
/// bytes against its id once more (they are about to outlive the store's
/// verification).
pub fn write_all(lower: &dyn LowerSource, recipe: &Recipe, out: &mut File) -> io::Result<()> {
    let mut buf = Vec::new();
    for p in recipe.pieces(0, recipe.size) {
        buf.resize(p.len as usize, 0);
        read_piece(lower, &p, &mut buf)?;
        if ObjectId::of(&buf) != p.chunk.object {
            return Err(eio(format!("chunk {} changed on disk", p.chunk.object)));
        }
        out.write_all(&buf)?;
    }
    Ok(())
}

/// Default bound of a mount's assembled copies (`--assembled-max-bytes`).
pub const DEFAULT_ASSEMBLED_MAX_BYTES: u64 = 8 << 30;

/// An assembled copy used or made this recently is never evicted: whoever
/// got its path from [`Assembled::get`] opens it right after. Copies open
/// for passthrough are spared too (see [`Assembled::assemble_if_local`]).
const EVICT_MIN_AGE: Duration = Duration::from_secs(60);

/// Whole-file copies of chunked lower files whose chunks are all local, one
/// per recipe, bounded in size: when a new copy would exceed the bound, the
/// least recently used ones go (their next open assembles again, from
/// chunks still in the store). A file larger than the bound is never
/// assembled: the daemon keeps serving it.
///
/// A copy is passed through to the kernel, which reads it without any hash
/// check, so it is used only while it is the file this process wrote or
/// checked against the recipe (same [`FileStamp`]); any other copy (left by
/// an earlier mount process, or changed since) is checked chunk by chunk
/// first, and a bad one is cut off ([`elton_slave::quarantine`]: opens
/// made earlier read end-of-file) and assembled again.
pub struct Assembled {
    dir: PathBuf,
    max_bytes: u64,
    /// Serialises eviction (concurrent opens may assemble at once).
    evicting: Mutex<()>,
    /// Copies known good, as they were then.
    checked: Mutex<HashMap<ObjectId, FileStamp>>,
}

impl Assembled {
    pub fn new(dir: PathBuf, max_bytes: u64) -> Self {
        Self {
            dir,
            max_bytes,
            evicting: Mutex::new(()),
            checked: Mutex::new(HashMap::new()),
        }
    }

    fn path(&self, recipe: &ObjectId) -> PathBuf {
        self.dir.join(recipe.to_hex())
    }

    /// The assembled file, if it exists with the right length and holds the
    /// recipe's bytes; marks it used (its mtime orders eviction).
    pub fn get(&self, recipe_id: &ObjectId, recipe: &Recipe) -> Option<PathBuf> {
        let p = self.path(recipe_id);
        let file = File::open(&p).ok()?;
        let m = file.metadata().ok()?;
        if !m.is_file() || m.len() != recipe.size {
            return None;
        }
        let known = lock(&self.checked).get(recipe_id).copied();
        if known != Some(FileStamp::of(&m)) {
            match elton_slave::mount_copies::matches_recipe(&mut &file, m.len(), recipe) {
                Ok(true) => {}
                Ok(false) => {
                    tracing::error!(recipe = %recipe_id, path = %p.display(), "assembled copy is corrupt; removed, assembled again");
                    lock(&self.checked).remove(recipe_id);
                    let _ = elton_slave::quarantine::cut_off(&p, None, Some(m.ino()));
                    return None;
                }
                Err(e) => {
                    tracing::warn!(recipe = %recipe_id, "checking the assembled copy: {e}");
                    return None;
                }
            }
        }
        // Best effort: a copy that keeps an old mtime is only evicted sooner.
        let _ = file.set_modified(SystemTime::now());
        self.remember(recipe_id, &file);
        Some(p)
    }

    /// Records the copy's current stamp as checked.
    fn remember(&self, recipe_id: &ObjectId, file: &File) {
        if let Ok(m) = file.metadata() {
            lock(&self.checked).insert(*recipe_id, FileStamp::of(&m));
        }
    }

    /// Assembles the file if every chunk is local now (never fetches);
    /// `None` when some chunk is missing or the file exceeds the bound.
    /// `in_use` lists the (device, inode) of copies open for passthrough:
    /// they are never evicted, since the kernel allows one backing file per
    /// inode, and a new copy could not be used while the old one is open.
    pub fn assemble_if_local(
        &self,
        lower: &dyn LowerSource,
        recipe_id: &ObjectId,
        recipe: &Recipe,
        in_use: &HashSet<(u64, u64)>,
    ) -> io::Result<Option<PathBuf>> {
        if let Some(p) = self.get(recipe_id, recipe) {
            return Ok(Some(p));
        }
        if recipe.size > self.max_bytes {
            return Ok(None);
        }
        if !recipe.chunks.iter().all(|c| lower.is_local(&c.object)) {
            return Ok(None);
        }
        fs::create_dir_all(&self.dir)?;
        {
            let _turn = lock(&self.evicting);
            let removed = evict(
                &self.dir,
                recipe.size,
                self.max_bytes,
                in_use,
                SystemTime::now(),
            )?;
            if removed > 0 {
                tracing::debug!(removed, "assembled copies evicted");
            }
        }
        // Written aside and renamed: the cache never holds a partial file.
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        write_all(lower, recipe, tmp.as_file_mut())?;
        let dest = self.path(recipe_id);
        let file = tmp.persist(&dest).map_err(|e| e.error)?;
        self.remember(recipe_id, &file);
        tracing::debug!(recipe = %recipe_id, size = recipe.size, "assembled chunked file");
        Ok(Some(dest))
    }
}

/// Removes the least recently modified copies in `dir` (files named by a
/// recipe id) until `need` more bytes fit under `max`, sparing those
/// modified within [`EVICT_MIN_AGE`] of `now` and those `in_use` (the bound
/// may then be exceeded for a while). Returns how many were removed.
fn evict(
    dir: &Path,
    need: u64,
    max: u64,
    in_use: &HashSet<(u64, u64)>,
    now: SystemTime,
) -> io::Result<usize> {
    let mut copies = Vec::new();
    for e in fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        if name
            .to_str()
            .and_then(|n| n.parse::<ObjectId>().ok())
            .is_none()
        {
            continue; // a temp file of an assembly in progress
        }
        let m = match e.metadata() {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if m.is_file() {
            let busy = in_use.contains(&(m.dev(), m.ino()));
            copies.push((m.modified()?, m.len(), busy, e.path()));
        }
    }
    let mut total: u64 = copies.iter().map(|(_, len, _, _)| len).sum();
    copies.sort();
    let mut removed = 0;
    for (modified, len, busy, path) in copies {
        if total.saturating_add(need) <= max {
            break;
        }
        if now.duration_since(modified).unwrap_or_default() < EVICT_MIN_AGE {
            break; // sorted: every later copy is as recent
        }
        if busy {
            continue;
        }
        match fs::remove_file(&path) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        total -= len;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A copy named like a recipe id, `age` old.
    fn copy(dir: &Path, seed: &[u8], len: usize, age: Duration) -> PathBuf {
        let p = dir.join(ObjectId::of(seed).to_hex());
        fs::write(&p, vec![0u8; len]).unwrap();
        File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(SystemTime::now() - age)
            .unwrap();
        p
    }

    #[test]
    fn eviction_removes_least_recently_used_copies_and_spares_recent_ones() {
        let dir = tempfile::tempdir().unwrap();
        let hour = Duration::from_secs(3600);
        let oldest = copy(dir.path(), b"a", 400, 3 * hour);
        let older = copy(dir.path(), b"b", 400, 2 * hour);
        let recent = copy(dir.path(), b"c", 400, Duration::from_secs(1));
        fs::write(dir.path().join(".tmpXYZ"), vec![0u8; 5000]).unwrap();
        let now = SystemTime::now();

        let none = HashSet::new();
        // 1200 held + 300 needed > 1500 is false: nothing to do.
        assert_eq!(evict(dir.path(), 300, 1500, &none, now).unwrap(), 0);
        // A copy open for passthrough is skipped; the next oldest goes.
        let m = fs::metadata(&oldest).unwrap();
        let busy = HashSet::from([(m.dev(), m.ino())]);
        assert_eq!(evict(dir.path(), 500, 1500, &busy, now).unwrap(), 1);
        assert!(oldest.exists() && !older.exists() && recent.exists());
        // Once closed, it is the oldest and goes first: 800 + 1000 > 1500.
        assert_eq!(evict(dir.path(), 1000, 1500, &none, now).unwrap(), 1);
        assert!(!oldest.exists() && recent.exists());
        // Room for everything is asked: the recent copy stays regardless.
        assert_eq!(evict(dir.path(), 1500, 1500, &none, now).unwrap(), 0);
        assert!(recent.exists());
        assert!(
            dir.path().join(".tmpXYZ").exists(),
            "temp files are not copies"
        );
    }

    #[test]
    fn a_file_larger_than_the_bound_is_never_assembled() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Assembled::new(dir.path().join("assembled"), 10);
        let recipe = Recipe::new(vec![Chunk {
            object: ObjectId::of(b"twelve bytes"),
            size: 12,
        }])
        .unwrap();
        struct Nothing;
        impl LowerSource for Nothing {
            fn manifest(&self, _: &ObjectId) -> io::Result<Arc<elton_proto::DirManifest>> {
                Err(io::Error::from_raw_os_error(libc::EIO))
            }
            fn object_path(&self, _: &ObjectId) -> io::Result<PathBuf> {
                Err(io::Error::from_raw_os_error(libc::EIO))
            }
            fn recipe(&self, _: &ObjectId) -> io::Result<Arc<Recipe>> {
                Err(io::Error::from_raw_os_error(libc::EIO))
            }
            fn is_local(&self, _: &ObjectId) -> bool {
                true
            }
        }
        let id = ObjectId::of(b"recipe");
        assert!(
            cache
                .assemble_if_local(&Nothing, &id, &recipe, &HashSet::new())
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn seek_knows_there_are_no_holes() {
        assert_eq!(seek(10, 3, libc::SEEK_DATA).unwrap(), 3);
        assert_eq!(seek(10, 3, libc::SEEK_HOLE).unwrap(), 10);
        assert_eq!(
            seek(10, 10, libc::SEEK_DATA).unwrap_err().raw_os_error(),
            Some(libc::ENXIO)
        );
        assert_eq!(seek(10, -2, libc::SEEK_END).unwrap(), 8);
        assert!(seek(10, -11, libc::SEEK_END).is_err());
        assert_eq!(seek(10, 4, libc::SEEK_SET).unwrap(), 4);
    }

    #[test]
    fn open_chunks_keeps_the_most_recent_few() {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<ObjectId> = (0..=OPEN_CHUNKS as u8)
            .map(|i| ObjectId::of(&[i]))
            .collect();
        let file = |i: usize| {
            let p = dir.path().join(i.to_string());
            fs::write(&p, [i as u8]).unwrap();
            Arc::new(File::open(p).unwrap())
        };
        let mut open = OpenChunks::default();
        assert!(open.get(&ids[0]).is_none());
        for (i, id) in ids.iter().enumerate().take(OPEN_CHUNKS) {
            open.put(*id, file(i));
        }
        // A hit makes chunk 0 the most recent, so adding one more evicts
        // chunk 1, the least recently used.
        let first = open.get(&ids[0]).unwrap();
        let mut b = [0u8];
        first.read_exact_at(&mut b, 0).unwrap();
        assert_eq!(b, [0]);
        open.put(ids[OPEN_CHUNKS], file(OPEN_CHUNKS));
        assert!(open.get(&ids[1]).is_none());
        for id in ids.iter().filter(|&id| *id != ids[1]) {
            assert!(open.get(id).is_some());
        }
        // Putting an id again replaces it instead of holding it twice.
        open.put(ids[0], file(0));
        assert_eq!(open.files.len(), OPEN_CHUNKS);
    }
}
