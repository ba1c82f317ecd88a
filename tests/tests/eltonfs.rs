#![allow(clippy::unwrap_used)]
//! Eltonfs end to end: real FUSE mounts over real master and slave
//! processes. "Host A" and "host B" are two slaves with their own data
//! directories, each with its own mount.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, UNIX_EPOCH};

use common::{Cluster, Mount, TOKEN, metric, pseudo_random, wait_until};

fn source_tree(root: &Path) {
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::create_dir_all(root.join("docs/old")).unwrap();
    fs::create_dir_all(root.join("keep")).unwrap();
    fs::write(root.join("a.txt"), b"alpha\n").unwrap();
    fs::write(root.join("bin/run.sh"), b"#!/bin/sh\necho run\n").unwrap();
    fs::set_permissions(root.join("bin/run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(root.join("docs/x.md"), b"x\n").unwrap();
    fs::write(root.join("docs/old/y.md"), b"y\n").unwrap();
    fs::write(root.join("keep/k.txt"), b"k\n").unwrap();
    fs::write(root.join("big.bin"), pseudo_random(5 << 20, 3)).unwrap();
    std::os::unix::fs::symlink("a.txt", root.join("link")).unwrap();
}

/// Everything a version promises about a tree: types, modes, owners,
/// sizes, mtimes, link targets and (when `content`) file bytes.
fn snapshot(root: &Path, content: bool) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let detail = if m.is_dir() {
                stack.push(p.clone());
                "dir".to_string()
            } else if m.file_type().is_symlink() {
                format!("link -> {}", fs::read_link(&p).unwrap().display())
            } else if content {
                format!(
                    "file {} {}",
                    m.len(),
                    blake3::hash(&fs::read(&p).unwrap()).to_hex()
                )
            } else {
                format!("file {}", m.len())
            };
            let mtime = if m.is_dir() {
                0
            } else {
                m.mtime() * 1_000_000_000 + m.mtime_nsec()
            };
            out.insert(
                rel,
                format!(
                    "{detail} mode={:o} uid={} gid={} mtime={mtime}",
                    m.mode() & 0o7777,
                    m.uid(),
                    m.gid()
                ),
            );
        }
    }
    out
}

fn object_stored(c: &Cluster, slave: usize, content: &[u8]) -> bool {
    let id = blake3::hash(content).to_hex().to_string();
    c.slave_dir(slave)
        .join("objects")
        .join(&id[..2])
        .join(&id[2..])
        .exists()
}

