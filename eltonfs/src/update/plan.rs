//! The three-way merge decision for one path, without IO: given what the
//! mounted version (*base*) had there, what the head (*theirs*) has, and
//! what the upper layer (*ours*) holds, say what to do so that the mount,
//! moved onto the head, shows both sides' changes and loses nothing.
//!
//! The rules (documented for users in `docs/eltonfs.md`, "elton update"):
//! - a path only one side changed takes that side's version;
//! - a path both sides changed the same way is no conflict;
//! - a path both sides changed differently is a conflict: ours stays at the
//!   path, theirs is copied next to it as `NAME.elton-theirs`;
//! - deleted by us, changed by them: theirs comes back at the path (there
//!   is nothing of ours to keep; git leaves the modified file too);
//! - changed by us, deleted by them: ours stays (a directory of ours is
//!   first made self-contained, since theirs no longer has its other files).

use elton_proto::{Entry, EntryKind, ObjectId};
use serde::{Deserialize, Serialize};

/// A directory's own attributes (what a manifest entry records of it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirAttrs {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl DirAttrs {
    pub fn of(e: &Entry) -> Self {
        Self {
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
        }
    }
}

/// What the upper layer holds at a path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ours {
    /// A whiteout: we deleted the path.
    Whiteout,
    /// A file, symlink or special file. `same_as_theirs`: its content (and
    /// kind) equals theirs; only asked where theirs changed the path.
    Leaf { same_as_theirs: bool },
    /// A directory; `opaque` when it replaced the lower one wholesale.
    Dir { opaque: bool, attrs: DirAttrs },
}

/// How both sides changed a path they both touched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConflictKind {
    /// Both changed it (or both created it), differently.
    BothChanged,
    /// We deleted it, they changed it: theirs is back at the path.
    DeletedByUs,
    /// We changed it, they deleted it: ours stays at the path.
    DeletedByThem,
}

impl ConflictKind {
    pub fn describe(self) -> &'static str {
        match self {
            ConflictKind::BothChanged => "changed on both sides",
            ConflictKind::DeletedByUs => "deleted here, changed in the head",
            ConflictKind::DeletedByThem => "changed here, deleted in the head",
        }
    }
}

/// One thing to do to the upper layer at the decided path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Remove our whiteout, so that theirs shows through.
    RemoveWhiteout,
    /// Copy the base's remaining entries of our directory into the upper
    /// and mark it opaque (done against the base, before the move), so it
    /// keeps everything it showed although theirs lacks it.
    Freeze,
    /// Copy theirs (file, link or whole tree) next to ours.
    CopyTheirs,
    /// Give our directory theirs' attributes (we left ours as in base).
    SetAttrs(DirAttrs),
    /// Decide the directory's children: lower listings of both sides.
    Descend {
        base: Option<ObjectId>,
        theirs: Option<ObjectId>,
    },
}

/// The decision for one path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    pub steps: Vec<Step>,
    pub conflict: Option<ConflictKind>,
}

impl Decision {
    fn keep() -> Self {
        Self::default()
    }

    fn conflict(kind: ConflictKind, steps: Vec<Step>) -> Self {
        Self {
            steps,
            conflict: Some(kind),
        }
    }
}

fn dir_object(e: Option<&Entry>) -> Option<ObjectId> {
    e.filter(|e| e.kind == EntryKind::Dir)
        .and_then(|e| e.object)
}

fn is_dir(e: Option<&Entry>) -> bool {
    e.is_some_and(|e| e.kind == EntryKind::Dir)
}

