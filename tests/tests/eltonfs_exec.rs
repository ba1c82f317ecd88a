#![allow(clippy::unwrap_used)]
//! A running program's file cannot be changed through the mount. The
//! kernel refuses writable opens of it (ETXTBSY) on its own; an
//! `O_RDONLY|O_TRUNC` open reaches the daemon first (the mount truncates
//! at open, FUSE_ATOMIC_O_TRUNC), which must refuse it as well, before it
//! truncates anything: before the fix the program's file came back empty
//! and the program died of SIGBUS about one time in twenty. A program
//! that has exited no longer holds its file.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::{Child, Command};

use common::{Cluster, Mount};

/// Rounds on upper files: the bug showed about once in twenty. Each
/// refusal costs the mount's wait for a just-exited program (250 ms).
const ROUNDS: usize = 24;

fn sleep_binary() -> &'static Path {
    ["/usr/bin/sleep", "/bin/sleep"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .expect("a sleep binary")
}

/// How each way of opening `path` for a change ends, while it runs.
fn refused_while_running(path: &Path) -> [io::Result<File>; 3] {
    [
        OpenOptions::new().write(true).open(path),
        OpenOptions::new().read(true).write(true).open(path),
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_TRUNC)
            .open(path),
    ]
}

fn run(path: &Path) -> Child {
    Command::new(path).arg("30").spawn().unwrap()
}

/// Starts `path`, tries every change, stops it; the file and the program
/// must be untouched.
fn round(path: &Path, original: &[u8], what: &str) {
    let mut child = run(path);
    for (how, r) in ["O_WRONLY", "O_RDWR", "O_RDONLY|O_TRUNC"]
        .iter()
        .zip(refused_while_running(path))
    {
        let err = r
            .err()
            .unwrap_or_else(|| panic!("{what}: {how} opened a running program"));
        assert_eq!(
            err.raw_os_error(),
            Some(libc::ETXTBSY),
            "{what}: {how}: {err}"
        );
    }
    assert_eq!(child.try_wait().unwrap(), None, "{what}: the program died");
    assert!(
        fs::read(path).unwrap() == original,
        "{what}: the file changed"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn phase1_a_running_program_on_the_mount_cannot_be_truncated() {
    let c = Cluster::new(1);
    let original = fs::read(sleep_binary()).unwrap();
    let src = c.dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("lower-sleep"), &original).unwrap();
    fs::set_permissions(src.join("lower-sleep"), fs::Permissions::from_mode(0o755)).unwrap();
    c.ok(1, &["import", "--create", src.to_str().unwrap(), "vol"]);
    let d = c.dir.path();
    let m = Mount::new(&c, 1, "vol", &d.join("mnt"), &d.join("state"), &[]);

    // 1.1: a file the mount wrote (the upper layer), fresh each round as
    // pjdfstest does it.
    for i in 0..ROUNDS {
        let p = m.path(&format!("upper-sleep-{i}"));
        fs::write(&p, &original).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        round(&p, &original, &format!("upper round {i}"));
    }

    // 1.2: a file of the version (the lower layer): a refused O_TRUNC
    // must not copy it up empty either.
    let lower = m.path("lower-sleep");
    for i in 0..ROUNDS / 4 {
        round(&lower, &original, &format!("lower round {i}"));
    }

    // 1.3: once the program has exited, the same open truncates.
    let p = m.path("upper-sleep-0");
    let mut child = run(&p);
    child.kill().unwrap();
    child.wait().unwrap();
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_TRUNC)
        .open(&p)
        .unwrap();
    assert_eq!(fs::metadata(&p).unwrap().len(), 0);
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_TRUNC)
        .open(&lower)
        .unwrap();
    assert_eq!(fs::metadata(&lower).unwrap().len(), 0);
}
