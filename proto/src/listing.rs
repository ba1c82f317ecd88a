//! A directory whichever form it is stored in (`docs/paged-manifests.md`):
//! reading its whole listing from one manifest or from an index and its
//! pages, and writing a listing in the one form the rules allow. The IO is
//! the caller's: it hands in a function that returns an object's verified
//! bytes.

use std::future::Future;
use std::ops::Range;

use crate::paged::{self, DirIndex, Listing, Page, PageRef};
use crate::{DirManifest, Entry, ObjectId, ProtoError};

/// A directory as read: its whole listing and, for a paged directory, the
/// index it was assembled from (a commit re-cuts from it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadedDir {
    pub manifest: DirManifest,
    pub index: Option<DirIndex>,
}

/// How strictly stored manifests are decoded: a check of what is about to
/// be published wants the canonical form; a reader of what was published
/// takes what [`DirManifest::decode_published`] takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strictness {
    Canonical,
    Published,
}

fn decode_page(bytes: &[u8], strictness: Strictness) -> Result<DirManifest, ProtoError> {
    let page = match strictness {
        Strictness::Canonical => DirManifest::decode(bytes),
        Strictness::Published => DirManifest::decode_published(bytes),
    }?;
    Ok(page)
}

/// The form of a directory from its manifest's bytes.
pub fn decode_listing(bytes: &[u8], strictness: Strictness) -> Result<Listing, ProtoError> {
    match strictness {
        Strictness::Canonical => paged::decode_dir(bytes),
        Strictness::Published if bytes.starts_with(paged::INDEX_PREFIX) => {
            DirIndex::decode(bytes).map(Listing::Paged)
        }
        Strictness::Published => DirManifest::decode_published(bytes).map(Listing::Whole),
    }
}

/// Reads a directory from its manifest's bytes; for a paged one,
/// `pages(ids)` returns the verified bytes of all its pages, in order (so
/// that the caller can read them concurrently: a page across a WAN costs
/// a round trip).
pub fn load_dir<E: From<ProtoError>>(
    bytes: &[u8],
    strictness: Strictness,
    pages: impl FnOnce(Vec<ObjectId>) -> Result<Vec<Vec<u8>>, E>,
) -> Result<LoadedDir, E> {
    match decode_listing(bytes, strictness)? {
        Listing::Whole(manifest) => Ok(LoadedDir {
            manifest,
            index: None,
        }),
        Listing::Paged(index) => {
            let read = pages(page_ids(&index))?;
            Ok(assemble_read(index, &read, strictness)?)
        }
    }
}

/// [`load_dir`] for a caller whose reads are futures.
pub async fn load_dir_async<E, F, Fut>(
    bytes: &[u8],
    strictness: Strictness,
    pages: F,
) -> Result<LoadedDir, E>
where
    E: From<ProtoError>,
    F: FnOnce(Vec<ObjectId>) -> Fut,
    Fut: Future<Output = Result<Vec<Vec<u8>>, E>>,
{
    match decode_listing(bytes, strictness)? {
        Listing::Whole(manifest) => Ok(LoadedDir {
            manifest,
            index: None,
        }),
        Listing::Paged(index) => {
            let read = pages(page_ids(&index)).await?;
            Ok(assemble_read(index, &read, strictness)?)
        }
    }
}

fn page_ids(index: &DirIndex) -> Vec<ObjectId> {
    index.pages.iter().map(|r| r.manifest).collect()
}

/// A paged directory from its index and its pages' bytes.
fn assemble_read(
    index: DirIndex,
    pages: &[Vec<u8>],
    strictness: Strictness,
) -> Result<LoadedDir, ProtoError> {
    let decoded = pages
        .iter()
        .map(|b| decode_page(b, strictness))
        .collect::<Result<Vec<_>, _>>()?;
    let manifest = paged::assemble(&index, &decoded)?;
    Ok(LoadedDir {
        manifest,
        index: Some(index),
    })
}

/// Where each page of `index` lies in the assembled listing.
pub fn page_spans(index: &DirIndex) -> Vec<Range<usize>> {
    let mut at = 0usize;
    index
        .pages
        .iter()
        .map(|p| {
            let start = at;
            // An index's counts were checked against its pages' when it
            // was assembled; a count beyond memory cannot have been.
            at = at.saturating_add(usize::try_from(p.entries).unwrap_or(usize::MAX));
            start..at
        })
        .collect()
}

/// A directory ready to store: its objects in the order they must be
/// stored (pages before the index that names them) and the id its parent
/// refers to, the last object's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedDir {
    pub id: ObjectId,
    pub entries: u64,
    pub objects: Vec<(ObjectId, Vec<u8>)>,
}

