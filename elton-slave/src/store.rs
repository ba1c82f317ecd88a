//! Content-addressed object store on local disk.
//!
//! Layout (see `docs/formats.md`): `<data>/objects/<2 hex>/<62 hex>`, temp
//! files in `<data>/tmp/`, objects that failed verification moved to
//! `<data>/corrupt/`. Every object is hashed as it arrives and published with
//! [`crate::durable::publish`]. An object is re-hashed before it is served
//! whenever its file is not the one this process verified (new inode, size,
//! mtime or ctime), so a file changed behind our back is never served.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use elton_proto::{ObjectId, chunking};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;

use crate::SlaveError;

/// Identity of the file behind an object, as last verified.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Stamp {
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(m: &fs::Metadata) -> Self {
        Self {
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

pub struct ObjectStore {
    objects: PathBuf,
    tmp: PathBuf,
    corrupt: PathBuf,
    verified: Mutex<HashMap<ObjectId, Stamp>>,
    /// When an object already stored was last stored again or vouched for
    /// by a commit (see [`Self::note_used`]): garbage collection keeps what
    /// was used after its cutoff, whatever the file's own times say.
    used: Mutex<HashMap<ObjectId, SystemTime>>,
}

fn io_err(what: &str, path: &Path, e: io::Error) -> SlaveError {
    SlaveError::Io(format!("{what} {}: {e}", path.display()))
}

impl ObjectStore {
    pub fn open(data_dir: &Path) -> Result<Arc<Self>, SlaveError> {
        let store = Self {
            objects: data_dir.join("objects"),
            tmp: data_dir.join("tmp"),
            corrupt: data_dir.join("corrupt"),
            verified: Mutex::new(HashMap::new()),
            used: Mutex::new(HashMap::new()),
        };
        for d in [&store.objects, &store.tmp, &store.corrupt] {
            fs::create_dir_all(d).map_err(|e| io_err("creating", d, e))?;
        }
        store.create_shards()?;
        Ok(Arc::new(store))
    }

    /// Deletes temp files older than `age`: leftovers of writes interrupted
    /// by a crash, never published. Younger ones may belong to another
    /// process sharing the store (an Eltonfs mount committing).
    pub fn clean_tmp(&self, age: std::time::Duration) {
        let Ok(entries) = fs::read_dir(&self.tmp) else {
            return;
        };
        for e in entries.flatten() {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|a| a > age));
            if old {
                let _ = fs::remove_file(e.path());
            }
        }
    }

    /// Removes an object. Used only to undo a hard link a mount's commit
    /// put in the store ([`crate::staging::Staging::link`]) when the commit
    /// that needed it failed, so the store never aliases a file that
    /// stays writable elsewhere.
    pub fn remove(&self, id: &ObjectId) -> Result<(), SlaveError> {
        self.verified().remove(id);
        match fs::remove_file(self.path(id)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("removing", &self.path(id), e)),
        }
    }

    fn used(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectId, SystemTime>> {
        self.used.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `id` is stored; if it is, records that it was used now (a
    /// store of the same bytes again, or a commit relying on it). Checked
    /// and recorded under the lock that [`Self::remove_unused`] holds, so
    /// an object is either still there and marked, or already gone.
    pub fn note_used(&self, id: &ObjectId) -> bool {
        let mut used = self.used();
        if self.path(id).is_file() {
            used.insert(*id, SystemTime::now());
            return true;
        }
        false
    }

    /// Whether `id` was marked used at or after `since`.
    pub fn used_since(&self, id: &ObjectId, since: SystemTime) -> bool {
        self.used().get(id).is_some_and(|t| *t >= since)
    }

    /// Forgets use marks older than `before` (they protect nothing any more).
    pub fn forget_uses_before(&self, before: SystemTime) {
        self.used().retain(|_, t| *t >= before);
    }

    /// Removes `id` unless it was used at or after `since`, or its file's
    /// arrival (ctime or mtime: a hard link or rename counts as an arrival)
    /// is on the wrong side of `since`: garbage collection removes only what
    /// arrived before its cutoff ([`Arrived::Before`]); a failed write undoes
    /// only what arrived since it began ([`Arrived::Since`]), never an
    /// object that was there before it. Returns the size removed; `None`
    /// when kept or already absent.
    pub fn remove_unused(
        &self,
        id: &ObjectId,
        since: SystemTime,
        arrived: Arrived,
    ) -> Result<Option<u64>, SlaveError> {
        let used = self.used();
        if used.get(id).is_some_and(|t| *t >= since) {
            return Ok(None);
        }
        let path = self.path(id);
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("stat", &path, e)),
        };
        let arrived_before = arrival(&meta) < since;
        if arrived_before != (arrived == Arrived::Before) {
            return Ok(None);
        }
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("removing", &path, e)),
        }
        drop(used);
        self.verified().remove(id);
        Ok(Some(meta.size()))
    }

    pub fn path(&self, id: &ObjectId) -> PathBuf {
        let hex = id.to_hex();
        self.objects.join(&hex[..2]).join(&hex[2..])
    }

    pub fn contains(&self, id: &ObjectId) -> bool {
        self.path(id).is_file()
    }

    fn verified(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectId, Stamp>> {
        self.verified.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens an object for reading after making sure its bytes hash to `id`.
    /// `Ok(None)` when absent; a corrupt object is quarantined and reported
    /// as [`SlaveError::Corrupt`]. Blocking.
    pub fn open_verified(&self, id: &ObjectId) -> Result<Option<(File, u64)>, SlaveError> {
        let path = self.path(id);
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("opening", &path, e)),
        };
        let meta = file.metadata().map_err(|e| io_err("stat", &path, e))?;
        let stamp = Stamp::of(&meta);
        if self.verified().get(id) != Some(&stamp) {
            let actual = hash_reader(&mut file).map_err(|e| io_err("reading", &path, e))?;
            if actual != *id {
                self.quarantine(id);
                return Err(SlaveError::Corrupt(*id));
            }
            file.rewind().map_err(|e| io_err("seeking", &path, e))?;
            self.verified().insert(*id, stamp);
        }
        Ok(Some((file, meta.size())))
    }

    /// Reads a whole (small) object, verified. Blocking.
    pub fn read(&self, id: &ObjectId) -> Result<Option<Vec<u8>>, SlaveError> {
        let path = self.path(id);
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("opening", &path, e)),
        };
        let mut buf = Vec::new();
        file.read_to_end(&mut buf)
            .map_err(|e| io_err("reading", &path, e))?;
        // The bytes returned are the bytes hashed: one pass, whether or not
        // the file was verified before (it may have changed since).
        if ObjectId::of(&buf) != *id {
            self.quarantine(id);
            return Err(SlaveError::Corrupt(*id));
        }
        Ok(Some(buf))
    }

    /// Moves a corrupt object aside so that it is fetched again (see
    /// [`crate::quarantine`]: descriptors opened earlier stop seeing it).
    pub fn quarantine(&self, id: &ObjectId) {
        self.quarantine_inode(id, None);
    }

    /// Quarantines `id` if its file is still inode `ino` (any inode when
    /// `None`). Returns the emptied inode, for
    /// [`crate::quarantine::refill`] once a good copy is stored.
    pub fn quarantine_inode(&self, id: &ObjectId, ino: Option<u64>) -> Option<File> {
        self.verified().remove(id);
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dest = self.corrupt.join(format!("{id}.{stamp}"));
        match crate::quarantine::cut_off(&self.path(id), Some(&dest), ino) {
            Ok(emptied) => {
                if dest.exists() {
                    tracing::error!(object = %id, moved_to = %dest.display(), "corrupt object quarantined");
                }
                emptied
            }
            Err(e) => {
                tracing::error!(object = %id, "corrupt object could not be moved: {e}");
                None
            }
        }
    }

    /// Where quarantined objects go.
    pub fn corrupt_dir(&self) -> &Path {
        &self.corrupt
    }

    /// Records that the file behind `id`, as `meta` describes it, was just
    /// hashed and found good (by the scrub), so reads need not hash it again.
    pub fn mark_verified(&self, id: ObjectId, meta: &fs::Metadata) {
        self.verified().insert(id, Stamp::of(meta));
    }

    /// Creates all 256 shard directories up front (once per store): a
    /// directory created on the fly would cost every early object an extra
    /// inode and an fsync of `objects/`.
    fn create_shards(&self) -> Result<(), SlaveError> {
        let mut created = false;
        for b in 0..=255u8 {
            let shard = self.objects.join(format!("{b:02x}"));
            match fs::create_dir(&shard) {
                Ok(()) => created = true,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err("creating", &shard, e)),
            }
        }
        if created {
            File::open(&self.objects)
                .and_then(|d| d.sync_all())
                .map_err(|e| io_err("fsync", &self.objects, e))?;
        }
        Ok(())
    }

    /// Creates a shard directory durably (its entry in `objects/` too), in
    /// case one was removed since the store opened.
    fn ensure_shard(&self, shard: &Path) -> Result<(), SlaveError> {
        if shard.is_dir() {
            return Ok(());
        }
        fs::create_dir_all(shard).map_err(|e| io_err("creating", shard, e))?;
        File::open(&self.objects)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_err("fsync", &self.objects, e))
    }

    /// Stores `bytes`; returns their id. Blocking.
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<ObjectId, SlaveError> {
        let mut w = self.writer()?;
        w.write(bytes)?;
        self.finish(w, None)
    }

    fn writer(&self) -> Result<ObjectWriter, SlaveError> {
        let tmp = tempfile::NamedTempFile::new_in(&self.tmp)
            .map_err(|e| io_err("creating temp file in", &self.tmp, e))?;
        Ok(ObjectWriter {
            tmp,
            hasher: blake3::Hasher::new(),
            size: 0,
        })
    }

    /// Verifies, fsyncs and publishes a written object. Blocking.
    fn finish(&self, w: ObjectWriter, expected: Option<ObjectId>) -> Result<ObjectId, SlaveError> {
        let id = ObjectId::from_hash(w.hasher.finalize());
        if let Some(expected) = expected
            && expected != id
        {
            return Err(SlaveError::HashMismatch {
                expected,
                actual: id,
            });
        }
        self.publish(w.tmp, id)?;
        Ok(id)
    }

    /// Stores bytes the caller has already checked to hash to `id` (they
    /// are not hashed again). Blocking.
    pub fn put_verified(&self, id: ObjectId, bytes: &[u8]) -> Result<(), SlaveError> {
        if self.note_used(&id) {
            return Ok(());
        }
        let mut w = self.writer()?;
        w.tmp
            .write_all(bytes)
            .map_err(|e| io_err("writing", w.tmp.path(), e))?;
        self.publish(w.tmp, id)
    }

    /// Fsyncs a complete temp file holding `id`'s bytes and renames it into
    /// place durably.
    fn publish(&self, tmp: tempfile::NamedTempFile, id: ObjectId) -> Result<(), SlaveError> {
        let dest = self.path(&id);
        if self.note_used(&id) {
            // Same bytes already stored: content addressing makes this a no-op,
            // unless the stored copy went bad, which the next read detects.
            return Ok(());
        }
        tmp.as_file()
            .sync_all()
            .map_err(|e| io_err("fsync", tmp.path(), e))?;
        let shard = dest.parent().unwrap_or(&self.objects);
        self.ensure_shard(shard)?;
        let (file, tmp_path) = tmp.keep().map_err(|e| SlaveError::Io(e.to_string()))?;
        crate::durable::publish(&tmp_path, &dest).map_err(|e| io_err("publishing", &dest, e))?;
        if let Ok(meta) = file.metadata() {
            self.verified().insert(id, Stamp::of(&meta));
        }
        Ok(())
    }

    /// Streams bytes into the store. With `expected`, the object must hash to
    /// it; `limit` bounds the size. Nothing is published unless complete and
    /// verified.
    pub async fn ingest<S, E>(
        self: &Arc<Self>,
        body: S,
        expected: Option<ObjectId>,
        limit: u64,
    ) -> Result<(ObjectId, u64), SlaveError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let spooled = self.spool(body, limit).await?;
        let size = spooled.size();
        let store = self.clone();
        let id = tokio::task::spawn_blocking(move || store.finish(spooled.0, expected))
            .await
            .map_err(|e| SlaveError::Io(format!("finish task: {e}")))??;
        Ok((id, size))
    }

    /// Streams bytes into a temp file of the store, hashing them; `limit`
    /// bounds the size. Nothing is published: see [`Self::publish_spooled`]
    /// and [`Self::chunk_spooled`]. The temp file goes when dropped.
    pub async fn spool<S, E>(
        self: &Arc<Self>,
        mut body: S,
        limit: u64,
    ) -> Result<Spooled, SlaveError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let (tx, mut rx) = mpsc::channel::<Bytes>(16);
        let store = self.clone();
        let writer = tokio::task::spawn_blocking(move || {
            let mut w = store.writer()?;
            while let Some(chunk) = rx.blocking_recv() {
                w.write(&chunk)?;
            }
            Ok::<_, SlaveError>(w)
        });
        let mut received = 0u64;
        let mut failure = None;
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(chunk) => {
                    received += chunk.len() as u64;
                    if received > limit {
                        failure = Some(SlaveError::TooLarge(limit));
                        break;
                    }
                    if tx.send(chunk).await.is_err() {
                        break; // the writer failed; its error is reported below
                    }
                }
                Err(e) => {
                    failure = Some(SlaveError::Transfer(e.to_string()));
                    break;
                }
            }
        }
        drop(tx);
        let written = writer
            .await
            .map_err(|e| SlaveError::Io(format!("writer task: {e}")))?;
        if let Some(f) = failure {
            return Err(f); // the temp file is deleted when `written` drops
        }
        Ok(Spooled(written?))
    }

    /// Publishes a spooled body as one object. Blocking.
    pub fn publish_spooled(&self, spooled: Spooled) -> Result<ObjectId, SlaveError> {
        self.finish(spooled.0, None)
    }

    /// Stores a spooled body as content-defined chunks plus their recipe
    /// (see [`elton_proto::chunking`]); returns the recipe's id. The whole
    /// body is never an object of its own. Blocking.
    ///
    /// Every chunk and the recipe are added to `stored` as they are stored,
    /// also when a later one fails, so a failed upload can undo them.
    pub fn chunk_spooled(
        &self,
        spooled: Spooled,
        stored: &mut Vec<ObjectId>,
    ) -> Result<ObjectId, SlaveError> {
        let tmp = spooled.0.tmp;
        let source = tmp
            .reopen()
            .map_err(|e| io_err("reopening", tmp.path(), e))?;
        let recipe = chunking::chunk(source, |_, id, bytes| {
            self.put_verified(id, bytes).map_err(io::Error::other)?;
            stored.push(id);
            Ok(())
        })
        .map_err(|e| io_err("chunking", tmp.path(), e))?;
        let id = self.put_bytes(&recipe.encode())?;
        stored.push(id);
        Ok(id)
    }

    /// A writer for one object of a batch: its bytes get no fsync of their
    /// own (see [`Self::publish_batch`]).
    pub(crate) fn batch_writer(&self) -> Result<BatchWriter, SlaveError> {
        Ok(BatchWriter(self.writer()?))
    }

    /// Publishes objects written without an fsync each. One `syncfs` makes
    /// all their bytes durable, then each is renamed into place, then a
    /// second `syncfs` makes the renames durable: after a crash at any
    /// point every object in `objects/` is complete, as with
    /// [`crate::durable::publish`], at the cost of two flushes per batch
    /// instead of two per object. Returns the ids this call added (the
    /// others were already stored). Blocking.
    pub fn publish_batch(&self, staged: Vec<Staged>) -> Result<Vec<ObjectId>, SlaveError> {
        let mut added = Vec::new();
        self.publish_batch_into(staged, &mut added)?;
        Ok(added)
    }

    /// [`Self::publish_batch`], pushing each id it adds to `added` as soon
    /// as it is in place, so a caller can undo a batch that failed halfway.
    pub fn publish_batch_into(
        &self,
        staged: Vec<Staged>,
        added: &mut Vec<ObjectId>,
    ) -> Result<(), SlaveError> {
        if staged.is_empty() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let count = staged.len();
        let tmp_dir = File::open(&self.tmp).map_err(|e| io_err("opening", &self.tmp, e))?;
        rustix::fs::syncfs(&tmp_dir).map_err(|e| io_err("syncfs", &self.tmp, e.into()))?;
        let synced = started.elapsed();
        for Staged { id, tmp, written } in staged {
            if self.note_used(&id) {
                continue; // dropping `tmp` deletes the duplicate
            }
            let dest = self.path(&id);
            let shard = dest.parent().unwrap_or(&self.objects);
            self.ensure_shard(shard)?;
            let tmp_path = tmp.keep().map_err(|e| SlaveError::Io(e.to_string()))?;
            if let Err(e) = fs::rename(&tmp_path, &dest) {
                let _ = fs::remove_file(&tmp_path);
                return Err(io_err("publishing", &dest, e));
            }
            added.push(id);
            // Bytes linked in from elsewhere are re-hashed on their first
            // read.
            if written && let Ok(meta) = fs::metadata(&dest) {
                self.verified().insert(id, Stamp::of(&meta));
            }
        }
        let renamed = started.elapsed();
        let objects = File::open(&self.objects).map_err(|e| io_err("opening", &self.objects, e))?;
        rustix::fs::syncfs(&objects).map_err(|e| io_err("syncfs", &self.objects, e.into()))?;
        tracing::debug!(
            objects = count,
            bytes_synced_ms = synced.as_millis() as u64,
            renamed_ms = renamed.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "published a batch"
        );
        Ok(())
    }

    /// The directory of the store's temp files (same filesystem as
    /// `objects/`, so a temp file can be renamed into place).
    pub fn tmp_dir(&self) -> &Path {
        &self.tmp
    }

    /// Every object id present (for re-announcing to the master). Blocking.
    pub fn list(&self) -> Result<Vec<ObjectId>, SlaveError> {
        let mut out = Vec::new();
        for shard in 0..=255u8 {
            out.extend(self.list_shard(shard)?);
        }
        Ok(out)
    }

    /// Counts what the store holds, incrementally (see
    /// [`crate::usage`]), for the master's `elton node ls`.
    pub fn usage_counter(&self) -> crate::usage::UsageCounter {
        crate::usage::UsageCounter::new(&self.objects)
    }

    /// The ids stored in one shard directory (`objects/<shard as hex>/`).
    /// Blocking.
    pub fn list_shard(&self, shard: u8) -> Result<Vec<ObjectId>, SlaveError> {
        let prefix = format!("{shard:02x}");
        let dir = self.objects.join(&prefix);
        let files = match fs::read_dir(&dir) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("listing", &dir, e)),
        };
        Ok(files
            .flatten()
            .filter_map(|f| {
                format!("{prefix}{}", f.file_name().to_string_lossy())
                    .parse()
                    .ok()
            })
            .collect())
    }
}

