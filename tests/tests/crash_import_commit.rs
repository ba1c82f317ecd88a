#![allow(clippy::unwrap_used)]
//! `kill -9` at random points of `elton import` and of a mount's commit:
//! afterwards a version either exists with every object it references
//! present and verifying (`elton fsck --check-files`), or does not exist.
//! Never a version with a missing object.
//!
//! The kill points are drawn from a seed printed by each phase; set
//! `ELTON_CRASH_SEED` to replay a run.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Cluster, Mount, TOKEN, pseudo_random};

const ROUNDS: usize = 20;

/// A small deterministic generator: the kill points must be replayable.
struct Rng(u64);

impl Rng {
    fn from_env(phase: &str) -> Self {
        let seed = std::env::var("ELTON_CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("{phase}: ELTON_CRASH_SEED={seed}");
        Self(seed | 1)
    }

    /// Uniform in `[0, max)`.
    fn below(&mut self, max: Duration) -> Duration {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let r = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11;
        max.mul_f64(r as f64 / (1u64 << 53) as f64)
    }
}

/// The bytes of `spec` (VOLUME@VERSION:PATH).
fn cat(c: &Cluster, spec: &str) -> Vec<u8> {
    let out = c.cli(1, &["cat", spec]);
    assert!(
        out.status.success(),
        "elton cat {spec}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn versions(c: &Cluster, volume: &str) -> usize {
    c.ok(1, &["log", volume, "--json"]).lines().count()
}

/// Every version of every volume is complete: each object it references
/// is present on a holder and hashes to its id.
fn assert_all_versions_verify(c: &Cluster, when: &str) {
    let out = c.cli(1, &["fsck", "--check-files"]);
    assert!(
        out.status.success(),
        "{when}: fsck found a version that does not verify:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A tree of `n` small files and one large (chunked) file; `round` makes
/// its bytes new, so every import stores new objects.
fn write_tree(root: &Path, round: u64, n: u64) {
    fs::create_dir_all(root.join("small")).unwrap();
    for i in 0..n {
        let len = 512 + (i * 37 % 4096) as usize;
        fs::write(
            root.join("small").join(format!("f{i:03}")),
            pseudo_random(len, round * 10_000 + i),
        )
        .unwrap();
    }
    fs::write(root.join("large.bin"), pseudo_random(6 << 20, round)).unwrap();
}

fn spawn_elton(c: &Cluster, args: &[&str]) -> Child {
    Command::new(common::bin())
        .args(args)
        .env("ELTON_MASTER", c.master_url())
        .env("ELTON_SLAVE", c.slave_url(1))
        .env("ELTON_TOKEN", TOKEN)
        .env("ELTON_CA", c.ca_path())
        .env("ELTON_HOME", c.dir.path().join("home"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn phase1_kill9_of_import_at_random_points() {
    let c = Cluster::new(1);
    let src = c.dir.path().join("src");
    let mut rng = Rng::from_env("import");
    write_tree(&src, 0, 300);
    let t0 = Instant::now();
    c.ok(1, &["import", "--create", src.to_str().unwrap(), "imp"]);
    // Kill points spread over a little more than an import's duration.
    let span = t0.elapsed().mul_f64(1.2);

    let mut killed_before_commit = 0;
    for round in 1..=ROUNDS as u64 {
        write_tree(&src, round, 300);
        let before = versions(&c, "imp");
        let mut import = spawn_elton(&c, &["import", src.to_str().unwrap(), "imp"]);
        std::thread::sleep(rng.below(span));
        let _ = import.kill();
        let finished = import.wait().unwrap().success();
        let after = versions(&c, "imp");
        assert!(
            after == before || after == before + 1,
            "round {round}: {before} versions became {after}"
        );
        if after == before {
            assert!(
                !finished,
                "round {round}: a successful import published nothing"
            );
            killed_before_commit += 1;
        } else {
            // The new version is this round's tree.
            let got = cat(&c, &format!("imp@{after}:small/f007"));
            let want = pseudo_random(512 + 7 * 37, round * 10_000 + 7);
            assert_eq!(got, want, "round {round}");
        }
        assert_all_versions_verify(&c, &format!("import round {round}"));
    }
    eprintln!("import: {killed_before_commit} of {ROUNDS} kills came before the commit");

    // Objects left by killed imports do not stop a later one.
    write_tree(&src, 1_000, 300);
    c.ok(1, &["import", src.to_str().unwrap(), "imp"]);
    assert_all_versions_verify(&c, "after the last import");
}

#[test]
fn phase2_kill9_of_a_mount_during_commit_at_random_points() {
    let c = Cluster::new(1);
    let src = c.dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("base.txt"), b"base\n").unwrap();
    // A directory of more than 256 files is stored as pages; each round
    // edits one of them and adds one, so each commit re-cuts pages.
    fs::create_dir_all(src.join("big")).unwrap();
    for i in 0..300 {
        fs::write(src.join(format!("big/f{i:03}")), format!("base {i}\n")).unwrap();
    }
    c.ok(1, &["import", "--create", src.to_str().unwrap(), "mnt"]);
    let (mnt, state) = (c.dir.path().join("mnt"), c.dir.path().join("state"));
    let mut rng = Rng::from_env("mount commit");

    let big_edit = |round: u64| (format!("big/f{:03}", round * 7), format!("round {round}\n"));
    let big_new = |round: u64| (format!("big/new{round:02}"), format!("new {round}\n"));
    let write_round = |m: &Mount, round: u64| {
        write_tree(&m.path(&format!("r{round:02}")), round, 100);
        for (path, content) in [big_edit(round), big_new(round)] {
            fs::write(m.path(&path), content).unwrap();
        }
    };
    let commit = |m: &Mount| {
        Command::new(common::bin())
            .args(["commit", m.mountpoint.to_str().unwrap(), "-m", "crash"])
            .env("ELTON_SLAVE", c.slave_url(1))
            .env("ELTON_TOKEN", TOKEN)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };

    let mut m = Mount::new(&c, 1, "mnt", &mnt, &state, &[]);
    write_round(&m, 0);
    let t0 = Instant::now();
    assert!(commit(&m).wait().unwrap().success());
    let span = t0.elapsed().mul_f64(1.2);

    let mut written = vec![0u64];
    for round in 1..=ROUNDS as u64 {
        write_round(&m, round);
        written.push(round);
        let before = versions(&c, "mnt");
        let mut committer = commit(&m);
        std::thread::sleep(rng.below(span));
        m.kill9();
        let _ = committer.kill();
        let _ = committer.wait();
        drop(m);
        // Restarting resolves the commit journal: the mount comes back on
        // the new version with an empty upper, or on the old one with the
        // changes still in its upper.
        m = Mount::new(&c, 1, "mnt", &mnt, &state, &[]);
        let after = versions(&c, "mnt");
        assert!(
            after == before || after == before + 1,
            "round {round}: {before} versions became {after}"
        );
        if after == before + 1 {
            for r in &written {
                let got = cat(&c, &format!("mnt@{after}:r{r:02}/small/f007"));
                let want = pseudo_random(512 + 7 * 37, r * 10_000 + 7);
                assert_eq!(got, want, "round {round}: r{r:02}");
                for (path, content) in [big_edit(*r), big_new(*r)] {
                    let got = cat(&c, &format!("mnt@{after}:{path}"));
                    assert_eq!(got, content.as_bytes(), "round {round}: {path}");
                }
            }
        }
        // Committed or not, the mount shows every file written.
        for r in &written {
            let got = fs::read(m.path(&format!("r{r:02}/small/f007"))).unwrap();
            assert_eq!(
                got,
                pseudo_random(512 + 7 * 37, r * 10_000 + 7),
                "round {round}"
            );
            for (path, content) in [big_edit(*r), big_new(*r)] {
                let got = fs::read(m.path(&path)).unwrap();
                assert_eq!(got, content.as_bytes(), "round {round}: {path}");
            }
        }
        assert_eq!(
            fs::read_dir(m.path("big")).unwrap().count(),
            300 + written.len(),
            "round {round}: big/"
        );
        assert_all_versions_verify(&c, &format!("mount commit round {round}"));
    }

    // Whatever the crashes left uncommitted commits now, complete.
    let out = commit(&m).wait().unwrap();
    assert!(out.success());
    let head = versions(&c, "mnt");
    for r in &written {
        let got = cat(&c, &format!("mnt@{head}:r{r:02}/large.bin"));
        assert_eq!(got.len(), 6 << 20, "r{r:02}");
    }
    assert_all_versions_verify(&c, "after the last commit");
}
