//! This slave's connection to its master: registration, heartbeats, and
//! announcing stored objects in batches, also as a resync of the whole
//! inventory when the master asks for one.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use elton_proto::pb::master_client::MasterClient;
use elton_proto::pb::{
    AddLocationsRequest, HeartbeatRequest, RegisterNodeRequest, RemoveLocationsRequest,
};
use elton_proto::{NodeId, ObjectId};
use tokio::sync::{Notify, mpsc, oneshot};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::SlaveError;
use crate::incarnation::VersionCache;
use crate::store::ObjectStore;

/// How often the store is recounted for the heartbeats' usage report (a
/// recount stats the shard directories and lists only changed ones).
const USAGE_EVERY: Duration = Duration::from_secs(2);

/// Aborts a background task when the loop that started it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Largest number of ids sent in one `AddLocations` call.
const ANNOUNCE_BATCH: usize = 8192;
const _: () = assert!(ANNOUNCE_BATCH <= elton_proto::MAX_LOCATIONS_PER_CALL);
/// Longest wait for the master to record one `AddLocations` batch.
const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(30);
/// Failed backup copies remembered for the next heartbeat; beyond that the
/// master's assignment expiry covers them.
const FAILED_CAP: usize = 4096;
/// When this few backup copies are left (and again at zero), heartbeat at
/// once to collect more work, so the next batch arrives before the current
/// one is done.
const LOW_WATER: usize = 32;

type Ack = oneshot::Sender<Result<(), String>>;
/// Announcements queued for the announcer task.
pub type AnnounceQueue = mpsc::Receiver<(Vec<ObjectId>, Ack)>;

#[derive(Clone)]
pub struct MasterLink {
    client: MasterClient<Channel>,
    /// Connections for object fetches, taken in turn: one HTTP/2 connection
    /// is driven by one task, so parallel fetches over a single connection
    /// share one core on each side.
    transfers: Arc<Vec<MasterClient<Channel>>>,
    next_transfer: Arc<AtomicUsize>,
    node_id: NodeId,
    announce_tx: mpsc::Sender<(Vec<ObjectId>, Ack)>,
    /// Backup copies that failed, reported with the next heartbeat.
    copy_failed: Arc<Mutex<Vec<ObjectId>>>,
    /// Backup copies queued and not finished.
    backlog: Arc<AtomicUsize>,
    /// Signalled when the backlog runs low: the next heartbeat goes out at
    /// once to pull more work.
    pull_now: Arc<Notify>,
    /// A resync is being sent; another request waits for it to end.
    resyncing: Arc<AtomicBool>,
    /// Version records, kept only while the master's incarnation is the
    /// one they came from (the membership loop tells it).
    versions: Arc<VersionCache>,
    /// Held by a resync and by a garbage-collection sweep: a resync must
    /// not announce an object the sweep is deleting.
    maintenance: Arc<tokio::sync::Mutex<()>>,
}