/// Decides one path. `base` and `theirs` are the lower entries at the path
/// in the mounted version and in the head (`None`: absent).
pub fn decide(base: Option<&Entry>, theirs: Option<&Entry>, ours: &Ours) -> Decision {
    if base == theirs {
        // Theirs left the path alone: ours stands as it is.
        return Decision::keep();
    }
    let both = ConflictKind::BothChanged;
    match ours {
        Ours::Whiteout => match (base, theirs) {
            (_, None) => Decision::keep(),
            (None, Some(_)) => Decision {
                steps: vec![Step::RemoveWhiteout],
                conflict: None,
            },
            (Some(_), Some(_)) => {
                Decision::conflict(ConflictKind::DeletedByUs, vec![Step::RemoveWhiteout])
            }
        },
        Ours::Leaf { same_as_theirs } => match theirs {
            _ if *same_as_theirs => Decision::keep(),
            None => Decision::conflict(ConflictKind::DeletedByThem, vec![]),
            Some(_) => Decision::conflict(both, vec![Step::CopyTheirs]),
        },
        Ours::Dir { opaque: true, .. } => match theirs {
            None => Decision::conflict(ConflictKind::DeletedByThem, vec![]),
            Some(_) => Decision::conflict(both, vec![Step::CopyTheirs]),
        },
        Ours::Dir {
            opaque: false,
            attrs,
        } => {
            let freeze = if is_dir(base) {
                vec![Step::Freeze]
            } else {
                vec![]
            };
            match theirs {
                None => Decision::conflict(ConflictKind::DeletedByThem, freeze),
                Some(t) if t.kind != EntryKind::Dir => {
                    let mut steps = freeze;
                    steps.push(Step::CopyTheirs);
                    Decision::conflict(both, steps)
                }
                Some(t) => {
                    let mut steps = Vec::new();
                    if let Some(b) = base.filter(|b| b.kind == EntryKind::Dir) {
                        let theirs_attrs = DirAttrs::of(t);
                        if *attrs == DirAttrs::of(b) && theirs_attrs != *attrs {
                            steps.push(Step::SetAttrs(theirs_attrs));
                        }
                    }
                    steps.push(Step::Descend {
                        base: dir_object(base),
                        theirs: t.object,
                    });
                    Decision {
                        steps,
                        conflict: None,
                    }
                }
            }
        }
    }
}

