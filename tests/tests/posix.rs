#![allow(clippy::unwrap_used)]
// std has no wrappers for xattrs, SEEK_DATA/SEEK_HOLE, renameat2, truncate(2),
// mkfifo or lutimes; the few libc calls live in `sys` below.
#![allow(unsafe_code)]
//! POSIX behaviour of Eltonfs, checked differentially against the kernel's
//! own overlayfs: the same source tree is imported as a volume and mounted
//! with Eltonfs, and also mounted as the lower layer of `mount -t overlay`.
//! Every operation runs on both mounts and must give the same result (the
//! same value or the same errno); at the end both trees must be the same,
//! and so must a fresh Eltonfs mount of the version committed from them.
//!
//! Compared for every entry: name, file type, permission bits (with
//! setuid/setgid/sticky), uid/gid, size (not of directories), symlink
//! target, content hash, user xattrs, nlink of regular files and which names
//! are hard links of each other. Deliberately not compared:
//! - st_ino values (each filesystem numbers its own inodes; only the
//!   equivalence "these names are one inode" is compared),
//! - st_size, st_nlink and st_blocks of directories (filesystem-specific:
//!   overlayfs reports nlink 1 for merged directories),
//! - atime and ctime, and mtime where the operations set it: the two mounts
//!   are changed at different instants. An mtime the operations did not
//!   touch (every source entry has an old, fixed mtime) must be the same:
//!   copy-up keeps it on both. (Between Eltonfs mounts, before and after a
//!   commit, every mtime is compared.)
//!
//! Deliberate differences from overlayfs, asserted as such where they show:
//! - a descriptor of a lower file keeps reading the lower content after its
//!   name is copied up (FUSE passthrough to the store's object), and while
//!   it stays open, opening the copied-up file fails with ETXTBSY (the
//!   kernel allows one passthrough backing file per inode); overlayfs
//!   switches the old descriptor to the upper file;
//! - fstat of an unlinked, still-open lower file reports nlink 0 (overlayfs
//!   reports the lower file's 1): nlink is not compared there;
//! - a committed version holds files, directories and symlinks with mode,
//!   owner, mtime and user xattrs, but no FIFOs and no hard-link identity.
//!
//! Phase 2 runs fsx (the file system exerciser, crate `fsx`) on a lower and
//! on an upper file; `./test.sh` installs it and sets `FSX_BIN`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{
    DirBuilderExt, DirEntryExt, FileExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt,
};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use common::{Cluster, Mount, pseudo_random};

/// mtime of every entry of the source tree (2001-09-09): anything newer
/// was set by an operation.
const OLD_MTIME: i64 = 1_000_000_000;
const NOBODY: u32 = 65534;
/// A group other than root's, for the setgid directory.
const USERS_GID: u32 = 100;
const MIB: usize = 1 << 20;

// ---------------------------------------------------------------------------
// libc calls std does not wrap.

mod sys {
    use std::ffi::CString;
    use std::fs::File;
    use std::io;
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;

    fn cstr(s: impl AsRef<std::ffi::OsStr>) -> CString {
        CString::new(s.as_ref().as_bytes()).expect("no NUL in test paths")
    }

    fn check(r: libc::c_int) -> io::Result<()> {
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    fn check_len(r: libc::ssize_t) -> io::Result<usize> {
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r as usize)
        }
    }

    pub fn truncate(p: &Path, len: u64) -> io::Result<()> {
        let c = cstr(p);
        // SAFETY: `c` is a NUL-terminated path that outlives the call.
        check(unsafe { libc::truncate(c.as_ptr(), len as libc::off_t) })
    }

    pub fn lseek(f: &File, offset: i64, whence: libc::c_int) -> io::Result<i64> {
        // SAFETY: plain syscall on a descriptor `f` keeps open.
        let r = unsafe { libc::lseek(f.as_raw_fd(), offset, whence) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r)
        }
    }

    pub fn renameat2(from: &Path, to: &Path, flags: libc::c_uint) -> io::Result<()> {
        let (f, t) = (cstr(from), cstr(to));
        // SAFETY: both paths are NUL-terminated and outlive the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_renameat2,
                libc::AT_FDCWD,
                f.as_ptr(),
                libc::AT_FDCWD,
                t.as_ptr(),
                flags,
            )
        };
        check(r as libc::c_int)
    }

    pub fn mkfifo(p: &Path, mode: u32) -> io::Result<()> {
        let c = cstr(p);
        // SAFETY: `c` is a NUL-terminated path that outlives the call.
        check(unsafe { libc::mkfifo(c.as_ptr(), mode) })
    }

    /// Sets atime and mtime of `p` without following a symlink.
    pub fn lutimes(p: &Path, secs: i64) -> io::Result<()> {
        let c = cstr(p);
        let t = libc::timespec {
            tv_sec: secs,
            tv_nsec: 0,
        };
        let times = [t, t];
        // SAFETY: `c` and `times` outlive the call; `times` has two entries.
        check(unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                c.as_ptr(),
                times.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })
    }

    pub fn setxattr(p: &Path, name: &str, value: &[u8], flags: libc::c_int) -> io::Result<()> {
        let (c, n) = (cstr(p), cstr(name));
        // SAFETY: pointers and lengths describe live buffers.
        check(unsafe {
            libc::lsetxattr(
                c.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                flags,
            )
        })
    }

    pub fn getxattr(p: &Path, name: &str) -> io::Result<Vec<u8>> {
        let (c, n) = (cstr(p), cstr(name));
        let mut buf = vec![0u8; 65536];
        // SAFETY: pointers and lengths describe live buffers.
        let len = check_len(unsafe {
            libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        })?;
        buf.truncate(len);
        Ok(buf)
    }

    /// Names, sorted.
    pub fn listxattr(p: &Path) -> io::Result<Vec<String>> {
        let c = cstr(p);
        let mut buf = vec![0u8; 65536];
        // SAFETY: pointers and lengths describe live buffers.
        let len =
            check_len(unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) })?;
        let mut names: Vec<String> = buf[..len]
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect();
        names.sort();
        Ok(names)
    }

    pub fn removexattr(p: &Path, name: &str) -> io::Result<()> {
        let (c, n) = (cstr(p), cstr(name));
        // SAFETY: both strings are NUL-terminated and outlive the call.
        check(unsafe { libc::lremovexattr(c.as_ptr(), n.as_ptr()) })
    }
}

// ---------------------------------------------------------------------------
// The two mounts and the differential runner.

/// An errno, printed with its message.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Errno(i32);

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Errno({}: {})",
            self.0,
            io::Error::from_raw_os_error(self.0)
        )
    }
}

fn errno(e: io::Error) -> Errno {
    Errno(
        e.raw_os_error()
            .unwrap_or_else(|| panic!("not an OS error: {e}")),
    )
}

type R<T> = Result<T, Errno>;

/// `mount -t overlay`, unmounted on drop (also when a test panics).
struct KernelOverlay {
    mnt: PathBuf,
}

impl KernelOverlay {
    fn mount(lower: &Path, upper: &Path, work: &Path, mnt: &Path) -> Self {
        for d in [upper, work, mnt] {
            fs::create_dir_all(d).unwrap();
            fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
        }
        // redirect_dir=on: rename(2) of a directory with lower content
        // works (Eltonfs supports it; the kernel's default answers EXDEV).
        // index=off, metacopy=off: plain copy-up, like Eltonfs.
        let opts = format!(
            "lowerdir={},upperdir={},workdir={},redirect_dir=on,index=off,metacopy=off",
            lower.display(),
            upper.display(),
            work.display()
        );
        let out = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(mnt)
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "mount -t overlay failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            mnt: mnt.to_path_buf(),
        }
    }
}