fn encoded_whole(manifest: &DirManifest) -> EncodedDir {
    let bytes = manifest.encode();
    let id = ObjectId::of(&bytes);
    EncodedDir {
        id,
        entries: manifest.entries.len() as u64,
        objects: vec![(id, bytes)],
    }
}

/// Encodes a whole listing in its one form: one manifest, or pages and an
/// index when it has more than [`paged::PAGED_MIN`] entries.
pub fn encode_dir(manifest: &DirManifest) -> Result<EncodedDir, ProtoError> {
    let Some((index, pages)) = paged::split(manifest)? else {
        return Ok(encoded_whole(manifest));
    };
    let mut objects: Vec<(ObjectId, Vec<u8>)> = pages
        .iter()
        .map(|p| {
            let bytes = p.encode();
            (ObjectId::of(&bytes), bytes)
        })
        .collect();
    let bytes = index.encode();
    let id = ObjectId::of(&bytes);
    objects.push((id, bytes));
    Ok(EncodedDir {
        id,
        entries: index.entries,
        objects,
    })
}

/// Encodes the pages [`paged::recut`] returned: only its new pages and the
/// index are new objects. A result of at most [`paged::PAGED_MIN`] entries
/// becomes one manifest again, for which `kept(i)` returns the entries of
/// the old index's page `i`.
pub fn encode_recut<E: From<ProtoError>>(
    old: &DirIndex,
    pages: Vec<Page>,
    mut kept: impl FnMut(usize) -> Result<Vec<Entry>, E>,
) -> Result<EncodedDir, E> {
    let total: u64 = pages
        .iter()
        .map(|p| match p {
            Page::Kept(r) => r.entries,
            Page::New(entries) => entries.len() as u64,
        })
        .sum();
    if total <= paged::PAGED_MIN as u64 {
        let position: std::collections::HashMap<ObjectId, usize> = old
            .pages
            .iter()
            .enumerate()
            .map(|(i, r)| (r.manifest, i))
            .collect();
        let mut entries = Vec::new();
        for p in pages {
            match p {
                Page::Kept(r) => {
                    let i = position.get(&r.manifest).copied().ok_or_else(|| {
                        ProtoError::Manifest("a kept page is not in the old index".into())
                    })?;
                    entries.extend(kept(i)?);
                }
                Page::New(new) => entries.extend(new),
            }
        }
        return Ok(encoded_whole(&DirManifest::new(entries)?));
    }
    let mut objects = Vec::new();
    let mut refs = Vec::with_capacity(pages.len());
    for p in pages {
        match p {
            Page::Kept(r) => refs.push(r),
            Page::New(entries) => {
                let page = DirManifest::new(entries)?;
                let bytes = page.encode();
                let id = ObjectId::of(&bytes);
                refs.push(PageRef {
                    first: page.entries[0].name.clone(),
                    entries: page.entries.len() as u64,
                    manifest: id,
                });
                objects.push((id, bytes));
            }
        }
    }
    let index = DirIndex {
        format: paged::INDEX_FORMAT,
        entries: total,
        pages: refs,
    };
    let bytes = index.encode();
    let id = ObjectId::of(&bytes);
    objects.push((id, bytes));
    Ok(EncodedDir {
        id,
        entries: total,
        objects,
    })
}

/// One step down a path from a directory manifest's bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// The directory is paged: the name, if there, is in this page.
    Page(ObjectId),
    /// The name's entry.
    Entry(Entry),
}

