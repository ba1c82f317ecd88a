//! The Docker volume plugin against a real Docker engine. `test.sh`
//! installs Debian's docker.io and busybox-static and starts `dockerd` when
//! none runs; no registry is needed (the image is `docker import`ed from a
//! busybox rootfs).
//!
//! Every container and volume this test creates in Docker carries the test's
//! process id, and is removed on drop even when the test fails, as are the
//! plugin processes, their sockets and their mounts.

// Test helpers: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::busybox::{IMAGE, ensure_image};
use common::*;

const SOCKET_DIR: &str = "/run/docker/plugins";

fn docker(args: &[&str]) -> Output {
    let t = std::time::Instant::now();
    let out = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running docker (test.sh installs docker.io)");
    eprintln!("docker {args:?}: {:.1} s", t.elapsed().as_secs_f64());
    out
}

fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Fails with the command's stderr, which must mention every `needles`.
fn docker_fails(args: &[&str], needles: &[&str]) {
    let out = docker(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "docker {args:?} should have failed");
    for n in needles {
        assert!(err.contains(n), "docker {args:?}: {n:?} not in {err:?}");
    }
}

/// `elton docker-plugin` as a real process, serving Docker on its socket.
struct Plugin {
    name: String,
    state: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<KillOnDrop>,
}

impl Plugin {
    fn start(cluster: &Cluster, slave: usize, name: &str) -> Self {
        let state = cluster.dir.path().join(format!("plugin-{name}"));
        let mut p = Self {
            name: name.to_string(),
            state: state.clone(),
            args: vec![
                "docker-plugin".into(),
                "--name".into(),
                name.into(),
                "--state-dir".into(),
                state.display().to_string(),
                "--slave-data".into(),
                cluster.slave_dir(slave).display().to_string(),
            ],
            env: vec![
                ("ELTON_MASTER".into(), cluster.master_url()),
                ("ELTON_CA".into(), cluster.ca_path().display().to_string()),
                ("ELTON_SLAVE".into(), cluster.slave_url(slave)),
                ("ELTON_TOKEN".into(), TOKEN.into()),
                ("ELTON_LOG".into(), "info".into()),
            ],
            log: cluster.dir.path().join(format!("plugin-{name}.log")),
            child: None,
        };
        p.spawn();
        p
    }

    fn socket(&self) -> PathBuf {
        Path::new(SOCKET_DIR).join(format!("{}.sock", self.name))
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(bin())
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting the plugin");
        self.child = Some(KillOnDrop(child));
        let socket = self.socket();
        wait_until("plugin socket", Duration::from_secs(20), || {
            UnixStream::connect(&socket).is_ok()
        });
    }

    /// SIGKILL and start again: the mounts it made must not notice.
    fn restart(&mut self) {
        self.child = None;
        self.spawn();
    }

    fn mountpoint(&self, volume: &str) -> PathBuf {
        self.state.join("volumes").join(volume).join("mnt")
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        self.child = None;
        let _ = std::fs::remove_file(self.socket());
        if let Ok(dirs) = std::fs::read_dir(self.state.join("volumes")) {
            for d in dirs.flatten() {
                detach(&d.path().join("mnt"));
            }
        }
    }
}

/// Removes the test's containers and volumes, plugins still running.
struct DockerCleanup {
    containers: Vec<String>,
    volumes: Vec<String>,
}

impl Drop for DockerCleanup {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = docker(&["rm", "-f", c]);
        }
        for v in &self.volumes {
            let _ = docker(&["volume", "rm", "-f", v]);
        }
    }
}

fn cat_in(container: &str, path: &str) -> String {
    docker_ok(&["exec", container, "cat", path])
}

