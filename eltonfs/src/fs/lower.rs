//! The lower layer's source: directory manifests and file objects, taken
//! from the local slave's store and fetched through the slave on a miss.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use elton_proto::listing::{LoadedDir, Strictness, load_dir};
use elton_proto::paged::DirIndex;
use elton_proto::{DirManifest, ObjectId, ProtoError, Recipe};
use elton_slave::ObjectStore;

use super::stamp::FileStamp;

/// Where lower data comes from; a trait so the overlay logic can be tested
/// without servers.
pub trait LowerSource: Send + Sync {
    /// A directory's whole listing, assembled from its pages when it is
    /// stored as an index.
    fn manifest(&self, id: &ObjectId) -> io::Result<Arc<DirManifest>>;
    /// The index a directory's listing was assembled from, if it is paged
    /// (a commit re-cuts only the pages its changes fall in). The default
    /// is for sources that hold whole manifests only.
    fn index(&self, id: &ObjectId) -> io::Result<Option<Arc<DirIndex>>> {
        let _ = id;
        Ok(None)
    }
    /// A local, verified file holding the object's bytes.
    fn object_path(&self, id: &ObjectId) -> io::Result<PathBuf>;
    /// A chunked file's recipe, verified and decoded (sizes add up).
    fn recipe(&self, id: &ObjectId) -> io::Result<Arc<Recipe>>;
    /// Whether the object is local already; never fetches.
    fn is_local(&self, id: &ObjectId) -> bool;
}

/// Reads the local slave's store. Small objects (manifests, recipes) are
/// read whole and hashed as they are read; the slave is asked only for one
/// that is missing or corrupt. For a file's object, which the kernel reads
/// in place, the mount asks the slave (`HEAD /v1/objects/{id}`, which
/// fetches and verifies on a miss) before first use, and again whenever the
/// store's file is no longer the one the slave verified then (another
/// inode, size, mtime or ctime: rewritten, quarantined by a scrub,
/// repaired), so the slave hashes it again before the mount uses it.
pub struct SlaveLower {
    slave_url: String,
    store: Arc<ObjectStore>,
    http: reqwest::blocking::Client,
    /// Objects the slave verified for us, with their file as it was then.
    ensured: Mutex<HashMap<ObjectId, FileStamp>>,
    manifests: Mutex<HashMap<ObjectId, Arc<DirManifest>>>,
    /// The indexes of the paged directories among `manifests`.
    indexes: Mutex<HashMap<ObjectId, Arc<DirIndex>>>,
    recipes: Mutex<HashMap<ObjectId, Arc<Recipe>>>,
}

/// Reading a directory failed: a read (its error as is), or bytes that do
/// not decode or assemble (EIO, logged).
enum LoadError {
    Read(io::Error),
    Corrupt(ProtoError),
}

impl From<ProtoError> for LoadError {
    fn from(e: ProtoError) -> Self {
        Self::Corrupt(e)
    }
}

impl From<io::Error> for LoadError {
    fn from(e: io::Error) -> Self {
        Self::Read(e)
    }
}

/// Most pages of one directory read at once: a cold listing across a WAN
/// waits about one round trip for its pages, not one per page.
const PARALLEL_PAGES: usize = 16;

fn other(msg: String) -> io::Error {
    io::Error::other(msg)
}