/// A complete body in a temp file of the store, hashed, not yet published.
pub struct Spooled(ObjectWriter);

impl Spooled {
    pub fn size(&self) -> u64 {
        self.0.size
    }
}

struct ObjectWriter {
    tmp: tempfile::NamedTempFile,
    hasher: blake3::Hasher,
    size: u64,
}

impl ObjectWriter {
    fn write(&mut self, chunk: &[u8]) -> Result<(), SlaveError> {
        self.hasher.update(chunk);
        self.size += chunk.len() as u64;
        self.tmp
            .write_all(chunk)
            .map_err(|e| io_err("writing", self.tmp.path(), e))
    }
}

/// One object of a batch being written: hashed as its bytes arrive, not
/// fsynced.
pub(crate) struct BatchWriter(ObjectWriter);

impl BatchWriter {
    pub(crate) fn write(&mut self, chunk: &[u8]) -> Result<(), SlaveError> {
        self.0.write(chunk)
    }

    /// The complete object, if its bytes hash to `expected`.
    pub(crate) fn finish(self, expected: ObjectId) -> Result<Staged, SlaveError> {
        let actual = ObjectId::from_hash(self.0.hasher.finalize());
        if actual != expected {
            return Err(SlaveError::HashMismatch { expected, actual });
        }
        Ok(Staged {
            id: actual,
            tmp: self.0.tmp.into_temp_path(),
            written: true,
        })
    }

