//! Walks a version's tree through live holders to decide whether it can be
//! read (for `fsck`). Manifests are read from a holder's HTTP (local-only),
//! hashed and decoded; file objects must have a live holder and, when asked,
//! be served by one (`HEAD`, which makes the holder verify its copy). A
//! chunked file's recipe is read and decoded the same way, and each of its
//! chunks is checked like a file object.
//!
//! Verdicts are remembered per object, and for a manifest they cover its
//! whole subtree, so subtrees shared between versions are walked once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use elton_proto::manifest::{DirManifest, EntryKind, MAX_MANIFEST_BYTES};
use elton_proto::paged::{self, Listing};
use elton_proto::recipe::{MAX_RECIPE_BYTES, Recipe};
use elton_proto::{LOCAL_ONLY_HEADER, NodeId, ObjectId};
use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};

use crate::MasterError;
use crate::planner::Holding;
use crate::store::MetaStore;

/// File probes in flight at once.
const PARALLEL_PROBES: usize = 8;
/// A `HEAD` may make the holder re-hash a large file first.
const PROBE_TIMEOUT: Duration = Duration::from_secs(300);

/// Why part of a tree cannot be read. `path` is relative to the manifest
/// the verdict belongs to ("" for that manifest itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unreadable {
    pub path: String,
    pub object: ObjectId,
    pub reason: String,
}

pub struct Walker {
    store: Arc<MetaStore>,
    http: reqwest::Client,
    /// Live slaves and their HTTP addresses, fixed for the whole check.
    live: HashMap<NodeId, String>,
    check_files: bool,
    verdicts: HashMap<ObjectId, Option<Unreadable>>,
    /// Verdicts on manifests as directories (their whole subtree), apart
    /// from `verdicts`: the same bytes may also be some file's content,
    /// and a file that reads says nothing about the objects they name.
    trees: HashMap<ObjectId, Option<Unreadable>>,
}

impl Walker {
    pub fn new(
        store: Arc<MetaStore>,
        http: reqwest::Client,
        live: HashMap<NodeId, String>,
        check_files: bool,
    ) -> Self {
        Self {
            store,
            http,
            live,
            check_files,
            verdicts: HashMap::new(),
            trees: HashMap::new(),
        }
    }

    /// Distinct objects whose verdict is known.
    pub fn objects_walked(&self) -> u64 {
        self.verdicts
            .keys()
            .chain(self.trees.keys())
            .collect::<std::collections::HashSet<_>>()
            .len() as u64
    }

    async fn holdings(&self, objects: Vec<ObjectId>) -> Result<Vec<Holding>, MasterError> {
        crate::store::blocking(&self.store, move |s| s.holdings(&objects)).await
    }

    /// One object's holders (none when it has no location).
    async fn holding(&self, id: ObjectId) -> Result<Holding, MasterError> {
        Ok(self.holdings(vec![id]).await?.pop().unwrap_or(Holding {
            object: id,
            holders: Vec::new(),
        }))
    }

    /// Live holders with their addresses, in node-id order.
    fn live_of(&self, h: &Holding) -> Vec<(NodeId, String)> {
        let mut out: Vec<_> = h
            .holders
            .iter()
            .filter_map(|n| self.live.get(n).map(|a| (n.clone(), a.clone())))
            .collect();
        out.sort();
        out
    }

