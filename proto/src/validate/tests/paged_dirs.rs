use super::*;
use crate::ProtoError;
use crate::listing::{LoadedDir, Strictness, load_dir};
use crate::paged::{DirIndex, PageRef};

fn files(mem: &mut Mem, n: usize) -> Vec<Entry> {
    (0..n)
        .map(|i| mem.file(&format!("f{i:04}"), format!("{i}").as_bytes()))
        .collect()
}

fn loaded(mem: &Mem, id: ObjectId) -> LoadedDir {
    load_dir::<ProtoError>(&mem.objects[&id], Strictness::Canonical, |ids| {
        Ok(ids.iter().map(|p| mem.objects[p].clone()).collect())
    })
    .unwrap()
}

/// Stores an index exactly as given, with the pages it names.
fn raw_index(mem: &mut Mem, pages: Vec<Vec<Entry>>) -> ObjectId {
    let mut refs = Vec::new();
    for entries in pages {
        let first = entries[0].name.clone();
        let n = entries.len() as u64;
        refs.push(PageRef {
            first,
            entries: n,
            manifest: mem.raw_dir(entries),
        });
    }
    let index = DirIndex {
        format: crate::paged::INDEX_FORMAT,
        entries: refs.iter().map(|r| r.entries).sum(),
        pages: refs,
    };
    mem.put(&index.encode())
}

#[test]
fn a_paged_directory_is_checked_by_the_pages_that_changed() {
    let mut mem = Mem::default();
    let entries = files(&mut mem, 1000);
    let d1 = mem.subdir("d", entries.clone());
    let v1 = mem.dir(vec![d1.clone()]);
    let added = mem.check(v1, None).unwrap();
    // Every page and the index are added objects of the first version.
    let index1 = loaded(&mem, d1.object.unwrap()).index.unwrap();
    for r in &index1.pages {
        assert!(added.contains(&r.manifest));
    }
    mem.reads();
    mem.asked_held.lock().unwrap().clear();

    let mut changed = entries.clone();
    changed[500] = mem.file("f0500", b"new");
    let d2 = mem.subdir("d", changed.clone());
    let v2 = mem.dir(vec![d2.clone()]);
    let added = mem.check(v2, Some(v1)).unwrap();
    assert_eq!(*mem.asked_held.lock().unwrap(), [ObjectId::of(b"new")]);
    let index2 = loaded(&mem, d2.object.unwrap()).index.unwrap();
    let new_pages: Vec<&PageRef> = index2
        .pages
        .iter()
        .filter(|r| !index1.pages.contains(r))
        .collect();
    assert_eq!(new_pages.len(), 1);
    // Two roots, two indexes, the old and the new page, and at most the
    // unchanged page before it; not the other pages.
    let reads = mem.reads();
    assert!(reads.len() <= 7, "{} manifests read", reads.len());
    let mut want = vec![
        v2,
        d2.object.unwrap(),
        new_pages[0].manifest,
        ObjectId::of(b"new"),
    ];
    want.sort();
    let mut added = added;
    added.sort();
    assert_eq!(added, want);

    // The same change naming an object no node holds is refused.
    changed[500] = file_entry("f0500", ObjectId::of(b"nowhere"), 7);
    let d3 = mem.subdir("d", changed);
    let v3 = mem.dir(vec![d3]);
    let e = mem.check(v3, Some(v1)).unwrap_err();
    assert!(e.contains("d/f0500: refers to object"), "{e}");
}

#[test]
fn a_directory_changes_form_when_it_crosses_the_paging_size() {
    let mut mem = Mem::default();
    let entries = files(&mut mem, 300);
    let small = mem.subdir("d", entries[..200].to_vec());
    let v1 = mem.dir(vec![small]);
    mem.check(v1, None).unwrap();
    let large = mem.subdir("d", entries.clone());
    let v2 = mem.dir(vec![large]);
    mem.asked_held.lock().unwrap().clear();
    mem.check(v2, Some(v1)).unwrap();
    // The 100 files the directory gained are the only ones asked about.
    assert_eq!(mem.asked_held.lock().unwrap().len(), 100);
    let back = mem.subdir("d", entries[..250].to_vec());
    let v3 = mem.dir(vec![back]);
    mem.asked_held.lock().unwrap().clear();
    mem.check(v3, Some(v2)).unwrap();
    assert!(mem.asked_held.lock().unwrap().is_empty());
}

