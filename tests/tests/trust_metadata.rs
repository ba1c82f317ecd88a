//! A master never forgets silently (issue 11, part 1): metadata removed
//! while running, restarts on missing, truncated or foreign metadata, a new
//! incarnation seen by a slave that cached the old one, and an online
//! backup taken during a stream of commits, then restored.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Cluster, TOKEN, wait_until};

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// Uploads `body` as `path` in the next version of `volume` through slave
/// 1; the version record's JSON on success, the status and body if not.
fn put(c: &Cluster, volume: &str, path: &str, body: &str) -> Result<serde_json::Value, String> {
    let resp = http()
        .put(format!("{}/v1/volumes/{volume}/{path}", c.slave_url(1)))
        .bearer_auth(TOKEN)
        .body(body.to_string())
        .send()
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let text = resp.text().unwrap_or_default();
    if status.is_success() {
        Ok(serde_json::from_str(&text).unwrap())
    } else {
        Err(format!("{status}: {text}"))
    }
}

/// [`put`], retried while the master holds commits after a new
/// incarnation (until every slave has heard of it).
fn put_when_open(c: &Cluster, volume: &str, path: &str, body: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match put(c, volume, path, body) {
            Ok(v) => return v,
            Err(e) if e.contains("commits open in") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("PUT {volume}/{path}: {e}"),
        }
    }
}

/// A file of `volume@version` read through slave 1: status and body.
fn get(c: &Cluster, volume: &str, version: u64, path: &str) -> (u16, String) {
    let resp = http()
        .get(format!(
            "{}/v1/volumes/{volume}/{version}/{path}",
            c.slave_url(1)
        ))
        .send()
        .unwrap();
    (resp.status().as_u16(), resp.text().unwrap_or_default())
}

