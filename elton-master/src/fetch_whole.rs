//! Whole-object reads from one holder at a time, for the commit validator
//! ([`crate::validate`]), which reads small manifests and recipes under its
//! own per-holder deadline and verifies them itself. Relaying an object to
//! a requester, with failover between holders, is [`crate::fetch`].

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use elton_proto::pb::ObjectChunk;
use elton_proto::{LOCAL_ONLY_HEADER, NodeId, ObjectId};
use futures::{FutureExt, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::MasterError;
use crate::nodes::Liveness;
use crate::store::{MetaStore, NodeRow};

/// Largest `ObjectChunk` assembled from what a holder has already sent.
const MAX_CHUNK: usize = 1 << 20;

type ChunkStream = Pin<Box<dyn Stream<Item = Result<ObjectChunk, Status>> + Send>>;

pub enum SourceError {
    /// The holder no longer has the object: its location is stale.
    Missing,
    /// Unreachable, or an error status: try another holder.
    Failed(String),
}

/// The registered holders of `object` that are up, but `exclude`: the
/// nodes worth asking for its bytes.
pub async fn live_holders(
    store: &Arc<MetaStore>,
    liveness: &Liveness,
    object: ObjectId,
    exclude: Option<&NodeId>,
) -> Result<Vec<NodeRow>, MasterError> {
    let (holders, nodes) =
        crate::store::blocking(store, move |s| Ok((s.holders(&object)?, s.nodes()?))).await?;
    let now = Instant::now();
    Ok(nodes
        .into_iter()
        .filter(|n| holders.contains(&n.id))
        .filter(|n| Some(&n.id) != exclude)
        .filter(|n| liveness.is_up(&n.id, now))
        .collect())
}

/// Opens the object on one holder; returns its size and a stream of chunks.
pub async fn open_from(
    client: &reqwest::Client,
    node: &NodeId,
    http_addr: &str,
    object: &ObjectId,
) -> Result<(u64, ChunkStream), SourceError> {
    let url = format!("http://{http_addr}/v1/objects/{object}");
    let resp = client
        .get(&url)
        .header(LOCAL_ONLY_HEADER, "1")
        .send()
        .await
        .map_err(|e| SourceError::Failed(format!("{node}: {e}")))?;
    match resp.status() {
        s if s.is_success() => {}
        reqwest::StatusCode::NOT_FOUND => return Err(SourceError::Missing),
        s => return Err(SourceError::Failed(format!("{node}: HTTP {s}"))),
    }
    let size = resp
        .content_length()
        .ok_or_else(|| SourceError::Failed(format!("{node}: no Content-Length")))?;
    let (tx, rx) = mpsc::channel::<Result<ObjectChunk, Status>>(8);
    let mut body = resp.bytes_stream();
    let node = node.clone();
    tokio::spawn(async move {
        let mut ended = false;
        while !ended {
            let first = match body.next().await {
                Some(Ok(data)) => data,
                Some(Err(e)) => {
                    let _ = tx
                        .send(Err(Status::unavailable(format!(
                            "reading from {node}: {e}"
                        ))))
                        .await;
                    return;
                }
                None => return,
            };
            // Whatever else has already arrived goes in the same message:
            // fewer, larger messages relay faster. A frame that is alone is
            // passed on without a copy.
            let mut failure = None;
            let mut joined: Option<BytesMut> = None;
            while joined.as_ref().map_or(first.len(), BytesMut::len) < MAX_CHUNK {
                match body.next().now_or_never() {
                    Some(Some(Ok(more))) => joined
                        .get_or_insert_with(|| {
                            let mut b = BytesMut::with_capacity(MAX_CHUNK);
                            b.extend_from_slice(&first);
                            b
                        })
                        .extend_from_slice(&more),
                    Some(Some(Err(e))) => {
                        failure = Some(format!("reading from {node}: {e}"));
                        break;
                    }
                    Some(None) => {
                        ended = true;
                        break;
                    }
                    None => break,
                }
            }
            let data = joined.map_or(first, BytesMut::freeze);
            if tx.send(Ok(ObjectChunk { data })).await.is_err() {
                return;
            }
            if let Some(e) = failure {
                let _ = tx.send(Err(Status::unavailable(e))).await;
                return;
            }
        }
    });
    Ok((size, Box::pin(ReceiverStream::new(rx))))
}
