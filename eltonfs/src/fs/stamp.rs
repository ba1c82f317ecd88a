//! Identity of a local file as it was when its bytes were last checked: a
//! file whose stamp is unchanged still holds those bytes, short of a disk
//! that rots underneath (which the slave's scrub finds).

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    pub fn of(m: &Metadata) -> Self {
        Self {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }

    /// The stamp of the file at `path`, if there is one.
    pub fn of_path(path: &Path) -> Option<Self> {
        std::fs::metadata(path).ok().map(|m| Self::of(&m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewriting_a_file_changes_its_stamp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"one").unwrap();
        let before = FileStamp::of_path(&p).unwrap();
        assert_eq!(FileStamp::of_path(&p), Some(before));
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(&p, b"two").unwrap();
        assert_ne!(FileStamp::of_path(&p), Some(before));
        std::fs::remove_file(&p).unwrap();
        assert_eq!(FileStamp::of_path(&p), None);
    }
}
