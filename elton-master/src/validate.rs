//! The master's check of a tree before it publishes it (or forwards it to
//! a peer home): [`elton_proto::validate_tree`], the slave's own check, run
//! again here because a master believes no node by default.
//!
//! Manifests and recipes are read whole from live holders of this cluster
//! and verified against their id; recipes are decoded here, manifests by
//! the walk (only the entries that differ from the parent's). A holder that serves other
//! bytes loses that location ([`TreeValidator::note_bad_location`]) and the
//! next holder is tried. An object counts as held when some node of this
//! cluster is registered for it. Manifests' bytes, decoded pages and decoded
//! recipes are kept in bounded caches (they are immutable): the new
//! manifests of one commit are the parent manifests of the next, and its
//! new pages, decoded once to be checked, the parent's pages the next
//! commit compares against.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use elton_proto::manifest::MAX_MANIFEST_BYTES;
use elton_proto::manifest_delta::{self, EntrySpans};
use elton_proto::recipe::MAX_RECIPE_BYTES;
use elton_proto::{
    DirManifest, FetchError, NodeId, ObjectId, ProtoError, Recipe, TreeError, TreeSource,
    validate::PageAhead, validate_tree,
};
use futures::StreamExt;

use crate::MasterError;
use crate::along_path::PathSource;
use crate::fetch::{self, HolderReader, Opened};
use crate::generations::Generations;
use crate::nodes::Liveness;
use crate::store::{MetaStore, NodeRow, blocking};

/// Manifests' bytes kept, by their size. One commit's walk reads a few
/// manifests (about 200 of 13 KiB for a change in each of 100 large
/// directories); this keeps many commits' worth. Each cache keeps no
/// object larger than an eighth of its budget.
const MANIFEST_CACHE_BYTES: usize = 64 << 20;
/// Decoded recipes kept, by the size of their bytes.
const RECIPE_CACHE_BYTES: usize = 16 << 20;
/// Decoded pages kept, by twice the size of their bytes (a decoded entry
/// takes about as much memory as its JSON, plus the maps' overhead): the
/// pages of a 100,000-file volume of large directories (about 16 MiB of
/// JSON) fit.
const PAGE_CACHE_BYTES: usize = 64 << 20;
/// How long one holder may take to serve a whole manifest or recipe
/// (at most 64 MiB) before the next is tried.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Most bytes of manifests taken from one commit request ([`TreeValidator::seed`]).
const SEED_BYTES: usize = 4 << 20;
/// Manifests read at once when the walk announces a directory's new
/// subdirectories ([`TreeSource::prefetch`]).
const PREFETCH_READS: usize = 8;
/// Threads that decode pages ahead of the walk ([`TreeSource::decode_ahead`]),
/// at most, and the fewest pages worth one more thread.
const DECODERS: usize = 4;
const PAGES_PER_DECODER: usize = 8;

pub struct TreeValidator {
    store: Arc<MetaStore>,
    liveness: Arc<Liveness>,
    /// The relay's reader: its deadlines, stale-location removal and node
    /// health apply to the validator's reads too.
    holders: HolderReader,
    cache: Mutex<Decoded>,
}

struct Decoded {
    manifests: Generations<Arc<Vec<u8>>>,
    recipes: Generations<Arc<Recipe>>,
    pages: Generations<Page>,
}

impl Default for Decoded {
    fn default() -> Self {
        Self {
            manifests: Generations::new(MANIFEST_CACHE_BYTES),
            recipes: Generations::new(RECIPE_CACHE_BYTES),
            pages: Generations::new(PAGE_CACHE_BYTES),
        }
    }
}

/// A decoded page of a paged directory.
struct Page {
    manifest: Arc<DirManifest>,
    /// Whether its bytes were found in canonical form
    /// ([`DirManifest::decode`]); a page decoded as published was not
    /// checked for it.
    canonical: bool,
    /// Where its entries lie in its bytes, once known: a new page that
    /// differs from it a little is decoded from it
    /// ([`elton_proto::manifest_delta`]).
    spans: Option<Arc<EntrySpans>>,
}

/// Why one holder gave no bytes.
enum Unread {
    /// It no longer has the object (the reader removed the location).
    Missing,
    /// Unreachable, an error, a missed deadline.
    Failed(String),
    /// It announced, or sent, more than the object may have.
    TooLarge,
}