impl SlaveLower {
    pub fn new(slave_url: &str, store: Arc<ObjectStore>) -> io::Result<Self> {
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(3600))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| other(format!("HTTP client: {e}")))?;
        Ok(Self {
            slave_url: slave_url.trim_end_matches('/').to_string(),
            store,
            http,
            ensured: Mutex::new(HashMap::new()),
            manifests: Mutex::new(HashMap::new()),
            indexes: Mutex::new(HashMap::new()),
            recipes: Mutex::new(HashMap::new()),
        })
    }

    pub fn store(&self) -> &Arc<ObjectStore> {
        &self.store
    }

    /// An object's bytes, fetched if needed and verified as read.
    fn read_small(&self, id: &ObjectId) -> io::Result<Vec<u8>> {
        // A small object is hashed as it is read, so a local copy that
        // matches needs no round trip to the slave (a cold listing paid one
        // per directory).
        if let Ok(bytes) = std::fs::read(self.store.path(id))
            && ObjectId::of(&bytes) == *id
        {
            return Ok(bytes);
        }
        // Missing or bad here: the slave's copy (it fetches a miss, and may
        // serve a hot object from memory while the file on disk is bad,
        // which its scrub repairs), hashed again before use.
        let bytes = self
            .ask_slave(reqwest::Method::GET, id)?
            .bytes()
            .map_err(|e| other(format!("slave: object {id}: {e}")))?;
        if ObjectId::of(&bytes) != *id {
            tracing::error!(object = %id, "the slave sent other bytes");
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(bytes.to_vec())
    }

    /// A directory of the published version this mount shows, from its
    /// manifest's bytes and, if it is paged, its pages (read in parallel).
    /// `read_small` verified each against its id.
    fn load_dir(&self, id: &ObjectId) -> io::Result<LoadedDir> {
        let bytes = self.read_small(id)?;
        load_dir(&bytes, Strictness::Published, |ids| self.read_pages(&ids)).map_err(|e| match e {
            LoadError::Read(e) => e,
            LoadError::Corrupt(e) => {
                tracing::error!(manifest = %id, "{e}");
                io::Error::from_raw_os_error(libc::EIO)
            }
        })
    }

    /// A paged directory's pages, in order.
    fn read_pages(&self, ids: &[ObjectId]) -> Result<Vec<Vec<u8>>, LoadError> {
        // Local pages cost a file read each; threads would cost more.
        if ids.iter().all(|p| self.store.contains(p)) {
            return Ok(ids
                .iter()
                .map(|p| self.read_small(p))
                .collect::<io::Result<_>>()?);
        }
        let mut pages = Vec::with_capacity(ids.len());
        for batch in ids.chunks(PARALLEL_PAGES) {
            for page in self.read_in_parallel(batch) {
                pages.push(page?);
            }
        }
        Ok(pages)
    }

    fn read_in_parallel(&self, ids: &[ObjectId]) -> Vec<io::Result<Vec<u8>>> {
        std::thread::scope(|s| {
            let handles: Vec<_> = ids
                .iter()
                .map(|page| s.spawn(move || self.read_small(page)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(other("a page reader panicked".into())))
                })
                .collect()
        })
    }

    /// `GET` or `HEAD /v1/objects/{id}` on the slave, which fetches a miss
    /// and verifies what it serves; EIO unless it answers with success.
    fn ask_slave(
        &self,
        method: reqwest::Method,
        id: &ObjectId,
    ) -> io::Result<reqwest::blocking::Response> {
        let url = format!("{}/v1/objects/{id}", self.slave_url);
        let resp = self
            .http
            .request(method, &url)
            .send()
            .map_err(|e| other(format!("slave {url}: {e}")))?;
        if !resp.status().is_success() {
            tracing::warn!(object = %id, status = %resp.status(), "lower object unavailable");
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(resp)
    }

    fn ensure_local(&self, id: &ObjectId) -> io::Result<()> {
        let path = self.store.path(id);
        let current = FileStamp::of_path(&path);
        let known = self
            .ensured
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .copied();
        if current.is_some() && known == current {
            return Ok(());
        }
        self.ask_slave(reqwest::Method::HEAD, id)?;
        let mut ensured = self.ensured.lock().unwrap_or_else(|p| p.into_inner());
        match FileStamp::of_path(&path) {
            Some(stamp) => {
                ensured.insert(*id, stamp);
                Ok(())
            }
            None => {
                // Gone again right after the slave verified it (a commit's
                // undo or a scrub); the caller's next attempt asks again.
                ensured.remove(id);
                Err(io::Error::from_raw_os_error(libc::EIO))
            }
        }
    }
}

impl LowerSource for SlaveLower {
    fn manifest(&self, id: &ObjectId) -> io::Result<Arc<DirManifest>> {
        if let Some(m) = self
            .manifests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
        {
            return Ok(m.clone());
        }
        let loaded = self.load_dir(id)?;
        let m = Arc::new(loaded.manifest);
        if let Some(index) = loaded.index {
            self.indexes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(*id, Arc::new(index));
        }
        self.manifests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(*id, m.clone());
        Ok(m)
    }

    fn index(&self, id: &ObjectId) -> io::Result<Option<Arc<DirIndex>>> {
        // Read (and kept) together with the listing.
        self.manifest(id)?;
        Ok(self
            .indexes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned())
    }

    fn object_path(&self, id: &ObjectId) -> io::Result<PathBuf> {
        self.ensure_local(id)?;
        Ok(self.store.path(id))
    }

    fn recipe(&self, id: &ObjectId) -> io::Result<Arc<Recipe>> {
        if let Some(r) = self
            .recipes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
        {
            return Ok(r.clone());
        }
        let bytes = self.read_small(id)?;
        let r = Arc::new(Recipe::decode(&bytes).map_err(|e| {
            tracing::error!(recipe = %id, "{e}");
            io::Error::from_raw_os_error(libc::EIO)
        })?);
        self.recipes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(*id, r.clone());
        Ok(r)
    }

    fn is_local(&self, id: &ObjectId) -> bool {
        self.store.contains(id)
    }
}
