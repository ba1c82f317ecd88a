#![allow(clippy::unwrap_used)]
//! Storage core, end to end: a master and slaves as real processes.
//! Phases follow the storage-core issue's "must show" list.

mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use common::{Cluster, TOKEN, files_under, metric, pseudo_random, raw_http, url_path, wait_until};

/// nested dirs, an empty dir, a symlink, a 0-byte file, a 20 MiB file,
/// non-ASCII names.
fn sample_tree(root: &Path) {
    fs::create_dir_all(root.join("a/b/c")).unwrap();
    fs::create_dir_all(root.join("empty")).unwrap();
    fs::create_dir_all(root.join("données/日本語")).unwrap();
    fs::write(root.join("index.html"), b"<h1>hello elton</h1>\n").unwrap();
    fs::write(root.join("a/b/c/deep.txt"), b"deep\n").unwrap();
    fs::write(root.join("a/zero"), b"").unwrap();
    fs::write(root.join("données/日本語/ファイル.txt"), "こんにちは\n").unwrap();
    fs::write(root.join("a/copy.html"), b"<h1>hello elton</h1>\n").unwrap();
    fs::write(root.join("big.bin"), pseudo_random(20 << 20, 1)).unwrap();
    std::os::unix::fs::symlink("a/b/c/deep.txt", root.join("link")).unwrap();
}

