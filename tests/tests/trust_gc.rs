#![allow(clippy::unwrap_used)]
//! Garbage collection (issue 11, part 2): failed uploads and commits clean
//! up after themselves, `elton gc` gives the space of unreferenced objects
//! back, never deletes a referenced object while commits, imports and
//! mounts go on, and deletes nothing when a version cannot be walked.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Cluster, Mount, TOKEN, pseudo_random};
use elton_proto::ObjectId;

const MIB: u64 = 1 << 20;

/// A tmpfs mounted for the test, unmounted (lazily) on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size_mib: u64) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "mounting a tmpfs at {}", dir.display());
        Self(dir.to_path_buf())
    }

    /// Bytes in use on the filesystem.
    fn used(&self) -> u64 {
        let out = Command::new("stat")
            .args(["-f", "-c", "%b %f %S"])
            .arg(&self.0)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let n: Vec<u64> = text
            .split_whitespace()
            .map(|x| x.parse().unwrap())
            .collect();
        (n[0] - n[1]) * n[2]
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn gc_json(c: &Cluster, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["gc", "--json"];
    args.extend_from_slice(extra);
    serde_json::from_str(&c.ok(1, &args)).unwrap()
}

fn put_object(c: &Cluster, slave: usize, bytes: &[u8]) -> ObjectId {
    let id = ObjectId::of(bytes);
    let r = reqwest::blocking::Client::new()
        .put(format!("{}/v1/objects/{id}", c.slave_url(slave)))
        .bearer_auth(TOKEN)
        .body(bytes.to_vec())
        .send()
        .unwrap();
    assert!(r.status().is_success(), "PUT object: {}", r.status());
    id
}

fn put_file(c: &Cluster, slave: usize, volume: &str, path: &str, bytes: Vec<u8>) -> u16 {
    reqwest::blocking::Client::new()
        .put(format!("{}/v1/volumes/{volume}/{path}", c.slave_url(slave)))
        .bearer_auth(TOKEN)
        .timeout(Duration::from_secs(120))
        .body(bytes)
        .send()
        .map_or(0, |r| r.status().as_u16())
}

fn read(c: &Cluster, slave: usize, volume: &str, version: u64, path: &str) -> Vec<u8> {
    let url = format!(
        "{}/v1/volumes/{volume}/{version}/{path}",
        c.slave_url(slave)
    );
    let r = reqwest::blocking::get(&url).unwrap();
    assert!(r.status().is_success(), "GET {url}: {}", r.status());
    r.bytes().unwrap().to_vec()
}

fn objects_on(c: &Cluster, slave: usize) -> usize {
    common::files_under(&c.slave_dir(slave).join("objects")).len()
}

#[test]
fn phase1_failed_uploads_and_commit_on_a_full_disk_give_their_space_back() {
    let mut c = Cluster::with_args(
        0,
        &[
            "--replication",
            "1",
            "--gc-grace-ms",
            "1000",
            "--gc-interval-ms",
            "0",
        ],
        &[],
    );
    let fs = Tmpfs::mount(&c.slave_dir(1), 64);
    c.add_slave(&[]);
    let empty = fs.used();

    // v1: a 20 MiB file (chunked), referenced.
    let src = c.dir.path().join("src1");
    std::fs::create_dir_all(&src).unwrap();
    let big = pseudo_random(20 * MIB as usize, 1);
    std::fs::write(src.join("big"), &big).unwrap();
    c.ok(1, &["import", "--create", src.to_str().unwrap(), "space"]);
    let base = fs.used();
    assert!(base >= empty + 20 * MIB, "v1 stored");

    // Three uploads that cannot fit: each fails part-way and removes what
    // it stored.
    for i in 0..3 {
        let status = put_file(
            &c,
            1,
            "space",
            &format!("huge{i}"),
            pseudo_random(30 * MIB as usize, 10 + i),
        );
        assert!(
            status >= 400 || status == 0,
            "upload {i} should fail, got {status}"
        );
        assert!(
            fs.used() <= base + MIB,
            "upload {i} left {} bytes",
            fs.used() - base
        );
    }

    // A mount commit that runs out of space while chunking its file.
    let state = c.dir.path().join("state");
    let m = Mount::new(&c, 1, "space", &c.dir.path().join("mnt"), &state, &[]);
    std::fs::write(m.path("huge"), pseudo_random(50 * MIB as usize, 20)).unwrap();
    let out = m.elton(&["commit", m.mountpoint.to_str().unwrap(), "-m", "too big"]);
    assert!(
        !out.status.success(),
        "commit should fail for lack of space"
    );
    assert!(
        fs.used() <= base + MIB,
        "failed commit left {} bytes",
        fs.used() - base
    );
    drop(m);

    // Garbage only gc can find: objects uploaded for a commit that never
    // came, and a version dropped by retention.
    for i in 0..3 {
        put_object(&c, 1, &pseudo_random(4 * MIB as usize, 30 + i));
    }
    let src2 = c.dir.path().join("src2");
    std::fs::create_dir_all(&src2).unwrap();
    std::fs::write(src2.join("small"), b"small file").unwrap();
    c.ok(1, &["import", src2.to_str().unwrap(), "space"]);
    let out = c.ok(1, &["volume", "retention", "space", "--keep", "1"]);
    assert!(out.contains("versions 2..2"), "{out}");
    assert!(fs.used() >= base + 12 * MIB);
    std::thread::sleep(Duration::from_millis(1500));

    let before = fs.used();
    let dry = gc_json(&c, &["--dry-run"]);
    assert_eq!(dry["dry_run"], true);
    assert!(dry["deleted_bytes"].as_u64().unwrap() >= 32 * MIB, "{dry}");
    assert_eq!(fs.used(), before, "a dry run deletes nothing");

    let s = gc_json(&c, &[]);
    assert!(s["deleted_bytes"].as_u64().unwrap() >= 32 * MIB, "{s}");
    assert_eq!(s["nodes_swept"], serde_json::json!(["slave1"]), "{s}");
    assert!(
        fs.used() <= empty + MIB,
        "space back: {} bytes above the empty store",
        fs.used().saturating_sub(empty)
    );
    assert_eq!(read(&c, 1, "space", 2, "small"), b"small file");
    c.ok(1, &["fsck", "--check-files"]);
    // Nothing left to collect.
    let again = gc_json(&c, &[]);
    assert_eq!(again["deleted"], 0, "{again}");
}

/// What each published version must read back as: (volume, version) →
/// path → content.
type Expected = Arc<Mutex<BTreeMap<(String, u64), BTreeMap<String, Vec<u8>>>>>;

fn version_of(json: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    v["version"].as_u64().unwrap()
}

#[test]
fn phase2_gc_during_commits_imports_and_mounts_never_deletes_a_referenced_object() {
    let c = Arc::new(Cluster::with_args(
        2,
        &["--gc-grace-ms", "1000", "--gc-interval-ms", "0"],
        &[],
    ));
    let expected: Expected = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    c.ok(1, &["volume", "create", "imp"]);
    c.ok(1, &["volume", "create", "up", "--keep", "3"]);
    c.ok(1, &["volume", "create", "mnt"]);

    // Imports: a shared file, a changing file, and a chunked one every
    // third round.
    let importer = {
        let (c, expected, stop) = (c.clone(), expected.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut round = 0u64;
            while !stop.load(Ordering::Relaxed) {
                round += 1;
                let src = c.dir.path().join(format!("imp{round}"));
                std::fs::create_dir_all(src.join("sub")).unwrap();
                let mut files = BTreeMap::new();
                files.insert("shared".to_string(), b"shared by every version".to_vec());
                files.insert(
                    "sub/round".to_string(),
                    format!("round {round}").into_bytes(),
                );
                if round.is_multiple_of(3) {
                    files.insert(
                        "sub/big".to_string(),
                        pseudo_random(6 * MIB as usize, round),
                    );
                }
                for (p, b) in &files {
                    std::fs::write(src.join(p), b).unwrap();
                }
                let out = c.cli(1, &["import", src.to_str().unwrap(), "imp"]);
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                if out.status.success() {
                    let v: u64 = text
                        .split('@')
                        .nth(1)
                        .and_then(|t| t.split(|ch: char| !ch.is_ascii_digit()).next())
                        .and_then(|n| n.parse().ok())
                        .unwrap_or_else(|| panic!("version in {text:?}"));
                    expected.lock().unwrap().insert(("imp".into(), v), files);
                } else {
                    eprintln!("import failed: {}", String::from_utf8_lossy(&out.stderr));
                }
                let _ = std::fs::remove_dir_all(&src);
            }
        })
    };
    // One-file HTTP commits to a volume that keeps 3 versions: every
    // commit makes the oldest version's file garbage.
    let uploader = {
        let (c, expected, stop) = (c.clone(), expected.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut round = 0u64;
            let http = reqwest::blocking::Client::new();
            while !stop.load(Ordering::Relaxed) {
                round += 1;
                let body = pseudo_random(64 * 1024, 1000 + round);
                let r = http
                    .put(format!("{}/v1/volumes/up/f{}", c.slave_url(2), round % 4))
                    .bearer_auth(TOKEN)
                    .body(body.clone())
                    .send()
                    .unwrap();
                if r.status().is_success() {
                    let v = version_of(&r.text().unwrap());
                    let mut all = expected.lock().unwrap();
                    let mut files = v
                        .checked_sub(1)
                        .and_then(|p| all.get(&("up".to_string(), p)).cloned())
                        .unwrap_or_default();
                    files.insert(format!("f{}", round % 4), body);
                    all.insert(("up".into(), v), files);
                } else {
                    eprintln!("upload failed: {}", r.status());
                }
            }
        })
    };
    // A mount on slave 2 committing edits.
    let mounter = {
        let (c, expected, stop) = (c.clone(), expected.clone(), stop.clone());
        std::thread::spawn(move || {
            let m = Mount::new(
                &c,
                2,
                "mnt",
                &c.dir.path().join("mnt"),
                &c.dir.path().join("mnt-state"),
                &[],
            );
            let mut files = BTreeMap::new();
            let mut round = 0u64;
            while !stop.load(Ordering::Relaxed) {
                round += 1;
                let name = format!("m{}", round % 5);
                let body = pseudo_random(100_000 + round as usize, 5000 + round);
                std::fs::write(m.path(&name), &body).unwrap();
                let out = m.elton(&["commit", m.mountpoint.to_str().unwrap(), "-m", "edit"]);
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                assert!(
                    out.status.success(),
                    "mount commit: {text} {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                files.insert(name, body);
                let v: u64 = text
                    .split("mnt@")
                    .nth(1)
                    .and_then(|t| t.split(|ch: char| !ch.is_ascii_digit()).next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("version in {text:?}"));
                expected
                    .lock()
                    .unwrap()
                    .insert(("mnt".into(), v), files.clone());
            }
        })
    };

    let mut deleted = 0;
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(1200));
        let s = gc_json(&c, &["--grace-secs", "1"]);
        deleted += s["deleted"].as_u64().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    importer.join().unwrap();
    uploader.join().unwrap();
    mounter.join().unwrap();
    // Once more with everything quiet, then check every kept version.
    std::thread::sleep(Duration::from_millis(1200));
    deleted += gc_json(&c, &["--grace-secs", "1"])["deleted"]
        .as_u64()
        .unwrap();
    assert!(deleted > 0, "retention made garbage that gc removed");

    // Backup copies of the last commits may still be on their way.
    common::wait_until("fsck clean", Duration::from_secs(60), || {
        c.cli(1, &["fsck", "--check-files"]).status.success()
    });
    let all = expected.lock().unwrap().clone();
    let oldest_up = all
        .keys()
        .filter(|(v, _)| v == "up")
        .map(|(_, n)| *n)
        .max()
        .unwrap()
        .saturating_sub(2);
    let mut checked = 0;
    for ((volume, version), files) in &all {
        if volume == "up" && *version < oldest_up {
            continue; // dropped by retention
        }
        for (path, bytes) in files {
            for slave in [1, 2] {
                assert!(
                    read(&c, slave, volume, *version, path) == *bytes,
                    "{volume}@{version}:{path} through slave{slave}"
                );
            }
        }
        checked += 1;
    }
    eprintln!("{checked} versions read back through both slaves; gc deleted {deleted} objects");
    assert!(checked >= 6, "{checked} versions checked");
}

