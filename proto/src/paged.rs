//! Paged directory manifests: where a large directory's listing is cut into
//! pages, the index that lists the pages, and the re-cut of a changed
//! listing that reads only the pages a change touches
//! (`docs/paged-manifests.md`).
//!
//! The first step of that design: no node writes or reads this format yet.
//! Everything here is pure (no IO): a caller hands in the entries of the
//! pages it loaded.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::LazyLock;

use serde::{Deserialize, Serialize};

use crate::manifest::{MAX_MANIFEST_BYTES, valid_entry_name};
use crate::{DirManifest, Entry, ObjectId, ProtoError};

/// A directory with more entries than this is stored as an index of pages.
pub const PAGED_MIN: usize = 256;
/// Fewest entries in a page other than a directory's last one.
pub const PAGE_MIN: usize = 16;
/// Most entries in a page.
pub const PAGE_MAX: usize = 256;
/// A name ends a page (size rules allowing) when its boundary hash is 0
/// modulo this: 64 entries a page on average.
const BOUNDARY_MODULUS: u64 = 64;
/// Manifest format of an index.
pub const INDEX_FORMAT: u32 = 3;
/// How an index's canonical bytes start (the format is their first field).
pub const INDEX_PREFIX: &[u8] = br#"{"format":3,"#;

/// Hashing with a context of its own keeps the cut independent of every
/// other use of BLAKE3 in Elton (object ids above all).
static BOUNDARY_HASHER: LazyLock<blake3::Hasher> =
    LazyLock::new(|| blake3::Hasher::new_derive_key("elton 2026-12 directory page boundary"));

/// Whether `name` may end a page: a function of the name alone, so that an
/// insertion or a deletion moves only the boundaries next to it.
pub fn is_boundary(name: &str) -> bool {
    let digest = BOUNDARY_HASHER.clone().update(name.as_bytes()).finalize();
    let mut low = [0u8; 8];
    low.copy_from_slice(&digest.as_bytes()[..8]);
    u64::from_le_bytes(low) % BOUNDARY_MODULUS == 0
}

/// Whether a page of `len` entries whose last entry is `last` is complete:
/// the cut would end it there.
pub fn ends_page(len: usize, last: &str) -> bool {
    len >= PAGE_MAX || (len >= PAGE_MIN && is_boundary(last))
}

/// The pages of a sorted listing, as ranges of positions in it. The cut
/// from a given position depends only on the names from there on.
pub fn cut<S: AsRef<str>>(names: &[S]) -> Vec<Range<usize>> {
    let mut pages = Vec::new();
    let mut start = 0;
    for (i, name) in names.iter().enumerate() {
        if ends_page(i + 1 - start, name.as_ref()) {
            pages.push(start..i + 1);
            start = i + 1;
        }
    }
    if start < names.len() {
        pages.push(start..names.len());
    }
    pages
}

/// One page of an index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageRef {
    /// Name of the page's first entry.
    pub first: String,
    pub entries: u64,
    /// The page: an ordinary (format 1 or 2) manifest.
    pub manifest: ObjectId,
}

/// A paged directory's manifest (format 3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirIndex {
    pub format: u32,
    /// The directory's entries, all pages together.
    pub entries: u64,
    pub pages: Vec<PageRef>,
}

impl DirIndex {
    /// The canonical bytes (fields in order, no whitespace).
    pub fn encode(&self) -> Vec<u8> {
        // Plain structs, strings and integers cannot fail to serialize.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses and checks an index on its own (its pages are checked when
    /// they are read, by [`assemble`]); the input must be canonical.
    pub fn decode(bytes: &[u8]) -> Result<Self, ProtoError> {
        let bad = |why: String| ProtoError::Manifest(format!("page index: {why}"));
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(bad(format!("{} bytes is too large", bytes.len())));
        }
        let index: DirIndex = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        index.validate().map_err(bad)?;
        if index.encode() != bytes {
            return Err(bad("not in canonical form".into()));
        }
        Ok(index)
    }