impl Drop for KernelOverlay {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.mnt)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }
}

/// The same tree under two roots: runs every operation on both.
struct Pair {
    elton: PathBuf,
    kernel: PathBuf,
}

impl Pair {
    /// Runs `op` on the kernel overlay, then on Eltonfs; asserts that both
    /// give the same result and returns it.
    #[track_caller]
    fn same<T: PartialEq + fmt::Debug>(
        &self,
        what: &str,
        op: impl Fn(&Path) -> io::Result<T>,
    ) -> R<T> {
        let t = Instant::now();
        let k = op(&self.kernel).map_err(errno);
        let tk = t.elapsed();
        let e = op(&self.elton).map_err(errno);
        let te = t.elapsed() - tk;
        if te.as_secs_f64() > 1.0 {
            eprintln!(
                "    {what}: kernel overlayfs {:.1}s, Eltonfs {:.1}s",
                tk.as_secs_f64(),
                te.as_secs_f64()
            );
        }
        assert_eq!(
            e, k,
            "{what}: Eltonfs (left) differs from kernel overlayfs (right)"
        );
        k
    }

    /// Like `same`, and the result must be `want`.
    #[track_caller]
    fn expect<T: PartialEq + fmt::Debug>(
        &self,
        what: &str,
        want: R<T>,
        op: impl Fn(&Path) -> io::Result<T>,
    ) {
        let got = self.same(what, op);
        assert_eq!(
            got, want,
            "{what}: both mounts agree, but not with the expectation"
        );
    }

    /// Runs `sh -c script sh ROOT` as uid/gid 65534 on both mounts; the
    /// exit status and outputs (with ROOT in place of the mount path) must
    /// match. Returns (success, stdout, stderr).
    #[track_caller]
    fn as_nobody(&self, script: &str) -> (bool, String, String) {
        let run = |root: &Path| {
            let out = Command::new("sh")
                .arg("-c")
                .arg(script)
                .arg("sh")
                .arg(root)
                .uid(NOBODY)
                .gid(NOBODY)
                .current_dir("/")
                .env_clear()
                .env("PATH", "/usr/bin:/bin")
                .output()
                .expect("running sh as nobody");
            let root = root.display().to_string();
            let norm = |b: &[u8]| String::from_utf8_lossy(b).replace(&root, "ROOT");
            (out.status.success(), norm(&out.stdout), norm(&out.stderr))
        };
        let k = run(&self.kernel);
        let e = run(&self.elton);
        assert_eq!(
            e, k,
            "as uid {NOBODY}: {script}: Eltonfs (left) differs from kernel overlayfs (right)"
        );
        k
    }
}

fn read(p: &Path) -> io::Result<String> {
    fs::read_to_string(p)
}

fn write(p: &Path, data: &str) -> io::Result<()> {
    fs::write(p, data)
}

/// Sorted names in a directory.
fn names(dir: &Path) -> io::Result<Vec<String>> {
    let mut v = fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<io::Result<Vec<_>>>()?;
    v.sort();
    Ok(v)
}

/// Every path below `dir`, relative and sorted, directories with a `/`.
fn tree(dir: &Path) -> io::Result<Vec<String>> {
    fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) -> io::Result<()> {
        for e in fs::read_dir(dir)? {
            let e = e?;
            let name = format!("{prefix}{}", e.file_name().to_string_lossy());
            if e.file_type()?.is_dir() {
                out.push(format!("{name}/"));
                walk(&e.path(), &format!("{name}/"), out)?;
            } else {
                out.push(name);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, "", &mut out)?;
    out.sort();
    Ok(out)
}

fn hash_file(p: &Path) -> io::Result<String> {
    let mut f = File::open(p)?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 4 * MIB];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().to_hex().to_string())
}

// ---------------------------------------------------------------------------
// Tree snapshots.

#[derive(Clone, Debug, PartialEq)]
struct Node {
    kind: &'static str,
    perm: u32,
    uid: u32,
    gid: u32,
    /// Not for directories (filesystem-specific).
    size: Option<u64>,
    target: Option<String>,
    hash: Option<String>,
    /// Regular files only.
    nlink: Option<u64>,
    mtime: i64,
    /// user.* only: the other namespaces are the filesystems' own.
    xattrs: Vec<(String, Vec<u8>)>,
}

struct Snapshot {
    nodes: BTreeMap<String, Node>,
    /// Groups of names that are one inode (hard links), each sorted.
    links: BTreeSet<Vec<String>>,
    /// Entries whose readdir d_ino differs from their st_ino.
    d_ino_mismatch: Vec<String>,
    /// Entries whose readdir d_type differs from lstat's type.
    d_type_mismatch: Vec<String>,
}

fn kind(t: fs::FileType) -> &'static str {
    if t.is_file() {
        "file"
    } else if t.is_dir() {
        "dir"
    } else if t.is_symlink() {
        "symlink"
    } else if t.is_fifo() {
        "fifo"
    } else if t.is_socket() {
        "socket"
    } else if t.is_char_device() {
        "chardev"
    } else {
        "blockdev"
    }
}

fn node(p: &Path, m: &fs::Metadata) -> Node {
    let k = kind(m.file_type());
    let xattrs = match sys::listxattr(p) {
        Ok(names) => names
            .into_iter()
            .filter(|n| n.starts_with("user."))
            .map(|n| {
                let v = sys::getxattr(p, &n).unwrap();
                (n, v)
            })
            .collect(),
        Err(e) => panic!("listxattr {}: {e}", p.display()),
    };
    Node {
        kind: k,
        perm: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        size: (k != "dir").then(|| m.size()),
        target: (k == "symlink").then(|| fs::read_link(p).unwrap().display().to_string()),
        hash: (k == "file").then(|| hash_file(p).unwrap()),
        nlink: (k == "file").then(|| m.nlink()),
        mtime: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        xattrs,
    }
}

fn snapshot(root: &Path) -> Snapshot {
    let mut snap = Snapshot {
        nodes: BTreeMap::new(),
        links: BTreeSet::new(),
        d_ino_mismatch: Vec::new(),
        d_type_mismatch: Vec::new(),
    };
    let mut by_ino: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let m = fs::symlink_metadata(root).unwrap();
    snap.nodes.insert(String::new(), node(root, &m));
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            let child_rel = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let m = fs::symlink_metadata(e.path()).unwrap();
            if e.ino() != m.ino() {
                snap.d_ino_mismatch.push(child_rel.clone());
            }
            if kind(e.file_type().unwrap()) != kind(m.file_type()) {
                snap.d_type_mismatch.push(child_rel.clone());
            }
            by_ino.entry(m.ino()).or_default().push(child_rel.clone());
            if m.is_dir() {
                stack.push((e.path(), child_rel.clone()));
            }
            snap.nodes.insert(child_rel, node(&e.path(), &m));
        }
    }
    for (_, mut names) in by_ino {
        if names.len() > 1 {
            names.sort();
            snap.links.insert(names);
        }
    }
    snap
}

