//! Uploads many objects to a slave in a few batch requests
//! (`POST /v1/objects`, framing in [`elton_proto::batch`]): the slave
//! verifies every object, publishes each batch with two filesystem flushes
//! and announces it to the master in one call, instead of an fsync, a
//! request and an announcement per object.

use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use elton_proto::ObjectId;
use elton_proto::batch::{MAX_IDS, decode_ids, encode_ids, header};
use indicatif::ProgressBar;
use tokio::sync::mpsc;

use crate::cli::client::check;

/// Where an object's bytes come from.
pub enum Source {
    /// A whole local file.
    File(PathBuf),
    /// Part of a local file: a chunk of a large one, at this offset.
    Chunk(PathBuf, u64),
    /// Bytes in memory (manifests, recipes).
    Bytes(Vec<u8>),
}

/// One object to upload.
pub struct Item {
    pub id: ObjectId,
    pub size: u64,
    pub source: Source,
}

/// A batch ends when it holds this many bytes or objects: each batch is
/// durable on its own, so an interrupted upload resumes from the last one.
pub const BATCH_BYTES: u64 = 64 << 20;
pub const BATCH_OBJECTS: usize = 4096;
/// Batches in flight at once: one per core of a small machine keeps the
/// slave's hashing busy on both.
pub const PARALLEL_BATCHES: usize = 2;

