//! Which of the objects a master sent with a version record
//! (`VersionRecord.along_path`, `docs/formats.md` §6.1) this slave keeps.
//!
//! The home of a volume in another cluster sends the manifests on the path
//! being read and the file's recipe, so that a cold read does not wait one
//! WAN round trip per object. Nothing about them is trusted: only a chain
//! from the record's root is kept, each object the one its bytes hash to
//! and named, for the next name of the path, by the manifest before it.
//! Anything else (a broken chain, objects off the path, more than the path
//! has) is dropped, so a peer cannot make this slave store what the read
//! does not need. Pure, apart from hashing.

use bytes::Bytes;
use elton_proto::listing::{self, Step};
use elton_proto::{Entry, EntryKind, ObjectId, VolumePath};

/// The verified prefix of `objects` that follows `path` down from `root`.
pub fn chain_along(
    root: ObjectId,
    path: &VolumePath,
    objects: Vec<Vec<u8>>,
) -> Vec<(ObjectId, Bytes)> {
    let mut names = path.components().iter();
    // The id the next object must have, and whether it is a manifest.
    let mut want = Some((root, true));
    // A name looked up in a paged directory's index, to look up again in
    // the page it names (one level: a page is never an index).
    let mut in_page: Option<&String> = None;
    let mut kept = Vec::new();
    for bytes in objects {
        let Some((expected, manifest)) = want.take() else {
            break;
        };
        let id = ObjectId::of(&bytes);
        if id != expected {
            break;
        }
        let bytes = Bytes::from(bytes);
        let paged = in_page.is_some();
        if manifest && let Some(name) = in_page.take().or_else(|| names.next()) {
            // Bytes that hash to an id the version names; a bad manifest
            // only ends the chain (the read reports it when it decodes it).
            want = match listing::step(&bytes, name) {
                Some(Step::Page(page)) if !paged => {
                    in_page = Some(name);
                    Some((page, true))
                }
                Some(Step::Entry(entry)) => next_on_path(&entry, names.len() == 0),
                _ => None,
            };
        }
        kept.push((id, bytes));
    }
    kept
}

/// What an entry on the path leads to: a directory's manifest, or the
/// recipe of a chunked file that ends the path.
fn next_on_path(entry: &Entry, last: bool) -> Option<(ObjectId, bool)> {
    match (entry.kind, entry.object) {
        (EntryKind::Dir, Some(id)) => Some((id, true)),
        (EntryKind::File, Some(id)) if last && entry.recipe => Some((id, false)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use elton_proto::DirManifest;

    use super::*;

    /// `/d/big` (chunked): the root's, d's and the recipe's bytes.
    fn path_objects() -> (ObjectId, Vec<Vec<u8>>) {
        let recipe = b"recipe".to_vec();
        let big = Entry {
            recipe: true,
            ..Entry::file("big", ObjectId::of(&recipe), 1)
        };
        let d = DirManifest::new(vec![big]).unwrap().encode();
        let root = DirManifest::new(vec![Entry::dir("d", ObjectId::of(&d), 1)])
            .unwrap()
            .encode();
        (ObjectId::of(&root), vec![root, d, recipe])
    }

    fn ids(kept: &[(ObjectId, Bytes)]) -> Vec<ObjectId> {
        kept.iter().map(|(id, _)| *id).collect()
    }

    #[test]
    fn the_whole_chain_of_a_chunked_file_is_kept() {
        let (root, objects) = path_objects();
        let expected: Vec<_> = objects.iter().map(|b| ObjectId::of(b)).collect();
        let path = VolumePath::parse("d/big").unwrap();
        let kept = chain_along(root, &path, objects);
        assert_eq!(ids(&kept), expected);
        assert!(kept.iter().all(|(id, b)| ObjectId::of(b) == *id));
    }

    #[test]
    fn a_chain_that_does_not_start_at_the_root_or_breaks_is_cut_there() {
        let (root, mut objects) = path_objects();
        let path = VolumePath::parse("d/big").unwrap();
        let other_root = ObjectId::of(b"another version");
        assert!(chain_along(other_root, &path, objects.clone()).is_empty());

        objects[1] = b"not d's manifest".to_vec();
        assert_eq!(ids(&chain_along(root, &path, objects)), vec![root]);
    }

    #[test]
    fn objects_beyond_the_path_are_dropped() {
        let (root, mut objects) = path_objects();
        objects.push(b"junk a peer appended".to_vec());
        // The path ends at d: its manifest, not the recipe, is the last.
        let path = VolumePath::parse("d").unwrap();
        let kept = chain_along(root, &path, objects.clone());
        assert_eq!(kept.len(), 2);
        let path = VolumePath::parse("d/big").unwrap();
        assert_eq!(
            chain_along(root, &path, objects).len(),
            3,
            "junk after the recipe"
        );
        // A file that is not chunked has no recipe to follow.
        let path = VolumePath::parse("d/other").unwrap();
        let (root, objects) = path_objects();
        assert_eq!(chain_along(root, &path, objects).len(), 2);
    }
}
