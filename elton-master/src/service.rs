//! The `elton.v1.Master` gRPC service: request parsing and orchestration.
//! Decisions live in [`crate::store`] and [`crate::nodes`]; volumes homed by
//! peer masters go through [`crate::remote`], cross-cluster fetches through
//! [`crate::crossfetch`].

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use elton_proto::pb::master_server::{Master, MasterServer};
use elton_proto::pb::{self, NodeInfo};
use elton_proto::{
    HttpAddr, MAX_LOCATIONS_PER_CALL, NodeId, ObjectId, SIZE_METADATA_KEY, VolumeName, VolumePath,
};
use futures::StreamExt;
use prost::Message;
use tonic::{Request, Response, Status};

use crate::along_path::{Budget, objects_along};
use crate::auth::{Auth, Caller, Need};
use crate::coalesce::{Coalescer, Turn};
use crate::crossfetch::CrossFetch;
use crate::fetch::{ChunkStream, HolderReader, Opened};
use crate::fsck::Fsck;
use crate::gc::Gc;
use crate::gc_plan::NodeReport;
use crate::health::NodeHealth;
use crate::holder_policy::HolderPolicy;
use crate::incarnation::Stamp;
use crate::nodes::Liveness;
use crate::peers::PeerSet;
use crate::provision::Identity;
use crate::remote::{Lookup, RemoteVolumes};
use crate::replicator::Replicator;
use crate::resync::Resyncs;
use crate::store::{MetaStore, NewVersion, NodeRow, VolumeRow};
use crate::validate::TreeValidator;
use crate::wan::{Direction, WanStats};
use crate::{MasterConfig, MasterError};
use elton_trust::Scope;

/// Largest gRPC message accepted (a batch of locations, a listing).
const MAX_MESSAGE_BYTES: usize = 16 << 20;

#[derive(Clone)]
pub struct MasterService {
    heartbeat_interval: Duration,
    store: Arc<MetaStore>,
    liveness: Arc<Liveness>,
    http: reqwest::Client,
    cluster: String,
    peers: Arc<PeerSet>,
    remote: Arc<RemoteVolumes>,
    cross: Arc<CrossFetch>,
    coalescer: Arc<Coalescer>,
    wan: Arc<WanStats>,
    replicator: Arc<Replicator>,
    auth: Arc<Auth>,
    validator: Arc<TreeValidator>,
    holders: HolderReader,
    health: Arc<NodeHealth>,
    resyncs: Arc<Resyncs>,
    /// Which cluster and incarnation this metadata is: stamped on every
    /// record served, checked on commits that name one.
    stamp: Stamp,
    data_dir: std::path::PathBuf,
    /// Until when commits wait for slaves to hear of a new incarnation.
    commits_open_at: Option<Instant>,
    gc: Arc<Gc>,
    gc_interval: Duration,
    usage: Arc<crate::node_usage::NodeUsage>,
}

/// The local outcome of a fetch: a stream from a holder of this cluster, or
/// why there was none.
enum Local {
    Served(u64, ChunkStream),
    Miss { last_error: Option<String> },
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl MasterService {
    pub fn new(
        store: Arc<MetaStore>,
        config: &MasterConfig,
        wan: Arc<WanStats>,
        auth: Arc<Auth>,
        identity: &Identity,
        stamp: Stamp,
        commits_open_at: Option<Instant>,
    ) -> Result<Self, MasterError> {
        let known = store
            .nodes()
            .map(|rows| rows.into_iter().map(|r| r.id).collect::<Vec<_>>());
        let known = known.unwrap_or_else(|e| {
            tracing::warn!("reading node registry: {e}");
            Vec::new()
        });
        let peers = Arc::new(PeerSet::new(config, wan.clone(), identity)?);
        let remote = Arc::new(RemoteVolumes::new(peers.clone()));
        let cross = Arc::new(CrossFetch::new(
            peers.clone(),
            remote.clone(),
            wan.clone(),
            config.peer_timeout,
        ));
        let liveness = Arc::new(Liveness::new(config.down_after, known, Instant::now()));
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        let health = Arc::new(NodeHealth::default());
        let holders = HolderReader::new(store.clone(), health.clone(), HolderPolicy::default());
        let resyncs = Arc::new(Resyncs::new(store.clone(), health.clone()));
        let gc = Arc::new(Gc::new(
            store.clone(),
            liveness.clone(),
            http.clone(),
            config.gc_grace,
        ));
        Ok(Self {
            usage: Arc::default(),
            gc,
            gc_interval: config.gc_interval,
            heartbeat_interval: config.heartbeat_interval,
            validator: Arc::new(TreeValidator::new(
                store.clone(),
                liveness.clone(),
                holders.clone(),
            )),
            liveness,
            store,
            http,
            cluster: config.cluster_name().to_string(),
            peers,
            remote,
            cross,
            coalescer: Arc::new(Coalescer::default()),
            wan,
            replicator: Arc::new(Replicator::new(config.replication)),
            auth,
            holders,
            health,
            resyncs,
            stamp,
            data_dir: config.data_dir.clone(),
            commits_open_at,
        })
    }

    /// Per-node read failures, for the metrics endpoint.
    pub fn health(&self) -> Arc<NodeHealth> {
        self.health.clone()
    }

    /// The background task that plans backup copies and repairs; runs until
    /// dropped.
    pub fn replication_task(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.replicator.clone().run(
            self.store.clone(),
            self.liveness.clone(),
            self.heartbeat_interval,
        )
    }

    /// The background task that collects garbage every `--gc-interval`;
    /// returns at once when it is 0.
    pub fn gc_task(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.gc.clone().run_periodically(self.gc_interval)
    }

    pub fn into_server(self) -> MasterServer<Self> {
        MasterServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Runs a blocking store operation off the async workers.
    async fn with_store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&MetaStore) -> Result<T, MasterError> + Send + 'static,
    ) -> Result<T, MasterError> {
        crate::store::blocking(&self.store, f).await
    }