#[test]
fn docker_volume_plugin() {
    let pid = std::process::id();
    assert!(
        docker(&["info"]).status.success(),
        "no Docker engine: test.sh installs docker.io and starts dockerd"
    );

    // Phase 1: a cluster with two slaves ("two hosts"), a volume, an image,
    // a plugin per host.
    let cluster = Cluster::new(2);
    ensure_image(cluster.dir.path());
    let web = format!("web-{pid}");
    let src = cluster.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("index.html"), "<h1>hello from elton</h1>\n").unwrap();
    cluster.ok(
        1,
        &[
            "import",
            "--create",
            src.to_str().unwrap(),
            &web,
            "-m",
            "v1",
        ],
    );
    // Fixed plugin names: dockerd remembers every plugin it has talked to
    // and waits 15 s for each one that no longer answers on every volume
    // lookup, so per-run names would make each later run on the same engine
    // slower. (Docker objects still carry the process id.)
    let (name_a, name_b) = ("elton-e2e".to_string(), "elton-e2e-b".to_string());
    let (vol_a, vol_b) = (format!("webvol-{pid}"), format!("webvol-b-{pid}"));
    let (c1, c2) = (format!("elton-c1-{pid}"), format!("elton-c2-{pid}"));
    let mut plugin_a = Plugin::start(&cluster, 1, &name_a);
    // Declared before the cleanup guard, so that guard runs first: Docker
    // can only remove a volume while its plugin answers (a volume of a dead
    // plugin stays in Docker's store, and every later lookup waits for it).
    let _plugin_b = Plugin::start(&cluster, 2, &name_b);
    let _cleanup = DockerCleanup {
        containers: vec![c1.clone(), c2.clone()],
        volumes: vec![
            vol_a.clone(),
            vol_b.clone(),
            format!("bad-{pid}"),
            format!("badrun-{pid}"),
        ],
    };

    // Phase 2: create and read the committed content in a container.
    let volume_opt = format!("volume={web}");
    docker_ok(&["volume", "create", "-d", &name_a, "-o", &volume_opt, &vol_a]);
    let bind = format!("{vol_a}:/data");
    let out = docker_ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        &bind,
        IMAGE,
        "cat",
        "/data/index.html",
    ]);
    assert_eq!(out, "<h1>hello from elton</h1>\n");
    wait_until(
        "unmount after the only container exited",
        Duration::from_secs(10),
        || !is_elton_mount(&plugin_a.mountpoint(&vol_a)),
    );

    // Phase 3: two containers share the mount; one writes, the other sees
    // it; the first exits and the second keeps reading.
    for c in [&c1, &c2] {
        docker_ok(&[
            "run",
            "-d",
            "--name",
            c,
            "--network",
            "none",
            "-v",
            &bind,
            IMAGE,
            "sleep",
            "600",
        ]);
    }
    docker_ok(&["exec", &c1, "sh", "-c", "echo shared > /data/new.txt"]);
    assert_eq!(cat_in(&c2, "/data/new.txt"), "shared\n");
    docker_ok(&["rm", "-f", &c1]);
    assert_eq!(cat_in(&c2, "/data/new.txt"), "shared\n");
    assert_eq!(
        cat_in(&c2, "/data/index.html"),
        "<h1>hello from elton</h1>\n"
    );

    // Commit from the host by Docker volume name; the other host's plugin
    // sees the new version.
    let st = cluster.ok(
        1,
        &["status", "--docker-volume", &vol_a, "--plugin", &name_a],
    );
    assert!(st.lines().any(|l| l == "A new.txt"), "{st}");
    let out = cluster.ok(
        1,
        &[
            "commit",
            "--docker-volume",
            &vol_a,
            "--plugin",
            &name_a,
            "-m",
            "from docker",
        ],
    );
    assert!(out.contains(&format!("{web}@2")), "{out}");
    docker_ok(&["volume", "create", "-d", &name_b, "-o", &volume_opt, &vol_b]);
    let bind_b = format!("{vol_b}:/data");
    let out = docker_ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        &bind_b,
        IMAGE,
        "cat",
        "/data/new.txt",
    ]);
    assert_eq!(out, "shared\n");

    // Phase 4: the plugin restarts (SIGKILL) while c2 runs: c2 keeps its
    // files, and its later Unmount is the one that ends the mount.
    plugin_a.restart();
    assert_eq!(cat_in(&c2, "/data/new.txt"), "shared\n");
    docker_ok(&["exec", &c2, "sh", "-c", "echo after > /data/after.txt"]);
    let inspect = docker_ok(&["volume", "inspect", &vol_a]);
    assert!(inspect.contains("\"users\": 1"), "{inspect}");
    assert!(is_elton_mount(&plugin_a.mountpoint(&vol_a)));
    docker_ok(&["rm", "-f", &c2]);
    wait_until(
        "unmount after the last container",
        Duration::from_secs(10),
        || !is_elton_mount(&plugin_a.mountpoint(&vol_a)),
    );
    // Removing keeps uncommitted changes aside, never silently drops them.
    docker_ok(&["volume", "rm", &vol_a]);
    let removed: Vec<PathBuf> = std::fs::read_dir(plugin_a.state.join("removed"))
        .expect("uncommitted changes kept")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(removed.len(), 1, "{removed:?}");
    assert_eq!(
        std::fs::read_to_string(removed[0].join("upper/after.txt")).unwrap(),
        "after\n"
    );
    assert!(!plugin_a.state.join("volumes").join(&vol_a).exists());
    // Committed versions stay on the master.
    let log = cluster.ok(1, &["log", &web]);
    assert!(log.contains("from docker"), "{log}");

    // Phase 5: bad options fail with the plugin's message.
    let bad = format!("bad-{pid}");
    docker_fails(
        &[
            "volume",
            "create",
            "-d",
            &name_a,
            "-o",
            "volume=no-such-volume",
            &bad,
        ],
        &["elton:", "unknown volume", "no-such-volume"],
    );
    docker_fails(
        &[
            "volume",
            "create",
            "-d",
            &name_a,
            "-o",
            &volume_opt,
            "-o",
            "version=99",
            &bad,
        ],
        &["elton:", "no version 99"],
    );
    docker_fails(
        &[
            "volume",
            "create",
            "-d",
            &name_a,
            "-o",
            &volume_opt,
            "-o",
            "version=abc",
            &bad,
        ],
        &["elton:", "version=\"abc\""],
    );
    docker_fails(
        &["volume", "create", "-d", &name_a, "-o", "colour=red", &bad],
        &["elton:", "unknown option \"colour\""],
    );
    let badrun = format!("badrun-{pid}:/data");
    docker_fails(
        &[
            "run",
            "--rm",
            "--network",
            "none",
            "--volume-driver",
            &name_a,
            "-v",
            &badrun,
            IMAGE,
            "true",
        ],
        &["elton:", "unknown volume"],
    );
    let listed = docker_ok(&["volume", "ls", "-q"]);
    assert!(!listed.contains(&bad), "{listed}");
}
