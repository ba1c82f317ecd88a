//! The one way Elton makes a file durable: write a temp file in the same
//! directory tree, fsync it, rename it into place, fsync the directory.

use std::fs::File;
use std::io;
use std::path::Path;

/// Moves the already-fsynced `tmp` to `dest` and fsyncs `dest`'s directory,
/// so that after a crash `dest` is either absent or complete.
pub fn publish(tmp: &Path, dest: &Path) -> io::Result<()> {
    std::fs::rename(tmp, dest)?;
    if let Some(dir) = dest.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Writes `bytes` to `dest` through a temp file next to it, renamed into
/// place, without flushing: after a crash `dest` is absent, complete, or
/// its old self. The caller makes it durable with a later `syncfs` of the
/// same filesystem (one flush for many files), and must not rely on it
/// before then.
pub fn write_file_unflushed(dest: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    io::Write::write_all(&mut tmp, bytes)?;
    tmp.persist(dest).map_err(|e| e.error)?;
    Ok(())
}

/// Writes `bytes` to `dest` durably, through a temp file next to it.
pub fn write_file(dest: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    io::Write::write_all(&mut tmp, bytes)?;
    tmp.as_file().sync_all()?;
    let (_, path) = tmp.keep().map_err(|e| e.error)?;
    publish(&path, dest)
}