    fn node_info(&self, row: &NodeRow) -> NodeInfo {
        self.node_info_with(row, 0)
    }

    /// `objects`: how many objects the store records the node holding.
    fn node_info_with(&self, row: &NodeRow, objects: u64) -> NodeInfo {
        let (stored_objects, stored_bytes) = self.usage.get(&row.id);
        let now = Instant::now();
        let last_seen_unix = self.liveness.last_seen(&row.id).map_or(0, |t| {
            now_unix().saturating_sub(now.saturating_duration_since(t).as_secs())
        });
        let health = self.health.counters(&row.id);
        NodeInfo {
            node_id: row.id.to_string(),
            http_addr: row.http_addr.clone(),
            up: self.liveness.is_up(&row.id, now),
            last_seen_unix,
            stale_locations: health.stale_locations,
            failed_transfers: health.failed_transfers,
            resyncs: health.resyncs,
            objects,
            stored_objects,
            stored_bytes,
        }
    }

    async fn live_holders(
        &self,
        object: ObjectId,
        exclude: Option<NodeId>,
    ) -> Result<Vec<NodeRow>, MasterError> {
        crate::fetch::live_holders(&self.store, &self.liveness, object, exclude.as_ref()).await
    }

    /// Authenticates and authorizes a call (see [`crate::auth`]); returns
    /// the calling peer's cluster name when it comes from a peer master,
    /// counted as a WAN request of that peer.
    fn admit<T>(&self, req: &Request<T>, need: Need) -> Result<(Caller, Option<String>), Status> {
        let caller = self.auth.check(req, need)?;
        let peer = caller.peer().map(str::to_string);
        if let Some(p) = &peer {
            self.wan.request(p, Direction::In);
        }
        Ok((caller, peer))
    }

    /// A version record of this master's metadata, as served.
    fn record(&self, info: &elton_proto::VersionInfo) -> pb::VersionRecord {
        pb::VersionRecord {
            incarnation: self.stamp.incarnation.to_string(),
            ..info.into()
        }
    }

    /// Refuses a commit whose parent was read from another incarnation of
    /// this metadata: the same number may name another tree now.
    fn check_incarnation(&self, r: &pb::CommitRequest) -> Result<(), MasterError> {
        let mine = self.stamp.incarnation.to_string();
        if r.incarnation.is_empty() || r.incarnation == mine {
            return Ok(());
        }
        Err(MasterError::WrongIncarnation(format!(
            "version {} of {:?} was read from metadata incarnation {}, but this master is at \
             incarnation {mine} (the metadata was restored or started again): that number may \
             name another tree now; read the volume again",
            r.parent, r.volume, r.incarnation
        )))
    }

    /// Counts the reply to a peer's call as WAN bytes sent to it.
    fn note_peer_reply<T: Message>(&self, peer: Option<&str>, reply: &T) {
        if let Some(p) = peer {
            self.wan
                .bytes(p, None, Direction::Out, reply.encoded_len() as u64);
        }
    }

    /// Whether a miss may be looked up on peers: not for calls that come
    /// from a peer (no recursion), and only if there are peers.
    fn may_ask_peers(&self, from_peer: Option<&str>) -> bool {
        from_peer.is_none() && !self.peers.is_empty()
    }

    /// Streams `object` from the live holders of this cluster (failing
    /// over between them, see [`crate::fetch`]), dropping stale locations
    /// on the way.
    async fn open_local(
        &self,
        object: ObjectId,
        exclude: Option<NodeId>,
    ) -> Result<Local, MasterError> {
        let holders = self.live_holders(object, exclude).await?;
        Ok(match self.holders.open(object, holders).await {
            Opened::Served(size, stream) => Local::Served(size, stream),
            Opened::Miss { last_error } => Local::Miss { last_error },
        })
    }

