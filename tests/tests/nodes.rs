#![allow(clippy::unwrap_used)]
//! Node management and volume deletion: `elton node ls`, `elton node rm`
//! (copies first, refuses to lose the only copy unless forced, forgets the
//! node for good) and `elton volume rm` (refused while mounted here, says
//! what it removes, the name is not reused).

mod common;

use std::fs;
use std::process::Command;
use std::time::Duration;

use common::{Cluster, Mount, text, wait_until};

fn nodes(c: &Cluster) -> Vec<serde_json::Value> {
    let out = c.ok(1, &["node", "ls", "--json"]);
    serde_json::from_str::<serde_json::Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn node<'a>(list: &'a [serde_json::Value], id: &str) -> Option<&'a serde_json::Value> {
    list.iter().find(|n| n["id"] == id)
}

/// A cluster without backup copies, so slave 1 holds the only copies of
/// what is imported through it.
fn cluster_with_volume() -> Cluster {
    let c = Cluster::with_args(2, &["--replication", "1"], &[]);
    let src = c.dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a.txt"), "alpha\n").unwrap();
    fs::write(src.join("b.txt"), "beta\n").unwrap();
    c.ok(1, &["import", "--create", src.to_str().unwrap(), "vol"]);
    c
}

#[test]
fn phase1_node_ls_shows_address_liveness_objects_and_bytes() {
    let c = cluster_with_volume();
    wait_until("slave1 reports its store", Duration::from_secs(30), || {
        node(&nodes(&c), "slave1").is_some_and(|n| n["stored_bytes"].as_u64() > Some(0))
    });
    let list = nodes(&c);
    assert_eq!(list.len(), 2);
    let s1 = node(&list, "slave1").unwrap();
    assert_eq!(s1["alive"], true);
    assert!(s1["objects"].as_u64().unwrap() >= 3, "{s1}"); // root + 2 files
    assert!(s1["last_heartbeat_unix"].as_u64().unwrap() > 0);
    assert_eq!(
        s1["address"].as_str().unwrap(),
        c.slave_url(1).trim_start_matches("http://")
    );
    let table = c.ok(1, &["node", "ls"]);
    assert!(table.starts_with("NODE"), "{table}");
    assert!(table.contains("slave2"), "{table}");

    // Removals are an admin's: a write token is refused and changes nothing.
    let out = c.ok(
        1,
        &[
            "token", "create", "--name", "w", "--scope", "write", "--json",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    for args in [&["node", "rm", "slave2"][..], &["volume", "rm", "vol"]] {
        let o = Command::new(common::bin())
            .args(args)
            .env("ELTON_MASTER", c.master_url())
            .env("ELTON_TOKEN", v["secret"].as_str().unwrap())
            .env("ELTON_CA", c.ca_path())
            .env("ELTON_HOME", c.dir.path().join("home"))
            .output()
            .unwrap();
        assert!(
            !o.status.success() && text(&o).contains("permission denied"),
            "{args:?}: {}",
            text(&o)
        );
    }
    assert_eq!(nodes(&c).len(), 2);
    assert!(c.ok(1, &["volume", "ls"]).contains("vol"));
}

#[test]
fn phase2_node_rm_copies_the_only_copies_first_then_forgets_the_node() {
    let mut c = cluster_with_volume();
    let out = c.cli(2, &["node", "rm", "slave1", "--timeout", "60s"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("removed node slave1"), "{}", text(&out));
    let list = nodes(&c);
    assert!(node(&list, "slave1").is_none(), "{list:?}");
    // Slave 2 got every object first: the volume reads without slave 1.
    c.slaves[0].kill9();
    assert_eq!(c.ok(2, &["cat", "vol:a.txt"]), "alpha\n");
    assert_eq!(c.ok(2, &["cat", "vol:b.txt"]), "beta\n");
    let fsck = c.cli(2, &["fsck"]);
    assert!(fsck.status.success(), "{}", text(&fsck));
    // Unknown now.
    let again = c.cli(2, &["node", "rm", "slave1"]);
    assert!(!again.status.success());
    assert!(text(&again).contains("unknown node"), "{}", text(&again));
}

#[test]
fn phase3_a_down_node_with_the_only_copies_is_refused_unless_forced() {
    let mut c = cluster_with_volume();
    c.slaves[0].kill9();
    wait_until("slave1 down", Duration::from_secs(30), || {
        node(&nodes(&c), "slave1").is_some_and(|n| n["alive"] == false)
    });
    let out = c.cli(2, &["node", "rm", "slave1"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("only copy") && text(&out).contains("--force"),
        "{}",
        text(&out)
    );
    assert!(
        node(&nodes(&c), "slave1").is_some(),
        "refusal changes nothing"
    );
    let out = c.cli(2, &["node", "rm", "slave1", "--force"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("lost"), "{}", text(&out));
    assert!(node(&nodes(&c), "slave1").is_none());
    // It may not come back under that id.
    c.slaves[0].restart();
    std::thread::sleep(Duration::from_secs(2));
    assert!(node(&nodes(&c), "slave1").is_none());
    assert!(
        c.slaves[0]
            .log_text()
            .contains("was removed from this cluster"),
        "the slave is told why"
    );
}

#[test]
fn phase4_volume_rm_is_refused_while_mounted_and_says_what_it_removes() {
    let c = cluster_with_volume();
    let mnt = c.dir.path().join("mnt");
    let m = Mount::new(&c, 1, "vol", &mnt, &c.dir.path().join("state"), &[]);
    fs::write(m.path("c.txt"), "gamma\n").unwrap();
    let out = m.elton(&["commit", mnt.to_str().unwrap(), "-m", "two"]);
    assert!(out.status.success(), "{}", text(&out));

    let refused = c.cli(1, &["volume", "rm", "vol"]);
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains(&format!("mounted at {}", mnt.display())),
        "{}",
        text(&refused)
    );
    drop(m);
    let dry = c.ok(1, &["volume", "rm", "vol", "--dry-run"]);
    assert!(
        dry.contains("would remove volume vol (2 version(s), head 2)"),
        "{dry}"
    );
    assert!(c.ok(1, &["volume", "ls"]).contains("vol"));
    let done = c.ok(1, &["volume", "rm", "vol"]);
    assert!(
        done.contains("removed volume vol (2 version(s), head 2)"),
        "{done}"
    );
    assert!(!c.ok(1, &["volume", "ls"]).contains("vol"));
    assert!(!c.cli(1, &["cat", "vol:a.txt"]).status.success());
    let again = c.cli(1, &["volume", "create", "vol"]);
    assert!(!again.status.success());
    assert!(
        text(&again).contains("cannot be used again"),
        "{}",
        text(&again)
    );
    let missing = c.cli(1, &["volume", "rm", "nope"]);
    assert!(!missing.status.success());
}