/// The slave's `elton_slave_master_incarnation_changes_total`.
fn incarnation_changes(c: &Cluster) -> u64 {
    let text = http()
        .get(format!("{}/metrics", c.slave_url(1)))
        .send()
        .and_then(|r| r.text())
        .unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("elton_slave_master_incarnation_changes_total "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

fn master_dir(c: &Cluster) -> PathBuf {
    c.dir.path().join("master")
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn identity(c: &Cluster) -> String {
    std::fs::read_to_string(master_dir(c).join("identity")).unwrap()
}

fn incarnation_of(identity: &str) -> String {
    identity
        .lines()
        .find_map(|l| l.strip_prefix("incarnation = "))
        .unwrap()
        .trim_matches('"')
        .to_string()
}

/// Waits until slave 1 has registered with the (restarted) master.
fn wait_registered(c: &Cluster) {
    wait_until("slave1 registered", Duration::from_secs(20), || {
        common::registered(c, "slave1")
    });
}

#[test]
fn phase1_metadata_removed_while_running() {
    let mut c = Cluster::new(1);
    c.ok(1, &["volume", "create", "web"]);
    let v1 = put(&c, "web", "index.html", "old tree").unwrap();
    assert_eq!(v1["version"], 1);
    let old_incarnation = v1["incarnation"].as_str().unwrap().to_string();
    assert_eq!(old_incarnation, incarnation_of(&identity(&c)));
    // The slave caches web@1 of this incarnation.
    assert_eq!(get(&c, "web", 1, "index.html"), (200, "old tree".into()));

    std::fs::remove_file(master_dir(&c).join("master.redb")).unwrap();

    // phase 1: the next writes are refused, with the reason.
    let out = c.cli(1, &["volume", "create", "docs"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("metadata file lost"),
        "{}",
        stderr(&out)
    );
    let refused = put(&c, "web", "index.html", "lost write").unwrap_err();
    assert!(refused.contains("metadata file lost"), "{refused}");
    let out = c.cli(1, &["token", "create", "--name", "t", "--scope", "read"]);
    assert!(
        !out.status.success(),
        "a token was created on lost metadata"
    );
    // Noticed without any write too (periodic check), and logged.
    wait_until("the loss logged", Duration::from_secs(5), || {
        c.master.log_text().contains("metadata file lost")
    });

    // The master wrote down the last heads, for a restore to compare with.
    wait_until("the heads file", Duration::from_secs(5), || {
        std::fs::read_to_string(master_dir(&c).join("heads")).is_ok_and(|t| t.contains("\"web\":1"))
    });

    // What was confirmed can still be saved: the backup reads the open
    // database, and installs into a new data directory.
    let saved = c.dir.path().join("saved.redb");
    let out = c.ok(1, &["backup", saved.to_str().unwrap(), "--json"]);
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(summary["incarnation"], old_incarnation.as_str());
    let elsewhere = c.dir.path().join("elsewhere");
    let out = std::process::Command::new(common::bin())
        .args(["master", "--data-dir", elsewhere.to_str().unwrap()])
        .args(["--restore", saved.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["volumes"], 1);
    assert_eq!(report["compared"], false);

    // phase 2: a restart refuses to start, naming the way out.
    c.master.kill9();
    let out = c.master.run_once(&[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("master.redb is missing") && err.contains("--new-incarnation"),
        "{err}"
    );
    assert!(
        !master_dir(&c).join("master.redb").exists(),
        "a refused start created a database"
    );

    // phase 3: an explicit new incarnation starts, loudly.
    c.master.restart_with(&["--new-incarnation"]);
    wait_until("master up", Duration::from_secs(20), || {
        c.cli(1, &["volume", "ls"]).status.success()
    });
    assert!(c.master.log_text().contains("NEW INCARNATION"));
    let new_incarnation = incarnation_of(&identity(&c));
    assert_ne!(new_incarnation, old_incarnation);

    assert!(
        c.master
            .log_text()
            .contains("commits open once every slave has heard of it")
    );

    // The slave does not serve its cached web@1 as the new one's: once it
    // heard of the new incarnation (its next heartbeat; commits wait for
    // that), and once web@1 exists again.
    wait_registered(&c);
    let (status, body) = get(&c, "web", 1, "index.html");
    assert_ne!(body, "old tree", "status {status}");
    c.ok(1, &["volume", "create", "web"]);
    let v1 = put_when_open(&c, "web", "index.html", "new tree");
    assert_eq!(v1["version"], 1);
    assert_eq!(v1["incarnation"], new_incarnation.as_str());
    assert_eq!(get(&c, "web", 1, "index.html"), (200, "new tree".into()));

    // A plain restart keeps the incarnation; the flag on intact metadata
    // is refused and changes nothing.
    c.master.kill9();
    let out = c.master.run_once(&["--new-incarnation"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("intact"), "{}", stderr(&out));
    c.master.restart();
    wait_registered(&c);
    assert_eq!(incarnation_of(&identity(&c)), new_incarnation);
    assert_eq!(get(&c, "web", 1, "index.html"), (200, "new tree".into()));
}

/// Runs commits through slave 1 until `stop` is set, recording every
/// acknowledged version with the instant its acknowledgement arrived.
fn commit_stream(
    c: &Cluster,
    stop: &std::sync::atomic::AtomicBool,
    acked: &std::sync::Mutex<Vec<(u64, Instant)>>,
) {
    let mut i = 0;
    while !stop.load(std::sync::atomic::Ordering::Acquire) {
        i += 1;
        let rec = put(c, "stream", "f.txt", &format!("commit {i}"))
            .unwrap_or_else(|e| panic!("commit {i}: {e}"));
        let v = rec["version"].as_u64().unwrap();
        acked.lock().unwrap().push((v, Instant::now()));
    }
}

#[test]
fn phase2_backup_during_commits_then_restore() {
    let mut c = Cluster::new(1);
    c.ok(1, &["volume", "create", "stream"]);
    let backup = c.dir.path().join("meta.backup");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let acked = std::sync::Mutex::new(Vec::new());
    let acked_after = |t: Instant| {
        acked
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, at)| *at > t)
            .count()
    };
    let (started, summary) = std::thread::scope(|s| {
        let committer = s.spawn(|| commit_stream(&c, &stop, &acked));
        let t0 = Instant::now();
        wait_until("commits before the backup", Duration::from_secs(30), || {
            acked_after(t0) >= 3
        });
        let started = Instant::now();
        let out = c.ok(1, &["backup", backup.to_str().unwrap(), "--json"]);
        // Some commits after the backup, so the restore rolls them back.
        let done = Instant::now();
        wait_until("commits after the backup", Duration::from_secs(30), || {
            acked_after(done) >= 2
        });
        stop.store(true, std::sync::atomic::Ordering::Release);
        committer.join().unwrap();
        (started, out)
    });
    let acked = acked.into_inner().unwrap();
    let summary: serde_json::Value = serde_json::from_str(&summary).unwrap();
    let before: Vec<u64> = acked
        .iter()
        .filter(|(_, at)| *at < started)
        .map(|(v, _)| *v)
        .collect();
    let last = acked.last().unwrap().0;
    assert!(!before.is_empty(), "no commit before the backup");
    assert!(
        last > *before.last().unwrap() + 1,
        "too few commits after the backup"
    );
    assert_eq!(summary["volumes"], 1);

    // Restore, offline.
    c.master.kill9();
    let out = c
        .master
        .run_once(&["--restore", backup.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["compared"], true);
    assert_eq!(report["backup_incarnation"], summary["incarnation"]);
    assert_ne!(report["incarnation"], summary["incarnation"]);
    let rolled = report["rolled_back"].as_array().unwrap();
    assert_eq!(rolled.len(), 1, "{report}");
    assert_eq!(rolled[0]["volume"], "stream");
    assert_eq!(rolled[0]["last_head"], last);
    let restored_head = rolled[0]["restored_head"].as_u64().unwrap();
    // Every commit acknowledged before the backup began is in it.
    assert!(
        restored_head >= *before.last().unwrap() && restored_head < last,
        "restored head {restored_head}, acknowledged before the backup {before:?}, last {last}"
    );
    let aside = report["set_aside"].as_str().unwrap();
    assert!(Path::new(aside).exists(), "the replaced database was kept");

    c.master.restart();
    wait_registered(&c);
    // The master sees the slave registered a moment before the slave has
    // read the answer; until then its cache still speaks for the old
    // incarnation (harmless: commits stay closed until every slave heard).
    wait_until(
        "slave1 heard of the new incarnation",
        Duration::from_secs(20),
        || incarnation_changes(&c) >= 1,
    );
    let log = c.ok(1, &["log", "stream", "--json"]);
    for v in &before {
        assert!(
            log.contains(&format!("\"version\":{v},")),
            "version {v} lost: {log}"
        );
    }
    // A number the lost metadata issued and the slave may have cached is
    // not served under the new incarnation until issued again.
    let (status, body) = get(&c, "stream", last, "f.txt");
    assert_ne!(status, 200, "{body}");
    let next = put_when_open(&c, "stream", "f.txt", "after the restore");
    assert_eq!(next["version"], restored_head + 1);
    assert_eq!(next["incarnation"], report["incarnation"]);
    assert_eq!(
        get(&c, "stream", restored_head + 1, "f.txt"),
        (200, "after the restore".into())
    );

    // The backup call needs an admin token.
    let out = c.ok(1, &["token", "create", "--name", "w", "--scope", "write"]);
    let secret = out
        .split_whitespace()
        .find(|w| w.starts_with("elton_"))
        .unwrap_or_else(|| panic!("no secret in {out}"))
        .to_string();
    let denied = std::process::Command::new(common::bin())
        .args(["backup", c.dir.path().join("x").to_str().unwrap()])
        .env("ELTON_MASTER", c.master_url())
        .env("ELTON_TOKEN", &secret)
        .env("ELTON_CA", c.ca_path())
        .output()
        .unwrap();
    assert!(!denied.status.success());
    assert!(
        stderr(&denied).contains("permission denied"),
        "{}",
        stderr(&denied)
    );
    assert!(!c.dir.path().join("x").exists());
}

#[test]
fn phase3_truncated_or_foreign_metadata_refuses_to_start() {
    let mut c = Cluster::new(0);
    let db = master_dir(&c).join("master.redb");
    c.master.kill9();
    let good = std::fs::read(&db).unwrap();

    std::fs::write(&db, &good[..good.len() / 2]).unwrap();
    let out = c.master.run_once(&[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("master.redb cannot be read"),
        "{}",
        stderr(&out)
    );

    // Another cluster's database in its place.
    let mut other = Cluster::new(0);
    other.master.kill9();
    std::fs::copy(master_dir(&other).join("master.redb"), &db).unwrap();
    let out = c.master.run_once(&[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("belongs to cluster"),
        "{}",
        stderr(&out)
    );

    // The right file back: it starts, with the same identity.
    let before = identity(&c);
    std::fs::write(&db, &good).unwrap();
    c.master.restart();
    wait_until("master up", Duration::from_secs(20), || {
        c.master.log_text().matches("master serving").count() >= 2
    });
    assert_eq!(identity(&c), before);
}

/// Runs `cmd` to completion (killed after 30 s: it did not fail).
fn output_within_30s(cmd: &mut std::process::Command) -> std::process::Output {
    let mut child = common::KillOnDrop(
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "still running after 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut err = Vec::new();
    if let Some(e) = child.0.stderr.as_mut() {
        std::io::Read::read_to_end(e, &mut err).unwrap();
    }
    std::process::Output {
        status: child.0.wait().unwrap(),
        stdout: Vec::new(),
        stderr: err,
    }
}

#[test]
fn phase4_a_mount_of_an_old_incarnation_cannot_commit() {
    let mut c = Cluster::new(1);
    c.ok(1, &["volume", "create", "web"]);
    put(&c, "web", "index.html", "old tree").unwrap();
    let mp = c.dir.path().join("mnt");
    let state = c.dir.path().join("state");
    let mut m = common::Mount::new(&c, 1, "web@1", &mp, &state, &[]);
    assert_eq!(
        std::fs::read_to_string(m.path("index.html")).unwrap(),
        "old tree"
    );
    std::fs::write(m.path("new.txt"), "work on the old web@1").unwrap();
    let record = std::fs::read_to_string(state.join("mount.json")).unwrap();
    assert!(record.contains("incarnation"), "{record}");

    std::fs::remove_file(master_dir(&c).join("master.redb")).unwrap();
    c.master.kill9();
    c.master.restart_with(&["--new-incarnation"]);
    wait_registered(&c);
    c.ok(1, &["volume", "create", "web"]);
    put_when_open(&c, "web", "index.html", "another tree");

    // The running mount's commit is refused: its parent web@1 is another
    // tree now.
    let out = m.elton(&["commit", mp.to_str().unwrap(), "-m", "mixed"]);
    assert!(!out.status.success(), "a commit mixed two incarnations");
    assert!(stderr(&out).contains("incarnation"), "{}", stderr(&out));
    let log = c.ok(1, &["log", "web", "--json"]);
    assert_eq!(log.lines().count(), 1, "{log}");

    // Mounting the state directory again is refused too, with the reason.
    m.kill9();
    let out = output_within_30s(
        std::process::Command::new(common::bin())
            .args([
                "mount",
                "web",
                mp.to_str().unwrap(),
                "--foreground",
                "--upper",
            ])
            .arg(&state)
            .arg("--slave-data")
            .arg(c.slave_dir(1))
            .env("ELTON_SLAVE", c.slave_url(1))
            .env("ELTON_TOKEN", TOKEN),
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("now incarnation"), "{}", stderr(&out));
    assert!(
        state.join("upper").join("new.txt").exists(),
        "the work is kept"
    );
}

/// `elton up` (master and slave in one process) on `home`: started, one
/// volume listed through it, stopped.
fn up_once(home: &Path, create: Option<&str>) -> String {
    let (master, slave) = (common::free_port(), common::free_port());
    let log = std::fs::File::create(home.with_extension("log")).unwrap();
    let _up = common::KillOnDrop(
        std::process::Command::new(common::bin())
            .args(["up", "--no-mount", "--data-dir"])
            .arg(home)
            .args(["--master-listen", &format!("127.0.0.1:{master}")])
            .args(["--slave-listen", &format!("127.0.0.1:{slave}")])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let cli = |args: &[&str]| {
        std::process::Command::new(common::bin())
            .args(args)
            .env("ELTON_HOME", home)
            .env("ELTON_MASTER", format!("https://127.0.0.1:{master}"))
            .env("ELTON_SLAVE", format!("http://127.0.0.1:{slave}"))
            .output()
            .unwrap()
    };
    wait_until("elton up", Duration::from_secs(30), || {
        cli(&["volume", "ls"]).status.success()
    });
    if let Some(v) = create {
        let out = cli(&["volume", "create", v]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let out = cli(&["volume", "ls"]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn phase5_elton_up_on_a_fresh_and_an_existing_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("elton");
    assert!(up_once(&home, Some("docs")).contains("docs"));
    let first = std::fs::read_to_string(home.join("master").join("identity")).unwrap();
    // The same directory again: same identity, same metadata.
    assert!(up_once(&home, None).contains("docs"));
    let again = std::fs::read_to_string(home.join("master").join("identity")).unwrap();
    assert_eq!(first, again);
}
