//! FastContainer end to end, the instance runtimes: an app's instances see
//! its volume at its version through a read-only Eltonfs mount (a write
//! gets EROFS, the mount cannot be committed or moved), and an app with
//! `--image` runs as a Docker container with that mount as its working
//! directory: it answers, stops when idle (its container removed), starts
//! again, and a proxy killed with SIGKILL leaves no container behind once
//! it runs again. The Docker phases need an engine (`test.sh` starts one,
//! and installs busybox-static for the image, as the plugin test does).

// Test helpers: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::busybox::{IMAGE, ensure_image};
use common::group::Group;
use common::{KillOnDrop, MountGuard, TOKEN, bin, free_port, raw_http, wait_until};

const CONVERGE: Duration = Duration::from_secs(60);
const HTTPD: &str = "exec busybox httpd -f -p 127.0.0.1:$PORT -h .";

/// `elton proxy` as a process. Dropped in field order: the proxy is
/// killed, then what it left (instances, containers, mounts) is removed.
struct ProxyProc {
    child: KillOnDrop,
    _instances: Leftovers,
    _mounts: Vec<MountGuard>,
    port: u16,
    dir: PathBuf,
}

/// Kills the processes working under a proxy's directory and removes the
/// containers labelled with it.
struct Leftovers(PathBuf);

impl Drop for Leftovers {
    fn drop(&mut self) {
        for pid in instances_under(&self.0) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        for id in containers_of(&self.0) {
            let _ = docker(&["rm", "-f", &id]);
        }
    }
}

impl ProxyProc {
    fn start(g: &Group) -> Self {
        let port = free_port();
        let dir = g.dir.path().join("proxy");
        Self {
            child: Self::spawn(g, port, &dir),
            _instances: Leftovers(dir.clone()),
            _mounts: vec![
                MountGuard(dir.join("mounts/site@1")),
                MountGuard(dir.join("mounts/site@2")),
            ],
            port,
            dir,
        }
    }

