//! Fetching an object from a peer cluster when no node of this cluster can
//! serve it.
//!
//! The peer streams from its own holders only (the call is marked as a
//! peer call, so it never recurses). The bytes go on to the requesting slave,
//! which verifies, stores and registers them: afterwards the object is local
//! to this cluster and never crosses the WAN again for it. The caller holds
//! the [`Lead`] of the [`crate::coalesce::Coalescer`]; it is released when
//! the transfer fails, or after a grace period following a complete transfer
//! (normally the requester's `AddLocations` settles it much earlier).

use std::sync::Arc;
use std::time::Duration;

use elton_proto::pb::{FetchObjectRequest, ObjectChunk};
use elton_proto::{ObjectId, VolumeName};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::MasterError;
use crate::coalesce::Lead;
use crate::fetch::ChunkStream;
use crate::peers::{PeerFailure, PeerSet};
use crate::remote::RemoteVolumes;
use crate::wan::{Direction, WanStats};

/// How long waiters keep waiting after a complete transfer for the
/// requester to register the object (it verifies and fsyncs it first).
const SETTLE_GRACE: Duration = Duration::from_secs(30);

pub struct CrossFetch {
    peers: Arc<PeerSet>,
    remote: Arc<RemoteVolumes>,
    stats: Arc<WanStats>,
    /// Longest silence tolerated inside a peer's object stream.
    idle: Duration,
}

impl CrossFetch {
    pub fn new(
        peers: Arc<PeerSet>,
        remote: Arc<RemoteVolumes>,
        stats: Arc<WanStats>,
        peer_timeout: Duration,
    ) -> Self {
        Self {
            peers,
            remote,
            stats,
            idle: peer_timeout * 5,
        }
    }

    /// Opens `object` on the first peer that has it: the volume's home
    /// first when known, then the others in configuration order.
    pub async fn open(
        &self,
        lead: Lead,
        object: ObjectId,
        volume: Option<&VolumeName>,
    ) -> Result<(Option<u64>, ChunkStream), MasterError> {
        let home = volume.and_then(|v| self.remote.known_home(v));
        let mut order: Vec<_> = self.peers.all().iter().collect();
        order.sort_by_key(|p| Some(&p.name) != home.as_ref());
        let volume_name = volume.map(|v| v.to_string());
        let mut unreachable = Vec::new();
        for peer in order {
            let req = FetchObjectRequest {
                object: object.as_bytes().to_vec(),
                exclude_node: String::new(),
                volume: volume_name.clone().unwrap_or_default(),
            };
            match self.peers.fetch(peer, req).await {
                Ok((size, stream)) => {
                    tracing::info!(%object, peer = %peer.name, ?size, "fetching from peer cluster");
                    let stream = self.forward(lead, peer.name.clone(), volume_name, size, stream);
                    return Ok((size, stream));
                }
                Err(PeerFailure::NotFound(_)) => {}
                Err(PeerFailure::Unreachable(e)) => {
                    unreachable.push(format!("{} ({e})", peer.name))
                }
                Err(PeerFailure::Status(s)) => {
                    unreachable.push(format!("{} ({})", peer.name, s.message()));
                }
            }
        }
        if unreachable.is_empty() {
            Err(MasterError::NoHolder(object.to_string()))
        } else {
            Err(MasterError::PeersUnreachable {
                what: format!("object {object}"),
                peers: unreachable.join(", "),
            })
        }
    }

    /// Relays the peer's chunks to the requester, counting them, failing on
    /// silence or a short stream (so the requester sees an error, never a
    /// clean end of a partial object), and holding `lead` until settled.
    fn forward(
        &self,
        lead: Lead,
        peer: String,
        volume: Option<String>,
        size: Option<u64>,
        stream: impl futures::Stream<Item = Result<ObjectChunk, Status>> + Send + 'static,
    ) -> ChunkStream {
        let (tx, rx) = mpsc::channel::<Result<ObjectChunk, Status>>(8);
        let stats = self.stats.clone();
        let idle = self.idle;
        tokio::spawn(async move {
            let mut stream = Box::pin(stream);
            let mut received = 0u64;
            let complete = loop {
                let item = match tokio::time::timeout(idle, stream.next()).await {
                    Ok(item) => item,
                    Err(_) => {
                        let _ = tx
                            .send(Err(Status::unavailable(format!(
                                "transfer from peer {peer} stalled for {} s",
                                idle.as_secs()
                            ))))
                            .await;
                        break false;
                    }
                };
                match item {
                    None => break true,
                    Some(Ok(chunk)) => {
                        let n = chunk.data.len() as u64;
                        received += n;
                        stats.bytes(&peer, volume.as_deref(), Direction::In, n);
                        if tx.send(Ok(chunk)).await.is_err() {
                            break false; // the requester went away
                        }
                    }
                    Some(Err(s)) => {
                        stats.set_reachable(&peer, false);
                        let _ = tx
                            .send(Err(Status::unavailable(format!(
                                "transfer from peer {peer} cut after {received} bytes: {}",
                                s.message()
                            ))))
                            .await;
                        break false;
                    }
                }
            };
            let complete = match size {
                Some(s) if complete && s != received => {
                    let _ = tx
                        .send(Err(Status::unavailable(format!(
                            "transfer from peer {peer} ended after {received} of {s} bytes"
                        ))))
                        .await;
                    false
                }
                _ => complete,
            };
            // The finished response still holds its HTTP/2 stream's share of
            // the connection: kept through the grace below, the connection
            // looks busy and keeps pinging the peer over an idle WAN.
            drop(stream);
            drop(tx);
            if complete {
                tokio::time::sleep(SETTLE_GRACE).await;
            }
            drop(lead);
        });
        Box::pin(ReceiverStream::new(rx))
    }
}