/// The name theirs is copied to, next to `name`: `NAME.elton-theirs`, or
/// `NAME.elton-theirs-2`, … when `taken` says a name is already in use.
pub fn theirs_name(name: &str, taken: impl Fn(&str) -> bool) -> String {
    let first = format!("{name}.elton-theirs");
    if !taken(&first) {
        return first;
    }
    (2u32..)
        .map(|n| format!("{name}.elton-theirs-{n}"))
        .find(|c| !taken(c))
        .unwrap_or(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(id: &[u8]) -> Entry {
        Entry {
            name: "f".into(),
            kind: EntryKind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: id.len() as u64,
            mtime: 1,
            object: Some(ObjectId::of(id)),
            recipe: false,
            target: None,
            xattrs: None,
        }
    }

    fn dir(id: &[u8], mode: u32) -> Entry {
        Entry {
            kind: EntryKind::Dir,
            mode,
            ..file(id)
        }
    }

    const LEAF: Ours = Ours::Leaf {
        same_as_theirs: false,
    };

    fn ours_dir(opaque: bool, mode: u32) -> Ours {
        Ours::Dir {
            opaque,
            attrs: DirAttrs {
                mode,
                uid: 0,
                gid: 0,
            },
        }
    }

    #[test]
    fn unchanged_by_theirs_keeps_ours_whatever_it_is() {
        let b = file(b"b");
        for ours in [Ours::Whiteout, LEAF, ours_dir(true, 0o755)] {
            assert_eq!(decide(Some(&b), Some(&b), &ours), Decision::keep());
            assert_eq!(decide(None, None, &ours), Decision::keep());
        }
    }

    #[test]
    fn changed_leaf_on_both_sides_keeps_ours_and_copies_theirs() {
        let (b, t) = (file(b"b"), file(b"t"));
        let d = decide(Some(&b), Some(&t), &LEAF);
        assert_eq!(d.steps, vec![Step::CopyTheirs]);
        assert_eq!(d.conflict, Some(ConflictKind::BothChanged));
        // Both created it.
        let d = decide(None, Some(&t), &LEAF);
        assert_eq!(d.conflict, Some(ConflictKind::BothChanged));
    }

    #[test]
    fn the_same_change_on_both_sides_is_no_conflict() {
        let (b, t) = (file(b"b"), file(b"t"));
        let same = Ours::Leaf {
            same_as_theirs: true,
        };
        assert_eq!(decide(Some(&b), Some(&t), &same), Decision::keep());
        // Both deleted it.
        assert_eq!(decide(Some(&b), None, &Ours::Whiteout), Decision::keep());
    }

    #[test]
    fn deleted_by_us_changed_by_them_brings_theirs_back() {
        let (b, t) = (file(b"b"), file(b"t"));
        let d = decide(Some(&b), Some(&t), &Ours::Whiteout);
        assert_eq!(d.steps, vec![Step::RemoveWhiteout]);
        assert_eq!(d.conflict, Some(ConflictKind::DeletedByUs));
        // A whiteout over nothing must not hide what they added.
        let d = decide(None, Some(&t), &Ours::Whiteout);
        assert_eq!(d.steps, vec![Step::RemoveWhiteout]);
        assert_eq!(d.conflict, None);
    }

    #[test]
    fn changed_by_us_deleted_by_them_keeps_ours_whole() {
        let b = file(b"b");
        let d = decide(Some(&b), None, &LEAF);
        assert!(d.steps.is_empty());
        assert_eq!(d.conflict, Some(ConflictKind::DeletedByThem));
        // A directory we changed in part is frozen with the base's rest.
        let bd = dir(b"bd", 0o755);
        let d = decide(Some(&bd), None, &ours_dir(false, 0o755));
        assert_eq!(d.steps, vec![Step::Freeze]);
        assert_eq!(d.conflict, Some(ConflictKind::DeletedByThem));
        // An opaque one holds everything already.
        let d = decide(Some(&bd), None, &ours_dir(true, 0o755));
        assert!(d.steps.is_empty());
    }

    #[test]
    fn directories_changed_on_both_sides_merge_child_by_child() {
        let (b, t) = (dir(b"b", 0o755), dir(b"t", 0o755));
        let d = decide(Some(&b), Some(&t), &ours_dir(false, 0o755));
        assert_eq!(
            d.steps,
            vec![Step::Descend {
                base: b.object,
                theirs: t.object
            }]
        );
        assert_eq!(d.conflict, None);
        // Both created the directory: children have no base.
        let d = decide(None, Some(&t), &ours_dir(false, 0o755));
        assert_eq!(
            d.steps,
            vec![Step::Descend {
                base: None,
                theirs: t.object
            }]
        );
    }

    #[test]
    fn directory_attributes_follow_whoever_changed_them() {
        let (b, t) = (dir(b"b", 0o755), dir(b"t", 0o700));
        let d = decide(Some(&b), Some(&t), &ours_dir(false, 0o755));
        assert_eq!(
            d.steps[0],
            Step::SetAttrs(DirAttrs {
                mode: 0o700,
                uid: 0,
                gid: 0
            })
        );
        // We changed them: ours win.
        let d = decide(Some(&b), Some(&t), &ours_dir(false, 0o750));
        assert!(matches!(d.steps[..], [Step::Descend { .. }]));
    }

    #[test]
    fn a_directory_against_a_file_keeps_both() {
        let (bd, tf) = (dir(b"b", 0o755), file(b"t"));
        let d = decide(Some(&bd), Some(&tf), &ours_dir(false, 0o755));
        assert_eq!(d.steps, vec![Step::Freeze, Step::CopyTheirs]);
        assert_eq!(d.conflict, Some(ConflictKind::BothChanged));
        // Ours replaced a directory by a file; theirs changed the directory.
        let td = dir(b"t", 0o755);
        let d = decide(Some(&bd), Some(&td), &LEAF);
        assert_eq!(d.steps, vec![Step::CopyTheirs]);
        let d = decide(Some(&bd), Some(&td), &ours_dir(true, 0o755));
        assert_eq!(d.steps, vec![Step::CopyTheirs]);
    }

    #[test]
    fn theirs_copy_takes_a_free_name() {
        assert_eq!(theirs_name("a.txt", |_| false), "a.txt.elton-theirs");
        assert_eq!(
            theirs_name("a.txt", |n| n == "a.txt.elton-theirs"),
            "a.txt.elton-theirs-2"
        );
    }
}
