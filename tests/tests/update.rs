#![allow(clippy::unwrap_used)]
//! `elton update`: two mounts of one volume change different files and the
//! same file; one commits; the other, refused, updates onto the head: the
//! disjoint changes merge, the conflict keeps both sides, and the commit
//! that follows lands on the head. A crash in the middle of an update
//! finishes it at the next start.

mod common;

use std::fs;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Cluster, Mount, TOKEN, text, wait_until};

/// Volume `vol` at version 1 with a few files.
fn volume(c: &Cluster) {
    let src = c.dir.path().join("src");
    fs::create_dir_all(src.join("dir")).unwrap();
    fs::write(src.join("a.txt"), "a1\n").unwrap();
    fs::write(src.join("b.txt"), "b1\n").unwrap();
    fs::write(src.join("shared.txt"), "shared1\n").unwrap();
    fs::write(src.join("dir/x"), "x1\n").unwrap();
    // More than 256 entries: stored as pages (`docs/formats.md` §2b).
    fs::create_dir_all(src.join("big")).unwrap();
    for i in 0..300 {
        fs::write(src.join(format!("big/f{i:03}")), format!("big {i}\n")).unwrap();
    }
    c.ok(1, &["import", "--create", src.to_str().unwrap(), "vol"]);
}

fn mount(c: &Cluster, name: &str, env: &[(&str, &str)]) -> Mount {
    let d = c.dir.path();
    Mount::with_env(
        c,
        1,
        "vol",
        &d.join(format!("mnt-{name}")),
        &d.join(format!("state-{name}")),
        &[],
        env,
    )
}