    /// The complete object, under the id its bytes hash to.
    pub(crate) fn finish_any(self) -> Staged {
        Staged {
            id: ObjectId::from_hash(self.0.hasher.finalize()),
            tmp: self.0.tmp.into_temp_path(),
            written: true,
        }
    }

    /// Bytes written so far.
    pub(crate) fn size(&self) -> u64 {
        self.0.size
    }
}

/// A verified object in a temp file, waiting for
/// [`ObjectStore::publish_batch`]; deleted if dropped unpublished. It holds
/// no open file, so a batch of thousands costs no descriptors.
pub struct Staged {
    id: ObjectId,
    tmp: tempfile::TempPath,
    /// The store wrote (and hashed) these bytes itself; false for a file
    /// hard-linked in, which another path still reaches.
    written: bool,
}

impl Staged {
    /// A temp file of the store holding bytes that hash to `id`, linked
    /// from a file elsewhere (see [`crate::staging`]).
    pub(crate) fn linked(id: ObjectId, tmp: tempfile::TempPath) -> Self {
        Self {
            id,
            tmp,
            written: false,
        }
    }

    pub fn id(&self) -> ObjectId {
        self.id
    }
}

/// Which objects [`ObjectStore::remove_unused`] may remove, by arrival.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrived {
    /// Arrived before the given time (garbage collection).
    Before,
    /// Arrived at or after it (undoing a failed write).
    Since,
}

