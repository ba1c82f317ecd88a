//! The check of a directory stored as an index of pages, or whose parent's
//! manifest was one (`docs/paged-manifests.md`, "Checking a commit").
//!
//! Pages both indexes list, by id and described alike, were checked when
//! the parent was published and are not read; between them, the runs of
//! new pages are read, decoded in full (a page holds at most 256 entries)
//! and compared with the parent's pages in the same place. What makes the
//! new listing canonical as a whole is checked around each run: the pages
//! are the ones the index describes, they are cut where the cut rule cuts,
//! and they do not overlap the unchanged pages beside them.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use super::{Dir, PageAhead, Walk, invalid, not_held};
use crate::error::{FetchError, TreeError};
use crate::listing::{self, Strictness};
use crate::manifest_diff::DirDiff;
use crate::paged::{self, DirIndex, Listing, PageRef};
use crate::{DirManifest, Entry, TreeSource};

impl<S: TreeSource> Walk<'_, S> {
    /// What changed in `dir` (new manifest `new`, the parent's `old`) when
    /// either is an index.
    pub(super) async fn paged_diff(
        &mut self,
        dir: &Dir,
        new: &[u8],
        old: Option<&[u8]>,
    ) -> Result<DirDiff, TreeError<S::Error>> {
        let bad = |reason: String| invalid(&dir.path, format!("manifest {}: {reason}", dir.id));
        let listing = paged::decode_dir(new).map_err(|e| bad(e.to_string()))?;
        paged::check_form(&listing).map_err(|e| bad(e.to_string()))?;
        // A parent's manifest that does not decode vouches for nothing.
        let old = old.and_then(|o| listing::decode_listing(o, Strictness::Published).ok());
        match (listing, old) {
            (Listing::Paged(index), Some(Listing::Paged(parent))) => {
                self.diff_indexes(dir, &index, &parent).await
            }
            (Listing::Paged(index), old) => {
                let mut pages = Vec::with_capacity(index.pages.len());
                self.prefetch_pages(&index.pages).await;
                for r in &index.pages {
                    pages.push(Arc::unwrap_or_clone(self.new_page(dir, r).await?));
                }
                let whole = paged::assemble(&index, &pages).map_err(|e| bad(e.to_string()))?;
                let replaced = match old {
                    Some(Listing::Whole(m)) => m.entries,
                    _ => Vec::new(),
                };
                Ok(DirDiff {
                    changed: whole.entries,
                    replaced,
                })
            }
            (Listing::Whole(m), old) => {
                let replaced = match old {
                    Some(Listing::Paged(parent)) => {
                        self.parent_pages(&parent, 0..parent.pages.len()).await?
                    }
                    Some(Listing::Whole(m)) => m.entries,
                    None => Vec::new(),
                };
                Ok(DirDiff {
                    changed: m.entries,
                    replaced,
                })
            }
        }
    }

    async fn diff_indexes(
        &mut self,
        dir: &Dir,
        index: &DirIndex,
        parent: &DirIndex,
    ) -> Result<DirDiff, TreeError<S::Error>> {
        let bad = |reason: String| invalid(&dir.path, format!("manifest {}: {reason}", dir.id));
        let runs = paged::changed_pages(parent, index);
        let mut in_run = vec![false; index.pages.len()];
        for (new, _) in &runs {
            in_run[new.clone()].iter_mut().for_each(|r| *r = true);
        }
        let described: HashMap<_, &PageRef> =
            parent.pages.iter().map(|r| (r.manifest, r)).collect();
        let parent_last = parent.pages.last().map(|r| r.manifest);
        for (i, r) in index.pages.iter().enumerate() {
            if in_run[i] {
                continue;
            }
            if described.get(&r.manifest) != Some(&r) {
                return Err(bad(format!(
                    "page {i} ({}) is described otherwise than in the parent's index",
                    r.manifest
                )));
            }
            // The parent's last page ends wherever its listing did; with
            // pages after it, it must end where the cut ends a page.
            if Some(r.manifest) == parent_last && i + 1 < index.pages.len() {
                let page = self.unchanged_page(dir, r).await?;
                let closed = page
                    .entries
                    .last()
                    .is_some_and(|e| paged::ends_page(page.entries.len(), &e.name));
                if !closed {
                    return Err(bad(format!("page {i} is not cut where the cut rule cuts")));
                }
            }
        }

        self.read_ahead(&run_pages(index, parent)).await;
        let mut diff = DirDiff::default();
        for (new, old) in runs {
            let entries = self.run_of_pages(dir, index, new.clone()).await?;
            if let (Some(first), Some(before)) = (entries.first(), new.start.checked_sub(1)) {
                // The page before a run is unchanged; only its last name
                // can overlap the run.
                let page = self.unchanged_page(dir, &index.pages[before]).await?;
                if page
                    .entries
                    .last()
                    .is_some_and(|e| e.name.as_bytes() >= first.name.as_bytes())
                {
                    return Err(bad(format!(
                        "page {} overlaps the page before it",
                        new.start
                    )));
                }
            }
            diff.replaced.extend(self.parent_pages(parent, old).await?);
            diff.changed.extend(entries);
        }
        // Runs come in index order, so both lists stay in name order except
        // where a run's parent pages were unreadable (then left out).
        diff.replaced
            .sort_unstable_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
        Ok(diff)
    }

    /// The entries of new pages `run` of `index`, each page checked against
    /// its description, the run against the cut rule and the page after it.
    async fn run_of_pages(
        &mut self,
        dir: &Dir,
        index: &DirIndex,
        run: Range<usize>,
    ) -> Result<Vec<Entry>, TreeError<S::Error>> {
        let bad = |reason: String| invalid(&dir.path, format!("manifest {}: {reason}", dir.id));
        self.prefetch_pages(&index.pages[run.clone()]).await;
        let mut entries: Vec<Entry> = Vec::new();
        for i in run.clone() {
            let page = self.new_page(dir, &index.pages[i]).await?;
            if let (Some(prev), Some(first)) = (entries.last(), page.entries.first())
                && prev.name.as_bytes() >= first.name.as_bytes()
            {
                return Err(bad(format!("page {i} overlaps the page before it")));
            }
            entries.extend(page.entries.iter().cloned());
        }
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        let cut: Vec<usize> = paged::cut(&names).into_iter().map(|r| r.len()).collect();
        let described: Vec<usize> = index.pages[run.clone()]
            .iter()
            .map(|r| r.entries as usize)
            .collect();
        // A run of no new pages (whole pages deleted) ends where the
        // unchanged page before it does, at a cut.
        let closed = || {
            names.is_empty()
                || names
                    .last()
                    .zip(cut.last())
                    .is_some_and(|(last, &len)| paged::ends_page(len, last))
        };
        if cut != described || (run.end < index.pages.len() && !closed()) {
            return Err(bad(format!(
                "pages {}..{} are not cut where the cut rule cuts",
                run.start, run.end
            )));
        }
        if let (Some(last), Some(next)) = (entries.last(), index.pages.get(run.end))
            && last.name.as_bytes() >= next.first.as_bytes()
        {
            return Err(bad(format!(
                "page {} overlaps the page after it",
                run.end - 1
            )));
        }
        Ok(entries)
    }

    /// The pages [`Self::paged_diff`] will read for these directories, as
    /// far as their manifests (already prefetched) tell: a hint, so
    /// manifests that cannot be read or decoded are passed over here and
    /// reported by the walk.
    pub(super) async fn pages_to_compare(&self, dirs: &[Dir]) -> Vec<PageAhead> {
        let mut ids = Vec::new();
        for dir in dirs {
            let Ok(new) = self.source.manifest(dir.id).await else {
                continue;
            };
            let Ok(Listing::Paged(index)) = paged::decode_dir(&new) else {
                continue;
            };
            let parent = match dir.old {
                Some(old) => match self.source.manifest(old).await {
                    Ok(bytes) => match listing::decode_listing(&bytes, Strictness::Published) {
                        Ok(Listing::Paged(parent)) => Some(parent),
                        _ => None,
                    },
                    Err(_) => None,
                },
                None => None,
            };
            match parent {
                Some(parent) => ids.extend(run_pages(&index, &parent)),
                None => ids.extend(index.pages.iter().map(|r| PageAhead {
                    id: r.manifest,
                    canonical: true,
                    base: None,
                })),
            }
        }
        ids
    }

    /// Reads `pages` ahead and has them decoded ahead (see
    /// [`TreeSource::decode_ahead`]).
    pub(super) async fn read_ahead(&self, pages: &[PageAhead]) {
        if pages.is_empty() {
            return;
        }
        let ids: Vec<_> = pages.iter().map(|p| p.id).collect();
        self.source.prefetch(&ids).await;
        self.source.decode_ahead(pages).await;
    }

    async fn prefetch_pages(&self, pages: &[PageRef]) {
        if pages.len() > 1 {
            let ids: Vec<_> = pages.iter().map(|r| r.manifest).collect();
            self.source.prefetch(&ids).await;
        }
    }

    /// A page of the new tree, read as the walk reads a manifest: a page
    /// no node holds or that cannot be read makes the tree invalid.
    async fn page(
        &self,
        dir: &Dir,
        r: &PageRef,
        canonical: bool,
    ) -> Result<Arc<DirManifest>, TreeError<S::Error>> {
        let bad = |reason: String| invalid(&dir.path, format!("page {}: {reason}", r.manifest));
        match self.source.page(r.manifest, canonical).await {
            Ok(page) => Ok(page),
            Err(FetchError::NotHeld) => Err(invalid(&dir.path, not_held(r.manifest))),
            Err(FetchError::Malformed(e)) => Err(bad(e.to_string())),
            Err(FetchError::Failed(e)) => Err(TreeError::Source(e)),
        }
    }

    /// A page the new tree adds: held, canonical, and the one its index
    /// entry describes.
    async fn new_page(
        &mut self,
        dir: &Dir,
        r: &PageRef,
    ) -> Result<Arc<DirManifest>, TreeError<S::Error>> {
        let page = self.page(dir, r, true).await?;
        self.note_held(r.manifest);
        if page.entries.len() as u64 != r.entries
            || page.entries.first().map(|e| e.name.as_str()) != Some(r.first.as_str())
        {
            return Err(invalid(
                &dir.path,
                format!(
                    "page {}: is not the page its index entry describes",
                    r.manifest
                ),
            ));
        }
        Ok(page)
    }

    /// A page the new tree shares with the parent's: published, so only
    /// read, but it must still be there.
    async fn unchanged_page(
        &self,
        dir: &Dir,
        r: &PageRef,
    ) -> Result<Arc<DirManifest>, TreeError<S::Error>> {
        self.page(dir, r, false).await
    }

    /// The entries of the parent's pages `run`, trusted as published; a
    /// page that is gone or does not decode is left out (it then vouches
    /// for nothing, and what replaced it is checked in full).
    async fn parent_pages(
        &mut self,
        parent: &DirIndex,
        run: Range<usize>,
    ) -> Result<Vec<Entry>, TreeError<S::Error>> {
        self.prefetch_pages(&parent.pages[run.clone()]).await;
        let mut entries = Vec::new();
        for r in &parent.pages[run] {
            match self.source.page(r.manifest, false).await {
                Ok(page) => entries.extend(page.entries.iter().cloned()),
                Err(FetchError::NotHeld | FetchError::Malformed(_)) => {}
                Err(FetchError::Failed(e)) => return Err(TreeError::Source(e)),
            }
        }
        Ok(entries)
    }
}

/// The pages a comparison of `index` with `parent` reads: the unchanged
/// page before each run (its last name bounds the run), the new pages of
/// the run, and the parent's pages they replace. A new page is marked for
/// the canonical check, with the parent's page in the same place of the
/// run (or its last) as the base it likely differs from a little.
fn run_pages(index: &DirIndex, parent: &DirIndex) -> Vec<PageAhead> {
    let known = |id| PageAhead {
        id,
        canonical: false,
        base: None,
    };
    let mut ids = Vec::new();
    for (new, old) in paged::changed_pages(parent, index) {
        if let Some(before) = new.start.checked_sub(1).filter(|_| !new.is_empty()) {
            ids.push(known(index.pages[before].manifest));
        }
        let bases = &parent.pages[old];
        ids.extend(new.enumerate().map(|(k, i)| PageAhead {
            id: index.pages[i].manifest,
            canonical: true,
            base: bases.get(k).or(bases.last()).map(|r| r.manifest),
        }));
        ids.extend(bases.iter().map(|r| known(r.manifest)));
    }
    ids
}
