//! The mount's control socket at a path of any length. A Unix socket
//! address holds at most 107 bytes, less than many state directories'
//! paths (and the mount must work whatever that length): a longer path is
//! reached through a descriptor of its directory, by its short name in
//! `/proc/self/fd`.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use rustix::fs::{CWD, Mode, OFlags};

/// Longest path a `sockaddr_un` holds (with its NUL).
const SUN_PATH_MAX: usize = 107;

/// A path to `socket` short enough for a socket address; the descriptor
/// (if any) must stay open while the path is used.
fn short(socket: &Path) -> io::Result<(PathBuf, Option<OwnedFd>)> {
    if socket.as_os_str().len() <= SUN_PATH_MAX {
        return Ok((socket.to_path_buf(), None));
    }
    let (Some(dir), Some(name)) = (socket.parent(), socket.file_name()) else {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    };
    let fd = rustix::fs::openat(
        CWD,
        dir,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let path = Path::new("/proc/self/fd")
        .join(fd.as_raw_fd().to_string())
        .join(name);
    Ok((path, Some(fd)))
}

pub fn bind(socket: &Path) -> io::Result<UnixListener> {
    let (path, _dir) = short(socket)?;
    UnixListener::bind(path)
}

pub fn connect(socket: &Path) -> io::Result<UnixStream> {
    let (path, _dir) = short(socket)?;
    UnixStream::connect(path)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    #[test]
    fn phase1_sockets_at_paths_longer_than_an_address() {
        let dir = tempfile::tempdir().unwrap();
        let long = dir.path().join("d".repeat(200));
        std::fs::create_dir(&long).unwrap();
        let socket = long.join("control.sock");
        let listener = bind(&socket).unwrap();
        assert!(socket.exists());
        let mut client = connect(&socket).unwrap();
        client.write_all(b"x").unwrap();
        let mut buf = [0u8; 1];
        listener.accept().unwrap().0.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"x");
    }
}
