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
    let p = ProxyProc::start(&g);
    phase1_an_app_cannot_write_its_volume(&g, &p);
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
    assert_eq!(err.raw_os_error(), Some(rustix::io::Errno::ROFS.raw_os_error()));
    let err = std::fs::remove_file(mount.join("index.html")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(rustix::io::Errno::ROFS.raw_os_error()));
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