    /// Serves from this cluster when possible, else from a peer: one WAN
    /// transfer per object at a time, later requesters wait for it to land
    /// here and are then served locally.
    async fn open_anywhere(
        &self,
        object: ObjectId,
        exclude: Option<NodeId>,
        volume: Option<VolumeName>,
        from_peer: Option<&str>,
    ) -> Result<(Option<u64>, ChunkStream), MasterError> {
        loop {
            let last_error = match self.open_local(object, exclude.clone()).await? {
                Local::Served(size, stream) => return Ok((Some(size), stream)),
                Local::Miss { last_error } => last_error,
            };
            let miss = || match &last_error {
                Some(e) => MasterError::HoldersFailed {
                    object: object.to_string(),
                    last: e.clone(),
                },
                None => MasterError::NoHolder(object.to_string()),
            };
            if !self.may_ask_peers(from_peer) {
                return Err(miss());
            }
            match self.coalescer.join(object) {
                Turn::Wait(waiter) => {
                    tracing::debug!(%object, "waiting for the transfer under way");
                    waiter.settled().await;
                }
                Turn::Lead(lead) => {
                    // It may have landed between the check above and `join`.
                    if let Local::Served(size, stream) =
                        self.open_local(object, exclude.clone()).await?
                    {
                        return Ok((Some(size), stream));
                    }
                    return match self.cross.open(lead, object, volume.as_ref()).await {
                        Err(MasterError::NoHolder(_)) => Err(miss()),
                        other => other,
                    };
                }
            }
        }
    }

    /// A commit to a volume homed by a peer. The tree is checked here, where
    /// its new objects live and the home's readers will fetch them from,
    /// against the parent version's tree as the home records it; the root's
    /// location is made durable before the version exists anywhere, as a
    /// local commit's transaction does; then the home decides.
    async fn commit_at_home(
        &self,
        volume: &VolumeName,
        root: ObjectId,
        r: pb::CommitRequest,
    ) -> Result<pb::VersionRecord, MasterError> {
        let parent_root =
            match r.parent {
                0 => None,
                n => {
                    let parent = self.remote.version(volume, n, None).await?;
                    Some(ObjectId::from_bytes(&parent.root).map_err(|e| {
                        MasterError::Io(format!("version record from the home: {e}"))
                    })?)
                }
            };
        self.validator.check(root, parent_root).await?;
        self.with_store(move |s| {
            if s.holders(&root)?.is_empty() {
                return Err(MasterError::RootNotStored(root.to_string()));
            }
            s.flush()
        })
        .await?;
        let record = self.remote.commit(volume, r).await?;
        tracing::info!(volume = %volume, version = record.version, "committed at the home master");
        Ok(record)
    }
}

fn volume_info(row: VolumeRow) -> pb::VolumeInfo {
    pb::VolumeInfo {
        name: row.name.to_string(),
        home: row.home,
        created_unix: row.created_unix,
        head: row.head,
        keep: row.keep,
        oldest: 0,
    }
}

fn object_id(raw: &[u8]) -> Result<ObjectId, MasterError> {
    Ok(ObjectId::from_bytes(raw)?)
}

/// The object ids of a node's batch call (`AddLocations`, `RemoveLocations`,
/// `GcCandidates`), refused whole above [`MAX_LOCATIONS_PER_CALL`] so one call
/// cannot hold the store for long.
fn bounded_object_ids(call: &str, raw: &[Vec<u8>]) -> Result<Vec<ObjectId>, MasterError> {
    if raw.len() > MAX_LOCATIONS_PER_CALL {
        return Err(MasterError::BadRequest(format!(
            "{} objects in one {call} call; at most {MAX_LOCATIONS_PER_CALL}",
            raw.len()
        )));
    }
    raw.iter().map(|o| object_id(o)).collect()
}

#[tonic::async_trait]
impl Master for MasterService {
    async fn create_volume(
        &self,
        req: Request<pb::CreateVolumeRequest>,
    ) -> Result<Response<pb::VolumeInfo>, Status> {
        self.admit(&req, Need::Write)?;
        let r = req.into_inner();
        let name: VolumeName = r.name.parse().map_err(MasterError::from)?;
        let keep = r.keep;
        if !self.peers.is_empty() {
            match self.remote.lookup(&name).await? {
                Lookup::Found(peer) => {
                    return Err(MasterError::HomedByPeer {
                        volume: name.to_string(),
                        home: peer.name.clone(),
                    }
                    .into());
                }
                Lookup::Absent { unreachable } if !unreachable.is_empty() => {
                    tracing::warn!(volume = %name, "creating while peers are unreachable \
                        (they cannot be checked for the same name): {}", unreachable.join(", "));
                }
                Lookup::Absent { .. } => {}
            }
        }
        let home = self.cluster.clone();
        let row = self
            .with_store(move |s| s.create_volume(&name, &home, now_unix(), keep))
            .await?;
        tracing::info!(volume = %row.name, "volume created");
        Ok(Response::new(volume_info(row)))
    }

