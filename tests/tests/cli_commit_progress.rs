#![allow(clippy::unwrap_used)]
//! `elton commit` of a mount shows its progress (issue 15, item 8): the
//! mount streams progress lines on its control socket (revision 2) while
//! it commits, and the CLI prints them on stderr when asked (`--progress`)
//! or at a terminal; stdout, `--json`, errors and exit codes are as before.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Output;

use common::{Cluster, Mount};

/// Files a commit goes through in phase 1 (enough for several reports).
const MANY: usize = 3000;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn out(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn succeeded(o: &Output, what: &str) -> (String, String) {
    let (stdout, stderr) = out(o);
    assert!(
        o.status.success(),
        "{what} failed ({}): {stdout}{stderr}",
        o.status
    );
    (stdout, stderr)
}

/// A cluster with volume `web` at version 1 (`a.txt`), mounted.
fn mounted(name: &str) -> (Cluster, Mount) {
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
    let mnt = c.dir.path().join(name);
    let state = c.dir.path().join(format!("{name}-state"));
    let m = Mount::new(&c, 1, "web", &mnt, &state, &[]);
    (c, m)
}

/// Writes `n` small files in ten directories under `dir` of the mount.
fn write_files(m: &Mount, dir: &str, n: usize) {
    for i in 0..n {
        let d = m.path(&format!("{dir}/d{}", i % 10));
        if i < 10 {
            fs::create_dir_all(&d).unwrap();
        }
        fs::write(d.join(format!("f{i}")), format!("file {i}\n")).unwrap();
    }
}

#[test]
fn phase1_progress_is_printed_on_stderr_when_forced() {
    let (c, m) = mounted("mnt");
    let mnt = m.mountpoint.clone();
    write_files(&m, "many", MANY);

    let o = m.elton(&["commit", s(&mnt), "-m", "many", "--progress"]);
    let (stdout, stderr) = succeeded(&o, "commit --progress");
    assert_eq!(stdout, "committed web@2\n", "stdout is the result only");
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("elton: commit: storing ")),
        "no storing line: {stderr}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("elton: commit: publishing {MANY}/{MANY} files, "))),
        "no publishing line with every file done: {stderr}"
    );
    let summary = lines.last().unwrap();
    assert!(
        summary.starts_with(&format!("elton: committed {MANY} files (")),
        "last line is not the summary: {stderr}"
    );
    // Every file is a new object, and the directories' manifests too: the
    // root's and many/'s, and for each d*/ of more than 256 files its
    // pages and index (`docs/formats.md` §2b).
    let manifests: usize = 2
        + (0..10)
            .map(|d| {
                let mut names: Vec<String> = (0..MANY)
                    .filter(|i| i % 10 == d)
                    .map(|i| format!("f{i}"))
                    .collect();
                names.sort();
                let pages = elton_proto::paged::cut(&names).len();
                if names.len() > elton_proto::paged::PAGED_MIN {
                    pages + 1
                } else {
                    1
                }
            })
            .sum::<usize>();
    assert!(
        summary.contains(&format!("{} new objects, 12 directories", MANY + manifests)),
        "{summary}"
    );
    // The commit is the same as without progress.
    let ls = c.ok(1, &["ls", "web@2:many/d7"]);
    assert_eq!(ls.lines().count(), MANY / 10, "{ls}");
    assert_eq!(fs::read(m.path("many/d3/f13")).unwrap(), b"file 13\n");
}

#[test]
fn phase2_no_progress_when_not_a_terminal_or_quiet_and_json_is_plain() {
    let (_c, m) = mounted("mnt");
    let mnt = m.mountpoint.clone();

    write_files(&m, "one", 50);
    let (stdout, stderr) = succeeded(&m.elton(&["commit", s(&mnt), "-m", "x"]), "commit");
    assert_eq!(stdout, "committed web@2\n");
    assert_eq!(stderr, "", "stderr is not a terminal: nothing extra");

    write_files(&m, "two", 50);
    let (stdout, stderr) = succeeded(&m.elton(&["commit", s(&mnt), "-m", "x", "-q"]), "-q");
    assert_eq!(stdout, "committed web@3\n");
    assert_eq!(stderr, "");

    write_files(&m, "three", 50);
    let (stdout, stderr) = succeeded(
        &m.elton(&["commit", s(&mnt), "-m", "x", "--json"]),
        "--json",
    );
    assert_eq!(stderr, "", "--json shows no progress");
    let j: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(
        j,
        serde_json::json!({"volume": "web", "version": 4, "committed": true})
    );
    assert_eq!(stdout.lines().count(), 1, "{stdout}");

    // --json with --progress: stdout is the same one JSON line.
    write_files(&m, "four", 50);
    let (stdout, stderr) = succeeded(
        &m.elton(&["commit", s(&mnt), "-m", "x", "--json", "--progress"]),
        "--json --progress",
    );
    let j: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(
        j,
        serde_json::json!({"volume": "web", "version": 5, "committed": true})
    );
    assert!(stderr.contains("elton: committed 50 files ("), "{stderr}");

    // Nothing to commit: the usual answer, and no summary.
    let (stdout, stderr) = succeeded(
        &m.elton(&["commit", s(&mnt), "-m", "x", "--json", "--progress"]),
        "empty --json",
    );
    let j: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(
        j,
        serde_json::json!({"volume": "web", "version": 5, "committed": false,
                           "message": "nothing to commit"})
    );
    assert!(!stderr.contains("elton: committed"), "{stderr}");
    let (stdout, _) = succeeded(&m.elton(&["commit", s(&mnt), "-m", "x"]), "empty");
    assert_eq!(stdout, "nothing to commit\n");
}