    /// The first unreadable part of the tree under manifest `root`, if any.
    pub fn tree(
        &mut self,
        root: ObjectId,
    ) -> BoxFuture<'_, Result<Option<Unreadable>, MasterError>> {
        Box::pin(async move {
            if let Some(v) = self.trees.get(&root) {
                return Ok(v.clone());
            }
            let verdict = self.check_manifest(root).await?;
            self.trees.insert(root, verdict.clone());
            Ok(verdict)
        })
    }

    async fn check_manifest(&mut self, id: ObjectId) -> Result<Option<Unreadable>, MasterError> {
        let holding = self.holding(id).await?;
        let manifest = match self.read_manifest(&holding).await? {
            Ok(m) => m,
            Err((object, reason)) => {
                return Ok(Some(Unreadable {
                    path: String::new(),
                    object,
                    reason,
                }));
            }
        };
        self.check_files_of(&manifest).await?;
        for e in &manifest.entries {
            let Some(object) = e.object else { continue };
            let found = match e.kind {
                EntryKind::File => self.verdicts.get(&object).cloned().flatten(),
                EntryKind::Dir => self.tree(object).await?,
                EntryKind::Symlink => None,
            };
            if let Some(u) = found {
                let path = if u.path.is_empty() {
                    e.name.clone()
                } else {
                    format!("{}/{}", e.name, u.path)
                };
                return Ok(Some(Unreadable { path, ..u }));
            }
        }
        Ok(None)
    }

    /// Decides every file object of `manifest` not decided yet; for a
    /// chunked file, its recipe and every chunk.
    async fn check_files_of(&mut self, manifest: &DirManifest) -> Result<(), MasterError> {
        let undecided = |recipe: bool| {
            let mut ids: Vec<ObjectId> = manifest
                .entries
                .iter()
                .filter(|e| e.kind == EntryKind::File && e.recipe == recipe)
                .filter_map(|e| e.object)
                .filter(|o| !self.verdicts.contains_key(o))
                .collect();
            ids.sort();
            ids.dedup();
            ids
        };
        let (files, recipes) = (undecided(false), undecided(true));
        self.probe_files(files).await?;
        for recipe in recipes {
            let verdict = self.check_recipe(recipe).await?;
            self.verdicts.insert(recipe, verdict);
        }
        Ok(())
    }

    /// Decides the given objects as file objects (those not decided yet).
    async fn probe_files(&mut self, mut ids: Vec<ObjectId>) -> Result<(), MasterError> {
        ids.retain(|o| !self.verdicts.contains_key(o));
        if ids.is_empty() {
            return Ok(());
        }
        let holdings = self.holdings(ids).await?;
        let this = &*self;
        let results: Vec<(ObjectId, Option<Unreadable>)> = futures::stream::iter(holdings)
            .map(|h| async move { (h.object, this.probe_file(&h).await) })
            .buffer_unordered(PARALLEL_PROBES)
            .collect()
            .await;
        self.verdicts.extend(results);
        Ok(())
    }

    /// A chunked file is readable when its recipe is and every chunk is;
    /// the first chunk that is not is reported (chunks shared between
    /// versions are decided once).
    async fn check_recipe(&mut self, id: ObjectId) -> Result<Option<Unreadable>, MasterError> {
        let holding = self.holding(id).await?;
        let recipe = match self.read_small(&holding, MAX_RECIPE_BYTES).await {
            Ok(bytes) => Recipe::decode(&bytes).map_err(|e| format!("recipe does not decode: {e}")),
            Err(reason) => Err(reason),
        };
        let recipe = match recipe {
            Ok(r) => r,
            Err(reason) => {
                return Ok(Some(Unreadable {
                    path: String::new(),
                    object: id,
                    reason,
                }));
            }
        };
        self.probe_files(recipe.chunks.iter().map(|c| c.object).collect())
            .await?;
        let first_bad = recipe.chunks.iter().enumerate().find_map(|(i, c)| {
            let u = self.verdicts.get(&c.object).cloned().flatten()?;
            Some(Unreadable {
                reason: format!("chunk {i} of recipe {id}: {}", u.reason),
                ..u
            })
        });
        Ok(first_bad)
    }

    async fn probe_file(&self, h: &Holding) -> Option<Unreadable> {
        let live = self.live_of(h);
        let fail = |reason: String| {
            Some(Unreadable {
                path: String::new(),
                object: h.object,
                reason,
            })
        };
        if live.is_empty() {
            return fail(no_live_holder(h));
        }
        if !self.check_files {
            return None;
        }
        let mut last = String::new();
        for (node, addr) in &live {
            let resp = self
                .http
                .head(format!("http://{addr}/v1/objects/{}", h.object))
                .header(LOCAL_ONLY_HEADER, "1")
                .timeout(PROBE_TIMEOUT)
                .send()
                .await;
            match resp {
                Ok(r) if r.status().is_success() => return None,
                Ok(r) => last = format!("{node}: HTTP {}", r.status()),
                Err(e) => last = format!("{node}: {e}"),
            }
        }
        fail(format!("no live holder can serve it (last: {last})"))
    }

    /// A small object's verified bytes from the first live holder that
    /// serves them, or why none did (for the garbage collector's walk).
    pub async fn read_object(
        &self,
        id: ObjectId,
        limit: usize,
    ) -> Result<Result<Vec<u8>, String>, MasterError> {
        let holding = self.holding(id).await?;
        Ok(self.read_small(&holding, limit).await)
    }

    /// A directory's whole listing, from its pages if it is paged; or the
    /// object (the manifest, or one of its pages) that cannot be read.
    async fn read_manifest(
        &self,
        h: &Holding,
    ) -> Result<Result<DirManifest, (ObjectId, String)>, MasterError> {
        let decoded = |bytes: &[u8]| {
            // Same bytes on every holder: a decode error is final.
            paged::decode_dir(bytes).map_err(|e| format!("manifest does not decode: {e}"))
        };
        let listing = match self.read_small(h, MAX_MANIFEST_BYTES).await {
            Ok(bytes) => decoded(&bytes),
            Err(reason) => Err(reason),
        };
        let index = match listing {
            Ok(Listing::Whole(m)) => return Ok(Ok(m)),
            Ok(Listing::Paged(index)) => index,
            Err(reason) => return Ok(Err((h.object, reason))),
        };
        let holdings = self
            .holdings(index.pages.iter().map(|r| r.manifest).collect())
            .await?;
        let mut pages = Vec::with_capacity(holdings.len());
        for page in &holdings {
            let read = match self.read_small(page, MAX_MANIFEST_BYTES).await {
                Ok(bytes) => match decoded(&bytes) {
                    Ok(Listing::Whole(m)) => Ok(m),
                    Ok(Listing::Paged(_)) => Err("a page is itself an index".to_string()),
                    Err(reason) => Err(reason),
                },
                Err(reason) => Err(reason),
            };
            match read {
                Ok(m) => pages.push(m),
                Err(reason) => return Ok(Err((page.object, reason))),
            }
        }
        Ok(paged::assemble(&index, &pages)
            .map_err(|e| (h.object, format!("paged directory does not assemble: {e}"))))
    }

    /// A small object's verified bytes from the first live holder that
    /// serves them.
    async fn read_small(&self, h: &Holding, limit: usize) -> Result<Vec<u8>, String> {
        let live = self.live_of(h);
        if live.is_empty() {
            return Err(no_live_holder(h));
        }
        let mut last = String::new();
        for (node, addr) in &live {
            match self.get_verified(addr, &h.object, limit).await {
                Ok(bytes) => return Ok(bytes),
                Err(e) => last = format!("{node}: {e}"),
            }
        }
        Err(format!("no live holder can serve it (last: {last})"))
    }

    async fn get_verified(
        &self,
        addr: &str,
        id: &ObjectId,
        limit: usize,
    ) -> Result<Vec<u8>, String> {
        let resp = self
            .http
            .get(format!("http://{addr}/v1/objects/{id}"))
            .header(LOCAL_ONLY_HEADER, "1")
            .timeout(PROBE_TIMEOUT)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("HTTP {}", resp.status()));
        }
        let too_large = || format!("larger than {limit} bytes");
        if resp.content_length().is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        let mut body = resp.bytes_stream().map_err(|e| e.to_string());
        let mut bytes = Vec::new();
        while let Some(chunk) = body.try_next().await? {
            if bytes.len() + chunk.len() > limit {
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        if ObjectId::of(&bytes) != *id {
            return Err("served bytes that do not match the id".into());
        }
        Ok(bytes)
    }
}

fn no_live_holder(h: &Holding) -> String {
    match h.holders.len() {
        0 => "no node holds it".into(),
        n => format!("no live holder ({n} registered, all down)"),
    }
}