/// Panics with every difference between two node maps.
#[track_caller]
fn assert_same_nodes(what: &str, left: &BTreeMap<String, Node>, right: &BTreeMap<String, Node>) {
    let mut diffs = Vec::new();
    let keys: BTreeSet<&String> = left.keys().chain(right.keys()).collect();
    for k in keys {
        match (left.get(k), right.get(k)) {
            (Some(a), Some(b)) if a == b => {}
            (a, b) => diffs.push(format!("  /{k}:\n    left:  {a:?}\n    right: {b:?}")),
        }
    }
    assert!(
        diffs.is_empty(),
        "{what}: {} entries differ (left, right):\n{}",
        diffs.len(),
        diffs
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Keeps an mtime only where no operation set it (see the module comment).
fn only_old_mtimes(nodes: &BTreeMap<String, Node>) -> BTreeMap<String, Node> {
    nodes
        .iter()
        .map(|(k, n)| {
            let mut n = n.clone();
            if n.mtime > OLD_MTIME * 1_000_000_000 {
                n.mtime = 0;
            }
            (k.clone(), n)
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The source tree.

fn put(root: &Path, rel: &str, data: &[u8], mode: u32) {
    let p = root.join(rel);
    fs::write(&p, data).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
}

fn dir(root: &Path, rel: &str, mode: u32) {
    let p = root.join(rel);
    fs::create_dir_all(&p).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
}

/// Files with different modes and owners, nested directories, symlinks,
/// and the entries the operations below rename, delete and modify.
fn source_tree(src: &Path) {
    dir(src, "", 0o755);
    for d in [
        "a/b/c",
        "dir_to_move/sub/deeper",
        "doomed/inner",
        "doomed2",
        "nonempty",
        "emptydir",
        "rootdir",
        "xdir",
        "big",
        "linkdir",
        "exchange_dir",
        "deep1/deep2/deep3",
    ] {
        dir(src, d, 0o755);
    }
    dir(src, "privdir", 0o700);
    dir(src, "sticky", 0o1777);
    dir(src, "nobody_dir", 0o755);
    dir(src, "setgid", 0o2775);
    std::os::unix::fs::chown(src.join("nobody_dir"), Some(NOBODY), Some(NOBODY)).unwrap();
    std::os::unix::fs::chown(src.join("setgid"), Some(0), Some(USERS_GID)).unwrap();

    put(src, "hello.txt", b"hello\n", 0o644);
    put(src, "hello2.txt", b"hello two\n", 0o644);
    put(src, "exec.sh", b"#!/bin/sh\necho hi\n", 0o755);
    put(src, "secret", b"top secret\n", 0o600);
    put(src, "ro.txt", b"read only\n", 0o444);
    put(src, "suid", b"suid\n", 0o4755);
    put(src, "empty", b"", 0o644);
    put(src, "nobody_file", b"nobody's\n", 0o644);
    std::os::unix::fs::chown(src.join("nobody_file"), Some(NOBODY), Some(NOBODY)).unwrap();
    put(src, "a/top.txt", b"top\n", 0o644);
    put(src, "a/b/mid.txt", b"mid\n", 0o640);
    put(src, "a/b/c/deep.txt", b"deep\n", 0o644);
    put(src, "victim.txt", b"victim\n", 0o644);
    put(src, "src_lower.txt", b"source\n", 0o600);
    put(src, "dir_to_move/x.txt", b"x\n", 0o644);
    put(src, "dir_to_move/sub/y.txt", b"y\n", 0o644);
    put(src, "dir_to_move/sub/deeper/z.txt", b"z\n", 0o644);
    put(src, "doomed/g.txt", b"g\n", 0o644);
    put(src, "doomed/inner/f.txt", b"f\n", 0o644);
    put(src, "doomed2/old.txt", b"old\n", 0o644);
    put(src, "nonempty/keep.txt", b"keep\n", 0o644);
    put(src, "rootdir/existing.txt", b"existing\n", 0o644);
    put(src, "nobody_dir/x", b"x\n", 0o644);
    std::os::unix::fs::chown(src.join("nobody_dir/x"), Some(NOBODY), Some(NOBODY)).unwrap();
    put(src, "sticky/rootfile", b"root's\n", 0o666);
    put(src, "privdir/hidden", b"hidden\n", 0o644);
    put(src, "setgid/member", b"member\n", 0o664);
    std::os::unix::fs::chown(src.join("setgid/member"), Some(0), Some(USERS_GID)).unwrap();
    put(src, "big/big_lower.bin", &pseudo_random(MIB, 7), 0o644);
    put(src, "big/trunc_fd.bin", &pseudo_random(300_000, 8), 0o644);
    put(src, "grow.txt", b"grow\n", 0o644);
    put(src, "trunc_me.sh", b"#!/bin/sh\nexit 0\n", 0o750);
    std::os::unix::fs::chown(src.join("trunc_me.sh"), Some(NOBODY), Some(USERS_GID)).unwrap();
    put(src, "append.log", b"line0\n", 0o644);
    put(src, "hl_src.txt", b"link me\n", 0o644);
    put(src, "hl2_src.txt", b"link me too\n", 0o600);
    put(src, "xattr_lower.txt", b"xattrs\n", 0o644);
    put(src, "open_unlink.txt", b"still here\n", 0o640);
    put(src, "readopen.txt", b"old content\n", 0o644);
    put(src, "readopen2.txt", b"old content\n", 0o644);
    put(src, "recreated.txt", b"lower one\n", 0o644);
    put(src, "moving.txt", b"appended\n", 0o644);
    put(src, "timed.txt", b"timed\n", 0o644);
    put(src, "chmod_me.txt", b"chmod\n", 0o644);
    put(src, "chown_me.txt", b"chown\n", 0o644);
    put(src, "xdir/in_x.txt", b"in x\n", 0o644);
    put(src, "exchange_a.txt", b"exchange a\n", 0o644);
    put(src, "exchange_dir/inside.txt", b"inside\n", 0o644);
    put(src, "linkdir/target.txt", b"target\n", 0o644);
    put(src, "deep1/deep2/deep3/f.txt", b"deep f\n", 0o644);
    put(src, "deep1/deep2/sibling.txt", b"sibling\n", 0o644);
    std::os::unix::fs::symlink("hello.txt", src.join("link")).unwrap();
    std::os::unix::fs::symlink("nowhere", src.join("dangling")).unwrap();
    std::os::unix::fs::symlink("a/b", src.join("dirlink")).unwrap();
    std::os::unix::fs::symlink("../hello.txt", src.join("a/uplink")).unwrap();

    // Old, fixed mtimes everywhere (children first: creating an entry
    // changes its directory's mtime, setting times does not).
    fn age(p: &Path) {
        let m = fs::symlink_metadata(p).unwrap();
        if m.is_dir() {
            for e in fs::read_dir(p).unwrap() {
                age(&e.unwrap().path());
            }
        }
        sys::lutimes(p, OLD_MTIME).unwrap();
    }
    age(src);
}

/// A directory every user may traverse (tempdirs are 0700), so uid 65534
/// can reach both mounts.
fn open_tempdir() -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("elton-posix")
        .tempdir()
        .unwrap();
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
    d
}

fn import(cluster: &Cluster, src: &Path, volume: &str) {
    cluster.ok(
        1,
        &[
            "import",
            "--create",
            src.to_str().unwrap(),
            volume,
            "-m",
            "source",
        ],
    );
}

fn phase(n: &str, what: &str, started: Instant) {
    eprintln!(
        "[{:>6.1}s] phase {n}: {what}",
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------

#[test]
fn phase1_operations_match_the_kernel_overlayfs_and_survive_a_commit() {
    assert_eq!(
        fs::metadata("/proc/self").unwrap().uid(),
        0,
        "this test needs root: it mounts overlayfs and chowns files (./test.sh runs as root in CI)"
    );
    let t0 = Instant::now();
    let cluster = Cluster::new(1);
    let base = open_tempdir();
    let src = base.path().join("src");
    source_tree(&src);
    import(&cluster, &src, "vol");

    let elton_mnt = base.path().join("elton");
    let mount = Mount::new(
        &cluster,
        1,
        "vol@1",
        &elton_mnt,
        &base.path().join("elton-state"),
        &["--allow-other"],
    );
    let kernel = KernelOverlay::mount(
        &src,
        &base.path().join("k-upper"),
        &base.path().join("k-work"),
        &base.path().join("kernel"),
    );
    let p = Pair {
        elton: mount.mountpoint.clone(),
        kernel: kernel.mnt.clone(),
    };

    phase("1.1", "both mounts show the source tree", t0);
    let start = snapshot(&p.kernel);
    assert_same_nodes(
        "before any operation",
        &only_old_mtimes(&snapshot(&p.elton).nodes),
        &only_old_mtimes(&start.nodes),
    );
    p.expect("read a lower file", Ok("hello\n".to_string()), |r| {
        read(&r.join("hello.txt"))
    });
    p.expect("follow a lower symlink", Ok("hello\n".to_string()), |r| {
        read(&r.join("link"))
    });
    p.expect(
        "list through a directory symlink",
        Ok(vec!["c".to_string(), "mid.txt".to_string()]),
        |r| names(&r.join("dirlink")),
    );
    p.expect("read a dangling symlink", Err(Errno(libc::ENOENT)), |r| {
        read(&r.join("dangling"))
    });

    phase("1.2", "rename over existing files and of directories", t0);
    p.expect("rename lower over lower", Ok(()), |r| {
        fs::rename(r.join("src_lower.txt"), r.join("victim.txt"))
    });
    p.expect("renamed content", Ok("source\n".to_string()), |r| {
        read(&r.join("victim.txt"))
    });
    p.expect("old name is gone", Err(Errno(libc::ENOENT)), |r| {
        fs::symlink_metadata(r.join("src_lower.txt")).map(|_| ())
    });
    p.expect("rename upper over lower", Ok("new\n".to_string()), |r| {
        write(&r.join("new.txt"), "new\n")?;
        fs::rename(r.join("new.txt"), r.join("hello2.txt"))?;
        read(&r.join("hello2.txt"))
    });
    p.expect("rename upper over upper", Ok("u1\n".to_string()), |r| {
        write(&r.join("u1"), "u1\n")?;
        write(&r.join("u2"), "u2\n")?;
        fs::rename(r.join("u1"), r.join("u2"))?;
        read(&r.join("u2"))
    });
    p.expect(
        "rename a copied-up lower file into a lower directory",
        Ok(()),
        |r| {
            fs::OpenOptions::new()
                .append(true)
                .open(r.join("a/top.txt"))?
                .write_all(b"more\n")?;
            fs::rename(r.join("a/top.txt"), r.join("a/b/c/top_moved.txt"))
        },
    );
    p.expect(
        "rename a lower symlink",
        Ok(PathBuf::from("hello.txt")),
        |r| {
            fs::rename(r.join("link"), r.join("renamed_link"))?;
            fs::read_link(r.join("renamed_link"))
        },
    );
    p.expect("rename a directory with lower content", Ok(()), |r| {
        fs::rename(r.join("dir_to_move"), r.join("moved"))
    });
    let moved = [
        "sub/",
        "sub/deeper/",
        "sub/deeper/z.txt",
        "sub/y.txt",
        "x.txt",
    ];
    p.expect(
        "list the renamed directory",
        Ok(moved.map(String::from).to_vec()),
        |r| tree(&r.join("moved")),
    );
    p.expect(
        "read files in it",
        Ok(("x\n".into(), "y\n".into(), "z\n".into())),
        |r| {
            Ok::<(String, String, String), io::Error>((
                read(&r.join("moved/x.txt"))?,
                read(&r.join("moved/sub/y.txt"))?,
                read(&r.join("moved/sub/deeper/z.txt"))?,
            ))
        },
    );
    p.expect(
        "the old directory name is gone",
        Err(Errno(libc::ENOENT)),
        |r| names(&r.join("dir_to_move")),
    );
    p.expect("rename it again, into a lower directory", Ok(()), |r| {
        write(&r.join("moved/added.txt"), "added\n")?;
        fs::rename(r.join("moved"), r.join("a/b/moved_again"))
    });
    let mut again: Vec<String> = moved.map(String::from).to_vec();
    again.insert(0, "added.txt".into());
    p.expect("list it there", Ok(again), |r| {
        tree(&r.join("a/b/moved_again"))
    });
    p.expect(
        "rename a new directory over an empty lower directory",
        Ok(vec!["n".to_string()]),
        |r| {
            fs::create_dir(r.join("fresh"))?;
            write(&r.join("fresh/n"), "n\n")?;
            fs::rename(r.join("fresh"), r.join("emptydir"))?;
            names(&r.join("emptydir"))
        },
    );
    p.expect(
        "rename a new directory over a deleted lower directory",
        Ok(vec!["n2".to_string()]),
        |r| {
            fs::remove_dir_all(r.join("doomed2"))?;
            fs::create_dir(r.join("fresh2"))?;
            write(&r.join("fresh2/n2"), "n2\n")?;
            fs::rename(r.join("fresh2"), r.join("doomed2"))?;
            names(&r.join("doomed2"))
        },
    );
    p.expect(
        "rename a directory with upper changes and deleted entries",
        Ok(vec!["added".to_string()]),
        |r| {
            fs::remove_file(r.join("linkdir/target.txt"))?;
            write(&r.join("linkdir/added"), "added\n")?;
            fs::rename(r.join("linkdir"), r.join("linkdir2"))?;
            names(&r.join("linkdir2"))
        },
    );
    p.expect(
        "O_CREAT|O_EXCL of an existing lower file",
        Err(Errno(libc::EEXIST)),
        |r| {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(r.join("hello.txt"))
                .map(|_| ())
        },
    );
    p.expect(
        "a file used as a directory",
        Err(Errno(libc::ENOTDIR)),
        |r| fs::metadata(r.join("hello.txt/x")).map(|_| ()),
    );
    p.expect("a symlink loop", Err(Errno(libc::ELOOP)), |r| {
        std::os::unix::fs::symlink("loop_b", r.join("loop_a"))?;
        std::os::unix::fs::symlink("loop_a", r.join("loop_b"))?;
        read(&r.join("loop_a"))
    });
    p.expect(
        "rename a file over a directory",
        Err(Errno(libc::EISDIR)),
        |r| fs::rename(r.join("hello.txt"), r.join("xdir")),
    );
    p.expect(
        "rename a directory over a file",
        Err(Errno(libc::ENOTDIR)),
        |r| fs::rename(r.join("xdir"), r.join("hello.txt")),
    );
    p.expect(
        "rename a directory over a non-empty one",
        Err(Errno(libc::ENOTEMPTY)),
        |r| fs::rename(r.join("xdir"), r.join("nonempty")),
    );
    p.expect(
        "rename a directory into itself",
        Err(Errno(libc::EINVAL)),
        |r| fs::rename(r.join("xdir"), r.join("xdir/inside")),
    );
    p.expect(
        "rename what does not exist",
        Err(Errno(libc::ENOENT)),
        |r| fs::rename(r.join("no_such"), r.join("whatever")),
    );
    p.expect(
        "RENAME_NOREPLACE onto an existing name",
        Err(Errno(libc::EEXIST)),
        |r| {
            sys::renameat2(
                &r.join("hello.txt"),
                &r.join("exec.sh"),
                libc::RENAME_NOREPLACE,
            )
        },
    );
    p.expect("RENAME_NOREPLACE onto a free name", Ok(()), |r| {
        sys::renameat2(
            &r.join("empty"),
            &r.join("empty_renamed"),
            libc::RENAME_NOREPLACE,
        )
    });
    p.expect(
        "RENAME_EXCHANGE of a lower file and a lower directory",
        Ok(()),
        |r| {
            sys::renameat2(
                &r.join("exchange_a.txt"),
                &r.join("exchange_dir"),
                libc::RENAME_EXCHANGE,
            )
        },
    );
    p.expect(
        "exchanged",
        Ok(("exchange a\n".into(), vec!["inside.txt".into()])),
        |r| {
            Ok::<(String, Vec<String>), io::Error>((
                read(&r.join("exchange_dir"))?,
                names(&r.join("exchange_a.txt"))?,
            ))
        },
    );

    phase("1.3", "unlink of open files", t0);
    p.expect(
        "unlink an open lower file: still readable, fstat works",
        Ok(("still here\n".into(), 11, 0o640, false)),
        |r| {
            let path = r.join("open_unlink.txt");
            let mut f = File::open(&path)?;
            fs::remove_file(&path)?;
            let mut s = String::new();
            f.read_to_string(&mut s)?;
            let m = f.metadata()?;
            // nlink of an unlinked lower file is not compared: overlayfs
            // reports the lower file's (1), a real unlink gives 0.
            Ok::<_, io::Error>((s, m.size(), m.mode() & 0o7777, path.exists()))
        },
    );
    p.expect(
        "unlink an open upper file: write, read, truncate, fstat through the fd",
        Ok(("abcdef".into(), 6, 3, 0o600)),
        |r| {
            let path = r.join("tmp_open.txt");
            let mut f = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            f.write_all(b"abc")?;
            fs::remove_file(&path)?;
            f.write_all(b"def")?;
            f.seek(SeekFrom::Start(0))?;
            let mut s = String::new();
            f.read_to_string(&mut s)?;
            let size = f.metadata()?.size();
            f.set_len(3)?;
            let m = f.metadata()?;
            Ok::<_, io::Error>((s, size, m.size(), m.mode() & 0o7777))
        },
    );
    p.expect(
        "a writer copies up a lower file another process is reading",
        Ok(("old content\n".into(), "NEW\n".into())),
        |r| {
            let path = r.join("readopen.txt");
            let (tx, rx) = std::sync::mpsc::channel();
            let reader_path = path.clone();
            let reader = std::thread::spawn(move || {
                let mut s = String::new();
                let r = File::open(&reader_path).and_then(|mut f| {
                    f.read_to_string(&mut s)?;
                    tx.send(s).unwrap();
                    std::thread::sleep(std::time::Duration::from_millis(300));
                    Ok(())
                });
                r.unwrap();
            });
            let before = rx.recv().unwrap();
            OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&path)?
                .write_all(b"NEW\n")?;
            reader.join().unwrap();
            Ok::<_, io::Error>((before, read(&path)?))
        },
    );
    // Deliberate difference: a descriptor of a lower file keeps reading the
    // lower content through FUSE passthrough, and the kernel allows one
    // backing file per inode at a time. So while that descriptor stays
    // open, opening the copied-up file fails with ETXTBSY on Eltonfs (after
    // waiting a moment for the reader to close, as in the case above);
    // overlayfs switches the old descriptor over to the upper file.
    let writer_while_reading = |r: &Path| -> io::Result<(R<()>, String)> {
        let path = r.join("readopen2.txt");
        let reader = File::open(&path)?;
        let first = OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .and_then(|mut w| w.write_all(b"NEW\n"))
            .map_err(errno);
        drop(reader);
        OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)?
            .write_all(b"NEW\n")?;
        Ok((first, read(&path)?))
    };
    assert_eq!(
        writer_while_reading(&p.kernel).unwrap(),
        (Ok(()), "NEW\n".into())
    );
    assert_eq!(
        writer_while_reading(&p.elton).unwrap(),
        (Err(Errno(libc::ETXTBSY)), "NEW\n".into())
    );

    p.expect(
        "a lower file deleted and made again while open: the descriptor keeps the old file",
        Ok(("lower one\n".into(), "new one\n".into())),
        |r| {
            let path = r.join("recreated.txt");
            let mut old = File::open(&path)?;
            fs::remove_file(&path)?;
            write(&path, "new one\n")?;
            let mut s = String::new();
            old.read_to_string(&mut s)?;
            Ok::<_, io::Error>((s, read(&path)?))
        },
    );
    p.expect(
        "rename a file open for writing, keep writing through the descriptor",
        Ok("appended\nmore\nafter rename\n".into()),
        |r| {
            let mut f = OpenOptions::new().append(true).open(r.join("moving.txt"))?;
            f.write_all(b"more\n")?;
            fs::rename(r.join("moving.txt"), r.join("a/moved.txt"))?;
            f.write_all(b"after rename\n")?;
            drop(f);
            read(&r.join("a/moved.txt"))
        },
    );

    phase("1.4", "hard links", t0);
    p.expect(
        "link a lower file, write through one name, read through the other",
        Ok(("link me\nmore\n".into(), 2, 2, true)),
        |r| {
            fs::hard_link(r.join("hl_src.txt"), r.join("hl_dst.txt"))?;
            OpenOptions::new()
                .append(true)
                .open(r.join("hl_dst.txt"))?
                .write_all(b"more\n")?;
            let s = read(&r.join("hl_src.txt"))?;
            let (a, b) = (
                fs::metadata(r.join("hl_src.txt"))?,
                fs::metadata(r.join("hl_dst.txt"))?,
            );
            Ok::<_, io::Error>((s, a.nlink(), b.nlink(), a.ino() == b.ino()))
        },
    );
    p.expect(
        "link into another directory, then unlink the first name",
        Ok(("link me too\n".into(), 1, 0o600)),
        |r| {
            fs::hard_link(r.join("hl2_src.txt"), r.join("a/b/hl2_dst.txt"))?;
            fs::hard_link(r.join("a/b/hl2_dst.txt"), r.join("hl2_third.txt"))?;
            fs::remove_file(r.join("hl2_src.txt"))?;
            fs::remove_file(r.join("hl2_third.txt"))?;
            let m = fs::metadata(r.join("a/b/hl2_dst.txt"))?;
            Ok::<_, io::Error>((
                read(&r.join("a/b/hl2_dst.txt"))?,
                m.nlink(),
                m.mode() & 0o7777,
            ))
        },
    );
    p.expect(
        "rename one hard link over another: nothing happens",
        Ok((true, true, 2)),
        |r| {
            fs::rename(r.join("hl_src.txt"), r.join("hl_dst.txt"))?;
            Ok::<_, io::Error>((
                r.join("hl_src.txt").exists(),
                r.join("hl_dst.txt").exists(),
                fs::metadata(r.join("hl_dst.txt"))?.nlink(),
            ))
        },
    );
    p.expect("link an upper file", Ok((2, true)), |r| {
        write(&r.join("up_a"), "upper\n")?;
        fs::hard_link(r.join("up_a"), r.join("up_b"))?;
        let (a, b) = (fs::metadata(r.join("up_a"))?, fs::metadata(r.join("up_b"))?);
        Ok::<_, io::Error>((b.nlink(), a.ino() == b.ino()))
    });
    p.expect("link a directory", Err(Errno(libc::EPERM)), |r| {
        fs::hard_link(r.join("xdir"), r.join("xdir_link"))
    });
    p.expect(
        "link onto an existing name",
        Err(Errno(libc::EEXIST)),
        |r| fs::hard_link(r.join("hello.txt"), r.join("exec.sh")),
    );

    phase("1.5", "sparse files", t0);
    p.expect(
        "write at 10 MiB: size, zeros before, holes",
        Ok((10 * MIB as u64 + 1, true, 10 * MIB as i64, 0, true)),
        |r| {
            let path = r.join("sparse.bin");
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)?;
            f.write_all_at(b"X", 10 * MIB as u64)?;
            let mut buf = vec![1u8; 10 * MIB];
            f.read_exact_at(&mut buf, 0)?;
            let zeros = buf.iter().all(|b| *b == 0);
            let data = sys::lseek(&f, 0, libc::SEEK_DATA)?;
            let hole = sys::lseek(&f, 0, libc::SEEK_HOLE)?;
            let m = fs::metadata(&path)?;
            Ok::<_, io::Error>((m.size(), zeros, data, hole, m.blocks() * 512 < MIB as u64))
        },
    );
    p.expect("SEEK_DATA past the end", Err(Errno(libc::ENXIO)), |r| {
        let f = File::open(r.join("sparse.bin"))?;
        sys::lseek(&f, 11 * MIB as i64, libc::SEEK_DATA)
    });

    phase("1.6", "truncate up and down of lower files", t0);
    p.expect("truncate(2) a lower file down", Ok((1000, true)), |r| {
        let path = r.join("big/big_lower.bin");
        sys::truncate(&path, 1000)?;
        let data = fs::read(&path)?;
        Ok::<_, io::Error>((data.len(), data == pseudo_random(MIB, 7)[..1000]))
    });
    p.expect(
        "ftruncate(2) a lower file down, then up",
        Ok((200_000, true, true)),
        |r| {
            let path = r.join("big/trunc_fd.bin");
            let f = OpenOptions::new().write(true).open(&path)?;
            f.set_len(100_000)?;
            f.set_len(200_000)?;
            drop(f);
            let data = fs::read(&path)?;
            Ok::<_, io::Error>((
                data.len(),
                data[..100_000] == pseudo_random(300_000, 8)[..100_000],
                data[100_000..].iter().all(|b| *b == 0),
            ))
        },
    );
    p.expect(
        "truncate(2) a lower file up: the rest is a hole",
        Ok((3 * MIB as u64, 4096)),
        |r| {
            let path = r.join("grow.txt");
            sys::truncate(&path, 3 * MIB as u64)?;
            let f = File::open(&path)?;
            Ok::<_, io::Error>((f.metadata()?.size(), sys::lseek(&f, 0, libc::SEEK_HOLE)?))
        },
    );

    p.expect(
        "O_TRUNC of a lower file keeps its mode and owner",
        Ok(("new\n".into(), 0o750, NOBODY, USERS_GID)),
        |r| {
            let path = r.join("trunc_me.sh");
            OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&path)?
                .write_all(b"new\n")?;
            let m = fs::metadata(&path)?;
            Ok::<_, io::Error>((read(&path)?, m.mode() & 0o7777, m.uid(), m.gid()))
        },
    );

    phase("1.7", "O_APPEND", t0);
    p.expect(
        "appends through two descriptors and pwrite on an O_APPEND descriptor",
        Ok("line0\nline1\nline2\nline3\npwrite\n".into()),
        |r| {
            let path = r.join("append.log");
            let mut a = OpenOptions::new().append(true).open(&path)?;
            let mut b = OpenOptions::new().append(true).open(&path)?;
            a.write_all(b"line1\n")?;
            b.write_all(b"line2\n")?;
            a.write_all(b"line3\n")?;
            // Linux: pwrite on an O_APPEND descriptor appends.
            b.write_all_at(b"pwrite\n", 0)?;
            read(&path)
        },
    );
    p.expect(
        "O_APPEND|O_CREAT of a new file",
        Ok("one\ntwo\n".into()),
        |r| {
            let path = r.join("new_append.log");
            for line in ["one\n", "two\n"] {
                OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(&path)?
                    .write_all(line.as_bytes())?;
            }
            read(&path)
        },
    );

    phase("1.8", "mkdir over a deleted lower directory; rmdir", t0);
    p.expect(
        "rmdir a non-empty directory",
        Err(Errno(libc::ENOTEMPTY)),
        |r| fs::remove_dir(r.join("nonempty")),
    );
    p.expect("rmdir a file", Err(Errno(libc::ENOTDIR)), |r| {
        fs::remove_dir(r.join("hello.txt"))
    });
    p.expect("unlink a directory", Err(Errno(libc::EISDIR)), |r| {
        fs::remove_file(r.join("xdir"))
    });
    p.expect("mkdir an existing name", Err(Errno(libc::EEXIST)), |r| {
        fs::create_dir(r.join("xdir"))
    });
    p.expect(
        "delete a lower directory tree and make it again: opaque",
        Ok(vec![]),
        |r| {
            fs::remove_dir_all(r.join("doomed"))?;
            fs::create_dir(r.join("doomed"))?;
            names(&r.join("doomed"))
        },
    );
    p.expect(
        "its old content does not come back",
        Ok(vec!["new.txt".to_string()]),
        |r| {
            write(&r.join("doomed/new.txt"), "new\n")?;
            names(&r.join("doomed"))
        },
    );
    p.expect("old paths stay gone", Err(Errno(libc::ENOENT)), |r| {
        read(&r.join("doomed/inner/f.txt"))
    });
    p.expect(
        "rmdir a lower directory emptied by unlinks",
        Ok(false),
        |r| {
            fs::remove_file(r.join("nonempty/keep.txt"))?;
            fs::remove_dir(r.join("nonempty"))?;
            Ok::<_, io::Error>(r.join("nonempty").exists())
        },
    );

    phase("1.9", "attributes, special files, setgid directories", t0);
    p.expect("chmod a lower file", Ok(0o600), |r| {
        fs::set_permissions(r.join("chmod_me.txt"), fs::Permissions::from_mode(0o600))?;
        Ok::<_, io::Error>(fs::metadata(r.join("chmod_me.txt"))?.mode() & 0o7777)
    });
    p.expect(
        "chmod a deep lower file: its directories keep their times",
        Ok(true),
        |r| {
            fs::set_permissions(
                r.join("deep1/deep2/deep3/f.txt"),
                fs::Permissions::from_mode(0o640),
            )?;
            let mut old = true;
            for d in ["deep1", "deep1/deep2", "deep1/deep2/deep3"] {
                old &= fs::metadata(r.join(d))?.mtime() == OLD_MTIME;
            }
            Ok::<_, io::Error>(old)
        },
    );
    p.expect("chown a lower file", Ok((NOBODY, USERS_GID)), |r| {
        std::os::unix::fs::chown(r.join("chown_me.txt"), Some(NOBODY), Some(USERS_GID))?;
        let m = fs::metadata(r.join("chown_me.txt"))?;
        Ok::<_, io::Error>((m.uid(), m.gid()))
    });
    p.expect("set the mtime of a lower file", Ok(1_234_567_890), |r| {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_234_567_890);
        File::options()
            .write(true)
            .open(r.join("timed.txt"))?
            .set_modified(t)?;
        Ok::<_, io::Error>(fs::metadata(r.join("timed.txt"))?.mtime())
    });
    p.expect(
        "lchown and lutimes of a lower symlink",
        Ok((NOBODY, 1_111_111_111, PathBuf::from("a/b"))),
        |r| {
            std::os::unix::fs::lchown(r.join("dirlink"), Some(NOBODY), None)?;
            sys::lutimes(&r.join("dirlink"), 1_111_111_111)?;
            let m = fs::symlink_metadata(r.join("dirlink"))?;
            Ok::<_, io::Error>((m.uid(), m.mtime(), fs::read_link(r.join("dirlink"))?))
        },
    );
    p.expect(
        "create with setuid and odd modes",
        Ok((0o4755, 0o700)),
        |r| {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o4755)
                .open(r.join("new_suid"))?;
            fs::DirBuilder::new()
                .mode(0o700)
                .create(r.join("new_700"))?;
            Ok::<_, io::Error>((
                fs::metadata(r.join("new_suid"))?.mode() & 0o7777,
                fs::metadata(r.join("new_700"))?.mode() & 0o7777,
            ))
        },
    );
    p.expect(
        "create in a setgid directory: the group and the bit are inherited",
        Ok((USERS_GID, USERS_GID, 0o2755)),
        |r| {
            write(&r.join("setgid/file"), "f\n")?;
            fs::create_dir(r.join("setgid/sub"))?;
            let (f, d) = (
                fs::metadata(r.join("setgid/file"))?,
                fs::metadata(r.join("setgid/sub"))?,
            );
            Ok::<_, io::Error>((f.gid(), d.gid(), d.mode() & 0o7777))
        },
    );
    p.expect(
        "a new symlink and a fifo",
        Ok((PathBuf::from("../nowhere"), true)),
        |r| {
            std::os::unix::fs::symlink("../nowhere", r.join("a/newlink"))?;
            sys::mkfifo(&r.join("fifo"), 0o640)?;
            Ok::<_, io::Error>((
                fs::read_link(r.join("a/newlink"))?,
                fs::symlink_metadata(r.join("fifo"))?.file_type().is_fifo(),
            ))
        },
    );

    phase("1.10", "xattrs on a lower and an upper file", t0);
    write(&p.kernel.join("xattr_upper.txt"), "x\n").unwrap();
    write(&p.elton.join("xattr_upper.txt"), "x\n").unwrap();
    for f in ["xattr_lower.txt", "xattr_upper.txt", "a/b"] {
        let at = |r: &Path| r.join(f);
        p.expect(
            &format!("{f}: get a missing xattr"),
            Err(Errno(libc::ENODATA)),
            |r| sys::getxattr(&at(r), "user.a"),
        );
        p.expect(&format!("{f}: set two"), Ok(()), |r| {
            sys::setxattr(&at(r), "user.a", b"1", 0)?;
            sys::setxattr(&at(r), "user.b", b"two", 0)
        });
        p.expect(&format!("{f}: get"), Ok(b"two".to_vec()), |r| {
            sys::getxattr(&at(r), "user.b")
        });
        p.expect(
            &format!("{f}: list"),
            Ok(vec!["user.a".to_string(), "user.b".to_string()]),
            |r| {
                sys::listxattr(&at(r))
                    .map(|v| v.into_iter().filter(|n| n.starts_with("user.")).collect())
            },
        );
        p.expect(
            &format!("{f}: XATTR_CREATE on an existing one"),
            Err(Errno(libc::EEXIST)),
            |r| sys::setxattr(&at(r), "user.b", b"x", libc::XATTR_CREATE),
        );
        p.expect(
            &format!("{f}: XATTR_REPLACE on a missing one"),
            Err(Errno(libc::ENODATA)),
            |r| sys::setxattr(&at(r), "user.c", b"x", libc::XATTR_REPLACE),
        );
        p.expect(&format!("{f}: remove"), Ok(()), |r| {
            sys::removexattr(&at(r), "user.a")
        });
        p.expect(&format!("{f}: removed"), Err(Errno(libc::ENODATA)), |r| {
            sys::getxattr(&at(r), "user.a")
        });
        p.expect(
            &format!("{f}: remove a missing one"),
            Err(Errno(libc::ENODATA)),
            |r| sys::removexattr(&at(r), "user.zzz"),
        );
    }
    p.expect("user xattrs on a symlink", Err(Errno(libc::EPERM)), |r| {
        sys::setxattr(&r.join("dangling"), "user.a", b"1", 0)
    });

    phase("1.11", "permissions of uid 65534", t0);
    let denied = |(ok, _, err): (bool, String, String)| !ok && err.contains("Permission denied");
    assert_eq!(
        p.as_nobody(r#"cat "$1/hello.txt""#),
        (true, "hello\n".into(), String::new())
    );
    assert!(denied(p.as_nobody(r#"echo x >> "$1/hello.txt""#)));
    assert!(denied(p.as_nobody(r#"echo x > "$1/rootdir/new""#)));
    assert!(denied(p.as_nobody(r#"cat "$1/secret""#)));
    assert!(denied(p.as_nobody(r#"ls "$1/privdir""#)));
    assert!(denied(p.as_nobody(r#"mkdir "$1/rootdir/sub""#)));
    assert!(!p.as_nobody(r#"rm -f "$1/hello.txt""#).0);
    assert!(
        !p.as_nobody(r#"mv "$1/rootdir/existing.txt" "$1/rootdir/moved""#)
            .0
    );
    assert!(!p.as_nobody(r#"chmod 777 "$1/hello.txt""#).0);
    assert!(!p.as_nobody(r#"touch "$1/hello.txt""#).0);
    assert!(
        !p.as_nobody(r#"rm -f "$1/sticky/rootfile""#).0,
        "sticky directory"
    );
    p.as_nobody(r#"test -r "$1/hello.txt" && echo r; test -w "$1/hello.txt" || echo not-w; test -x "$1/exec.sh" && echo x"#);
    assert_eq!(
        p.as_nobody(r#"echo more >> "$1/nobody_file" && cat "$1/nobody_file""#),
        (true, "nobody's\nmore\n".into(), String::new())
    );
    assert!(p.as_nobody(r#"mkdir "$1/nobody_dir/sub" && echo y > "$1/nobody_dir/sub/f" && mv "$1/nobody_dir/x" "$1/nobody_dir/x2""#).0);
    assert!(p.as_nobody(r#"echo mine > "$1/sticky/mine" && rm "$1/sticky/mine" && echo again > "$1/sticky/kept""#).0);
    p.expect(
        "owner of files created by uid 65534",
        Ok((NOBODY, NOBODY, NOBODY)),
        |r| {
            let f = fs::metadata(r.join("nobody_dir/sub/f"))?;
            let d = fs::metadata(r.join("nobody_dir/sub"))?;
            Ok::<_, io::Error>((f.uid(), f.gid(), d.uid()))
        },
    );

    phase("1.12", "a directory of 10,000 files", t0);
    p.expect("create, readdir, stat all", Ok((10_000, 10_000 * 6)), |r| {
        let d = r.join("many");
        fs::create_dir(&d)?;
        for i in 0..10_000 {
            write(&d.join(format!("f{i:05}")), &format!("{i:05}\n"))?;
        }
        let listed = names(&d)?;
        let mut total = 0;
        for n in &listed {
            total += fs::metadata(d.join(n))?.size();
        }
        Ok::<_, io::Error>((listed.len(), total))
    });
    p.expect("delete half of them", Ok(5_000), |r| {
        let d = r.join("many");
        for i in (0..10_000).step_by(2) {
            fs::remove_file(d.join(format!("f{i:05}")))?;
        }
        Ok::<_, io::Error>(names(&d)?.len())
    });

    phase("1.13", "a 1 GiB file", t0);
    let block = pseudo_random(8 * MIB, 1 << 30);
    let block_n = |i: u64| {
        let mut b = block.clone();
        b[..8].copy_from_slice(&i.to_le_bytes());
        b
    };
    p.expect("write 1 GiB in 8 MiB blocks, read it back", Ok(true), |r| {
        let path = r.join("big/one_gib.bin");
        let mut f = File::create(&path)?;
        for i in 0..128u64 {
            f.write_all(&block_n(i))?;
        }
        f.sync_all()?;
        drop(f);
        let mut f = File::open(&path)?;
        let mut buf = vec![0u8; 8 * MIB];
        let mut same = f.metadata()?.size() == 1 << 30;
        for i in 0..128u64 {
            f.read_exact(&mut buf)?;
            same &= buf == block_n(i);
        }
        Ok::<_, io::Error>(same)
    });
    drop(block);

    phase("1.14", "the resulting trees", t0);
    let k = snapshot(&p.kernel);
    let e = snapshot(&p.elton);
    assert_same_nodes(
        "Eltonfs (left) vs kernel overlayfs (right) after all operations",
        &only_old_mtimes(&e.nodes),
        &only_old_mtimes(&k.nodes),
    );
    assert_eq!(
        e.links, k.links,
        "hard links: Eltonfs (left) vs kernel (right)"
    );
    assert!(
        !e.links.is_empty(),
        "the hard links made above are visible as such"
    );
    // POSIX: readdir's d_ino is the file serial number, and d_type the
    // type lstat reports. Required of Eltonfs; the kernel's are printed.
    eprintln!(
        "kernel overlayfs: d_ino != st_ino for {:?}; d_type != lstat type for {:?}",
        k.d_ino_mismatch, k.d_type_mismatch
    );
    assert!(
        e.d_type_mismatch.is_empty(),
        "readdir d_type vs lstat: {:?}",
        e.d_type_mismatch
    );
    assert!(
        e.d_ino_mismatch.is_empty(),
        "readdir d_ino vs st_ino: {:?}",
        e.d_ino_mismatch
    );
    let mut inos = BTreeMap::new();
    for (rel, ino) in e
        .nodes
        .keys()
        .map(|r| (r, fs::symlink_metadata(p.elton.join(r)).unwrap().ino()))
    {
        inos.entry(ino).or_insert_with(Vec::new).push(rel.clone());
    }
    let shared: Vec<_> = inos.values().filter(|v| v.len() > 1).collect();
    assert_eq!(
        shared.len(),
        e.links.len(),
        "st_ino is unique but for hard links: {shared:?}"
    );

    phase("1.15", "the upper survives a remount", t0);
    // Unmounted and mounted again on the same state directory: the tree,
    // hard links included, comes back from the upper as it was (readdir
    // now comes before any lookup).
    let state_dir = mount.state.clone();
    drop(mount);
    let mount = Mount::new(
        &cluster,
        1,
        "vol@1",
        &elton_mnt,
        &state_dir,
        &["--allow-other"],
    );
    let again = snapshot(&p.elton);
    assert_same_nodes(
        "Eltonfs after a remount (left) vs before (right)",
        &again.nodes,
        &e.nodes,
    );
    assert_eq!(again.links, e.links, "hard links after a remount");
    assert!(
        again.d_ino_mismatch.is_empty(),
        "readdir d_ino vs st_ino after a remount: {:?}",
        again.d_ino_mismatch
    );

    phase("1.16", "commit", t0);
    let out = mount.elton(&["commit", mount.mountpoint.to_str().unwrap(), "-m", "posix"]);
    assert!(
        out.status.success(),
        "commit failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    phase(
        "1.17",
        "committed: the committing mount shows the new version",
        t0,
    );
    let after_commit = snapshot(&p.elton);
    phase("1.18", "a fresh mount of the new version", t0);
    let fresh = Mount::new(
        &cluster,
        1,
        "vol@2",
        &base.path().join("elton2"),
        &base.path().join("elton2-state"),
        &["--allow-other"],
    );
    let v2 = snapshot(&fresh.mountpoint);
    // A version holds files, directories and symlinks with their mode,
    // owner, mtime and user xattrs; not FIFOs, and not hard-link identity
    // (each name becomes its own file, nlink 1).
    let versioned = |nodes: &BTreeMap<String, Node>| -> BTreeMap<String, Node> {
        nodes
            .iter()
            .filter(|(_, n)| matches!(n.kind, "file" | "dir" | "symlink"))
            .map(|(k, n)| {
                let mut n = n.clone();
                n.nlink = n.nlink.map(|_| 1);
                if k.is_empty() {
                    // The root's own attributes are the upper directory's.
                    n.mtime = 0;
                }
                (k.clone(), n)
            })
            .collect()
    };
    assert_same_nodes(
        "fresh mount of the committed version (left) vs kernel overlayfs (right)",
        &only_old_mtimes(&versioned(&v2.nodes)),
        &only_old_mtimes(&versioned(&k.nodes)),
    );
    assert_same_nodes(
        "fresh mount of the committed version (left) vs the mount before commit (right), mtimes included",
        &versioned(&v2.nodes),
        &versioned(&e.nodes),
    );
    assert_same_nodes(
        "the committing mount after commit (left) vs a fresh mount (right)",
        &versioned(&after_commit.nodes),
        &versioned(&v2.nodes),
    );
    assert!(
        v2.links.is_empty(),
        "a version has no hard links: {:?}",
        v2.links
    );
    drop(fresh);
    drop(kernel);
    drop(mount);
    phase("1.19", "done", t0);
}

// ---------------------------------------------------------------------------

fn fsx_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("FSX_BIN") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "FSX_BIN={} does not exist", p.display());
        return p;
    }
    let fallback = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tools/bin/fsx");
    assert!(
        fallback.is_file(),
        "fsx not found: run ./test.sh (which installs it), or \
         `cargo install fsx --version 0.3.2 --locked --root target/tools`, \
         or set FSX_BIN to an fsx binary"
    );
    fallback
}

/// fsx's settings: every operation it has, with two cuts to keep two
/// runs of 100,000 operations near half a minute:
/// - no msync after each mmap write, and few fsyncs: they wait for the disk;
/// - fewer mmap reads: fsx 0.3.2 never unmaps them, and every later
///   truncate walks all the mappings left behind (quadratic time).
const FSX_CONFIG: &str = "\
nomsyncafterwrite = true
[weights]
mapread = 2
close_open = 1
invalidate = 1
fsync = 0.02
fdatasync = 0.02
posix_fallocate = 1
punch_hole = 1
sendfile = 1
posix_fadvise = 1
copy_file_range = 1
";
const FSX_OPS: &str = "100000";

#[test]
fn phase2_fsx_on_a_lower_and_an_upper_file() {
    let fsx = fsx_bin();
    let t0 = Instant::now();
    let cluster = Cluster::new(1);
    let base = open_tempdir();
    let src = base.path().join("src");
    dir(&src, "", 0o755);
    dir(&src, "d", 0o755);
    let lower_content = pseudo_random(200_000, 3);
    put(&src, "d/lower.bin", &lower_content, 0o644);
    import(&cluster, &src, "fsxvol");
    let mount = Mount::new(
        &cluster,
        1,
        "fsxvol@1",
        &base.path().join("mnt"),
        &base.path().join("state"),
        &[],
    );
    let lower = mount.path("d/lower.bin");
    assert_eq!(
        fs::read(&lower).unwrap(),
        lower_content,
        "the lower file before fsx"
    );
    let config = base.path().join("fsx.toml");
    fs::write(&config, FSX_CONFIG).unwrap();

    phase(
        "2.1",
        "fsx on a lower file and on an upper file, in parallel",
        t0,
    );
    let runs: Vec<_> = [(lower.clone(), "1"), (mount.path("upper.bin"), "2")]
        .into_iter()
        .map(|(file, seed)| {
            let artifacts = base.path().join(format!("fsx-artifacts-{seed}"));
            fs::create_dir_all(&artifacts).unwrap();
            let child = Command::new(&fsx)
                .arg("-f")
                .arg(&config)
                .args(["-N", FSX_OPS, "-S", seed])
                .arg("-P")
                .arg(&artifacts)
                .arg(&file)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawning fsx");
            (file, child)
        })
        .collect();
    for (file, child) in runs {
        let out = child.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let tail: Vec<&str> = text.lines().rev().take(60).collect();
        assert!(
            out.status.success() && text.contains("All operations completed A-OK"),
            "fsx on {} failed ({}):\n{}",
            file.display(),
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    phase("2.2", "both runs completed A-OK", t0);
    let out = mount.elton(&["status", mount.mountpoint.to_str().unwrap(), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let changes: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        changes["modified"],
        serde_json::json!(["d/lower.bin"]),
        "the lower file was copied up: {changes}"
    );
    assert_eq!(
        changes["added"],
        serde_json::json!(["upper.bin"]),
        "{changes}"
    );
    drop(mount);
}