#[test]
fn phase3_errors_and_exit_codes_are_unchanged() {
    let (c, m) = mounted("mnt");
    let mnt = m.mountpoint.clone();
    let other = Mount::new(
        &c,
        1,
        "web",
        &c.dir.path().join("other"),
        &c.dir.path().join("other-state"),
        &[],
    );
    fs::write(other.path("theirs.txt"), b"theirs\n").unwrap();
    let (stdout, _) = succeeded(
        &other.elton(&["commit", s(&other.mountpoint), "-m", "theirs"]),
        "other commit",
    );
    assert_eq!(stdout, "committed web@2\n");

    // A conflict: the same error and exit code with progress shown, and no
    // summary (nothing was published); the upper keeps the change.
    write_files(&m, "mine", 20);
    let o = m.elton(&["commit", s(&mnt), "-m", "mine", "--progress"]);
    let (stdout, stderr) = out(&o);
    assert_eq!(o.status.code(), Some(1), "{stdout}{stderr}");
    assert_eq!(stdout, "");
    assert!(
        stderr.contains("elton: error: ") && stderr.contains("(HTTP 409)"),
        "{stderr}"
    );
    assert!(!stderr.contains("elton: committed"), "{stderr}");
    let st = c.ok(1, &["status", s(&mnt)]);
    assert!(st.contains("A mine/d1/f11"), "{st}");

    // Usage errors stay usage errors.
    let o = m.elton(&["commit", s(&mnt), "-m", "x", "--progress", "--quiet"]);
    assert_eq!(o.status.code(), Some(2), "{:?}", out(&o));
    let o = m.elton(&["commit", s(&mnt), "--progress"]);
    assert_eq!(o.status.code(), Some(1), "{:?}", out(&o));
    assert!(
        out(&o).1.contains("a commit needs a message"),
        "{:?}",
        out(&o)
    );
}

/// Sends one request on the mount's control socket; returns the lines.
fn ask(m: &Mount, request: &str) -> Vec<serde_json::Value> {
    let conn = UnixStream::connect(m.state.join("control.sock")).unwrap();
    (&conn).write_all(request.as_bytes()).unwrap();
    (&conn).write_all(b"\n").unwrap();
    BufReader::new(conn)
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect()
}

#[test]
fn phase4_the_socket_streams_progress_only_to_clients_that_ask() {
    let (_c, m) = mounted("mnt");

    // A revision-1 request: exactly one line, the answer.
    write_files(&m, "old", 30);
    let lines = ask(
        &m,
        r#"{"op":"commit","message":"old","author":"t","host":"h"}"#,
    );
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["version"], 2, "{lines:?}");
    assert!(lines[0].get("progress").is_none());

    // Revision 2: progress lines, phases in order, then the answer.
    write_files(&m, "new", 30);
    let lines = ask(
        &m,
        r#"{"op":"commit","message":"new","author":"t","host":"h","progress":true}"#,
    );
    let (last, progress) = lines.split_last().unwrap();
    assert_eq!(last["version"], 3, "{lines:?}");
    assert!(last.get("progress").is_none(), "{lines:?}");
    assert!(!progress.is_empty(), "no progress line: {lines:?}");
    let order = |p: &serde_json::Value| match p["progress"]["phase"].as_str() {
        Some("scanning") => 0,
        Some("storing") => 1,
        Some("publishing") => 2,
        other => panic!("not a progress line ({other:?}): {p}"),
    };
    let phases: Vec<i32> = progress.iter().map(order).collect();
    assert!(phases.is_sorted(), "{phases:?}");
    assert_eq!(phases.first(), Some(&0), "{lines:?}");
    let end = &progress.last().unwrap()["progress"];
    assert_eq!(end["phase"], "publishing", "{lines:?}");
    assert_eq!(end["files"], 30, "{end}");
    assert_eq!(end["total_files"], 30, "{end}");
    assert_eq!(
        end["bytes"],
        (0..30).map(|i| format!("file {i}\n").len()).sum::<usize>()
    );
}