    fn validate(&self) -> Result<(), String> {
        if self.format != INDEX_FORMAT {
            return Err(format!("format {}, not {INDEX_FORMAT}", self.format));
        }
        if self.entries <= PAGED_MIN as u64 {
            return Err(format!(
                "{} entries: a directory of at most {PAGED_MIN} is not paged",
                self.entries
            ));
        }
        let mut sum = 0u64;
        for (i, page) in self.pages.iter().enumerate() {
            let last = i + 1 == self.pages.len();
            let n = page.entries;
            if n == 0 || n > PAGE_MAX as u64 || (!last && n < PAGE_MIN as u64) {
                return Err(format!("page {i} holds {n} entries"));
            }
            if !valid_entry_name(&page.first) {
                return Err(format!("page {i}: invalid first name {:?}", page.first));
            }
            if i > 0 && self.pages[i - 1].first.as_bytes() >= page.first.as_bytes() {
                return Err(format!("page {i} does not start after page {}", i - 1));
            }
            sum += page.entries;
        }
        if sum != self.entries {
            return Err(format!(
                "the pages hold {sum} entries, the index says {}",
                self.entries
            ));
        }
        Ok(())
    }

    /// The page that holds `name` if the directory has it: the last page
    /// whose first name is not after it (the first page for a name before
    /// them all).
    pub fn page_of(&self, name: &str) -> usize {
        self.pages
            .partition_point(|p| p.first.as_bytes() <= name.as_bytes())
            .saturating_sub(1)
    }
}

/// A large directory's index and pages, cut from its whole listing; `None`
/// for a directory that stays one manifest.
pub fn split(dir: &DirManifest) -> Result<Option<(DirIndex, Vec<DirManifest>)>, ProtoError> {
    if dir.entries.len() <= PAGED_MIN {
        return Ok(None);
    }
    let names: Vec<&str> = dir.entries.iter().map(|e| e.name.as_str()).collect();
    let mut refs = Vec::new();
    let mut pages = Vec::new();
    for range in cut(&names) {
        let page = DirManifest::new(dir.entries[range].to_vec())?;
        refs.push(PageRef {
            first: page.entries[0].name.clone(),
            entries: page.entries.len() as u64,
            manifest: page.id(),
        });
        pages.push(page);
    }
    let index = DirIndex {
        format: INDEX_FORMAT,
        entries: dir.entries.len() as u64,
        pages: refs,
    };
    Ok(Some((index, pages)))
}

/// The whole listing of a paged directory from its index and its pages, in
/// the index's order, each already verified against its id by the caller.
/// Checks that the pages are the index's and that they are cut where
/// [`cut`] cuts the whole listing, so a paged directory has one form only.
pub fn assemble(index: &DirIndex, pages: &[DirManifest]) -> Result<DirManifest, ProtoError> {
    let bad = |why: String| Err(ProtoError::Manifest(format!("paged directory: {why}")));
    if let Err(why) = index.validate() {
        return bad(why);
    }
    if pages.len() != index.pages.len() {
        return bad(format!(
            "{} pages for an index of {}",
            pages.len(),
            index.pages.len()
        ));
    }
    let mut entries: Vec<Entry> = Vec::with_capacity(pages.iter().map(|p| p.entries.len()).sum());
    for (i, (page, r)) in pages.iter().zip(&index.pages).enumerate() {
        if page.entries.len() as u64 != r.entries
            || page.entries.first().map(|e| e.name.as_str()) != Some(r.first.as_str())
        {
            return bad(format!("page {i} is not the one its index entry describes"));
        }
        if let (Some(prev), Some(first)) = (entries.last(), page.entries.first())
            && prev.name.as_bytes() >= first.name.as_bytes()
        {
            return bad(format!("page {i} overlaps the page before it"));
        }
        entries.extend(page.entries.iter().cloned());
    }
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    let sizes = cut(&names).into_iter().map(|r| r.len());
    if !sizes.eq(pages.iter().map(|p| p.entries.len())) {
        return bad("the pages are not cut where the cut rule cuts".into());
    }
    DirManifest::new(entries)
}