fn get(url: &str) -> reqwest::blocking::Response {
    reqwest::blocking::get(url).unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

#[test]
fn phase1_import_on_one_slave_read_everything_from_another() {
    // No backup copies: every read on slave 2 must go through fetch on miss.
    let c = Cluster::with_args(2, &["--replication", "1"], &[]);
    let src = c.dir.path().join("src");
    sample_tree(&src);
    c.ok(
        1,
        &[
            "import",
            "--create",
            src.to_str().unwrap(),
            "web",
            "-m",
            "first",
        ],
    );

    let scan = eltonfs::walk::scan(&src, eltonfs::chunking::DEFAULT_THRESHOLD, &|_| {}).unwrap();
    // big.bin (20 MiB) is chunked: a recipe and its chunks.
    let objects =
        (scan.files.len() + scan.chunks.len() + scan.recipes.len() + scan.manifests.len()) as u64;
    let s2 = c.slave_url(2);
    let files = files_under(&src);
    assert_eq!(files.len(), 6);
    for round in 0..2 {
        for f in &files {
            let url = format!("{s2}/v1/volumes/web/1/{}", url_path(f));
            let resp = get(&url);
            assert_eq!(resp.status(), 200, "{url}");
            assert_eq!(
                resp.bytes().unwrap().as_ref(),
                fs::read(src.join(f)).unwrap(),
                "{f:?} round {round}"
            );
        }
        // Every manifest on the way and every distinct file object, once.
        assert!(metric(&s2, "objects_fetched_total") <= objects);
        if round == 0 {
            assert!(metric(&s2, "objects_fetched_total") >= 6);
        }
    }
    let fetched = metric(&s2, "objects_fetched_total");
    for f in &files {
        get(&format!("{s2}/v1/volumes/web/1/{}", url_path(f)));
    }
    assert_eq!(
        metric(&s2, "objects_fetched_total"),
        fetched,
        "second reads come from the store"
    );

    // Directory listings, the empty dir and the symlink.
    let root: serde_json::Value = get(&format!("{s2}/v1/volumes/web/1/")).json().unwrap();
    let names: Vec<&str> = root["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["a", "big.bin", "données", "empty", "index.html", "link"]
    );
    let empty: serde_json::Value = get(&format!("{s2}/v1/volumes/web/1/empty")).json().unwrap();
    assert_eq!(empty["entries"].as_array().unwrap().len(), 0);
    let link: serde_json::Value = get(&format!("{s2}/v1/volumes/web/1/link")).json().unwrap();
    assert_eq!(link["target"], "a/b/c/deep.txt");

    // CDN semantics: ETag, immutable, Range, If-None-Match, HEAD, latest.
    let client = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let url = format!("{s2}/v1/volumes/web/1/big.bin");
    let full = client.get(&url).send().unwrap();
    let etag = full.headers()["etag"].to_str().unwrap().to_string();
    assert_eq!(
        full.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
    let part = client
        .get(&url)
        .header("Range", "bytes=100-199")
        .send()
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(
        part.headers()["content-range"],
        format!("bytes 100-199/{}", 20 << 20).as_str()
    );
    assert_eq!(
        part.bytes().unwrap().as_ref(),
        &pseudo_random(20 << 20, 1)[100..200]
    );
    let cached = client
        .get(&url)
        .header("If-None-Match", &etag)
        .send()
        .unwrap();
    assert_eq!(cached.status(), 304);
    let head = client.head(&url).send().unwrap();
    assert_eq!(
        head.headers()["content-length"],
        (20u64 << 20).to_string().as_str()
    );
    let latest = client
        .get(format!("{s2}/v1/volumes/web/latest/index.html"))
        .send()
        .unwrap();
    assert_eq!(latest.status(), 307);
    assert_eq!(latest.headers()["location"], "/v1/volumes/web/1/index.html");
    let obj = client
        .get(format!("{s2}/v1/objects/{}", etag.trim_matches('"')))
        .send()
        .unwrap();
    // The ETag of a chunked file names its recipe, an ordinary object.
    let recipe = elton_proto::Recipe::decode(&obj.bytes().unwrap()).unwrap();
    assert_eq!(recipe.size, 20 << 20);

    // The CLI reads the same bytes.
    assert_eq!(
        c.ok(2, &["cat", "web@1:données/日本語/ファイル.txt"]),
        "こんにちは\n"
    );
    assert!(c.ok(2, &["ls", "web:a"]).contains("copy.html"));
}

#[test]
fn phase2_master_kill9_loses_nothing_and_numbers_continue() {
    let mut c = Cluster::new(1);
    let src = c.dir.path().join("src");
    sample_tree(&src);
    c.ok(1, &["import", "--create", src.to_str().unwrap(), "vol"]);
    let s1 = c.slave_url(1);
    let put = |c: &Cluster, path: &str, body: &str| {
        reqwest::blocking::Client::new()
            .put(format!("{}/v1/volumes/vol/{path}", c.slave_url(1)))
            .bearer_auth(TOKEN)
            .body(body.to_string())
            .send()
            .unwrap()
    };
    assert_eq!(put(&c, "second.txt", "two").status(), 201);

    c.master.restart();
    let log = c.ok(1, &["log", "vol"]);
    assert!(
        log.contains("version 2") && log.contains("version 1"),
        "{log}"
    );
    // Locations survived: a new slave can fetch what only slave1 holds.
    c.add_slave(&[]);
    let s2 = c.slave_url(2);
    let body = get(&format!("{s2}/v1/volumes/vol/2/second.txt"))
        .text()
        .unwrap();
    assert_eq!(body, "two");
    assert_eq!(
        get(&format!("{s2}/v1/volumes/vol/1/big.bin"))
            .bytes()
            .unwrap()
            .len(),
        20 << 20
    );

    let resp = put(&c, "third.txt", "three");
    assert_eq!(resp.status(), 201);
    let record: serde_json::Value = resp.json().unwrap();
    assert_eq!(record["version"], 3, "no gap, no repeat after restart");
    assert_eq!(
        get(&format!("{s1}/v1/volumes/vol/3/third.txt"))
            .text()
            .unwrap(),
        "three"
    );
}

#[test]
fn phase3_concurrent_commits_on_one_parent_exactly_one_wins() {
    let c = Cluster::new(1);
    let src = c.dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"base").unwrap();
    c.ok(1, &["import", "--create", src.to_str().unwrap(), "race"]);
    let s1 = c.slave_url(1);
    let results: Vec<(u16, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let url = format!("{s1}/v1/volumes/race/file{i}?parent=1");
                s.spawn(move || {
                    let r = reqwest::blocking::Client::new()
                        .put(url)
                        .bearer_auth(TOKEN)
                        .body(format!("writer {i}"))
                        .send()
                        .unwrap();
                    (r.status().as_u16(), r.text().unwrap())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let wins = results.iter().filter(|(s, _)| *s == 201).count();
    assert_eq!(wins, 1, "{results:?}");
    for (status, body) in results.iter().filter(|(s, _)| *s != 201) {
        assert_eq!(*status, 409, "{body}");
        assert!(body.contains("is at version 2, not 1"), "{body}");
    }
    // A stale import gets the same clear conflict and publishes nothing.
    let out = c.cli(
        1,
        &["import", "--parent", "1", src.to_str().unwrap(), "race"],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("conflict") && err.contains("version 2"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one-line error: {err}");
    assert!(!c.ok(1, &["log", "race"]).contains("version 3"));
}

/// Overwrites an object file in place with different bytes of equal length.
fn corrupt(slave_dir: &Path, id: &str) {
    let path = slave_dir.join("objects").join(&id[..2]).join(&id[2..]);
    let mut bytes = fs::read(&path).unwrap();
    bytes[0] ^= 0xff;
    // Make sure the change is visible in mtime even on coarse clocks.
    std::thread::sleep(Duration::from_millis(20));
    fs::write(&path, bytes).unwrap();
}

#[test]
fn phase4_corrupt_objects_are_never_served() {
    let c = Cluster::new(2);
    let src = c.dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let content = pseudo_random(300_000, 7);
    fs::write(src.join("data.bin"), &content).unwrap();
    c.ok(1, &["import", "--create", src.to_str().unwrap(), "v"]);
    let id = blake3::hash(&content).to_hex().to_string();
    let (s1, s2) = (c.slave_url(1), c.slave_url(2));
    let url2 = format!("{s2}/v1/volumes/v/1/data.bin");
    assert_eq!(get(&url2).bytes().unwrap().as_ref(), content.as_slice());

    // Corrupt on slave 2: detected, quarantined, refetched from slave 1.
    corrupt(&c.slave_dir(2), &id);
    assert_eq!(get(&url2).bytes().unwrap().as_ref(), content.as_slice());
    assert_eq!(metric(&s2, "corrupt_objects_total"), 1);

    // Corrupt everywhere: a clear error, never the bad bytes. Which error
    // depends on a race: the replicator, which saw slave 2's first copy
    // quarantined, may have a backup copy to slave 2 in flight. If that
    // copy reaches slave 1's bad copy first, the master already knows no
    // live node holds the object when the read's fetch asks (404, "no live
    // node holds"); otherwise the read's fetch is the one that finds it bad
    // (502).
    corrupt(&c.slave_dir(1), &id);
    corrupt(&c.slave_dir(2), &id);
    let resp = get(&url2);
    let status = resp.status().as_u16();
    let body = resp.text().unwrap();
    assert!(status == 502 || status == 404, "{status}: {body}");
    assert!(body.contains("error"), "{body}");
    // Both copies are now quarantined: asking slave 1 is a clear "gone".
    let resp = get(&format!("{s1}/v1/objects/{id}"));
    assert_eq!(resp.status(), 404);
    assert!(resp.text().unwrap().contains("no live node holds object"));
    for i in [1, 2] {
        assert!(
            fs::read_dir(c.slave_dir(i).join("corrupt"))
                .unwrap()
                .count()
                >= 1
        );
    }
}

#[test]
fn phase5_bad_input_gets_clear_errors_and_changes_nothing() {
    let c = Cluster::with_slave_args(1, &["--max-upload-bytes", "1048576"]);
    let src = c.dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"x").unwrap();
    c.ok(1, &["import", "--create", src.to_str().unwrap(), "v"]);
    let s1 = c.slave_url(1);
    let port = c.slaves[0].port;
    let http = reqwest::blocking::Client::new();
    let head = |c: &Cluster| c.ok(1, &["log", "v", "--json"]).lines().count();
    assert_eq!(head(&c), 1);

    // Malformed manifest: stored as an object, refused as a root.
    let junk = b"{\"format\":1,\"entries\":[{\"name\":\"../x\"}]}".to_vec();
    let junk_id = blake3::hash(&junk).to_hex().to_string();
    let r = http
        .put(format!("{s1}/v1/objects/{junk_id}"))
        .bearer_auth(TOKEN)
        .body(junk)
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = http
        .post(format!("{s1}/v1/volumes/v/versions"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"parent": 1, "root": junk_id}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().unwrap().contains("malformed manifest"));

    // Bad hashes.
    let wrong = blake3::hash(b"other").to_hex().to_string();
    let r = http
        .put(format!("{s1}/v1/objects/{wrong}"))
        .bearer_auth(TOKEN)
        .body("content")
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().unwrap().contains("hashes to"));
    assert!(
        !c.slave_dir(1)
            .join("objects")
            .join(&wrong[..2])
            .join(&wrong[2..])
            .exists()
    );
    assert_eq!(get(&format!("{s1}/v1/objects/not-a-hash")).status(), 400);
    assert_eq!(
        get(&format!("{s1}/v1/objects/{}", wrong.to_uppercase())).status(),
        400
    );

    // Traversal and absolute paths, sent raw so no client normalises them.
    for path in [
        "/v1/volumes/v/1/../1/f",
        "/v1/volumes/v/1/%2e%2e/f",
        "/v1/volumes/v/1//etc/passwd",
        "/v1/volumes/../v/1/f",
    ] {
        let (code, body) = raw_http(
            port,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        );
        assert!(code == 400 || code == 404, "{path}: {code} {body}");
        assert!(body.contains("error") || body.is_empty(), "{path}: {body}");
    }
    let (code, body) = raw_http(
        port,
        &format!(
            "PUT /v1/volumes/v/a/../../x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx"
        ),
    );
    assert_eq!(code, 400, "{body}");

    // Unknown volume and version.
    let r = get(&format!("{s1}/v1/volumes/nope/1/f"));
    assert_eq!(r.status(), 404);
    assert!(r.text().unwrap().contains("unknown volume"));
    assert_eq!(get(&format!("{s1}/v1/volumes/v/9/f")).status(), 404);
    assert_eq!(get(&format!("{s1}/v1/volumes/v/0/f")).status(), 400);
    let out = c.cli(1, &["cat", "nope@1:f"]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("unknown volume")
    );

    // Oversized body, declared or not.
    let big = vec![0u8; 2 << 20];
    // The slave answers 413 without reading the body and closes the
    // connection; a pooled client could race that close on its next call.
    let no_reuse = reqwest::blocking::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let r = no_reuse
        .put(format!("{s1}/v1/volumes/v/big"))
        .bearer_auth(TOKEN)
        .body(big.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), 413);
    let stream = reqwest::blocking::Body::new(std::io::Cursor::new(big));
    let r = no_reuse
        .put(format!("{s1}/v1/volumes/v/big"))
        .bearer_auth(TOKEN)
        .body(stream)
        .send();
    assert!(r.map(|r| r.status() == 413).unwrap_or(true));

    // Missing or wrong token.
    let r = http
        .put(format!("{s1}/v1/volumes/v/f2"))
        .body("y")
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .put(format!("{s1}/v1/volumes/v/f2"))
        .bearer_auth("wrong-token")
        .body("y")
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);

    // Invalid names through the CLI: one-line error, non-zero exit.
    let out = c.cli(1, &["volume", "create", "../evil"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid volume name"));

    assert_eq!(head(&c), 1, "nothing was published");
    assert_eq!(get(&format!("{s1}/v1/volumes/v/1/f")).text().unwrap(), "x");
}

#[test]
fn phase6_kill9_during_import_publishes_nothing() {
    let c = Cluster::new(1);
    let src = c.dir.path().join("src");
    for d in 0..20 {
        fs::create_dir_all(src.join(format!("d{d}"))).unwrap();
        for f in 0..50 {
            fs::write(
                src.join(format!("d{d}/f{f}")),
                pseudo_random(4096, d * 100 + f),
            )
            .unwrap();
        }
    }
    fs::write(src.join("large"), pseudo_random(64 << 20, 99)).unwrap();
    c.ok(1, &["volume", "create", "imp"]);
    let s1 = c.slave_url(1);
    let mut child = std::process::Command::new(common::bin())
        .args(["import", src.to_str().unwrap(), "imp"])
        .env("ELTON_MASTER", c.master_url())
        .env("ELTON_CA", c.ca_path())
        .env("ELTON_SLAVE", &s1)
        .env("ELTON_TOKEN", TOKEN)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until("upload to start", Duration::from_secs(60), || {
        metric(&s1, "objects_uploaded_total") >= 20
    });
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(metric(&s1, "commits_total"), 0, "killed before commit");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(c.ok(1, &["log", "imp"]), "", "no version was published");
    assert!(c.ok(1, &["volume", "ls"]).contains("imp"));

    // The store is consistent: the next import completes and reads back.
    c.ok(1, &["import", src.to_str().unwrap(), "imp"]);
    let body = get(&format!("{s1}/v1/volumes/imp/1/d3/f7"))
        .bytes()
        .unwrap();
    assert_eq!(body.as_ref(), pseudo_random(4096, 307).as_slice());
}
