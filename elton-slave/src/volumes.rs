//! Volume-level operations on a slave: resolving `volume/version/path` to
//! manifests and objects, and publishing new versions through the master.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use elton_proto::listing::{Strictness, encode_dir, load_dir_async};
use elton_proto::pb::{CommitRequest, GetVersionRequest, LocateRequest};
use elton_proto::{
    DirManifest, Entry, EntryKind, FetchError, ObjectId, ProtoError, Recipe, TreeError, TreeSource,
    Version, VersionInfo, VolumeName, VolumePath, validate_tree,
};
use futures::{StreamExt, TryStreamExt};

use crate::SlaveError;
use crate::along_path::chain_along;
use crate::fetcher::Fetcher;
use crate::master_link::MasterLink;
use crate::tokens::Bearer;

/// Decoded manifests kept in memory; they never change, so no invalidation.
const MANIFEST_CACHE_ENTRIES: usize = 4096;
/// Decoded recipes kept in memory (immutable too).
const RECIPE_CACHE_ENTRIES: usize = 1024;

/// Wait before asking the master a second time, when a cached record is
/// about to be served because it did not answer.
const STALE_RETRY_DELAY: std::time::Duration = std::time::Duration::from_millis(200);

/// Bytes of new manifests sent with a commit, for the master's check
/// (`CommitRequest.manifests`): a commit of 100 changed large directories
/// sends about 1.2 MB; a first import of a large tree, what fits.
const MANIFESTS_SENT_BYTES: usize = 2 << 20;

/// Locate calls in flight at once while a commit's objects are checked.
const PARALLEL_LOCATES: usize = 16;

/// What a path names inside a version.
pub enum Resolved {
    Dir {
        id: ObjectId,
        manifest: Arc<DirManifest>,
    },
    File(Entry),
    Symlink(Entry),
}

/// A file's content as stored for [`Volumes::put_file`].
pub struct StoredFile {
    /// The file's object, or its recipe when `recipe`.
    pub object: ObjectId,
    pub size: u64,
    pub recipe: bool,
}

impl StoredFile {
    pub fn whole(object: ObjectId, size: u64) -> Self {
        Self {
            object,
            size,
            recipe: false,
        }
    }

    pub fn chunked(recipe: ObjectId, size: u64) -> Self {
        Self {
            object: recipe,
            size,
            recipe: true,
        }
    }
}

/// Pages of one directory read at once.
const PARALLEL_PAGE_READS: usize = 16;

/// Reading a directory: the fetch failed, or what it read does not decode.
enum ReadError {
    Fetch(SlaveError),
    Decode(ProtoError),
}

impl From<ProtoError> for ReadError {
    fn from(e: ProtoError) -> Self {
        Self::Decode(e)
    }
}

pub struct Volumes {
    fetcher: Arc<Fetcher>,
    link: MasterLink,
    manifests: Mutex<HashMap<ObjectId, Arc<DirManifest>>>,
    recipes: Mutex<HashMap<ObjectId, Arc<Recipe>>>,
}

/// A version record and the incarnation of the metadata that issued it;
/// in JSON, the record's fields plus `incarnation`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Issued {
    #[serde(flatten)]
    pub info: VersionInfo,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub incarnation: String,
}

/// A version to publish.
pub struct Proposal {
    pub volume: VolumeName,
    pub parent: u64,
    pub root: ObjectId,
    pub message: String,
    pub author: String,
    pub host: String,
    /// The writer's token, relayed: the master decides whether it may
    /// commit.
    pub bearer: Bearer,
    /// The incarnation the writer read `parent` from, when it says; else
    /// the one of the parent record this slave checks the tree against.
    /// The master refuses the commit if it is not its own.
    pub incarnation: Option<String>,
    /// What the writer stored here for this commit, when it says; without
    /// it this slave checks the tree itself to learn that.
    pub stored: Option<Stored>,
}

/// The objects a writer that stages straight into this slave's store (a
/// mount) stored for one commit (`POST …/versions`, `stored` and
/// `manifests`). With it, the master's check is the tree's only one:
/// this slave announces what of it it really holds (each id is looked
/// up) and sends the new manifests' bytes along, read and hashed here.
/// Nothing in it is believed beyond that: the master checks the whole
/// change, as it does for any commit.
#[derive(Debug, Default)]
pub struct Stored {
    /// Every object the new tree's changed entries name, manifests
    /// included.
    pub objects: Vec<ObjectId>,
    /// The new directory manifests (pages and indexes among them).
    pub manifests: Vec<ObjectId>,
}