/// A directory manifest as stored: one manifest, or the index of a paged
/// directory whose pages the caller reads (in its own IO) and hands to
/// [`assemble`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listing {
    Whole(DirManifest),
    Paged(DirIndex),
}

/// Decodes a directory manifest's bytes, whichever form it has; both must
/// be canonical. A whole manifest of more than [`PAGED_MIN`] entries still
/// decodes: trees written before paging keep their bytes. A new tree must
/// also pass [`check_form`], so that a directory has one form only.
pub fn decode_dir(bytes: &[u8]) -> Result<Listing, ProtoError> {
    // The format is the first field of both forms, so the prefix decides
    // without parsing the rest twice.
    if bytes.starts_with(INDEX_PREFIX) {
        DirIndex::decode(bytes).map(Listing::Paged)
    } else {
        DirManifest::decode(bytes).map(Listing::Whole)
    }
}

/// The form rule for a directory about to be published: paged exactly
/// when it has more than [`PAGED_MIN`] entries (an index can hold no fewer,
/// see [`DirIndex::decode`]).
pub fn check_form(listing: &Listing) -> Result<(), ProtoError> {
    match listing {
        Listing::Whole(m) if m.entries.len() > PAGED_MIN => Err(ProtoError::Manifest(format!(
            "a directory of {} entries must be paged (more than {PAGED_MIN})",
            m.entries.len()
        ))),
        _ => Ok(()),
    }
}

/// What a check must compare between a directory's index and its parent's:
/// runs of new pages, each with the run of the parent's pages in the same
/// place. The pages both indexes list (by id) are unchanged and anchor the
/// runs; between two anchors the new pages (none, for a deletion of whole
/// pages) replace the parent's pages (none, for an insertion of whole
/// pages). Unchanged pages are never read.
pub fn changed_pages(parent: &DirIndex, new: &DirIndex) -> Vec<(Range<usize>, Range<usize>)> {
    let in_parent: std::collections::HashMap<&ObjectId, usize> = parent
        .pages
        .iter()
        .enumerate()
        .map(|(i, p)| (&p.manifest, i))
        .collect();
    let mut runs = Vec::new();
    let (mut new_from, mut parent_from) = (0, 0);
    for (i, page) in new.pages.iter().enumerate() {
        // A page listed out of order is no anchor: it is compared too.
        let Some(&j) = in_parent.get(&page.manifest).filter(|&&j| j >= parent_from) else {
            continue;
        };
        if new_from < i || parent_from < j {
            runs.push((new_from..i, parent_from..j));
        }
        (new_from, parent_from) = (i + 1, j + 1);
    }
    if new_from < new.pages.len() || parent_from < parent.pages.len() {
        runs.push((new_from..new.pages.len(), parent_from..parent.pages.len()));
    }
    runs
}

/// One page of a re-cut directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Page {
    /// A page of the old index, unchanged (not read).
    Kept(PageRef),
    /// New entries, to be written as a page.
    New(Vec<Entry>),
}