impl TreeValidator {
    pub fn new(store: Arc<MetaStore>, liveness: Arc<Liveness>, holders: HolderReader) -> Self {
        Self {
            store,
            liveness,
            holders,
            cache: Mutex::new(Decoded::default()),
        }
    }

    /// Accepts the tree under `root` or says why not: the root must be held
    /// in this cluster (as the commit's transaction checks again), and
    /// everything the tree adds to the parent's tree (`parent_root`) must
    /// pass [`validate_tree`].
    pub async fn check(
        &self,
        root: ObjectId,
        parent_root: Option<ObjectId>,
    ) -> Result<(), MasterError> {
        if blocking(&self.store, move |s| s.holders(&root))
            .await?
            .is_empty()
        {
            return Err(MasterError::RootNotStored(root.to_string()));
        }
        let check = Check {
            validator: self,
            confirmed: Mutex::new(HashSet::from([root])),
        };
        match validate_tree(&check, root, parent_root).await {
            Ok(_) => Ok(()),
            Err(TreeError::Invalid { path, reason }) => {
                Err(MasterError::InvalidTree { path, reason })
            }
            Err(TreeError::Source(e)) => Err(e),
        }
    }

    /// Keeps manifests sent with a commit (`CommitRequest.manifests`) in
    /// the cache under the ids their bytes hash to, so that the check does
    /// not read them back from the slave that sent them. Nothing else is
    /// believed: the check still requires a node to hold each one it uses,
    /// and bytes that are not a manifest fail its decoding as if read.
    pub fn seed(&self, manifests: Vec<Vec<u8>>) {
        let mut budget = SEED_BYTES;
        let hashed: Vec<(ObjectId, Vec<u8>)> = manifests
            .into_iter()
            .take_while(|b| {
                budget = budget.saturating_sub(b.len());
                budget > 0
            })
            .map(|b| (ObjectId::of(&b), b))
            .collect();
        let mut cache = self.cache();
        for (id, bytes) in hashed {
            let len = bytes.len();
            cache.manifests.insert(id, Arc::new(bytes), len);
        }
    }