impl Volumes {
    pub fn new(fetcher: Arc<Fetcher>, link: MasterLink) -> Self {
        Self {
            fetcher,
            link,
            manifests: Mutex::new(HashMap::new()),
            recipes: Mutex::new(HashMap::new()),
        }
    }

    /// See [`crate::incarnation::VersionCache::incarnation_changes`].
    /// The link to the master (the web view's queries).
    pub fn link(&self) -> &MasterLink {
        &self.link
    }

    pub fn master_incarnation_changes(&self) -> u64 {
        self.link.versions().incarnation_changes()
    }

    /// Tells the master this node holds `ids`.
    pub async fn announce(&self, ids: Vec<ObjectId>) -> Result<(), SlaveError> {
        self.link.announce(ids).await
    }

    /// A numbered version's record.
    pub async fn version(
        &self,
        volume: &VolumeName,
        v: Version,
    ) -> Result<VersionInfo, SlaveError> {
        Ok(self.version_record(volume, v).await?.info)
    }

    /// A numbered version's record and the incarnation of the metadata
    /// that issued it. Cached (a record never changes within an
    /// incarnation; see [`crate::incarnation`]); a cached record is asked
    /// for again while the master's answers are not confirmed, and used
    /// only if the master cannot be reached.
    pub async fn version_record(
        &self,
        volume: &VolumeName,
        v: Version,
    ) -> Result<Issued, SlaveError> {
        self.version_record_for(volume, v, None).await
    }

    /// As [`Self::version_record`], for a read of `path` in that version:
    /// a record not cached here is asked for with the path, so that for a
    /// volume homed in another cluster the home sends the manifests and
    /// recipe on the way along with it (one WAN round trip instead of one
    /// per object; see `GetVersionRequest.read_path`).
    pub async fn version_record_for(
        &self,
        volume: &VolumeName,
        v: Version,
        path: Option<&VolumePath>,
    ) -> Result<Issued, SlaveError> {
        let cache = self.link.versions();
        let stale = match cache.get(volume, v) {
            Some(hit) if hit.confirmed => {
                return Ok(Issued {
                    info: hit.info,
                    incarnation: hit.incarnation,
                });
            }
            stale => stale,
        };
        let mut fetched = self.fetch_record(volume, v.get(), path).await;
        if stale.is_some() && matches!(fetched, Err(SlaveError::MasterUnavailable(_))) {
            // A connection broken by the master's restart fails the first
            // call; the next one reconnects. Before serving from the cache,
            // make sure the master is really unreachable, not just back
            // under a new incarnation.
            tokio::time::sleep(STALE_RETRY_DELAY).await;
            fetched = self.fetch_record(volume, v.get(), path).await;
        }
        match fetched {
            Ok(issued) => {
                cache.put(&issued.incarnation, &issued.info);
                Ok(issued)
            }
            Err(SlaveError::MasterUnavailable(e)) => match stale {
                // The master cannot be reached: it cannot have told anyone
                // else of another tree under this number either.
                Some(hit) => {
                    tracing::debug!(%volume, version = %v, "master unreachable ({e}); \
                        serving the cached record");
                    Ok(Issued {
                        info: hit.info,
                        incarnation: hit.incarnation,
                    })
                }
                None => Err(SlaveError::MasterUnavailable(e)),
            },
            Err(e) => Err(e),
        }
    }

