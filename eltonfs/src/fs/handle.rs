//! An open file of the mount, and how its data flows.

use std::fs::File;
use std::io;
use std::sync::Arc;

use elton_proto::Entry;
use fuser::{BackingId, FileAttr};

use super::attrs::{attr_of, attr_of_meta};
use super::chunked::ChunkedReader;
use super::layers::View;
use super::meta::Meta;

/// The open flag execve(2) opens a program with (`__FMODE_EXEC` in the
/// kernel's `include/linux/fs.h`; FUSE passes it on in FUSE_OPEN). The
/// libc crate does not define it.
pub const FMODE_EXEC: i32 = 0o40;

pub struct Handle {
    pub file: File,
    /// The FUSE inode this handle was opened on.
    pub ino: u64,
    pub writable: bool,
    pub append: bool,
    /// Opened by execve(2) (see [`FMODE_EXEC`]): the kernel keeps such a
    /// file open for as long as the program runs, and refuses to open it
    /// for writing meanwhile (ETXTBSY).
    pub executes: bool,
    /// For a lower file opened read-only: its entry. The open file is then
    /// the store's object, whose own attributes are not the entry's.
    pub(super) lower: Option<Entry>,
    /// Keeps the kernel's passthrough backing alive while this handle is open.
    pub(super) _backing: Option<Arc<BackingId>>,
    /// A chunked lower file served by this process, chunk by chunk; `file`
    /// is then its recipe object and never read as content.
    pub(super) chunked: Option<Arc<ChunkedReader>>,
}

impl Handle {
    /// Attributes of an open file whose name is gone (unlinked while open).
    pub(super) fn orphan_attr(&self) -> io::Result<FileAttr> {
        match &self.lower {
            Some(e) => {
                let view = View {
                    upper: None,
                    lower: Some(e.clone()),
                };
                let (mut attr, _) = attr_of(self.ino, &view);
                attr.nlink = 0;
                Ok(attr)
            }
            None => Ok(attr_of_meta(self.ino, &Meta::of_file(&self.file)?)),
        }
    }
}

/// How an open file's data flows.
pub(super) enum Io {
    /// FUSE passthrough: the kernel reads and writes the backing file.
    Passthrough(Arc<BackingId>),
    /// Through this process (the kernel lacks passthrough).
    Cached,
}
