#![allow(clippy::unwrap_used)]
//! Issue 11, part 3: a scrub finds bytes that rotted on disk, in a slave's
//! store and in a mount's whole-file copies; afterwards neither HTTP nor a
//! mount (one that was already running, with the file open, or a new one)
//! returns the bad bytes.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Cluster, Mount, pseudo_random, wait_until};

const SMALL: usize = 300_000;
const BIG: usize = 6 << 20; // above the 4 MiB chunk threshold: a recipe

fn object_path(c: &Cluster, slave: usize, id: &str) -> PathBuf {
    c.slave_dir(slave)
        .join("objects")
        .join(&id[..2])
        .join(&id[2..])
}

/// Flips one byte of `path` in place (same inode), as a failing disk would
/// (the mtime changes too, which is what lets a mount notice it without a
/// scrub; phase 1 and 2 do not rely on that).
fn flip(path: &Path, at: u64) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0xff;
    f.write_all_at(&b, at).unwrap();
}

fn http_get(url: &str) -> (u16, Vec<u8>) {
    let r = reqwest::blocking::get(url).unwrap_or_else(|e| panic!("GET {url}: {e}"));
    (r.status().as_u16(), r.bytes().unwrap().to_vec())
}

fn held_on(c: &Cluster, slave: usize, id: &str) -> bool {
    reqwest::blocking::Client::new()
        .head(format!("{}/v1/objects/{id}", c.slave_url(slave)))
        .header("x-elton-local-only", "1")
        .send()
        .is_ok_and(|r| r.status() == 200)
}

/// Runs `elton scrub --json` with `args`; returns the exit status and the
/// summary.
fn scrub(c: &Cluster, args: &[&str]) -> (bool, serde_json::Value) {
    let mut all = vec!["scrub", "--json"];
    all.extend_from_slice(args);
    let out = c.cli(1, &all);
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "elton scrub {args:?}:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("scrub JSON: {e}"));
    (out.status.success(), v)
}

fn read_all(p: &Path) -> std::io::Result<Vec<u8>> {
    let mut v = Vec::new();
    File::open(p)?.read_to_end(&mut v)?;
    Ok(v)
}

fn live_holders(c: &Cluster, id: &str) -> usize {
    let id: elton_proto::ObjectId = id.parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        c.master_client()
            .await
            .locate(elton_proto::pb::LocateRequest {
                object: id.as_bytes().to_vec(),
            })
            .await
            .unwrap()
            .into_inner()
            .holders
            .len()
    })
}

struct World {
    c: Cluster,
    small: Vec<u8>,
    small_id: String,
    big: Vec<u8>,
}

fn world() -> World {
    let c = Cluster::new(2);
    let src = c.dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let small = pseudo_random(SMALL, 11);
    let big = pseudo_random(BIG, 12);
    fs::write(src.join("small.bin"), &small).unwrap();
    fs::write(src.join("big.bin"), &big).unwrap();
    c.ok(1, &["import", "--create", src.to_str().unwrap(), "v"]);
    let small_id = blake3::hash(&small).to_hex().to_string();
    // The master makes a backup copy on slave 2: the scrub's source.
    wait_until("backup copy on slave 2", Duration::from_secs(30), || {
        held_on(&c, 2, &small_id)
    });
    World {
        c,
        small,
        small_id,
        big,
    }
}

#[test]
fn phase1_a_rotten_store_object_is_found_repaired_and_never_served_again() {
    let w = world();
    let c = &w.c;
    let mnt = c.dir.path().join("mnt1");
    let m1 = Mount::new(c, 1, "v", &mnt, &c.slave_dir(1).join("mounts/m1"), &[]);
    assert_eq!(read_all(&m1.path("small.bin")).unwrap(), w.small);
    // A reader that keeps the file open across the rot and the scrub.
    let mut held = File::open(m1.path("small.bin")).unwrap();
    let mut first = Vec::new();
    held.read_to_end(&mut first).unwrap();
    assert_eq!(first, w.small);

    flip(&object_path(c, 1, &w.small_id), 1000);
    let (ok, s) = scrub(c, &[]);
    assert!(ok, "every bad object was repaired");
    assert_eq!(s["bad"], 1, "{s}");
    assert_eq!(s["repaired"], 1, "{s}");
    assert!(s["objects"].as_u64().unwrap() >= 4, "{s}");
    assert_eq!(s["slaves"][0]["bad_objects"][0], w.small_id.as_str());
    // The bad bytes are kept aside as evidence; the store holds good ones.
    let corrupt = fs::read_dir(c.slave_dir(1).join("corrupt"))
        .unwrap()
        .count();
    assert_eq!(corrupt, 1);
    let stored = fs::read(object_path(c, 1, &w.small_id)).unwrap();
    assert_eq!(stored, w.small);

    // HTTP: the good bytes.
    let (code, body) = http_get(&format!("{}/v1/volumes/v/1/small.bin", c.slave_url(1)));
    assert_eq!((code, body == w.small), (200, true));
    // The descriptor opened before the rot reads the good bytes again (its
    // inode was emptied at once, then refilled from the repaired copy).
    held.seek(SeekFrom::Start(0)).unwrap();
    let mut again = Vec::new();
    held.read_to_end(&mut again).unwrap();
    assert!(again == w.small, "an open descriptor returned other bytes");
    drop(held);
    // A new open in the running mount, and a new mount.
    assert_eq!(read_all(&m1.path("small.bin")).unwrap(), w.small);
    let mnt2 = c.dir.path().join("mnt2");
    let m2 = Mount::new(c, 1, "v", &mnt2, &c.dir.path().join("m2"), &[]);
    assert_eq!(read_all(&m2.path("small.bin")).unwrap(), w.small);
    // Both copies count again for the master.
    wait_until("two holders again", Duration::from_secs(10), || {
        live_holders(c, &w.small_id) == 2
    });
}

