//! Carries out a [`MergePlan`] on the upper layer. Order matters for
//! failures: the steps that may fail on the network (freezing our
//! directories against the base, copying theirs) come first, and a failure
//! there removes the copies made so far, so a failed update leaves the
//! mount showing what it showed before. The local steps and the switch of
//! the lower root come last.

use std::fs;
use std::io;
use std::path::Path;

use elton_proto::{Entry, EntryKind, ObjectId};

use super::survey::{Action, MergePlan};
use crate::fs::layers::{Layers, is_whiteout, set_opaque};

/// Applies `plan` to `layers` (root = `base`), then moves the lower to
/// `theirs`. Idempotent: applying a plan again after a crash finishes it.
pub fn apply(
    layers: &mut Layers,
    plan: &MergePlan,
    base: Option<ObjectId>,
    theirs: Option<ObjectId>,
) -> io::Result<()> {
    // Upper directories are replaced by paths below (and a failed attempt
    // removes its copies): the descriptor cache starts afresh either way.
    layers.dirs.forget_all();
    layers.root = base;
    let mut copied = Vec::new();
    let fetching = plan.actions.iter().try_for_each(|a| match a {
        Action::Freeze { path } => layers.copy_up_tree(Path::new(path)),
        Action::CopyTheirs { to, entry, .. } => {
            copied.push(to.clone());
            copy_theirs(layers, Path::new(to), entry)
        }
        _ => Ok(()),
    });
    if let Err(e) = fetching {
        for to in copied {
            if let Err(undo) = layers.remove_upper(Path::new(&to)) {
                tracing::warn!("removing {to} after a failed update: {undo}");
            }
        }
        return Err(e);
    }
    for a in &plan.actions {
        match a {
            Action::RemoveWhiteout { path } => {
                let p = layers.upper_path(Path::new(path));
                if let Ok(m) = fs::symlink_metadata(&p)
                    && is_whiteout(&p, &m)
                {
                    fs::remove_file(&p)?;
                }
            }
            Action::SetAttrs { path, attrs } => {
                let p = layers.upper_path(Path::new(path));
                rustix::fs::chownat(
                    rustix::fs::CWD,
                    &p,
                    Some(rustix::fs::Uid::from_raw(attrs.uid)),
                    Some(rustix::fs::Gid::from_raw(attrs.gid)),
                    rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
                )?;
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(&p, fs::Permissions::from_mode(attrs.mode))?;
            }
            Action::Freeze { .. } | Action::CopyTheirs { .. } => {}
        }
    }
    layers.root = theirs;
    Ok(())
}

/// Writes theirs (a file, a link, or a whole tree) at `to` in the upper,
/// replacing whatever an interrupted attempt left there. A tree is marked
/// opaque: it is complete in the upper.
fn copy_theirs(layers: &Layers, to: &Path, entry: &Entry) -> io::Result<()> {
    layers.remove_upper(to)?;
    layers.copy_up_entry(to, entry)?;
    if entry.kind == EntryKind::Dir {
        if let Some(id) = entry.object {
            let children = layers.lower.manifest(&id)?;
            for child in &children.entries {
                copy_theirs(layers, &to.join(&child.name), child)?;
            }
        }
        set_opaque(&layers.upper_path(to))?;
        // Adding the children moved the directory's times; give it theirs.
        let t = rustix::fs::Timespec {
            tv_sec: entry.mtime.div_euclid(1_000_000_000),
            tv_nsec: entry.mtime.rem_euclid(1_000_000_000) as _,
        };
        rustix::fs::utimensat(
            rustix::fs::CWD,
            layers.upper_path(to),
            &rustix::fs::Timestamps {
                last_access: t,
                last_modification: t,
            },
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )?;
    }
    Ok(())
}