#[test]
fn a_directory_in_the_wrong_form_or_cut_elsewhere_is_refused() {
    let mut mem = Mem::default();
    let entries = files(&mut mem, 600);
    let good = mem.subdir("d", entries.clone());
    let v1 = mem.dir(vec![good.clone()]);
    mem.check(v1, None).unwrap();
    let cut: Vec<Vec<Entry>> = {
        let index = loaded(&mem, good.object.unwrap()).index.unwrap();
        let spans = crate::listing::page_spans(&index);
        spans.into_iter().map(|s| entries[s].to_vec()).collect()
    };

    // Whole, though it has more than 256 entries.
    let whole = dir_entry("d", mem.raw_dir(entries.clone()));
    let v = mem.dir(vec![whole]);
    for parent in [None, Some(v1)] {
        let e = mem.check(v, parent).unwrap_err();
        assert!(
            e.contains("d/: manifest") && e.contains("must be paged"),
            "{e}"
        );
    }

    // One entry moved from the second page into the first.
    let mut moved = cut.clone();
    let e0 = moved[1].remove(0);
    moved[0].push(e0);
    let bad = dir_entry("d", raw_index(&mut mem, moved));
    let v = mem.dir(vec![bad]);
    for parent in [None, Some(v1)] {
        let e = mem.check(v, parent).unwrap_err();
        assert!(e.contains("not cut where the cut rule cuts"), "{e}");
    }

    // The second page's first entry repeated at the end of the first.
    let mut overlapping = cut.clone();
    let again = overlapping[1][0].clone();
    overlapping[0].push(again);
    let bad = dir_entry("d", raw_index(&mut mem, overlapping));
    let v = mem.dir(vec![bad]);
    for parent in [None, Some(v1)] {
        assert!(mem.check(v, parent).is_err());
    }

    // A page no node holds.
    let mut missing = loaded(&mem, good.object.unwrap()).index.unwrap();
    missing.pages[1].manifest = ObjectId::of(b"no such page");
    let bad = dir_entry("d", mem.put(&missing.encode()));
    let v = mem.dir(vec![bad]);
    for parent in [None, Some(v1)] {
        let e = mem.check(v, parent).unwrap_err();
        assert!(e.contains("which no node holds"), "{e}");
    }

    // A parent's page described otherwise (another first name).
    let mut renamed = loaded(&mem, good.object.unwrap()).index.unwrap();
    renamed.pages[1].first = format!("{}-", renamed.pages[0].first);
    let bad = dir_entry("d", mem.put(&renamed.encode()));
    let v = mem.dir(vec![bad]);
    for parent in [None, Some(v1)] {
        let e = mem.check(v, parent).unwrap_err();
        assert!(e.contains("d/"), "{e}");
    }

    // A bad name inside a changed page.
    let mut named = cut.clone();
    let slashed = format!("{}/x", named[2][3].name);
    named[2][3] = mem.file(&slashed, b"x");
    let bad = dir_entry("d", raw_index(&mut mem, named));
    let v = mem.dir(vec![bad]);
    let e = mem.check(v, Some(v1)).unwrap_err();
    assert!(e.contains("invalid entry name"), "{e}");
}

#[test]
fn the_parents_last_page_followed_by_new_pages_must_end_at_a_cut() {
    let mut mem = Mem::default();
    let entries = files(&mut mem, 700);
    let d1 = mem.subdir("d", entries[..600].to_vec());
    let v1 = mem.dir(vec![d1.clone()]);
    mem.check(v1, None).unwrap();
    // Grown at the end through the real cut: accepted.
    let d2 = mem.subdir("d", entries.clone());
    let v2 = mem.dir(vec![d2]);
    mem.check(v2, Some(v1)).unwrap();
    // Grown by appending a page after the parent's unfinished last page.
    let index = loaded(&mem, d1.object.unwrap()).index.unwrap();
    let mut pages: Vec<Vec<Entry>> = crate::listing::page_spans(&index)
        .into_iter()
        .map(|s| entries[s].to_vec())
        .collect();
    let last = pages.last().unwrap();
    if !crate::paged::ends_page(last.len(), &last.last().unwrap().name) {
        pages.push(entries[600..].to_vec());
        let bad = dir_entry("d", raw_index(&mut mem, pages));
        let v = mem.dir(vec![bad]);
        let e = mem.check(v, Some(v1)).unwrap_err();
        assert!(e.contains("not cut where the cut rule cuts"), "{e}");
    }
}

#[test]
fn deleting_whole_pages_is_accepted() {
    let mut mem = Mem::default();
    let entries = files(&mut mem, 1000);
    let d1 = mem.subdir("d", entries.clone());
    let v1 = mem.dir(vec![d1.clone()]);
    mem.check(v1, None).unwrap();
    let index = loaded(&mem, d1.object.unwrap()).index.unwrap();
    let spans = crate::listing::page_spans(&index);
    // The first page, a middle one, and both together.
    let middle = spans.len() / 2;
    for gone in [vec![0], vec![middle], vec![0, middle]] {
        let kept: Vec<Entry> = entries
            .iter()
            .enumerate()
            .filter(|(i, _)| !gone.iter().any(|&p| spans[p].contains(i)))
            .map(|(_, e)| e.clone())
            .collect();
        let d2 = mem.subdir("d", kept);
        let new = loaded(&mem, d2.object.unwrap()).index.unwrap();
        assert_eq!(new.pages.len(), index.pages.len() - gone.len(), "{gone:?}");
        let v2 = mem.dir(vec![d2]);
        mem.check(v2, Some(v1))
            .unwrap_or_else(|e| panic!("pages {gone:?} deleted: {e}"));
    }
}
