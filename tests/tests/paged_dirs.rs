#![allow(clippy::unwrap_used)]
//! Large directories stored as pages (`docs/paged-manifests.md`), end to
//! end: import writes them, a mount reads and commits them rewriting only
//! the pages a change falls in, `elton diff`, garbage collection and fsck
//! see every page, and a cold read from another cluster follows a path
//! through an index.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::time::Duration;

use common::{Cluster, Mount, Pki, TOKEN, free_port};
use elton_proto::ObjectId;
use elton_proto::paged::{DirIndex, Listing, decode_dir};
use elton_tests::link::Link;

const FILES: usize = 1000;

fn content(i: usize) -> String {
    format!("file {i}\n")
}

/// A tree with a large directory `big/` and a small one.
fn source(c: &Cluster) -> std::path::PathBuf {
    let src = c.dir.path().join("src");
    fs::create_dir_all(src.join("big")).unwrap();
    fs::create_dir_all(src.join("small")).unwrap();
    for i in 0..FILES {
        fs::write(src.join(format!("big/f{i:04}")), content(i)).unwrap();
    }
    fs::write(src.join("small/a"), b"a").unwrap();
    fs::write(src.join("top"), b"top").unwrap();
    src
}

/// Imports `src` as version 1 of a new volume `vol`.
fn import_v1(c: &Cluster, src: &std::path::Path) {
    c.ok(
        1,
        &[
            "import",
            src.to_str().unwrap(),
            "vol",
            "--create",
            "-m",
            "v1",
        ],
    );
}

fn object(c: &Cluster, id: ObjectId) -> Vec<u8> {
    let r = reqwest::blocking::Client::new()
        .get(format!("{}/v1/objects/{id}", c.slave_url(1)))
        .bearer_auth(TOKEN)
        .send()
        .unwrap();
    assert!(r.status().is_success(), "GET object {id}: {}", r.status());
    let bytes = r.bytes().unwrap().to_vec();
    assert_eq!(ObjectId::of(&bytes), id);
    bytes
}

fn root_of(c: &Cluster, volume: &str, version: u64) -> ObjectId {
    // One JSON record a line, newest first.
    let log = c.ok(1, &["log", volume, "--json"]);
    let record: serde_json::Value = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["version"] == version)
        .unwrap_or_else(|| panic!("no version {version} in {log}"));
    record["root"].as_str().unwrap().parse().unwrap()
}

/// The index of `big/` in a version.
fn big_index(c: &Cluster, volume: &str, version: u64) -> DirIndex {
    let Listing::Whole(root) = decode_dir(&object(c, root_of(c, volume, version))).unwrap() else {
        panic!("the root is small");
    };
    let big = root.get("big").unwrap().object.unwrap();
    match decode_dir(&object(c, big)).unwrap() {
        Listing::Paged(index) => index,
        Listing::Whole(m) => panic!("big/ is one manifest of {} entries", m.entries.len()),
    }
}

