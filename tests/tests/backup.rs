#![allow(clippy::unwrap_used)]
//! Backup copies, repair and fsck, end to end: a master and slaves as real
//! processes (heartbeat 200 ms, down after 3 s; see `common::Cluster`).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::{Cluster, files_under, metric, pseudo_random, url_path, wait_until};
use elton_proto::ObjectId;

fn sample_tree(root: &Path) {
    fs::create_dir_all(root.join("site/css")).unwrap();
    fs::create_dir_all(root.join("data/raw")).unwrap();
    fs::write(root.join("site/index.html"), b"<h1>backup</h1>\n").unwrap();
    fs::write(root.join("site/css/a.css"), b"body{}\n").unwrap();
    fs::write(root.join("data/empty"), b"").unwrap();
    fs::write(root.join("data/raw/big.bin"), pseudo_random(6 << 20, 7)).unwrap();
    for i in 0..20 {
        fs::write(
            root.join(format!("data/raw/part{i:02}.bin")),
            pseudo_random(10_000 + i * 999, i as u64),
        )
        .unwrap();
    }
}

/// Every object of the imported tree: distinct files, chunks and recipes of
/// large files, and manifests (as `elton import` chunks with its default).
fn objects_of(src: &Path) -> Vec<ObjectId> {
    let threshold = eltonfs::chunking::DEFAULT_THRESHOLD;
    let scan = eltonfs::walk::scan(src, threshold, &|_| {}).unwrap();
    let mut ids: Vec<ObjectId> = scan.files.keys().copied().collect();
    ids.extend(scan.chunks.keys().copied());
    ids.extend(scan.recipes.iter().map(|(id, _)| *id));
    ids.extend(scan.manifests.iter().map(|(id, _)| *id));
    ids
}

fn object_path(c: &Cluster, slave: usize, id: &ObjectId) -> PathBuf {
    let hex = id.to_string();
    c.slave_dir(slave)
        .join("objects")
        .join(&hex[..2])
        .join(&hex[2..])
}

fn stored_on(c: &Cluster, slave: usize, ids: &[ObjectId]) -> usize {
    ids.iter()
        .filter(|id| object_path(c, slave, id).is_file())
        .count()
}

/// Live holders of `id` according to the master.
fn live_holders(c: &Cluster, id: &ObjectId) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut m = c.master_client().await;
        let mut out: Vec<String> = m
            .locate(elton_proto::pb::LocateRequest {
                object: id.as_bytes().to_vec(),
            })
            .await
            .unwrap()
            .into_inner()
            .holders
            .into_iter()
            .filter(|h| h.up)
            .map(|h| h.node_id)
            .collect();
        out.sort();
        out
    })
}

fn node_up(c: &Cluster, node: &str) -> bool {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut m = c.master_client().await;
        m.list_nodes(elton_proto::pb::ListNodesRequest {})
            .await
            .unwrap()
            .into_inner()
            .nodes
            .iter()
            .any(|n| n.node_id == node && n.up)
    })
}

