//! The FUSE face of the overlay: turns kernel requests into [`Layers`]
//! operations. One lock guards the mount's state; object fetches for lower
//! files happen outside it, and file data of opened files bypasses this
//! process entirely through FUSE passthrough when the kernel allows it.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use elton_proto::{Entry, EntryKind};
use fuser::{
    AccessFlags, BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry,
    ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use rustix::fs::{AtFlags, Gid, Mode, OFlags, Uid, XattrFlags};

use super::attrs::{UPPER_TTL, attr_of, attr_of_meta, kind_of_entry, kind_of_meta};
use super::chunked::{self, Assembled, ChunkedReader};
pub use super::handle::Handle;
use super::handle::{FMODE_EXEC, Io};
use super::inodes::ROOT;
use super::layers::{
    EntryKindOrUpper, PRIVATE_XATTR_PREFIX, View, is_whiteout_at, open_write, set_opaque_at,
};
use super::meta::Meta;
use super::mount_state::LowerData;
pub use super::mount_state::MountState;
use super::readahead::ReadAhead;
use super::upper_ops::{
    child, chmod, chown, copy_up_whole, errno, exchange, kill_suid, own_new, prepare_new, rx,
    set_times, timestamps,
};

/// How long an open waits for the inode's other backing file to be closed
/// (see [`EltonFs::wait_for_backing`]).
const BACKING_WAIT: Duration = Duration::from_secs(1);
/// How long an `O_RDONLY|O_TRUNC` open waits for a program that held the
/// file to be gone (see [`EltonFs::wait_until_not_executed`]): its RELEASE
/// is on its way, so this is a margin for a busy machine, and the time a
/// refusal costs.
const EXEC_RELEASE_WAIT: Duration = Duration::from_millis(250);
/// Virtual xattr on the root naming the mount's control socket.
pub const CONTROL_XATTR: &str = "user.elton.control";

pub struct EltonFs {
    pub state: Arc<Mutex<MountState>>,
    passthrough: AtomicBool,
    control_socket: PathBuf,
    /// Signalled when a file handle is released (shared with the commit,
    /// which waits for releases still on their way).
    released: Arc<Condvar>,
    /// Whole copies of chunked lower files whose chunks are all local.
    assembled: Assembled,
    /// Background fetches of chunks for the daemon-served chunked files.
    read_ahead: Arc<ReadAhead>,
}

impl EltonFs {
    pub fn new(
        state: Arc<Mutex<MountState>>,
        control_socket: PathBuf,
        assembled: Assembled,
        released: Arc<Condvar>,
    ) -> Self {
        Self {
            state,
            passthrough: AtomicBool::new(true),
            control_socket,
            released,
            assembled,
            read_ahead: Arc::default(),
        }
    }

    /// The data of a lower file opened read-only. A chunked file is
    /// assembled once all its chunks are local (unless the daemon already
    /// serves an open of it, see [`MountState::lower_open`]). Runs without
    /// the lock: it may fetch the recipe and assemble.
    fn lower_data(&self, ino: u64, e: &Entry) -> io::Result<LowerData> {
        let lower = self.lock().layers.lower.clone();
        if !e.recipe {
            let id = e
                .object
                .ok_or_else(|| io::Error::from_raw_os_error(libc::EIO))?;
            return Ok(LowerData::Whole(lower.object_path(&id)?));
        }
        let (recipe_id, recipe) = chunked::recipe_of(&*lower, e)?;
        let (serves_chunked, in_use) = {
            let st = self.lock();
            (st.serves_chunked(ino), st.backing_in_use())
        };
        let whole = if serves_chunked {
            self.assembled.get(&recipe_id, &recipe)
        } else {
            // Assembling is an optimisation: when it fails (a full disk, a
            // vanished entry), the daemon serves the file instead.
            self.assembled
                .assemble_if_local(&*lower, &recipe_id, &recipe, &in_use)
                .unwrap_or_else(|e| {
                    tracing::warn!(recipe = %recipe_id, "not assembled, served by the daemon: {e}");
                    None
                })
        };
        Ok(LowerData::Chunked {
            recipe_file: lower.object_path(&recipe_id)?,
            reader: Arc::new(ChunkedReader::new(lower, recipe, self.read_ahead.clone())),
            whole,
        })
    }

    /// The kernel lets all passthrough opens of one inode use only one
    /// backing file at a time, and refuses opens without passthrough while
    /// one is in use. A lower file open for reading passes through to the
    /// store's object; once its name is copied up, new opens must use the
    /// upper file. Such an open waits (briefly) until the readers of the
    /// old content are gone, and fails with ETXTBSY if they stay.
    ///
    /// `key` is the (device, inode) of the file the open will use; `None`
    /// if it does not exist yet (copy-up to come): any backing file in use
    /// is another one. Waiting comes before the open changes anything
    /// (copy-up, O_TRUNC).
    fn wait_for_backing<'a>(
        &'a self,
        st: MutexGuard<'a, MountState>,
        ino: u64,
        key: Option<(u64, u64)>,
    ) -> Result<MutexGuard<'a, MountState>, Errno> {
        if !self.passthrough.load(Ordering::Relaxed) {
            return Ok(st);
        }
        // A chunked lower file served by the daemon counts as busy too:
        // the kernel refuses a passthrough open next to it.
        let busy = |st: &mut MountState| {
            st.backing
                .get(&ino)
                .is_some_and(|(k, w)| Some(*k) != key && w.strong_count() > 0)
                || st.serves_chunked(ino)
        };
        let (st, waited) = self
            .released
            .wait_timeout_while(st, BACKING_WAIT, busy)
            .unwrap_or_else(|p| p.into_inner());
        if waited.timed_out() {
            tracing::info!(
                ino,
                "open refused: the inode's old content is still open (ETXTBSY)"
            );
            return Err(Errno::ETXTBSY);
        }
        Ok(st)
    }

    /// Waits (briefly) until no running program holds inode `ino` open;
    /// ETXTBSY if one still does. The wait is for a program that has just
    /// exited: the kernel sends the RELEASE of its file before its parent
    /// learns of the exit, but another thread may be the one to handle it.
    fn wait_until_not_executed<'a>(
        &'a self,
        st: MutexGuard<'a, MountState>,
        ino: u64,
    ) -> Result<MutexGuard<'a, MountState>, Errno> {
        let executed =
            |st: &mut MountState| st.handles.values().any(|h| h.ino == ino && h.executes);
        let (st, waited) = self
            .released
            .wait_timeout_while(st, EXEC_RELEASE_WAIT, executed)
            .unwrap_or_else(|p| p.into_inner());
        if waited.timed_out() {
            return Err(Errno::ETXTBSY);
        }
        Ok(st)
    }

    fn lock(&self) -> MutexGuard<'_, MountState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Looks up `name` in `parent` after a change and replies with its entry.
    fn reply_entry(&self, st: &mut MountState, rel: &Path, reply: ReplyEntry) {
        match st.view(rel) {
            Ok(view) => {
                let ino = st.ino_for(rel, &view);
                let (attr, ttl) = attr_of(ino, &view);
                reply.entry(&ttl, &attr, Generation(0));
            }
            Err(e) => reply.error(e),
        }
    }

    /// Registers an opened file and decides how its data flows: through
    /// FUSE passthrough when the kernel allows it. The caller has waited
    /// for other backing files of the inode to be closed.
    fn open_handle(
        &self,
        st: &mut MountState,
        handle: Handle,
        make: impl FnOnce(&File) -> io::Result<BackingId>,
    ) -> Result<(u64, Io), Errno> {
        let ino = handle.ino;
        let key = handle.file.metadata().map(|m| (m.dev(), m.ino()));
        if !self.passthrough.load(Ordering::Relaxed) {
            let fh = st.fh();
            st.handles.insert(fh, handle);
            return Ok((fh, Io::Cached));
        }
        let key = key?;
        let live = st
            .backing
            .get(&ino)
            .and_then(|(k, w)| w.upgrade().map(|id| (*k, id)));
        let id = match live {
            Some((k, id)) if k == key => id,
            Some(_) => return Err(Errno::ETXTBSY),
            None => match make(&handle.file) {
                Ok(id) => {
                    let id = Arc::new(id);
                    st.backing.insert(ino, (key, Arc::downgrade(&id)));
                    id
                }
                Err(e) => {
                    tracing::warn!(
                        "FUSE passthrough unavailable ({e}); serving file data through the daemon"
                    );
                    self.passthrough.store(false, Ordering::Relaxed);
                    let fh = st.fh();
                    st.handles.insert(fh, handle);
                    return Ok((fh, Io::Cached));
                }
            },
        };
        let fh = st.fh();
        st.handles.insert(
            fh,
            Handle {
                _backing: Some(id.clone()),
                ..handle
            },
        );
        Ok((fh, Io::Passthrough(id)))
    }
}