fn names(dir: &std::path::Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

#[test]
fn phase1_import_mount_commit_diff_gc_and_fsck_through_pages() {
    let c = Cluster::with_args(1, &["--gc-grace-ms", "1000", "--gc-interval-ms", "0"], &[]);
    let src = source(&c);
    import_v1(&c, &src);

    // Import wrote big/ as an index of pages; the small directories whole.
    let v1 = big_index(&c, "vol", 1);
    assert_eq!(v1.entries, FILES as u64);
    assert!(v1.pages.len() >= 4, "{} pages", v1.pages.len());
    let listed = c.ok(1, &["ls", "vol:big"]);
    assert_eq!(listed.lines().count(), FILES, "{listed}");
    assert_eq!(c.ok(1, &["cat", "vol:big/f0500"]), content(500));

    // A mount lists and reads it; a commit of three changes rewrites the
    // pages they fall in, not the directory.
    let state = c.dir.path().join("state");
    let m = Mount::new(&c, 1, "vol", &c.dir.path().join("mnt"), &state, &[]);
    let big = m.path("big");
    assert_eq!(names(&big).len(), FILES);
    assert_eq!(fs::read_to_string(big.join("f0777")).unwrap(), content(777));
    fs::write(big.join("f0500"), b"changed\n").unwrap();
    fs::write(big.join("f0500a"), b"added\n").unwrap();
    fs::remove_file(big.join("f0001")).unwrap();
    let out = m.elton(&["commit", m.mountpoint.to_str().unwrap(), "-m", "three"]);
    assert!(out.status.success(), "{}", common::text(&out));
    let v2 = big_index(&c, "vol", 2);
    assert_eq!(v2.entries, FILES as u64);
    let new_pages = v2.pages.iter().filter(|p| !v1.pages.contains(p)).count();
    assert!(
        (1..=4).contains(&new_pages),
        "{new_pages} of {} pages rewritten",
        v2.pages.len()
    );
    // What the mount shows after the commit is the new version.
    assert_eq!(fs::read_to_string(big.join("f0500")).unwrap(), "changed\n");
    assert_eq!(fs::read_to_string(big.join("f0500a")).unwrap(), "added\n");
    assert!(!big.join("f0001").exists());
    assert_eq!(names(&big).len(), FILES);
    // Version 3 adds a file whose content is the bytes of one of big/'s
    // pages: the same id is then a file's object and a page, and the
    // collection below must still mark the files that page names.
    let page = v2.pages[v2.page_of("f0777")].manifest;
    fs::write(m.path("page-copy"), object(&c, page)).unwrap();
    let out = m.elton(&["commit", m.mountpoint.to_str().unwrap(), "-m", "copy"]);
    assert!(out.status.success(), "{}", common::text(&out));
    assert_eq!(big_index(&c, "vol", 3), v2);
    drop(m);

    let diff = c.ok(1, &["diff", "vol", "1", "2"]);
    let mut lines: Vec<&str> = diff.lines().collect();
    lines.sort();
    assert_eq!(lines.len(), 3, "{diff}");
    for path in ["big/f0001", "big/f0500", "big/f0500a"] {
        assert!(diff.contains(path), "{path} not in {diff}");
    }

    // Versions 1 and 2 dropped and collected: every page of version 3
    // (big/ is version 2's) stays, and a fresh mount reads every file.
    c.ok(1, &["volume", "retention", "vol", "--keep", "1"]);
    std::thread::sleep(Duration::from_millis(1500));
    let gc: serde_json::Value = serde_json::from_str(&c.ok(1, &["gc", "--json"])).unwrap();
    assert!(gc["deleted"].as_u64().unwrap() > 0, "{gc}");
    c.ok(1, &["fsck", "--check-files"]);
    for p in &v2.pages {
        object(&c, p.manifest);
    }
    let m = Mount::new(
        &c,
        1,
        "vol",
        &c.dir.path().join("mnt2"),
        &c.dir.path().join("state2"),
        &[],
    );
    let big = m.path("big");
    let seen = names(&big);
    assert_eq!(seen.len(), FILES);
    assert_eq!(fs::read(m.path("page-copy")).unwrap(), object(&c, page));
    for name in &seen {
        let got = fs::read_to_string(big.join(name)).unwrap();
        let want = match name.as_str() {
            "f0500" => "changed\n".to_string(),
            "f0500a" => "added\n".to_string(),
            n => content(n[1..].parse().unwrap()),
        };
        assert_eq!(got, want, "big/{name}");
    }
}

#[test]
fn phase2_a_cold_read_from_another_cluster_goes_through_the_index() {
    let (pa, pb) = (free_port(), free_port());
    let to_a = Link::start(([127, 0, 0, 1], pa).into()).unwrap();
    let to_b = Link::start(([127, 0, 0, 1], pb).into()).unwrap();
    let (pki_a, pki_b) = (Pki::new("alpha"), Pki::new("beta"));
    let a = Cluster::federated(1, pki_a, pa, &[(&pki_b, to_b.url())]);
    let b = Cluster::federated(1, pki_b, pb, &[(a.pki(), to_a.url())]);
    let src = source(&a);
    import_v1(&a, &src);

    for i in [123, 999] {
        let url = format!("{}/v1/volumes/vol/1/big/f{i:04}", b.slave_url(1));
        let r = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap()
            .get(&url)
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "GET {url}");
        assert_eq!(r.text().unwrap(), content(i));
    }
    let listed = b.ok(1, &["ls", "vol:big"]);
    assert_eq!(listed.lines().count(), FILES);
}
