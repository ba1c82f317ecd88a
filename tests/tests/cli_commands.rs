#![allow(clippy::unwrap_used)]
//! The CLI's commands as a newcomer meets them (issue 15): flags that do
//! what they say (item 2), failed imports that leave nothing (item 3),
//! quiet broken pipes (item 4), the conflict message (item 5), commands
//! that say why they print nothing (item 9), help texts (item 12), and
//! `diff ... latest`, `--token-file`, the `--create` hint (item 13).

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Cluster, KillOnDrop, TOKEN, free_port, registered, text, wait_until};

fn fails(c: &Cluster, args: &[&str]) -> String {
    let o = c.cli(1, args);
    assert!(
        !o.status.success(),
        "elton {args:?} succeeded: {}",
        text(&o)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A directory of `n` small files under the cluster's temp dir.
fn tree(c: &Cluster, name: &str, n: usize) -> String {
    let d = c.dir.path().join(name);
    fs::create_dir_all(&d).unwrap();
    for i in 0..n {
        fs::write(d.join(format!("f{i:04}.txt")), format!("{name} {i}\n")).unwrap();
    }
    s(&d).to_string()
}

/// Runs `args` with its stdout closed before it writes: it must end quietly
/// with SIGPIPE's status, as coreutils under a shell.
fn assert_quiet_on_closed_pipe(c: &Cluster, args: &[&str]) {
    let mut child = Command::new(common::bin())
        .args(args)
        .env("ELTON_MASTER", c.master_url())
        .env("ELTON_SLAVE", c.slave_url(1))
        .env("ELTON_TOKEN", TOKEN)
        .env("ELTON_CA", c.ca_path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(141), "elton {args:?}: {}", text(&o));
    assert!(o.stderr.is_empty(), "elton {args:?}: {}", text(&o));
}

#[test]
fn phase1_slave_master_flag_is_obeyed_and_unused_flags_are_refused() {
    let c = Cluster::new(1);
    // `elton slave --master URL` registers with that master (item 2).
    let port = free_port();
    let tls = c.dir.path().join("extra-tls");
    c.issue_cert("extra", &tls);
    let log = fs::File::create(c.dir.path().join("extra.log")).unwrap();
    let _slave = KillOnDrop(
        Command::new(common::bin())
            .args([
                "slave",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
                s(&c.dir.path().join("extra")),
                "--master",
                &c.master_url(),
                "--node-id",
                "extra",
                "--tls-dir",
                s(&tls),
            ])
            .env_remove("ELTON_MASTER")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    wait_until("extra registered", Duration::from_secs(20), || {
        registered(&c, "extra")
    });

    // Global flags a command has no use for: refused, nothing done.
    let data = c.dir.path().join("never");
    let o = c.cli(
        1,
        &[
            "up",
            "--data-dir",
            s(&data),
            "--master",
            "https://127.0.0.1:1",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("--master does nothing for `elton up`"),
        "{}",
        text(&o)
    );
    assert!(!data.exists(), "elton up ran");
    let o = c.cli(1, &["--token", "x", "umount", s(c.dir.path())]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--token does nothing"), "{}", text(&o));
    let help = c.ok(1, &["up", "--help"]);
    assert!(help.contains("--master-listen"), "{help}");
    assert!(!help.contains("--master <"), "{help}");
    assert!(!help.contains("--token"), "{help}");
}

#[test]
fn phase2_a_failed_import_leaves_no_volume_and_messages_are_plain() {
    let c = Cluster::new(1);
    let missing = c.dir.path().join("missing");
    let e = fails(&c, &["import", "--create", s(&missing), "newvol"]);
    assert!(
        e.contains("is not a directory; nothing was imported"),
        "{e}"
    );
    assert!(!c.ok(1, &["volume", "ls"]).contains("newvol"));

    // A missing volume without --create: the hint (item 13).
    let src = tree(&c, "src", 3);
    let e = fails(&c, &["import", &src, "newvol"]);
    assert!(e.contains("pass --create"), "{e}");
    assert!(!c.ok(1, &["volume", "ls"]).contains("newvol"));

    // No Rust debug formatting in messages.
    c.ok(1, &["volume", "create", "empty"]);
    let e = fails(&c, &["ls", "empty"]);
    assert!(e.contains("volume \"empty\" has no version yet"), "{e}");
    assert!(!e.contains("VolumeName("), "{e}");
}

#[test]
fn phase3_commands_end_quietly_when_their_reader_goes_away() {
    let c = Cluster::new(1);
    let one = tree(&c, "one", 1);
    let many = tree(&c, "many", 3000);
    c.ok(1, &["import", "--create", &one, "web", "-m", "one"]);
    c.ok(1, &["import", &many, "web", "-m", "many"]);
    assert_quiet_on_closed_pipe(&c, &["diff", "web", "1", "2"]);
    assert_quiet_on_closed_pipe(&c, &["ls", "web"]);
    assert_quiet_on_closed_pipe(&c, &["log", "web"]);
    assert_quiet_on_closed_pipe(&c, &["cat", "web:f0001.txt"]);
}

#[test]
fn phase4_conflicts_equal_trees_and_empty_volumes_say_what_to_do() {
    let c = Cluster::new(1);
    let a = tree(&c, "a", 2);
    let b = tree(&c, "b", 2);
    c.ok(1, &["import", "--create", &a, "web", "-m", "a"]);
    c.ok(1, &["import", &b, "web", "-m", "b"]);

    // A stale parent: the message names the way out (item 5).
    let e = fails(&c, &["import", &a, "web", "--parent", "1"]);
    assert!(
        e.contains("another commit came first") && e.contains("elton update"),
        "{e}"
    );
    assert!(!e.contains("update and retry"), "{e}");

    // The same tree again: no new version (item 9), unless asked.
    let o = c.cli(1, &["import", &b, "web"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("nothing to import"), "{}", text(&o));
    assert!(!c.ok(1, &["log", "web"]).contains("version 3"));
    c.ok(1, &["import", &b, "web", "--allow-empty", "-m", "again"]);
    assert!(c.ok(1, &["log", "web"]).contains("version 3"));

    // diff of equal versions: stdout empty, the reason on stderr; `latest`
    // is a version (item 13).
    let o = c.cli(1, &["diff", "web", "latest", "2"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(o.stdout.is_empty(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("have the same tree"),
        "{}",
        text(&o)
    );
    let d = c.ok(1, &["diff", "web", "1", "latest"]);
    assert!(d.contains("M f0000.txt"), "{d}");
    let o = c.cli(1, &["diff", "web", "1", "head"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("not a version"), "{}", text(&o));

    // log of a volume without versions says so.
    c.ok(1, &["volume", "create", "fresh"]);
    let o = c.cli(1, &["log", "fresh"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(o.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("fresh has no versions yet"),
        "{}",
        text(&o)
    );
}

#[test]
fn phase5_help_describes_every_argument_and_token_file_works() {
    let c = Cluster::new(1);
    let help = |args: &[&str]| {
        let o = Command::new(common::bin())
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let described = |h: &str, what: &str| {
        let line = h
            .lines()
            .find(|l| l.trim_start().starts_with(what))
            .unwrap_or_else(|| panic!("{what} not in help: {h}"));
        assert!(
            line.trim().len() > what.len() + 2,
            "{what} has no description: {line:?}"
        );
    };
    let h = help(&["commit", "-h"]);
    described(&h, "-m, --message");
    described(&h, "[MOUNTPOINT]");
    let h = help(&["status", "-h"]);
    described(&h, "--json");
    let h = help(&["up", "-h"]);
    described(&h, "--master-listen");
    described(&h, "--metrics-listen");
    let h = help(&["ls", "-h"]);
    described(&h, "<SPEC>");
    assert!(!h.contains("=]"), "unset variable shown with '=': {h}");
    let h = help(&["diff", "-h"]);
    described(&h, "<V1>");

    // --token-file (item 13): the token from a file, none in the env.
    let f = c.dir.path().join("my.token");
    fs::write(&f, format!("{TOKEN}\n")).unwrap();
    let o = Command::new(common::bin())
        .args(["whoami", "--token-file", s(&f)])
        .env("ELTON_MASTER", c.master_url())
        .env("ELTON_CA", c.ca_path())
        .env("ELTON_HOME", c.dir.path().join("nohome"))
        .env_remove("ELTON_TOKEN")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let e = fails(
        &c,
        &["whoami", "--token-file", s(&c.dir.path().join("nope"))],
    );
    assert!(e.contains("reading the token file"), "{e}");
}