    async fn get_volume(
        &self,
        req: Request<pb::GetVolumeRequest>,
    ) -> Result<Response<pb::VolumeInfo>, Status> {
        let (_, peer) = self.admit(&req, Need::Read)?;
        let name: VolumeName = req.into_inner().name.parse().map_err(MasterError::from)?;
        let n = name.clone();
        let found = self
            .with_store(move |s| Ok((s.volume(&n)?, s.oldest_version(&n)?)))
            .await;
        let info = match found {
            Ok((row, oldest)) => pb::VolumeInfo {
                oldest,
                ..volume_info(row)
            },
            Err(MasterError::UnknownVolume(_)) if self.may_ask_peers(peer.as_deref()) => {
                self.remote.volume(&name).await?
            }
            Err(e) => return Err(e.into()),
        };
        self.note_peer_reply(peer.as_deref(), &info);
        Ok(Response::new(info))
    }

    async fn list_volumes(
        &self,
        req: Request<pb::ListVolumesRequest>,
    ) -> Result<Response<pb::ListVolumesResponse>, Status> {
        self.admit(&req, Need::Read)?;
        let rows = self.with_store(|s| s.volumes()).await?;
        Ok(Response::new(pb::ListVolumesResponse {
            volumes: rows.into_iter().map(volume_info).collect(),
        }))
    }

    async fn commit(
        &self,
        req: Request<pb::CommitRequest>,
    ) -> Result<Response<pb::VersionRecord>, Status> {
        let (_, peer) = self.admit(&req, Need::Commit)?;
        let mut r = req.into_inner();
        let volume: VolumeName = r.volume.parse().map_err(MasterError::from)?;
        let root = object_id(&r.root)?;
        // A configured peer checked the tree in its cluster, where it lives.
        let forwarded_by_peer = peer.as_deref().is_some_and(|p| self.peers.get(p).is_some());
        let (v, parent) = (volume.clone(), r.parent);
        let parent_root = self.with_store(move |s| s.parent_root(&v, parent)).await;
        // A volume of this master: a parent read from another incarnation
        // is refused before anything else (also before a conflict, whose
        // head would mean nothing to the caller).
        if !matches!(parent_root, Err(MasterError::UnknownVolume(_))) {
            self.check_incarnation(&r)?;
        }
        let record: pb::VersionRecord = match parent_root {
            Ok(parent_root) => {
                crate::settle::check(self.commits_open_at, Instant::now())?;
                // No garbage-collection decision between check and record.
                let fence = self.gc.fence();
                let _fence = fence.read().await;
                let started = Instant::now();
                if !forwarded_by_peer {
                    self.validator.seed(std::mem::take(&mut r.manifests));
                    self.validator.check(root, parent_root).await?;
                }
                let validated = started.elapsed();
                let new = NewVersion {
                    volume: volume.clone(),
                    parent: r.parent,
                    root,
                    message: r.message.clone(),
                    author: r.author.clone(),
                    host: r.host.clone(),
                    time: now_unix(),
                    check_root: !forwarded_by_peer,
                };
                let info = self.with_store(move |s| s.commit(new)).await?;
                tracing::debug!(
                    validated_ms = validated.as_millis() as u64,
                    total_ms = started.elapsed().as_millis() as u64,
                    "commit"
                );
                tracing::info!(volume = %info.volume, version = %info.version, root = %info.root,
                    via = peer.as_deref().unwrap_or("-"), "committed");
                self.record(&info)
            }
            Err(MasterError::UnknownVolume(_)) if self.may_ask_peers(peer.as_deref()) => {
                self.commit_at_home(&volume, root, r).await?
            }
            Err(e) => return Err(e.into()),
        };
        self.note_peer_reply(peer.as_deref(), &record);
        Ok(Response::new(record))
    }

    async fn get_version(
        &self,
        req: Request<pb::GetVersionRequest>,
    ) -> Result<Response<pb::VersionRecord>, Status> {
        let (_, peer) = self.admit(&req, Need::Read)?;
        let r = req.into_inner();
        let name: VolumeName = r.volume.parse().map_err(MasterError::from)?;
        let read_path = r
            .read_path
            .as_deref()
            .map(VolumePath::parse)
            .transpose()
            .map_err(MasterError::from)?;
        let n = name.clone();
        let record = match self.with_store(move |s| s.version(&n, r.version)).await {
            Ok(info) => {
                let mut record = self.record(&info);
                // Only a peer saves WAN round trips by it (this cluster's
                // slaves read the same objects a LAN hop away), and only
                // for a numbered version, whose record it then keeps.
                if let (Some(path), Some(_), true) = (&read_path, &peer, r.version != 0) {
                    record.along_path =
                        objects_along(self.validator.as_ref(), info.root, path, Budget::standard())
                            .await;
                }
                record
            }
            Err(MasterError::UnknownVolume(_)) if self.may_ask_peers(peer.as_deref()) => {
                self.remote
                    .version(&name, r.version, read_path.as_ref())
                    .await?
            }
            Err(e) => return Err(e.into()),
        };
        self.note_peer_reply(peer.as_deref(), &record);
        Ok(Response::new(record))
    }