    /// `node` served bytes for `object` that do not hash to its id: it is
    /// not asked for that object again (until it announces it again).
    /// The one place to learn of lying or failing holders.
    pub async fn note_bad_location(
        &self,
        node: &NodeId,
        object: ObjectId,
    ) -> Result<(), MasterError> {
        tracing::warn!(%object, %node, "holder served bytes that do not match the id; location removed");
        let node = node.clone();
        blocking(&self.store, move |s| s.remove_location(&object, &node)).await
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Decoded> {
        // The maps stay consistent whatever panicked while holding the lock.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Page `id` as decoded before, if it was (and found canonical, when
    /// `canonical` is asked for).
    fn cached_page(&self, id: ObjectId, canonical: bool) -> Option<Arc<DirManifest>> {
        let mut cache = self.cache();
        let page = cache.pages.get(&id)?;
        (page.canonical || !canonical).then(|| page.manifest.clone())
    }

    fn keep_page(&self, decoded: DecodedPage) {
        let mut cache = self.cache();
        if let Some(page) = cache.pages.get(&decoded.id) {
            page.canonical |= decoded.canonical;
            if page.spans.is_none() {
                page.spans = decoded.spans;
            }
            return;
        }
        let page = Page {
            manifest: decoded.manifest,
            canonical: decoded.canonical,
            spans: decoded.spans,
        };
        cache.pages.insert(decoded.id, page, 2 * decoded.len);
    }

    /// A decoded manifest or recipe: from the cache when some node still
    /// holds it, else read and verified from a live holder, decoded, cached.
    ///
    /// `confirmed` lists objects a node was found to hold during the same
    /// check: a cached one of those is not looked up again.
    async fn decoded<T>(
        &self,
        id: ObjectId,
        confirmed: Option<&Mutex<HashSet<ObjectId>>>,
        limit: usize,
        slot: fn(&mut Decoded) -> &mut Generations<Arc<T>>,
        decode: fn(Vec<u8>) -> Result<T, ProtoError>,
        too_large: fn(String) -> ProtoError,
    ) -> Result<Arc<T>, FetchError<MasterError>> {
        let cached = slot(&mut self.cache()).get(&id).cloned();
        if let Some(v) = cached {
            let known = confirmed.is_some_and(|c| lock(c).contains(&id));
            if !known {
                // A read transaction on a small table: on this thread, as
                // a hop to the blocking pool and back costs more.
                if self.store.holders(&id)?.is_empty() {
                    return Err(FetchError::NotHeld);
                }
                if let Some(c) = confirmed {
                    lock(c).insert(id);
                }
            }
            return Ok(v);
        }
        let bytes = self.read(id, limit, too_large).await?;
        let len = bytes.len();
        let v = Arc::new(decode(bytes).map_err(FetchError::Malformed)?);
        slot(&mut self.cache()).insert(id, v.clone(), len);
        Ok(v)
    }

    /// The verified bytes of `id` from the first live holder that serves
    /// them; stale and lying holders lose the location on the way.
    async fn read(
        &self,
        id: ObjectId,
        limit: usize,
        too_large: fn(String) -> ProtoError,
    ) -> Result<Vec<u8>, FetchError<MasterError>> {
        let mut last_error = None;
        let mut oversized = false;
        for holder in fetch::live_holders(&self.store, &self.liveness, id, None).await? {
            let read = tokio::time::timeout(READ_TIMEOUT, self.read_from(&holder, id, limit)).await;
            match read {
                Ok(Ok(bytes)) if ObjectId::of(&bytes) == id => return Ok(bytes),
                Ok(Ok(_)) => self.note_bad_location(&holder.id, id).await?,
                Ok(Err(Unread::Missing)) => {}
                Ok(Err(Unread::Failed(e))) => last_error = Some(e),
                Ok(Err(Unread::TooLarge)) => oversized = true,
                Err(_) => {
                    last_error = Some(format!(
                        "{}: no whole answer within {} s",
                        holder.id,
                        READ_TIMEOUT.as_secs()
                    ));
                }
            }
        }
        if oversized {
            // No holder served it, and one says it is larger than any
            // valid manifest or recipe: whatever its bytes, it is not one.
            return Err(FetchError::Malformed(too_large(format!(
                "more than {limit} bytes"
            ))));
        }
        if let Some(last) = last_error {
            return Err(FetchError::Failed(MasterError::HoldersFailed {
                object: id.to_string(),
                last,
            }));
        }
        let registered = blocking(&self.store, move |s| s.holders(&id)).await?;
        if registered.is_empty() {
            Err(FetchError::NotHeld)
        } else {
            // Held, but by nodes that are down: not the tree's fault.
            Err(FetchError::Failed(MasterError::HoldersFailed {
                object: id.to_string(),
                last: format!("no live holder ({} registered, all down)", registered.len()),
            }))
        }
    }

    /// The whole object from one holder, unverified, refusing more than
    /// `limit` bytes.
    async fn read_from(
        &self,
        holder: &NodeRow,
        id: ObjectId,
        limit: usize,
    ) -> Result<Vec<u8>, Unread> {
        let (size, mut stream) = match self.holders.open(id, vec![holder.clone()]).await {
            Opened::Served(size, stream) => (size, stream),
            Opened::Miss { last_error: None } => return Err(Unread::Missing),
            Opened::Miss {
                last_error: Some(e),
            } => return Err(Unread::Failed(e)),
        };
        if size > limit as u64 {
            return Err(Unread::TooLarge);
        }
        let mut bytes = Vec::with_capacity(size as usize);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|s| Unread::Failed(s.message().to_string()))?;
            if bytes.len() + chunk.data.len() > limit {
                return Err(Unread::TooLarge);
            }
            bytes.extend_from_slice(&chunk.data);
        }
        Ok(bytes)
    }
}

/// One tree check's view of the validator: the objects it has found held
/// are not looked up again (a commit of 100 large directories reads about
/// 500 manifests, most from the cache; one lookup each cost more than the
/// rest of the check).
struct Check<'a> {
    validator: &'a TreeValidator,
    confirmed: Mutex<HashSet<ObjectId>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where [`validate_tree`] reads from on a master: this cluster's holders.
