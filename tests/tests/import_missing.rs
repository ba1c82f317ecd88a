#![allow(clippy::unwrap_used)]
//! `elton import` sends only the objects the slave lacks
//! (`POST /v1/objects/missing`, issue 16): an unchanged tree sends nothing,
//! an object lost from the slave's disk is sent again, and the call itself
//! refuses bad bodies and unauthenticated callers.

mod common;

use std::fs;

use common::{Cluster, TOKEN, metric, pseudo_random};
use elton_proto::ObjectId;
use elton_proto::batch::{MAX_IDS, decode_ids, encode_ids};

fn uploaded(c: &Cluster) -> (u64, u64) {
    (
        metric(&c.slave_url(1), "objects_uploaded_total"),
        metric(&c.slave_url(1), "uploaded_bytes_total"),
    )
}

fn ask(c: &Cluster, token: Option<&str>, body: Vec<u8>) -> reqwest::blocking::Response {
    let mut req = reqwest::blocking::Client::new()
        .post(format!("{}/v1/objects/missing", c.slave_url(1)))
        .body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().unwrap()
}

#[test]
fn phase1_reimport_sends_only_what_the_slave_lacks() {
    let c = Cluster::new(1);
    let src = c.dir.path().join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    for i in 0..20u64 {
        fs::write(src.join(format!("sub/f{i}")), pseudo_random(3000, i)).unwrap();
    }
    fs::write(src.join("top"), b"top file").unwrap();
    c.ok(1, &["import", "--create", src.to_str().unwrap(), "vol"]);
    let first = uploaded(&c);
    assert!(first.0 >= 23, "files and manifests were sent: {first:?}");

    // Unchanged: nothing is sent, no version is made.
    c.ok(1, &["import", src.to_str().unwrap(), "vol"]);
    assert_eq!(uploaded(&c), first, "an unchanged tree sends nothing");

    // One file changed: only it and the manifests above it travel.
    fs::write(src.join("sub/f3"), b"changed").unwrap();
    let out = c.ok(1, &["import", src.to_str().unwrap(), "vol"]);
    assert!(out.contains("vol@2"), "{out}");
    let after = uploaded(&c);
    assert_eq!(
        after.0 - first.0,
        3,
        "the file, sub/ and the root: {after:?}"
    );

    // A file lost from the slave's disk is sent again by a re-import.
    let lost = ObjectId::of(&pseudo_random(3000, 7));
    let hex = lost.to_hex();
    let path = c
        .slave_dir(1)
        .join("objects")
        .join(&hex[..2])
        .join(&hex[2..]);
    fs::remove_file(&path).unwrap();
    c.ok(1, &["import", src.to_str().unwrap(), "vol"]);
    assert_eq!(uploaded(&c).0 - after.0, 1, "only the lost object");
    assert_eq!(fs::read(&path).unwrap(), pseudo_random(3000, 7));
    // Exit 0: every version reads whole, every object verifies.
    c.ok(1, &["fsck", "--check-files"]);
}

#[test]
fn phase2_the_missing_call_answers_from_disk_and_refuses_bad_bodies() {
    let c = Cluster::new(1);
    let src = c.dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), b"stored").unwrap();
    c.ok(1, &["import", "--create", src.to_str().unwrap(), "v"]);
    let stored = ObjectId::of(b"stored");
    let absent = ObjectId::of(b"never stored");

    let r = ask(&c, Some(TOKEN), encode_ids(&[absent, stored, absent]));
    assert_eq!(r.status(), 200);
    let body = r.bytes().unwrap();
    assert_eq!(decode_ids(&body, 3).unwrap(), vec![absent, absent]);

    let r = ask(&c, Some(TOKEN), Vec::new());
    assert_eq!(r.status(), 200);
    assert!(r.bytes().unwrap().is_empty());

    let r = ask(&c, None, encode_ids(&[stored]));
    assert_eq!(r.status(), 401);

    let r = ask(&c, Some(TOKEN), vec![0u8; 33]);
    assert_eq!(r.status(), 400);
    assert!(r.text().unwrap().contains("not a whole number"));

    let r = ask(&c, Some(TOKEN), vec![0u8; (MAX_IDS + 1) * 32]);
    assert_eq!(r.status(), 413);
}