    async fn list_versions(
        &self,
        req: Request<pb::ListVersionsRequest>,
    ) -> Result<Response<pb::ListVersionsResponse>, Status> {
        let (_, peer) = self.admit(&req, Need::Read)?;
        let name: VolumeName = req.into_inner().volume.parse().map_err(MasterError::from)?;
        let n = name.clone();
        let list = match self.with_store(move |s| s.versions(&n)).await {
            Ok(list) => pb::ListVersionsResponse {
                versions: list.iter().map(|v| self.record(v)).collect(),
            },
            Err(MasterError::UnknownVolume(_)) if self.may_ask_peers(peer.as_deref()) => {
                self.remote.versions(&name).await?
            }
            Err(e) => return Err(e.into()),
        };
        self.note_peer_reply(peer.as_deref(), &list);
        Ok(Response::new(list))
    }

    async fn register_node(
        &self,
        req: Request<pb::RegisterNodeRequest>,
    ) -> Result<Response<pb::RegisterNodeResponse>, Status> {
        let id: NodeId = req.get_ref().node_id.parse().map_err(MasterError::from)?;
        self.admit(&req, Need::SpeakAs(id.clone()))?;
        let r = req.into_inner();
        let addr: HttpAddr = r.http_addr.parse().map_err(MasterError::from)?;
        let removed = id.clone();
        if self.with_store(move |s| s.node_removed(&removed)).await? {
            return Err(MasterError::NodeRemoved(id.to_string()).into());
        }
        let row = NodeRow {
            id: id.clone(),
            http_addr: addr.to_string(),
        };
        let liveness = self.liveness.clone();
        let now = Instant::now();
        let displaced = self
            .with_store(move |s| s.put_node(&row, |other| liveness.is_up(other, now)))
            .await?;
        for other in displaced {
            tracing::warn!(node = %id, %other, "address taken over from a node that is down");
            self.liveness.forget(&other);
        }
        self.liveness.register(id.clone(), Instant::now());
        self.health.registered(&id);
        tracing::info!(node = %id, "node registered");
        Ok(Response::new(pb::RegisterNodeResponse {
            heartbeat_interval_ms: self.heartbeat_interval.as_millis() as u64,
            incarnation: self.stamp.incarnation.to_string(),
        }))
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let id: NodeId = req.get_ref().node_id.parse().map_err(MasterError::from)?;
        self.admit(&req, Need::SpeakAs(id.clone()))?;
        let r = req.into_inner();
        let failed = r
            .copy_failed
            .iter()
            .map(|o| object_id(o))
            .collect::<Result<Vec<_>, _>>()?;
        let now = Instant::now();
        let known = self.liveness.beat(&id, now);
        if known {
            self.usage.report(&id, r.stored_objects, r.stored_bytes);
        }
        self.replicator.failed(&id, &failed, now);
        // A node that must register first gets its work after it has.
        let replicate = if known {
            self.replicator
                .take_work(&id)
                .iter()
                .map(|o| o.as_bytes().to_vec())
                .collect()
        } else {
            Vec::new()
        };
        let resync = if known {
            self.resyncs.issue(&id, now).await
        } else {
            0
        };
        let gc = if known { self.gc.assignment(&id) } else { None };
        Ok(Response::new(pb::HeartbeatResponse {
            known,
            replicate,
            resync,
            incarnation: self.stamp.incarnation.to_string(),
            gc: gc.map_or(0, |g| g.id),
            gc_cutoff_ms: gc.map_or(0, |g| g.cutoff_ms),
            gc_dry_run: gc.is_some_and(|g| g.dry_run),
        }))
    }

    async fn list_nodes(
        &self,
        req: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        self.admit(&req, Need::Read)?;
        let rows = self
            .with_store(|s| {
                s.nodes()?
                    .into_iter()
                    .map(|r| Ok((s.node_object_count(&r.id)?, r)))
                    .collect::<Result<Vec<_>, MasterError>>()
            })
            .await?;
        Ok(Response::new(pb::ListNodesResponse {
            nodes: rows
                .iter()
                .map(|(n, r)| self.node_info_with(r, *n))
                .collect(),
        }))
    }

