//! The lower layer's source: directory manifests and file objects, taken
//! from the local slave's store and fetched through the slave on a miss.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use elton_proto::{DirManifest, ObjectId};
use elton_slave::ObjectStore;

/// Where lower data comes from; a trait so the overlay logic can be tested
/// without servers.
pub trait LowerSource: Send + Sync {
    fn manifest(&self, id: &ObjectId) -> io::Result<Arc<DirManifest>>;
    /// A local, verified file holding the object's bytes.
    fn object_path(&self, id: &ObjectId) -> io::Result<PathBuf>;
}

/// Reads the local slave's store; asks the slave (`HEAD /v1/objects/{id}`,
/// which fetches and verifies on a miss) before first use of an object.
pub struct SlaveLower {
    slave_url: String,
    store: Arc<ObjectStore>,
    http: reqwest::blocking::Client,
    ensured: Mutex<HashSet<ObjectId>>,
    manifests: Mutex<HashMap<ObjectId, Arc<DirManifest>>>,
}

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
            ensured: Mutex::new(HashSet::new()),
            manifests: Mutex::new(HashMap::new()),
        })
    }

    pub fn store(&self) -> &Arc<ObjectStore> {
        &self.store
    }

    fn ensure_local(&self, id: &ObjectId) -> io::Result<()> {
        if self
            .ensured
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id)
            && self.store.contains(id)
        {
            return Ok(());
        }
        let url = format!("{}/v1/objects/{id}", self.slave_url);
        let resp = self
            .http
            .head(&url)
            .send()
            .map_err(|e| other(format!("slave {url}: {e}")))?;
        if !resp.status().is_success() {
            tracing::warn!(object = %id, status = %resp.status(), "lower object unavailable");
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.ensured
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(*id);
        Ok(())
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
        self.ensure_local(id)?;
        let bytes = self
            .store
            .read(id)
            .map_err(|e| other(e.to_string()))?
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EIO))?;
        let m = Arc::new(DirManifest::decode(&bytes).map_err(|e| {
            tracing::error!(manifest = %id, "{e}");
            io::Error::from_raw_os_error(libc::EIO)
        })?);
        self.manifests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(*id, m.clone());
        Ok(m)
    }

    fn object_path(&self, id: &ObjectId) -> io::Result<PathBuf> {
        self.ensure_local(id)?;
        Ok(self.store.path(id))
    }
}