    fn spawn(g: &Group, port: u16, dir: &Path) -> KillOnDrop {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(g.dir.path().join("proxy.log"))
            .unwrap();
        let child = Command::new(bin())
            .args(["proxy", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--dir")
            .arg(dir)
            // Containers take longer to start than processes.
            .args(["--refresh", "500ms", "--ready-timeout", "20s"])
            .env("ELTON_MASTER", g.master_url(1))
            .env("ELTON_SLAVE", g.slaves[0].url())
            .env("ELTON_SLAVE_DATA", g.dir.path().join("slave1"))
            .env("ELTON_TOKEN", TOKEN)
            .env("ELTON_CA", g.ca())
            .env("ELTON_HOME", g.dir.path().join("home"))
            .env("ELTON_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting elton proxy");
        let child = KillOnDrop(child);
        wait_until("the proxy listens", Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        child
    }

    /// SIGKILL (its instances and containers stay behind), then the same
    /// proxy again on the same port and directory.
    fn kill_and_restart(&mut self, g: &Group) {
        let _ = self.child.0.kill();
        let _ = self.child.0.wait();
        self.child = Self::spawn(g, self.port, &self.dir);
    }

    fn get(&self, host: &str, path: &str) -> (u16, String) {
        raw_http(
            self.port,
            &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        )
    }

    /// A metric's value for `app` (0 when absent).
    fn metric(&self, name: &str, app: &str) -> u64 {
        let (_, text) = self.get("127.0.0.1", "/metrics");
        let prefix = format!("{name}{{app=\"{app}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

fn create(g: &Group, name: &str, host: &str, cmd: &str, extra: &[&str]) {
    let mut args = vec![
        "app",
        "create",
        name,
        "--host-name",
        host,
        "--volume",
        "site",
        "--cmd",
        cmd,
    ];
    args.extend_from_slice(extra);
    g.ok(1, &args);
}

/// Processes whose working directory is under `dir`: the process
/// runtime's instances.
fn instances_under(dir: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if std::fs::read_link(e.path().join("cwd")).is_ok_and(|c| c.starts_with(dir)) {
            pids.push(pid);
        }
    }
    pids
}

fn docker(args: &[&str]) -> Option<std::process::Output> {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()
}

/// Whether a Docker engine answers here.
fn engine_answers() -> bool {
    docker(&["info"]).is_some_and(|o| o.status.success())
}

/// Ids of the containers (running or not) that the proxy working in `dir`
/// made: they carry its directory as a label.
fn containers_of(dir: &Path) -> Vec<String> {
    let filter = format!("label=elton.proxy.dir={}", dir.display());
    let Some(out) = docker(&["ps", "-aq", "--no-trunc", "--filter", &filter]) else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn fastcontainer_runtime() {
    let g = Group::new(1, 1, &[]);
    g.converged(1, CONVERGE);
    g.import(&[("index.html", "hello from site v1\n")], "site");
    create(&g, "web", "web.test", HTTPD, &["--idle", "2s"]);
    let mut p = ProxyProc::start(&g);
    phase1_an_app_cannot_write_its_volume(&g, &p);
    if !engine_answers() {
        eprintln!(
            "SKIPPED the Docker phases: no Docker engine answers (`docker info` failed); \
             test.sh starts dockerd"
        );
        return;
    }
    ensure_image(g.dir.path());
    phase2_the_app_as_a_container_answers_idle_stops_and_starts_again(&g, &p);
    phase3_a_missing_image_and_a_container_that_exits_are_502_naming_why(&g, &p);
    phase4_a_killed_proxy_removes_its_containers_on_restart(&g, &mut p);
    phase5_a_proxy_stopped_with_sigterm_removes_its_containers(&p);
}

fn phase1_an_app_cannot_write_its_volume(g: &Group, p: &ProxyProc) {
    let (code, body) = p.get("web.test", "/index.html");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("hello from site v1"), "{body}");
    // An app that tries to change its files: every attempt is refused by
    // the kernel, and its output (the 502's reason) says so.
    create(
        g,
        "scribble",
        "scribble.test",
        "rm index.html; mkdir d; echo x > new.txt; exit 7",
        &[],
    );
    let (code, body) = p.get("scribble.test", "/");
    assert_eq!(code, 502, "{body}");
    for what in ["index.html", "create directory", "new.txt"] {
        let line = body
            .split(" | ")
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("nothing about {what} in {body}"));
        assert!(line.contains("Read-only file system"), "{line}");
    }
    // The same from outside the app: the shared mount is read-only.
    let mount = p.dir.join("mounts/site@1");
    let err = std::fs::write(mount.join("x.txt"), "x").unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(rustix::io::Errno::ROFS.raw_os_error())
    );
    let err = std::fs::remove_file(mount.join("index.html")).unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(rustix::io::Errno::ROFS.raw_os_error())
    );
    // It cannot be moved off its version either.
    let mount_arg = mount.to_str().unwrap();
    let err = g.fails(1, &["checkout", mount_arg, "1"]);
    assert!(err.contains("read-only"), "{err}");
    let err = g.fails(1, &["commit", mount_arg, "-m", "sneaky"]);
    assert!(err.contains("read-only"), "{err}");
    // Nothing changed: the files are the version's.
    let (code, body) = p.get("web.test", "/index.html");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("hello from site v1"), "{body}");
    g.ok(1, &["app", "rm", "scribble"]);
}

/// `docker inspect -f FORMAT ID`, trimmed.
fn inspect(id: &str, format: &str) -> String {
    let out = docker(&["inspect", "-f", format, id]).unwrap();
    assert!(
        out.status.success(),
        "docker inspect {id}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn phase2_the_app_as_a_container_answers_idle_stops_and_starts_again(g: &Group, p: &ProxyProc) {
    assert!(containers_of(&p.dir).is_empty());
    create(
        g,
        "boxed",
        "boxed.test",
        HTTPD,
        &[
            "--image", IMAGE, "--idle", "2s", "--cpu", "50%", "--memory", "64M",
        ],
    );
    let (code, body) = p.get("boxed.test", "/index.html");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("hello from site v1"), "{body}");
    let ids = containers_of(&p.dir);
    assert_eq!(ids.len(), 1, "one container: {ids:?}");
    let id = &ids[0];
    assert_eq!(inspect(id, "{{.State.Running}}"), "true");
    assert_eq!(inspect(id, "{{.Config.WorkingDir}}"), "/app");
    assert_eq!(
        inspect(id, "{{index .Config.Labels \"elton.app\"}}"),
        "boxed"
    );
    assert_eq!(inspect(id, "{{.HostConfig.NanoCpus}}"), "500000000");
    assert_eq!(
        inspect(id, "{{.HostConfig.Memory}}"),
        (64u64 << 20).to_string()
    );
    assert_eq!(
        inspect(id, "{{range .Mounts}}{{.Source}} {{.RW}}{{end}}"),
        format!("{} false", p.dir.join("mounts/site@1").display())
    );
    // Read-only inside the container as well.
    let out = docker(&["exec", id, "sh", "-c", "echo x > /app/new.txt"]).unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Read-only file system"), "{err}");
    // Idle: stopped, and the container removed.
    wait_until(
        "the idle container stopped",
        Duration::from_secs(15),
        || p.metric("elton_proxy_idle_stops_total", "boxed") == 1,
    );
    wait_until("its container removed", Duration::from_secs(10), || {
        containers_of(&p.dir).is_empty()
    });
    assert!(!docker(&["inspect", id]).unwrap().status.success());
    // The next request starts a new one.
    let (code, body) = p.get("boxed.test", "/index.html");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("hello from site v1"), "{body}");
    assert_eq!(p.metric("elton_proxy_starts_total", "boxed"), 2);
    let again = containers_of(&p.dir);
    assert_eq!(again.len(), 1);
    assert_ne!(&again[0], id);
}

