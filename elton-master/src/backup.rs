//! Online backup: a consistent copy of the metadata (one redb read
//! transaction copied into a new file next to the database), streamed to
//! the caller and deleted once sent.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use elton_proto::pb;
use tokio::sync::mpsc;
use tonic::Status;

use crate::MasterError;
use crate::store::MetaStore;

/// Bytes per streamed message (well under the gRPC frame limit).
const CHUNK_BYTES: usize = 1 << 20;

pub type BackupStream = tokio_stream::wrappers::ReceiverStream<Result<pb::BackupChunk, Status>>;

/// Starts copying and streaming; errors (also the copy's) arrive in the
/// stream. The snapshot is taken when this is called: every commit
/// confirmed before it is in the copy.
pub fn start(store: Arc<MetaStore>, data_dir: PathBuf) -> BackupStream {
    let (tx, rx) = mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        if let Err(e) = send(&store, &data_dir, &tx) {
            tracing::warn!("backup: {e}");
            let _ = tx.blocking_send(Err(e.into()));
        }
    });
    BackupStream::new(rx)
}

fn send(
    store: &MetaStore,
    data_dir: &std::path::Path,
    tx: &mpsc::Sender<Result<pb::BackupChunk, Status>>,
) -> Result<(), MasterError> {
    // Removed with everything in it when this returns, sent or not.
    let tmp = tempfile::Builder::new()
        .prefix("backup-")
        .tempdir_in(data_dir)
        .map_err(|e| MasterError::Io(format!("backup space in {}: {e}", data_dir.display())))?;
    let path = tmp.path().join("master.redb");
    let info = store.backup_to(&path)?;
    let mut file = std::fs::File::open(&path)
        .map_err(|e| MasterError::Io(format!("reading the backup copy: {e}")))?;
    let size = file
        .metadata()
        .map_err(|e| MasterError::Io(format!("reading the backup copy: {e}")))?
        .len();
    tracing::info!(
        bytes = size,
        volumes = info.volumes,
        "backup taken; sending"
    );
    let mut first = Some(pb::BackupChunk {
        data: Vec::new(),
        size,
        cluster_id: info.cluster.map(|c| c.to_string()).unwrap_or_default(),
        incarnation: info.incarnation.map(|i| i.to_string()).unwrap_or_default(),
        volumes: info.volumes,
    });
    let mut buf = vec![0u8; CHUNK_BYTES];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| MasterError::Io(format!("reading the backup copy: {e}")))?;
        if n == 0 && first.is_none() {
            return Ok(());
        }
        let mut chunk = first.take().unwrap_or_default();
        chunk.data = buf[..n].to_vec();
        if tx.blocking_send(Ok(chunk)).is_err() {
            // The caller went away; the copy is dropped with `tmp`.
            return Ok(());
        }
        if n == 0 {
            return Ok(());
        }
    }
}