/// The pages of a paged directory after `changes` (a name to its new entry,
/// or `None` to delete it), reading only the old pages the changes fall in
/// and, where a moved boundary calls for it, the pages after them.
/// `load(i)` returns the entries of old page `i`. The result is the same
/// cut as [`cut`] of the whole new listing, with every page that did not
/// change kept by reference. The caller turns a result of at most
/// [`PAGED_MIN`] entries back into one manifest. An index that breaks its
/// rules, or a change whose entry has another name than its key, is
/// refused.
pub fn recut<E: From<ProtoError>>(
    old: &DirIndex,
    changes: &BTreeMap<String, Option<Entry>>,
    mut load: impl FnMut(usize) -> Result<Vec<Entry>, E>,
) -> Result<Vec<Page>, E> {
    if let Some((key, _)) = changes
        .iter()
        .find(|(k, c)| c.as_ref().is_some_and(|e| &e.name != *k))
    {
        return Err(
            ProtoError::Manifest(format!("change {key:?} carries another entry's name")).into(),
        );
    }
    // A valid index has pages, so every name falls in one.
    old.validate()
        .map_err(|why| ProtoError::Manifest(format!("page index: {why}")))?;
    let n = old.pages.len();
    let mut touched = vec![false; n];
    for name in changes.keys() {
        touched[old.page_of(name)] = true;
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i < n {
        if !touched[i] {
            out.push(Page::Kept(old.pages[i].clone()));
            i += 1;
            continue;
        }
        // A run of pages from `i`: its cut starts where the old one did,
        // since everything before it is unchanged. It ends at the first
        // page end after the changes where the new cut ends a page too;
        // from there the old cut goes on unchanged.
        let mut entries = Vec::new();
        let mut j = i;
        loop {
            entries.extend(load(j)?);
            j += 1;
            while j < n && touched[j] {
                entries.extend(load(j)?);
                j += 1;
            }
            let lower = (i > 0).then(|| old.pages[i].first.as_str());
            let upper = old.pages.get(j).map(|p| p.first.as_str());
            let merged = merge(&entries, changes, lower, upper);
            let ranges = cut(&merged.iter().map(|e| e.name.as_str()).collect::<Vec<_>>());
            let closed = match (ranges.last(), merged.last()) {
                (Some(r), Some(e)) => ends_page(r.len(), &e.name),
                _ => true, // the run's entries are all gone
            };
            if closed || j == n {
                out.extend(ranges.into_iter().map(|r| Page::New(merged[r].to_vec())));
                break;
            }
        }
        i = j;
    }
    Ok(out)
}

/// The entries of a run of old pages with the changes whose names fall in
/// `[lower, upper)` applied (no bound for `None`).
fn merge(
    entries: &[Entry],
    changes: &BTreeMap<String, Option<Entry>>,
    lower: Option<&str>,
    upper: Option<&str>,
) -> Vec<Entry> {
    use std::ops::Bound;
    let mut by_name: BTreeMap<&[u8], &Entry> =
        entries.iter().map(|e| (e.name.as_bytes(), e)).collect();
    let from = lower.map_or(Bound::Unbounded, |l| Bound::Included(l.to_string()));
    let to = upper.map_or(Bound::Unbounded, |u| Bound::Excluded(u.to_string()));
    for (name, change) in changes.range((from, to)) {
        match change {
            Some(e) => by_name.insert(name.as_bytes(), e),
            None => by_name.remove(name.as_bytes()),
        };
    }
    by_name.into_values().cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift64*), so a failing case
    /// can be replayed from its seed.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn entry(name: &str, tag: u64) -> Entry {
        Entry::file(name, ObjectId::of(&tag.to_le_bytes()), tag)
    }

    fn listing(n: usize, rng: &mut Rng) -> Vec<Entry> {
        let mut names: Vec<String> = (0..n)
            .map(|_| format!("f{:08}", rng.below(1 << 30)))
            .collect();
        names.sort();
        names.dedup();
        names.iter().map(|s| entry(s, 0)).collect()
    }

    fn paged(entries: Vec<Entry>) -> (DirIndex, Vec<DirManifest>) {
        split(&DirManifest::new(entries).unwrap()).unwrap().unwrap()
    }

    #[test]
    fn pages_follow_the_size_rules_and_the_names() {
        let mut rng = Rng(7);
        let entries = listing(5_000, &mut rng);
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        let pages = cut(&names);
        assert_eq!(pages.first().unwrap().start, 0);
        assert_eq!(pages.last().unwrap().end, names.len());
        for w in pages.windows(2) {
            assert_eq!(w[0].end, w[1].start);
        }
        for (i, p) in pages.iter().enumerate() {
            assert!(p.len() <= PAGE_MAX);
            if i + 1 < pages.len() {
                assert!(p.len() >= PAGE_MIN);
                assert!(ends_page(p.len(), names[p.end - 1]));
            }
        }
        // About 64 a page on average: the rule is hashed, not positional.
        let average = names.len() / pages.len();
        assert!((40..=100).contains(&average), "{average} entries a page");
        // The cut from a page start is the same whatever came before it.
        let from_second = cut(&names[pages[1].start..]);
        assert_eq!(from_second[0].len(), pages[1].len());
    }

    #[test]
    fn an_index_round_trips_and_its_pages_reassemble_the_directory() {
        let mut rng = Rng(11);
        let entries = listing(1_000, &mut rng);
        let whole = DirManifest::new(entries).unwrap();
        let (index, pages) = split(&whole).unwrap().unwrap();
        assert!(index.pages.len() > 1);
        let bytes = index.encode();
        assert!(bytes.starts_with(br#"{"format":3,"entries":"#));
        assert_eq!(DirIndex::decode(&bytes).unwrap(), index);
        assert_eq!(assemble(&index, &pages).unwrap(), whole);
        // A small directory is not paged.
        let small = DirManifest::new(whole.entries[..PAGED_MIN].to_vec()).unwrap();
        assert!(split(&small).unwrap().is_none());
    }

    #[test]
    fn a_broken_index_or_page_is_refused() {
        let mut rng = Rng(13);
        let (index, pages) = paged(listing(1_000, &mut rng));
        let text = String::from_utf8(index.encode()).unwrap();
        // Not canonical, wrong format, wrong count, pages out of order.
        assert!(DirIndex::decode(text.replace(":3,", ": 3,").as_bytes()).is_err());
        assert!(DirIndex::decode(text.replace("\"format\":3", "\"format\":2").as_bytes()).is_err());
        let mut wrong_count = index.clone();
        wrong_count.entries += 1;
        assert!(DirIndex::decode(&wrong_count.encode()).is_err());
        let mut swapped = index.clone();
        swapped.pages.swap(0, 1);
        assert!(DirIndex::decode(&swapped.encode()).is_err());
        // A page that is not the one listed, pages cut elsewhere than the
        // rule cuts, and overlapping pages.
        let mut other = pages.clone();
        other.swap(0, 1);
        assert!(assemble(&index, &other).is_err());
        let mut moved = pages.clone();
        let taken = moved[1].entries.remove(0);
        moved[0].entries.push(taken);
        let mut moved_index = index.clone();
        moved_index.pages[0].entries += 1;
        moved_index.pages[1].entries -= 1;
        moved_index.pages[1].first = moved[1].entries[0].name.clone();
        assert!(assemble(&moved_index, &moved).is_err());
        assert!(assemble(&index, &pages[..pages.len() - 1]).is_err());
    }

    /// The index a re-cut directory gets (pages written as they come).
    fn index_of(pages: &[Page]) -> DirIndex {
        let refs: Vec<PageRef> = pages
            .iter()
            .map(|p| match p {
                Page::Kept(r) => r.clone(),
                Page::New(e) => PageRef {
                    first: e[0].name.clone(),
                    entries: e.len() as u64,
                    manifest: DirManifest::new(e.clone()).unwrap().id(),
                },
            })
            .collect();
        DirIndex {
            format: INDEX_FORMAT,
            entries: refs.iter().map(|r| r.entries).sum(),
            pages: refs,
        }
    }

    fn load_from(
        pages: &[DirManifest],
    ) -> impl FnMut(usize) -> Result<Vec<Entry>, ProtoError> + '_ {
        |i| Ok(pages[i].entries.clone())
    }

    #[test]
    fn both_forms_decode_and_only_a_small_directory_is_whole() {
        let mut rng = Rng(19);
        let entries = listing(1_000, &mut rng);
        let whole = DirManifest::new(entries.clone()).unwrap();
        let (index, _) = split(&whole).unwrap().unwrap();
        let paged = decode_dir(&index.encode()).unwrap();
        assert_eq!(paged, Listing::Paged(index.clone()));
        assert!(check_form(&paged).is_ok());
        let small = DirManifest::new(entries[..10].to_vec()).unwrap();
        let decoded = decode_dir(&small.encode()).unwrap();
        assert_eq!(decoded, Listing::Whole(small));
        assert!(check_form(&decoded).is_ok());
        // A large directory written whole (before paging) still decodes, but
        // a new tree may not have one.
        let large = decode_dir(&whole.encode()).unwrap();
        assert!(check_form(&large).is_err());
        assert!(decode_dir(br#"{"format":3,"entries":1,"pages":[]}"#).is_err());
    }

    #[test]
    fn a_check_compares_only_the_pages_that_changed() {
        let mut rng = Rng(23);
        let entries = listing(1_000, &mut rng);
        let (index, pages) = paged(entries.clone());
        assert!(changed_pages(&index, &index).is_empty());

        // One edited entry: one new page against the parent's page that held
        // the same names.
        let name = entries[600].name.clone();
        let changes = BTreeMap::from([(name.clone(), Some(entry(&name, 5)))]);
        let edited = index_of(&recut(&index, &changes, load_from(&pages)).unwrap());
        let p = index.page_of(&name);
        assert_eq!(changed_pages(&index, &edited), vec![(p..p + 1, p..p + 1)]);

        // Every entry of a middle page deleted: no new page, and the deleted
        // page is still compared (its entries are gone from the directory).
        let k = index.pages.len() / 2;
        let changes: BTreeMap<String, Option<Entry>> = pages[k]
            .entries
            .iter()
            .map(|e| (e.name.clone(), None))
            .collect();
        let shrunk = index_of(&recut(&index, &changes, load_from(&pages)).unwrap());
        let runs = changed_pages(&index, &shrunk);
        assert!(!runs.is_empty());
        assert!(
            runs.iter().any(|(_, old)| old.contains(&k)),
            "the deleted page {k} is compared: {runs:?}"
        );

        // A new first name, before all others: the first pages change.
        let before = "a-before-everything".to_string();
        let changes = BTreeMap::from([(before.clone(), Some(entry(&before, 1)))]);
        let grown = recut(&index, &changes, load_from(&pages)).unwrap();
        let Page::New(first) = &grown[0] else {
            panic!("the first page changed")
        };
        assert_eq!(first[0].name, before);
        assert_eq!(changed_pages(&index, &index_of(&grown))[0].1.start, 0);
    }

    #[test]
    fn each_broken_rule_of_an_index_is_refused() {
        let mut rng = Rng(29);
        let (index, pages) = paged(listing(1_000, &mut rng));
        let refused = |i: &DirIndex| DirIndex::decode(&i.encode()).is_err();
        assert!(!refused(&index));
        // A page other than the last with fewer than PAGE_MIN entries.
        let mut short = index.clone();
        short.pages[0].entries = PAGE_MIN as u64 - 1;
        short.entries = short.pages.iter().map(|p| p.entries).sum();
        assert!(refused(&short));
        // A page of more than PAGE_MAX.
        let mut long = index.clone();
        long.pages[0].entries = PAGE_MAX as u64 + 1;
        long.entries = long.pages.iter().map(|p| p.entries).sum();
        assert!(refused(&long));
        // An index of a directory small enough to be whole.
        let mut few = index.clone();
        few.pages.truncate(2);
        few.entries = few.pages.iter().map(|p| p.entries).sum();
        assert!(few.entries <= PAGED_MIN as u64);
        assert!(refused(&few));
        // An invalid first name.
        let mut bad_name = index.clone();
        bad_name.pages[1].first = "a/b".into();
        assert!(refused(&bad_name));
        // Two pages merged into one: cut where the rule does not cut.
        let mut merged_entries = pages[0].entries.clone();
        merged_entries.extend(pages[1].entries.iter().cloned());
        let merged_page = DirManifest::new(merged_entries).unwrap();
        let mut merged_index = index.clone();
        merged_index.pages[0].entries += merged_index.pages[1].entries;
        merged_index.pages[0].manifest = merged_page.id();
        merged_index.pages.remove(1);
        let mut merged_pages = vec![merged_page];
        merged_pages.extend(pages[2..].iter().cloned());
        assert!(assemble(&merged_index, &merged_pages).is_err());
        // A change that carries another entry's name.
        let changes = BTreeMap::from([("x".to_string(), Some(entry("y", 1)))]);
        assert!(recut(&index, &changes, load_from(&pages)).is_err());
    }

    /// The old pages' entries, as `recut` loads them, counting the loads.
    fn loader<'a>(
        pages: &'a [DirManifest],
        loads: &'a mut Vec<usize>,
    ) -> impl FnMut(usize) -> Result<Vec<Entry>, ProtoError> + 'a {
        move |i| {
            loads.push(i);
            Ok(pages[i].entries.clone())
        }
    }

    fn materialize(recut: &[Page], old_pages: &[DirManifest], old: &DirIndex) -> Vec<Vec<Entry>> {
        recut
            .iter()
            .map(|p| match p {
                Page::New(e) => e.clone(),
                Page::Kept(r) => {
                    let i = old.pages.iter().position(|o| o == r).unwrap();
                    old_pages[i].entries.clone()
                }
            })
            .collect()
    }

    #[test]
    fn a_recut_equals_the_cut_of_the_whole_new_listing() {
        for seed in 1..200u64 {
            let mut rng = Rng(seed * 0x9E37_79B9);
            let old_entries = listing(300 + rng.below(3_000) as usize, &mut rng);
            let (old, old_pages) = paged(old_entries.clone());
            let mut changes = BTreeMap::new();
            for _ in 0..1 + rng.below(40) {
                let (name, change) = match rng.below(3) {
                    // A new name, an edited entry, a deleted one.
                    0 => (format!("f{:08}", rng.below(1 << 30)), Some(1)),
                    1 => (
                        old_entries[rng.below(old_entries.len() as u64) as usize]
                            .name
                            .clone(),
                        Some(2),
                    ),
                    _ => (
                        old_entries[rng.below(old_entries.len() as u64) as usize]
                            .name
                            .clone(),
                        None,
                    ),
                };
                changes.insert(name.clone(), change.map(|t| entry(&name, t)));
            }
            let mut new_listing: BTreeMap<String, Entry> = old_entries
                .iter()
                .map(|e| (e.name.clone(), e.clone()))
                .collect();
            for (name, change) in &changes {
                match change {
                    Some(e) => new_listing.insert(name.clone(), e.clone()),
                    None => new_listing.remove(name),
                };
            }
            let new_entries: Vec<Entry> = new_listing.into_values().collect();
            let names: Vec<&str> = new_entries.iter().map(|e| e.name.as_str()).collect();
            let expected: Vec<Vec<Entry>> = cut(&names)
                .into_iter()
                .map(|r| new_entries[r].to_vec())
                .collect();

            let mut loads = Vec::new();
            let result = recut(&old, &changes, loader(&old_pages, &mut loads)).unwrap();
            assert_eq!(
                materialize(&result, &old_pages, &old),
                expected,
                "seed {seed}"
            );
            // Pages are read at most once, and only around the changes.
            let mut sorted = loads.clone();
            sorted.dedup();
            assert_eq!(sorted, loads, "seed {seed}: a page read twice");
            let touched: std::collections::BTreeSet<usize> =
                changes.keys().map(|n| old.page_of(n)).collect();
            assert!(
                loads.len() <= 2 * touched.len() + 2,
                "seed {seed}: {} pages read for {} touched",
                loads.len(),
                touched.len()
            );
            // Every page the recut kept is an old page, untouched.
            for p in &result {
                if let Page::Kept(r) = p {
                    assert!(!touched.contains(&old.pages.iter().position(|o| o == r).unwrap()));
                }
            }
        }
    }

    #[test]
    fn one_change_in_a_large_directory_reads_one_page_and_writes_one() {
        let mut rng = Rng(17);
        let old_entries = listing(1_000, &mut rng);
        let (old, old_pages) = paged(old_entries.clone());
        let name = old_entries[500].name.clone();
        let changes = BTreeMap::from([(name.clone(), Some(entry(&name, 9)))]);
        let mut loads = Vec::new();
        let result = recut(&old, &changes, loader(&old_pages, &mut loads)).unwrap();
        assert_eq!(loads, vec![old.page_of(&name)]);
        let new = result.iter().filter(|p| matches!(p, Page::New(_))).count();
        assert_eq!(new, 1);
        assert_eq!(result.len(), old.pages.len());
    }
}