    async fn resync_node(
        &self,
        req: Request<pb::ResyncNodeRequest>,
    ) -> Result<Response<pb::ResyncNodeResponse>, Status> {
        self.admit(&req, Need::Admin)?;
        let id: NodeId = req
            .into_inner()
            .node_id
            .parse()
            .map_err(MasterError::from)?;
        if self.liveness.last_seen(&id).is_none() {
            return Err(MasterError::UnknownNode(id.to_string()).into());
        }
        self.health.request(&id);
        tracing::info!(node = %id, "resync requested");
        Ok(Response::new(pb::ResyncNodeResponse {}))
    }

    async fn add_locations(
        &self,
        req: Request<pb::AddLocationsRequest>,
    ) -> Result<Response<pb::AddLocationsResponse>, Status> {
        let node: NodeId = req.get_ref().node_id.parse().map_err(MasterError::from)?;
        self.admit(&req, Need::SpeakAs(node.clone()))?;
        let r = req.into_inner();
        if self.liveness.last_seen(&node).is_none() {
            return Err(MasterError::UnknownNode(node.to_string()).into());
        }
        let objects = bounded_object_ids("AddLocations", &r.objects)?;
        let registered = objects.clone();
        let replicator = self.replicator.clone();
        let n = node.clone();
        let started = Instant::now();
        self.with_store(move |s| {
            s.add_locations(&n, &objects)?;
            replicator.announced(&n, &objects);
            Ok(())
        })
        .await?;
        tracing::debug!(
            objects = registered.len(),
            ms = started.elapsed().as_millis() as u64,
            "AddLocations"
        );
        self.resyncs.announced(&node, r.resync_id, r.last).await?;
        // Requests waiting for a cross-cluster transfer can now be served here.
        self.coalescer.settle(&registered);
        Ok(Response::new(pb::AddLocationsResponse {}))
    }

    async fn remove_locations(
        &self,
        req: Request<pb::RemoveLocationsRequest>,
    ) -> Result<Response<pb::RemoveLocationsResponse>, Status> {
        let node: NodeId = req.get_ref().node_id.parse().map_err(MasterError::from)?;
        self.admit(&req, Need::SpeakAs(node.clone()))?;
        let r = req.into_inner();
        let objects = bounded_object_ids("RemoveLocations", &r.objects)?;
        tracing::info!(node = %node, objects = objects.len(), "locations withdrawn");
        self.with_store(move |s| s.remove_locations(&node, &objects))
            .await?;
        Ok(Response::new(pb::RemoveLocationsResponse {}))
    }

    async fn locate(
        &self,
        req: Request<pb::LocateRequest>,
    ) -> Result<Response<pb::LocateResponse>, Status> {
        let (_, peer) = self.admit(&req, Need::Read)?;
        let object = object_id(&req.into_inner().object)?;
        let rows = self.with_store(move |s| {
            let holders = s.holders(&object)?;
            Ok(s.nodes()?
                .into_iter()
                .filter(|n| holders.contains(&n.id))
                .collect::<Vec<_>>())
        });
        let rows = rows.await?;
        let reply = pb::LocateResponse {
            holders: rows.iter().map(|r| self.node_info(r)).collect(),
        };
        self.note_peer_reply(peer.as_deref(), &reply);
        Ok(Response::new(reply))
    }

    type FetchObjectStream = ChunkStream;

    async fn fetch_object(
        &self,
        req: Request<pb::FetchObjectRequest>,
    ) -> Result<Response<Self::FetchObjectStream>, Status> {
        let (_, peer) = self.admit(&req, Need::Read)?;
        let r = req.into_inner();
        let object = object_id(&r.object)?;
        let exclude = if r.exclude_node.is_empty() {
            None
        } else {
            Some(
                r.exclude_node
                    .parse::<NodeId>()
                    .map_err(MasterError::from)?,
            )
        };
        let volume = if r.volume.is_empty() {
            None
        } else {
            Some(r.volume.parse::<VolumeName>().map_err(MasterError::from)?)
        };
        let (size, stream) = self
            .open_anywhere(object, exclude, volume.clone(), peer.as_deref())
            .await?;
        let stream = match peer {
            // Serving a peer: what we send is WAN traffic of that link.
            Some(p) => {
                let wan = self.wan.clone();
                let volume = volume.map(|v| v.to_string());
                Box::pin(stream.inspect(move |item| {
                    if let Ok(chunk) = item {
                        wan.bytes(
                            &p,
                            volume.as_deref(),
                            Direction::Out,
                            chunk.data.len() as u64,
                        );
                    }
                })) as ChunkStream
            }
            None => stream,
        };
        let mut resp = Response::new(stream);
        if let Some(size) = size
            && let Ok(v) = size.to_string().parse()
        {
            resp.metadata_mut().insert(SIZE_METADATA_KEY, v);
        }
        Ok(resp)
    }

