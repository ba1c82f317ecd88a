//! Taking a corrupt file away from everyone, including those who opened it
//! before it was found bad.
//!
//! Renaming a bad file aside stops new opens, but a descriptor opened
//! earlier keeps reading the same inode: an Eltonfs mount's passthrough
//! backing file (the kernel reads it without asking the mount), a daemon-
//! served open, an HTTP response in flight. So the bad bytes are copied
//! aside as evidence and the inode itself is emptied: old descriptors read
//! end-of-file, never the bad bytes. Once a good copy exists, [`refill`]
//! writes it into the emptied inode, so they read the good bytes again.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use elton_proto::ObjectId;

/// Moves the bytes of the bad file at `path` to `evidence` (dropped when
/// `None`: a cache's copy needs no evidence), removes `path` and empties
/// the inode. Returns the emptied inode (open for writing, for
/// [`refill`]), or `None` when nothing was emptied: `path` is gone, is no
/// longer inode `expected_ino` (someone replaced it with another copy: it is
/// left alone), or the inode has other names (a mount's upper file being
/// committed), in which case the file is only renamed to `evidence`.
pub fn cut_off(
    path: &Path,
    evidence: Option<&Path>,
    expected_ino: Option<u64>,
) -> io::Result<Option<File>> {
    let mut file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if expected_ino.is_some_and(|ino| ino != meta.ino()) {
        return Ok(None);
    }
    if meta.nlink() > 1 {
        // Emptying would change the other name's contents too.
        match evidence {
            Some(e) => fs::rename(path, e)?,
            None => fs::remove_file(path)?,
        }
        return Ok(None);
    }
    if let Some(evidence) = evidence {
        io::copy(&mut file, &mut File::create(evidence)?)?;
    }
    // Unlink only the inode just copied; a replacement that appeared since
    // is a good copy published by a fetch.
    match fs::metadata(path) {
        Ok(m) if m.ino() == meta.ino() && m.dev() == meta.dev() => fs::remove_file(path)?,
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    file.set_len(0)?;
    Ok(Some(file))
}

/// Writes `good` (the object `id`'s bytes) into an inode emptied by
/// [`cut_off`], hashing as it goes; if they turn out not to hash to `id`
/// the inode is emptied again. Returns whether it was refilled.
pub fn refill(emptied: &mut File, good: &mut impl Read, id: &ObjectId) -> io::Result<bool> {
    emptied.seek(SeekFrom::Start(0))?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = good.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        emptied.write_all(&buf[..n])?;
    }
    if ObjectId::from_hash(hasher.finalize()) != *id {
        emptied.set_len(0)?;
        return Ok(false);
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_earlier_descriptor_reads_nothing_then_the_good_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("obj");
        let evidence = dir.path().join("evidence");
        fs::write(&path, b"good bytes").unwrap();
        let id = ObjectId::of(b"good bytes");
        let mut reader = File::open(&path).unwrap();
        fs::write(&path, b"bad! bytes").unwrap();

        let mut emptied = cut_off(&path, Some(&evidence), None)
            .unwrap()
            .expect("cut off");
        assert!(!path.exists());
        assert_eq!(fs::read(&evidence).unwrap(), b"bad! bytes");
        let mut seen = Vec::new();
        reader.read_to_end(&mut seen).unwrap();
        assert!(seen.is_empty(), "the old descriptor must not see bad bytes");

        // Bytes that do not hash to the id are not left behind.
        assert!(!refill(&mut emptied, &mut &b"other"[..], &id).unwrap());
        reader.seek(SeekFrom::Start(0)).unwrap();
        reader.read_to_end(&mut seen).unwrap();
        assert!(seen.is_empty());

        assert!(refill(&mut emptied, &mut &b"good bytes"[..], &id).unwrap());
        reader.seek(SeekFrom::Start(0)).unwrap();
        reader.read_to_end(&mut seen).unwrap();
        assert_eq!(seen, b"good bytes");
    }

    #[test]
    fn a_replaced_or_shared_file_is_not_emptied() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("obj");
        fs::write(&path, b"x").unwrap();
        let ino = fs::metadata(&path).unwrap().ino();
        let ev = dir.path().join("ev");
        assert!(cut_off(&path, Some(&ev), Some(ino + 1)).unwrap().is_none());
        assert_eq!(fs::read(&path).unwrap(), b"x");
        assert!(!ev.exists());

        let other = dir.path().join("other-name");
        fs::hard_link(&path, &other).unwrap();
        assert!(cut_off(&path, Some(&ev), Some(ino)).unwrap().is_none());
        assert!(!path.exists());
        assert_eq!(
            fs::read(&other).unwrap(),
            b"x",
            "the other name keeps its bytes"
        );
        assert!(
            cut_off(&path, None, None).unwrap().is_none(),
            "gone: nothing to do"
        );
    }
}
