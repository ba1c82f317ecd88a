//! The merge planned and applied on a real upper directory over in-memory
//! base and head trees.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use elton_proto::{DirManifest, Entry, EntryKind, ObjectId, Recipe};

use super::apply::apply;
use super::plan::ConflictKind;
use super::survey::survey;
use crate::fs::layers::{Layers, make_whiteout};
use crate::fs::lower::LowerSource;

struct FakeLower {
    manifests: HashMap<ObjectId, Arc<DirManifest>>,
    objects: PathBuf,
}

impl LowerSource for FakeLower {
    fn manifest(&self, id: &ObjectId) -> io::Result<Arc<DirManifest>> {
        self.manifests
            .get(id)
            .cloned()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EIO))
    }
    fn object_path(&self, id: &ObjectId) -> io::Result<PathBuf> {
        Ok(self.objects.join(id.to_hex()))
    }
    fn recipe(&self, _id: &ObjectId) -> io::Result<Arc<Recipe>> {
        Err(io::Error::from_raw_os_error(libc::EIO))
    }
    fn is_local(&self, _id: &ObjectId) -> bool {
        true
    }
}

/// Builds the tree of `files` (path → content), storing objects and
/// manifests; returns the root.
fn tree(
    files: &[(&str, &str)],
    objects: &Path,
    manifests: &mut HashMap<ObjectId, Arc<DirManifest>>,
) -> ObjectId {
    #[derive(Default)]
    struct Dir(BTreeMap<String, Node>);
    enum Node {
        File(String),
        Dir(Dir),
    }
    let mut root = Dir::default();
    for (path, content) in files {
        let parts: Vec<&str> = path.split('/').collect();
        let mut d = &mut root;
        for p in &parts[..parts.len() - 1] {
            let n =
                d.0.entry(p.to_string())
                    .or_insert_with(|| Node::Dir(Dir::default()));
            let Node::Dir(sub) = n else {
                panic!("file over dir")
            };
            d = sub;
        }
        d.0.insert(
            parts[parts.len() - 1].to_string(),
            Node::File(content.to_string()),
        );
    }
    fn store(
        d: &Dir,
        objects: &Path,
        manifests: &mut HashMap<ObjectId, Arc<DirManifest>>,
    ) -> ObjectId {
        let mut entries = Vec::new();
        for (name, n) in &d.0 {
            let (kind, id, size) = match n {
                Node::File(c) => {
                    let id = ObjectId::of(c.as_bytes());
                    fs::write(objects.join(id.to_hex()), c).unwrap();
                    (EntryKind::File, id, c.len() as u64)
                }
                Node::Dir(sub) => (EntryKind::Dir, store(sub, objects, manifests), 0),
            };
            entries.push(Entry {
                name: name.clone(),
                kind,
                mode: if kind == EntryKind::Dir { 0o755 } else { 0o644 },
                uid: 0,
                gid: 0,
                size,
                mtime: 1_000_000_000,
                object: Some(id),
                recipe: false,
                target: None,
                xattrs: None,
            });
        }
        let m = DirManifest::new(entries).unwrap();
        let id = m.id();
        manifests.insert(id, Arc::new(m));
        id
    }
    store(&root, objects, manifests)
}

/// The merged content of a file, or `None` when the path is absent.
fn read(l: &Layers, rel: &str) -> Option<String> {
    let view = l.view(Path::new(rel)).unwrap()?;
    Some(match view.upper {
        Some(_) => fs::read_to_string(l.upper_path(Path::new(rel))).unwrap(),
        None => {
            let id = view.lower.unwrap().object.unwrap();
            fs::read_to_string(l.lower.object_path(&id).unwrap()).unwrap()
        }
    })
}

fn names(l: &Layers, rel: &str) -> Vec<String> {
    let view = l.view(Path::new(rel)).unwrap().unwrap();
    l.list(Path::new(rel), &view)
        .unwrap()
        .into_keys()
        .map(|n| n.into_string().unwrap())
        .collect()
}