fn out_text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn phase1_edit_on_host_a_commit_and_host_b_sees_exactly_that_tree() {
    // No backup copies: host B's store must fill only through its reads.
    let c = Cluster::with_args(2, &["--replication", "1"], &[]);
    let src = c.dir.path().join("src");
    source_tree(&src);
    c.ok(1, &["import", "--create", src.to_str().unwrap(), "web"]);
    let a = Mount::new(
        &c,
        1,
        "web",
        &c.dir.path().join("mnt-a"),
        &c.dir.path().join("state-a"),
        &[],
    );

    // Every kind of change, over lower entries and new ones.
    fs::write(a.path("new.txt"), b"brand new\n").unwrap();
    fs::OpenOptions::new()
        .append(true)
        .open(a.path("a.txt"))
        .unwrap()
        .write_all(b"beta\n")
        .unwrap();
    fs::remove_file(a.path("docs/x.md")).unwrap();
    fs::rename(a.path("keep/k.txt"), a.path("moved.txt")).unwrap();
    fs::rename(a.path("docs/old"), a.path("archive")).unwrap();
    fs::create_dir(a.path("empty")).unwrap();
    fs::set_permissions(a.path("bin/run.sh"), fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink("archive/y.md", a.path("l2")).unwrap();
    let when = UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    fs::File::options()
        .write(true)
        .open(a.path("new.txt"))
        .unwrap()
        .set_modified(when)
        .unwrap();

    let status = out_text(&a.elton(&["status", a.mountpoint.to_str().unwrap()]));
    for expected in [
        "A new.txt",
        "M a.txt",
        "D docs/x.md",
        "A moved.txt",
        "A archive/",
        "M bin/run.sh",
        "A l2",
    ] {
        assert!(
            status.contains(expected),
            "{expected} missing from:\n{status}"
        );
    }
    let out = a.elton(&["commit", a.mountpoint.to_str().unwrap(), "-m", "edits"]);
    assert!(out.status.success(), "{}", out_text(&out));
    assert!(out_text(&out).contains("committed web@2"));
    assert!(
        out_text(&a.elton(&["status", a.mountpoint.to_str().unwrap()]))
            .contains("nothing to commit")
    );
    let out = a.elton(&["commit", a.mountpoint.to_str().unwrap(), "-m", "again"]);
    assert!(out.status.success() && out_text(&out).contains("nothing to commit"));
    let tree_a = snapshot(&a.mountpoint, true);
    assert_eq!(fs::read(a.path("a.txt")).unwrap(), b"alpha\nbeta\n");

    // Host B: its own slave, nothing cached yet.
    let s2 = c.slave_url(2);
    let b = Mount::new(
        &c,
        2,
        "web@2",
        &c.dir.path().join("mnt-b"),
        &c.dir.path().join("state-b"),
        &[],
    );
    let before = metric(&s2, "objects_fetched_total");
    let listing = snapshot(&b.mountpoint, false);
    let dirs = listing.values().filter(|v| v.starts_with("dir")).count() as u64 + 1;
    let fetched = metric(&s2, "objects_fetched_total") - before;
    assert!(
        fetched <= dirs,
        "stat/readdir fetched {fetched} objects for {dirs} directories"
    );
    assert!(
        !object_stored(&c, 2, &pseudo_random(5 << 20, 3)),
        "no file content fetched by stat"
    );
    assert_eq!(fs::read(b.path("new.txt")).unwrap(), b"brand new\n");
    assert_eq!(
        metric(&s2, "objects_fetched_total") - before,
        fetched + 1,
        "one open, one object"
    );
    assert!(!object_stored(&c, 2, &pseudo_random(5 << 20, 3)));

    let tree_b = snapshot(&b.mountpoint, true);
    assert_eq!(tree_a, tree_b);
    assert!(tree_b["new.txt"].contains("mtime=1600000000000000000"));
    assert!(tree_b["bin/run.sh"].contains("mode=700"));
    assert!(!tree_b.contains_key("docs/x.md") && !tree_b.contains_key("keep/k.txt"));
    let diff = c.ok(2, &["diff", "web", "1", "2"]);
    assert!(
        diff.contains("D docs/x.md") && diff.contains("A archive/"),
        "{diff}"
    );
}

#[test]
fn phase2_two_hosts_commit_on_one_parent_one_wins_other_keeps_changes() {
    let c = Cluster::new(2);
    let src = c.dir.path().join("src");
    source_tree(&src);
    c.ok(1, &["import", "--create", src.to_str().unwrap(), "v"]);
    let a = Mount::new(
        &c,
        1,
        "v@1",
        &c.dir.path().join("mnt-a"),
        &c.dir.path().join("state-a"),
        &[],
    );
    let b = Mount::new(
        &c,
        2,
        "v@1",
        &c.dir.path().join("mnt-b"),
        &c.dir.path().join("state-b"),
        &[],
    );
    fs::write(a.path("a.txt"), b"from A\n").unwrap();
    fs::write(b.path("b.txt"), b"from B\n").unwrap();
    fs::write(b.path("a.txt"), b"B's a\n").unwrap();

    let ra = a.elton(&["commit", a.mountpoint.to_str().unwrap(), "-m", "A"]);
    assert!(ra.status.success(), "{}", out_text(&ra));
    let rb = b.elton(&["commit", b.mountpoint.to_str().unwrap(), "-m", "B"]);
    assert!(!rb.status.success());
    let err = out_text(&rb);
    assert!(
        err.contains("conflict") && err.contains("version 2"),
        "{err}"
    );

    // B keeps its changes, still on version 1.
    let status = out_text(&b.elton(&["status", b.mountpoint.to_str().unwrap()]));
    assert!(
        status.contains("v@1") && status.contains("A b.txt") && status.contains("M a.txt"),
        "{status}"
    );
    assert_eq!(fs::read(b.path("b.txt")).unwrap(), b"from B\n");
    assert_eq!(fs::read(b.path("a.txt")).unwrap(), b"B's a\n");
    assert!(!c.ok(1, &["log", "v"]).contains("version 3"));
    // Checkout refuses while there are changes.
    let r = b.elton(&["checkout", b.mountpoint.to_str().unwrap(), "2"]);
    assert!(!r.status.success() && out_text(&r).contains("uncommitted changes"));
}

fn spawn_commit(m: &Mount) -> std::process::Child {
    Command::new(common::bin())
        .args(["commit", m.mountpoint.to_str().unwrap(), "-m", "crash"])
        .env("ELTON_TOKEN", TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn phase3_kill9_during_commit_publishes_nothing_partial_and_keeps_the_upper() {
    let c = Cluster::new(1);
    let src = c.dir.path().join("src");
    source_tree(&src);
    c.ok(1, &["import", "--create", src.to_str().unwrap(), "k"]);
    let (mnt, state) = (c.dir.path().join("mnt"), c.dir.path().join("state"));
    let pause = |p: &str| vec![("ELTON_FAULT_PAUSE", p.to_string())];

    // Crash before the objects' flush (the journal already names the new
    // root: the flush makes it durable), and after the journal, before
    // the head moved.
    for point in ["before-flush", "after-journal"] {
        let env = pause(point);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut m = Mount::with_env(&c, 1, "k", &mnt, &state, &[], &env);
        fs::write(m.path("crash.txt"), b"survives\n").unwrap();
        fs::write(m.path("a.txt"), b"changed\n").unwrap();
        fs::write(m.path("large.bin"), pseudo_random(8 << 20, 9)).unwrap();
        let mut committer = spawn_commit(&m);
        let paused = format!("point=\"{point}\"");
        wait_until(point, Duration::from_secs(30), || {
            fs::read_to_string(c.dir.path().join("mounts.log"))
                .is_ok_and(|log| log.matches(&paused).count() == 1)
        });
        let journal = fs::read_to_string(state.join("commit.json")).unwrap();
        assert!(!journal.contains("\"root\": null"), "{point}: {journal}");
        m.kill9();
        let _ = committer.kill();
        let _ = committer.wait();
        assert_eq!(
            c.ok(1, &["log", "k", "--json"]).lines().count(),
            1,
            "{point}: no version was published"
        );
        drop(m);

        let m = Mount::new(&c, 1, "k", &mnt, &state, &[]);
        assert!(
            !state.join("commit.json").exists(),
            "{point}: journal resolved at start"
        );
        let status = out_text(&m.elton(&["status", mnt.to_str().unwrap()]));
        assert!(
            status.contains("k@1") && status.contains("A crash.txt") && status.contains("M a.txt"),
            "{point}: {status}"
        );
        assert_eq!(fs::read(m.path("crash.txt")).unwrap(), b"survives\n");
        assert_eq!(
            fs::read(m.path("large.bin")).unwrap(),
            pseudo_random(8 << 20, 9)
        );
        // The undone commit left no store object aliasing a writable upper
        // file.
        fs::write(m.path("large.bin"), b"rewritten").unwrap();
        assert!(!object_stored(&c, 1, b"rewritten"), "{point}");
        drop(m);
    }

    // Crash after the head moved, before the upper was cleared.
    let env = pause("after-publish");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut m = Mount::with_env(&c, 1, "k", &mnt, &state, &[], &env);
    let mut committer = spawn_commit(&m);
    wait_until("version 2", Duration::from_secs(30), || {
        c.ok(1, &["log", "k", "--json"]).lines().count() == 2
    });
    m.kill9();
    let _ = committer.kill();
    let _ = committer.wait();
    drop(m);

    let m = Mount::new(&c, 1, "k", &mnt, &state, &[]);
    let status = out_text(&m.elton(&["status", mnt.to_str().unwrap()]));
    assert!(
        status.contains("k@2") && status.contains("nothing to commit"),
        "{status}"
    );
    assert_eq!(fs::read(m.path("crash.txt")).unwrap(), b"survives\n");
    assert_eq!(fs::read(m.path("large.bin")).unwrap(), b"rewritten");
    assert_eq!(fs::read(m.path("a.txt")).unwrap(), b"changed\n");
    assert_eq!(
        c.ok(1, &["log", "k", "--json"]).lines().count(),
        2,
        "no duplicate version"
    );
}

#[test]
fn phase4_elton_up_mounts_a_default_volume_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let (mp, sp) = (common::free_port(), common::free_port());
    let data = dir.path().join("home");
    let mut up = common::KillOnDrop(
        Command::new(common::bin())
            .args(["up", "--data-dir", data.to_str().unwrap()])
            .args([
                "--master-listen",
                &format!("127.0.0.1:{mp}"),
                "--slave-listen",
                &format!("127.0.0.1:{sp}"),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mnt = data.join("volumes/default");
    let guard = common::MountGuard(mnt.clone());
    wait_until("elton up to mount", Duration::from_secs(30), || {
        common::is_elton_mount(&mnt)
    });
    fs::write(mnt.join("hello.txt"), b"hello from up\n").unwrap();
    let out = Command::new(common::bin())
        .args(["commit", mnt.to_str().unwrap(), "-m", "first"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", out_text(&out));
    let body = reqwest::blocking::get(format!(
        "http://127.0.0.1:{sp}/v1/volumes/default/latest/hello.txt"
    ))
    .unwrap();
    assert_eq!(body.text().unwrap(), "hello from up\n");

    // SIGTERM: clean shutdown, no mount left behind.
    Command::new("kill")
        .arg(up.0.id().to_string())
        .status()
        .unwrap();
    let status = up.0.wait().unwrap();
    assert!(status.success(), "{status}");
    let mut stdout = String::new();
    std::io::Read::read_to_string(up.0.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    assert!(
        stdout.contains(&format!("mounted at {}", mnt.display())),
        "{stdout}"
    );
    assert!(!common::is_elton_mount(&mnt));
    drop(guard);
}

/// The kernel sends a file's RELEASE after `close(2)` returned, so a
/// commit right after a write can find the file still open: it must wait
/// for that release and clear the file, not keep it in the upper to be
/// committed again. A file really held open is committed and kept.
#[test]
fn phase5_a_file_closed_right_before_a_commit_is_not_kept() {
    let c = Cluster::new(1);
    let src = c.dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("seed"), b"seed\n").unwrap();
    c.ok(1, &["import", "--create", src.to_str().unwrap(), "quick"]);
    let d = c.dir.path();
    let m = Mount::new(&c, 1, "quick", &d.join("mnt"), &d.join("state"), &[]);
    let mnt = m.mountpoint.to_str().unwrap();
    // 5.1: written, closed, committed at once, 20 times.
    for i in 0..20 {
        fs::write(m.path(&format!("f{i}")), format!("file {i}\n")).unwrap();
        let out = m.elton(&["commit", mnt, "-m", &format!("f{i}")]);
        assert!(out.status.success(), "{}", out_text(&out));
        let status = out_text(&m.elton(&["status", mnt]));
        assert!(
            status.contains("nothing to commit"),
            "round {i}: the closed file was kept:\n{status}"
        );
    }
    // 5.2: a file held open for writing is committed and kept.
    let mut held = fs::File::create(m.path("held")).unwrap();
    held.write_all(b"open\n").unwrap();
    let out = m.elton(&["commit", mnt, "-m", "held"]);
    assert!(out.status.success(), "{}", out_text(&out));
    assert!(out_text(&m.elton(&["status", mnt])).contains("held"));
    drop(held);
}