#[test]
fn phase2_a_rotten_mount_copy_is_found_and_never_served_again() {
    let w = world();
    let c = &w.c;
    let state = c.slave_dir(1).join("mounts/m1");
    let mnt = c.dir.path().join("mnt1");
    let m1 = Mount::new(c, 1, "v", &mnt, &state, &[]);
    // All chunks are local (imported here): the open assembles the file.
    assert_eq!(read_all(&m1.path("big.bin")).unwrap(), w.big);
    let copies: Vec<PathBuf> = fs::read_dir(state.join("assembled"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(copies.len(), 1, "{copies:?}");
    let mut held = File::open(m1.path("big.bin")).unwrap();

    flip(&copies[0], 5 << 20);
    let mut bad = w.big.clone();
    bad[5 << 20] ^= 0xff;
    let (ok, s) = scrub(c, &[]);
    assert!(ok);
    assert_eq!(s["mount_copies_bad"], 1, "{s}");
    assert_eq!(s["bad"], 0, "the store's chunks are fine: {s}");
    assert!(!copies[0].exists(), "the bad copy is gone");

    // The earlier descriptor no longer sees the bad bytes.
    held.seek(SeekFrom::Start(0)).unwrap();
    let mut seen = Vec::new();
    let _ = held.read_to_end(&mut seen);
    assert!(seen != bad, "an open descriptor returned the bad bytes");
    assert!(seen.is_empty() || seen == w.big);
    drop(held);
    // New opens: the good bytes (assembled again from verified chunks).
    wait_until("reassembled read", Duration::from_secs(10), || {
        read_all(&m1.path("big.bin")).is_ok_and(|b| b == w.big)
    });
    let (code, body) = http_get(&format!("{}/v1/volumes/v/1/big.bin", c.slave_url(1)));
    assert_eq!((code, body == w.big), (200, true));
}

#[test]
fn phase3_a_mount_checks_changed_files_itself_before_any_scrub() {
    let w = world();
    let c = &w.c;
    let state = c.slave_dir(1).join("mounts/m1");
    let mnt = c.dir.path().join("mnt1");
    let m1 = Mount::new(c, 1, "v", &mnt, &state, &[]);
    assert_eq!(read_all(&m1.path("small.bin")).unwrap(), w.small);
    assert_eq!(read_all(&m1.path("big.bin")).unwrap(), w.big);

    // Changed store object: the next open has the slave hash it again,
    // which quarantines it and fetches a good copy from slave 2.
    std::thread::sleep(Duration::from_millis(20));
    flip(&object_path(c, 1, &w.small_id), 7);
    assert_eq!(read_all(&m1.path("small.bin")).unwrap(), w.small);
    // Changed assembled copy: checked against the recipe, assembled again.
    let copy = fs::read_dir(state.join("assembled"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    flip(&copy, 3);
    assert_eq!(read_all(&m1.path("big.bin")).unwrap(), w.big);
}

#[test]
fn phase4_without_a_good_copy_nothing_serves_the_bad_bytes() {
    let w = world();
    let c = &w.c;
    let mnt = c.dir.path().join("mnt1");
    let m1 = Mount::new(c, 1, "v", &mnt, &c.dir.path().join("m1"), &[]);
    assert_eq!(read_all(&m1.path("small.bin")).unwrap(), w.small);

    flip(&object_path(c, 1, &w.small_id), 10);
    flip(&object_path(c, 2, &w.small_id), 20);
    let (ok, s) = scrub(c, &["--all"]);
    assert!(!ok, "unrepaired objects make the scrub fail");
    // Slave 1's repair asks slave 2 for its copy, which slave 2 hashes as
    // it serves it and quarantines: the scrub of slave 2 may find nothing.
    assert!(s["bad"].as_u64().unwrap() >= 1, "{s}");
    assert_eq!(s["repaired"], 0, "{s}");
    assert_eq!(s["slaves"].as_array().unwrap().len(), 2);
    for i in [1, 2] {
        let quarantined = fs::read_dir(c.slave_dir(i).join("corrupt"))
            .unwrap()
            .count();
        assert_eq!(quarantined, 1, "slave {i}");
    }
    // Both copies were withdrawn from the master.
    assert_eq!(live_holders(c, &w.small_id), 0);

    for i in [1, 2] {
        let (code, body) = http_get(&format!("{}/v1/volumes/v/1/small.bin", c.slave_url(i)));
        assert!(code >= 400, "slave {i}: HTTP {code}");
        assert!(body.len() < 1000, "slave {i} sent object bytes");
    }
    match read_all(&m1.path("small.bin")) {
        Ok(b) => assert!(b == w.small, "the mount returned other bytes"),
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}"),
    }
    // Quarantined copies are not scrubbed again: a second pass is clean.
    let (ok, s) = scrub(c, &["--all"]);
    assert!(ok);
    assert_eq!(s["bad"], 0, "{s}");
}

#[test]
fn phase5_scrub_needs_an_admin_token_and_a_known_node() {
    let w = world();
    let c = &w.c;
    let r = reqwest::blocking::Client::new()
        .post(format!("{}/v1/scrub", c.slave_url(1)))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    // A write token is not enough.
    let out = c.ok(
        1,
        &[
            "token", "create", "--name", "w", "--scope", "write", "--json",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let r = reqwest::blocking::Client::new()
        .post(format!("{}/v1/scrub", c.slave_url(1)))
        .bearer_auth(v["secret"].as_str().unwrap())
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().unwrap().contains("scrubbing needs admin"));
    assert_eq!(
        common::metric(&c.slave_url(1), "scrubbed_objects_total"),
        0,
        "nothing was scrubbed"
    );
    let out = c.cli(1, &["scrub", "--node", "no-such-node"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no node"));
    let (ok, s) = scrub(c, &["--node", "slave2"]);
    assert!(ok);
    assert_eq!(s["slaves"][0]["slave"], c.slave_url(2).as_str());
    // At least the backup copy `world` waited for (others may still be on
    // their way).
    assert!(s["objects"].as_u64().unwrap() >= 1, "{s}");
}

#[test]
fn phase6_a_rotten_manifest_is_refetched_by_a_new_mount_never_listed() {
    let c = Cluster::new(2);
    let src = c.dir.path().join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    let body = pseudo_random(1000, 13);
    fs::write(src.join("sub/a.bin"), &body).unwrap();
    c.ok(1, &["import", "--create", src.to_str().unwrap(), "v"]);
    // A directory's listing carries its manifest id as the ETag.
    let resp = reqwest::blocking::get(format!("{}/v1/volumes/v/1/sub/", c.slave_url(1))).unwrap();
    assert_eq!(resp.status(), 200);
    let sub_id = resp.headers()["etag"]
        .to_str()
        .unwrap()
        .trim_matches('"')
        .to_string();
    wait_until(
        "backup copy of the manifest on slave 2",
        Duration::from_secs(30),
        || held_on(&c, 2, &sub_id),
    );

    // The mount reads manifests from the store itself, hashing them as it
    // reads: for a rotten one it asks the slave, whose copy it hashes too
    // (here from the slave's memory: the listing above made it hot); the
    // bad bytes are never parsed.
    let manifest = object_path(&c, 1, &sub_id);
    flip(&manifest, 5);
    let mnt = c.dir.path().join("mnt1");
    let m1 = Mount::new(&c, 1, "v", &mnt, &c.dir.path().join("m1"), &[]);
    let names: Vec<_> = fs::read_dir(m1.path("sub"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["a.bin"]);
    assert_eq!(read_all(&m1.path("sub/a.bin")).unwrap(), body);
    // The scrub repairs the store's copy.
    let (ok, s) = scrub(&c, &[]);
    assert!(ok, "{s}");
    let stored = read_all(&manifest).unwrap();
    assert_eq!(blake3::hash(&stored).to_hex().as_str(), sub_id, "repaired");
}