fn read(m: &Mount, rel: &str) -> String {
    fs::read_to_string(m.path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn phase1_update_merges_disjoint_changes_keeps_both_sides_and_commits_on_the_head() {
    let c = Cluster::new(1);
    volume(&c);
    let a = mount(&c, "a", &[]);
    let b = mount(&c, "b", &[]);
    let (mnt_a, mnt_b) = (
        a.mountpoint.to_str().unwrap().to_string(),
        b.mountpoint.to_str().unwrap().to_string(),
    );

    fs::write(a.path("a.txt"), "a2 from A\n").unwrap();
    fs::write(a.path("new-from-a.txt"), "new\n").unwrap();
    fs::write(a.path("shared.txt"), "shared from A\n").unwrap();
    fs::write(b.path("b.txt"), "b2 from B\n").unwrap();
    fs::write(b.path("shared.txt"), "shared from B\n").unwrap();
    fs::remove_file(b.path("dir/x")).unwrap();
    // In the paged directory too, each side in another page.
    fs::write(a.path("big/f010"), "big 10 from A\n").unwrap();
    fs::write(a.path("big/new-from-a"), "new in big\n").unwrap();
    fs::write(b.path("big/f250"), "big 250 from B\n").unwrap();
    fs::remove_file(b.path("big/f100")).unwrap();

    let out = a.elton(&["commit", &mnt_a, "-m", "A's change"]);
    assert!(out.status.success(), "{}", text(&out));
    let refused = b.elton(&["commit", &mnt_b, "-m", "B's change"]);
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains(&format!("elton update {mnt_b}")),
        "the refusal names the way out: {}",
        text(&refused)
    );

    // Conflicts: done, but exit 1 (as git after a conflicted merge).
    let out = b.elton(&["update", &mnt_b]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(shown.contains("updated vol from version 1 to 2"), "{shown}");
    assert!(
        shown.contains("CONFLICT (changed on both sides): shared.txt"),
        "{shown}"
    );
    assert!(shown.contains("shared.txt.elton-theirs"), "{shown}");

    // The disjoint changes of both sides, and both sides of the conflict.
    assert_eq!(read(&b, "a.txt"), "a2 from A\n");
    assert_eq!(read(&b, "new-from-a.txt"), "new\n");
    assert_eq!(read(&b, "b.txt"), "b2 from B\n");
    assert!(!b.path("dir/x").exists(), "B's deletion stays");
    assert_eq!(read(&b, "shared.txt"), "shared from B\n");
    assert_eq!(read(&b, "shared.txt.elton-theirs"), "shared from A\n");
    assert_eq!(read(&b, "big/f010"), "big 10 from A\n");
    assert_eq!(read(&b, "big/new-from-a"), "new in big\n");
    assert_eq!(read(&b, "big/f250"), "big 250 from B\n");
    assert!(!b.path("big/f100").exists(), "B's deletion in big/ stays");
    assert_eq!(fs::read_dir(b.path("big")).unwrap().count(), 300);
    let status = text(&b.elton(&["status", &mnt_b]));
    assert!(status.starts_with("vol@2"), "{status}");

    // Again: nothing to do, exit 0, JSON for scripts.
    let out = b.elton(&["update", &mnt_b, "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["version"], 2);
    assert_eq!(j["conflicts"], serde_json::json!([]));

    // Resolve by keeping ours; the commit lands on the head.
    fs::remove_file(b.path("shared.txt.elton-theirs")).unwrap();
    let out = b.elton(&["commit", &mnt_b, "-m", "B's change, merged"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("committed vol@3"), "{}", text(&out));
    for (path, want) in [
        ("a.txt", "a2 from A\n"),
        ("new-from-a.txt", "new\n"),
        ("b.txt", "b2 from B\n"),
        ("shared.txt", "shared from B\n"),
        ("big/f010", "big 10 from A\n"),
        ("big/new-from-a", "new in big\n"),
        ("big/f250", "big 250 from B\n"),
        ("big/f299", "big 299\n"),
    ] {
        assert_eq!(c.ok(1, &["cat", &format!("vol@3:{path}")]), want, "{path}");
    }
    assert!(!c.cli(1, &["cat", "vol@3:dir/x"]).status.success());
    assert!(!c.cli(1, &["cat", "vol@3:big/f100"]).status.success());
    assert!(
        !c.cli(1, &["cat", "vol@3:shared.txt.elton-theirs"])
            .status
            .success()
    );

    // A, without changes, simply moves to the head.
    let out = a.elton(&["update", &mnt_a]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(read(&a, "b.txt"), "b2 from B\n");
    assert_eq!(read(&a, "shared.txt"), "shared from B\n");
}

#[test]
fn phase2_a_crash_in_the_middle_of_an_update_finishes_it_at_the_next_start() {
    let c = Cluster::new(1);
    volume(&c);
    let a = mount(&c, "a", &[]);
    let mut b = mount(&c, "b", &[("ELTON_FAULT_PAUSE", "update-after-journal")]);
    let mnt_b = b.mountpoint.clone();
    fs::write(a.path("a.txt"), "a2 from A\n").unwrap();
    fs::write(a.path("shared.txt"), "shared from A\n").unwrap();
    let out = a.elton(&["commit", a.mountpoint.to_str().unwrap(), "-m", "A"]);
    assert!(out.status.success(), "{}", text(&out));
    fs::write(b.path("shared.txt"), "shared from B\n").unwrap();
    fs::remove_file(b.path("b.txt")).unwrap();

    let mut updater = Command::new(common::bin())
        .args(["update", mnt_b.to_str().unwrap()])
        .env("ELTON_TOKEN", TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let journal = b.state.join("update.json");
    wait_until("update journal", Duration::from_secs(30), || {
        journal.exists()
    });
    b.kill9();
    let _ = updater.kill();
    let _ = updater.wait();
    drop(b);

    // The restart finishes the update before serving.
    let b = mount(&c, "b", &[]);
    assert!(!journal.exists(), "journal resolved at start");
    assert_eq!(read(&b, "a.txt"), "a2 from A\n");
    assert_eq!(read(&b, "shared.txt"), "shared from B\n");
    assert_eq!(read(&b, "shared.txt.elton-theirs"), "shared from A\n");
    assert!(!b.path("b.txt").exists());
    let status = text(&b.elton(&["status", mnt_b.to_str().unwrap()]));
    assert!(status.starts_with("vol@2"), "{status}");
    assert!(status.contains("D b.txt"), "{status}");
}
