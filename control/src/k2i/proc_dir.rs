//! `/proc` opened once per listing. Each process's files are opened
//! relative to it (`openat(proc, "PID/stat")`): one path lookup per file
//! and no handle on the process's directory, which was two of the nine
//! system calls a process cost through `procfs::process::Process`
//! (`docs/benchmarks.md`, k2i run 8). Blocking; the caller runs it off the
//! async runtime.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;

use rustix::fs::{CWD, Mode, OFlags, fstat, openat};

/// How much of a file the first read asks for: a whole `stat` line and
/// most command lines.
const FIRST_READ: usize = 4096;

/// An open `/proc` (or a directory laid out like it, in tests).
#[derive(Debug)]
pub struct ProcDir {
    fd: OwnedFd,
    path: std::path::PathBuf,
}

impl ProcDir {
    /// This host's `/proc`.
    pub fn open() -> io::Result<Self> {
        Self::open_at("/proc")
    }

    /// A directory laid out like `/proc`.
    pub fn open_at(path: impl Into<std::path::PathBuf>) -> io::Result<Self> {
        let path = path.into();
        let fd = openat(
            CWD,
            &path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(ProcDir { fd, path })
    }

    /// The pids listed now, ascending (threads are not listed: `/proc`
    /// shows thread-group leaders only).
    pub fn pids(&self) -> io::Result<Vec<i32>> {
        let mut pids: Vec<i32> = std::fs::read_dir(&self.path)?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|pid: &i32| *pid > 0)
            .collect();
        pids.sort_unstable();
        Ok(pids)
    }

    /// Reads `/proc/PID/<file>` into `buf` (replacing what it held).
    /// With `owner`, also returns the file's owner: the uid the kernel
    /// shows for the process (its effective uid, root for a process that
    /// is not dumpable), the same as its directory's. An error: the
    /// process is gone (or was never there).
    pub fn read(
        &self,
        pid: i32,
        file: &str,
        buf: &mut Vec<u8>,
        owner: bool,
    ) -> io::Result<Option<u32>> {
        buf.clear();
        let fd = openat(
            &self.fd,
            format!("{pid}/{file}"),
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let uid = if owner {
            Some(fstat(&fd)?.st_uid)
        } else {
            None
        };
        read_all(File::from(fd), buf)?;
        Ok(uid)
    }
}

/// Reads a `/proc` file until a read comes back short. The kernel fills a
/// read of these files from one snapshot, so a short read is their end:
/// the read that would return 0 is saved, as procps's `file2str` does.
fn read_all(mut f: File, buf: &mut Vec<u8>) -> io::Result<()> {
    let mut want = FIRST_READ;
    loop {
        let start = buf.len();
        buf.resize(start + want, 0);
        let n = loop {
            match f.read(&mut buf[start..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    buf.truncate(start);
                    return Err(e);
                }
            }
        };
        buf.truncate(start + n);
        if n < want {
            return Ok(());
        }
        want = want.saturating_mul(2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_and_its_owner() {
        let dir = ProcDir::open().expect("opening /proc");
        let me = std::process::id() as i32;
        assert!(dir.pids().expect("listing").contains(&me));
        let mut buf = Vec::new();
        let uid = dir.read(me, "stat", &mut buf, true).expect("reading stat");
        assert_eq!(uid, Some(rustix::process::geteuid().as_raw()));
        let text = String::from_utf8_lossy(&buf);
        assert!(text.starts_with(&format!("{me} (")), "{text}");
        assert!(dir.read(i32::MAX, "stat", &mut buf, false).is_err());
    }

    #[test]
    fn long_files_are_read_whole() {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(tmp.path().join("7")).expect("mkdir");
        let long: Vec<u8> = (0..3 * FIRST_READ + 17)
            .map(|i| b'a' + (i % 26) as u8)
            .collect();
        std::fs::write(tmp.path().join("7/cmdline"), &long).expect("write");
        std::fs::write(tmp.path().join("7/stat"), b"short").expect("write");
        std::fs::create_dir(tmp.path().join("self")).expect("mkdir");
        let dir = ProcDir::open_at(tmp.path()).expect("open");
        assert_eq!(dir.pids().expect("list"), [7]);
        let mut buf = b"left over".to_vec();
        dir.read(7, "cmdline", &mut buf, false).expect("read");
        assert_eq!(buf, long);
        dir.read(7, "stat", &mut buf, false).expect("read");
        assert_eq!(buf, b"short");
    }
}
