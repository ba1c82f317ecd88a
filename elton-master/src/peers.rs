//! Calls to peer masters over the WAN.
//!
//! Every call goes over mutual TLS: this master presents its certificate and
//! trusts only the peer's CA (an insecure master calls in clear and sends
//! `x-elton-peer: <our cluster>` instead). The peer answers from its own
//! state only, so calls never loop. Every call has a short deadline and is
//! counted in [`WanStats`]. Connections are made lazily and re-made after a
//! failure, so a link that comes back is used again without a restart.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use elton_proto::pb::master_client::MasterClient;
use elton_proto::pb::{self, ObjectChunk};
use elton_proto::{PEER_METADATA_KEY, VolumePath};
use futures::Stream;
use prost::Message;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status};

use crate::config::PeerConfig;
use crate::provision::Identity;
use crate::wan::{Direction, WanStats};
use crate::{MasterConfig, MasterError};

/// Same bound as the master's own server.
const MAX_MESSAGE_BYTES: usize = 16 << 20;
/// Receive window per object stream from a peer.
const PEER_STREAM_WINDOW: u32 = 8 << 20;

pub struct Peer {
    pub name: String,
    pub url: String,
    endpoint: Endpoint,
    /// Replaced by a fresh lazy channel after a call times out: a connection
    /// into a black hole is never reported closed, and would otherwise make
    /// every later call wait out its deadline until TCP gives up.
    client: Mutex<MasterClient<Channel>>,
    /// Connections for object transfers, taken in turn: one HTTP/2
    /// connection is driven by one task, so parallel transfers over a single
    /// connection share one core in each master. Replaced with `client`.
    transfers: Mutex<Vec<MasterClient<Channel>>>,
    next_transfer: AtomicUsize,
}