impl TreeSource for Check<'_> {
    type Error = MasterError;

    async fn manifest(&self, id: ObjectId) -> Result<Arc<Vec<u8>>, FetchError<MasterError>> {
        self.validator
            .decoded(
                id,
                Some(&self.confirmed),
                MAX_MANIFEST_BYTES,
                |c| &mut c.manifests,
                Ok,
                ProtoError::Manifest,
            )
            .await
    }

    async fn recipe(&self, id: ObjectId) -> Result<Arc<Recipe>, FetchError<MasterError>> {
        self.validator
            .decoded(
                id,
                Some(&self.confirmed),
                MAX_RECIPE_BYTES,
                |c| &mut c.recipes,
                |b| Recipe::decode(&b),
                ProtoError::Recipe,
            )
            .await
    }

    /// From the decoded pages when there, after the bytes' lookup (which
    /// confirms that a node still holds the page).
    async fn page(
        &self,
        id: ObjectId,
        canonical: bool,
    ) -> Result<Arc<DirManifest>, FetchError<MasterError>> {
        let bytes = TreeSource::manifest(self, id).await?;
        if let Some(page) = self.validator.cached_page(id, canonical) {
            return Ok(page);
        }
        let page = Arc::new(decode_page(&bytes, canonical).map_err(FetchError::Malformed)?);
        self.validator.keep_page(DecodedPage {
            id,
            manifest: page.clone(),
            canonical,
            len: bytes.len(),
            spans: None,
        });
        Ok(page)
    }

    /// Decodes the pages whose bytes are cached and that are not decoded
    /// yet on blocking threads, several at once: a commit that changes 100
    /// large directories adds about 100 pages, whose decoding is most of
    /// its check. A new page is decoded from its base, parsing only the
    /// entries that differ, so the bases (the parent's pages) are decoded
    /// first. Failures are left for the walk to report.
    async fn decode_ahead(&self, pages: &[PageAhead]) {
        let (from_base, first): (Vec<PageAhead>, Vec<PageAhead>) =
            pages.iter().partition(|p| p.canonical && p.base.is_some());
        self.decode_now(&first).await;
        self.decode_now(&from_base).await;
    }

    async fn held(&self, ids: &[ObjectId]) -> Result<Vec<bool>, MasterError> {
        // Read transactions, on this thread (as in `TreeValidator::decoded`).
        let holdings = self.validator.store.holdings(ids)?;
        Ok(holdings.iter().map(|h| !h.holders.is_empty()).collect())
    }

    /// Confirms in one lookup that the cached ones are held, and reads
    /// the others, [`PREFETCH_READS`] at a time, into the cache; a failed
    /// read is simply not cached, and the walk's own read reports it.
    async fn prefetch(&self, ids: &[ObjectId]) {
        let (cached, wanted): (Vec<ObjectId>, Vec<ObjectId>) = {
            let cache = self.validator.cache();
            let confirmed = lock(&self.confirmed);
            ids.iter()
                .filter(|id| !confirmed.contains(id))
                .partition(|id| cache.manifests.contains(id))
        };
        if !cached.is_empty()
            && let Ok(holdings) = self.validator.store.holdings(&cached)
        {
            lock(&self.confirmed).extend(
                holdings
                    .iter()
                    .filter(|h| !h.holders.is_empty())
                    .map(|h| h.object),
            );
        }
        futures::stream::iter(wanted)
            .map(|id| TreeSource::manifest(self, id))
            .buffer_unordered(PREFETCH_READS)
            .for_each(|_| async {})
            .await;
    }
}

impl Check<'_> {
    /// [`TreeSource::decode_ahead`]'s work for `pages`, in one round.
    async fn decode_now(&self, pages: &[PageAhead]) {
        let todo: Vec<ToDecode> = {
            let mut cache = self.validator.cache();
            let mut seen = HashSet::new();
            pages
                .iter()
                .filter(|p| seen.insert(p.id))
                .filter_map(|p| {
                    if cache
                        .pages
                        .get(&p.id)
                        .is_some_and(|page| page.canonical || !p.canonical)
                    {
                        return None;
                    }
                    let bytes = cache.manifests.get(&p.id)?.clone();
                    let base = p
                        .base
                        .filter(|_| p.canonical)
                        .and_then(|b| base_page(&mut cache, b));
                    Some(ToDecode {
                        id: p.id,
                        bytes,
                        canonical: p.canonical,
                        base,
                    })
                })
                .collect()
        };
        let threads = DECODERS
            .min(elton_proto::cores::cores())
            .min(todo.len() / PAGES_PER_DECODER);
        if threads < 2 {
            // As the walk would, on this thread.
            self.keep_pages(decode_pages(todo));
            return;
        }
        let per = todo.len().div_ceil(threads);
        let mut parts = Vec::with_capacity(threads);
        let mut todo = todo.into_iter().peekable();
        while todo.peek().is_some() {
            parts.push(todo.by_ref().take(per).collect::<Vec<_>>());
        }
        let decoders = parts
            .into_iter()
            .map(|part| tokio::task::spawn_blocking(move || decode_pages(part)));
        for decoded in futures::future::join_all(decoders)
            .await
            .into_iter()
            .flatten()
        {
            self.keep_pages(decoded);
        }
    }

    fn keep_pages(&self, decoded: Vec<DecodedPage>) {
        let from_base = decoded.iter().filter(|p| p.spans.is_some()).count();
        tracing::trace!(pages = decoded.len(), from_base, "decoded ahead");
        for page in decoded {
            self.validator.keep_page(page);
        }
    }
}

