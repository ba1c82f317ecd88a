#![allow(clippy::unwrap_used)]
//! The CLI around mounts, as a newcomer meets it (issue 15): no stacked or
//! shared mounts (item 1), `status`/`commit` from anywhere in a mount and
//! commit messages (items 7, 13), clear mount/umount errors that leave
//! nothing behind (item 10), quiet broken pipes (item 4), plain logs and a
//! clean stop without warnings (item 11).

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Cluster, Mount, MountGuard, TOKEN, is_elton_mount, text, wait_until};

/// Runs the CLI and asserts it fails; returns stderr.
fn fails(c: &Cluster, args: &[&str]) -> String {
    let o = c.cli(1, args);
    assert!(
        !o.status.success(),
        "elton {args:?} succeeded: {}",
        text(&o)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The CLI run from `dir` (its working directory), as a user inside a mount.
fn cli_in(c: &Cluster, dir: &Path, args: &[&str]) -> Output {
    Command::new(common::bin())
        .args(args)
        .current_dir(dir)
        .env("ELTON_SLAVE", c.slave_url(1))
        .env("ELTON_TOKEN", TOKEN)
        .output()
        .unwrap()
}

/// How many mounts the kernel has at `p` (stacked mounts count each).
fn mounts_at(p: &Path) -> usize {
    let target = p.display().to_string();
    fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some(target.as_str()))
        .count()
}

/// A cluster with volume `web` at version 1 (`a.txt`).
fn cluster_with_web() -> Cluster {
    let c = Cluster::new(1);
    let src = c.dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a.txt"), b"a\n").unwrap();
    c.ok(
        1,
        &[
            "import",
            "--create",
            src.to_str().unwrap(),
            "web",
            "-m",
            "one",
        ],
    );
    c
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn phase1_a_mount_is_never_stacked_on_a_mount_nor_shares_an_upper() {
    let c = cluster_with_web();
    let sd = c.slave_dir(1);
    let mnt = c.dir.path().join("mnt");
    let state = c.dir.path().join("state");
    let m = Mount::new(&c, 1, "web", &mnt, &state, &[]);

    let e = fails(&c, &["mount", "web", s(&mnt), "--slave-data", s(&sd)]);
    assert!(
        e.contains("is already an Elton mount (volume web)") && e.contains("elton umount"),
        "{e}"
    );
    assert_eq!(mounts_at(&mnt), 1, "a second mount was stacked");

    let other = c.dir.path().join("other");
    fs::create_dir_all(&other).unwrap();
    let e = fails(
        &c,
        &[
            "mount",
            "web",
            s(&other),
            "--upper",
            s(&state),
            "--slave-data",
            s(&sd),
        ],
    );
    assert!(e.contains("in use by another running mount"), "{e}");
    assert!(!is_elton_mount(&other));

    // The first mount is untouched and still serves.
    assert_eq!(fs::read(m.path("a.txt")).unwrap(), b"a\n");
    let st = c.ok(1, &["status", s(&mnt)]);
    assert!(st.starts_with("web@1"), "{st}");
}

#[test]
fn phase2_mount_and_umount_errors_are_clear_and_leave_nothing_behind() {
    let c = cluster_with_web();
    let sd = c.slave_dir(1);

    // A non-empty directory: refused, unless --nonempty.
    let full = c.dir.path().join("full");
    fs::create_dir_all(&full).unwrap();
    fs::write(full.join("mine.txt"), b"mine\n").unwrap();
    let e = fails(&c, &["mount", "web", s(&full), "--slave-data", s(&sd)]);
    assert!(
        e.contains("is not empty") && e.contains("--nonempty"),
        "{e}"
    );
    assert!(!is_elton_mount(&full));

    // A mount that fails: one error prefix, no state directory left.
    let empty = c.dir.path().join("empty");
    fs::create_dir_all(&empty).unwrap();
    let e = fails(&c, &["mount", "nope", s(&empty), "--slave-data", s(&sd)]);
    assert_eq!(e.matches("elton: error:").count(), 1, "{e}");
    assert!(e.contains("unknown volume"), "{e}");
    let left: Vec<String> = fs::read_dir(sd.join("mounts"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        !left.iter().any(|n| n.starts_with("nope-")),
        "state directory left behind: {left:?}"
    );

    // umount of a directory that is not mounted: our message, nothing else.
    let e = fails(&c, &["umount", s(&empty)]);
    assert!(
        e.contains("is not an Elton mount; nothing was unmounted"),
        "{e}"
    );
    assert!(!e.contains("fusermount"), "{e}");

    // --nonempty hides the files until the unmount.
    let _guard = MountGuard(full.clone());
    c.ok(
        1,
        &[
            "mount",
            "web",
            s(&full),
            "--nonempty",
            "--slave-data",
            s(&sd),
        ],
    );
    assert!(full.join("a.txt").exists() && !full.join("mine.txt").exists());
    c.ok(1, &["umount", s(&full)]);
    wait_until("unmounted", Duration::from_secs(10), || {
        !is_elton_mount(&full)
    });
    assert_eq!(fs::read(full.join("mine.txt")).unwrap(), b"mine\n");
}

#[test]
fn phase3_status_and_commit_work_from_anywhere_in_the_mount() {
    let c = cluster_with_web();
    let mnt = c.dir.path().join("mnt");
    let mut m = Mount::new(&c, 1, "web", &mnt, &c.dir.path().join("state"), &[]);
    let deep = m.path("sub/deeper");
    fs::create_dir_all(&deep).unwrap();
    fs::write(m.path("sub/new.txt"), b"new\n").unwrap();

    let o = cli_in(&c, &deep, &["status"]);
    assert!(o.status.success(), "{}", text(&o));
    let st = String::from_utf8_lossy(&o.stdout);
    assert!(st.starts_with("web@1") && st.contains("new.txt"), "{st}");
    let st = c.ok(1, &["status", s(&m.path("sub"))]);
    assert!(st.contains("new.txt"), "{st}");

    // No message: refused, as git refuses an empty one; nothing committed.
    let o = cli_in(&c, &m.path("sub"), &["commit"]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("needs a message"), "{}", text(&o));
    assert!(!c.ok(1, &["log", "web"]).contains("version 2"));

    let o = cli_in(&c, &m.path("sub"), &["commit", "-m", "from sub"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("web@2"), "{}", text(&o));
    let log = c.ok(1, &["log", "web"]);
    assert!(
        log.contains("version 2") && log.contains("from sub"),
        "{log}"
    );

    let e = fails(&c, &["status", s(c.dir.path())]);
    assert!(e.contains("is not in an Elton mount"), "{e}");

    // A reader that goes away: the status ends quietly (item 4).
    fs::write(m.path("b.txt"), b"b\n").unwrap();
    let mut child = Command::new(common::bin())
        .args(["status", s(&mnt)])
        .env("ELTON_TOKEN", TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(141), "{}", text(&o));
    assert!(o.stderr.is_empty(), "{}", text(&o));

    // Uncommitted changes: checkout refuses and names the way out (item 5).
    let e = fails(&c, &["checkout", s(&mnt), "1"]);
    assert!(
        e.contains("uncommitted changes") && e.contains("elton update"),
        "{e}"
    );
    assert_eq!(fs::read(m.path("b.txt")).unwrap(), b"b\n");

    // A clean stop: the mount process exits 0; its log (a file) has no
    // colour codes and no warnings (item 11).
    c.ok(1, &["umount", s(&mnt)]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = m.child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "mount process still running");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    let log = fs::read_to_string(c.dir.path().join("mounts.log")).unwrap();
    assert!(log.contains("unmounted"), "{log}");
    assert!(!log.contains('\u{1b}'), "colour codes in a log file: {log}");
    assert!(!log.contains("WARN"), "warning on a clean stop: {log}");
    let master_log = fs::read_to_string(c.dir.path().join("master.log")).unwrap();
    assert!(
        !master_log.contains('\u{1b}'),
        "colour codes in the master log"
    );
}
