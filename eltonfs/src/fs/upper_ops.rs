//! What the FUSE handlers do to the upper beyond a single call: new
//! entries' owners and modes, clearing the way for them, whole copy-ups
//! for moves, RENAME_EXCHANGE, and the conversions they share.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use fuser::{Errno, Request, TimeOrNow};
use rustix::fs::{AtFlags, Gid, Mode, Timespec, Timestamps, Uid};

use super::layers::{At, View, is_whiteout_at, set_opaque_at};
use super::meta::Meta;
use super::mount_state::MountState;

/// Clears setuid (and group-executable setgid) bits as the kernel would on a
/// write, truncate or write-open by an unprivileged user. With
/// `FUSE_HANDLE_KILLPRIV_V2` this is the filesystem's job, and passthrough
/// writes never reach us, so it is done when such a user opens the file for
/// writing (slightly earlier than the kernel would, never later).
pub(super) fn kill_suid(file: &File) -> io::Result<()> {
    let mode = file.metadata()?.permissions().mode();
    let mut cleared = mode & !0o4000;
    if mode & 0o010 != 0 {
        cleared &= !0o2000;
    }
    if cleared != mode {
        file.set_permissions(fs::Permissions::from_mode(cleared & 0o7777))?;
    }
    Ok(())
}

pub(super) fn errno(e: io::Error) -> Errno {
    Errno::from(e)
}

pub(super) fn rx(e: rustix::io::Errno) -> Errno {
    Errno::from_i32(e.raw_os_error())
}

/// NAME_MAX of the filesystems an upper lives on (what `statfs` reports).
pub(super) const NAME_MAX: usize = 255;

pub(super) fn child(parent: &Path, name: &OsStr) -> Result<PathBuf, Errno> {
    if name.is_empty() || name == "." || name == ".." || name.as_encoded_bytes().contains(&b'/') {
        return Err(Errno::EINVAL);
    }
    // Checked here too: a name under a directory only the lower has never
    // reaches the upper's filesystem, which would refuse it.
    if name.len() > NAME_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    Ok(parent.join(name))
}

pub(super) fn timestamps(atime: Option<TimeOrNow>, mtime: Option<TimeOrNow>) -> Timestamps {
    let omit = Timespec {
        tv_sec: 0,
        tv_nsec: rustix::fs::UTIME_OMIT,
    };
    let conv = |t: Option<TimeOrNow>| match t {
        None => omit,
        Some(TimeOrNow::Now) => Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_NOW,
        },
        Some(TimeOrNow::SpecificTime(t)) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timespec {
                tv_sec: d.as_secs() as i64,
                tv_nsec: d.subsec_nanos() as _,
            },
            Err(e) => {
                let d = e.duration();
                let mut secs = -(d.as_secs() as i64);
                let mut nsec = -(d.subsec_nanos() as i64);
                if nsec < 0 {
                    secs -= 1;
                    nsec += 1_000_000_000;
                }
                Timespec {
                    tv_sec: secs,
                    tv_nsec: nsec as _,
                }
            }
        },
    };
    Timestamps {
        last_access: conv(atime),
        last_modification: conv(mtime),
    }
}