/// A page to decode ahead of the walk.
struct ToDecode {
    id: ObjectId,
    bytes: Arc<Vec<u8>>,
    canonical: bool,
    base: Option<BasePage>,
}

/// A decoded page of the parent's tree that a new page may be decoded
/// from: its entries, its bytes, and where the entries lie in them when
/// already known.
struct BasePage {
    manifest: Arc<DirManifest>,
    bytes: Arc<Vec<u8>>,
    spans: Option<Arc<EntrySpans>>,
}

struct DecodedPage {
    id: ObjectId,
    manifest: Arc<DirManifest>,
    canonical: bool,
    /// The length of its bytes.
    len: usize,
    spans: Option<Arc<EntrySpans>>,
}

fn base_page(cache: &mut Decoded, id: ObjectId) -> Option<BasePage> {
    let bytes = cache.manifests.get(&id)?.clone();
    let page = cache.pages.get(&id)?;
    Some(BasePage {
        manifest: page.manifest.clone(),
        bytes,
        spans: page.spans.clone(),
    })
}

/// Decodes each page's bytes, in canonical form or as published; a new
/// page from its base where it can ([`elton_proto::manifest_delta`]).
/// Pages that do not decode are left out.
fn decode_pages(pages: Vec<ToDecode>) -> Vec<DecodedPage> {
    pages
        .into_iter()
        .filter_map(|p| {
            let from_base = p.base.as_ref().and_then(|base| {
                let spans = match &base.spans {
                    Some(s) => s.clone(),
                    None => Arc::new(EntrySpans::of(&base.manifest, &base.bytes)?),
                };
                manifest_delta::decode_against(&p.bytes, &base.manifest, &base.bytes, &spans)
            });
            let (manifest, spans) = match from_base {
                Some((m, spans)) => (m, Some(Arc::new(spans))),
                None => (decode_page(&p.bytes, p.canonical).ok()?, None),
            };
            Some(DecodedPage {
                id: p.id,
                manifest: Arc::new(manifest),
                canonical: p.canonical,
                len: p.bytes.len(),
                spans,
            })
        })
        .collect()
}

/// A page's bytes decoded in canonical form (a page the tree adds) or as
/// published (one the parent's tree vouches for).
fn decode_page(bytes: &[u8], canonical: bool) -> Result<DirManifest, ProtoError> {
    if canonical {
        DirManifest::decode(bytes)
    } else {
        DirManifest::decode_published(bytes)
    }
}

/// Where [`crate::along_path`] reads from on a volume's home: the same
/// holders, deadlines and cache (the manifests of a version just committed
/// are still in it).
impl PathSource for TreeValidator {
    async fn manifest(&self, id: ObjectId) -> Result<Arc<Vec<u8>>, String> {
        self.decoded(
            id,
            None,
            MAX_MANIFEST_BYTES,
            |c| &mut c.manifests,
            Ok,
            ProtoError::Manifest,
        )
        .await
        .map_err(|e| format!("manifest {id}: {e}"))
    }

