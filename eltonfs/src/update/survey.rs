//! Walks the upper layer (only what we changed) beside the base's and the
//! head's manifests and asks [`super::plan::decide`] about every path we
//! touched, producing the whole [`MergePlan`] before anything is changed.

use std::collections::HashSet;
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use elton_proto::{DirManifest, Entry, EntryKind, ObjectId};
use serde::{Deserialize, Serialize};

use super::plan::{ConflictKind, DirAttrs, Ours, Step, decide, theirs_name};
use crate::fs::layers::{Layers, is_opaque, is_whiteout};

/// One change to the upper layer; each is idempotent, so that an update
/// interrupted by a crash is finished by applying its plan again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Action {
    RemoveWhiteout {
        path: String,
    },
    Freeze {
        path: String,
    },
    CopyTheirs {
        path: String,
        to: String,
        entry: Entry,
    },
    SetAttrs {
        path: String,
        attrs: DirAttrs,
    },
}

/// A path both sides changed, as reported to the user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    pub path: String,
    pub kind: ConflictKind,
    /// Where theirs was copied, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub theirs: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergePlan {
    pub actions: Vec<Action>,
    pub conflicts: Vec<Conflict>,
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}/{name}")
    }
}

fn manifest(layers: &Layers, id: Option<ObjectId>) -> io::Result<Option<Arc<DirManifest>>> {
    id.map(|id| layers.lower.manifest(&id)).transpose()
}

/// Plans moving `layers` (whose root is the base) onto `theirs_root`.
pub fn survey(layers: &Layers, theirs_root: Option<ObjectId>) -> io::Result<MergePlan> {
    if is_opaque(&layers.upper) {
        return Err(io::Error::other(
            "the upper replaces the whole tree (its root is opaque); there is nothing to merge \
             it with: copy your files out and mount the head afresh",
        ));
    }
    let base = manifest(layers, layers.root)?;
    let theirs = manifest(layers, theirs_root)?;
    let mut plan = MergePlan::default();
    walk(layers, "", base, theirs, &mut plan)?;
    Ok(plan)
}

fn walk(
    layers: &Layers,
    rel: &str,
    base: Option<Arc<DirManifest>>,
    theirs: Option<Arc<DirManifest>>,
    plan: &mut MergePlan,
) -> io::Result<()> {
    let dir = layers.upper_path(Path::new(rel));
    let mut upper_names = HashSet::new();
    let mut items = Vec::new();
    for item in fs::read_dir(&dir)? {
        let item = item?;
        let name = item.file_name().into_string().map_err(|n| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("file name {n:?} is not UTF-8"),
            )
        })?;
        upper_names.insert(name.clone());
        items.push(name);
    }
    items.sort();
    let mut planned_names: HashSet<String> = HashSet::new();
    for name in items {
        let path = join(rel, &name);
        let upath = dir.join(&name);
        let m = fs::symlink_metadata(&upath)?;
        let b = base.as_ref().and_then(|d| d.get(&name));
        let t = theirs.as_ref().and_then(|d| d.get(&name));
        let ours = if is_whiteout(&upath, &m) {
            Ours::Whiteout
        } else if m.is_dir() {
            Ours::Dir {
                opaque: is_opaque(&upath),
                attrs: DirAttrs {
                    mode: m.mode() & 0o7777,
                    uid: m.uid(),
                    gid: m.gid(),
                },
            }
        } else {
            // Hash ours only where theirs changed the path too.
            let same_as_theirs = match t {
                Some(t) if b != Some(t) => same_content(&upath, &m, t)?,
                _ => false,
            };
            Ours::Leaf { same_as_theirs }
        };
        let decision = decide(b, t, &ours);
        let mut copied_to = None;
        for step in decision.steps {
            match step {
                Step::RemoveWhiteout => plan
                    .actions
                    .push(Action::RemoveWhiteout { path: path.clone() }),
                Step::Freeze => plan.actions.push(Action::Freeze { path: path.clone() }),
                Step::SetAttrs(attrs) => plan.actions.push(Action::SetAttrs {
                    path: path.clone(),
                    attrs,
                }),
                Step::CopyTheirs => {
                    let Some(t) = t else { continue };
                    let to_name = theirs_name(&name, |n| {
                        upper_names.contains(n)
                            || planned_names.contains(n)
                            || theirs.as_ref().is_some_and(|d| d.get(n).is_some())
                    });
                    planned_names.insert(to_name.clone());
                    let to = join(rel, &to_name);
                    copied_to = Some(to.clone());
                    plan.actions.push(Action::CopyTheirs {
                        path: path.clone(),
                        to,
                        entry: Entry {
                            name: to_name,
                            ..t.clone()
                        },
                    });
                }
                Step::Descend {
                    base: bd,
                    theirs: td,
                } => {
                    let (bm, tm) = (manifest(layers, bd)?, manifest(layers, td)?);
                    walk(layers, &path, bm, tm, plan)?;
                }
            }
        }
        if let Some(kind) = decision.conflict {
            plan.conflicts.push(Conflict {
                path,
                kind,
                theirs: copied_to,
            });
        }
    }
    Ok(())
}

/// Whether the upper entry at `path` holds what `theirs` holds (kind,
/// content, permissions); then both sides made the same change.
fn same_content(path: &Path, m: &Metadata, theirs: &Entry) -> io::Result<bool> {
    match theirs.kind {
        EntryKind::File if m.is_file() => {
            if m.mode() & 0o7777 != theirs.mode || m.len() != theirs.size {
                return Ok(false);
            }
            let id = if theirs.recipe {
                let recipe = crate::chunking::chunk(fs::File::open(path)?, |_, _, _| Ok(()))?;
                recipe.id()
            } else {
                crate::walk::hash_file(path)
                    .map_err(|e| io::Error::other(format!("{e:#}")))?
                    .0
            };
            Ok(Some(id) == theirs.object)
        }
        EntryKind::Symlink if m.file_type().is_symlink() => {
            let target = fs::read_link(path)?;
            Ok(theirs.target.as_deref().map(Path::new) == Some(target.as_path()))
        }
        _ => Ok(false),
    }
}