    /// The head's record; `None` while the volume has no version.
    pub async fn head(&self, volume: &VolumeName) -> Result<Option<Issued>, SlaveError> {
        match self.fetch_record(volume, 0, None).await {
            Ok(issued) => {
                self.link.versions().seen(&issued.incarnation, volume);
                Ok(Some(issued))
            }
            Err(SlaveError::NotFound(msg)) if msg.contains("has no version yet") => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn fetch_record(
        &self,
        volume: &VolumeName,
        v: u64,
        path: Option<&VolumePath>,
    ) -> Result<Issued, SlaveError> {
        let req = GetVersionRequest {
            volume: volume.to_string(),
            version: v,
            read_path: path.map(VolumePath::to_string),
        };
        let mut record = self.link.client().get_version(req).await?.into_inner();
        let along = std::mem::take(&mut record.along_path);
        let incarnation = record.incarnation.clone();
        let info = VersionInfo::try_from(record)
            .map_err(|e| SlaveError::Master(format!("bad version record: {e}")))?;
        if let Some(path) = path.filter(|_| !along.is_empty()) {
            self.adopt_along(info.root, path.clone(), along).await;
        }
        Ok(Issued { info, incarnation })
    }

    /// Keeps the chain of objects sent with a record for `path` (hashed
    /// on the blocking pool: up to a few MiB).
    async fn adopt_along(&self, root: ObjectId, path: VolumePath, along: Vec<Vec<u8>>) {
        let chain = tokio::task::spawn_blocking(move || chain_along(root, &path, along)).await;
        for (id, bytes) in chain.unwrap_or_default() {
            self.fetcher.adopt(id, bytes);
        }
    }

    pub async fn manifest(&self, id: ObjectId) -> Result<Arc<DirManifest>, SlaveError> {
        self.read_manifest(id)
            .await?
            .map_err(|e| SlaveError::BadRequest(format!("manifest {id}: {e}")))
    }

    /// A chunked file's recipe, read through the fetcher (verified) and
    /// decoded; a recipe whose sizes do not add up is refused.
    pub async fn recipe(&self, id: ObjectId) -> Result<Arc<Recipe>, SlaveError> {
        self.read_recipe(id)
            .await?
            .map_err(|e| SlaveError::BadRequest(format!("recipe {id}: {e}")))
    }

    /// The outer error is the fetch's, the inner one the decoding's: the
    /// tree check reports a malformed manifest against the entry naming it.
    /// A paged directory's pages are read concurrently and assembled.
    async fn read_manifest(
        &self,
        id: ObjectId,
    ) -> Result<Result<Arc<DirManifest>, ProtoError>, SlaveError> {
        if let Some(v) = self
            .manifests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
        {
            return Ok(Ok(v.clone()));
        }
        let bytes = self.fetcher.read(id).await?;
        let read_pages = |ids: Vec<ObjectId>| async move {
            futures::stream::iter(ids.into_iter().map(|p| self.fetcher.read(p)))
                .buffered(PARALLEL_PAGE_READS)
                .try_collect::<Vec<_>>()
                .await
                .map_err(ReadError::Fetch)
        };
        let v = match load_dir_async(&bytes, Strictness::Canonical, read_pages).await {
            Ok(loaded) => Arc::new(loaded.manifest),
            Err(ReadError::Fetch(e)) => return Err(e),
            Err(ReadError::Decode(e)) => return Ok(Err(e)),
        };
        let mut cache = self.manifests.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MANIFEST_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(id, v.clone());
        Ok(Ok(v))
    }

    async fn read_recipe(
        &self,
        id: ObjectId,
    ) -> Result<Result<Arc<Recipe>, ProtoError>, SlaveError> {
        self.read_decoded(&self.recipes, RECIPE_CACHE_ENTRIES, id, Recipe::decode)
            .await
    }

    /// An immutable object read through the fetcher (verified) and decoded,
    /// from `cache` when there; the cache is emptied when it reaches `cap`.
    async fn read_decoded<T>(
        &self,
        cache: &Mutex<HashMap<ObjectId, Arc<T>>>,
        cap: usize,
        id: ObjectId,
        decode: fn(&[u8]) -> Result<T, ProtoError>,
    ) -> Result<Result<Arc<T>, ProtoError>, SlaveError> {
        if let Some(v) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&id) {
            return Ok(Ok(v.clone()));
        }
        let bytes = self.fetcher.read(id).await?;
        let v = match decode(&bytes) {
            Ok(v) => Arc::new(v),
            Err(e) => return Ok(Err(e)),
        };
        let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= cap {
            cache.clear();
        }
        cache.insert(id, v.clone());
        Ok(Ok(v))
    }

    /// Whether `id` is stored here or held by some node the master knows.
    async fn is_held(&self, id: ObjectId) -> Result<bool, SlaveError> {
        if self.fetcher.store().contains(&id) {
            return Ok(true);
        }
        let holders = self
            .link
            .client()
            .locate(LocateRequest {
                object: id.as_bytes().to_vec(),
            })
            .await?
            .into_inner()
            .holders;
        Ok(!holders.is_empty())
    }

    pub async fn resolve(&self, root: ObjectId, path: &VolumePath) -> Result<Resolved, SlaveError> {
        let mut id = root;
        let mut dir = self.manifest(id).await?;
        let mut walked = String::new();
        for (i, name) in path.components().iter().enumerate() {
            let last = i + 1 == path.components().len();
            let entry = dir.get(name).cloned().ok_or_else(|| {
                SlaveError::NotFound(format!("no such file or directory: {walked}{name}"))
            })?;
            match entry.kind {
                EntryKind::Dir => {
                    id = entry
                        .object
                        .ok_or_else(|| SlaveError::Io("dir without object".into()))?;
                    dir = self.manifest(id).await?;
                }
                EntryKind::File if last => return Ok(Resolved::File(entry)),
                EntryKind::Symlink if last => return Ok(Resolved::Symlink(entry)),
                _ => {
                    return Err(SlaveError::NotFound(format!(
                        "{walked}{name} is not a directory"
                    )));
                }
            }
            walked.push_str(name);
            walked.push('/');
        }
        Ok(Resolved::Dir { id, manifest: dir })
    }

    /// Checks the tree under `root` with [`validate_tree`] (only what
    /// differs from the parent's tree). The root must be stored here: this
    /// slave vouches for it. Returns the objects the tree adds that are
    /// stored here, which the master must learn about, and the bytes of
    /// the new manifests it read (up to [`MANIFESTS_SENT_BYTES`]) for the
    /// master's check.
    async fn validate(
        &self,
        root: ObjectId,
        parent_root: Option<ObjectId>,
    ) -> Result<(Vec<ObjectId>, Vec<Vec<u8>>), SlaveError> {
        if !self.fetcher.store().contains(&root) {
            return Err(SlaveError::BadRequest(format!(
                "root manifest {root} is not stored on this slave; upload it first"
            )));
        }
        let source = CommitSource::new(self);
        let added = validate_tree(&source, root, parent_root)
            .await
            .map_err(|e| match e {
                e @ TreeError::Invalid { .. } => SlaveError::BadRequest(e.to_string()),
                TreeError::Source(e) => e,
            })?;
        let read = source.1.into_inner().unwrap_or_else(|p| p.into_inner());
        let mut manifests = Vec::new();
        let mut budget = MANIFESTS_SENT_BYTES;
        for bytes in added.iter().filter_map(|id| read.get(id)) {
            if bytes.len() > budget {
                break;
            }
            budget -= bytes.len();
            manifests.push(bytes.as_ref().clone());
        }
        let store = self.fetcher.store();
        let local = added.into_iter().filter(|id| store.contains(id)).collect();
        Ok((local, manifests))
    }

    /// What a writer said it stored ([`Stored`]), as [`Self::validate`]
    /// answers: the listed objects stored here, and the bytes of the
    /// listed manifests (up to [`MANIFESTS_SENT_BYTES`], hashed as read).
    /// A manifest not stored here is left for the master to read from a
    /// holder, or to refuse; a corrupt one is quarantined and withdrawn,
    /// and fails the commit.
    async fn listed(
        &self,
        root: ObjectId,
        stored: Stored,
    ) -> Result<(Vec<ObjectId>, Vec<Vec<u8>>), SlaveError> {
        let store = self.fetcher.store().clone();
        let (local, manifests, corrupt) = tokio::task::spawn_blocking(move || {
            if !store.contains(&root) {
                return Err(SlaveError::BadRequest(format!(
                    "root manifest {root} is not stored on this slave; upload it first"
                )));
            }
            let mut manifests = Vec::new();
            let mut corrupt = Vec::new();
            let mut budget = MANIFESTS_SENT_BYTES;
            for id in &stored.manifests {
                match store.read(id) {
                    Ok(Some(bytes)) if bytes.len() <= budget => {
                        budget -= bytes.len();
                        manifests.push(bytes);
                    }
                    Ok(Some(_)) => break,
                    Ok(None) => {}
                    Err(SlaveError::Corrupt(id)) => corrupt.push(id),
                    Err(e) => return Err(e),
                }
            }
            let local: Vec<ObjectId> = stored
                .objects
                .into_iter()
                .filter(|id| store.contains(id))
                .collect();
            Ok((local, manifests, corrupt))
        })
        .await
        .map_err(|e| SlaveError::Io(format!("commit task: {e}")))??;
        if let Some(first) = corrupt.first() {
            if let Err(e) = self.link.withdraw(&corrupt).await {
                tracing::warn!("withdrawing quarantined manifests from the master: {e}");
            }
            return Err(SlaveError::Corrupt(*first));
        }
        Ok((local, manifests))
    }

    /// Validates the tree, makes sure the master knows where its new
    /// objects are, and compare-and-sets the head.
    pub async fn commit(&self, p: Proposal) -> Result<Issued, SlaveError> {
        let (parent_root, parent_incarnation) = match Version::new(p.parent) {
            Some(v) => {
                let parent = self.version_record(&p.volume, v).await?;
                (Some(parent.info.root), Some(parent.incarnation))
            }
            None => (None, None),
        };
        if let (Some(asked), Some(read)) = (&p.incarnation, &parent_incarnation)
            && !asked.is_empty()
            && asked != read
        {
            return Err(SlaveError::PathConflict(format!(
                "version {} of {:?} was read from metadata incarnation {asked}, but is now of \
                 incarnation {read} (the metadata was restored or started again): that number \
                 may name another tree now; read the volume again",
                p.parent,
                p.volume.as_str()
            )));
        }
        let started = std::time::Instant::now();
        let (local, manifests) = match p.stored {
            Some(stored) => self.listed(p.root, stored).await?,
            None => {
                crate::metrics::inc(&self.fetcher.metrics().commit_tree_checks_total, 1);
                self.validate(p.root, parent_root).await?
            }
        };
        let validated = started.elapsed();
        let announced_count = local.len();
        self.link.announce(local).await?;
        let announced = started.elapsed();
        let req = CommitRequest {
            volume: p.volume.to_string(),
            parent: p.parent,
            root: p.root.as_bytes().to_vec(),
            message: p.message,
            author: p.author,
            host: p.host,
            incarnation: p.incarnation.or(parent_incarnation).unwrap_or_default(),
            manifests,
        };
        let mut req = tonic::Request::new(req);
        elton_trust::BearerAuth::new(Some(&p.bearer.0))
            .map_err(|e| SlaveError::Unauthorized(e.to_string()))?
            .apply(&mut req);
        let record = self.link.client().commit(req).await?.into_inner();
        tracing::debug!(
            validated_ms = validated.as_millis() as u64,
            announced = announced_count,
            announced_ms = announced.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "commit"
        );
        let incarnation = record.incarnation.clone();
        let info = VersionInfo::try_from(record)
            .map_err(|e| SlaveError::Master(format!("bad version record: {e}")))?;
        let issued = Issued { info, incarnation };
        self.link.versions().put(&issued.incarnation, &issued.info);
        Ok(issued)
    }

    /// Publishes a version whose tree is the parent's with one file placed
    /// at `path` (content already stored). The manifests it stores are
    /// recorded in `undo`.
    pub async fn put_file(
        &self,
        put: FilePut<'_>,
        bearer: &Bearer,
        undo: &mut crate::undo::Undo,
    ) -> Result<Issued, SlaveError> {
        let FilePut {
            volume,
            parent,
            path,
            file,
            author,
        } = put;
        let base = match parent {
            Some(0) => None,
            Some(n) => {
                let v =
                    Version::new(n).ok_or_else(|| SlaveError::BadRequest("bad parent".into()))?;
                Some(self.version_record(volume, v).await?)
            }
            None => self.head(volume).await?,
        };
        let incarnation = base.as_ref().map(|b| b.incarnation.clone());
        let base = base.map(|b| b.info);
        let root = match &base {
            Some(info) => (*self.manifest(info.root).await?).clone(),
            None => {
                // Surface "unknown volume" before doing any work.
                self.head(volume).await?;
                DirManifest::default()
            }
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        let leaf_name = path
            .split_last()
            .map(|(_, n)| n.to_string())
            .unwrap_or_default();
        let leaf = Entry {
            name: leaf_name,
            kind: EntryKind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: file.size,
            mtime: now,
            object: Some(file.object),
            recipe: file.recipe,
            target: None,
            xattrs: None,
        };
        let dir_template = Entry {
            kind: EntryKind::Dir,
            mode: 0o755,
            recipe: false,
            ..leaf.clone()
        };
        // Manifests on the path are already cached from resolving the base.
        let mut loaded: HashMap<ObjectId, DirManifest> = HashMap::new();
        for (i, _) in path.components().iter().enumerate().skip(1) {
            let prefix = VolumePath::parse(&path.components()[..i].join("/"))?;
            if let Some(info) = &base
                && let Ok(Resolved::Dir { id, manifest }) = self.resolve(info.root, &prefix).await
            {
                loaded.insert(id, (*manifest).clone());
            }
        }
        let mut load = |id: &ObjectId| {
            loaded
                .get(id)
                .cloned()
                .ok_or_else(|| SlaveError::Io(format!("manifest {id} not loaded")))
        };
        let manifests = crate::tree::put_entry(root, path, leaf, &dir_template, &mut load)?;
        let store = self.fetcher.store().clone();
        let (ids, stored) = tokio::task::spawn_blocking(move || {
            let mut stored = Vec::new();
            let mut put = || -> Result<Vec<ObjectId>, SlaveError> {
                let mut ids = Vec::new();
                for m in &manifests {
                    // A large directory's pages first, its index last.
                    for (_, bytes) in encode_dir(m)?.objects {
                        let id = store.put_bytes(&bytes)?;
                        stored.push(id);
                        ids.push(id);
                    }
                }
                Ok(ids)
            };
            let ids = put();
            (ids, stored)
        })
        .await
        .map_err(|e| SlaveError::Io(format!("store task: {e}")))?;
        undo.record_all(stored);
        let ids = ids?;
        let root = *ids.last().ok_or_else(|| SlaveError::Io("no root".into()))?;
        // The chunks of a recipe are announced by the commit's validation.
        let mut announce = ids;
        announce.push(file.object);
        self.link.announce(announce).await?;
        self.commit(Proposal {
            volume: volume.clone(),
            parent: base.map_or(0, |b| b.version.get()),
            root,
            message: format!("upload {path}"),
            author,
            host: "http".into(),
            bearer: bearer.clone(),
            incarnation,
            stored: None,
        })
        .await
    }
}

/// A one-file commit: `file` (stored) placed at `path` on `parent` (the
/// head when `None`).
pub struct FilePut<'a> {
    pub volume: &'a VolumeName,
    pub parent: Option<u64>,
    pub path: &'a VolumePath,
    pub file: StoredFile,
    pub author: String,
}

/// A fetch failure as the tree check sees it: the master knowing no holder
/// is the tree's fault, anything else is not.
fn not_held(e: SlaveError) -> FetchError<SlaveError> {
    match e {
        SlaveError::NotFound(_) => FetchError::NotHeld,
        e => FetchError::Failed(e),
    }
}

/// Where this slave's commit check finds objects: its own store, fetching
/// through the master what it lacks (fetched objects are stored and
/// announced, as any miss), and the master's locations.
/// Manifests it read are kept (up to [`MANIFEST_CACHE_ENTRIES`]) for the
/// one check it serves.
struct CommitSource<'a>(&'a Volumes, Mutex<HashMap<ObjectId, Arc<Vec<u8>>>>);

