//! The objects a reader in a peer cluster needs to reach one path of a
//! version, sent along with the version record.
//!
//! A cold read of `/dir/file` in another cluster used to cost one WAN round
//! trip per object, one after the other: the version record, the root
//! manifest, each directory's manifest, the file's recipe, and only then
//! the first chunk. The home reads them in its own cluster instead (a LAN
//! round trip each, and the manifests of a version just committed are in
//! the validator's cache) and answers them with the record
//! (`VersionRecord.along_path`). The walk is best effort and bounded: it
//! stops at the first object it cannot read, a name that is not there, or
//! its deadline, or the first object beyond its byte budget; the reader
//! fetches whatever is missing as before. Nothing sent needs to be
//! trusted: the receiver keeps only a chain of objects from the record's
//! root, each the object its bytes hash to and named by the one before.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use elton_proto::listing::{self, Step};
use elton_proto::{EntryKind, ObjectId, VolumePath};
use tokio::time::Instant;

/// Bytes of objects sent with one record: a few ordinary manifests and a
/// recipe, well inside a gRPC message (the reader may ask again for what
/// was left out).
pub const ALONG_PATH_BYTES: usize = 2 << 20;
/// How long the home may spend reading them before it answers with what
/// it has: about one WAN round trip, which is what each object saves.
pub const ALONG_PATH_TIME: Duration = Duration::from_millis(250);

/// Where the walk reads verified object bytes from.
pub trait PathSource {
    /// A directory manifest's bytes, verified against `id`.
    fn manifest(&self, id: ObjectId) -> impl Future<Output = Result<Arc<Vec<u8>>, String>> + Send;
    /// A chunked file's recipe's bytes, verified against `id`, refused if
    /// larger than `limit` (what is left of the budget).
    fn recipe(
        &self,
        id: ObjectId,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<u8>, String>> + Send;
}

/// The limits of one walk.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub bytes: usize,
    pub deadline: Instant,
}

impl Budget {
    /// The default limits, from now.
    pub fn standard() -> Self {
        Self {
            bytes: ALONG_PATH_BYTES,
            deadline: Instant::now() + ALONG_PATH_TIME,
        }
    }
}

enum Want {
    Manifest(ObjectId),
    Recipe(ObjectId),
}

/// The bytes of the manifests from `root` down to `path` and, when `path`
/// is a chunked file, of its recipe, in that order, within `budget`.
pub async fn objects_along(
    source: &impl PathSource,
    root: ObjectId,
    path: &VolumePath,
    budget: Budget,
) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut left = budget.bytes;
    let mut names = path.components().iter();
    // A name looked up in a paged directory's index is looked up again in
    // the page the index names (one level: a page is never an index).
    let mut in_page: Option<&String> = None;
    let mut want = Want::Manifest(root);
    loop {
        let read = match want {
            Want::Manifest(id) => {
                tokio::time::timeout_at(budget.deadline, source.manifest(id)).await
            }
            Want::Recipe(id) => {
                tokio::time::timeout_at(budget.deadline, async {
                    source.recipe(id, left).await.map(Arc::new)
                })
                .await
            }
        };
        let bytes = match read {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(e)) => {
                tracing::debug!(%path, "objects along the path: stopped at a read: {e}");
                break;
            }
            Err(_) => {
                tracing::debug!(%path, sent = out.len(), "objects along the path: out of time");
                break;
            }
        };
        // The reader accepts a chain from the root (each object named by
        // the one before), so one that does not fit ends what is sent.
        if bytes.len() > left {
            break;
        }
        left -= bytes.len();
        out.push(bytes.as_ref().clone());
        let Want::Manifest(_) = want else {
            break; // a recipe ends the path
        };
        let paged = in_page.is_some();
        let Some(name) = in_page.take().or_else(|| names.next()) else {
            break;
        };
        // Verified bytes of a manifest this master published.
        want = match listing::step(&bytes, name) {
            Some(Step::Page(id)) if !paged => {
                in_page = Some(name);
                Want::Manifest(id)
            }
            Some(Step::Entry(entry)) => {
                let last = names.len() == 0;
                match (entry.kind, entry.object) {
                    (EntryKind::Dir, Some(id)) => Want::Manifest(id),
                    (EntryKind::File, Some(id)) if last && entry.recipe => Want::Recipe(id),
                    _ => break,
                }
            }
            _ => break,
        };
    }
    out
}

#[cfg(test)]
mod tests;