#[test]
fn phase1_disjoint_changes_merge_and_conflicts_keep_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let objects = dir.path().join("objects");
    fs::create_dir(&objects).unwrap();
    let mut manifests = HashMap::new();
    let base = tree(
        &[
            ("a.txt", "a"),
            ("same.txt", "s"),
            ("both.txt", "b"),
            ("gone.txt", "g"),
            ("del.txt", "del"),
            ("d/x", "x"),
        ],
        &objects,
        &mut manifests,
    );
    let theirs = tree(
        &[
            ("a.txt", "a"),
            ("same.txt", "s-theirs"),
            ("both.txt", "b2"),
            ("del.txt", "del-theirs"),
            ("new.txt", "n"),
            ("d/x", "x"),
            ("d/y", "y"),
        ],
        &objects,
        &mut manifests,
    );
    fs::create_dir(dir.path().join("upper")).unwrap();
    fs::create_dir(dir.path().join("work")).unwrap();
    let mut l = Layers::new(
        dir.path().join("upper"),
        dir.path().join("work"),
        Arc::new(FakeLower {
            manifests,
            objects: objects.clone(),
        }),
        Some(base),
    );
    // Ours: a conflicting edit, the same edit as theirs, an edit of a file
    // they deleted, a deletion of a file they edited, and additions.
    let up = |p: &str| l.upper_path(Path::new(p));
    fs::write(up("same.txt"), "s-ours").unwrap();
    fs::write(up("both.txt"), "b2").unwrap();
    fs::write(up("gone.txt"), "g-ours").unwrap();
    make_whiteout(&up("del.txt")).unwrap();
    fs::write(up("mine.txt"), "m").unwrap();
    l.copy_up(Path::new("d")).unwrap();
    fs::write(up("d/z"), "z").unwrap();

    let plan = survey(&l, Some(theirs)).unwrap();
    let conflicts: Vec<_> = plan
        .conflicts
        .iter()
        .map(|c| (c.path.as_str(), c.kind, c.theirs.as_deref()))
        .collect();
    assert_eq!(
        conflicts,
        vec![
            ("del.txt", ConflictKind::DeletedByUs, None),
            ("gone.txt", ConflictKind::DeletedByThem, None),
            (
                "same.txt",
                ConflictKind::BothChanged,
                Some("same.txt.elton-theirs")
            ),
        ]
    );
    apply(&mut l, &plan, Some(base), Some(theirs)).unwrap();
    let check = |l: &Layers| {
        assert_eq!(read(l, "a.txt").as_deref(), Some("a"));
        assert_eq!(read(l, "same.txt").as_deref(), Some("s-ours"));
        assert_eq!(
            read(l, "same.txt.elton-theirs").as_deref(),
            Some("s-theirs")
        );
        assert_eq!(read(l, "both.txt").as_deref(), Some("b2"));
        assert_eq!(read(l, "gone.txt").as_deref(), Some("g-ours"));
        assert_eq!(read(l, "del.txt").as_deref(), Some("del-theirs"));
        assert_eq!(read(l, "new.txt").as_deref(), Some("n"));
        assert_eq!(read(l, "mine.txt").as_deref(), Some("m"));
        assert_eq!(names(l, "d"), vec!["x", "y", "z"]);
    };
    check(&l);
    // Applied again (a crash before the journal was dropped): the same.
    apply(&mut l, &plan, Some(base), Some(theirs)).unwrap();
    check(&l);
    // On the head now: nothing left to merge against it.
    assert_eq!(survey(&l, Some(theirs)).unwrap(), Default::default());
}

#[test]
fn phase2_a_directory_they_deleted_keeps_everything_we_saw() {
    let dir = tempfile::tempdir().unwrap();
    let objects = dir.path().join("objects");
    fs::create_dir(&objects).unwrap();
    let mut manifests = HashMap::new();
    let base = tree(
        &[("d/x", "x"), ("d/y", "y"), ("top", "t")],
        &objects,
        &mut manifests,
    );
    let theirs = tree(&[("top", "t")], &objects, &mut manifests);
    fs::create_dir(dir.path().join("upper")).unwrap();
    fs::create_dir(dir.path().join("work")).unwrap();
    let mut l = Layers::new(
        dir.path().join("upper"),
        dir.path().join("work"),
        Arc::new(FakeLower { manifests, objects }),
        Some(base),
    );
    l.copy_up(Path::new("d/x")).unwrap();
    fs::write(l.upper_path(Path::new("d/x")), "x-ours").unwrap();
    let plan = survey(&l, Some(theirs)).unwrap();
    assert_eq!(plan.conflicts.len(), 1);
    assert_eq!(plan.conflicts[0].kind, ConflictKind::DeletedByThem);
    apply(&mut l, &plan, Some(base), Some(theirs)).unwrap();
    assert_eq!(read(&l, "d/x").as_deref(), Some("x-ours"));
    assert_eq!(read(&l, "d/y").as_deref(), Some("y"));
}
