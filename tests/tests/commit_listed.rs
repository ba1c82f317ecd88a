#![allow(clippy::unwrap_used)]
//! A commit whose writer lists what it stored on the slave (`POST
//! /v1/volumes/V/versions` with `stored` and `manifests`, as a mount's
//! commit sends): the slave announces what of the list it holds and leaves
//! the tree check to the master, which refuses a bad tree just the same
//! (`docs/formats.md`, the slave's HTTP API).

mod common;

use std::fs;

use common::{Cluster, Mount, TOKEN, metric};

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::new()
}

fn put_object(c: &Cluster, bytes: &[u8]) -> String {
    let id = blake3::hash(bytes).to_hex().to_string();
    let r = http()
        .put(format!("{}/v1/objects/{id}", c.slave_url(1)))
        .bearer_auth(TOKEN)
        .body(bytes.to_vec())
        .send()
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    id
}

/// A root manifest holding one file `f` whose content is `object`.
fn root_naming(object: &str, size: u64) -> Vec<u8> {
    format!(
        r#"{{"format":1,"entries":[{{"name":"f","type":"file","mode":420,"uid":0,"gid":0,"size":{size},"mtime":0,"object":"{object}"}}]}}"#
    )
    .into_bytes()
}

fn commit(c: &Cluster, body: serde_json::Value) -> (u16, String) {
    let r = http()
        .post(format!("{}/v1/volumes/v/versions", c.slave_url(1)))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .unwrap();
    (r.status().as_u16(), r.text().unwrap())
}

fn versions(c: &Cluster) -> usize {
    c.ok(1, &["log", "v", "--json"]).lines().count()
}

#[test]
fn commit_listed() {
    let c = Cluster::new(2);
    let src = c.dir.path().join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("d/a"), b"a").unwrap();
    c.ok(1, &["import", "--create", src.to_str().unwrap(), "v"]);
    phase1_a_mount_commit_is_checked_by_the_master_alone(&c);
    phase2_what_the_slave_no_longer_checks_the_master_refuses(&c);
    phase3_bad_lists_are_refused(&c);
}

fn phase1_a_mount_commit_is_checked_by_the_master_alone(c: &Cluster) {
    let s1 = c.slave_url(1);
    let checks = metric(&s1, "commit_tree_checks_total");
    let commits = metric(&s1, "commits_total");
    let state = c.dir.path().join("state");
    let m = Mount::new(c, 1, "v", &c.dir.path().join("mnt"), &state, &[]);
    fs::write(m.path("d/new"), b"new file\n").unwrap();
    fs::create_dir(m.path("e")).unwrap();
    fs::write(m.path("e/deeper"), b"deeper\n").unwrap();
    let out = m.elton(&["commit", m.mountpoint.to_str().unwrap(), "-m", "listed"]);
    assert!(out.status.success(), "{}", common::text(&out));
    drop(m);
    assert_eq!(metric(&s1, "commits_total"), commits + 1);
    assert_eq!(
        metric(&s1, "commit_tree_checks_total"),
        checks,
        "the mount listed what it stored: the slave did not check the tree"
    );
    // Slave 1 announced what it stored: slave 2 finds it through the
    // master.
    assert_eq!(c.ok(2, &["cat", "v:d/new"]), "new file\n");
    assert_eq!(c.ok(2, &["cat", "v:e/deeper"]), "deeper\n");
}

fn phase2_what_the_slave_no_longer_checks_the_master_refuses(c: &Cluster) {
    let s1 = c.slave_url(1);
    let checks = metric(&s1, "commit_tree_checks_total");
    let before = versions(c);
    let head = before as u64;

    // A file no node holds, listed as stored: this slave does not hold it,
    // so it does not announce it, and the master's check refuses the tree.
    let nowhere = blake3::hash(b"stored nowhere").to_hex().to_string();
    let root = put_object(c, &root_naming(&nowhere, 14));
    let (status, body) = commit(
        c,
        serde_json::json!({"parent": head, "root": root, "stored": [root, nowhere], "manifests": [root]}),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("which no node holds"), "{body}");
    assert!(body.contains(&nowhere), "{body}");

    // A malformed manifest: the master decodes what the slave sent.
    let junk = put_object(c, br#"{"format":1,"entries":[{"name":"../x"}]}"#);
    let (status, body) = commit(
        c,
        serde_json::json!({"parent": head, "root": junk, "stored": [junk], "manifests": [junk]}),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("malformed manifest"), "{body}");

    // A stale parent is a conflict, as without the list.
    let file = put_object(c, b"fine");
    let root = put_object(c, &root_naming(&file, 4));
    let (status, body) = commit(
        c,
        serde_json::json!({"parent": head - 1, "root": root, "stored": [root, file], "manifests": [root]}),
    );
    assert_eq!(status, 409, "{body}");

    assert_eq!(versions(c), before, "nothing was published");
    assert_eq!(metric(&s1, "commit_tree_checks_total"), checks);

    // The same tree on the head is fine, and served by the other slave.
    let (status, body) = commit(
        c,
        serde_json::json!({"parent": head, "root": root, "stored": [root, file], "manifests": [root]}),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(versions(c), before + 1);
    assert_eq!(c.ok(2, &["cat", "v:f"]), "fine");
}

fn phase3_bad_lists_are_refused(c: &Cluster) {
    let before = versions(c);
    let head = before as u64;
    let file = put_object(c, b"listed");
    let root = put_object(c, &root_naming(&file, 6));

    let (status, body) = commit(
        c,
        serde_json::json!({"parent": head, "root": root, "manifests": [root]}),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("only taken with `stored`"), "{body}");

    let many = vec![root.clone(); 8193];
    let (status, body) = commit(
        c,
        serde_json::json!({"parent": head, "root": root, "stored": many}),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("more than 8192"), "{body}");

    let (status, body) = commit(
        c,
        serde_json::json!({"parent": head, "root": root, "stored": ["not-an-id"]}),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("commit body"), "{body}");

    // A root this slave does not store, listed or not.
    let elsewhere = blake3::hash(b"a root stored nowhere").to_hex().to_string();
    let (status, body) = commit(
        c,
        serde_json::json!({"parent": head, "root": elsewhere, "stored": [elsewhere], "manifests": [elsewhere]}),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("is not stored on this slave"), "{body}");

    assert_eq!(versions(c), before, "nothing was published");
}
