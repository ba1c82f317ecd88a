#![allow(clippy::unwrap_used)]
//! The mount's metadata shortcuts stay exact. The kernel keeps the
//! listings of directories only the lower has (`FOPEN_CACHE_DIR`): every
//! change through the mount, a commit, `elton update` and `elton checkout`
//! must show in the next listing, with the inode numbers `stat` gives. The
//! round trips cut from `close` (FLUSH) and `isatty` (IOCTL) and the
//! upper-first `getxattr` keep their answers.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::path::Path;

use common::{Cluster, Mount, text};

/// Names and inode numbers of a listing, checked against `lstat` of each
/// name: a cached listing must never name an inode the path no longer has.
fn listing(dir: &Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for e in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        let ino = fs::symlink_metadata(e.path())
            .unwrap_or_else(|err| panic!("{name} listed but {err}"))
            .ino();
        assert_eq!(e.ino(), ino, "{name}: listed inode vs lstat");
        out.insert(name, ino);
    }
    out
}

/// The names of a listing, read twice (the second from the kernel's cache
/// where it keeps one): both must agree.
fn names(dir: &Path) -> Vec<String> {
    let first = listing(dir);
    assert_eq!(first, listing(dir), "{}: listed twice", dir.display());
    first.into_keys().collect()
}

fn v(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn volume(c: &Cluster) {
    let src = c.dir.path().join("src");
    fs::create_dir_all(src.join("d/e")).unwrap();
    fs::create_dir_all(src.join("other")).unwrap();
    fs::write(src.join("d/a"), "a\n").unwrap();
    fs::write(src.join("d/b"), "b\n").unwrap();
    fs::write(src.join("d/e/c"), "c\n").unwrap();
    fs::write(src.join("other/o"), "o\n").unwrap();
    c.ok(1, &["import", "--create", src.to_str().unwrap(), "vol"]);
}

fn mount(c: &Cluster, name: &str) -> Mount {
    let d = c.dir.path();
    Mount::new(
        c,
        1,
        "vol",
        &d.join(format!("mnt-{name}")),
        &d.join(format!("state-{name}")),
        &[],
    )
}

#[test]
fn phase1_cached_listings_follow_every_change_through_the_mount() {
    let c = Cluster::new(1);
    volume(&c);
    let m = mount(&c, "a");
    let d = m.path("d");
    assert_eq!(names(&d), v(&["a", "b", "e"]));

    fs::write(m.path("d/new"), "n\n").unwrap();
    assert_eq!(names(&d), v(&["a", "b", "e", "new"]));
    fs::remove_file(m.path("d/a")).unwrap();
    assert_eq!(names(&d), v(&["b", "e", "new"]));
    // Out of a cached directory and into another cached one.
    assert_eq!(names(&m.path("other")), v(&["o"]));
    fs::rename(m.path("d/b"), m.path("other/b")).unwrap();
    assert_eq!(names(&d), v(&["e", "new"]));
    assert_eq!(names(&m.path("other")), v(&["b", "o"]));
    fs::rename(m.path("other/o"), m.path("d/o")).unwrap();
    assert_eq!(names(&d), v(&["e", "new", "o"]));
    fs::hard_link(m.path("other/b"), m.path("d/b-link")).unwrap();
    std::os::unix::fs::symlink("o", m.path("d/sym")).unwrap();
    fs::create_dir(m.path("d/sub")).unwrap();
    assert_eq!(names(&d), v(&["b-link", "e", "new", "o", "sub", "sym"]));
    fs::remove_dir(m.path("d/sub")).unwrap();
    let hard = fs::metadata(m.path("d/b-link")).unwrap();
    assert_eq!(hard.ino(), fs::metadata(m.path("other/b")).unwrap().ino());
    assert_eq!(hard.nlink(), 2);

    // A directory below one: a new name deep down copies up its parents,
    // which does not change the listing above.
    assert_eq!(names(&m.path("d/e")), v(&["c"]));
    fs::write(m.path("d/e/deep"), "deep\n").unwrap();
    assert_eq!(names(&m.path("d/e")), v(&["c", "deep"]));
    assert_eq!(names(&d), v(&["b-link", "e", "new", "o", "sym"]));

    // A commit moves the upper into the lower: the same names, and still
    // the inode numbers stat gives.
    let mnt = m.mountpoint.to_str().unwrap().to_string();
    let out = m.elton(&["commit", &mnt, "-m", "changes"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(names(&d), v(&["b-link", "e", "new", "o", "sym"]));
    assert_eq!(names(&m.path("d/e")), v(&["c", "deep"]));
    assert_eq!(fs::read_to_string(m.path("d/e/deep")).unwrap(), "deep\n");
}

#[test]
fn phase2_cached_listings_follow_update_and_checkout() {
    let c = Cluster::new(1);
    volume(&c);
    let a = mount(&c, "a");
    let b = mount(&c, "b");
    let (mnt_a, mnt_b) = (
        a.mountpoint.to_str().unwrap().to_string(),
        b.mountpoint.to_str().unwrap().to_string(),
    );
    // Both listings cached on A before B changes them.
    assert_eq!(names(&a.path("d")), v(&["a", "b", "e"]));
    assert_eq!(names(&a.path("d/e")), v(&["c"]));

    fs::write(b.path("d/e/from-b"), "b\n").unwrap();
    fs::remove_file(b.path("d/a")).unwrap();
    let out = b.elton(&["commit", &mnt_b, "-m", "from b"]);
    assert!(out.status.success(), "{}", text(&out));

    let out = a.elton(&["update", &mnt_a]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(names(&a.path("d")), v(&["b", "e"]));
    assert_eq!(names(&a.path("d/e")), v(&["c", "from-b"]));

    let out = a.elton(&["checkout", &mnt_a, "1"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(names(&a.path("d")), v(&["a", "b", "e"]));
    assert_eq!(names(&a.path("d/e")), v(&["c"]));
}

#[test]
fn phase3_close_isatty_and_xattrs_answer_as_before() {
    let c = Cluster::new(1);
    volume(&c);
    let m = mount(&c, "a");
    // close reports no error (FLUSH is not sent after the first), data is
    // there on the next open, many times over.
    for i in 0..50 {
        let p = m.path(&format!("d/f{i}"));
        fs::write(&p, format!("{i}\n")).unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), format!("{i}\n"));
    }
    // isatty on a file (an IOCTL request): not a terminal, as natively,
    // and the file reads on.
    let f = fs::File::open(m.path("d/f0")).unwrap();
    assert!(!std::io::IsTerminal::is_terminal(&f));
    assert_eq!(std::io::read_to_string(f).unwrap(), "0\n");
    // xattrs: upper file, lower file, missing name, size probe, ERANGE.
    // The length the call returns and the bytes it wrote.
    let x = |p: &Path, name: &str, size: usize| -> Result<(usize, Vec<u8>), i32> {
        if size == 0 {
            return rustix::fs::lgetxattr_query(p, name)
                .map(|n| (n, Vec::new()))
                .map_err(|e| e.raw_os_error());
        }
        let mut buf = vec![0u8; size];
        match rustix::fs::lgetxattr(p, name, &mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                Ok((n, buf))
            }
            Err(e) => Err(e.raw_os_error()),
        }
    };
    let up = m.path("d/f1");
    let set = |p: &Path| {
        rustix::fs::lsetxattr(p, "user.k", b"value", rustix::fs::XattrFlags::empty())
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    };
    set(&up);
    assert_eq!(x(&up, "user.k", 64), Ok((5, b"value".to_vec())));
    assert_eq!(x(&up, "user.k", 0), Ok((5, Vec::new())), "a size probe");
    assert_eq!(x(&up, "user.k", 2), Err(libc::ERANGE));
    assert_eq!(x(&up, "security.capability", 64), Err(libc::ENODATA));
    assert_eq!(x(&m.path("d/a"), "user.k", 64), Err(libc::ENODATA));
    assert_eq!(
        x(&m.path("d/e/c"), "security.capability", 0),
        Err(libc::ENODATA)
    );
    assert_eq!(x(&m.path("d/nothing"), "user.k", 64), Err(libc::ENOENT));
    // A lower file copied up keeps answering from its upper copy.
    set(&m.path("d/b"));
    assert_eq!(x(&m.path("d/b"), "user.k", 64), Ok((5, b"value".to_vec())));
    assert_eq!(fs::read_to_string(m.path("d/b")).unwrap(), "b\n");
}
