//! FUSE attributes of a path, from whichever layer provides it, and how
//! long the kernel may cache them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use elton_proto::EntryKind;
use fuser::{FileAttr, FileType, INodeNo};

use super::layers::{View, mtime_of};
use super::meta::Meta;

/// Lower entries never change within a version: cache them long. Switching
/// versions invalidates explicitly.
pub const LOWER_TTL: Duration = Duration::from_secs(3600);
pub const UPPER_TTL: Duration = Duration::from_secs(1);

pub fn kind_of_meta(m: &Meta) -> FileType {
    use rustix::fs::FileType as Rx;
    match m.file_type() {
        Rx::Directory => FileType::Directory,
        Rx::Symlink => FileType::Symlink,
        Rx::Fifo => FileType::NamedPipe,
        Rx::Socket => FileType::Socket,
        Rx::CharacterDevice => FileType::CharDevice,
        Rx::BlockDevice => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

pub fn kind_of_entry(k: EntryKind) -> FileType {
    match k {
        EntryKind::File => FileType::RegularFile,
        EntryKind::Dir => FileType::Directory,
        EntryKind::Symlink => FileType::Symlink,
    }
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(nsecs as u64)
    }
}

pub fn attr_of_meta(ino: u64, m: &Meta) -> FileAttr {
    let (ctime, ctime_nsec) = m.ctime();
    FileAttr {
        ino: INodeNo(ino),
        size: m.size(),
        blocks: m.blocks(),
        atime: time(m.atime().0, m.atime().1),
        mtime: time(m.mtime().0, m.mtime().1),
        ctime: time(ctime, ctime_nsec),
        crtime: time(ctime, ctime_nsec),
        kind: kind_of_meta(m),
        perm: (m.mode() & 0o7777) as u16,
        nlink: m.nlink() as u32,
        uid: m.uid(),
        gid: m.gid(),
        rdev: m.rdev() as u32,
        flags: 0,
        blksize: m.blksize() as u32,
    }
}

/// Attributes and cache lifetime of a path.
pub fn attr_of(ino: u64, view: &View) -> (FileAttr, Duration) {
    if let Some(m) = &view.upper {
        return (attr_of_meta(ino, m), UPPER_TTL);
    }
    let e = view.lower.as_ref();
    let kind = e.map_or(EntryKind::Dir, |e| e.kind);
    let mtime = e.map_or(UNIX_EPOCH, mtime_of);
    let size = e.map_or(0, |e| e.size);
    let attr = FileAttr {
        ino: INodeNo(ino),
        size: if kind == EntryKind::Dir { 4096 } else { size },
        blocks: size.div_ceil(512),
        atime: mtime,
        mtime,
        ctime: mtime,
        crtime: mtime,
        kind: kind_of_entry(kind),
        perm: e.map_or(0o755, |e| e.mode) as u16,
        nlink: if kind == EntryKind::Dir { 2 } else { 1 },
        uid: e.map_or(0, |e| e.uid),
        gid: e.map_or(0, |e| e.gid),
        rdev: 0,
        flags: 0,
        blksize: 4096,
    };
    (attr, LOWER_TTL)
}