    async fn recipe(&self, id: ObjectId, limit: usize) -> Result<Vec<u8>, String> {
        self.read(id, limit.min(MAX_RECIPE_BYTES), ProtoError::Recipe)
            .await
            .map_err(|e| format!("recipe {id}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Instant;

    use axum::Router;
    use axum::extract::{Path, State};
    use axum::http::StatusCode;
    use axum::routing::get;
    use elton_proto::{Entry, EntryKind};

    use super::*;

    type Objects = Arc<HashMap<String, Vec<u8>>>;

    /// A holder's `GET /v1/objects/{id}`; a liar answers garbage for all.
    async fn serve(liar: bool, objects: Objects) -> String {
        let app = Router::new()
            .route(
                "/v1/objects/{id}",
                get(
                    move |State(objects): State<Objects>, Path(id): Path<String>| async move {
                        match objects.get(&id) {
                            Some(_) if liar => Ok(b"not what you asked for".to_vec()),
                            Some(bytes) => Ok(bytes.clone()),
                            None => Err(StatusCode::NOT_FOUND),
                        }
                    },
                ),
            )
            .with_state(objects);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    fn file(name: &str, content: &[u8]) -> Entry {
        Entry::file(name, ObjectId::of(content), content.len() as u64)
    }

    /// A validator with no nodes: enough for its caches.
    fn bare_validator() -> TreeValidator {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(MetaStore::open(&dir.path().join("m.redb")).unwrap());
        let liveness = Arc::new(Liveness::new(Duration::from_secs(60), [], Instant::now()));
        let holders = HolderReader::new(
            store.clone(),
            Arc::new(crate::health::NodeHealth::default()),
            crate::holder_policy::HolderPolicy::default(),
        );
        TreeValidator::new(store, liveness, holders)
    }

    fn decoded(
        id: ObjectId,
        manifest: Arc<DirManifest>,
        canonical: bool,
        len: usize,
    ) -> DecodedPage {
        DecodedPage {
            id,
            manifest,
            canonical,
            len,
            spans: None,
        }
    }

    fn ahead(id: ObjectId, canonical: bool, base: Option<ObjectId>) -> PageAhead {
        PageAhead {
            id,
            canonical,
            base,
        }
    }

    #[test]
    fn a_page_decoded_as_published_is_not_taken_for_a_canonical_one() {
        let v = bare_validator();
        let page = Arc::new(DirManifest::new(vec![file("a", b"a")]).unwrap());
        let id = ObjectId::of(&page.encode());
        assert!(v.cached_page(id, false).is_none());
        v.keep_page(decoded(id, page.clone(), false, 100));
        assert!(v.cached_page(id, false).is_some());
        assert!(
            v.cached_page(id, true).is_none(),
            "not checked for canonical form"
        );
        v.keep_page(decoded(id, page, true, 100));
        assert!(v.cached_page(id, true).is_some());
        // Too large to keep: decoded each time.
        let big = ObjectId::of(b"big");
        v.keep_page(decoded(
            big,
            Arc::new(DirManifest::new(Vec::new()).unwrap()),
            true,
            PAGE_CACHE_BYTES,
        ));
        assert!(v.cached_page(big, false).is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pages_are_decoded_ahead_in_the_form_asked_for() {
        let v = bare_validator();
        let pages: Vec<Vec<u8>> = (0..40)
            .map(|n| {
                DirManifest::new(vec![file(&format!("f{n}"), b"x")])
                    .unwrap()
                    .encode()
            })
            .collect();
        let ids: Vec<ObjectId> = pages.iter().map(|b| ObjectId::of(b)).collect();
        v.seed(pages);
        let check = Check {
            validator: &v,
            confirmed: Mutex::new(HashSet::new()),
        };
        // Half as new pages (canonical), half as the parent's.
        let pages: Vec<PageAhead> = ids
            .iter()
            .enumerate()
            .map(|(i, &id)| ahead(id, i % 2 == 0, None))
            .collect();
        check.decode_ahead(&pages).await;
        for (i, id) in ids.iter().enumerate() {
            assert!(v.cached_page(*id, false).is_some(), "page {i} decoded");
            assert_eq!(v.cached_page(*id, true).is_some(), i % 2 == 0, "page {i}");
        }
    }

    /// A new page named with its base is decoded from it, to what a full
    /// decode gives, and is the next base with its spans known; bytes a
    /// full decode refuses are not kept, base or not.
    #[tokio::test]
    async fn new_pages_are_decoded_from_their_base() {
        let v = bare_validator();
        let names: Vec<String> = (0..200).map(|n| format!("f{n:04}")).collect();
        let base = DirManifest::new(names.iter().map(|n| file(n, n.as_bytes())).collect()).unwrap();
        let mut next = base.clone();
        next.upsert(file("f0100", b"changed"));
        let mut bad = next.encode();
        let at = bad.len() - 3;
        bad.insert(at, b' '); // not canonical
        let (base_bytes, next_bytes) = (base.encode(), next.encode());
        let (base_id, next_id, bad_id) = (
            ObjectId::of(&base_bytes),
            ObjectId::of(&next_bytes),
            ObjectId::of(&bad),
        );
        v.seed(vec![base_bytes, next_bytes, bad]);
        let check = Check {
            validator: &v,
            confirmed: Mutex::new(HashSet::new()),
        };
        check.decode_ahead(&[ahead(base_id, false, None)]).await;
        assert!(v.cache().pages.get(&base_id).unwrap().spans.is_none());
        check
            .decode_ahead(&[
                ahead(next_id, true, Some(base_id)),
                ahead(bad_id, true, Some(base_id)),
            ])
            .await;
        assert_eq!(v.cached_page(next_id, true).as_deref(), Some(&next));
        assert!(
            v.cache().pages.get(&next_id).unwrap().spans.is_some(),
            "decoded from its base"
        );
        assert!(v.cached_page(bad_id, false).is_none());
    }

    #[tokio::test]
    async fn reads_past_a_lying_holder_and_refuses_bad_trees() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(MetaStore::open(&dir.path().join("m.redb")).unwrap());
        let mut objects = HashMap::new();
        let mut put = |bytes: Vec<u8>| {
            let id = ObjectId::of(&bytes);
            objects.insert(id.to_string(), bytes);
            id
        };
        put(b"hello".to_vec());
        let root = put(DirManifest::new(vec![file("a.txt", b"hello")])
            .unwrap()
            .encode());
        let junk = put(b"{not json".to_vec());
        let mut sub = file("sub", b"");
        sub.kind = EntryKind::Dir;
        sub.mode = 0o755;
        sub.object = Some(junk);
        let bad_root = put(DirManifest::new(vec![sub]).unwrap().encode());
        let orphan_root = put(DirManifest::new(vec![file("gone", b"no one has it")])
            .unwrap()
            .encode());
        let ids: Vec<ObjectId> = objects.keys().map(|k| k.parse().unwrap()).collect();
        let objects = Arc::new(objects);

        // Node ids sort the liar first: it is asked first.
        let (liar, good): (NodeId, NodeId) = ("a-liar".parse().unwrap(), "b-good".parse().unwrap());
        for (id, lies) in [(&liar, true), (&good, false)] {
            let http_addr = serve(lies, objects.clone()).await;
            store
                .put_node(
                    &NodeRow {
                        id: id.clone(),
                        http_addr,
                    },
                    |_| false,
                )
                .unwrap();
            store.add_locations(id, &ids).unwrap();
        }
        let liveness = Arc::new(Liveness::new(
            Duration::from_secs(60),
            [liar.clone(), good.clone()],
            Instant::now(),
        ));
        let holders = HolderReader::new(
            store.clone(),
            Arc::new(crate::health::NodeHealth::default()),
            crate::holder_policy::HolderPolicy::default(),
        );
        let v = TreeValidator::new(store.clone(), liveness, holders);

        v.check(root, None).await.unwrap();
        assert_eq!(
            store.holders(&root).unwrap(),
            vec![good.clone()],
            "liar's location dropped"
        );

        match v.check(bad_root, None).await {
            Err(MasterError::InvalidTree { path, reason }) => {
                assert_eq!(path, "sub/");
                assert!(
                    reason.starts_with(&format!("manifest {junk}: ")),
                    "{reason}"
                );
            }
            other => panic!("expected an invalid tree, got {other:?}"),
        }
        let e = v.check(orphan_root, None).await.unwrap_err();
        assert!(
            e.to_string()
                .starts_with("invalid tree: gone: refers to object"),
            "{e}"
        );
        assert_eq!(tonic::Status::from(e).code(), tonic::Code::InvalidArgument);
        // A root no node holds is the commit's own precondition.
        let unknown = ObjectId::of(b"never announced");
        assert!(matches!(
            v.check(unknown, None).await,
            Err(MasterError::RootNotStored(_))
        ));
        // Decoded manifests are cached, but only used while still held.
        store.remove_location(&root, &good).unwrap();
        store.add_locations(&good, &[root]).unwrap();
        v.check(root, None).await.unwrap();
    }
}