/// When a store file arrived: the later of its ctime (set by the link or
/// rename that put it in place) and its mtime.
pub fn arrival(meta: &fs::Metadata) -> SystemTime {
    let at = |secs: i64, nanos: i64| {
        UNIX_EPOCH
            + std::time::Duration::from_secs(secs.max(0) as u64)
            + std::time::Duration::from_nanos(nanos.max(0) as u64)
    };
    at(meta.ctime(), meta.ctime_nsec()).max(at(meta.mtime(), meta.mtime_nsec()))
}

/// Now, on the clock the kernel stamps files with: `CLOCK_REALTIME_COARSE`,
/// the time of the last timer tick, up to one tick (4 ms at `HZ=250`)
/// behind [`SystemTime::now`]. A write that must later tell the files it
/// stored from older ones by [`arrival`] takes its start from this clock:
/// with `SystemTime::now()` a file it stored within the same tick is
/// stamped *before* the start, passes for one that was there already, and
/// a failed upload's undo kept it (`tests/tests/trust_gc.rs` phase 1 found
/// a 1.4 MB chunk left behind once the upload got fast enough).
pub fn file_clock_now() -> SystemTime {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
    UNIX_EPOCH
        + std::time::Duration::from_secs(t.tv_sec.max(0) as u64)
        + std::time::Duration::from_nanos(t.tv_nsec.max(0) as u64)
}

