//! Batch uploads (`POST /v1/objects`): many objects in one request body
//! (framing in [`elton_proto::batch`]), each verified against its id as it
//! arrives and published together with [`ObjectStore::publish_batch`], so
//! a batch costs two flushes of the filesystem rather than two per object.
//! Nothing is published unless the whole body arrived and every object in
//! it verified.

use std::sync::Arc;

use bytes::Bytes;
use elton_proto::ObjectId;
use elton_proto::batch::{BatchError, Decoder, Event};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;

use crate::SlaveError;
use crate::store::{BatchWriter, ObjectStore, Staged};

/// What a batch stored.
#[derive(Debug, Default, serde::Serialize)]
pub struct Receipt {
    /// Every object of the batch, in order: all are stored now.
    #[serde(skip)]
    pub ids: Vec<ObjectId>,
    /// How many objects the batch held.
    pub objects: u64,
    /// How many of them this batch added (the others were already stored).
    pub added: u64,
    /// The bytes of all its objects.
    pub bytes: u64,
}

impl From<BatchError> for SlaveError {
    fn from(e: BatchError) -> Self {
        match e {
            BatchError::TooLarge { limit, .. } => Self::TooLarge(limit),
            e @ (BatchError::Truncated(_)
            | BatchError::Ragged(_)
            | BatchError::TooManyIds { .. }) => Self::BadRequest(e.to_string()),
        }
    }
}

/// Streams a batch body into the store; `limit` bounds each object.
pub async fn ingest<S, E>(
    store: &Arc<ObjectStore>,
    mut body: S,
    limit: u64,
) -> Result<Receipt, SlaveError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    // `None` tells the writer the transfer failed: publish nothing.
    let (tx, mut rx) = mpsc::channel::<Option<Bytes>>(16);
    let store = store.clone();
    // Parsing, hashing and writing run off the async threads.
    let writer = tokio::task::spawn_blocking(move || {
        let mut decoder = Decoder::new(limit);
        let mut state = Writing {
            store: &store,
            current: None,
            staged: Vec::new(),
            bytes: 0,
        };
        while let Some(chunk) = rx.blocking_recv() {
            let Some(chunk) = chunk else {
                return Err(SlaveError::Transfer("the batch body broke off".into()));
            };
            decoder.feed::<SlaveError>(&chunk, &mut |e| state.on(e))?;
        }
        decoder.finish()?;
        let ids: Vec<ObjectId> = state.staged.iter().map(Staged::id).collect();
        let bytes = state.bytes;
        let added = store.publish_batch(state.staged)?;
        Ok::<_, SlaveError>(Receipt {
            objects: ids.len() as u64,
            added: added.len() as u64,
            ids,
            bytes,
        })
    });
    let mut failure = None;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(chunk) => {
                if tx.send(Some(chunk)).await.is_err() {
                    break; // the writer failed; its error is reported below
                }
            }
            Err(e) => {
                failure = Some(SlaveError::Transfer(e.to_string()));
                break;
            }
        }
    }
    if let Some(f) = failure {
        let _ = tx.send(None).await;
        drop(tx);
        let _ = writer.await; // it publishes nothing; its temp files go
        return Err(f);
    }
    drop(tx);
    writer
        .await
        .map_err(|e| SlaveError::Io(format!("batch writer task: {e}")))?
}

/// The ids of `ids` the store does not hold, in order. Each one it holds
/// is marked used ([`ObjectStore::note_used`]): the client will not send
/// it again and relies on it for its commit, so garbage collection must
/// keep it. Only the files in `objects/` count, never what the master
/// believes: a re-import puts back what a slave lost. Blocking.
pub fn missing(store: &ObjectStore, ids: Vec<ObjectId>) -> Vec<ObjectId> {
    ids.into_iter().filter(|id| !store.note_used(id)).collect()
}

/// The writer's state between events.
struct Writing<'a> {
    store: &'a ObjectStore,
    current: Option<(ObjectId, BatchWriter)>,
    staged: Vec<Staged>,
    bytes: u64,
}

impl Writing<'_> {
    fn on(&mut self, e: Event<'_>) -> Result<(), SlaveError> {
        match e {
            Event::Begin { id, .. } => {
                self.current = Some((id, self.store.batch_writer()?));
            }
            Event::Data(b) => {
                if let Some((_, w)) = &mut self.current {
                    w.write(b)?;
                    self.bytes += b.len() as u64;
                }
            }
            Event::End => {
                if let Some((id, w)) = self.current.take() {
                    self.staged.push(w.finish(id)?);
                }
            }
        }
        Ok(())
    }
}
