//! Attributes of an upper entry, read relative to its directory's
//! descriptor (`fstatat`) or from an open file (`fstat`): the std type
//! cannot be built from either without a path.

use std::fs::File;
use std::io;

use rustix::fs::{FileType, Stat};

#[derive(Clone, Copy, Debug)]
pub struct Meta(Stat);

// `Stat`'s field types differ between architectures: the casts are needed
// on some and no-ops on others.
#[allow(clippy::unnecessary_cast)]
impl Meta {
    pub fn of_file(f: &File) -> io::Result<Self> {
        Ok(Self(rustix::fs::fstat(f)?))
    }

    pub fn file_type(&self) -> FileType {
        FileType::from_raw_mode(self.0.st_mode as u32)
    }

    pub fn is_dir(&self) -> bool {
        self.file_type() == FileType::Directory
    }

    pub fn is_file(&self) -> bool {
        self.file_type() == FileType::RegularFile
    }

    pub fn is_symlink(&self) -> bool {
        self.file_type() == FileType::Symlink
    }

    pub fn is_char_device(&self) -> bool {
        self.file_type() == FileType::CharacterDevice
    }

    pub fn mode(&self) -> u32 {
        self.0.st_mode as u32
    }

    pub fn dev(&self) -> u64 {
        self.0.st_dev as u64
    }

    pub fn ino(&self) -> u64 {
        self.0.st_ino as u64
    }

    pub fn nlink(&self) -> u64 {
        self.0.st_nlink as u64
    }

    pub fn uid(&self) -> u32 {
        self.0.st_uid as u32
    }

    pub fn gid(&self) -> u32 {
        self.0.st_gid as u32
    }

    pub fn rdev(&self) -> u64 {
        self.0.st_rdev as u64
    }

    pub fn size(&self) -> u64 {
        self.0.st_size as u64
    }

    pub fn blocks(&self) -> u64 {
        self.0.st_blocks as u64
    }

    pub fn blksize(&self) -> u64 {
        self.0.st_blksize as u64
    }

    pub fn atime(&self) -> (i64, i64) {
        (self.0.st_atime as i64, self.0.st_atime_nsec as i64)
    }

    pub fn mtime(&self) -> (i64, i64) {
        (self.0.st_mtime as i64, self.0.st_mtime_nsec as i64)
    }

    pub fn ctime(&self) -> (i64, i64) {
        (self.0.st_ctime as i64, self.0.st_ctime_nsec as i64)
    }
}

impl From<Stat> for Meta {
    fn from(s: Stat) -> Self {
        Self(s)
    }
}