pub(crate) fn hash_reader(r: &mut impl Read) -> io::Result<ObjectId> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(ObjectId::from_hash(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: &[&'static [u8]]) -> impl Stream<Item = Result<Bytes, String>> + Unpin {
        futures::stream::iter(
            parts
                .iter()
                .map(|p| Ok(Bytes::from_static(p)))
                .collect::<Vec<_>>(),
        )
    }

    #[tokio::test]
    async fn ingest_verifies_and_publishes_only_complete_objects() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::open(dir.path()).unwrap();
        let good = ObjectId::of(b"hello world");
        let (id, size) = store
            .ingest(chunks(&[b"hello ", b"world"]), Some(good), 100)
            .await
            .unwrap();
        assert_eq!((id, size), (good, 11));
        assert_eq!(store.read(&good).unwrap().unwrap(), b"hello world");

        let other = ObjectId::of(b"other");
        let err = store
            .ingest(chunks(&[b"not other"]), Some(other), 100)
            .await
            .unwrap_err();
        assert!(matches!(err, SlaveError::HashMismatch { .. }));
        assert!(!store.contains(&other));
        let err = store
            .ingest(chunks(&[b"0123456789"]), None, 5)
            .await
            .unwrap_err();
        assert!(matches!(err, SlaveError::TooLarge(5)));
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        assert_eq!(store.list().unwrap(), vec![good]);
    }

    #[test]
    fn shards_exist_from_the_start_and_verified_bytes_publish_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::open(dir.path()).unwrap();
        let shards = fs::read_dir(dir.path().join("objects")).unwrap().count();
        assert_eq!(shards, 256);
        // Re-opening an existing store keeps them (and creates nothing).
        drop(store);
        let store = ObjectStore::open(dir.path()).unwrap();

        let id = ObjectId::of(b"chunk bytes");
        store.put_verified(id, b"chunk bytes").unwrap();
        assert_eq!(store.read(&id).unwrap().unwrap(), b"chunk bytes");
        // Content addressing: a second store of the same id is a no-op.
        store.put_verified(id, b"chunk bytes").unwrap();
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn corrupted_object_is_detected_and_quarantined() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::open(dir.path()).unwrap();
        let id = store.put_bytes(b"precious").unwrap();
        fs::write(store.path(&id), b"precioux").unwrap();
        assert!(matches!(
            store.open_verified(&id),
            Err(SlaveError::Corrupt(_))
        ));
        assert!(!store.contains(&id));
        assert!(store.open_verified(&id).unwrap().is_none());
    }
}
