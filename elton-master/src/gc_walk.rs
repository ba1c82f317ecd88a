//! The live set of garbage collection: every object some version references
//! (manifests, file objects, recipes and their chunks), found by reading
//! each version's manifests and recipes from live holders of this cluster.
//!
//! Fail-closed: a manifest or recipe that cannot be read (no live holder,
//! bytes that do not verify or decode) stops the walk with the version and
//! path that could not be walked; the caller then deletes nothing. File
//! objects and chunks are only collected, never read: their bytes do not
//! name further objects.

use std::collections::HashSet;
use std::sync::Arc;

use elton_proto::manifest::{EntryKind, MAX_MANIFEST_BYTES};
use elton_proto::paged::{self, Listing};
use elton_proto::recipe::{MAX_RECIPE_BYTES, Recipe};
use elton_proto::{ObjectId, VersionInfo};

use crate::MasterError;
use crate::walk::Walker;

pub struct LiveSet {
    reader: Walker,
    objects: HashSet<ObjectId>,
    /// Manifests and recipes whose contents were collected. Kept apart
    /// from `objects`: the same bytes may also be some file's content (a
    /// manifest's bytes committed as a file), and a file's id in the live
    /// set says nothing about the objects the bytes name.
    expanded: HashSet<ObjectId>,
    /// (volume, version) already walked, so a re-walk visits only new ones.
    versions: HashSet<(String, u64)>,
}

impl LiveSet {
    pub fn new(reader: Walker) -> Self {
        Self {
            reader,
            objects: HashSet::new(),
            expanded: HashSet::new(),
            versions: HashSet::new(),
        }
    }

    pub fn objects(&self) -> &HashSet<ObjectId> {
        &self.objects
    }

    pub fn versions_walked(&self) -> u64 {
        self.versions.len() as u64
    }

    pub fn has_walked(&self, v: &VersionInfo) -> bool {
        self.versions
            .contains(&(v.volume.to_string(), v.version.get()))
    }

    /// Adds everything `v` references. Subtrees already collected (shared
    /// with a version walked before) are not read again.
    pub async fn walk(&mut self, v: &VersionInfo) -> Result<(), MasterError> {
        if self.has_walked(v) {
            return Ok(());
        }
        let unwalkable =
            |path: String, object: ObjectId, reason: String| MasterError::GcUnwalkable {
                volume: v.volume.to_string(),
                version: v.version.get(),
                path: if path.is_empty() { "/".into() } else { path },
                object: object.to_string(),
                reason,
            };
        let mut stack = vec![(v.root, String::new())];
        while let Some((dir, path)) = stack.pop() {
            if self.expanded.contains(&dir) {
                continue;
            }
            let listing = match self.reader.read_object(dir, MAX_MANIFEST_BYTES).await? {
                Ok(bytes) => {
                    paged::decode_dir(&bytes).map_err(|e| format!("manifest does not decode: {e}"))
                }
                Err(reason) => Err(reason),
            }
            .map_err(|reason| unwalkable(path.clone(), dir, reason))?;
            let manifest = match listing {
                Listing::Whole(manifest) => manifest,
                // A paged directory: its pages are live, and hold its
                // entries.
                Listing::Paged(index) => {
                    stack.extend(index.pages.iter().map(|r| (r.manifest, path.clone())));
                    self.objects.insert(dir);
                    self.expanded.insert(dir);
                    continue;
                }
            };
            for e in &manifest.entries {
                let Some(object) = e.object else { continue };
                let entry_path = format!("{path}{}", e.name);
                match e.kind {
                    EntryKind::Dir => stack.push((object, format!("{entry_path}/"))),
                    EntryKind::File if e.recipe => {
                        if !self.expanded.contains(&object) {
                            let chunks = self
                                .recipe_chunks(object)
                                .await?
                                .map_err(|reason| unwalkable(entry_path, object, reason))?;
                            self.objects.extend(chunks);
                            self.objects.insert(object);
                            self.expanded.insert(object);
                        }
                    }
                    EntryKind::File | EntryKind::Symlink => {
                        self.objects.insert(object);
                    }
                }
            }
            self.objects.insert(dir);
            self.expanded.insert(dir);
        }
        self.versions
            .insert((v.volume.to_string(), v.version.get()));
        Ok(())
    }

    async fn recipe_chunks(
        &self,
        id: ObjectId,
    ) -> Result<Result<Vec<ObjectId>, String>, MasterError> {
        Ok(match self.reader.read_object(id, MAX_RECIPE_BYTES).await? {
            Ok(bytes) => Recipe::decode(&bytes)
                .map(|r| r.chunks.iter().map(|c| c.object).collect())
                .map_err(|e| format!("recipe does not decode: {e}")),
            Err(reason) => Err(reason),
        })
    }
}

/// Builds a reader for [`LiveSet`] over the live slaves of the cluster.
pub fn reader(
    store: Arc<crate::store::MetaStore>,
    http: reqwest::Client,
    live: std::collections::HashMap<elton_proto::NodeId, String>,
) -> Walker {
    Walker::new(store, http, live, false)
}