impl<'a> CommitSource<'a> {
    fn new(volumes: &'a Volumes) -> Self {
        Self(volumes, Mutex::new(HashMap::new()))
    }
}

impl TreeSource for CommitSource<'_> {
    type Error = SlaveError;

    /// The bytes as stored (verified), not the decoded cache: the walk
    /// decodes only the entries that differ from the parent's manifest.
    async fn manifest(&self, id: ObjectId) -> Result<Arc<Vec<u8>>, FetchError<SlaveError>> {
        if let Some(bytes) = self.1.lock().unwrap_or_else(|p| p.into_inner()).get(&id) {
            return Ok(bytes.clone());
        }
        let bytes = Arc::new(self.0.fetcher.read(id).await.map_err(not_held)?);
        let mut cache = self.1.lock().unwrap_or_else(|p| p.into_inner());
        // A first import's check reads every manifest of the tree once.
        if cache.len() >= MANIFEST_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(id, bytes.clone());
        Ok(bytes)
    }

    /// Reads the manifests not read yet, several at a time (each read is
    /// a blocking file read and a hash, or a fetch); a failed read is left
    /// for the walk's own read to report.
    async fn prefetch(&self, ids: &[ObjectId]) {
        let wanted: Vec<ObjectId> = {
            let cache = self.1.lock().unwrap_or_else(|p| p.into_inner());
            ids.iter()
                .filter(|id| !cache.contains_key(id))
                .copied()
                .collect()
        };
        futures::stream::iter(wanted)
            .map(|id| TreeSource::manifest(self, id))
            .buffer_unordered(PARALLEL_LOCATES)
            .for_each(|_| async {})
            .await;
    }

    async fn recipe(&self, id: ObjectId) -> Result<Arc<Recipe>, FetchError<SlaveError>> {
        self.0
            .read_recipe(id)
            .await
            .map_err(not_held)?
            .map_err(FetchError::Malformed)
    }

    async fn held(&self, ids: &[ObjectId]) -> Result<Vec<bool>, SlaveError> {
        futures::stream::iter(ids.iter().copied())
            .map(|id| self.0.is_held(id))
            .buffered(PARALLEL_LOCATES)
            .try_collect()
            .await
    }
}