#[test]
fn phase3_a_version_that_cannot_be_walked_makes_gc_delete_nothing() {
    let mut c = Cluster::with_args(
        1,
        &[
            "--replication",
            "1",
            "--gc-grace-ms",
            "1000",
            "--gc-interval-ms",
            "0",
        ],
        &[],
    );
    let src = c.dir.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("sub/a"), b"a").unwrap();
    c.ok(1, &["import", "--create", src.to_str().unwrap(), "web"]);
    let garbage = put_object(&c, 1, b"unreferenced");

    // Only an admin may collect garbage.
    let out = c.ok(
        1,
        &[
            "token", "create", "--name", "w", "--scope", "write", "--json",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let writer = Command::new(common::bin())
        .args(["gc"])
        .env("ELTON_MASTER", c.master_url())
        .env("ELTON_TOKEN", v["secret"].as_str().unwrap())
        .env("ELTON_CA", c.ca_path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&writer.stderr);
    assert!(
        !writer.status.success() && err.contains("permission denied"),
        "{err}"
    );
    std::thread::sleep(Duration::from_millis(1500));

    // Lose the manifest of `sub/` on the only holder.
    let r = reqwest::blocking::get(format!("{}/v1/volumes/web/1/sub/", c.slave_url(1))).unwrap();
    let etag = r.headers()["etag"]
        .to_str()
        .unwrap()
        .trim_matches('"')
        .to_string();
    let sub: ObjectId = etag.parse().unwrap();
    let path = c
        .slave_dir(1)
        .join("objects")
        .join(&etag[..2])
        .join(&etag[2..]);
    std::fs::remove_file(&path).unwrap();
    // Restarted, so that no memory cache still serves it.
    c.slaves[0].restart();
    std::thread::sleep(Duration::from_millis(1000));
    let before = objects_on(&c, 1);

    let out = c.cli(1, &["gc"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "gc must refuse");
    assert!(
        err.contains("deleted nothing")
            && err.contains("web@1")
            && err.contains("sub/")
            && err.contains(&sub.to_string()),
        "{err}"
    );
    assert_eq!(objects_on(&c, 1), before, "nothing deleted");
    let stored = c
        .slave_dir(1)
        .join("objects")
        .join(&garbage.to_hex()[..2])
        .join(&garbage.to_hex()[2..]);
    assert!(
        stored.exists(),
        "the garbage object stays until the tree is whole"
    );

    // With the manifest back (re-imported), gc proceeds.
    c.ok(1, &["import", src.to_str().unwrap(), "web"]);
    let s = gc_json(&c, &[]);
    assert_eq!(s["deleted"], 1, "{s}");
    assert!(!stored.exists());

    // The only holder unreachable (killed, not yet marked down): the trees
    // cannot be read, so again nothing is decided.
    c.slaves[0].kill9();
    let out = c.cli(1, &["gc"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "gc must refuse");
    assert!(
        err.contains("deleted nothing") && err.contains("web@1") && err.contains("slave1"),
        "{err}"
    );
}

#[test]
fn phase4_the_background_run_collects_by_itself() {
    let c = Cluster::with_args(
        1,
        &[
            "--replication",
            "1",
            "--gc-grace-ms",
            "500",
            "--gc-interval-ms",
            "1500",
        ],
        &[],
    );
    let src = c.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("kept"), b"referenced").unwrap();
    c.ok(1, &["import", "--create", src.to_str().unwrap(), "bg"]);
    let garbage = put_object(&c, 1, b"left behind by a commit that never came");
    let hex = garbage.to_hex();
    let stored = c
        .slave_dir(1)
        .join("objects")
        .join(&hex[..2])
        .join(&hex[2..]);
    common::wait_until("background gc", Duration::from_secs(30), || {
        !stored.exists()
    });
    assert_eq!(read(&c, 1, "bg", 1, "kept"), b"referenced");
    assert!(c.master.log_text().contains("periodic gc done"));
}