fn fsck(c: &Cluster, extra: &[&str]) -> (Output, String) {
    let mut args = vec!["fsck"];
    args.extend_from_slice(extra);
    let out = c.cli(1, &args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    // Shown only if the test fails.
    eprintln!(
        "elton fsck {extra:?}:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out, stdout)
}

fn assert_fsck_clean(c: &Cluster) {
    let (out, stdout) = fsck(c, &["--check-files"]);
    assert!(
        out.status.success(),
        "fsck should be clean: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("fsck: clean"), "{stdout}");
    assert!(stdout.contains(", 0 under-replicated, 0 lost"), "{stdout}");
    assert!(stdout.contains(", 0 unreadable"), "{stdout}");
}

fn get(url: &str) -> reqwest::blocking::Response {
    reqwest::blocking::get(url).unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

#[test]
fn backup_copies_survive_a_lost_slave_and_repair_restores_the_factor() {
    let mut c = Cluster::new(2);
    let src = c.dir.path().join("src");
    sample_tree(&src);
    c.ok(1, &["import", "--create", src.to_str().unwrap(), "web"]);
    let ids = objects_of(&src);
    assert!(ids.len() > 25);

    // Every object gets its second copy on slave 2 within seconds, without
    // anyone reading it there.
    wait_until("backup copies on slave 2", Duration::from_secs(20), || {
        stored_on(&c, 2, &ids) == ids.len()
    });
    wait_until("master sees two holders", Duration::from_secs(10), || {
        ids.iter()
            .all(|id| live_holders(&c, id) == ["slave1", "slave2"])
    });
    let s2 = c.slave_url(2);
    assert!(metric(&s2, "backup_copies_total") >= ids.len() as u64);
    assert_eq!(metric(&s2, "backup_failures_total"), 0);
    assert_eq!(
        metric(&s2, "cache_misses_total"),
        0,
        "backup copies are not reads"
    );
    assert!(
        c.master.log_text().contains("replication round"),
        "progress in the master's log"
    );
    assert_fsck_clean(&c);

    // Lose the slave that holds the originals.
    c.slaves[0].kill9();
    let fetched = metric(&s2, "objects_fetched_total");
    let files = files_under(&src);
    for f in &files {
        let resp = get(&format!("{s2}/v1/volumes/web/1/{}", url_path(f)));
        assert_eq!(resp.status(), 200, "{f:?}");
        assert_eq!(
            resp.bytes().unwrap().as_ref(),
            fs::read(src.join(f)).unwrap()
        );
    }
    assert_eq!(
        metric(&s2, "objects_fetched_total"),
        fetched,
        "slave 2 served everything from its own copies"
    );

    // Once slave 1 counts as down, every object is one copy short.
    wait_until("slave1 marked down", Duration::from_secs(10), || {
        !node_up(&c, "slave1")
    });
    let (out, stdout) = fsck(&c, &[]);
    assert!(!out.status.success(), "fsck must fail: {stdout}");
    assert!(stdout.contains("under-replicated object"), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "objects: {} checked, {} under-replicated, 0 lost",
            ids.len(),
            ids.len()
        )),
        "{stdout}"
    );
    assert!(stdout.contains("1 checked, 0 unreadable"), "{stdout}");
    assert!(
        stdout.contains("slaves: 1 live of 2 registered"),
        "{stdout}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("fsck found problems"),
        "one-line error"
    );
    // Nothing to copy to while slave 2 is alone.
    std::thread::sleep(Duration::from_secs(1));
    assert!(ids.iter().all(|id| live_holders(&c, id) == ["slave2"]));

    // A new slave: re-replication brings every object back to two copies.
    c.add_slave(&[]);
    wait_until(
        "re-replication onto slave 3",
        Duration::from_secs(30),
        || stored_on(&c, 3, &ids) == ids.len(),
    );
    wait_until(
        "master sees two live holders",
        Duration::from_secs(10),
        || {
            ids.iter()
                .all(|id| live_holders(&c, id) == ["slave2", "slave3"])
        },
    );
    assert_fsck_clean(&c);
    let s3 = c.slave_url(3);
    for f in &files {
        let resp = get(&format!("{s3}/v1/volumes/web/1/{}", url_path(f)));
        assert_eq!(resp.status(), 200, "{f:?}");
    }
    assert_eq!(metric(&s3, "cache_misses_total"), 0, "all local on slave 3");

    // Slave 1 returns: its copies count again and nothing is deleted.
    c.slaves[0].restart();
    wait_until("slave1 back", Duration::from_secs(10), || {
        node_up(&c, "slave1")
    });
    wait_until("three live holders", Duration::from_secs(10), || {
        ids.iter()
            .all(|id| live_holders(&c, id) == ["slave1", "slave2", "slave3"])
    });
    for i in 1..=3 {
        assert_eq!(
            stored_on(&c, i, &ids),
            ids.len(),
            "slave{i} keeps its copies"
        );
    }
    assert_fsck_clean(&c);
}

#[test]
fn fsck_reports_unreadable_versions_and_lost_objects() {
    let mut c = Cluster::new(1);
    let src = c.dir.path().join("src");
    sample_tree(&src);
    c.ok(1, &["import", "--create", src.to_str().unwrap(), "web"]);
    fs::write(src.join("site/index.html"), b"<h1>v2</h1>\n").unwrap();
    c.ok(1, &["import", src.to_str().unwrap(), "web"]);
    assert_fsck_clean(&c);

    // A file object disappears from the only holder: the location remains,
    // so only a check of the files notices; both versions use the file.
    let scan = eltonfs::walk::scan(&src, eltonfs::chunking::DEFAULT_THRESHOLD, &|_| {}).unwrap();
    let part = *scan
        .files
        .iter()
        .find(|(_, (p, _))| p.ends_with("part03.bin"))
        .unwrap()
        .0;
    fs::remove_file(object_path(&c, 1, &part)).unwrap();
    let (out, stdout) = fsck(&c, &[]);
    assert!(out.status.success(), "locations only: {stdout}");
    let (out, stdout) = fsck(&c, &["--check-files"]);
    assert!(!out.status.success());
    assert!(
        stdout.contains(&format!(
            "unreadable version web@1: data/raw/part03.bin (object {part})"
        )),
        "{stdout}"
    );
    assert!(stdout.contains("web@2: data/raw/part03.bin"), "{stdout}");
    assert!(stdout.contains("2 checked, 2 unreadable"), "{stdout}");

    // A chunk of the chunked file disappears: its recipe is intact, so only
    // a check that descends into the recipe notices. `big.bin` comes before
    // `part03.bin` in the walk, so it is what both versions report now.
    let chunk = *scan.chunks.keys().next().unwrap();
    let chunk_path = object_path(&c, 1, &chunk);
    let saved = fs::read(&chunk_path).unwrap();
    fs::remove_file(&chunk_path).unwrap();
    let (out, stdout) = fsck(&c, &["--check-files"]);
    assert!(!out.status.success());
    assert!(
        stdout.contains(&format!(
            "unreadable version web@1: data/raw/big.bin (object {chunk}): chunk "
        )),
        "{stdout}"
    );
    assert!(stdout.contains(" of recipe "), "{stdout}");
    assert!(stdout.contains("web@2: data/raw/big.bin"), "{stdout}");
    fs::write(&chunk_path, &saved).unwrap();
    let (_, stdout) = fsck(&c, &["--check-files"]);
    assert!(
        stdout.contains("web@1: data/raw/part03.bin"),
        "chunk restored: {stdout}"
    );

    // A manifest missing is noticed without --check-files.
    let css = scan
        .manifests
        .iter()
        .map(|(id, _)| *id)
        .find(|id| {
            let bytes = fs::read(object_path(&c, 1, id)).unwrap();
            String::from_utf8_lossy(&bytes).contains("\"a.css\"")
        })
        .unwrap();
    fs::remove_file(object_path(&c, 1, &css)).unwrap();
    // The slave still has the manifest in memory from fsck's earlier reads
    // (verified bytes, rightly served); a restart drops that.
    c.slaves[0].restart();
    wait_until("slave1 back", Duration::from_secs(10), || {
        node_up(&c, "slave1")
    });
    let (out, stdout) = fsck(&c, &[]);
    assert!(!out.status.success());
    assert!(
        stdout.contains(&format!("web@2: site/css (object {css})")),
        "{stdout}"
    );

    // The only slave is gone: every object is lost.
    c.slaves[0].kill9();
    wait_until("slave1 marked down", Duration::from_secs(10), || {
        !node_up(&c, "slave1")
    });
    let (out, stdout) = fsck(&c, &[]);
    assert!(!out.status.success());
    assert!(stdout.contains("lost object"), "{stdout}");
    assert!(stdout.contains("2 checked, 2 unreadable"), "{stdout}");
    assert!(
        stdout.contains("no live holder (1 registered, all down)"),
        "{stdout}"
    );
    let total = stdout
        .lines()
        .find_map(|l| l.strip_prefix("objects: "))
        .unwrap();
    let n: u64 = total.split_whitespace().next().unwrap().parse().unwrap();
    assert!(
        total.contains(&format!("{n} under-replicated, {n} lost")),
        "{stdout}"
    );
}
