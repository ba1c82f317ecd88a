//! The `elton.v1.Master` gRPC service: request parsing and orchestration.
//! Decisions live in [`crate::store`] and [`crate::nodes`].

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use elton_proto::pb::master_server::{Master, MasterServer};
use elton_proto::pb::{self, NodeInfo};
use elton_proto::{NodeId, ObjectId, SIZE_METADATA_KEY, VolumeName};
use tonic::{Request, Response, Status};

use crate::fetch::{self, ChunkStream, SourceError};
use crate::fsck::Fsck;
use crate::nodes::Liveness;
use crate::replicator::Replicator;
use crate::store::{MetaStore, NewVersion, NodeRow, VolumeRow};
use crate::{MasterConfig, MasterError};

/// Largest gRPC message accepted (a batch of locations, a listing).
const MAX_MESSAGE_BYTES: usize = 16 << 20;

#[derive(Clone)]
pub struct MasterService {
    id: String,
    heartbeat_interval: Duration,
    store: Arc<MetaStore>,
    liveness: Arc<Liveness>,
    http: reqwest::Client,
    replicator: Arc<Replicator>,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl MasterService {
    pub fn new(store: Arc<MetaStore>, config: &MasterConfig) -> Self {
        let known = store
            .nodes()
            .map(|rows| rows.into_iter().map(|r| r.id).collect::<Vec<_>>());
        let known = known.unwrap_or_else(|e| {
            tracing::warn!("reading node registry: {e}");
            Vec::new()
        });
        Self {
            id: config.id.clone(),
            heartbeat_interval: config.heartbeat_interval,
            liveness: Arc::new(Liveness::new(config.down_after, known, Instant::now())),
            store,
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
            replicator: Arc::new(Replicator::new(config.replication)),
        }
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
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| MasterError::Io(format!("store task: {e}")))?
    }

    fn node_info(&self, row: &NodeRow) -> NodeInfo {
        let now = Instant::now();
        let last_seen_unix = self.liveness.last_seen(&row.id).map_or(0, |t| {
            now_unix().saturating_sub(now.saturating_duration_since(t).as_secs())
        });
        NodeInfo {
            node_id: row.id.to_string(),
            http_addr: row.http_addr.clone(),
            up: self.liveness.is_up(&row.id, now),
            last_seen_unix,
        }
    }

    async fn live_holders(
        &self,
        object: ObjectId,
        exclude: Option<NodeId>,
    ) -> Result<Vec<NodeRow>, MasterError> {
        let (holders, nodes) = self
            .with_store(move |s| Ok((s.holders(&object)?, s.nodes()?)))
            .await?;
        let now = Instant::now();
        Ok(nodes
            .into_iter()
            .filter(|n| holders.contains(&n.id))
            .filter(|n| Some(&n.id) != exclude.as_ref())
            .filter(|n| self.liveness.is_up(&n.id, now))
            .collect())
    }
}

fn volume_info(row: VolumeRow) -> pb::VolumeInfo {
    pb::VolumeInfo {
        name: row.name.to_string(),
        home: row.home,
        created_unix: row.created_unix,
        head: row.head,
    }
}

fn object_id(raw: &[u8]) -> Result<ObjectId, MasterError> {
    Ok(ObjectId::from_bytes(raw)?)
}

#[tonic::async_trait]
impl Master for MasterService {
    async fn create_volume(
        &self,
        req: Request<pb::CreateVolumeRequest>,
    ) -> Result<Response<pb::VolumeInfo>, Status> {
        let name: VolumeName = req.into_inner().name.parse().map_err(MasterError::from)?;
        let home = self.id.clone();
        let row = self
            .with_store(move |s| s.create_volume(&name, &home, now_unix()))
            .await?;
        tracing::info!(volume = %row.name, "volume created");
        Ok(Response::new(volume_info(row)))
    }

    async fn get_volume(
        &self,
        req: Request<pb::GetVolumeRequest>,
    ) -> Result<Response<pb::VolumeInfo>, Status> {
        let name: VolumeName = req.into_inner().name.parse().map_err(MasterError::from)?;
        let row = self.with_store(move |s| s.volume(&name)).await?;
        Ok(Response::new(volume_info(row)))
    }

    async fn list_volumes(
        &self,
        _req: Request<pb::ListVolumesRequest>,
    ) -> Result<Response<pb::ListVolumesResponse>, Status> {
        let rows = self.with_store(|s| s.volumes()).await?;
        Ok(Response::new(pb::ListVolumesResponse {
            volumes: rows.into_iter().map(volume_info).collect(),
        }))
    }

    async fn commit(
        &self,
        req: Request<pb::CommitRequest>,
    ) -> Result<Response<pb::VersionRecord>, Status> {
        let r = req.into_inner();
        let new = NewVersion {
            volume: r.volume.parse().map_err(MasterError::from)?,
            parent: r.parent,
            root: object_id(&r.root)?,
            message: r.message,
            author: r.author,
            host: r.host,
            time: now_unix(),
        };
        let info = self.with_store(move |s| s.commit(new)).await?;
        tracing::info!(volume = %info.volume, version = %info.version, root = %info.root, "committed");
        Ok(Response::new((&info).into()))
    }

    async fn get_version(
        &self,
        req: Request<pb::GetVersionRequest>,
    ) -> Result<Response<pb::VersionRecord>, Status> {
        let r = req.into_inner();
        let name: VolumeName = r.volume.parse().map_err(MasterError::from)?;
        let info = self
            .with_store(move |s| s.version(&name, r.version))
            .await?;
        Ok(Response::new((&info).into()))
    }

