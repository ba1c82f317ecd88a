//! Pure edits of a directory tree: given manifests, compute the manifests of
//! the new tree. Storing them is the caller's job.

use elton_proto::{DirManifest, Entry, EntryKind, ObjectId, VolumePath};

use crate::SlaveError;

/// Places `leaf` at `path` under `root` (creating missing directories with
/// `dir_template`'s metadata). Returns the new manifests, children before
/// parents, the new root last.
pub fn put_entry(
    root: DirManifest,
    path: &VolumePath,
    leaf: Entry,
    dir_template: &Entry,
    load: &mut dyn FnMut(&ObjectId) -> Result<DirManifest, SlaveError>,
) -> Result<Vec<DirManifest>, SlaveError> {
    let Some((parents, name)) = path.split_last() else {
        return Err(SlaveError::BadRequest(
            "cannot replace the root directory with a file".into(),
        ));
    };
    if leaf.name != name {
        return Err(SlaveError::BadRequest(
            "entry name does not match path".into(),
        ));
    }
    let mut out = Vec::new();
    let new_root = descend(root, parents, leaf, dir_template, load, &mut out, "")?;
    out.push(new_root);
    Ok(out)
}

fn descend(
    mut dir: DirManifest,
    parents: &[String],
    leaf: Entry,
    dir_template: &Entry,
    load: &mut dyn FnMut(&ObjectId) -> Result<DirManifest, SlaveError>,
    out: &mut Vec<DirManifest>,
    at: &str,
) -> Result<DirManifest, SlaveError> {
    let Some((first, rest)) = parents.split_first() else {
        if let Some(existing) = dir.get(&leaf.name)
            && existing.kind == EntryKind::Dir
        {
            return Err(SlaveError::PathConflict(format!(
                "{at}{} is a directory",
                leaf.name
            )));
        }
        dir.upsert(leaf);
        return Ok(dir);
    };
    let (child, mut entry) = match dir.get(first) {
        Some(e) if e.kind == EntryKind::Dir => {
            let id = e
                .object
                .ok_or_else(|| SlaveError::Io("dir entry without object".into()))?;
            (load(&id)?, e.clone())
        }
        Some(_) => {
            return Err(SlaveError::PathConflict(format!(
                "{at}{first} is not a directory"
            )));
        }
        None => (
            DirManifest::default(),
            Entry {
                name: first.clone(),
                ..dir_template.clone()
            },
        ),
    };
    let child = descend(
        child,
        rest,
        leaf,
        dir_template,
        load,
        out,
        &format!("{at}{first}/"),
    )?;
    // The id a parent names is the stored form's: an index for a large
    // directory. The caller encodes each manifest again to store it; an
    // upload rewrites one path, so that costs little.
    entry.object = Some(elton_proto::listing::encode_dir(&child)?.id);
    entry.size = child.entries.len() as u64;
    out.push(child);
    dir.upsert(entry);
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn entry(name: &str, kind: EntryKind, object: ObjectId) -> Entry {
        Entry {
            name: name.into(),
            kind,
            mode: 0o755,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: 0,
            object: Some(object),
            recipe: false,
            target: None,
            xattrs: None,
        }
    }

    #[test]
    fn put_rewrites_only_the_path_to_the_change() {
        let mut stored = HashMap::new();
        let sub =
            DirManifest::new(vec![entry("keep", EntryKind::File, ObjectId::of(b"k"))]).unwrap();
        stored.insert(sub.id(), sub.clone());
        let other = DirManifest::default();
        stored.insert(other.id(), other.clone());
        let root = DirManifest::new(vec![
            entry("a", EntryKind::Dir, sub.id()),
            entry("z", EntryKind::Dir, other.id()),
        ])
        .unwrap();
        let mut load = |id: &ObjectId| {
            stored
                .get(id)
                .cloned()
                .ok_or(SlaveError::NotFound("x".into()))
        };
        let template = entry("", EntryKind::Dir, ObjectId::of(b""));
        let path = VolumePath::parse("a/new/f.txt").unwrap();
        let leaf = entry("f.txt", EntryKind::File, ObjectId::of(b"f"));
        let out = put_entry(root.clone(), &path, leaf, &template, &mut load).unwrap();
        assert_eq!(out.len(), 3, "new dir, rewritten a, rewritten root");
        let new_root = out.last().unwrap();
        assert_eq!(
            new_root.get("z").unwrap().object,
            Some(other.id()),
            "sibling subtree shared"
        );
        let a = &out[1];
        assert!(a.get("keep").is_some() && a.get("new").is_some());

        let bad = VolumePath::parse("a/keep/x").unwrap();
        let leaf = entry("x", EntryKind::File, ObjectId::of(b"x"));
        let err = put_entry(root, &bad, leaf, &template, &mut load).unwrap_err();
        assert!(matches!(err, SlaveError::PathConflict(_)), "{err}");
    }
}
