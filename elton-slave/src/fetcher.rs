//! Getting objects into the local store: a miss is fetched through the
//! master from whichever node holds the object, verified, stored and
//! announced. Concurrent misses for one object share one transfer.

use std::collections::HashMap;
use std::fs::File;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use elton_proto::pb::FetchObjectRequest;
use elton_proto::{ObjectId, VolumeName};
use futures::StreamExt;

use crate::SlaveError;
use crate::hot::HotCache;
use crate::master_link::MasterLink;
use crate::metrics::{Metrics, inc};
use crate::store::ObjectStore;

/// Memory for small hot objects (see [`crate::hot`]).
const HOT_BYTES: usize = 64 << 20;

pub struct Fetcher {
    store: Arc<ObjectStore>,
    hot: HotCache,
    link: MasterLink,
    metrics: Arc<Metrics>,
    inflight: Mutex<HashMap<ObjectId, Arc<tokio::sync::Mutex<()>>>>,
}

impl Fetcher {
    pub fn new(store: Arc<ObjectStore>, link: MasterLink, metrics: Arc<Metrics>) -> Self {
        Self {
            store,
            hot: HotCache::new(HOT_BYTES),
            link,
            metrics,
            inflight: Mutex::new(HashMap::new()),
        }
    }

    pub fn store(&self) -> &Arc<ObjectStore> {
        &self.store
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
        match self.open_local(id).await {
            Ok(Some(found)) => {
                inc(&self.metrics.cache_hits_total, 1);
                return Ok(found);
            }
            Ok(None) => {}
            // Quarantined: a good copy may still exist elsewhere.
            Err(SlaveError::Corrupt(_)) if !local_only => {
                inc(&self.metrics.corrupt_objects_total, 1);
            }
            Err(e) => {
                if matches!(e, SlaveError::Corrupt(_)) {
                    inc(&self.metrics.corrupt_objects_total, 1);
                }
                return Err(e);
            }
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
            Err(SlaveError::Corrupt(_)) => inc(&self.metrics.corrupt_objects_total, 1),
            Err(e) => return Err(e),
        }
        self.fetch(id).await?;
        Ok(true)
    }

    /// Fetches `id` through the master unless it is (or becomes) local.
    pub async fn fetch(&self, id: ObjectId) -> Result<(), SlaveError> {
        self.fetch_for(id, None).await
    }

    async fn fetch_for(&self, id: ObjectId, volume: Option<&VolumeName>) -> Result<(), SlaveError> {
        let gate = {
            let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(id).or_default().clone()
        };
        let _turn = gate.lock().await;
        let result = if self.store.contains(&id) {
            Ok(()) // another request fetched it while we waited
        } else {
            self.transfer(id, volume).await
        };
        self.inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        result
    }

    async fn transfer(&self, id: ObjectId, volume: Option<&VolumeName>) -> Result<(), SlaveError> {
        let req = FetchObjectRequest {
            object: id.as_bytes().to_vec(),
            exclude_node: self.link.node_id().to_string(),
            volume: volume.map(|v| v.to_string()).unwrap_or_default(),
        };
        let stream = match self.link.client().fetch_object(req).await {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == tonic::Code::NotFound => {
                return Err(SlaveError::NotFound(s.message().into()));
            }
            // Whatever failed on the way (master, holders), this is a gateway error.
            Err(s) => return Err(SlaveError::Transfer(s.message().into())),
        };
        let body = stream.map(|r| {
            r.map(|c| Bytes::from(c.data))
                .map_err(|s| s.message().to_string())
        });
        let (_, size) = match self.store.ingest(Box::pin(body), Some(id), u64::MAX).await {
            Ok(done) => done,
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
