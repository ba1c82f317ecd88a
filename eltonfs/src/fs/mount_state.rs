//! The mount's state behind its one lock: the overlay, inode numbers,
//! open files and directories, and the passthrough backing files in use.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use fuser::{BackingId, Errno, FileHandle, FileType, INodeNo};

use super::chunked::ChunkedReader;
use super::handle::Handle;
use super::inodes::Inodes;
use super::layers::{Layers, View};
use super::meta::Meta;

/// A directory's entries as `readdir` gives them: inode, kind, name.
pub(super) type Listing = Vec<(u64, FileType, OsString)>;

pub struct MountState {
    pub layers: Layers,
    pub inodes: Inodes,
    pub handles: HashMap<u64, Handle>,
    /// Open directories: their listings (inode, kind, name), read at the
    /// first `readdir` (`None` before).
    pub(super) dirs: HashMap<u64, Option<Listing>>,
    pub(super) next_fh: u64,
    /// Per FUSE inode, the backing file (device, inode) its passthrough
    /// opens use: the kernel allows only one at a time.
    pub(super) backing: HashMap<u64, ((u64, u64), Weak<BackingId>)>,
}

impl MountState {
    pub fn new(layers: Layers) -> Self {
        Self {
            layers,
            inodes: Inodes::new(),
            handles: HashMap::new(),
            dirs: HashMap::new(),
            next_fh: 1,
            backing: HashMap::new(),
        }
    }

    /// The backing files (device, inode) of passthrough opens still open.
    pub(super) fn backing_in_use(&self) -> HashSet<(u64, u64)> {
        self.backing
            .values()
            .filter(|(_, w)| w.strong_count() > 0)
            .map(|(key, _)| *key)
            .collect()
    }

    pub(super) fn path(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        self.inodes
            .path(ino.0)
            .map(Path::to_path_buf)
            .ok_or(Errno::ENOENT)
    }

    pub(super) fn view(&self, rel: &Path) -> Result<View, Errno> {
        self.layers.view(rel)?.ok_or(Errno::ENOENT)
    }

    /// Whether the daemon serves an open chunked file of inode `ino`.
    pub(super) fn serves_chunked(&self, ino: u64) -> bool {
        self.handles
            .values()
            .any(|h| h.ino == ino && h.chunked.is_some())
    }

    /// Decides, under the lock, how an open of a chunked lower file reads:
    /// whole (passthrough) when assembled, unless the daemon serves another
    /// open of the inode; the kernel refuses passthrough and daemon-served
    /// opens of one inode at the same time, so the first open's mode wins
    /// until all its opens are closed.
    pub(super) fn lower_open(&self, ino: u64, data: LowerData) -> LowerData {
        match data {
            LowerData::Chunked {
                whole: Some(p),
                reader,
                recipe_file,
            } => {
                if self.serves_chunked(ino) {
                    LowerData::Chunked {
                        whole: Some(p),
                        reader,
                        recipe_file,
                    }
                } else {
                    LowerData::Whole(p)
                }
            }
            other => other,
        }
    }

    pub(super) fn fh(&mut self) -> u64 {
        self.next_fh += 1;
        self.next_fh
    }

    /// The open handle `fh` of inode `ino`, or else any open handle of it.
    pub(super) fn handle_of(&self, ino: u64, fh: Option<FileHandle>) -> Option<&Handle> {
        fh.and_then(|fh| self.handles.get(&fh.0))
            .filter(|h| h.ino == ino)
            .or_else(|| self.handles.values().find(|h| h.ino == ino))
    }

    /// Upper files with several links share one inode number.
    pub(super) fn ino_for(&mut self, rel: &Path, view: &View) -> u64 {
        let link = view
            .upper
            .as_ref()
            // Any non-directory can have several links (FIFOs, sockets and
            // devices too).
            .filter(|m| !m.is_dir() && m.nlink() > 1)
            .map(Meta::ino);
        self.inodes.ino(rel, link)
    }

    /// Files currently open for writing (their upper paths), for commit.
    pub fn open_for_write(&self) -> Vec<(u64, u64)> {
        self.handles
            .values()
            .filter(|h| h.writable)
            .filter_map(|h| h.file.metadata().ok())
            .map(|m| (m.dev(), m.ino()))
            .collect()
    }
}

/// Where a read-only open of a lower file gets its bytes.
pub(super) enum LowerData {
    /// A complete local file: a store object or an assembled chunked file.
    Whole(PathBuf),
    /// A chunked file: `recipe_file` is the recipe object, `whole` its
    /// assembled copy if there is one.
    Chunked {
        reader: Arc<ChunkedReader>,
        recipe_file: PathBuf,
        whole: Option<PathBuf>,
    },
}