fn phase3_a_missing_image_and_a_container_that_exits_are_502_naming_why(g: &Group, p: &ProxyProc) {
    create(
        g,
        "ghost",
        "ghost.test",
        HTTPD,
        &["--image", "elton-e2e-no-such-image:7"],
    );
    let (code, body) = p.get("ghost.test", "/");
    assert_eq!(code, 502, "{body}");
    assert!(
        body.contains("image \"elton-e2e-no-such-image:7\" is not on this host's Docker engine"),
        "{body}"
    );
    create(
        g,
        "boom",
        "boom.test",
        "echo 'boom in a box' >&2; exit 4",
        &["--image", IMAGE],
    );
    let (code, body) = p.get("boom.test", "/");
    assert_eq!(code, 502, "{body}");
    assert!(body.contains("exit code 4"), "{body}");
    assert!(body.contains("boom in a box"), "{body}");
    // The exited container is removed; only the serving one is left.
    wait_until(
        "the exited container removed",
        Duration::from_secs(10),
        || containers_of(&p.dir).len() == 1,
    );
    g.ok(1, &["app", "rm", "ghost"]);
    g.ok(1, &["app", "rm", "boom"]);
}

fn phase4_a_killed_proxy_removes_its_containers_on_restart(g: &Group, p: &mut ProxyProc) {
    let (code, body) = p.get("boxed.test", "/index.html");
    assert_eq!(code, 200, "{body}");
    let before = containers_of(&p.dir);
    assert_eq!(before.len(), 1, "the boxed app runs");
    p.kill_and_restart(g);
    // Removed before the new run serves.
    let now = containers_of(&p.dir);
    assert!(
        before.iter().all(|id| !now.contains(id)),
        "old containers {before:?} still there: {now:?}"
    );
    let (code, body) = p.get("boxed.test", "/index.html");
    assert_eq!(code, 200, "{body}");
    assert_eq!(containers_of(&p.dir).len(), 1);
}

fn phase5_a_proxy_stopped_with_sigterm_removes_its_containers(p: &ProxyProc) {
    let (code, body) = p.get("boxed.test", "/index.html");
    assert_eq!(code, 200, "{body}");
    assert_eq!(containers_of(&p.dir).len(), 1);
    let pid = p.child.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    wait_until("the proxy exited", Duration::from_secs(20), || {
        !Path::new(&format!("/proc/{pid}/cmdline")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.contains(") Z "))
    });
    assert!(
        containers_of(&p.dir).is_empty(),
        "{:?}",
        containers_of(&p.dir)
    );
}