pub(super) fn set_times(
    at: &At,
    atime: Option<TimeOrNow>,
    mtime: Option<TimeOrNow>,
) -> io::Result<()> {
    let ts = timestamps(atime, mtime);
    rustix::fs::utimensat(&*at.dir, &at.name, &ts, AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(())
}

pub(super) fn chown(at: &At, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
    rustix::fs::chownat(
        &*at.dir,
        &at.name,
        uid.map(Uid::from_raw),
        gid.map(Gid::from_raw),
        AtFlags::SYMLINK_NOFOLLOW,
    )?;
    Ok(())
}

/// Owner and permission bits for a new entry made by `uid`/`gid` in a
/// directory of mode `dir_mode` and group `dir_gid`, as the kernel gives
/// them: the
/// requester's uid, and its gid unless the directory is setgid (then the
/// directory's group, and a new directory inherits the setgid bit). `perm`
/// is `None` for symlinks (their mode never changes).
pub(super) fn new_owner(
    dir_mode: u32,
    dir_gid: u32,
    uid: u32,
    gid: u32,
    perm: Option<u32>,
    is_dir: bool,
) -> (u32, u32, Option<u32>) {
    const SGID: u32 = libc::S_ISGID;
    let sgid_dir = dir_mode & SGID != 0;
    let owner_gid = if sgid_dir { dir_gid } else { gid };
    let perm = perm.map(|mut perm| {
        if is_dir && sgid_dir {
            perm |= SGID;
        }
        // A group-executable setgid file of a group its creator is not in
        // loses the bit (approximated with the primary group).
        if !is_dir
            && sgid_dir
            && perm & SGID != 0
            && perm & 0o010 != 0
            && uid != 0
            && gid != owner_gid
        {
            perm &= !SGID;
        }
        perm
    });
    (uid, owner_gid, perm)
}

/// Gives a new upper entry (made by this process, as root) the owner and
/// mode [`new_owner`] decides, and returns its attributes. Only what
/// differs is changed: an entry made by root with the mode asked for needs
/// neither call.
pub(super) fn own_new(up: &At, req: &Request, perm: Option<u32>, is_dir: bool) -> io::Result<Meta> {
    let dir = Meta::from(rustix::fs::fstat(&*up.dir)?);
    let (uid, gid, perm) = new_owner(dir.mode(), dir.gid(), req.uid(), req.gid(), perm, is_dir);
    let now = up
        .stat()?
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
    let chowned = (now.uid(), now.gid()) != (uid, gid);
    if chowned {
        chown(up, Some(uid), Some(gid))?;
    }
    // chown clears setuid/setgid bits: the mode is set after it.
    let chmodded = match perm {
        Some(perm) if chowned || now.mode() & 0o7777 != perm => {
            chmod(up, perm)?;
            true
        }
        _ => false,
    };
    if !chowned && !chmodded {
        return Ok(now);
    }
    up.stat()?
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
}

/// Sets the permission bits of an upper entry that is not a symlink.
pub(super) fn chmod(at: &At, perm: u32) -> io::Result<()> {
    rustix::fs::chmodat(
        &*at.dir,
        &at.name,
        Mode::from_bits_truncate(perm),
        AtFlags::empty(),
    )?;
    Ok(())
}

/// Clears the way for a new entry at `rel`: its ancestors exist in the
/// upper and a whiteout there is removed. Returns the upper entry and
/// whether a lower entry was deleted at this path (a new directory there
/// must then be opaque).
pub(super) fn prepare_new(st: &MountState, rel: &Path) -> Result<(At, bool), Errno> {
    if st.layers.view(rel)?.is_some() {
        return Err(Errno::EEXIST);
    }
    st.layers.copy_up_parents(rel)?;
    let up = st.layers.at(rel)?;
    match up.stat()? {
        Some(m) if is_whiteout_at(&up, &m) => {
            rustix::fs::unlinkat(&*up.dir, &up.name, AtFlags::empty()).map_err(rx)?;
            Ok((up, true))
        }
        _ => Ok((up, false)),
    }
}

/// Brings `rel` wholly into the upper for a move: a directory with lower
/// content is copied up with its subtree (and made opaque). Returns its
/// upper entry.
pub(super) fn copy_up_whole(st: &MountState, rel: &Path, view: &View) -> Result<At, Errno> {
    let has_lower_content =
        view.is_dir() && (view.upper.is_none() || st.layers.merged_lower(rel, view)?.is_some());
    if has_lower_content {
        st.layers.copy_up_tree(rel)?;
        Ok(st.layers.at(rel)?)
    } else {
        Ok(st.layers.copy_up(rel)?)
    }
}

/// `rename(RENAME_EXCHANGE)`: both names exist before and after, so no
/// whiteouts; both sides move wholly into the upper first.
pub(super) fn exchange(
    st: &mut MountState,
    a: &Path,
    a_view: &View,
    b: &Path,
) -> Result<(), Errno> {
    let b_view = st.view(b)?;
    if a == b {
        return Ok(());
    }
    if a.starts_with(b) || b.starts_with(a) {
        return Err(Errno::EINVAL);
    }
    let a_up = copy_up_whole(st, a, a_view)?;
    st.layers.copy_up_parents(b)?;
    let b_up = copy_up_whole(st, b, &b_view)?;
    rustix::fs::renameat_with(
        &*a_up.dir,
        &a_up.name,
        &*b_up.dir,
        &b_up.name,
        rustix::fs::RenameFlags::EXCHANGE,
    )
    .map_err(rx)?;
    st.layers.dirs.forget(a);
    st.layers.dirs.forget(b);
    // A directory now sitting where the lower has an entry must not merge
    // with it.
    if a_view.is_dir() && b_view.lower.is_some() {
        set_opaque_at(&b_up)?;
    }
    if b_view.is_dir() && a_view.lower.is_some() {
        set_opaque_at(&a_up)?;
    }
    st.inodes.exchange(a, b);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::new_owner;

    const SGID: u32 = libc::S_ISGID;

    #[test]
    fn new_entries_get_the_requesters_ids_unless_the_directory_is_setgid() {
        // A plain directory: the requester's uid and gid, the mode asked.
        assert_eq!(
            new_owner(0o755, 50, 1000, 100, Some(0o644), false),
            (1000, 100, Some(0o644))
        );
        // A setgid directory: its group; a new directory inherits the bit.
        assert_eq!(
            new_owner(0o2775, 50, 1000, 100, Some(0o755), true),
            (1000, 50, Some(0o755 | SGID))
        );
        assert_eq!(
            new_owner(0o2775, 50, 1000, 100, Some(0o644), false),
            (1000, 50, Some(0o644))
        );
        // A symlink keeps its mode (None), gets the owner all the same.
        assert_eq!(
            new_owner(0o2775, 50, 1000, 100, None, false),
            (1000, 50, None)
        );
    }

    #[test]
    fn setgid_executables_of_a_foreign_group_lose_the_bit_except_for_root() {
        let perm = Some(0o2755);
        assert_eq!(
            new_owner(0o2775, 50, 1000, 100, perm, false),
            (1000, 50, Some(0o755))
        );
        // The requester's own group, or root: the bit stays.
        assert_eq!(
            new_owner(0o2775, 50, 1000, 50, perm, false),
            (1000, 50, perm)
        );
        assert_eq!(new_owner(0o2775, 50, 0, 0, perm, false), (0, 50, perm));
        // Not group-executable: the bit stays (mandatory-locking marker).
        assert_eq!(
            new_owner(0o2775, 50, 1000, 100, Some(0o2644), false),
            (1000, 50, Some(0o2644))
        );
        // Outside a setgid directory nothing is cleared here.
        assert_eq!(
            new_owner(0o755, 50, 1000, 100, perm, false),
            (1000, 100, perm)
        );
    }
}