impl Filesystem for EltonFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let ok = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok();
        if !ok {
            tracing::info!("kernel lacks FUSE passthrough; file data goes through the daemon");
            self.passthrough.store(false, Ordering::Relaxed);
        }
        let _ = config.add_capabilities(InitFlags::FUSE_ATOMIC_O_TRUNC);
        // We clear setuid/setgid bits ourselves (see `kill_suid`), which lets
        // the kernel skip a GETXATTR(security.capability) round trip before
        // every write: a tenfold difference for small passthrough writes.
        let _ = config.add_capabilities(InitFlags::FUSE_HANDLE_KILLPRIV_V2);
        let _ = config.add_capabilities(InitFlags::FUSE_DO_READDIRPLUS);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut st = self.lock();
        let rel = match st.path(parent).and_then(|p| child(&p, name)) {
            Ok(r) => r,
            Err(e) => return reply.error(e),
        };
        self.reply_entry(&mut st, &rel, reply);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let st = self.lock();
        // A file open for writing answers from the file itself: that is
        // where its size and times change.
        if let Some(h) = fh.and_then(|fh| st.handles.get(&fh.0))
            && h.writable
            && let Ok(m) = Meta::of_file(&h.file)
        {
            return reply.attr(&UPPER_TTL, &attr_of_meta(ino.0, &m));
        }
        let rel = match st.path(ino) {
            Ok(r) => r,
            // Unlinked while open (fstat): answer from an open handle.
            Err(e) => {
                return match st.handle_of(ino.0, fh).map(Handle::orphan_attr) {
                    Some(Ok(attr)) => reply.attr(&UPPER_TTL, &attr),
                    Some(Err(e)) => reply.error(errno(e)),
                    None => reply.error(e),
                };
            }
        };
        match st.view(&rel) {
            Ok(view) => {
                let (attr, ttl) = attr_of(ino.0, &view);
                reply.attr(&ttl, &attr);
            }
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let st = self.lock();
        let result = (|| -> Result<FileAttr, Errno> {
            let rel = st.path(ino);
            // An unlinked file still open: act on the open file only.
            let Ok(rel) = rel else {
                let h = st.handle_of(ino.0, fh).ok_or(Errno::ENOENT)?;
                if h.lower.is_some() {
                    // The open file is the store's object: never changed.
                    return Err(Errno::EROFS);
                }
                if let Some(size) = size {
                    h.file.set_len(size)?;
                }
                if uid.is_some() || gid.is_some() {
                    rustix::fs::fchown(&h.file, uid.map(Uid::from_raw), gid.map(Gid::from_raw))
                        .map_err(rx)?;
                }
                if let Some(mode) = mode {
                    h.file
                        .set_permissions(fs::Permissions::from_mode(mode & 0o7777))?;
                }
                if atime.is_some() || mtime.is_some() {
                    rustix::fs::futimens(&h.file, &timestamps(atime, mtime)).map_err(rx)?;
                }
                return h.orphan_attr().map_err(errno);
            };
            // Truncating to nothing needs no lower content.
            let up = st.layers.copy_up_with(&rel, size != Some(0))?;
            if let Some(size) = size {
                let file = match fh
                    .and_then(|fh| st.handles.get(&fh.0))
                    .filter(|h| h.writable)
                {
                    Some(h) => h.file.try_clone()?,
                    None => open_write(&up)?,
                };
                file.set_len(size)?;
                if req.uid() != 0 && mode.is_none() {
                    kill_suid(&file)?;
                }
            }
            if uid.is_some() || gid.is_some() {
                chown(&up, uid, gid)?;
            }
            if let Some(mode) = mode
                && up.stat()?.is_some_and(|m| !m.is_symlink())
            {
                chmod(&up, mode & 0o7777)?;
            }
            if atime.is_some() || mtime.is_some() {
                set_times(&up, atime, mtime)?;
            }
            let view = st.view(&rel)?;
            Ok(attr_of(ino.0, &view).0)
        })();
        match result {
            Ok(attr) => reply.attr(&UPPER_TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let st = self.lock();
        let result = (|| -> Result<Vec<u8>, Errno> {
            let rel = st.path(ino)?;
            let view = st.view(&rel)?;
            match (&view.upper, &view.lower) {
                (Some(_), _) => {
                    let at = st.layers.at(&rel)?;
                    Ok(rustix::fs::readlinkat(&*at.dir, &at.name, Vec::new())
                        .map_err(rx)?
                        .into_bytes())
                }
                (None, Some(e)) if e.kind == EntryKind::Symlink => {
                    Ok(e.target.clone().unwrap_or_default().into_bytes())
                }
                _ => Err(Errno::EINVAL),
            }
        })();
        match result {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let mut st = self.lock();
        let result = (|| -> Result<PathBuf, Errno> {
            let ft = rustix::fs::FileType::from_raw_mode(mode);
            let rel = child(&st.path(parent)?, name)?;
            let (up, _) = prepare_new(&st, &rel)?;
            let perm = Mode::from_bits_truncate(mode & !umask & 0o7777);
            if ft == rustix::fs::FileType::CharacterDevice && rdev == 0 {
                // 0:0 is also the upper's whiteout: a user's is marked.
                st.layers.make_zero_device(&rel, perm)?;
            } else {
                rustix::fs::mknodat(&*up.dir, &up.name, ft, perm, rdev as u64).map_err(rx)?;
            }
            own_new(&up, req, Some(perm.bits()), false)?;
            Ok(rel)
        })();
        match result {
            Ok(rel) => self.reply_entry(&mut st, &rel, reply),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let mut st = self.lock();
        let result = (|| -> Result<PathBuf, Errno> {
            let rel = child(&st.path(parent)?, name)?;
            let (up, replaced_lower) = prepare_new(&st, &rel)?;
            rustix::fs::mkdirat(&*up.dir, &up.name, Mode::from_bits_truncate(0o700)).map_err(rx)?;
            own_new(&up, req, Some(mode & !umask & 0o7777), true)?;
            if replaced_lower {
                set_opaque_at(&up)?;
            }
            Ok(rel)
        })();
        match result {
            Ok(rel) => self.reply_entry(&mut st, &rel, reply),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut st = self.lock();
        let result = (|| -> Result<(), Errno> {
            let rel = child(&st.path(parent)?, name)?;
            let view = st.view(&rel)?;
            if view.is_dir() {
                return Err(Errno::EISDIR);
            }
            if view.upper.is_some() {
                let up = st.layers.at(&rel)?;
                rustix::fs::unlinkat(&*up.dir, &up.name, AtFlags::empty()).map_err(rx)?;
            }
            if view.lower.is_some() {
                st.layers.whiteout(&rel)?;
            }
            st.inodes.remove(&rel);
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut st = self.lock();
        let result = (|| -> Result<(), Errno> {
            let rel = child(&st.path(parent)?, name)?;
            let view = st.view(&rel)?;
            if !view.is_dir() {
                return Err(Errno::ENOTDIR);
            }
            if !st.layers.list(&rel, &view)?.is_empty() {
                return Err(Errno::ENOTEMPTY);
            }
            st.layers.remove_upper(&rel)?;
            if view.lower.is_some() {
                st.layers.whiteout(&rel)?;
            }
            st.inodes.remove(&rel);
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let mut st = self.lock();
        let result = (|| -> Result<PathBuf, Errno> {
            let rel = child(&st.path(parent)?, link_name)?;
            let (up, _) = prepare_new(&st, &rel)?;
            rustix::fs::symlinkat(target, &*up.dir, &up.name).map_err(rx)?;
            own_new(&up, req, None, false)?;
            Ok(rel)
        })();
        match result {
            Ok(rel) => self.reply_entry(&mut st, &rel, reply),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut st = self.lock();
        let result = (|| -> Result<(), Errno> {
            if flags.contains(RenameFlags::RENAME_WHITEOUT)
                || flags.contains(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_NOREPLACE)
            {
                return Err(Errno::EINVAL);
            }
            let from = child(&st.path(parent)?, name)?;
            let to = child(&st.path(newparent)?, newname)?;
            let src = st.view(&from)?;
            if flags.contains(RenameFlags::RENAME_EXCHANGE) {
                return exchange(&mut st, &from, &src, &to);
            }
            if from == to {
                return Ok(());
            }
            if src.is_dir() && to.starts_with(&from) {
                return Err(Errno::EINVAL);
            }
            let dst = st.layers.view(&to)?;
            if let Some(dst) = &dst {
                if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                    return Err(Errno::EEXIST);
                }
                match (src.is_dir(), dst.is_dir()) {
                    (true, false) => return Err(Errno::ENOTDIR),
                    (false, true) => return Err(Errno::EISDIR),
                    (true, true) if !st.layers.list(&to, dst)?.is_empty() => {
                        return Err(Errno::ENOTEMPTY);
                    }
                    _ => {}
                }
            }
            // Bring the source wholly into the upper, then move it there.
            let from_up = copy_up_whole(&st, &from, &src)?;
            st.layers.copy_up_parents(&to)?;
            let to_up = st.layers.at(&to)?;
            // A lower entry at the destination, visible or deleted (a
            // whiteout): a directory moved there must not merge with it.
            let lower_at_to = dst.as_ref().is_some_and(|d| d.lower.is_some())
                || to_up.stat()?.is_some_and(|m| is_whiteout_at(&to_up, &m));
            st.layers.remove_upper(&to)?;
            st.layers.rename_upper(&from_up, &from, &to_up, &to)?;
            if src.lower.is_some() {
                st.layers.whiteout(&from)?;
            }
            if src.is_dir() && lower_at_to {
                set_opaque_at(&to_up)?;
            }
            st.inodes.rename(&from, &to);
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let mut st = self.lock();
        let result = (|| -> Result<PathBuf, Errno> {
            let from = st.path(ino)?;
            let to = child(&st.path(newparent)?, newname)?;
            if st.view(&from)?.is_dir() {
                return Err(Errno::EPERM);
            }
            let from_up = st.layers.copy_up(&from)?;
            let (to_up, _) = prepare_new(&st, &to)?;
            rustix::fs::linkat(
                &*from_up.dir,
                &from_up.name,
                &*to_up.dir,
                &to_up.name,
                AtFlags::empty(),
            )
            .map_err(rx)?;
            // Both names now map to one inode number.
            let up_ino = from_up.stat()?.ok_or(Errno::ENOENT)?.ino();
            st.inodes.ino(&from, Some(up_ino));
            Ok(to)
        })();
        match result {
            Ok(rel) => self.reply_entry(&mut st, &rel, reply),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let acc = flags.acc_mode();
        let writable = !matches!(acc, OpenAccMode::O_RDONLY);
        let trunc = flags.0 & libc::O_TRUNC != 0;
        let append = flags.0 & libc::O_APPEND != 0;
        let executes = flags.0 & FMODE_EXEC != 0;
        // The kernel refuses a writable open of a running program itself
        // (ETXTBSY), before asking here. It does not for O_RDONLY|O_TRUNC:
        // with FUSE_ATOMIC_O_TRUNC the truncation is this open's, and the
        // kernel checks only after it, when the program is already gone.
        if trunc && !writable {
            let st = self.lock();
            if let Err(e) = self.wait_until_not_executed(st, ino.0) {
                return reply.error(e);
            }
        }
        // Lower file contents may need fetching: do that without the lock.
        let (rel, lower_entry) = {
            let st = self.lock();
            let rel = match st.path(ino) {
                Ok(r) => r,
                Err(e) => return reply.error(e),
            };
            let view = match st.view(&rel) {
                Ok(v) => v,
                Err(e) => return reply.error(e),
            };
            let lower_only = view.upper.is_none();
            (
                rel,
                view.lower
                    .filter(|e| lower_only && !writable && !trunc && e.object.is_some()),
            )
        };
        let lower_data = match lower_entry.as_ref().filter(|e| e.object.is_some()) {
            Some(e) => match self.lower_data(ino.0, e) {
                Ok(d) => Some(d),
                Err(e) => return reply.error(errno(e)),
            },
            None => None,
        };
        let st = self.lock();
        let lower_data = lower_data.map(|d| st.lower_open(ino.0, d));
        if let Some(LowerData::Chunked {
            reader,
            recipe_file,
            ..
        }) = &lower_data
        {
            let handle = Handle {
                file: match File::open(recipe_file) {
                    Ok(f) => f,
                    Err(e) => return reply.error(errno(e)),
                },
                ino: ino.0,
                writable: false,
                append: false,
                executes,
                lower: lower_entry,
                _backing: None,
                chunked: Some(reader.clone()),
            };
            let mut st = st;
            let fh = st.fh();
            st.handles.insert(fh, handle);
            // Versions are immutable: the page cache stays valid.
            return reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE);
        }
        let lower_path = match lower_data {
            Some(LowerData::Whole(p)) => Some(p),
            _ => None,
        };
        let key = match &lower_path {
            Some(p) => fs::metadata(p).ok().map(|m| (m.dev(), m.ino())),
            None => st
                .layers
                .at(&rel)
                .and_then(|at| at.stat())
                .ok()
                .flatten()
                .map(|m| (m.dev(), m.ino())),
        };
        let mut st = match self.wait_for_backing(st, ino.0, key) {
            Ok(st) => st,
            Err(e) => return reply.error(e),
        };
        let opened = (|| -> Result<File, Errno> {
            if let Some(p) = &lower_path {
                return Ok(File::open(p)?);
            }
            let up = if writable || trunc {
                // O_TRUNC: the lower content is not needed (nor fetched).
                st.layers.copy_up_with(&rel, !trunc)?
            } else {
                st.layers.at(&rel)?
            };
            // O_TRUNC goes to open(2) itself: Linux truncates even a file
            // opened read-only (the kernel has checked write permission),
            // where ftruncate on such a descriptor is EINVAL.
            let mut oflags = match acc {
                OpenAccMode::O_WRONLY => OFlags::WRONLY,
                OpenAccMode::O_RDWR => OFlags::RDWR,
                _ => OFlags::RDONLY,
            };
            if trunc {
                oflags |= OFlags::TRUNC;
            }
            let file = File::from(up.open(oflags, Mode::empty())?);
            if writable && req.uid() != 0 {
                kill_suid(&file)?;
            }
            Ok(file)
        })();
        let file = match opened {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        let handle = Handle {
            file,
            ino: ino.0,
            writable,
            append,
            executes,
            lower: lower_entry,
            _backing: None,
            chunked: None,
        };
        match self.open_handle(&mut st, handle, |f| reply.open_backing(f)) {
            Err(e) => reply.error(e),
            Ok((fh, Io::Passthrough(id))) => {
                reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &id)
            }
            Ok((fh, Io::Cached)) => {
                let flags = if lower_path.is_some() {
                    FopenFlags::FOPEN_KEEP_CACHE
                } else {
                    FopenFlags::empty()
                };
                reply.opened(FileHandle(fh), flags)
            }
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let st = self.lock();
        let Some(h) = st.handles.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        if let Some(c) = h.chunked.clone() {
            // May fetch chunks: not under the lock.
            drop(st);
            return match c.read_at(offset, size) {
                Ok(bytes) => reply.data(&bytes),
                Err(e) => reply.error(errno(e)),
            };
        }
        let mut buf = vec![0u8; size as usize];
        let mut filled = 0;
        while filled < buf.len() {
            match h.file.read_at(&mut buf[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return reply.error(errno(e)),
            }
        }
        reply.data(&buf[..filled]);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let st = self.lock();
        let Some(h) = st.handles.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        if !h.writable {
            return reply.error(Errno::EBADF);
        }
        let offset = if h.append {
            h.file.metadata().map_or(offset, |m| m.len())
        } else {
            offset
        };
        if write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID)
            && let Err(e) = kill_suid(&h.file)
        {
            return reply.error(errno(e));
        }
        match h.file.write_all_at(data, offset) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(errno(e)),
        }
    }

    /// Nothing waits here for a close: writes reach the upper file (through
    /// passthrough or `write`) before they return, and the kernel releases
    /// POSIX locks itself. ENOSYS tells the kernel so once; it then stops
    /// sending FLUSH, a round trip fewer on every `close`.
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
    }

    /// No file here has ioctls of its own: ENOTTY, as for a regular file on
    /// a native filesystem. Every `isatty` on an open file (Python's
    /// `open`, stdio) asks, so this answers without the lock.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        {
            let mut st = self.lock();
            if let Some(h) = st.handles.remove(&fh.0) {
                drop(h);
                let ino = ino.0;
                if st
                    .backing
                    .get(&ino)
                    .is_some_and(|(_, w)| w.strong_count() == 0)
                {
                    st.backing.remove(&ino);
                }
            }
        }
        self.released.notify_all();
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let st = self.lock();
        let Some(h) = st.handles.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let r = if datasync {
            h.file.sync_data()
        } else {
            h.file.sync_all()
        };
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    /// The listing is read at the first `readdir`, not here: a directory
    /// the kernel has cached (below) is opened without being read.
    ///
    /// A directory only the lower has cannot change but through this mount
    /// (each such change bumps the kernel's version of it, which drops the
    /// cache) or a version switch (which invalidates every inode): the
    /// kernel may keep its listing (`FOPEN_CACHE_DIR`) across opens
    /// (`FOPEN_KEEP_CACHE`), so a second walk of a lower tree costs no
    /// `READDIRPLUS`. A directory with an upper part is read every time:
    /// a commit changes it without telling the kernel about each name.
    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let mut st = self.lock();
        let result = (|| -> Result<(u64, bool), Errno> {
            let view = st.view(&st.path(ino)?)?;
            if !view.is_dir() {
                return Err(Errno::ENOTDIR);
            }
            let fh = st.fh();
            st.dirs.insert(fh, None);
            Ok((fh, view.upper.is_none()))
        })();
        match result {
            Ok((fh, true)) => reply.opened(
                FileHandle(fh),
                FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Ok((fh, false)) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut st = self.lock();
        if let Err(e) = listed(&mut st, ino, fh) {
            return reply.error(e);
        }
        let Some(Some(entries)) = st.dirs.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), (i + 1) as u64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    /// Names with attributes in one reply, so listing a directory and then
    /// stat-ing its entries (`ls -l`, `find`, build tools) costs no `LOOKUP`
    /// per entry.
    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let mut st = self.lock();
        if let Err(e) = listed(&mut st, ino, fh) {
            return reply.error(e);
        }
        let (Some(Some(entries)), Ok(rel)) = (st.dirs.get(&fh.0), st.path(ino)) else {
            return reply.error(Errno::EBADF);
        };
        // The directory's layers once, not a walk from the root per entry.
        let children = match st.layers.children(&rel) {
            Ok(c) => c,
            Err(e) => return reply.error(errno(e)),
        };
        for (i, (child_ino, _, name)) in entries.iter().enumerate().skip(offset as usize) {
            let view = match name.as_encoded_bytes() {
                b"." => st.view(&rel).ok(),
                b".." => st.view(rel.parent().unwrap_or_else(|| Path::new(""))).ok(),
                _ => children.as_ref().and_then(|c| c.view(name).ok().flatten()),
            };
            // Gone since opendir: leave it out, as readdir may.
            let Some(view) = view else {
                continue;
            };
            let (attr, ttl) = attr_of(*child_ino, &view);
            if reply.add(
                INodeNo(*child_ino),
                (i + 1) as u64,
                name,
                &ttl,
                &attr,
                Generation(0),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.lock().dirs.remove(&fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let root = self.lock().layers.dirs.dir(Path::new(""));
        let stat = root
            .map_err(errno)
            .and_then(|fd| rustix::fs::fstatvfs(&*fd).map_err(rx));
        match stat {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let st = self.lock();
        let result = (|| -> Result<(), Errno> {
            if name.to_string_lossy().starts_with(PRIVATE_XATTR_PREFIX) {
                return Err(Errno::EPERM);
            }
            let up = st.layers.copy_up(&st.path(ino)?)?.proc_path();
            rustix::fs::lsetxattr(&up, name, value, XattrFlags::from_bits_retain(flags as u32))
                .map_err(rx)?;
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let st = self.lock();
        let result = (|| -> Result<Vec<u8>, Errno> {
            if ino == INodeNo::ROOT && name == CONTROL_XATTR {
                return Ok(self.control_socket.as_os_str().as_encoded_bytes().to_vec());
            }
            if name.to_string_lossy().starts_with(PRIVATE_XATTR_PREFIX) {
                return Err(Errno::NO_XATTR);
            }
            let rel = st.path(ino)?;
            // An entry the upper has is the one visible at its path: ask it
            // without resolving the layers. Most requests are the kernel's
            // `security.capability` check before a new file's first write.
            if let Ok(at) = st.layers.at(&rel) {
                match upper_xattr(&at.proc_path(), name, size) {
                    Err(Errno::ENOENT | Errno::ENOTDIR) => {}
                    found => return found,
                }
            }
            let view = st.view(&rel)?;
            let key = name.to_str().ok_or(Errno::NO_XATTR)?;
            let value = view
                .lower
                .as_ref()
                .and_then(|e| e.xattrs.as_ref())
                .and_then(|x| x.get(key))
                .ok_or(Errno::NO_XATTR)?;
            hex::decode(value).map_err(|_| Errno::EIO)
        })();
        match result {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) if v.len() > size as usize => reply.error(Errno::ERANGE),
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let st = self.lock();
        let result = (|| -> Result<Vec<u8>, Errno> {
            let rel = st.path(ino)?;
            let view = st.view(&rel)?;
            let names: Vec<Vec<u8>> = if view.upper.is_some() {
                let up = st.layers.at(&rel)?.proc_path();
                let mut buf = vec![0u8; 65536];
                let n = rustix::fs::llistxattr(&up, &mut buf[..]).map_err(rx)?;
                buf[..n]
                    .split(|b| *b == 0)
                    .filter(|s| !s.is_empty())
                    .map(<[u8]>::to_vec)
                    .collect()
            } else {
                view.lower
                    .as_ref()
                    .and_then(|e| e.xattrs.as_ref())
                    .map(|x| x.keys().map(|k| k.as_bytes().to_vec()).collect())
                    .unwrap_or_default()
            };
            let mut out = Vec::new();
            for n in names
                .into_iter()
                .filter(|n| !n.starts_with(PRIVATE_XATTR_PREFIX.as_bytes()))
            {
                out.extend_from_slice(&n);
                out.push(0);
            }
            Ok(out)
        })();
        match result {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) if v.len() > size as usize => reply.error(Errno::ERANGE),
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(e),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let st = self.lock();
        let result = (|| -> Result<(), Errno> {
            if name.to_string_lossy().starts_with(PRIVATE_XATTR_PREFIX) {
                return Err(Errno::EPERM);
            }
            let up = st.layers.copy_up(&st.path(ino)?)?.proc_path();
            rustix::fs::lremovexattr(&up, name).map_err(rx)?;
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // Permission checks are the kernel's (default_permissions).
        let st = self.lock();
        match st.path(ino).and_then(|p| st.view(&p)) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut st = self.lock();
        let result = (|| -> Result<(PathBuf, File, Meta), Errno> {
            let rel = child(&st.path(parent)?, name)?;
            let (up, _) = prepare_new(&st, &rel)?;
            let file = File::from(up.open(
                OFlags::RDWR | OFlags::CREATE | OFlags::EXCL,
                Mode::from_bits_truncate(mode & !umask & 0o7777),
            )?);
            let meta = own_new(&up, req, Some(mode & !umask & 0o7777), false)?;
            Ok((rel, file, meta))
        })();
        let (rel, file, meta) = match result {
            Ok(x) => x,
            Err(e) => return reply.error(e),
        };
        // The new upper file is what the path shows: its attributes are
        // the ones own_new read, no second walk through the layers.
        let view = View {
            upper: Some(meta),
            lower: None,
        };
        let ino = st.ino_for(&rel, &view);
        let (attr, ttl) = attr_of(ino, &view);
        let append = flags & libc::O_APPEND != 0;
        let handle = Handle {
            file,
            ino,
            writable: true,
            append,
            executes: false,
            lower: None,
            _backing: None,
            chunked: None,
        };
        match self.open_handle(&mut st, handle, |f| reply.open_backing(f)) {
            Err(e) => reply.error(e),
            Ok((fh, Io::Passthrough(id))) => reply.created_passthrough(
                &ttl,
                &attr,
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
                &id,
            ),
            Ok((fh, Io::Cached)) => reply.created(
                &ttl,
                &attr,
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
            ),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let st = self.lock();
        let Some(h) = st.handles.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        match rustix::fs::fallocate(
            &h.file,
            rustix::fs::FallocateFlags::from_bits_retain(mode as u32),
            offset,
            length,
        ) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(rx(e)),
        }
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let st = self.lock();
        let (Some(src), Some(dst)) = (st.handles.get(&fh_in.0), st.handles.get(&fh_out.0)) else {
            return reply.error(Errno::EBADF);
        };
        if !dst.writable {
            return reply.error(Errno::EBADF);
        }
        if src.chunked.is_some() {
            // No single file holds the bytes; callers fall back to read/write.
            return reply.error(Errno::EOPNOTSUPP);
        }
        let (mut off_in, mut off_out) = (offset_in, offset_out);
        let len = usize::try_from(len)
            .unwrap_or(usize::MAX)
            .min(u32::MAX as usize);
        match rustix::fs::copy_file_range(
            &src.file,
            Some(&mut off_in),
            &dst.file,
            Some(&mut off_out),
            len,
        ) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(rx(e)),
        }
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let st = self.lock();
        let Some(h) = st.handles.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        if let Some(c) = &h.chunked {
            return match chunked::seek(c.size(), offset, whence) {
                Ok(p) => reply.offset(p),
                Err(e) => reply.error(errno(e)),
            };
        }
        let pos = match whence {
            libc::SEEK_DATA => rustix::fs::SeekFrom::Data(offset as u64),
            libc::SEEK_HOLE => rustix::fs::SeekFrom::Hole(offset as u64),
            libc::SEEK_SET => rustix::fs::SeekFrom::Start(offset as u64),
            libc::SEEK_END => rustix::fs::SeekFrom::End(offset),
            _ => rustix::fs::SeekFrom::Current(offset),
        };
        match rustix::fs::seek(&h.file, pos) {
            Ok(p) => reply.offset(p as i64),
            Err(e) => reply.error(rx(e)),
        }
    }
}

/// The value of xattr `name` of the upper entry at `path` (not following a
/// symlink), read into a buffer of the caller's `size`; for `size` 0 (the
/// caller asks how long the value is) zeros of the value's length. ENOENT
/// or ENOTDIR when the upper has no such entry.
fn upper_xattr(path: &Path, name: &OsStr, size: u32) -> Result<Vec<u8>, Errno> {
    if size == 0 {
        let len = rustix::fs::lgetxattr_query(path, name).map_err(rx)?;
        return Ok(vec![0u8; len]);
    }
    let mut buf = vec![0u8; size as usize];
    let n = rustix::fs::lgetxattr(path, name, &mut buf[..]).map_err(rx)?;
    buf.truncate(n);
    Ok(buf)
}

/// Makes sure the open directory `fh` (of `ino`) has its listing, reading
/// it on the first call: `.`, `..` and the merged names with their inode
/// numbers and kinds.
fn listed(st: &mut MountState, ino: INodeNo, fh: FileHandle) -> Result<(), Errno> {
    match st.dirs.get(&fh.0) {
        None => return Err(Errno::EBADF),
        Some(Some(_)) => return Ok(()),
        Some(None) => {}
    }
    let rel = st.path(ino)?;
    let view = st.view(&rel)?;
    if !view.is_dir() {
        return Err(Errno::ENOTDIR);
    }
    let parent_ino = match rel.parent() {
        Some(p) => st.inodes.ino(p, None),
        None => ROOT,
    };
    let mut entries = vec![
        (ino.0, FileType::Directory, OsString::from(".")),
        (parent_ino, FileType::Directory, OsString::from("..")),
    ];
    for (name, kind) in st.layers.list(&rel, &view)? {
        let child_rel = rel.join(&name);
        // Hard links share a number, as `lookup` gives them.
        let (kind, link) = match kind {
            EntryKindOrUpper::Upper(m) => (
                kind_of_meta(&m),
                (!m.is_dir() && m.nlink() > 1).then(|| m.ino()),
            ),
            EntryKindOrUpper::Lower(k) => (kind_of_entry(k), None),
        };
        let child_ino = st.inodes.ino(&child_rel, link);
        entries.push((child_ino, kind, name));
    }
    st.dirs.insert(fh.0, Some(entries));
    Ok(())
}