    async fn stats(
        &self,
        req: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        self.admit(&req, Need::Read)?;
        Ok(Response::new(self.wan.to_proto(&self.cluster)))
    }

    type FsckStream = tokio_stream::wrappers::ReceiverStream<Result<pb::FsckEvent, Status>>;

    async fn fsck(
        &self,
        req: Request<pb::FsckRequest>,
    ) -> Result<Response<Self::FsckStream>, Status> {
        self.admit(&req, Need::Read)?;
        let r = req.into_inner();
        let check = Fsck {
            store: self.store.clone(),
            liveness: self.liveness.clone(),
            http: self.http.clone(),
            replication: self.replicator.configured(),
            peers: self.peers.clone(),
            check_files: r.check_files,
            max_listed: r.max_listed,
        };
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(check.run(tx));
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        self.admit(&req, Need::Admin)?;
        let r = req.into_inner();
        let scope: Scope = r
            .scope
            .parse()
            .map_err(|e: elton_trust::TrustError| MasterError::BadRequest(e.to_string()))?;
        let secret =
            elton_trust::token::new_secret().map_err(|e| MasterError::Io(e.to_string()))?;
        let name = if r.name.is_empty() {
            "token".to_string()
        } else {
            r.name
        };
        let (auth, now) = (self.auth.clone(), now_unix());
        let s = secret.clone();
        let row = self
            .with_store(move |store| auth.add(store, &s, &name, scope, now))
            .await?;
        tracing::info!(id = %row.id, name = %row.name, scope = %row.scope, "token created");
        Ok(Response::new(pb::CreateTokenResponse {
            token: Some(token_info(row)),
            secret,
        }))
    }

    async fn list_tokens(
        &self,
        req: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        self.admit(&req, Need::Admin)?;
        let mut rows = self.with_store(|s| s.tokens()).await?;
        rows.sort_by(|a, b| (a.1.created_unix, &a.1.id).cmp(&(b.1.created_unix, &b.1.id)));
        Ok(Response::new(pb::ListTokensResponse {
            tokens: rows.into_iter().map(|(_, row)| token_info(row)).collect(),
        }))
    }

    async fn revoke_token(
        &self,
        req: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        self.admit(&req, Need::Admin)?;
        let id = req.into_inner().id;
        let auth = self.auth.clone();
        let revoked = id.clone();
        self.with_store(move |s| auth.revoke(s, &revoked)).await?;
        tracing::info!(%id, "token revoked");
        Ok(Response::new(pb::RevokeTokenResponse {}))
    }

    async fn who_am_i(
        &self,
        req: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let (caller, _) = self.admit(&req, Need::Read)?;
        Ok(Response::new(caller.who()))
    }

    async fn check_token(
        &self,
        req: Request<pb::CheckTokenRequest>,
    ) -> Result<Response<pb::CheckTokenResponse>, Status> {
        self.admit(&req, Need::Node)?;
        let secret = req.into_inner().secret;
        let row = if self.auth.insecure() {
            crate::store::TokenRow {
                id: String::new(),
                name: "insecure".into(),
                scope: Scope::Admin.to_string(),
                created_unix: 0,
            }
        } else {
            self.auth.lookup(&secret)?
        };
        Ok(Response::new(pb::CheckTokenResponse {
            token: Some(token_info(row)),
        }))
    }

    type BackupStream = crate::backup::BackupStream;

    async fn backup(
        &self,
        req: Request<pb::BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        self.admit(&req, Need::Admin)?;
        tracing::info!("backup requested");
        Ok(Response::new(crate::backup::start(
            self.store.clone(),
            self.data_dir.clone(),
        )))
    }
    type GcStream = tokio_stream::wrappers::ReceiverStream<Result<pb::GcEvent, Status>>;