impl Peer {
    fn client(&self) -> MasterClient<Channel> {
        self.client
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn transfer_client(&self) -> MasterClient<Channel> {
        let transfers = self.transfers.lock().unwrap_or_else(|p| p.into_inner());
        let i = self.next_transfer.fetch_add(1, Ordering::Relaxed) % transfers.len();
        transfers[i].clone()
    }

    fn reconnect(&self) {
        *self.client.lock().unwrap_or_else(|p| p.into_inner()) = new_client(&self.endpoint);
        *self.transfers.lock().unwrap_or_else(|p| p.into_inner()) =
            transfer_clients(&self.endpoint);
    }
}

/// What a peer's answer means for the caller.
#[derive(Debug)]
pub enum PeerFailure {
    /// The peer answered: not there (`NOT_FOUND`).
    NotFound(String),
    /// The peer answered with another error; passed on unchanged.
    Status(Status),
    /// No answer in time, or the connection failed.
    Unreachable(String),
}

pub struct PeerSet {
    cluster: String,
    timeout: Duration,
    peers: Vec<Peer>,
    stats: Arc<WanStats>,
}

impl PeerSet {
    pub fn new(
        config: &MasterConfig,
        stats: Arc<WanStats>,
        identity: &Identity,
    ) -> Result<Self, MasterError> {
        let peers = config
            .peers
            .iter()
            .map(|p| connect(p, config.peer_timeout, identity.peer_client_tls(&p.name)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            cluster: config.cluster_name().to_string(),
            timeout: config.peer_timeout,
            peers,
            stats,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    pub fn all(&self) -> &[Peer] {
        &self.peers
    }

    pub fn get(&self, name: &str) -> Option<&Peer> {
        self.peers.iter().find(|p| p.name == name)
    }

    pub fn stats(&self) -> &WanStats {
        &self.stats
    }

    fn request<T>(&self, msg: T) -> Request<T> {
        let mut req = Request::new(msg);
        if let Ok(v) = MetadataValue::try_from(self.cluster.as_str()) {
            req.metadata_mut().insert(PEER_METADATA_KEY, v);
        }
        req.set_timeout(self.timeout);
        req
    }

    /// One unary call with the deadline enforced here too (the deadline
    /// header only bounds the server side).
    async fn unary<Req, Resp, F, Fut>(
        &self,
        peer: &Peer,
        msg: Req,
        call: F,
    ) -> Result<Resp, PeerFailure>
    where
        Req: Message,
        Resp: Message,
        F: FnOnce(MasterClient<Channel>, Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        self.stats.request(&peer.name, Direction::Out);
        self.stats
            .bytes(&peer.name, None, Direction::Out, msg.encoded_len() as u64);
        let req = self.request(msg);
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(self.timeout, call(peer.client(), req)).await;
        tracing::debug!(peer = %peer.name, call = std::any::type_name::<Req>(),
            ms = started.elapsed().as_secs_f64() * 1e3, "peer call answered");
        let result = match result {
            Ok(r) => r,
            Err(_) => Err(self.timed_out(peer)),
        };
        match result {
            Ok(resp) => {
                let resp = resp.into_inner();
                self.stats.set_reachable(&peer.name, true);
                self.stats
                    .bytes(&peer.name, None, Direction::In, resp.encoded_len() as u64);
                Ok(resp)
            }
            Err(s) => Err(self.failure(peer, s)),
        }
    }

    fn timed_out(&self, peer: &Peer) -> Status {
        peer.reconnect();
        Status::deadline_exceeded(format!("no answer within {} ms", self.timeout.as_millis()))
    }

    fn failure(&self, peer: &Peer, s: Status) -> PeerFailure {
        match s.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
                self.stats.set_reachable(&peer.name, false);
                tracing::warn!(peer = %peer.name, "peer unreachable: {}", s.message());
                PeerFailure::Unreachable(s.message().to_string())
            }
            Code::NotFound => {
                self.stats.set_reachable(&peer.name, true);
                PeerFailure::NotFound(s.message().to_string())
            }
            _ => {
                self.stats.set_reachable(&peer.name, true);
                PeerFailure::Status(s)
            }
        }
    }

    pub async fn get_volume(&self, peer: &Peer, name: &str) -> Result<pb::VolumeInfo, PeerFailure> {
        let msg = pb::GetVolumeRequest { name: name.into() };
        self.unary(peer, msg, |mut c, r| async move { c.get_volume(r).await })
            .await
    }

    /// The volumes `peer` homes.
    pub async fn list_volumes(&self, peer: &Peer) -> Result<Vec<pb::VolumeInfo>, PeerFailure> {
        let msg = pb::ListVolumesRequest {};
        self.unary(peer, msg, |mut c, r| async move { c.list_volumes(r).await })
            .await
            .map(|r| r.volumes)
    }

    /// A version record; with `read_path`, the home sends the objects on
    /// that path along (`VersionRecord.along_path`).
    pub async fn get_version(
        &self,
        peer: &Peer,
        volume: &str,
        version: u64,
        read_path: Option<&VolumePath>,
    ) -> Result<pb::VersionRecord, PeerFailure> {
        let msg = pb::GetVersionRequest {
            volume: volume.into(),
            version,
            read_path: read_path.map(ToString::to_string),
        };
        self.unary(peer, msg, |mut c, r| async move { c.get_version(r).await })
            .await
    }

    pub async fn list_versions(
        &self,
        peer: &Peer,
        volume: &str,
    ) -> Result<pb::ListVersionsResponse, PeerFailure> {
        let msg = pb::ListVersionsRequest {
            volume: volume.into(),
        };
        self.unary(
            peer,
            msg,
            |mut c, r| async move { c.list_versions(r).await },
        )
        .await
    }

    pub async fn commit(
        &self,
        peer: &Peer,
        msg: pb::CommitRequest,
    ) -> Result<pb::VersionRecord, PeerFailure> {
        self.unary(peer, msg, |mut c, r| async move { c.commit(r).await })
            .await
    }

    /// Opens an object stream on `peer` (its local holders only). Returns
    /// the announced size and the chunks; byte accounting is the caller's,
    /// as it knows when the stream really ends.
    pub async fn fetch(
        &self,
        peer: &Peer,
        msg: pb::FetchObjectRequest,
    ) -> Result<
        (
            Option<u64>,
            impl Stream<Item = Result<ObjectChunk, Status>> + use<>,
        ),
        PeerFailure,
    > {
        self.stats.request(&peer.name, Direction::Out);
        self.stats
            .bytes(&peer.name, None, Direction::Out, msg.encoded_len() as u64);
        let req = self.request(msg);
        let mut client = peer.transfer_client();
        let started = std::time::Instant::now();
        let opened = tokio::time::timeout(self.timeout, client.fetch_object(req)).await;
        tracing::debug!(peer = %peer.name, ms = started.elapsed().as_secs_f64() * 1e3,
            "peer object stream opened");
        let opened = match opened {
            Ok(r) => r,
            Err(_) => Err(self.timed_out(peer)),
        };
        match opened {
            Ok(resp) => {
                self.stats.set_reachable(&peer.name, true);
                let size = elton_proto::announced_size(resp.metadata());
                Ok((size, resp.into_inner()))
            }
            Err(s) => Err(self.failure(peer, s)),
        }
    }
}

fn connect(
    p: &PeerConfig,
    timeout: Duration,
    tls: Option<ClientTlsConfig>,
) -> Result<Peer, MasterError> {
    let mut endpoint = Endpoint::from_shared(p.url.clone())
        .map_err(|e| MasterError::BadRequest(format!("peer {} URL {:?}: {e}", p.name, p.url)))?;
    if let Some(tls) = tls {
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| MasterError::BadRequest(format!("peer {} TLS: {e}", p.name)))?;
    }
    let endpoint = endpoint
        .connect_timeout(timeout)
        .tcp_nodelay(true)
        .max_frame_size(elton_proto::GRPC_MAX_FRAME_BYTES)
        // Pings only while a stream is open: an idle link costs no bytes,
        // and a transfer over a dead link fails instead of hanging. The ack
        // may queue behind data on a slow, busy link, hence the long wait.
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(timeout * 5)
        .keep_alive_while_idle(false)
        // HTTP/2's default 64 KiB window allows one window per round trip:
        // far below a WAN's bandwidth-delay product.
        .initial_stream_window_size(PEER_STREAM_WINDOW)
        .initial_connection_window_size(PEER_STREAM_WINDOW * 2);
    Ok(Peer {
        name: p.name.clone(),
        url: p.url.clone(),
        client: Mutex::new(new_client(&endpoint)),
        transfers: Mutex::new(transfer_clients(&endpoint)),
        next_transfer: AtomicUsize::new(0),
        endpoint,
    })
}

fn new_client(endpoint: &Endpoint) -> MasterClient<Channel> {
    MasterClient::new(endpoint.connect_lazy())
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

fn transfer_clients(endpoint: &Endpoint) -> Vec<MasterClient<Channel>> {
    (0..elton_proto::TRANSFER_CONNECTIONS)
        .map(|_| new_client(endpoint))
        .collect()
}