    async fn list_versions(
        &self,
        req: Request<pb::ListVersionsRequest>,
    ) -> Result<Response<pb::ListVersionsResponse>, Status> {
        let name: VolumeName = req.into_inner().volume.parse().map_err(MasterError::from)?;
        let list = self.with_store(move |s| s.versions(&name)).await?;
        Ok(Response::new(pb::ListVersionsResponse {
            versions: list.iter().map(Into::into).collect(),
        }))
    }

    async fn register_node(
        &self,
        req: Request<pb::RegisterNodeRequest>,
    ) -> Result<Response<pb::RegisterNodeResponse>, Status> {
        let r = req.into_inner();
        let id: NodeId = r.node_id.parse().map_err(MasterError::from)?;
        if r.http_addr.is_empty() || r.http_addr.contains('/') {
            return Err(
                MasterError::BadRequest(format!("invalid http_addr {:?}", r.http_addr)).into(),
            );
        }
        let row = NodeRow {
            id: id.clone(),
            http_addr: r.http_addr,
        };
        self.with_store(move |s| s.put_node(&row)).await?;
        self.liveness.register(id.clone(), Instant::now());
        tracing::info!(node = %id, "node registered");
        Ok(Response::new(pb::RegisterNodeResponse {
            heartbeat_interval_ms: self.heartbeat_interval.as_millis() as u64,
        }))
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let r = req.into_inner();
        let id: NodeId = r.node_id.parse().map_err(MasterError::from)?;
        let failed = r
            .copy_failed
            .iter()
            .map(|o| object_id(o))
            .collect::<Result<Vec<_>, _>>()?;
        let now = Instant::now();
        let known = self.liveness.beat(&id, now);
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
        Ok(Response::new(pb::HeartbeatResponse { known, replicate }))
    }

    async fn list_nodes(
        &self,
        _req: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let rows = self.with_store(|s| s.nodes()).await?;
        Ok(Response::new(pb::ListNodesResponse {
            nodes: rows.iter().map(|r| self.node_info(r)).collect(),
        }))
    }

    async fn add_locations(
        &self,
        req: Request<pb::AddLocationsRequest>,
    ) -> Result<Response<pb::AddLocationsResponse>, Status> {
        let r = req.into_inner();
        let node: NodeId = r.node_id.parse().map_err(MasterError::from)?;
        if self.liveness.last_seen(&node).is_none() {
            return Err(MasterError::UnknownNode(node.to_string()).into());
        }
        let objects = r
            .objects
            .iter()
            .map(|o| object_id(o))
            .collect::<Result<Vec<_>, _>>()?;
        let replicator = self.replicator.clone();
        self.with_store(move |s| {
            s.add_locations(&node, &objects)?;
            replicator.announced(&node, &objects);
            Ok(())
        })
        .await?;
        Ok(Response::new(pb::AddLocationsResponse {}))
    }

    async fn locate(
        &self,
        req: Request<pb::LocateRequest>,
    ) -> Result<Response<pb::LocateResponse>, Status> {
        let object = object_id(&req.into_inner().object)?;
        let rows = self.with_store(move |s| {
            let holders = s.holders(&object)?;
            Ok(s.nodes()?
                .into_iter()
                .filter(|n| holders.contains(&n.id))
                .collect::<Vec<_>>())
        });
        let rows = rows.await?;
        Ok(Response::new(pb::LocateResponse {
            holders: rows.iter().map(|r| self.node_info(r)).collect(),
        }))
    }

    type FetchObjectStream = ChunkStream;

    async fn fetch_object(
        &self,
        req: Request<pb::FetchObjectRequest>,
    ) -> Result<Response<Self::FetchObjectStream>, Status> {
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
        let mut last_error = None;
        for holder in self.live_holders(object, exclude).await? {
            match fetch::open_from(&self.http, &holder.id, &holder.http_addr, &object).await {
                Ok((size, stream)) => {
                    let mut resp = Response::new(stream);
                    if let Ok(v) = size.to_string().parse() {
                        resp.metadata_mut().insert(SIZE_METADATA_KEY, v);
                    }
                    return Ok(resp);
                }
                Err(SourceError::Missing) => {
                    tracing::warn!(%object, node = %holder.id, "stale location removed");
                    let node = holder.id.clone();
                    self.with_store(move |s| s.remove_location(&object, &node))
                        .await?;
                }
                Err(SourceError::Failed(e)) => {
                    tracing::warn!(%object, "fetch source failed: {e}");
                    last_error = Some(e);
                }
            }
        }
        Err(match last_error {
            Some(e) => {
                Status::unavailable(format!("object {object}: every holder failed; last: {e}"))
            }
            None => MasterError::NoHolder(object.to_string()).into(),
        })
    }

    type FsckStream = tokio_stream::wrappers::ReceiverStream<Result<pb::FsckEvent, Status>>;

    async fn fsck(
        &self,
        req: Request<pb::FsckRequest>,
    ) -> Result<Response<Self::FsckStream>, Status> {
        let r = req.into_inner();
        let check = Fsck {
            store: self.store.clone(),
            liveness: self.liveness.clone(),
            http: self.http.clone(),
            replication: self.replicator.configured(),
            check_files: r.check_files,
            max_listed: r.max_listed,
        };
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(check.run(tx));
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }
}