    async fn gc(&self, req: Request<pb::GcRequest>) -> Result<Response<Self::GcStream>, Status> {
        self.admit(&req, Need::Admin)?;
        let r = req.into_inner();
        let grace = match r.grace_ms {
            0 => self.gc.default_grace,
            ms => Duration::from_millis(ms),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let (ptx, mut prx) = tokio::sync::mpsc::channel(64);
        let gc = self.gc.clone();
        let events = tx.clone();
        tokio::spawn(async move {
            while let Some(p) = prx.recv().await {
                let e = pb::GcEvent {
                    event: Some(pb::gc_event::Event::Progress(p)),
                };
                if events.send(Ok(e)).await.is_err() {
                    break;
                }
            }
        });
        tokio::spawn(async move {
            let outcome = gc.run(r.dry_run, grace, Some(ptx)).await;
            let last = outcome
                .map(|s| pb::GcEvent {
                    event: Some(pb::gc_event::Event::Summary(s)),
                })
                .map_err(Status::from);
            let _ = tx.send(last).await;
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn gc_candidates(
        &self,
        req: Request<pb::GcCandidatesRequest>,
    ) -> Result<Response<pb::GcCandidatesResponse>, Status> {
        let node: NodeId = req.get_ref().node_id.parse().map_err(MasterError::from)?;
        self.admit(&req, Need::SpeakAs(node.clone()))?;
        let r = req.into_inner();
        let objects = bounded_object_ids("GcCandidates", &r.objects)?;
        let reply = match self.gc.offered(&node, r.gc, objects).await? {
            Ok(delete) => pb::GcCandidatesResponse {
                delete: delete.iter().map(|o| o.as_bytes().to_vec()).collect(),
                abort: String::new(),
            },
            Err(abort) => pb::GcCandidatesResponse {
                delete: Vec::new(),
                abort,
            },
        };
        Ok(Response::new(reply))
    }

    async fn gc_done(
        &self,
        req: Request<pb::GcDoneRequest>,
    ) -> Result<Response<pb::GcDoneResponse>, Status> {
        let node: NodeId = req.get_ref().node_id.parse().map_err(MasterError::from)?;
        self.admit(&req, Need::SpeakAs(node.clone()))?;
        let r = req.into_inner();
        let report = NodeReport {
            candidates: r.candidates,
            deleted: r.deleted,
            deleted_bytes: r.deleted_bytes,
            kept_in_use: r.kept_in_use,
            error: (!r.error.is_empty()).then_some(r.error),
        };
        self.gc.finished(&node, r.gc, report).await;
        Ok(Response::new(pb::GcDoneResponse {}))
    }

    async fn set_retention(
        &self,
        req: Request<pb::SetRetentionRequest>,
    ) -> Result<Response<pb::VolumeInfo>, Status> {
        // Dropping versions destroys history: an admin's decision.
        self.admit(&req, Need::Admin)?;
        let r = req.into_inner();
        let name: VolumeName = r.volume.parse().map_err(MasterError::from)?;
        let keep = r.keep;
        let (row, oldest) = self
            .with_store(move |s| {
                let (row, _) = s.set_retention(&name, keep)?;
                let oldest = s.oldest_version(&name)?;
                Ok((row, oldest))
            })
            .await?;
        Ok(Response::new(pb::VolumeInfo {
            oldest,
            ..volume_info(row)
        }))
    }

    async fn remove_node(
        &self,
        req: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        // Forgetting a node can lose data (with force): an admin's decision.
        self.admit(&req, Need::Admin)?;
        let r = req.into_inner();
        let node: NodeId = r.node_id.parse().map_err(MasterError::from)?;
        let (liveness, replicator) = (self.liveness.clone(), self.replicator.clone());
        let resp = self
            .with_store(move |s| {
                crate::decommission::step(s, &liveness, &replicator, &node, r.force, now_unix())
            })
            .await?;
        Ok(Response::new(resp))
    }

    async fn delete_volume(
        &self,
        req: Request<pb::DeleteVolumeRequest>,
    ) -> Result<Response<pb::DeleteVolumeResponse>, Status> {
        self.admit(&req, Need::Admin)?;
        let r = req.into_inner();
        let name: VolumeName = r.name.parse().map_err(MasterError::from)?;
        let home = self.cluster.clone();
        let dry_run = r.dry_run;
        let removal = self
            .with_store(move |s| {
                let row = s.volume(&name)?;
                if row.home != home {
                    return Err(MasterError::BadRequest(format!(
                        "volume {name:?} is homed by cluster {}: delete it there",
                        row.home
                    )));
                }
                let removal = s.delete_volume(&name, dry_run)?;
                if !dry_run {
                    tracing::info!(volume = %name, versions = removal.versions, head = removal.head, "volume deleted");
                }
                Ok(removal)
            })
            .await?;
        Ok(Response::new(pb::DeleteVolumeResponse {
            versions: removal.versions,
            head: removal.head,
            deleted: !dry_run,
        }))
    }
}

fn token_info(row: crate::store::TokenRow) -> pb::TokenInfo {
    pb::TokenInfo {
        id: row.id,
        name: row.name,
        scope: row.scope,
        created_unix: row.created_unix,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_above_the_bound_is_refused_whole_and_names_its_call() {
        let id = ObjectId::of(b"x").as_bytes().to_vec();
        let ok = vec![id.clone(); MAX_LOCATIONS_PER_CALL];
        assert_eq!(
            bounded_object_ids("AddLocations", &ok)
                .map(|v| v.len())
                .ok(),
            Some(MAX_LOCATIONS_PER_CALL)
        );
        let over = vec![id; MAX_LOCATIONS_PER_CALL + 1];
        let e = bounded_object_ids("GcCandidates", &over)
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("10001 objects in one GcCandidates call; at most 10000")
        );
        assert!(bounded_object_ids("RemoveLocations", &[vec![1, 2, 3]]).is_err());
    }
}
