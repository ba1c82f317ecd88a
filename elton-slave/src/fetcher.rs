//! Getting objects into the local store: a miss is fetched through the
//! master from whichever node holds the object, verified, stored and
//! announced. Concurrent misses for one object share one transfer.
//!
//! A chunk of a chunked file is small enough to verify in memory, so a
//! fetched chunk is handed to its reader as soon as it is verified, and
//! stored and announced in the background ([`Fetcher::read_range`]): a cold
//! read waits for the network, not for fsyncs and the master.

use std::fs::File;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use elton_proto::pb::FetchObjectRequest;
use elton_proto::{ObjectId, VolumeName};
use futures::{Stream, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::SlaveError;
use crate::hot::HotCache;
use crate::master_link::MasterLink;
use crate::metrics::{Metrics, inc};
use crate::read_ahead::ReadAheadPool;
use crate::store::ObjectStore;
use crate::turns::{Turn, Turns};

/// Memory for small hot objects (see [`crate::hot`]).
const HOT_BYTES: usize = 64 << 20;

/// Largest object [`Fetcher::read_range`] verifies in memory: the largest
/// chunk a recipe may list.
pub const IN_MEMORY_MAX: u64 = elton_proto::recipe::MAX_CHUNK_BYTES;

/// Attempts to announce a chunk stored in the background, and the pause
/// before the first retry (doubled each time): a master that stays down
/// longer learns the chunk when this slave registers again.
const ANNOUNCE_ATTEMPTS: u32 = 5;
const ANNOUNCE_RETRY: Duration = Duration::from_millis(500);

/// Fetched chunks being stored in the background at once; more wait, which
/// bounds their memory (and slows a reader down to the disk's pace).
const BACKGROUND_STORES: usize = 32;

/// Tells the master this node's copy of `id` is gone (quarantined), so
/// fetches stop trying it and the planner stops counting it.
async fn withdraw(link: &MasterLink, id: ObjectId) {
    if let Err(e) = link.withdraw(&[id]).await {
        tracing::warn!(object = %id, "withdrawing a quarantined copy from the master: {e}");
    }
}

/// Bytes of an object that passed the network and came out of its hash.
type VerifiedBytes = Bytes;

/// Objects at most this large are read without the blocking pool when
/// stored here (a page-cache read of a manifest page takes microseconds).
const INLINE_READ_BYTES: u64 = 256 << 10;

/// How a miss of [`Fetcher::read_range`] ended, when it did not fail.
enum Miss {
    /// Another request of this slave stored the object while this one waited.
    StoredMeanwhile((File, u64)),
    /// Fetched and verified here, with the range asked for; the permit
    /// bounds its background store.
    Fetched(VerifiedBytes, Range<usize>, OwnedSemaphorePermit),
}

pub struct Fetcher {
    store: Arc<ObjectStore>,
    hot: HotCache,
    link: MasterLink,
    metrics: Arc<Metrics>,
    turns: Turns,
    background: Arc<Semaphore>,
    read_ahead: ReadAheadPool,
}

impl Fetcher {
    pub fn new(store: Arc<ObjectStore>, link: MasterLink, metrics: Arc<Metrics>) -> Self {
        Self {
            store,
            hot: HotCache::new(HOT_BYTES),
            link,
            metrics,
            turns: Turns::default(),
            background: Arc::new(Semaphore::new(BACKGROUND_STORES)),
            read_ahead: ReadAheadPool::default(),
        }
    }

    /// The slave's counters, shared with its HTTP service.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn store(&self) -> &Arc<ObjectStore> {
        &self.store
    }

    /// The slave-wide allowance of chunked responses' read-ahead.
    pub fn read_ahead_pool(&self) -> &ReadAheadPool {
        &self.read_ahead
    }

    /// A small object from memory, if it is there.
    pub fn hot(&self, id: &ObjectId) -> Option<Bytes> {
        let hit = self.hot.get(id);
        if hit.is_some() {
            inc(&self.metrics.cache_hits_total, 1);
        }
        hit
    }

    /// Remembers a small object's bytes after checking they hash to `id`;
    /// on a mismatch (the file changed since it was verified) the object is
    /// quarantined and the bytes must not be served.
    pub fn remember(&self, id: ObjectId, bytes: &Bytes) -> Result<(), SlaveError> {
        if ObjectId::of(bytes) != id {
            self.hot.remove(&id);
            self.store.quarantine(&id);
            inc(&self.metrics.corrupt_objects_total, 1);
            return Err(SlaveError::Corrupt(id));
        }
        self.hot.insert(id, bytes.clone());
        Ok(())
    }

    /// Takes an object a master sent unasked (see [`crate::along_path`]),
    /// whose bytes the caller has hashed to `id`: unless it is stored here
    /// already, it is stored and announced in the background like a
    /// fetched chunk. A read of it meanwhile waits for that store (its turn
    /// is taken before this returns) instead of fetching it again. Never
    /// waits: if a fetch of it is under way, or the background stores are
    /// all busy, the object is left to that fetch or to the reader.
    pub fn adopt(self: &Arc<Self>, id: ObjectId, bytes: Bytes) {
        if self.store.contains(&id) {
            return;
        }
        let Some(turn) = self.turns.try_take(id) else {
            return;
        };
        let Ok(permit) = self.background.clone().try_acquire_owned() else {
            return;
        };
        inc(&self.metrics.objects_adopted_total, 1);
        tracing::debug!(object = %id, size = bytes.len(), "adopted");
        let this = self.clone();
        tokio::spawn(async move { this.store_fetched(id, bytes, turn, permit).await });
    }

    /// Opens a verified local copy, fetching it first unless `local_only`.
    pub async fn open(&self, id: ObjectId, local_only: bool) -> Result<(File, u64), SlaveError> {
        self.open_for(id, local_only, None).await
    }

    /// As [`Fetcher::open`]; `volume` names the volume read, when known, so
    /// the masters can account cross-cluster traffic to it.
    pub async fn open_for(
        &self,
        id: ObjectId,
        local_only: bool,
        volume: Option<&VolumeName>,
    ) -> Result<(File, u64), SlaveError> {
        if let Some(found) = self.open_local_counted(id, local_only).await? {
            return Ok(found);
        }
        if local_only {
            return Err(SlaveError::NotFound(format!(
                "object {id} is not stored here"
            )));
        }
        inc(&self.metrics.cache_misses_total, 1);
        self.fetch_for(id, volume).await?;
        self.open_local(id)
            .await?
            .ok_or_else(|| SlaveError::Io(format!("object {id} vanished after fetch")))
    }

    async fn open_local(&self, id: ObjectId) -> Result<Option<(File, u64)>, SlaveError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.open_verified(&id))
            .await
            .map_err(|e| SlaveError::Io(format!("store task: {e}")))?
    }

    /// Reads a whole small object (a manifest), fetching it if needed.
    pub async fn read(&self, id: ObjectId) -> Result<Vec<u8>, SlaveError> {
        // A small local copy is read and hashed in place, in one pass: two
        // trips to the blocking pool cost more than the read (a commit's
        // check reads hundreds of manifests). Anything else, a corrupt copy
        // included, takes the path below, which reports and fetches it.
        let path = self.store.path(&id);
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.len() <= INLINE_READ_BYTES) {
            match self.store.read(&id) {
                Ok(Some(bytes)) => {
                    inc(&self.metrics.cache_hits_total, 1);
                    return Ok(bytes);
                }
                // Quarantined by the read: withdrawn before the fetch
                // below, whose announcement must come last.
                Err(SlaveError::Corrupt(_)) => {
                    inc(&self.metrics.corrupt_objects_total, 1);
                    withdraw(&self.link, id).await;
                }
                Ok(None) | Err(_) => {}
            }
        }
        let (file, size) = self.open(id, false).await?;
        let bytes = tokio::task::spawn_blocking(move || {
            let mut buf = Vec::with_capacity(size as usize);
            std::io::Read::read_to_end(&mut &file, &mut buf).map(|_| buf)
        })
        .await
        .map_err(|e| SlaveError::Io(format!("read task: {e}")))?
        .map_err(|e| SlaveError::Io(format!("reading object {id}: {e}")))?;
        if ObjectId::of(&bytes) != id {
            self.store.quarantine(&id);
            return Err(SlaveError::Corrupt(id));
        }
        Ok(bytes)
    }

    /// Makes sure a verified copy of `id` is stored here, fetching it if it
    /// is missing or its local copy turns out corrupt (quarantined). True
    /// when it was fetched (and therefore announced); false when a good copy
    /// was already here. Not counted as a read in the cache metrics.
    pub async fn ensure(&self, id: ObjectId) -> Result<bool, SlaveError> {
        match self.open_local(id).await {
            Ok(Some(_)) => return Ok(false),
            Ok(None) => {}
            Err(SlaveError::Corrupt(_)) => {
                inc(&self.metrics.corrupt_objects_total, 1);
                withdraw(&self.link, id).await;
            }
            Err(e) => return Err(e),
        }
        self.fetch(id).await?;
        Ok(true)
    }

    /// Fetches `id` through the master unless it is (or becomes) local.
    pub async fn fetch(&self, id: ObjectId) -> Result<(), SlaveError> {
        self.fetch_for(id, None).await
    }

    /// Bytes `start..start + len` of a small object (at most
    /// [`IN_MEMORY_MAX`]), and the object's size. A local copy is read in
    /// place; a missing one is fetched into memory, verified, returned, and
    /// stored and announced in the background (concurrent readers of the same
    /// object wait for that and then read the stored copy).
    pub async fn read_range(
        self: &Arc<Self>,
        id: ObjectId,
        start: u64,
        len: u64,
        volume: Option<&VolumeName>,
    ) -> Result<(Bytes, u64), SlaveError> {
        if let Some(found) = self.open_local_counted(id, false).await? {
            return read_at(id, found, start, len).await;
        }
        inc(&self.metrics.cache_misses_total, 1);
        let turn = self.turns.take(id).await;
        let fetched = async {
            if let Some(found) = self.open_local(id).await? {
                return Ok(Miss::StoredMeanwhile(found));
            }
            let bytes = self.receive_in_memory(id, volume).await?;
            let range = range_in(id, bytes.len() as u64, start, len)?;
            let permit = self
                .background
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| SlaveError::Io("background stores closed".into()))?;
            Ok(Miss::Fetched(bytes, range, permit))
        }
        .await;
        match fetched {
            Ok(Miss::Fetched(bytes, range, permit)) => {
                let this = self.clone();
                let kept = bytes.clone();
                tokio::spawn(async move { this.store_fetched(id, kept, turn, permit).await });
                let size = bytes.len() as u64;
                Ok((bytes.slice(range), size))
            }
            Ok(Miss::StoredMeanwhile(found)) => {
                drop(turn);
                read_at(id, found, start, len).await
            }
            Err(e) => Err(e),
        }
    }

    /// A verified local copy, counting a hit; a quarantined copy counts as
    /// corrupt and, unless `local_only`, as absent (a good copy may still
    /// exist elsewhere).
    async fn open_local_counted(
        &self,
        id: ObjectId,
        local_only: bool,
    ) -> Result<Option<(File, u64)>, SlaveError> {
        match self.open_local(id).await {
            Ok(Some(found)) => {
                inc(&self.metrics.cache_hits_total, 1);
                Ok(Some(found))
            }
            Ok(None) => Ok(None),
            Err(e @ SlaveError::Corrupt(_)) => {
                inc(&self.metrics.corrupt_objects_total, 1);
                if local_only {
                    // Answer the master's read at once; nothing here
                    // re-fetches the object, so the order does not matter.
                    let link = self.link.clone();
                    tokio::spawn(async move { withdraw(&link, id).await });
                    Err(e)
                } else {
                    // Before the fetch, whose announcement must come last.
                    withdraw(&self.link, id).await;
                    Ok(None)
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Writes a chunk fetched by [`Fetcher::read_range`] (or an object
    /// taken by [`Fetcher::adopt`]) to the store, lets waiting readers of
    /// it go, then announces it.
    async fn store_fetched(
        &self,
        id: ObjectId,
        bytes: VerifiedBytes,
        turn: Turn,
        permit: OwnedSemaphorePermit,
    ) {
        let store = self.store.clone();
        let stored = tokio::task::spawn_blocking(move || store.put_verified(id, &bytes))
            .await
            .map_err(|e| SlaveError::Io(format!("store task: {e}")))
            .and_then(|r| r);
        drop((turn, permit));
        if let Err(e) = stored {
            // The reader has its verified bytes; the next reader fetches again.
            tracing::warn!(object = %id, "fetched chunk not kept: {e}");
            return;
        }
        let mut pause = ANNOUNCE_RETRY;
        for attempt in 1..=ANNOUNCE_ATTEMPTS {
            match self.link.announce(vec![id]).await {
                Ok(()) => return,
                Err(e) if attempt == ANNOUNCE_ATTEMPTS => {
                    tracing::warn!(object = %id, "stored chunk not announced (the master learns it when this slave registers again): {e}");
                }
                Err(_) => {
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
            }
        }
    }

    async fn fetch_for(&self, id: ObjectId, volume: Option<&VolumeName>) -> Result<(), SlaveError> {
        let _turn = self.turns.take(id).await;
        if self.store.contains(&id) {
            return Ok(()); // another request fetched it while we waited
        }
        self.transfer(id, volume).await
    }

    /// Asks the master for `id`'s bytes.
    async fn request(
        &self,
        id: ObjectId,
        volume: Option<&VolumeName>,
    ) -> Result<
        (
            Option<u64>,
            impl Stream<Item = Result<Bytes, String>> + Unpin + use<>,
        ),
        SlaveError,
    > {
        let req = FetchObjectRequest {
            object: id.as_bytes().to_vec(),
            exclude_node: self.link.node_id().to_string(),
            volume: volume.map(|v| v.to_string()).unwrap_or_default(),
        };
        let (size, stream) = match self.link.transfer_client().fetch_object(req).await {
            Ok(r) => (elton_proto::announced_size(r.metadata()), r.into_inner()),
            Err(s) if s.code() == tonic::Code::NotFound => {
                return Err(SlaveError::NotFound(s.message().into()));
            }
            // Whatever failed on the way (master, holders), this is a gateway error.
            Err(s) => return Err(SlaveError::Transfer(s.message().into())),
        };
        Ok((
            size,
            stream.map(|r| r.map(|c| c.data).map_err(|s| s.message().to_string())),
        ))
    }

    /// Fetches a small object into memory and verifies it.
    async fn receive_in_memory(
        &self,
        id: ObjectId,
        volume: Option<&VolumeName>,
    ) -> Result<VerifiedBytes, SlaveError> {
        let (announced, mut body) = self.request(id, volume).await?;
        // The announced size sizes the buffer and bounds what is received;
        // the hash below decides what is kept.
        if let Some(n) = announced.filter(|&n| n > IN_MEMORY_MAX) {
            return Err(SlaveError::Transfer(format!(
                "object {id} is {n} bytes, larger than any chunk ({IN_MEMORY_MAX})"
            )));
        }
        let limit = announced.unwrap_or(IN_MEMORY_MAX);
        let expected = announced.unwrap_or(elton_proto::chunking::MAX_CHUNK as u64);
        let mut buf = BytesMut::with_capacity(expected as usize);
        while let Some(part) = body.next().await {
            let part = part.map_err(SlaveError::Transfer)?;
            if (buf.len() + part.len()) as u64 > limit {
                return Err(SlaveError::Transfer(format!(
                    "object {id}: more than {limit} bytes (the announced size, or the largest chunk)"
                )));
            }
            buf.extend_from_slice(&part);
        }
        let bytes = buf.freeze();
        let hashed = bytes.clone();
        let actual = tokio::task::spawn_blocking(move || ObjectId::of(&hashed))
            .await
            .map_err(|e| SlaveError::Io(format!("hash task: {e}")))?;
        if actual != id {
            // Bad bytes from the network are a failed transfer, not bad input.
            return Err(SlaveError::Transfer(
                SlaveError::HashMismatch {
                    expected: id,
                    actual,
                }
                .to_string(),
            ));
        }
        inc(&self.metrics.objects_fetched_total, 1);
        inc(&self.metrics.fetched_bytes_total, bytes.len() as u64);
        tracing::debug!(object = %id, size = bytes.len(), "fetched into memory");
        Ok(bytes)
    }

    async fn transfer(&self, id: ObjectId, volume: Option<&VolumeName>) -> Result<(), SlaveError> {
        let (announced, body) = self.request(id, volume).await?;
        // The announced size bounds what is written (a holder or peer that
        // sends more is cut off); the hash decides what is kept.
        let limit = announced.unwrap_or(u64::MAX);
        let (_, size) = match self.store.ingest(body, Some(id), limit).await {
            Ok(done) => done,
            Err(SlaveError::TooLarge(n)) => {
                return Err(SlaveError::Transfer(format!(
                    "object {id}: more than the {n} bytes announced"
                )));
            }
            // Bad bytes from the network are a failed transfer, not bad input.
            Err(e @ SlaveError::HashMismatch { .. }) => {
                return Err(SlaveError::Transfer(e.to_string()));
            }
            Err(e) => return Err(e),
        };
        inc(&self.metrics.objects_fetched_total, 1);
        inc(&self.metrics.fetched_bytes_total, size);
        tracing::debug!(object = %id, size, "fetched");
        self.link.announce(vec![id]).await
    }
}

/// `start..start + len` as a range inside an object of `size` bytes.
fn range_in(id: ObjectId, size: u64, start: u64, len: u64) -> Result<Range<usize>, SlaveError> {
    match start.checked_add(len) {
        // Both fit in usize: they are at most `size`, which is in memory
        // or at most a chunk's size.
        Some(end) if end <= size => Ok(start as usize..end as usize),
        _ => Err(SlaveError::BadRequest(format!(
            "object {id} is {size} bytes: no bytes {start}..{start}+{len}"
        ))),
    }
}

/// `len` bytes of `file` from `start`, read into memory that is not
/// zeroed first. A zeroed buffer of a chunk's size (`vec![0; len]`) made
/// jemalloc hand back freshly zeroed pages, so every page a read filled
/// was a page fault and a kernel page clear: a third of a slave's CPU
/// serving a large file (`docs/benchmarks.md`, HTTP reads). `read_to_end`
/// on a `File` reads straight into the vector's spare capacity. A file
/// that ends before `start + len` is an error, never a short buffer.
pub(crate) fn read_exact_at(file: &File, start: u64, len: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let want = usize::try_from(len)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "range too large"))?;
    let mut buf = Vec::with_capacity(want);
    let mut f = file;
    f.seek(SeekFrom::Start(start))?;
    f.take(len).read_to_end(&mut buf)?;
    if buf.len() != want {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("{} of {want} bytes at offset {start}", buf.len()),
        ));
    }
    Ok(buf)
}

/// Reads `start..start + len` of a verified local copy.
async fn read_at(
    id: ObjectId,
    (file, size): (File, u64),
    start: u64,
    len: u64,
) -> Result<(Bytes, u64), SlaveError> {
    range_in(id, size, start, len)?;
    tokio::task::spawn_blocking(move || {
        Ok::<_, std::io::Error>((Bytes::from(read_exact_at(&file, start, len)?), size))
    })
    .await
    .map_err(|e| SlaveError::Io(format!("read task: {e}")))?
    .map_err(|e| SlaveError::Io(format!("reading object {id}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_is_read_whole_or_not_at_all() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("object");
        let bytes: Vec<u8> = (0..3 * 1024 * 1024 + 7).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).expect("write");
        let file = File::open(&path).expect("open");
        for (start, len) in [(0, bytes.len()), (5, 1), (1 << 20, 2 << 20), (0, 0)] {
            let got = read_exact_at(&file, start as u64, len as u64).expect("read");
            assert_eq!(got, bytes[start..start + len], "{start}+{len}");
        }
        // Past the end: an error, never a short buffer.
        let err = read_exact_at(&file, bytes.len() as u64 - 3, 10).expect_err("short");
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    }
}