/// Where `name` leads from a published directory manifest's `bytes`, for
/// walks that follow one path (the objects sent along a version record):
/// `None` when the bytes do not decode or the name is not there.
pub fn step(bytes: &[u8], name: &str) -> Option<Step> {
    match decode_listing(bytes, Strictness::Published).ok()? {
        Listing::Whole(dir) => dir.get(name).cloned().map(Step::Entry),
        Listing::Paged(index) => index
            .pages
            .get(index.page_of(name))
            .map(|r| Step::Page(r.manifest)),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use super::*;

    fn entries(n: usize) -> Vec<Entry> {
        (0..n)
            .map(|i| Entry::file(&format!("f{i:05}"), ObjectId::of(&i.to_le_bytes()), 1))
            .collect()
    }

    fn stored(dir: &EncodedDir) -> HashMap<ObjectId, Vec<u8>> {
        dir.objects.iter().cloned().collect()
    }

    fn stored_page(
        objects: &HashMap<ObjectId, Vec<u8>>,
        id: ObjectId,
    ) -> Result<Vec<u8>, ProtoError> {
        objects
            .get(&id)
            .cloned()
            .ok_or_else(|| ProtoError::Manifest(format!("no page {id}")))
    }

    fn read(objects: &HashMap<ObjectId, Vec<u8>>, id: ObjectId) -> LoadedDir {
        load_dir::<ProtoError>(&objects[&id], Strictness::Canonical, |ids| {
            ids.iter().map(|p| stored_page(objects, *p)).collect()
        })
        .unwrap()
    }

    #[test]
    fn a_small_directory_is_one_manifest_and_a_large_one_pages() {
        let small = DirManifest::new(entries(paged::PAGED_MIN)).unwrap();
        let enc = encode_dir(&small).unwrap();
        assert_eq!(enc.objects.len(), 1);
        assert_eq!(enc.id, small.id());
        assert_eq!(read(&stored(&enc), enc.id).manifest, small);

        let large = DirManifest::new(entries(1000)).unwrap();
        let enc = encode_dir(&large).unwrap();
        assert!(enc.objects.len() > 3, "{} objects", enc.objects.len());
        assert_eq!(enc.objects.last().unwrap().0, enc.id);
        assert_eq!(enc.entries, 1000);
        let loaded = read(&stored(&enc), enc.id);
        assert_eq!(loaded.manifest, large);
        let index = loaded.index.unwrap();
        let spans = page_spans(&index);
        assert_eq!(spans.last().unwrap().end, 1000);
        for (span, r) in spans.iter().zip(&index.pages) {
            assert_eq!(large.entries[span.start].name, r.first);
        }
    }

    #[test]
    fn a_missing_page_is_the_readers_error() {
        let enc = encode_dir(&DirManifest::new(entries(600)).unwrap()).unwrap();
        let mut objects = stored(&enc);
        let page = enc.objects[0].0;
        objects.remove(&page);
        let err = load_dir::<ProtoError>(&objects[&enc.id], Strictness::Published, |ids| {
            ids.iter().map(|p| stored_page(&objects, *p)).collect()
        })
        .unwrap_err();
        assert!(err.to_string().contains(&page.to_string()), "{err}");
    }

    #[test]
    fn a_recut_encodes_to_what_encoding_the_whole_listing_gives() {
        let old_listing = DirManifest::new(entries(1000)).unwrap();
        let old = encode_dir(&old_listing).unwrap();
        let objects = stored(&old);
        let loaded = read(&objects, old.id);
        let index = loaded.index.clone().unwrap();
        let spans = page_spans(&index);
        let page_entries = |i: usize| -> Result<Vec<Entry>, ProtoError> {
            Ok(loaded.manifest.entries[spans[i].clone()].to_vec())
        };

        // One edit, one insertion: the new index and one or two pages.
        let mut changes = BTreeMap::new();
        let mut edited = Entry::file("f00500", ObjectId::of(b"new"), 3);
        edited.mode = 0o600;
        changes.insert(edited.name.clone(), Some(edited.clone()));
        let added = Entry::file("f00500a", ObjectId::of(b"added"), 5);
        changes.insert(added.name.clone(), Some(added.clone()));
        let pages = paged::recut(&index, &changes, page_entries).unwrap();
        let got = encode_recut(&index, pages, page_entries).unwrap();
        assert!(got.objects.len() <= 3, "{} objects", got.objects.len());

        let mut whole = old_listing.clone();
        whole.upsert(edited);
        whole.upsert(added);
        let want = encode_dir(&whole).unwrap();
        assert_eq!(got.id, want.id);
        assert_eq!(got.entries, 1001);

        // Deleting all but 200 entries gives one manifest again.
        let changes: BTreeMap<String, Option<Entry>> = old_listing.entries[200..]
            .iter()
            .map(|e| (e.name.clone(), None))
            .collect();
        let pages = paged::recut(&index, &changes, page_entries).unwrap();
        let got = encode_recut(&index, pages, page_entries).unwrap();
        let small = DirManifest::new(old_listing.entries[..200].to_vec()).unwrap();
        assert_eq!(got.id, small.id());
        assert_eq!(got.objects.len(), 1);
    }

    #[test]
    fn an_index_is_refused_where_pages_disagree_with_it() {
        let enc = encode_dir(&DirManifest::new(entries(600)).unwrap()).unwrap();
        let objects = stored(&enc);
        let swapped = load_dir::<ProtoError>(&objects[&enc.id], Strictness::Published, |ids| {
            // Every page answered with the first page's bytes.
            Ok(vec![enc.objects[0].1.clone(); ids.len()])
        });
        assert!(swapped.is_err());
    }
}