impl MasterLink {
    /// Connects lazily: the slave serves its store even while the master is
    /// down, and calls fail with a clear error until it is back.
    /// `tls`: how to reach a master over TLS (this node's certificate and
    /// its cluster's CA); `None` for an insecure master (http URL).
    pub fn new(
        master_url: &str,
        node_id: NodeId,
        tls: Option<ClientTlsConfig>,
    ) -> Result<(Self, AnnounceQueue), SlaveError> {
        let mut endpoint = Endpoint::from_shared(master_url.to_string())
            .map_err(|e| SlaveError::BadRequest(format!("master URL {master_url:?}: {e}")))?;
        if let Some(tls) = tls {
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| SlaveError::BadRequest(format!("TLS to the master: {e}")))?;
        }
        let endpoint = endpoint
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .max_frame_size(elton_proto::GRPC_MAX_FRAME_BYTES)
            // A master gone without closing the connection (host lost,
            // half-open TCP) fails the calls in flight instead of hanging
            // them; pings only while a call is open.
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(false);
        let connect = || {
            MasterClient::new(endpoint.connect_lazy())
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20)
        };
        let client = connect();
        let transfers = (0..elton_proto::TRANSFER_CONNECTIONS)
            .map(|_| connect())
            .collect::<Vec<_>>()
            .into();
        let (announce_tx, rx) = mpsc::channel(1024);
        Ok((
            Self {
                client,
                transfers,
                next_transfer: Arc::default(),
                node_id,
                announce_tx,
                copy_failed: Arc::default(),
                backlog: Arc::default(),
                pull_now: Arc::default(),
                resyncing: Arc::default(),
                versions: Arc::default(),
                maintenance: Arc::default(),
            },
            rx,
        ))
    }

    pub fn client(&self) -> MasterClient<Channel> {
        self.client.clone()
    }

    /// A client for an object transfer.
    pub fn transfer_client(&self) -> MasterClient<Channel> {
        let i = self.next_transfer.fetch_add(1, Ordering::Relaxed) % self.transfers.len();
        self.transfers[i].clone()
    }

    pub fn maintenance(&self) -> Arc<tokio::sync::Mutex<()>> {
        self.maintenance.clone()
    }

    pub fn node_id(&self) -> &NodeId {
        &self.node_id
    }

    pub fn versions(&self) -> &VersionCache {
        &self.versions
    }

    /// Records that this node holds `ids`; returns once the master knows.
    pub async fn announce(&self, ids: Vec<ObjectId>) -> Result<(), SlaveError> {
        if ids.is_empty() {
            return Ok(());
        }
        let (ack, done) = oneshot::channel();
        self.announce_tx
            .send((ids, ack))
            .await
            .map_err(|_| SlaveError::Io("announcer stopped".into()))?;
        done.await
            .map_err(|_| SlaveError::Io("announcer stopped".into()))?
            .map_err(SlaveError::MasterUnavailable)
    }

    /// Tells the master this node no longer holds `ids` (quarantined), so
    /// it stops counting these copies and fetches never try them here.
    pub async fn withdraw(&self, ids: &[ObjectId]) -> Result<(), SlaveError> {
        for chunk in ids.chunks(ANNOUNCE_BATCH) {
            let mut client = self.client();
            let call = client.remove_locations(RemoveLocationsRequest {
                node_id: self.node_id.to_string(),
                objects: chunk.iter().map(|id| id.as_bytes().to_vec()).collect(),
            });
            tokio::time::timeout(ANNOUNCE_TIMEOUT, call)
                .await
                .map_err(|_| SlaveError::MasterUnavailable("RemoveLocations timed out".into()))??;
        }
        Ok(())
    }

    /// Remembers a backup copy that failed, for the next heartbeat.
    pub fn report_copy_failed(&self, id: ObjectId) {
        let mut failed = self.copy_failed.lock().unwrap_or_else(|p| p.into_inner());
        if failed.len() < FAILED_CAP {
            failed.push(id);
        }
    }

    /// One backup copy handed to the copier is finished (either way).
    pub fn copy_finished(&self) {
        let left = self
            .backlog
            .fetch_sub(1, Ordering::AcqRel)
            .saturating_sub(1);
        if left == LOW_WATER || left == 0 {
            self.pull_now.notify_one();
        }
    }

    fn take_copy_failed(&self) -> Vec<ObjectId> {
        std::mem::take(&mut *self.copy_failed.lock().unwrap_or_else(|p| p.into_inner()))
    }

    async fn register(&self, http_addr: &str) -> Result<Duration, tonic::Status> {
        let resp = self
            .client()
            .register_node(RegisterNodeRequest {
                node_id: self.node_id.to_string(),
                http_addr: http_addr.to_string(),
            })
            .await?
            .into_inner();
        self.versions.master_answered(&resp.incarnation);
        Ok(Duration::from_millis(
            resp.heartbeat_interval_ms.clamp(100, 60_000),
        ))
    }

    /// Announces `ids` in batches. With a non-zero `resync_id` the batches
    /// form that resync, the final one marked `last` (one empty batch for an
    /// empty store): the master then forgets what they did not name. A
    /// failed batch ends the call, so `last` is never sent after a gap.
    async fn send_locations(&self, ids: &[ObjectId], resync_id: u64) -> Result<(), tonic::Status> {
        let empty: &[ObjectId] = &[];
        let batches: Vec<&[ObjectId]> = if ids.is_empty() && resync_id != 0 {
            vec![empty]
        } else {
            ids.chunks(ANNOUNCE_BATCH).collect()
        };
        let count = batches.len();
        for (i, chunk) in batches.into_iter().enumerate() {
            let mut client = self.client();
            let call = client.add_locations(AddLocationsRequest {
                node_id: self.node_id.to_string(),
                objects: chunk.iter().map(|id| id.as_bytes().to_vec()).collect(),
                resync_id,
                last: resync_id != 0 && i + 1 == count,
            });
            // A master stuck on a half-open connection must not hold up
            // everything queued behind this call.
            tokio::time::timeout(ANNOUNCE_TIMEOUT, call)
                .await
                .map_err(|_| {
                    tonic::Status::deadline_exceeded(format!(
                        "master did not answer AddLocations within {} s",
                        ANNOUNCE_TIMEOUT.as_secs()
                    ))
                })??;
        }
        Ok(())
    }

    /// Group-commits announcements: whatever queued while the previous call
    /// was in flight goes in the next call.
    pub async fn run_announcer(self, mut rx: AnnounceQueue) {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.iter().map(|(ids, _)| ids.len()).sum::<usize>() < ANNOUNCE_BATCH {
                match rx.try_recv() {
                    Ok(more) => batch.push(more),
                    Err(_) => break,
                }
            }
            let ids: Vec<ObjectId> = batch
                .iter()
                .flat_map(|(ids, _)| ids.iter().copied())
                .collect();
            let result = self
                .send_locations(&ids, 0)
                .await
                .map_err(|s| s.message().to_string());
            for (_, ack) in batch {
                let _ = ack.send(result.clone());
            }
        }
    }

    /// Registers (retrying until the master answers), announces the whole
    /// store, then heartbeats; re-registers whenever the master forgot us.
    /// Backup copies the master asks for go to `backups`.
    pub async fn run_membership(
        self,
        http_addr: String,
        store: Arc<ObjectStore>,
        backups: mpsc::Sender<ObjectId>,
    ) {
        let mut backoff = Duration::from_millis(200);
        loop {
            let interval = match self.register(&http_addr).await {
                Ok(i) => i,
                Err(e) => {
                    tracing::warn!("registering with master: {}", e.message());
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            backoff = Duration::from_millis(200);
            let s = store.clone();
            match tokio::task::spawn_blocking(move || s.list()).await {
                Ok(Ok(ids)) => {
                    if let Err(e) = self.send_locations(&ids, 0).await {
                        tracing::warn!("announcing inventory: {}", e.message());
                        tokio::time::sleep(backoff).await;
                        continue;
                    }
                    tracing::info!(node = %self.node_id, objects = ids.len(), "registered with master");
                }
                Ok(Err(e)) => tracing::error!("listing store: {e}"),
                Err(e) => tracing::error!("listing store: {e}"),
            }
            self.heartbeat_until_forgotten(interval, &store, &backups)
                .await;
        }
    }

    async fn heartbeat_until_forgotten(
        &self,
        interval: Duration,
        store: &Arc<ObjectStore>,
        backups: &mpsc::Sender<ObjectId>,
    ) {
        let mut tick = tokio::time::interval(interval);
        // The store is counted in the background; heartbeats carry the
        // last count.
        let usage = Arc::new(std::sync::Mutex::new((0u64, 0u64)));
        let counter = {
            let usage = usage.clone();
            let mut counter = store.usage_counter();
            tokio::spawn(async move {
                loop {
                    let started = std::time::Instant::now();
                    let counted = tokio::task::spawn_blocking(move || {
                        let u = counter.count();
                        (counter, u)
                    });
                    let Ok((back, u)) = counted.await else {
                        return;
                    };
                    counter = back;
                    *usage.lock().unwrap_or_else(|p| p.into_inner()) = u;
                    // At most a tenth of one core, however large the store.
                    tokio::time::sleep(USAGE_EVERY.max(started.elapsed() * 10)).await;
                }
            })
        };
        let _stop_counter = AbortOnDrop(counter);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.pull_now.notified() => tick.reset(),
            }
            let failed = self.take_copy_failed();
            let (stored_objects, stored_bytes) = *usage.lock().unwrap_or_else(|p| p.into_inner());
            let req = HeartbeatRequest {
                node_id: self.node_id.to_string(),
                copy_failed: failed.iter().map(|id| id.as_bytes().to_vec()).collect(),
                stored_objects,
                stored_bytes,
            };
            match self.client().heartbeat(req).await {
                Ok(r) if r.get_ref().known => {
                    let r = r.into_inner();
                    self.versions.master_answered(&r.incarnation);
                    self.queue_backups(&r.replicate, backups);
                    if r.resync != 0 {
                        self.start_resync(r.resync, store.clone());
                    }
                    if r.gc != 0 {
                        let a = crate::sweep::Assignment {
                            id: r.gc,
                            cutoff: Duration::from_millis(r.gc_cutoff_ms),
                            dry_run: r.gc_dry_run,
                        };
                        tokio::spawn(crate::sweep::run(self.clone(), store.clone(), a));
                    }
                }
                Ok(_) => {
                    // Another master's state (restarted, restored): nothing
                    // cached is trusted until it has answered a registration.
                    self.versions.master_unreachable();
                    return;
                }
                Err(e) => {
                    tracing::debug!("heartbeat: {}", e.message());
                    self.versions.master_unreachable();
                    failed
                        .into_iter()
                        .for_each(|id| self.report_copy_failed(id));
                }
            }
        }
    }

    /// Re-announces the whole store as resync `id`, in the background so
    /// heartbeats go on meanwhile. A resync asked for while one is being
    /// sent is skipped: the master asks again once its own times out.
    fn start_resync(&self, id: u64, store: Arc<ObjectStore>) {
        if self.resyncing.swap(true, Ordering::AcqRel) {
            tracing::debug!(resync = id, "a resync is already being sent");
            return;
        }
        let link = self.clone();
        tokio::spawn(async move {
            let _exclusive = link.maintenance.clone().lock_owned().await;
            match tokio::task::spawn_blocking(move || store.list()).await {
                Ok(Ok(ids)) => match link.send_locations(&ids, id).await {
                    Ok(()) => {
                        tracing::info!(resync = id, objects = ids.len(), "inventory re-announced");
                    }
                    Err(e) => {
                        tracing::warn!(resync = id, "re-announcing inventory: {}", e.message())
                    }
                },
                Ok(Err(e)) => tracing::error!("listing store for a resync: {e}"),
                Err(e) => tracing::error!("listing store for a resync: {e}"),
            }
            link.resyncing.store(false, Ordering::Release);
        });
    }

    /// Queues the copies a heartbeat answer asks for. What does not fit in
    /// the queue is reported failed, so the master hands it out again soon.
    fn queue_backups(&self, ids: &[Vec<u8>], backups: &mpsc::Sender<ObjectId>) {
        let mut dropped = 0;
        for raw in ids {
            match ObjectId::from_bytes(raw) {
                Ok(id) => {
                    self.backlog.fetch_add(1, Ordering::AcqRel);
                    if backups.try_send(id).is_err() {
                        self.backlog.fetch_sub(1, Ordering::AcqRel);
                        dropped += 1;
                        self.report_copy_failed(id);
                    }
                }
                Err(e) => tracing::warn!("master asked to copy an invalid id: {e}"),
            }
        }
        if dropped > 0 {
            tracing::warn!(dropped, "backup queue full; returning copies to the master");
        }
    }
}