/// Cuts `sizes` (in upload order) into contiguous batches of at most
/// `max_bytes` bytes (a larger object goes alone) and `max_objects`
/// objects; returns the index ranges.
pub fn plan(sizes: &[u64], max_bytes: u64, max_objects: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0u64;
    for (i, &s) in sizes.iter().enumerate() {
        let full = i > start && (bytes.saturating_add(s) > max_bytes || i - start >= max_objects);
        if full {
            out.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes = bytes.saturating_add(s);
    }
    if start < sizes.len() {
        out.push(start..sizes.len());
    }
    out
}

/// Which of `ids` the slave lacks (`POST /v1/objects/missing` at `url`, at
/// most [`MAX_IDS`] ids a request). The slave answers from the files it
/// holds, so what it lost is sent again. A slave older than this call
/// (`404`/`405`) is taken to lack them all.
pub async fn missing(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    ids: &[ObjectId],
) -> Result<HashSet<ObjectId>> {
    let mut out = HashSet::new();
    for part in ids.chunks(MAX_IDS) {
        let resp = http
            .post(url)
            .bearer_auth(token)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(encode_ids(part))
            .send()
            .await
            .with_context(|| format!("asking {url} which objects it lacks"))?;
        if matches!(
            resp.status(),
            reqwest::StatusCode::NOT_FOUND | reqwest::StatusCode::METHOD_NOT_ALLOWED
        ) {
            return Ok(ids.iter().copied().collect());
        }
        let body = check(resp)
            .await
            .context("asking which objects the slave lacks")?
            .bytes()
            .await
            .context("reading the list of missing objects")?;
        let lacking = decode_ids(&body, part.len())
            .map_err(|e| anyhow!("the slave answered a bad list of missing objects: {e}"))?;
        out.extend(lacking);
    }
    Ok(out)
}

/// Uploads `items`, [`PARALLEL_BATCHES`] batches at a time, in order of
/// completion only within a group: every item of `groups[n]` is stored
/// before any of `groups[n + 1]` is sent, so what a recipe or manifest names
/// is always stored first.
pub async fn upload_groups(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    groups: Vec<Vec<Item>>,
    pb: &ProgressBar,
) -> Result<()> {
    use futures::StreamExt;
    for items in groups {
        let sizes: Vec<u64> = items.iter().map(|i| i.size).collect();
        let ranges = plan(&sizes, BATCH_BYTES, BATCH_OBJECTS);
        let mut items = items.into_iter();
        let batches: Vec<Vec<Item>> = ranges
            .iter()
            .map(|r| items.by_ref().take(r.len()).collect())
            .collect();
        let mut sends = futures::stream::iter(
            batches
                .into_iter()
                .map(|b| send_batch(http, url, token, b, pb.clone())),
        )
        .buffer_unordered(PARALLEL_BATCHES);
        while let Some(r) = sends.next().await {
            r?;
        }
    }
    Ok(())
}

/// The request body is sent in pieces of about this size: one piece per
/// object (two with its header) cost a write system call on each side per
/// object of a few KiB.
const BODY_PIECE: usize = 256 << 10;

/// Sends one batch; its bytes are read from disk by a blocking thread as
/// the request goes out.
async fn send_batch(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    items: Vec<Item>,
    pb: ProgressBar,
) -> Result<()> {
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(8);
    let reader = tokio::task::spawn_blocking(move || {
        let mut piece: Vec<u8> = Vec::with_capacity(BODY_PIECE);
        // False once the request has failed (it says why).
        let send = |bytes: Vec<u8>| tx.blocking_send(Ok(Bytes::from(bytes))).is_ok();
        for item in items {
            let (id, size) = (item.id, item.size);
            let data = match read_item(item) {
                Ok(data) => data,
                Err(e) => {
                    // Break the body off so the slave publishes nothing of it.
                    let _ = tx.blocking_send(Err(std::io::Error::other("read failed")));
                    return Err(e);
                }
            };
            piece.extend_from_slice(&header(&id, size));
            if data.len() < BODY_PIECE {
                piece.extend_from_slice(&data);
            } else {
                // A large object goes as it is, after what came before it.
                let before = std::mem::replace(&mut piece, Vec::with_capacity(BODY_PIECE));
                if !send(before) || !send(data) {
                    return Ok(());
                }
            }
            pb.inc(size);
            if piece.len() >= BODY_PIECE {
                let full = std::mem::replace(&mut piece, Vec::with_capacity(BODY_PIECE));
                if !send(full) {
                    return Ok(());
                }
            }
        }
        if !piece.is_empty() {
            send(piece);
        }
        Ok(())
    });
    let body = reqwest::Body::wrap_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    let sent = http
        .post(url)
        .bearer_auth(token)
        .body(body)
        .send()
        .await
        .with_context(|| format!("uploading a batch to {url}"));
    let read = reader
        .await
        .map_err(|e| anyhow!("batch reader task: {e}"))?;
    read?; // a local read error explains a failed request best
    check(sent?).await.context("uploading a batch")?;
    Ok(())
}

/// An item's bytes, which must be exactly as many as scanned.
fn read_item(item: Item) -> Result<Vec<u8>> {
    let (data, path) = match item.source {
        Source::Bytes(b) => (b, None),
        Source::File(path) => {
            let mut f = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
            // One byte more than expected shows a file that grew.
            let mut data = Vec::with_capacity(item.size as usize + 1);
            (&mut f)
                .take(item.size + 1)
                .read_to_end(&mut data)
                .with_context(|| format!("reading {}", path.display()))?;
            (data, Some(path))
        }
        Source::Chunk(path, offset) => {
            let mut f = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
            // Into memory that is not zeroed first (`read_to_end` on a
            // file fills spare capacity): a zeroed chunk-sized buffer came
            // back as fresh pages, a page fault per 4 KiB read. A short
            // read shows a file that shrank (checked below).
            let mut data = Vec::with_capacity(item.size as usize);
            f.seek(SeekFrom::Start(offset))
                .and_then(|_| (&mut f).take(item.size).read_to_end(&mut data))
                .with_context(|| format!("reading {} at {offset}", path.display()))?;
            (data, Some(path))
        }
    };
    if data.len() as u64 != item.size {
        match path {
            Some(p) => bail!(
                "{} changed while it was being imported ({} bytes, scanned {}): import again",
                p.display(),
                data.len(),
                item.size
            ),
            None => bail!(
                "object {} is {} bytes, expected {}",
                item.id,
                data.len(),
                item.size
            ),
        }
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_respect_both_limits_and_keep_order() {
        assert!(plan(&[], 10, 3).is_empty());
        assert_eq!(plan(&[1, 1, 1, 1, 1], 10, 2), vec![0..2, 2..4, 4..5]);
        assert_eq!(plan(&[4, 4, 4, 4], 10, 100), vec![0..2, 2..4]);
        // An object over the byte limit travels alone.
        assert_eq!(plan(&[1, 50, 1], 10, 100), vec![0..1, 1..2, 2..3]);
        assert_eq!(plan(&[50], 10, 100), vec![0..1]);
    }
}
